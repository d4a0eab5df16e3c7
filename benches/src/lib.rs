//! # plush-benches
//!
//! Criterion benchmarks of Plush, run with `cargo bench -p plush-benches`:
//! - `benches/sim.rs`: simulator throughput (events per second) on [`failure_scenario`].
//! - `benches/wire.rs`: encoding, decoding and framing of one message.
//! - `benches/relay.rs`: the core relaying a broadcast to 12 children ([`Relay`]); the test
//!   `tests/relay_allocs.rs` checks that it allocates nothing in steady state.
//! - `benches/messages.rs`: decode + encode of every message kind ([`plush_core::samples`]), and
//!   decode + handle + encode at a relay with 12 children for the kinds a running overlay
//!   carries most: a reply going up, a heartbeat, a job's round ([`JobRound`]), a RanSub epoch
//!   ([`RanSubRound`]), and the connection table's touch and evict ([`LinkChurn`]).
//!
//! This library holds what the benchmarks share, so that a number quoted elsewhere can name the
//! exact scenario it measured.
// Unsafe only in [`counting`]: a global allocator cannot be written without it.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod counting;
pub mod figures;

use plush_sim::Scenario;

/// Seed of every benchmarked scenario: fixed, so each iteration replays the same run.
pub const SEED: u64 = 424_242;

/// The simulator benchmark: `nodes` nodes build a tree, then a quarter of them and the root
/// crash (process crashes) and the survivors repair it.
///
/// With 10,000 nodes this is the run of the README's first command, with a fixed seed.
pub fn failure_scenario(nodes: u32) -> Scenario {
    Scenario { nodes, seed: SEED, kill: 0.25, kill_root: true, ..Scenario::default() }
}

use plush_core::frame::FramePool;
use plush_core::ransub::Entry;
use plush_core::wire::{ExitStatus, Group, JobKind, JobMsg, RanSubMsg, RunSpec, Target};
use plush_core::wire::{Filler, JoinMode, List, Message, TreeMsg};
use plush_core::{Command, Config, Instant, LinkEvent, Node, NodeId, NodeSet, Output};
use std::time::Duration;

/// The relay case: one node with a parent and `children` children, all links up. The parent
/// sends it broadcast frames; it hands the same bytes to every child and answers up.
pub struct Relay {
    node: Node,
    parent: NodeId,
    broadcast: Vec<u8>,
    now: Instant,
    /// Frames the node asked to transmit so far.
    pub transmits: u64,
    /// While recording (the scenarios' self-checks): what the node transmitted, decoded.
    recorded: Option<Vec<(NodeId, Message)>>,
    /// A read's worth of broadcast frames, prefixes included ([`Relay::relay_read`]).
    read: Vec<u8>,
}

fn id(i: u32) -> NodeId {
    NodeId::loopback(i, 7000)
}

impl Relay {
    /// A relay node (id 1) below a parent (id 0, the root) with `children` children (ids 2..).
    pub fn new(children: u32) -> Relay {
        Relay::with_config(children, Config::default())
    }

    /// [`Relay::new`] with a configuration of the caller's (`max_children` is set to `children`).
    pub fn with_config(children: u32, cfg: Config) -> Relay {
        let (me, parent) = (id(1), id(0));
        let cfg = Config { max_children: children as usize, ..cfg };
        let mut node = Node::new(me, cfg, 1, Instant::ZERO);
        let mut pool = FramePool::default();
        let mut feed = |node: &mut Node, from: NodeId, msg: Message| {
            let frame = pool.encode(&msg, 1 << 20).expect("a small message encodes");
            node.handle_frame(Instant::ZERO, from, frame.payload()).expect("a valid frame");
        };
        node.handle_command(Instant::ZERO, Command::Join { bootstrap: vec![parent] }).expect("a fresh node joins");
        node.handle_link(Instant::ZERO, parent, LinkEvent::Connected);
        let accept = TreeMsg::JoinAccept {
            path: List(vec![parent]),
            top: List(vec![me]),
            siblings: List(vec![]),
            direct: false,
        };
        feed(&mut node, parent, Message::Tree(accept));
        for c in 0..children {
            let child = id(2 + c);
            node.handle_link(Instant::ZERO, child, LinkEvent::Connected);
            let join = TreeMsg::Join { joiner: child, mode: JoinMode::Redirect, hops: 1 };
            feed(&mut node, parent, Message::Tree(join));
        }
        while node.poll_output().is_some() {}
        assert_eq!(node.parent(), Some(parent), "the relay has its parent");
        assert_eq!(node.children().len(), children as usize, "the relay has its children");
        let broadcast = pool
            .encode(&Message::Tree(TreeMsg::Broadcast { id: 9, filler: Filler(0) }), 1 << 20)
            .expect("a small message encodes")
            .payload()
            .to_vec();
        Relay { node, parent, broadcast, now: Instant::ZERO, transmits: 0, recorded: None, read: Vec::new() }
    }

    /// Make the relayed broadcast frames `filler` bytes longer (a [`Filler`]: bytes that only
    /// give the frame its size).
    pub fn set_filler(&mut self, filler: u32) {
        let msg = Message::Tree(TreeMsg::Broadcast { id: 9, filler: Filler(filler) });
        self.broadcast = FramePool::default().encode(&msg, 1 << 20).expect("a broadcast encodes").payload().to_vec();
        self.read.clear();
    }

    /// The relay as the mio driver runs it: one read of `frames` broadcast frames from the
    /// parent (the frames of a 16 KiB read are 1,638 of the smallest), handled as one batch
    /// ([`Node::begin_batch`], [`Node::handle_frames`]): the frames for the children leave as
    /// one buffer shared by the 12, and the relay's replies are coalesced into one. The
    /// transmitted buffers are dropped, as a driver does once written.
    pub fn relay_read(&mut self, frames: usize) {
        let frame_len = 4 + self.broadcast.len();
        if self.read.len() != frames * frame_len {
            self.read.clear();
            for _ in 0..frames {
                self.read.extend_from_slice(&(self.broadcast.len() as u32).to_be_bytes());
                self.read.extend_from_slice(&self.broadcast);
            }
        }
        self.now = Instant(self.now.0 + 1);
        self.node.begin_batch();
        let mut taken = 0;
        while taken < self.read.len() {
            let (used, r) = self.node.handle_frames(self.now, self.parent, &self.read[taken..]);
            if r.is_err() || used == 0 {
                panic!("the relay refused a valid read");
            }
            taken += used;
            self.drain();
        }
        self.node.end_batch();
        self.drain();
    }

    /// The node.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// The relay's children.
    pub fn children(&self) -> Vec<NodeId> {
        self.node.children().to_vec()
    }

    /// Feed one frame's payload from `from` at the next microsecond, then drain the outputs
    /// (counting transmits). Panics if the node refuses it: every input here is valid.
    pub fn feed(&mut self, from: NodeId, payload: &[u8]) {
        self.now = Instant(self.now.0 + 1);
        if self.node.handle_frame(self.now, from, payload).is_err() {
            panic!("the relay refused a valid frame from {from}");
        }
        self.drain();
    }

    /// Move the clock by `by` and run the node's timers if due.
    pub fn advance(&mut self, by: Duration) {
        self.now = self.now + by;
        if self.node.poll_timeout().is_some_and(|t| t <= self.now) {
            self.node.handle_timeout(self.now);
        }
        self.drain();
    }

    fn drain(&mut self) {
        while let Some(o) = self.node.poll_output() {
            if let Output::Transmit { to, frame } = o {
                self.transmits += 1;
                if let Some(rec) = self.recorded.as_mut() {
                    if let Ok(m) = Message::decode(frame.payload()) {
                        rec.push((to, m));
                    }
                }
            }
        }
    }

    /// Run `f` and return what the node transmitted meanwhile (decoded), for self-checks.
    fn recording<S>(s: &mut S, relay: impl Fn(&mut S) -> &mut Relay, f: impl FnOnce(&mut S)) -> Vec<(NodeId, Message)> {
        relay(s).recorded = Some(Vec::new());
        f(s);
        relay(s).recorded.take().unwrap_or_default()
    }

    /// One broadcast frame in: decoded once, the same bytes out to every child, a reply up.
    /// The transmitted frames are dropped, as a driver does once written.
    pub fn relay_once(&mut self) {
        self.now = Instant(self.now.0 + 1);
        if self.node.handle_frame(self.now, self.parent, &self.broadcast).is_err() {
            panic!("the relay refused a valid broadcast");
        }
        self.drain();
    }
}

fn encode(pool: &mut FramePool, msg: &Message) -> Vec<u8> {
    pool.encode(msg, 1 << 20).expect("a small message encodes").payload().to_vec()
}

/// One job's whole life at a relay with 12 children, as a running overlay sees it: the `Run`
/// comes from the parent (a command for the children; the relay runs nothing itself) and is
/// relayed to the 12 children; each child answers with its `Results`, which the relay merges
/// into one message up; the parent's `Ack` is relayed down and the job forgotten. 14 frames in,
/// 25 out, per round. Job ids change every round, so each round's frames are encoded in
/// [`JobRound::round`] (about 14 small encodes, part of the time measured); the clock moves
/// 50 ms a round so that finished jobs age out (`job_linger` 1 s) as they do in a real run.
pub struct JobRound {
    relay: Relay,
    pool: FramePool,
    children: Vec<NodeId>,
    targets: NodeSet,
    job: u64,
}

impl JobRound {
    /// A relay with 12 children, ready for rounds.
    pub fn new() -> JobRound {
        let cfg = Config { job_linger: Duration::from_secs(1), ..Config::default() };
        let relay = Relay::with_config(12, cfg);
        let children = relay.children();
        let mut targets = NodeSet::new();
        for c in &children {
            targets.insert(*c);
        }
        let mut r = JobRound { relay, pool: FramePool::default(), children, targets, job: 0 };
        r.checked_round();
        r
    }

    /// One job, start to end.
    pub fn round(&mut self) {
        self.job += 1;
        let job = self.job;
        let parent = self.relay.parent;
        let run = RunSpec {
            job,
            kind: JobKind::Command,
            target: Target::Nodes(self.targets.clone()),
            argv: List(vec!["uname".into(), "-r".into()]),
            env: List(vec![]),
            cwd: None,
            timeout_ms: 0,
            stream: false,
            push: None,
            max_output: 0,
        };
        let run = encode(&mut self.pool, &Message::Job(JobMsg::Run(Box::new(run))));
        self.relay.feed(parent, &run);
        for &c in &self.children {
            let groups = List(vec![Group {
                status: ExitStatus::Exited(0),
                truncated: false,
                output: b"6.1.0-18-amd64\n".to_vec(),
                nodes: NodeSet::one(c),
                stderr: Vec::new(),
                blob: None,
            }]);
            let results = encode(&mut self.pool, &Message::Job(JobMsg::Results { job, groups, complete: true }));
            self.relay.feed(c, &results);
        }
        let ack = encode(&mut self.pool, &Message::Job(JobMsg::Ack { job, nodes: self.targets.clone() }));
        self.relay.feed(parent, &ack);
        self.relay.advance(Duration::from_millis(50));
    }

    /// [`JobRound::round`], checking what the relay sent: the run to each of the 12 children,
    /// one merged result up (of all 12), the ack to each child. Panics otherwise.
    pub fn checked_round(&mut self) {
        let sent = Relay::recording(self, |r| &mut r.relay, JobRound::round);
        let parent = self.relay.parent;
        let count =
            |kind: &str, up: bool| sent.iter().filter(|(to, m)| (*to == parent) == up && m.kind() == kind).count();
        assert_eq!(count("job.run", false), 12, "the run is relayed to every child");
        assert_eq!(count("job.ack", false), 12, "the ack is relayed to every child");
        let merged: Vec<u64> = sent
            .iter()
            .filter_map(|(to, m)| match m {
                Message::Job(JobMsg::Results { groups, complete: true, .. }) if *to == parent => {
                    Some(groups.iter().map(|g| g.nodes.len()).sum())
                }
                _ => None,
            })
            .collect();
        assert_eq!(merged, [12], "the 12 results go up merged, in one message");
    }
}

impl Default for JobRound {
    fn default() -> Self {
        JobRound::new()
    }
}

/// One RanSub epoch at a relay with 12 children: the parent's `Distribute` comes in, the relay
/// sends each child its own `Distribute` (views compacted from its siblings' last collects) and
/// waits; the 12 children's `Collect`s (10 entries each) come in and the relay compacts them
/// with itself into one `Collect` up. 13 frames in, 13 out, per epoch.
pub struct RanSubRound {
    relay: Relay,
    pool: FramePool,
    children: Vec<NodeId>,
    sets: Vec<List<Entry>>,
    epoch: u32,
}

impl RanSubRound {
    /// A relay with 12 children, ready for epochs.
    pub fn new() -> RanSubRound {
        let relay = Relay::new(12);
        let children = relay.children();
        // Each child's subtree: 40 nodes of its own, 10 of them in its sample.
        let sets = (0..children.len() as u32)
            .map(|c| {
                List(
                    (0..10)
                        .map(|i| Entry {
                            id: id(1000 + c * 40 + i),
                            free: (i % 5) as u8,
                            depth: 3,
                            payload: [c as u8; 8],
                        })
                        .collect(),
                )
            })
            .collect();
        let mut r = RanSubRound { relay, pool: FramePool::default(), children, sets, epoch: 0 };
        r.checked_epoch();
        r
    }

    /// One epoch.
    pub fn epoch(&mut self) {
        self.epoch += 1;
        let epoch = self.epoch;
        let parent = self.relay.parent;
        let all = List((0..10).map(|i| Entry { id: id(5000 + i), free: 1, depth: 2, payload: [9; 8] }).collect());
        let nondesc = List((0..10).map(|i| Entry { id: id(6000 + i), free: 2, depth: 1, payload: [8; 8] }).collect());
        let dist = Message::RanSub(RanSubMsg::Distribute { epoch, population: 2000, all, nondesc });
        let dist = encode(&mut self.pool, &dist);
        self.relay.feed(parent, &dist);
        for (k, &c) in self.children.iter().enumerate() {
            let set = self.sets[k].clone();
            let collect = encode(&mut self.pool, &Message::RanSub(RanSubMsg::Collect { epoch, population: 40, set }));
            self.relay.feed(c, &collect);
        }
    }

    /// [`RanSubRound::epoch`], checking what the relay sent: a distribute to each of the 12
    /// children, then one collect up, for this epoch, counting the whole subtree (12 × 40 + 1),
    /// with a full sample. Panics otherwise.
    pub fn checked_epoch(&mut self) {
        let sent = Relay::recording(self, |r| &mut r.relay, RanSubRound::epoch);
        let parent = self.relay.parent;
        let down = sent.iter().filter(|(to, m)| *to != parent && m.kind() == "ransub.distribute").count();
        assert_eq!(down, 12, "the epoch is distributed to every child");
        let up: Vec<(u32, u32, usize)> = sent
            .iter()
            .filter_map(|(to, m)| match m {
                Message::RanSub(RanSubMsg::Collect { epoch, population, set }) if *to == parent => {
                    Some((*epoch, *population, set.len()))
                }
                _ => None,
            })
            .collect();
        assert_eq!(up, [(self.epoch, 12 * 40 + 1, 10)], "one compacted collect goes up");
    }
}

impl Default for RanSubRound {
    fn default() -> Self {
        RanSubRound::new()
    }
}

/// The connection table at its budget: a relay with a parent, 12 children and `max_links` 64
/// holds 51 idle unpinned links (peers that probed it). [`LinkChurn::touch`] takes a heartbeat
/// from one of them (the link moves to the back of the LRU list); [`LinkChurn::evict`] takes a
/// connection from a new peer, which evicts the least recently used unpinned link.
pub struct LinkChurn {
    relay: Relay,
    heartbeat: Vec<u8>,
    /// Unpinned peers now linked, oldest first.
    linked: std::collections::VecDeque<NodeId>,
    next_peer: u32,
}

/// The connection budget of [`LinkChurn`].
pub const CHURN_LINKS: usize = 64;

impl LinkChurn {
    /// The relay at its budget.
    pub fn new() -> LinkChurn {
        let cfg = Config { max_links: CHURN_LINKS, ..Config::default() };
        let relay = Relay::with_config(12, cfg);
        let heartbeat = encode(&mut FramePool::default(), &Message::Tree(TreeMsg::Heartbeat));
        let mut c = LinkChurn { relay, heartbeat, linked: Default::default(), next_peer: 10_000 };
        while c.relay.node.max_links_open() < CHURN_LINKS {
            let peer = c.new_peer();
            c.relay.node.handle_link(c.relay.now, peer, LinkEvent::Connected);
            c.linked.push_back(peer);
            c.relay.drain();
        }
        let before = c.relay.node.stats().evictions;
        c.evict();
        assert_eq!(c.relay.node.stats().evictions, before + 1, "a new peer at the budget evicts one link");
        c
    }

    /// The unpinned peer used least recently (the next to be evicted).
    pub fn oldest(&self) -> Option<NodeId> {
        self.linked.front().copied()
    }

    /// Links evicted so far.
    pub fn evictions(&self) -> u64 {
        self.relay.node.stats().evictions
    }

    /// Links the relay holds: the parent, the 12 children and the unpinned ones.
    pub fn links(&self) -> usize {
        self.relay.node.link_count()
    }

    fn new_peer(&mut self) -> NodeId {
        self.next_peer += 1;
        id(self.next_peer)
    }

    /// A heartbeat from the least recently used unpinned peer, which makes it the most recent.
    /// Returns that peer.
    pub fn touch(&mut self) -> Option<NodeId> {
        let peer = self.linked.pop_front()?;
        let hb = core::mem::take(&mut self.heartbeat);
        self.relay.feed(peer, &hb);
        self.heartbeat = hb;
        self.linked.push_back(peer);
        Some(peer)
    }

    /// A connection from a new peer: the least recently used unpinned link is evicted.
    /// Returns the link the relay closed.
    pub fn evict(&mut self) -> Option<NodeId> {
        let peer = self.new_peer();
        self.relay.now = Instant(self.relay.now.0 + 1);
        self.relay.node.handle_link(self.relay.now, peer, LinkEvent::Connected);
        let mut closed = None;
        while let Some(o) = self.relay.node.poll_output() {
            if let Output::Close(old) = o {
                closed = Some(old);
                if let Some(k) = self.linked.iter().position(|p| *p == old) {
                    self.linked.remove(k);
                }
            }
        }
        self.linked.push_back(peer);
        closed
    }
}

impl Default for LinkChurn {
    fn default() -> Self {
        LinkChurn::new()
    }
}
