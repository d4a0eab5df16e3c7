//! Batches: the frames of one read leave a relay as few buffers, not one output per frame and
//! receiver.
//!
//! A driver that read many frames from one link at once may wrap the `handle_frame` calls for
//! them in [`crate::Node::begin_batch`] and [`crate::Node::end_batch`] (draining `poll_output`
//! after each call as always). Within a batch, the frames a relay passes on in bulk go into
//! *runs* instead of one [`Output::Transmit`] per frame and receiver:
//! - the **down run**: broadcasts from the parent, forwarded verbatim to every child;
//! - the **up run**: broadcast replies to one peer (the node's own reply, and its children's,
//!   relayed verbatim).
//!
//! The node's own replies are *coalesced*: a reply covers every broadcast that came before it
//! over the same link (a tree link is one ordered stream from the parent), so within a batch the
//! node's reply to a broadcast stays pending, unencoded, and a reply to a later broadcast
//! replaces it, as long as nothing else went into the up run meanwhile. A read of 1,000
//! broadcasts is answered by one reply, to the last of them, instead of 1,000. Every other frame
//! goes out exactly as without a batch.
//!
//! A run is one buffer of whole frames, length prefixes included, back to back. It leaves as one
//! `Transmit` per receiver, all sharing the buffer, when the batch ends, when it is full, or
//! just before any output other than an event. So each link carries exactly the bytes, in
//! exactly the order, that it would without a batch; only how they are cut into outputs
//! differs. Without a batch (the simulator) there are no runs and every `Transmit` holds one
//! frame.
//!
//! Bounds: a run holds at most `RUN_BYTES` bytes, or a single frame that is larger; at most
//! two runs are open; at most `SPARE_RUNS` buffers of at most `2 * RUN_BYTES` capacity are
//! kept for reuse, so a relay in steady state allocates nothing per frame.

use crate::contract::Output;
use crate::frame::{encode_into, push_frame, Frame, PREFIX};
use crate::id::NodeId;
use crate::time::Instant;
use crate::wire::{Message, TreeMsg};
use std::collections::VecDeque;
use std::rc::Rc;

/// Bytes a run holds before it leaves (a single larger frame makes a run of its own, and a
/// pending reply may add [`REPLY_BYTES`]).
const RUN_BYTES: usize = 64 << 10;
/// Room a pending reply needs in the up run.
pub const REPLY_BYTES: usize = 64;
/// Run buffers kept for reuse at most.
const SPARE_RUNS: usize = 16;
/// Capacity of the output queue kept once it is empty again; a burst's larger queue is freed.
const OUT_KEPT: usize = 16;

/// Which run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Way {
    /// To the children (broadcasts).
    Down = 0,
    /// To one peer (broadcast replies).
    Up = 1,
}

#[derive(Debug, Default)]
struct Run {
    /// The receivers, in order: the children when the run started, or the one peer. Bound: at
    /// most [`crate::Config::max_children`] (its capacity is kept for the next run).
    peers: Vec<NodeId>,
    /// The version of the tree's children that `peers` holds (down runs).
    version: u64,
    /// When the receivers' links were last marked as written to.
    touched: Instant,
    /// The run's bytes; `None` when the run is not open.
    buf: Option<Rc<Vec<u8>>>,
}

/// What [`Outbox::check`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Check {
    /// The run is open for these receivers and has room; append.
    Ready,
    /// The run is open for these receivers, but the links were last marked written at an
    /// earlier time: mark them again, then append.
    Touch,
    /// No such run with room: start one (if every receiver's link is open).
    Start,
}

/// The outputs waiting for the driver, and the runs of the current batch.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    q: VecDeque<Output>,
    batching: bool,
    /// A run is open (either way).
    open: bool,
    runs: [Run; 2],
    /// Run buffers for reuse; one is free once the driver dropped every clone of it.
    spare: Vec<Rc<Vec<u8>>>,
    /// The node's reply to the last broadcast, pending at the end of the up run: (broadcast,
    /// the node).
    reply: Option<(u64, NodeId)>,
}

impl Outbox {
    /// Heap bytes held: the queue and the spare run buffers.
    pub fn heap_bytes(&self) -> usize {
        self.q.capacity() * core::mem::size_of::<Output>()
            + self.spare.iter().map(crate::frame::buffer_bytes).sum::<usize>()
    }

    /// Queue an output. Anything but an event first sends the open runs, so that every link
    /// sees its frames in the order they were produced.
    #[inline]
    pub fn push_back(&mut self, o: Output) {
        if self.open && !matches!(o, Output::Event(_)) {
            self.flush();
        }
        self.q.push_back(o);
    }

    /// Queue `Output::Transmit { to, frame }`, the output of every relayed frame outside a
    /// batch.
    ///
    /// When the queue has room, the push is written so that the compiler can see it: no growth,
    /// so no panic path that would need the output whole in memory, so the output is written
    /// straight into the queue. Otherwise it is built on the stack in pieces and copied in
    /// 16-byte loads that wait for those pieces: a store-forwarding stall that cost the relay
    /// benchmark about a third of its throughput (`relay_loop`, 12 children).
    #[inline(always)]
    pub fn push_transmit(&mut self, to: NodeId, frame: Frame) {
        if self.open {
            self.flush();
        }
        if self.q.len() < self.q.capacity() {
            self.q.push_back(Output::Transmit { to, frame });
        } else {
            push_cold(&mut self.q, Output::Transmit { to, frame });
        }
    }

    /// The oldest output; once the queue is empty, the memory of a burst is given back.
    #[inline]
    pub fn pop_front(&mut self) -> Option<Output> {
        // Test for empty first, so that the popped output goes straight to the caller: holding
        // it across the capacity check made the compiler copy it through the stack in
        // overlapping pieces, a store-forwarding stall on every output.
        if self.q.is_empty() {
            if self.q.capacity() > OUT_KEPT {
                self.q = VecDeque::new();
            }
            return None;
        }
        self.q.pop_front()
    }

    /// Free what is kept only to go faster: the empty queue's room (see
    /// [`crate::Node::trim_buffers`]). The spare run buffers stay: a relay reuses them for
    /// every run, and one made anew is [`RUN_BYTES`] from the allocator (freeing them after
    /// every input made a million-node simulation half again slower). Changes nothing the
    /// outbox does.
    pub fn trim(&mut self) {
        if self.q.is_empty() && self.q.capacity() > 0 {
            self.q = VecDeque::new();
        }
    }

    /// Drop every queued output (tests).
    #[cfg(test)]
    pub fn clear(&mut self) {
        self.q.clear();
    }

    pub fn is_empty(&self) -> bool {
        self.q.is_empty()
    }

    /// A batch starts: runs may open.
    pub fn begin(&mut self) {
        self.batching = true;
    }

    /// The batch ends: the runs leave.
    pub fn end(&mut self) {
        self.batching = false;
        if self.open {
            self.flush();
        }
    }

    pub fn batching(&self) -> bool {
        self.batching
    }

    /// Whether run `way` is open for `peers` (of children `version`), at `now`, with room for
    /// `need` more bytes.
    #[inline]
    pub fn check(&self, way: Way, peers: &[NodeId], version: u64, now: Instant, need: usize) -> Check {
        let r = &self.runs[way as usize];
        let Some(buf) = &r.buf else { return Check::Start };
        let same = match way {
            Way::Down => r.version == version,
            Way::Up => r.peers.first() == peers.first(),
        };
        let pending = if way == Way::Up && self.reply.is_some() { REPLY_BYTES } else { 0 };
        if !same || buf.len() + need + pending > RUN_BYTES {
            return Check::Start;
        }
        if r.touched == now {
            Check::Ready
        } else {
            Check::Touch
        }
    }

    /// Open run `way` for `peers` (the caller checked that their links are open and marked them
    /// written at `now`); any open run leaves first.
    pub fn start(&mut self, way: Way, peers: &[NodeId], version: u64, now: Instant) {
        // The run this one replaces leaves; so does the other one if it shares a receiver
        // (never in a tree: the parent is no child), which keeps the order on every link.
        let other = &self.runs[1 - way as usize];
        if other.buf.is_some() && other.peers.iter().any(|p| peers.contains(p)) {
            self.flush();
        } else {
            self.flush_run(way);
        }
        let buf = match self.spare.iter().position(|b| Rc::strong_count(b) == 1) {
            Some(i) => {
                let mut b = self.spare.swap_remove(i);
                if let Some(v) = Rc::get_mut(&mut b) {
                    v.clear();
                }
                b
            }
            None => Rc::new(Vec::with_capacity(RUN_BYTES)),
        };
        let r = &mut self.runs[way as usize];
        r.peers.clear();
        r.peers.extend_from_slice(peers);
        r.version = version;
        r.touched = now;
        r.buf = Some(buf);
        self.open = true;
    }

    /// The receivers' links were marked written at `now` again.
    pub fn touched(&mut self, way: Way, now: Instant) {
        self.runs[way as usize].touched = now;
    }

    /// Append to the open run `way` (after [`Outbox::check`] or [`Outbox::start`]): `fill`
    /// writes whole frames at the end of the buffer. Returns how many receivers the run has.
    #[inline]
    pub fn append<R>(&mut self, way: Way, fill: impl FnOnce(&mut Vec<u8>) -> R) -> Option<(R, usize)> {
        let r = &mut self.runs[way as usize];
        let v = Rc::get_mut(r.buf.as_mut()?)?;
        if way == Way::Up {
            put_reply(v, self.reply.take());
        }
        let out = fill(v);
        Some((out, r.peers.len()))
    }

    /// A relay's common case in one step: the down run is open for children `version`, its
    /// links marked written at `now`, with room: append a frame carrying `payload`. Returns the
    /// receivers; `None` sends the caller the long way ([`Outbox::check`]).
    #[inline]
    pub fn append_down(&mut self, version: u64, now: Instant, payload: &[u8]) -> Option<usize> {
        let r = &mut self.runs[Way::Down as usize];
        if r.version != version || r.touched != now {
            return None;
        }
        let v = Rc::get_mut(r.buf.as_mut()?)?;
        if v.len() + PREFIX + payload.len() > RUN_BYTES {
            return None;
        }
        push_frame(v, payload);
        Some(r.peers.len())
    }

    /// Likewise for the node's reply to broadcast `id`: the up run is open to `to`, marked
    /// written at `now`, with room. Returns whether a pending reply was replaced.
    #[inline]
    pub fn reply_now(&mut self, to: &NodeId, now: Instant, id: u64, node: NodeId) -> Option<bool> {
        let r = &self.runs[Way::Up as usize];
        let buf = r.buf.as_ref()?;
        if r.touched != now || r.peers.first() != Some(to) || buf.len() + REPLY_BYTES > RUN_BYTES {
            return None;
        }
        Some(self.reply.replace((id, node)).is_some())
    }

    /// Answer broadcast `id` for `node` at the end of the open up run (after
    /// [`Outbox::check`] or [`Outbox::start`] with [`REPLY_BYTES`]): it replaces the pending
    /// reply, if any, which it covers. Returns whether there was one.
    #[inline]
    pub fn reply(&mut self, id: u64, node: NodeId) -> bool {
        if self.runs[Way::Up as usize].buf.is_none() {
            debug_assert!(false, "a reply without an up run");
            return false;
        }
        self.reply.replace((id, node)).is_some()
    }

    /// Send the open runs: one `Transmit` per receiver, sharing the buffer.
    pub fn flush(&mut self) {
        self.flush_run(Way::Down);
        self.flush_run(Way::Up);
    }

    /// Send run `way`, if open.
    fn flush_run(&mut self, way: Way) {
        let r = &mut self.runs[way as usize];
        let Some(mut buf) = r.buf.take() else { return };
        if way == Way::Up {
            if let Some(v) = Rc::get_mut(&mut buf) {
                put_reply(v, self.reply.take());
            }
        }
        if !buf.is_empty() {
            for &to in &r.peers {
                self.q.push_back(Output::Transmit { to, frame: Frame::shared(&buf) });
            }
        }
        if self.spare.len() < SPARE_RUNS && buf.capacity() <= 2 * RUN_BYTES {
            self.spare.push(buf);
        }
        self.open = self.runs.iter().any(|r| r.buf.is_some());
    }
}

/// Encode the pending reply, if any, at the end of `buf`.
fn put_reply(buf: &mut Vec<u8>, reply: Option<(u64, NodeId)>) {
    let Some((id, node)) = reply else { return };
    let msg = Message::Tree(TreeMsg::BroadcastReply { id, node });
    // A reply is a few dozen bytes: it always fits.
    let r = encode_into(buf, &msg, REPLY_BYTES - crate::frame::PREFIX);
    debug_assert!(r.is_ok(), "a broadcast reply fits in {REPLY_BYTES} bytes");
}

#[cold]
#[inline(never)]
fn push_cold(out: &mut VecDeque<Output>, o: Output) {
    out.push_back(o);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::Event;

    fn id(n: u16) -> NodeId {
        NodeId::from(std::net::SocketAddr::from(([127, 0, 0, 1], n)))
    }

    fn frames(out: &mut Outbox) -> Vec<(NodeId, Vec<u8>)> {
        let mut v = Vec::new();
        while let Some(o) = out.pop_front() {
            if let Output::Transmit { to, frame } = o {
                v.push((to, frame.to_vec()));
            }
        }
        v
    }

    #[test]
    fn a_run_leaves_once_per_receiver_at_the_end_of_the_batch() {
        let mut out = Outbox::default();
        let kids = [id(1), id(2), id(3)];
        out.begin();
        assert_eq!(out.check(Way::Down, &kids, 7, Instant(5), 10), Check::Start);
        out.start(Way::Down, &kids, 7, Instant(5));
        for b in [1u8, 2] {
            assert_eq!(out.check(Way::Down, &kids, 7, Instant(5), 10), Check::Ready);
            out.append(Way::Down, |v| v.push(b));
        }
        // Another version of the children: a new run is needed.
        assert_eq!(out.check(Way::Down, &kids, 8, Instant(5), 10), Check::Start);
        // A later time: the links are to be marked again.
        assert_eq!(out.check(Way::Down, &kids, 7, Instant(6), 10), Check::Touch);
        // Events do not cut the run.
        out.push_back(Output::Event(Event::Left));
        assert!(frames(&mut out).is_empty());
        out.end();
        assert_eq!(frames(&mut out), kids.iter().map(|&k| (k, vec![1, 2])).collect::<Vec<_>>());
    }

    #[test]
    fn any_other_output_sends_the_runs_first() {
        let mut out = Outbox::default();
        out.begin();
        out.start(Way::Up, &[id(9)], 0, Instant(1));
        out.append(Way::Up, |v| v.extend_from_slice(b"ab"));
        out.push_back(Output::Close(id(9)));
        let first = out.pop_front();
        assert!(matches!(first, Some(Output::Transmit { to, ref frame }) if to == id(9) && &frame[..] == b"ab"));
        assert!(matches!(out.pop_front(), Some(Output::Close(_))));
        // Closed: a later append has no run to go to.
        assert!(out.append(Way::Up, |v| v.push(0)).is_none());
    }

    #[test]
    fn a_full_run_asks_for_a_new_one_and_buffers_are_reused() {
        let mut out = Outbox::default();
        out.begin();
        out.start(Way::Up, &[id(9)], 0, Instant(1));
        out.append(Way::Up, |v| v.resize(RUN_BYTES - 4, 0));
        assert_eq!(out.check(Way::Up, &[id(9)], 0, Instant(1), 4), Check::Ready);
        assert_eq!(out.check(Way::Up, &[id(9)], 0, Instant(1), 5), Check::Start);
        // Another peer: another run.
        assert_eq!(out.check(Way::Up, &[id(8)], 0, Instant(1), 1), Check::Start);
        out.end();
        let sent = frames(&mut out);
        assert_eq!(sent.len(), 1);
        drop(sent);
        // The driver dropped its clone: the buffer is reused, not allocated again.
        out.begin();
        out.start(Way::Up, &[id(9)], 0, Instant(2));
        assert_eq!(out.spare.len(), 0, "the one spare buffer was taken");
        out.end();
        assert_eq!(out.spare.len(), 1);
    }
}
