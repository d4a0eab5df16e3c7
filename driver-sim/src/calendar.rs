//! The event calendar: what is due when.
//!
//! An event is an [`Ev`]: a time, a sequence number and what happens. Events are ordered by
//! (time, sequence), so two events due at the same microsecond happen in the order they were
//! scheduled; that order is what makes a run repeatable from its seed. The tree runs keep their
//! events in a [`Calendar`] of 1 ms buckets; the star layout ([`crate::star`]) keeps its few in
//! one `BinaryHeap`, with the same order.

use plush_core::Instant;
use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// A queued event of kind `K`, due at `at`; `seq` breaks ties (the order of scheduling). Buckets
/// hold few events each, so entries carry the event itself.
pub(crate) struct Ev<K> {
    pub(crate) at: Instant,
    pub(crate) seq: u64,
    pub(crate) kind: K,
}

impl<K> PartialEq for Ev<K> {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl<K> Eq for Ev<K> {}

impl<K> PartialOrd for Ev<K> {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl<K> Ord for Ev<K> {
    // Reversed: BinaryHeap is a max-heap and we want the earliest (time, seq) first.
    fn cmp(&self, o: &Self) -> Ordering {
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

/// The event queue: a calendar of 1 ms buckets covering the next [`Calendar::BUCKETS`] ms, each
/// a small heap ordered by (time, sequence), and one heap for everything further away. Pushing
/// and popping touch one small heap instead of one heap of every pending event.
pub(crate) struct Calendar<K> {
    buckets: Vec<BinaryHeap<Ev<K>>>,
    /// Absolute index of the bucket holding the earliest events.
    cursor: u64,
    /// Events in the buckets (not counting `far`).
    near: usize,
    far: BinaryHeap<Ev<K>>,
}

impl<K> Calendar<K> {
    const WIDTH_US: u64 = 1000;
    const BUCKETS: u64 = 1 << 14;

    /// An empty calendar whose window starts at time zero.
    pub(crate) fn new() -> Self {
        Calendar {
            buckets: (0..Self::BUCKETS).map(|_| BinaryHeap::new()).collect(),
            cursor: 0,
            near: 0,
            far: BinaryHeap::new(),
        }
    }

    /// Queue `ev` (an event in the past goes to the current bucket).
    pub(crate) fn push(&mut self, ev: Ev<K>) {
        let b = (ev.at.0 / Self::WIDTH_US).max(self.cursor);
        if b < self.cursor + Self::BUCKETS {
            self.buckets[(b % Self::BUCKETS) as usize].push(ev);
            self.near += 1;
        } else {
            self.far.push(ev);
        }
    }

    /// Move the cursor to the first non-empty bucket; false if there is no event at all.
    fn settle(&mut self) -> bool {
        loop {
            if self.near == 0 {
                // Jump to the far events.
                let Some(first) = self.far.peek() else { return false };
                self.cursor = self.cursor.max(first.at.0 / Self::WIDTH_US);
                self.pull_far();
                continue;
            }
            let bucket = &mut self.buckets[(self.cursor % Self::BUCKETS) as usize];
            if !bucket.is_empty() {
                return true;
            }
            if bucket.capacity() > 16 {
                // A burst passed: do not hold its memory for the next lap.
                *bucket = BinaryHeap::new();
            }
            self.cursor += 1;
            self.pull_far();
        }
    }

    /// Bring far events that now fall within the window into their buckets.
    fn pull_far(&mut self) {
        while let Some(ev) = self.far.peek() {
            let b = ev.at.0 / Self::WIDTH_US;
            if b >= self.cursor + Self::BUCKETS {
                break;
            }
            if let Some(ev) = self.far.pop() {
                self.buckets[(b.max(self.cursor) % Self::BUCKETS) as usize].push(ev);
                self.near += 1;
            }
        }
    }

    /// When the earliest event is due (`None`: no event).
    pub(crate) fn peek_at(&mut self) -> Option<Instant> {
        if !self.settle() {
            return None;
        }
        self.buckets[(self.cursor % Self::BUCKETS) as usize].peek().map(|e| e.at)
    }

    /// The earliest event, taken out.
    pub(crate) fn pop(&mut self) -> Option<Ev<K>> {
        if !self.settle() {
            return None;
        }
        let ev = self.buckets[(self.cursor % Self::BUCKETS) as usize].pop();
        if ev.is_some() {
            self.near -= 1;
        }
        ev
    }

    /// Bytes the calendar holds (its buckets' and the far heap's capacity, not what the events
    /// point to).
    pub(crate) fn bytes(&self) -> usize {
        use std::mem::size_of;
        self.buckets.iter().map(|b| b.capacity() * size_of::<Ev<K>>()).sum::<usize>()
            + self.buckets.capacity() * size_of::<BinaryHeap<Ev<K>>>()
            + self.far.capacity() * size_of::<Ev<K>>()
    }
}
