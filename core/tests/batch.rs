//! Batches (`Node::begin_batch` / `end_batch`): a relay fed the same frames with and without a
//! batch puts the same bytes, in the same order, on every link, and reports the same events;
//! with a batch, it does so in far fewer outputs, and its own broadcast replies are coalesced
//! (one reply covers the broadcasts before it).

use plush_core::frame::{split_frame, FramePool};
use plush_core::wire::{Filler, JoinMode, List, Message, RanSubMsg, TreeMsg, MAX_FILLER};
use plush_core::{Command, Config, Event, Instant, LinkEvent, Node, NodeId, Output};
use std::collections::BTreeMap;
use std::time::Duration;

const CHILDREN: u32 = 12;

fn id(i: u32) -> NodeId {
    NodeId::loopback(i, 7000)
}

fn payload(pool: &mut FramePool, msg: &Message) -> Vec<u8> {
    pool.encode(msg, 1 << 20).expect("a message of the test encodes").payload().to_vec()
}

/// A relay (id 1) below its parent (id 0), with 12 children (ids 2..).
fn relay() -> Node {
    let (me, parent) = (id(1), id(0));
    let cfg = Config { max_children: CHILDREN as usize, ..Config::default() };
    let mut node = Node::new(me, cfg, 1, Instant::ZERO);
    let mut pool = FramePool::default();
    node.handle_command(Instant::ZERO, Command::Join { bootstrap: vec![parent] }).expect("a fresh node joins");
    node.handle_link(Instant::ZERO, parent, LinkEvent::Connected);
    let accept =
        TreeMsg::JoinAccept { path: List(vec![parent]), top: List(vec![me]), siblings: List(vec![]), direct: false };
    let p = payload(&mut pool, &Message::Tree(accept));
    node.handle_frame(Instant::ZERO, parent, &p).expect("the accept is taken");
    for c in 0..CHILDREN {
        let child = id(2 + c);
        node.handle_link(Instant::ZERO, child, LinkEvent::Connected);
        let join = TreeMsg::Join { joiner: child, mode: JoinMode::Redirect, hops: 1 };
        let p = payload(&mut pool, &Message::Tree(join));
        node.handle_frame(Instant::ZERO, parent, &p).expect("the redirect is taken");
    }
    while node.poll_output().is_some() {}
    assert_eq!(node.children().len(), CHILDREN as usize);
    node
}

/// What a node said: the bytes written to each peer, its events, and how many transmits.
#[derive(Default, Debug, PartialEq)]
struct Seen {
    bytes: BTreeMap<NodeId, Vec<u8>>,
    events: Vec<Event>,
    closed: Vec<NodeId>,
    transmits: usize,
}

impl Seen {
    fn drain(&mut self, node: &mut Node) {
        while let Some(o) = node.poll_output() {
            match o {
                Output::Transmit { to, frame } => {
                    self.transmits += 1;
                    self.bytes.entry(to).or_default().extend_from_slice(&frame);
                }
                Output::Event(e) => self.events.push(e),
                Output::Close(p) => self.closed.push(p),
                _ => {}
            }
        }
    }
}

/// One input of the test.
enum Step {
    Frame(NodeId, Vec<u8>),
    /// The driver reports a child's link closed (as it does between two frames of a read).
    Closed(NodeId),
    /// The next read of the same batch: time moves.
    Read(Duration),
    /// The batch ends; time moves, the relay's timers run.
    Later(Duration),
}

/// A RanSub distribute of `epoch`, which a relay passes on to each child as a frame of its own.
fn distribute(epoch: u32) -> Message {
    let sample = plush_core::samples::messages().into_iter().find_map(|m| match m {
        Message::RanSub(RanSubMsg::Distribute { population, all, nondesc, .. }) => Some((population, all, nondesc)),
        _ => None,
    });
    let (population, all, nondesc) = sample.expect("the samples hold a distribute");
    Message::RanSub(RanSubMsg::Distribute { epoch, population, all, nondesc })
}

/// A relay's traffic: reads of broadcasts of every size from the parent, mixed with heartbeats,
/// RanSub distributes (frames of their own for the children, between the runs), replies from
/// the children, a child lost in the middle of a read, and time passing, also between two reads
/// of one batch (so that heartbeats fall due and runs must mark their links written again).
fn steps() -> Vec<Vec<Step>> {
    let mut pool = FramePool::default();
    let parent = id(0);
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = move |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    let mut reads = Vec::new();
    let mut bid = 100;
    let heartbeat = payload(&mut pool, &Message::Tree(TreeMsg::Heartbeat));
    for read in 0..40 {
        // The children keep their links alive (the one lost at read 17 is gone).
        let live = |c: u32| read <= 17 || c != 5;
        let mut r: Vec<Step> =
            (2..2 + CHILDREN).filter(|&c| live(c)).map(|c| Step::Frame(id(c), heartbeat.clone())).collect();
        for _ in 0..1 + next(300) {
            let msg = match next(20) {
                0 => Message::Tree(TreeMsg::Heartbeat),
                1 | 2 => {
                    let c = 2 + next(CHILDREN as u64) as u32;
                    if !live(c) {
                        continue;
                    }
                    let child = id(c);
                    let reply = Message::Tree(TreeMsg::BroadcastReply { id: bid, node: child });
                    r.push(Step::Frame(child, payload(&mut pool, &reply)));
                    continue;
                }
                3 => distribute(bid as u32),
                4 => {
                    if next(4) == 0 {
                        // Another read of the batch, later: the children spoke meanwhile.
                        r.push(Step::Read(Duration::from_millis(next(900))));
                        r.extend((2..2 + CHILDREN).filter(|&c| live(c)).map(|c| Step::Frame(id(c), heartbeat.clone())));
                    }
                    continue;
                }
                5 => {
                    // Now and then a broadcast larger than a run.
                    let filler = if next(10) == 0 { MAX_FILLER as u32 } else { next(2000) as u32 };
                    Message::Tree(TreeMsg::Broadcast { id: bid, filler: Filler(filler) })
                }
                _ => Message::Tree(TreeMsg::Broadcast { id: bid, filler: Filler(0) }),
            };
            bid += 1;
            r.push(Step::Frame(parent, payload(&mut pool, &msg)));
        }
        if read == 17 {
            // Lost in the middle of a read: what it sent before still counts.
            let at = r.len() / 2;
            r.insert(at, Step::Closed(id(5)));
            r.retain({
                let mut k = 0;
                move |s| {
                    k += 1;
                    k <= at + 1 || !matches!(s, Step::Frame(p, _) if *p == id(5))
                }
            });
        }
        r.push(Step::Later(Duration::from_millis(100 * next(12))));
        reads.push(r);
    }
    reads
}

/// Feed `reads` to a fresh relay: frame by frame, or as the mio driver does, each read one batch
/// and the frames from one peer handed over together (`Node::handle_frames`, drained whenever it
/// stops).
fn run(reads: &[Vec<Step>], batch: bool) -> Seen {
    let mut node = relay();
    let mut seen = Seen::default();
    let mut now = Instant(1);
    // Frames from one peer not yet handed over (batches only), prefixes included.
    let mut pending: Option<(NodeId, Vec<u8>)> = None;
    let flush = |node: &mut Node, seen: &mut Seen, pending: &mut Option<(NodeId, Vec<u8>)>, now: Instant| {
        let Some((from, data)) = pending.take() else { return };
        let mut taken = 0;
        while taken < data.len() {
            let (used, r) = node.handle_frames(now, from, &data[taken..]);
            r.expect("valid frames");
            assert!(used > 0, "whole frames are taken");
            taken += used;
            seen.drain(node);
        }
    };
    for read in reads {
        if batch {
            node.begin_batch();
        }
        for step in read {
            if let (true, Step::Frame(from, p)) = (batch, step) {
                match &mut pending {
                    Some((f, data)) if f == from => {}
                    _ => {
                        flush(&mut node, &mut seen, &mut pending, now);
                        pending = Some((*from, Vec::new()));
                    }
                }
                if let Some((_, data)) = &mut pending {
                    data.extend_from_slice(&(p.len() as u32).to_be_bytes());
                    data.extend_from_slice(p);
                }
                continue;
            }
            flush(&mut node, &mut seen, &mut pending, now);
            match step {
                Step::Frame(from, p) => node.handle_frame(now, *from, p).expect("a valid frame"),
                Step::Closed(peer) => node.handle_link(now, *peer, LinkEvent::Closed),
                Step::Read(by) => now = now + *by,
                Step::Later(by) => {
                    if batch {
                        node.end_batch();
                    }
                    seen.drain(&mut node);
                    now = now + *by;
                    if node.poll_timeout().is_some_and(|t| t <= now) {
                        node.handle_timeout(now);
                    }
                    if batch {
                        node.begin_batch();
                    }
                }
            }
            // The driver drains after every input, batch or not.
            seen.drain(&mut node);
        }
        flush(&mut node, &mut seen, &mut pending, now);
        if batch {
            node.end_batch();
        }
        seen.drain(&mut node);
    }
    seen
}

/// The frames of a byte stream, decoded.
fn messages(bytes: &[u8]) -> Vec<Message> {
    let mut rest = bytes;
    let mut v = Vec::new();
    while !rest.is_empty() {
        let (p, used) = split_frame(rest, 1 << 20).expect("a good frame").expect("a whole frame");
        v.push(Message::decode(p).expect("a message"));
        rest = &rest[used..];
    }
    v
}

/// The relay's own broadcast replies in `msgs` (their ids, each with the number of other
/// messages before it), and every other message.
fn own_replies(msgs: Vec<Message>) -> (Vec<(u64, usize)>, Vec<Message>) {
    let (mut ids, mut rest) = (Vec::new(), Vec::new());
    for m in msgs {
        match m {
            Message::Tree(TreeMsg::BroadcastReply { id: b, node }) if node == id(1) => ids.push((b, rest.len())),
            m => rest.push(m),
        }
    }
    (ids, rest)
}

#[test]
fn a_batch_puts_the_same_frames_on_every_link_in_fewer_outputs() {
    let reads = steps();
    let plain = run(&reads, false);
    let batched = run(&reads, true);
    assert_eq!(plain.bytes.len(), CHILDREN as usize + 1, "every child and the parent got frames");
    assert_eq!(plain.bytes.keys().collect::<Vec<_>>(), batched.bytes.keys().collect::<Vec<_>>());
    for (peer, bytes) in &plain.bytes {
        let got = batched.bytes.get(peer).map_or(&[][..], |b| &b[..]);
        if *peer == id(0) {
            continue;
        }
        assert!(got == &bytes[..], "{peer}: {} bytes one by one, {} in batches, not the same", bytes.len(), got.len());
        // Every byte stream is whole frames.
        messages(bytes);
    }
    // Up to the parent: the same frames, but for the relay's own replies.
    let (_, plain_rest) = own_replies(messages(&plain.bytes[&id(0)]));
    let (_, batch_rest) = own_replies(messages(&batched.bytes[&id(0)]));
    assert!(plain_rest == batch_rest, "the same frames up, replies of the relay aside");
    assert_eq!(plain.events, batched.events, "the same events");
    assert_eq!(plain.closed, batched.closed, "the same links closed");
    assert!(
        batched.transmits * 5 < plain.transmits,
        "batches leave in runs: {} transmits in batches, {} one by one",
        batched.transmits,
        plain.transmits
    );
}

#[test]
fn a_batch_answers_the_last_broadcast_of_a_run_for_all_of_them() {
    let reads = steps();
    let plain = run(&reads, false);
    let batched = run(&reads, true);
    let (plain_at, _) = own_replies(messages(&plain.bytes[&id(0)]));
    let (batch_at, _) = own_replies(messages(&batched.bytes[&id(0)]));
    // A pending reply leaves before anything sent up after it: where the same reply is in both
    // streams, the same frames precede it.
    for (b, at) in &batch_at {
        assert!(plain_at.contains(&(*b, *at)), "reply to {b} after {at} other frames, not where it was");
    }
    let plain_ids: Vec<u64> = plain_at.iter().map(|x| x.0).collect();
    let batch_ids: Vec<u64> = batch_at.iter().map(|x| x.0).collect();
    assert!(plain_ids.windows(2).all(|w| w[0] < w[1]), "one by one: a reply to every broadcast, in order");
    assert!(batch_ids.windows(2).all(|w| w[0] < w[1]), "in batches: replies in order");
    assert!(batch_ids.iter().all(|b| plain_ids.contains(b)), "every reply answers a broadcast the relay got");
    assert_eq!(plain_ids.last(), batch_ids.last(), "the last broadcast is answered");
    // Each broadcast is covered by a reply to it or to a later one.
    assert!(plain_ids.iter().all(|p| batch_ids.iter().any(|b| b >= p)));
    assert!(
        batch_ids.len() * 5 < plain_ids.len(),
        "replies coalesced: {} in batches, {} one by one",
        batch_ids.len(),
        plain_ids.len()
    );
}
