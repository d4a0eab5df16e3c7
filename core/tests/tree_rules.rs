//! One test per RandTree rule, on a tiny in-test network: instant, ordered delivery, so that each
//! test controls exactly which messages flow. (The simulator covers latency and faults at scale.)

use plush_core::wire::{FramePool, List, Message, TreeMsg};
use plush_core::{Command, Config, Instant, LinkEvent, Node, NodeId, Output, TreeState};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

fn id(i: u32) -> NodeId {
    NodeId::loopback(i, 7000)
}

enum Delivery {
    Frame(Vec<u8>),
    Link(LinkEvent),
}

/// Nodes joined by instant links. Frames are delivered in send order.
struct Net {
    now: Instant,
    cfg: Config,
    nodes: BTreeMap<NodeId, Node>,
    links: BTreeSet<(NodeId, NodeId)>,
    queue: VecDeque<(NodeId, NodeId, Delivery)>,
    /// Every tree message delivered: (from, to, message).
    log: Vec<(NodeId, NodeId, TreeMsg)>,
}

fn pair(a: NodeId, b: NodeId) -> (NodeId, NodeId) {
    (a.min(b), a.max(b))
}

impl Net {
    fn new(max_children: usize) -> Net {
        Net {
            now: Instant::ZERO,
            cfg: Config { max_children, ..Config::default() },
            nodes: BTreeMap::new(),
            links: BTreeSet::new(),
            queue: VecDeque::new(),
            log: Vec::new(),
        }
    }

    fn add(&mut self, i: u32, bootstrap: &[u32]) {
        let mut n = Node::new(id(i), self.cfg.clone(), u64::from(i), self.now);
        n.handle_command(self.now, Command::Join { bootstrap: bootstrap.iter().map(|b| id(*b)).collect() })
            .expect("a fresh node accepts Join");
        self.nodes.insert(id(i), n);
        self.drain(id(i));
        self.settle();
    }

    /// Open a link between two nodes, as if one of them had connected.
    fn connect(&mut self, a: u32, b: u32) {
        self.links.insert(pair(id(a), id(b)));
        let now = self.now;
        self.nodes.get_mut(&id(a)).unwrap().handle_link(now, id(b), LinkEvent::Connected);
        self.nodes.get_mut(&id(b)).unwrap().handle_link(now, id(a), LinkEvent::Connected);
        self.drain(id(a));
        self.drain(id(b));
        self.settle();
    }

    fn node(&self, i: u32) -> &Node {
        &self.nodes[&id(i)]
    }

    fn command(&mut self, i: u32, cmd: Command) {
        let now = self.now;
        self.nodes.get_mut(&id(i)).expect("node exists").handle_command(now, cmd).expect("command accepted");
        self.drain(id(i));
        self.settle();
    }

    /// The process of `i` dies: its links reset.
    fn kill(&mut self, i: u32) {
        let dead = id(i);
        self.nodes.remove(&dead);
        let gone: Vec<_> = self.links.iter().copied().filter(|(a, b)| *a == dead || *b == dead).collect();
        for (a, b) in gone {
            self.links.remove(&(a, b));
            let other = if a == dead { b } else { a };
            self.queue.push_back((dead, other, Delivery::Link(LinkEvent::Closed)));
        }
        self.settle();
    }

    fn drain(&mut self, at: NodeId) {
        let Some(node) = self.nodes.get_mut(&at) else { return };
        let mut outs = Vec::new();
        while let Some(o) = node.poll_output() {
            outs.push(o);
        }
        for o in outs {
            match o {
                Output::Transmit { to, frame } => {
                    if self.links.contains(&pair(at, to)) {
                        self.queue.push_back((at, to, Delivery::Frame(frame.payload().to_vec())));
                    }
                }
                Output::Connect(peer) => {
                    if self.nodes.contains_key(&peer) {
                        self.links.insert(pair(at, peer));
                        self.queue.push_back((at, peer, Delivery::Link(LinkEvent::Connected)));
                        self.queue.push_back((peer, at, Delivery::Link(LinkEvent::Connected)));
                    } else {
                        self.queue.push_back((peer, at, Delivery::Link(LinkEvent::ConnectFailed)));
                    }
                }
                Output::Close(peer) => {
                    if self.links.remove(&pair(at, peer)) {
                        self.queue.push_back((at, peer, Delivery::Link(LinkEvent::Closed)));
                    }
                }
                Output::Event(_) => {}
            }
        }
    }

    /// Deliver everything queued (bounded).
    fn settle(&mut self) {
        for _ in 0..100_000 {
            let Some((from, to, d)) = self.queue.pop_front() else { return };
            let now = self.now;
            let Some(node) = self.nodes.get_mut(&to) else { continue };
            match d {
                Delivery::Frame(bytes) => {
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

    /// Advance virtual time by `d`, firing timers as they come due.
    fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        loop {
            let next = self.nodes.values().filter_map(|n| n.poll_timeout()).min();
            match next {
                Some(t) if t <= end => {
                    self.now = self.now.max(t);
                    let due: Vec<NodeId> =
                        self.nodes.iter().filter(|(_, n)| n.poll_timeout() == Some(t)).map(|(k, _)| *k).collect();
                    for k in due {
                        let now = self.now;
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

    /// Every node joined, exactly one root, and parents and children agree.
    fn assert_one_tree(&self) {
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

#[test]
fn a_full_node_redirects_the_join_down_never_up() {
    let mut net = Net::new(2);
    net.add(0, &[]);
    net.add(1, &[0]);
    net.add(2, &[0]);
    assert_eq!(net.node(0).children(), &[id(1), id(2)]);
    net.add(3, &[0]);
    // The root was full: node 3 went to one of its children, marked as a redirect.
    assert_eq!(net.node(0).children().len(), 2);
    let parent = net.node(3).parent().expect("node 3 joined");
    assert!(parent == id(1) || parent == id(2));
    assert_eq!(net.node(0).stats().redirects, 1);
    let redirect =
        net.log.iter().find(|(_, _, m)| matches!(m, TreeMsg::Join { mode: plush_core::wire::JoinMode::Redirect, .. }));
    let (from, to, _) = redirect.expect("a redirected join was sent");
    assert_eq!((*from, *to), (id(0), parent));
    assert_eq!(net.node(3).depth(), 2);
    net.assert_one_tree();
}

#[test]
fn a_redirect_from_a_node_that_is_not_the_parent_is_refused_with_remove() {
    let mut net = Net::new(4);
    net.add(0, &[]);
    net.add(1, &[0]);
    net.add(2, &[0]);
    // Node 2 (not node 1's parent) pretends node 1 is its child and redirects a join to it.
    let mut pool = FramePool::default();
    let join = Message::Tree(TreeMsg::Join { joiner: id(9), mode: plush_core::wire::JoinMode::Redirect, hops: 1 });
    let frame = pool.encode(&join, 1 << 20).unwrap();
    net.connect(1, 2);
    net.nodes.get_mut(&id(1)).unwrap().handle_frame(net.now, id(2), frame.payload()).unwrap();
    net.drain(id(1));
    net.settle();
    assert!(net.log.iter().any(|(f, t, m)| (*f, *t) == (id(1), id(2)) && *m == TreeMsg::Remove));
    assert_eq!(net.node(1).children().len(), 0, "node 1 accepted nothing");
    net.assert_one_tree();
}

#[test]
fn a_stale_join_accept_gets_a_remove_and_the_parent_stays() {
    let mut net = Net::new(4);
    net.add(0, &[]);
    net.add(1, &[0]);
    net.add(2, &[0]);
    assert_eq!(net.node(2).parent(), Some(id(0)));
    // Node 1 claims node 2 as its child (as if an old join of node 2 had reached it late).
    let mut pool = FramePool::default();
    let accept = Message::Tree(TreeMsg::JoinAccept {
        path: List(vec![id(0), id(1)]),
        top: List(vec![id(1), id(2)]),
        siblings: List(Vec::new()),
        direct: false,
    });
    let frame = pool.encode(&accept, 1 << 20).unwrap();
    net.connect(1, 2);
    net.nodes.get_mut(&id(2)).unwrap().handle_frame(net.now, id(1), frame.payload()).unwrap();
    net.drain(id(2));
    net.settle();
    assert!(net.log.iter().any(|(f, t, m)| (*f, *t) == (id(2), id(1)) && *m == TreeMsg::Remove));
    assert_eq!(net.node(2).parent(), Some(id(0)), "the real parent is kept");
    net.assert_one_tree();
}

#[test]
fn when_the_root_dies_the_lowest_sibling_takes_over_and_the_others_join_it() {
    let mut net = Net::new(3);
    net.add(0, &[]);
    net.add(5, &[0]);
    net.add(3, &[0]);
    net.add(7, &[0]);
    for i in 10..20 {
        net.add(i, &[0]);
    }
    assert_eq!(net.node(3).siblings(), &[id(5), id(7)]);
    net.kill(0);
    net.advance(Duration::from_secs(2));
    assert!(net.node(3).is_root(), "the lowest sibling is root");
    for s in [5, 7] {
        // Each other sibling asked node 3 directly (it may have been placed further down).
        let asked = net.log.iter().any(|(f, t, m)| {
            (*f, *t) == (id(s), id(3))
                && matches!(m, TreeMsg::Join { mode: plush_core::wire::JoinMode::Failover { dead_root }, .. } if *dead_root == id(0))
        });
        assert!(asked, "sibling {s} sent its failover join to the lowest sibling");
        assert_eq!(net.node(s).root(), Some(id(3)));
    }
    net.assert_one_tree();
}

#[test]
fn the_lower_root_absorbs_the_higher_one_with_its_subtree() {
    let mut net = Net::new(3);
    net.add(2, &[]);
    net.add(20, &[2]);
    net.add(21, &[2]);
    net.add(1, &[]);
    net.add(10, &[1]);
    net.add(11, &[1]);
    assert!(net.node(1).is_root() && net.node(2).is_root());
    // The higher root learns of a member of the other tree; its next probe finds the lower root.
    net.command(2, Command::AddPeers { peers: vec![id(10)] });
    net.advance(Duration::from_secs(12));
    assert!(net.node(1).is_root());
    assert!(!net.node(2).is_root());
    assert_eq!(net.node(20).root(), Some(id(1)));
    assert_eq!(net.node(20).parent(), Some(id(2)), "the subtree came along");
    net.assert_one_tree();
}

#[test]
fn an_ordinary_join_never_displaces_a_live_root() {
    let mut net = Net::new(3);
    net.add(50, &[]);
    net.add(60, &[50]);
    net.add(1, &[50]); // lower than the root, but only a joiner
    assert!(net.node(50).is_root());
    assert_eq!(net.node(1).parent(), Some(id(50)));
    net.assert_one_tree();
}

#[test]
fn a_leaving_node_tells_parent_and_children_and_its_subtree_rejoins() {
    let mut net = Net::new(2);
    net.add(0, &[]);
    net.add(1, &[0]);
    net.add(2, &[0]);
    for i in 3..9 {
        net.add(i, &[0]);
    }
    let orphans: Vec<NodeId> = net.node(1).children().to_vec();
    assert!(!orphans.is_empty());
    net.command(1, Command::Leave);
    assert_eq!(net.node(1).state(), TreeState::Left);
    assert!(!net.node(0).children().contains(&id(1)), "the parent dropped the leaver");
    net.nodes.remove(&id(1));
    net.advance(Duration::from_secs(2));
    for o in orphans {
        assert_ne!(net.node(o.loopback_index().unwrap()).parent(), Some(id(1)));
    }
    net.assert_one_tree();
}

#[test]
fn a_path_through_ourselves_is_refused() {
    let mut net = Net::new(4);
    net.add(0, &[]);
    net.add(1, &[0]);
    // Node 0 (root) hears from a new "parent" whose path contains node 0 itself.
    let mut pool = FramePool::default();
    let accept = Message::Tree(TreeMsg::JoinAccept {
        path: List(vec![id(0), id(1)]),
        top: List(Vec::new()),
        siblings: List(Vec::new()),
        direct: false,
    });
    let frame = pool.encode(&accept, 1 << 20).unwrap();
    net.nodes.get_mut(&id(0)).unwrap().handle_frame(net.now, id(1), frame.payload()).unwrap();
    net.drain(id(0));
    net.settle();
    assert_eq!(net.node(0).parent(), None, "a node never adopts a parent whose path contains itself");
    assert!(net.log.iter().any(|(f, t, m)| (*f, *t) == (id(0), id(1)) && *m == TreeMsg::Remove));
    net.advance(Duration::from_secs(2));
    assert!(net.node(0).is_root());
    net.assert_one_tree();
}

#[test]
fn bad_frames_are_errors_and_change_nothing() {
    let mut net = Net::new(4);
    net.add(0, &[]);
    net.add(1, &[0]);
    let before = (net.node(1).parent(), net.node(1).children().to_vec(), *net.node(1).stats());
    let n = net.nodes.get_mut(&id(1)).unwrap();
    assert!(n.handle_frame(Instant::ZERO, id(0), &[0xff, 0xee]).is_err());
    assert!(n.handle_frame(Instant::ZERO, id(77), &[0, 3]).is_err(), "no link to node 77");
    assert!(n.poll_output().is_none());
    assert_eq!((n.parent(), n.children().to_vec()), (before.0, before.1));
    assert_eq!(n.stats().decode_errors, before.2.decode_errors + 1);
}
