//! # plush-benches
//!
//! Criterion benchmarks of Plush, run with `cargo bench -p plush-benches`:
//! - `benches/sim.rs`: simulator throughput (events per second) on [`failure_scenario`].
//! - `benches/wire.rs`: encoding, decoding and framing of one message.
//! - `benches/relay.rs`: the core relaying a broadcast to 12 children ([`Relay`]); the test
//!   `tests/relay_allocs.rs` checks that it allocates nothing in steady state.
//!
//! This library holds what the benchmarks share, so that a number quoted elsewhere can name the
//! exact scenario it measured.
// Unsafe only in [`counting`]: a global allocator cannot be written without it.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod counting;

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

use plush_core::wire::{FramePool, JoinMode, List, Message, TreeMsg};
use plush_core::{Command, Config, Instant, LinkEvent, Node, NodeId, Output};

/// The relay case: one node with a parent and `children` children, all links up. The parent
/// sends it broadcast frames; it hands the same bytes to every child and answers up.
pub struct Relay {
    node: Node,
    parent: NodeId,
    broadcast: Vec<u8>,
    now: Instant,
    /// Frames the node asked to transmit so far.
    pub transmits: u64,
}

fn id(i: u32) -> NodeId {
    NodeId::loopback(i, 7000)
}

impl Relay {
    /// A relay node (id 1) below a parent (id 0, the root) with `children` children (ids 2..).
    pub fn new(children: u32) -> Relay {
        let (me, parent) = (id(1), id(0));
        let cfg = Config { max_children: children as usize, ..Config::default() };
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
            .encode(&Message::Tree(TreeMsg::Broadcast { id: 9 }), 1 << 20)
            .expect("a small message encodes")
            .payload()
            .to_vec();
        Relay { node, parent, broadcast, now: Instant::ZERO, transmits: 0 }
    }

    /// One broadcast frame in: decoded once, the same bytes out to every child, a reply up.
    /// The transmitted frames are dropped, as a driver does once written.
    pub fn relay_once(&mut self) {
        self.now = Instant(self.now.0 + 1);
        if self.node.handle_frame(self.now, self.parent, &self.broadcast).is_err() {
            panic!("the relay refused a valid broadcast");
        }
        while let Some(o) = self.node.poll_output() {
            if let Output::Transmit { .. } = o {
                self.transmits += 1;
            }
        }
    }
}
