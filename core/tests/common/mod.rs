//! A tiny in-test network for the core's integration tests: instant, ordered delivery, so that
//! each test controls exactly which messages flow, and virtual time that only moves when a test
//! calls [`Net::advance`]. (The simulator covers latency and faults at scale.)
//!
//! Faults: a process crash ([`Net::kill`]) resets the dead node's links at once; a host crash
//! ([`Net::crash_host`]) is silence: frames to the dead node vanish and connects to it fail only
//! after `Config::connect_timeout`. [`Net::blocked`] drops frames on chosen directed pairs. A
//! frame still in flight when its link closes is dropped.
// Each test file uses a different part of the harness.
#![allow(dead_code)]

use plush_core::frame::FramePool;
use plush_core::wire::{Message, TreeMsg};
use plush_core::{Command, Config, Event, Instant, LinkEvent, Node, NodeId, Output, TreeState};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

/// The id of test node `i`.
pub fn id(i: u32) -> NodeId {
    NodeId::loopback(i, 7000)
}

/// Something carried to a node.
pub enum Delivery {
    /// A frame's payload, sent on the link of this generation.
    Frame(Vec<u8>, u64),
    /// A link event.
    Link(LinkEvent),
}

/// Nodes joined by instant links. Frames are delivered in send order.
pub struct Net {
    pub now: Instant,
    pub cfg: Config,
    pub nodes: BTreeMap<NodeId, Node>,
    /// Open links (unordered pairs) and their generation: a frame still in flight when its link
    /// closed is dropped, as a real socket would drop it.
    pub links: BTreeMap<(NodeId, NodeId), u64>,
    next_gen: u64,
    pub queue: VecDeque<(NodeId, NodeId, Delivery)>,
    /// Deliveries due later (connect timeouts to silent hosts): (when, from, to, what).
    pub later: Vec<(Instant, NodeId, NodeId, Delivery)>,
    /// Every tree message delivered: (from, to, message).
    pub log: Vec<(NodeId, NodeId, TreeMsg)>,
    /// Every tree message sent but not delivered (its receiver is gone, or the pair is blocked).
    pub lost: Vec<(NodeId, NodeId, TreeMsg)>,
    /// Every event a node reported: (when, node, event).
    pub events: Vec<(Instant, NodeId, Event)>,
    /// Directed pairs (from, to) whose frames are dropped.
    pub blocked: BTreeSet<(NodeId, NodeId)>,
    /// Crashed hosts: connects to them time out.
    pub silent: BTreeSet<NodeId>,
}

/// The unordered pair of a link.
pub fn pair(a: NodeId, b: NodeId) -> (NodeId, NodeId) {
    (a.min(b), a.max(b))
}

impl Net {
    /// A network of nodes with `max_children` and the default configuration otherwise.
    pub fn new(max_children: usize) -> Net {
        Net::with_config(Config { max_children, ..Config::default() })
    }

    /// A network whose nodes use `cfg`.
    pub fn with_config(cfg: Config) -> Net {
        Net {
            now: Instant::ZERO,
            cfg,
            nodes: BTreeMap::new(),
            links: BTreeMap::new(),
            next_gen: 0,
            queue: VecDeque::new(),
            later: Vec::new(),
            log: Vec::new(),
            lost: Vec::new(),
            events: Vec::new(),
            blocked: BTreeSet::new(),
            silent: BTreeSet::new(),
        }
    }

    /// Start node `i` and let it join through `bootstrap` (a root if empty).
    pub fn add(&mut self, i: u32, bootstrap: &[u32]) {
        let mut n = Node::new(id(i), self.cfg.clone(), u64::from(i), self.now);
        n.handle_command(self.now, Command::Join { bootstrap: bootstrap.iter().map(|b| id(*b)).collect() })
            .expect("a fresh node accepts Join");
        self.silent.remove(&id(i));
        self.nodes.insert(id(i), n);
        self.drain(id(i));
        self.settle();
    }

    /// Record the link between `a` and `b` as open (a new generation unless it already is).
    fn open(&mut self, a: NodeId, b: NodeId) {
        if !self.links.contains_key(&pair(a, b)) {
            self.next_gen += 1;
            self.links.insert(pair(a, b), self.next_gen);
        }
    }

    /// Open a link between two nodes, as if one of them had connected.
    pub fn connect(&mut self, a: u32, b: u32) {
        self.open(id(a), id(b));
        let now = self.now;
        self.nodes.get_mut(&id(a)).unwrap().handle_link(now, id(b), LinkEvent::Connected);
        self.nodes.get_mut(&id(b)).unwrap().handle_link(now, id(a), LinkEvent::Connected);
        self.drain(id(a));
        self.drain(id(b));
        self.settle();
    }

    /// Open a link from `phantom` (an id with no node behind it: whatever is sent to it is
    /// recorded in [`Net::lost`]) to node `to`.
    pub fn link_phantom(&mut self, phantom: u32, to: u32) {
        assert!(!self.nodes.contains_key(&id(phantom)), "{phantom} is a real node");
        self.open(id(phantom), id(to));
        let now = self.now;
        self.nodes.get_mut(&id(to)).expect("node exists").handle_link(now, id(phantom), LinkEvent::Connected);
        self.drain(id(to));
        self.settle();
    }

    /// Hand node `to` a tree message from `from` over their open link, and settle.
    pub fn inject(&mut self, from: u32, to: u32, msg: TreeMsg) {
        let frame = FramePool::default().encode(&Message::Tree(msg.clone()), self.cfg.max_frame).unwrap();
        let now = self.now;
        self.log.push((id(from), id(to), msg));
        self.nodes
            .get_mut(&id(to))
            .expect("node exists")
            .handle_frame(now, id(from), frame.payload())
            .expect("the receiver has a link from the sender");
        self.drain(id(to));
        self.settle();
    }

    pub fn node(&self, i: u32) -> &Node {
        &self.nodes[&id(i)]
    }

    pub fn command(&mut self, i: u32, cmd: Command) {
        let now = self.now;
        self.nodes.get_mut(&id(i)).expect("node exists").handle_command(now, cmd).expect("command accepted");
        self.drain(id(i));
        self.settle();
    }

    /// The process of `i` dies: its links reset.
    pub fn kill(&mut self, i: u32) {
        let dead = id(i);
        self.nodes.remove(&dead);
        let gone: Vec<_> = self.links.keys().copied().filter(|(a, b)| *a == dead || *b == dead).collect();
        for (a, b) in gone {
            self.links.remove(&(a, b));
            let other = if a == dead { b } else { a };
            self.queue.push_back((dead, other, Delivery::Link(LinkEvent::Closed)));
        }
        self.settle();
    }

    /// The host of `i` dies: silence. Its peers keep their links to it until they notice; frames
    /// to it vanish; new connects to it fail after the connect timeout.
    pub fn crash_host(&mut self, i: u32) {
        self.nodes.remove(&id(i));
        self.silent.insert(id(i));
    }

    /// Drop every frame `from` sends to `to` (one direction).
    pub fn block(&mut self, from: u32, to: u32) {
        self.blocked.insert((id(from), id(to)));
    }

    /// Let frames from `from` reach `to` again.
    pub fn unblock(&mut self, from: u32, to: u32) {
        self.blocked.remove(&(id(from), id(to)));
    }

    fn record_lost(&mut self, from: NodeId, to: NodeId, bytes: &[u8]) {
        if let Ok(Message::Tree(m)) = Message::decode(bytes) {
            self.lost.push((from, to, m));
        }
    }

    pub fn drain(&mut self, at: NodeId) {
        let Some(node) = self.nodes.get_mut(&at) else { return };
        let mut outs = Vec::new();
        while let Some(o) = node.poll_output() {
            outs.push(o);
        }
        for o in outs {
            match o {
                Output::Transmit { to, frame } => {
                    if self.blocked.contains(&(at, to)) {
                        self.record_lost(at, to, frame.payload());
                    } else if let Some(&gen) = self.links.get(&pair(at, to)) {
                        self.queue.push_back((at, to, Delivery::Frame(frame.payload().to_vec(), gen)));
                    }
                }
                Output::Connect(peer) => {
                    if self.nodes.contains_key(&peer) {
                        self.open(at, peer);
                        self.queue.push_back((at, peer, Delivery::Link(LinkEvent::Connected)));
                        self.queue.push_back((peer, at, Delivery::Link(LinkEvent::Connected)));
                    } else if self.silent.contains(&peer) {
                        let when = self.now + self.cfg.connect_timeout;
                        self.later.push((when, peer, at, Delivery::Link(LinkEvent::ConnectFailed)));
                    } else {
                        self.queue.push_back((peer, at, Delivery::Link(LinkEvent::ConnectFailed)));
                    }
                }
                Output::Close(peer) if self.links.remove(&pair(at, peer)).is_some() => {
                    self.queue.push_back((at, peer, Delivery::Link(LinkEvent::Closed)));
                }
                Output::Event(e) => self.events.push((self.now, at, e)),
                // The control plane is tested through the simulator (driver-sim/tests).
                _ => {}
            }
        }
    }

    /// Deliver everything queued (bounded).
    pub fn settle(&mut self) {
        for _ in 0..100_000 {
            let Some((from, to, d)) = self.queue.pop_front() else { return };
            let now = self.now;
            let stale = matches!(&d, Delivery::Frame(_, gen) if self.links.get(&pair(from, to)) != Some(gen));
            let Some(node) = self.nodes.get_mut(&to).filter(|_| !stale) else {
                if let Delivery::Frame(bytes, _) = d {
                    self.record_lost(from, to, &bytes);
                }
                continue;
            };
            match d {
                Delivery::Frame(bytes, _) => {
                    if let Ok(Message::Tree(m)) = Message::decode(&bytes) {
                        self.log.push((from, to, m));
                    }
                    node.handle_frame(now, from, &bytes).expect("nodes only send valid frames");
                }
                Delivery::Link(ev) => node.handle_link(now, from, ev),
            }
            self.drain(to);
        }
        panic!("the network did not settle");
    }

    /// Advance virtual time by `d`, firing timers (and delayed deliveries) as they come due.
    pub fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        loop {
            let timer = self.nodes.values().filter_map(|n| n.poll_timeout()).min();
            let late = self.later.iter().map(|l| l.0).min();
            match [timer, late].into_iter().flatten().min() {
                Some(t) if t <= end => {
                    self.now = self.now.max(t);
                    let now = self.now;
                    let (due, rest): (Vec<_>, Vec<_>) = self.later.drain(..).partition(|l| l.0 <= now);
                    self.later = rest;
                    for (_, from, to, d) in due {
                        self.queue.push_back((from, to, d));
                    }
                    self.settle();
                    let due: Vec<NodeId> = self
                        .nodes
                        .iter()
                        .filter(|(_, n)| n.poll_timeout().is_some_and(|x| x <= now))
                        .map(|(k, _)| *k)
                        .collect();
                    for k in due {
                        if let Some(n) = self.nodes.get_mut(&k) {
                            n.handle_timeout(now);
                        }
                        self.drain(k);
                    }
                    self.settle();
                }
                _ => break,
            }
        }
        self.now = end;
    }

    /// The events node `i` reported at or after `since`.
    pub fn events_of(&self, i: u32, since: Instant) -> Vec<(Instant, Event)> {
        self.events.iter().filter(|(t, n, _)| *n == id(i) && *t >= since).map(|(t, _, e)| (*t, e.clone())).collect()
    }

    /// Every node joined, exactly one root, and parents and children agree.
    pub fn assert_one_tree(&self) {
        let roots: Vec<_> = self.nodes.values().filter(|n| n.is_root()).map(|n| n.id()).collect();
        assert_eq!(roots.len(), 1, "roots: {roots:?}");
        for n in self.nodes.values() {
            assert_eq!(n.state(), TreeState::Joined, "{} is not joined", n.id());
            assert_eq!(n.root(), Some(roots[0]), "{} believes in another root", n.id());
            if let Some(p) = n.parent() {
                assert!(self.nodes[&p].children().contains(&n.id()), "{p} does not list its child {}", n.id());
            }
            for c in n.children() {
                assert_eq!(self.nodes[c].parent(), Some(n.id()), "{c} disagrees with its parent {}", n.id());
            }
        }
    }
}
