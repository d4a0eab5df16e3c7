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

/// The event queue: a calendar of 1 ms buckets covering the next [`Calendar::BUCKETS`] ms, and
/// one heap for everything further away.
///
/// A bucket is a plain `Vec`, unsorted while it lies ahead (a push appends). When the cursor
/// reaches it, it is sorted once, latest first, and events are popped from its end. An event
/// pushed for the current bucket after that (due within the current millisecond, or in the
/// past) goes to a small heap, `late`; a pop takes the earlier of the two. The order is exactly
/// (time, sequence), as with one heap of every event, and the common push and pop are O(1) with
/// no sift through a heap of cold memory.
pub(crate) struct Calendar<K> {
    buckets: Vec<Vec<Ev<K>>>,
    /// Absolute index of the bucket holding the earliest events.
    cursor: u64,
    /// Whether the cursor's bucket is sorted (latest first).
    sorted: bool,
    /// Events pushed for the cursor's bucket once it was sorted. Bound: those of one bucket.
    late: BinaryHeap<Ev<K>>,
    /// Events in the buckets and `late` (not counting `far`).
    near: usize,
    far: BinaryHeap<Ev<K>>,
}

impl<K> Calendar<K> {
    const WIDTH_US: u64 = 1000;
    const BUCKETS: u64 = 1 << 14;

    /// An empty calendar whose window starts at time zero.
    pub(crate) fn new() -> Self {
        Calendar {
            buckets: (0..Self::BUCKETS).map(|_| Vec::new()).collect(),
            cursor: 0,
            sorted: false,
            late: BinaryHeap::new(),
            near: 0,
            far: BinaryHeap::new(),
        }
    }

    /// Queue `ev` (an event in the past goes to the current bucket).
    pub(crate) fn push(&mut self, ev: Ev<K>) {
        let b = (ev.at.0 / Self::WIDTH_US).max(self.cursor);
        if b == self.cursor && self.sorted {
            self.late.push(ev);
            self.near += 1;
        } else if b < self.cursor + Self::BUCKETS {
            self.buckets[(b % Self::BUCKETS) as usize].push(ev);
            self.near += 1;
        } else {
            self.far.push(ev);
        }
    }

    /// Move the cursor to the first non-empty bucket and sort it; false if there is no event.
    fn settle(&mut self) -> bool {
        loop {
            if self.near == 0 {
                // Jump to the far events.
                let Some(first) = self.far.peek() else { return false };
                let to = self.cursor.max(first.at.0 / Self::WIDTH_US);
                if to != self.cursor {
                    self.cursor = to;
                    self.sorted = false;
                }
                self.pull_far();
                continue;
            }
            let bucket = &mut self.buckets[(self.cursor % Self::BUCKETS) as usize];
            if !bucket.is_empty() || !self.late.is_empty() {
                if !self.sorted {
                    // Latest first: the earliest is popped from the end. (Time, sequence) pairs
                    // are unique, so the order is total and the same on every run.
                    bucket.sort_unstable_by_key(|e| std::cmp::Reverse((e.at, e.seq)));
                    self.sorted = true;
                }
                return true;
            }
            if bucket.capacity() > 16 {
                // A burst passed: do not hold its memory for the next lap.
                *bucket = Vec::new();
            }
            self.cursor += 1;
            self.sorted = false;
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
                self.push(ev);
            }
        }
    }

    /// Whether the next event is the current bucket's last (rather than `late`'s top).
    fn next_in_bucket(&self) -> Option<bool> {
        let bucket = &self.buckets[(self.cursor % Self::BUCKETS) as usize];
        match (bucket.last(), self.late.peek()) {
            (Some(a), Some(b)) => Some((a.at, a.seq) < (b.at, b.seq)),
            (Some(_), None) => Some(true),
            (None, Some(_)) => Some(false),
            (None, None) => None,
        }
    }

    /// When the earliest event is due (`None`: no event).
    pub(crate) fn peek_at(&mut self) -> Option<Instant> {
        if !self.settle() {
            return None;
        }
        let bucket = &self.buckets[(self.cursor % Self::BUCKETS) as usize];
        match self.next_in_bucket()? {
            true => bucket.last().map(|e| e.at),
            false => self.late.peek().map(|e| e.at),
        }
    }

    /// The earliest event, taken out.
    pub(crate) fn pop(&mut self) -> Option<Ev<K>> {
        if !self.settle() {
            return None;
        }
        let ev = match self.next_in_bucket()? {
            true => self.buckets[(self.cursor % Self::BUCKETS) as usize].pop(),
            false => self.late.pop(),
        };
        if ev.is_some() {
            self.near -= 1;
        }
        ev
    }

    /// The event `k` places after the next one in the current bucket (not counting `late`),
    /// if there is one: for prefetching what it will touch.
    pub(crate) fn ahead(&self, k: usize) -> Option<&Ev<K>> {
        let bucket = &self.buckets[(self.cursor % Self::BUCKETS) as usize];
        bucket.len().checked_sub(k + 1).map(|i| &bucket[i])
    }

    /// Bytes the calendar holds (its buckets' and heaps' capacity, not what the events point
    /// to).
    pub(crate) fn bytes(&self) -> usize {
        use std::mem::size_of;
        self.buckets.iter().map(|b| b.capacity() * size_of::<Ev<K>>()).sum::<usize>()
            + self.buckets.capacity() * size_of::<Vec<Ev<K>>>()
            + (self.far.capacity() + self.late.capacity()) * size_of::<Ev<K>>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngExt, SeedableRng};

    /// Pushes interleaved with pops, some due in the current millisecond or the past, some
    /// beyond the window: the calendar pops in (time, sequence) order, as one heap does.
    #[test]
    fn pops_in_time_then_sequence_order_like_one_heap() {
        let mut rng = rand_pcg::Pcg64::seed_from_u64(7);
        let mut cal: Calendar<u32> = Calendar::new();
        let mut heap: BinaryHeap<Ev<u32>> = BinaryHeap::new();
        let (mut now, mut seq) = (0u64, 0u64);
        let mut popped = 0;
        for round in 0..20_000u32 {
            for _ in 0..rng.random_range(0..4u32) {
                let at = match rng.random_range(0..10u32) {
                    0 => now.saturating_sub(rng.random_range(0..3000)),
                    1 => now + rng.random_range(0..1000),
                    2 => now + rng.random_range(0..40_000_000),
                    _ => now + rng.random_range(0..20_000),
                };
                seq += 1;
                cal.push(Ev { at: Instant(at), seq, kind: round });
                heap.push(Ev { at: Instant(at), seq, kind: round });
            }
            if rng.random_range(0..3u32) > 0 {
                let (a, b) = (cal.pop(), heap.pop());
                assert_eq!(a.as_ref().map(|e| (e.at, e.seq)), b.as_ref().map(|e| (e.at, e.seq)));
                if let Some(e) = a {
                    now = now.max(e.at.0);
                    popped += 1;
                }
            }
        }
        while let Some(b) = heap.pop() {
            assert_eq!(cal.peek_at(), Some(b.at));
            let a = cal.pop().map(|e| (e.at, e.seq));
            assert_eq!(a, Some((b.at, b.seq)));
            popped += 1;
        }
        assert!(cal.pop().is_none());
        assert!(popped > 20_000);
    }
}
