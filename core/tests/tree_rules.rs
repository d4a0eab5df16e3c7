//! One test per RandTree rule, on a tiny in-test network (see `common`): instant, ordered
//! delivery, so that each test controls exactly which messages flow. (The simulator covers latency
//! and faults at scale.)

mod common;

use common::{id, Net};
use plush_core::frame::FramePool;
use plush_core::wire::{List, Message, TreeMsg};
use plush_core::{Command, Instant, NodeId, TreeState};
use std::time::Duration;

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
fn a_lower_sibling_that_passed_our_failover_join_on_is_alive_even_when_the_answer_is_lost() {
    // Root 0 over siblings 1 and 2; 1 is full with its own children 3 and 4.
    let mut net = Net::new(2);
    net.add(0, &[]);
    net.add(1, &[0]);
    net.add(2, &[0]);
    net.add(3, &[1]);
    net.add(4, &[1]);
    assert_eq!(net.node(0).children(), &[id(1), id(2)]);
    assert_eq!(net.node(1).children(), &[id(3), id(4)]);
    // Whatever 1's children tell 2 is lost: the place they give it never reaches it.
    net.block(3, 2);
    net.block(4, 2);
    net.kill(0);
    assert!(net.node(1).is_root(), "the lowest sibling took over at once");
    let asked = net.log.iter().any(|(f, t, m)| {
        (*f, *t) == (id(2), id(1))
            && matches!(m, TreeMsg::Join { mode: plush_core::wire::JoinMode::Failover { .. }, .. })
    });
    assert!(asked, "2 asked the lower sibling");
    assert!(
        net.log.iter().any(|(f, t, m)| (*f == id(1) && (*t == id(3) || *t == id(4)))
            && matches!(m, TreeMsg::Join { joiner, mode: plush_core::wire::JoinMode::Redirect, .. } if *joiner == id(2))),
        "the full new root passed 2's join down"
    );
    // Past the wait for silent siblings (a connect timeout and a repair timeout), 2 has had no
    // answer; but 1 took its connection after 2 asked, so 1 is alive and 2 is not the lowest
    // survivor: it must not become a second root.
    net.advance(net.cfg.connect_timeout + net.cfg.repair_timeout + Duration::from_millis(100));
    assert!(!net.node(2).is_root(), "2 became a second root beside the live lower sibling 1");
    assert_eq!(net.node(2).state(), TreeState::Joining);
    net.unblock(3, 2);
    net.unblock(4, 2);
    net.advance(Duration::from_secs(10));
    net.assert_one_tree();
    assert_eq!(net.node(2).root(), Some(id(1)));
}

#[test]
fn a_new_root_keeps_the_links_of_the_siblings_it_held_while_it_takes_them() {
    // Root 0 over 1 to 4; node 1, the lowest, is short of links.
    let mut net =
        Net::with_config(plush_core::Config { max_children: 8, max_links: 10, ..plush_core::Config::default() });
    net.add(0, &[]);
    for i in 1..5 {
        net.add(i, &[0]);
    }
    // 2, 3 and 4 saw the root die before 1 did: 1, which heard from it lately, refuses their
    // failover joins for now and holds them.
    for s in [2, 3, 4] {
        net.connect(s, 1);
        let mode = plush_core::wire::JoinMode::Failover { dead_root: id(0) };
        net.inject(s, 1, TreeMsg::Join { joiner: id(s), mode, hops: 0 });
    }
    assert_eq!(net.log.iter().filter(|(f, _, m)| *f == id(1) && *m == TreeMsg::JoinReject).count(), 3);
    // Other peers crowd 1's links until the oldest idle ones, 2's and 3's, are evicted (each
    // told `Closing`); 4's is next.
    let evicted = |net: &Net, to: u32| {
        net.log.iter().chain(&net.lost).any(|(f, t, m)| (*f, *t) == (id(1), id(to)) && *m == TreeMsg::Closing)
    };
    let mut phantom = 50;
    while !evicted(&net, 3) {
        assert!(phantom < 70, "3's link was never evicted");
        net.link_phantom(phantom, 1);
        phantom += 1;
    }
    assert!(evicted(&net, 2) && !evicted(&net, 4));
    // 1 sees the root die and takes over. It connects to 2 and 3 again to take them (the
    // root's link, closed, leaves room for one): the second must not make room by evicting 4,
    // whom it takes in the same turn.
    net.kill(0);
    assert!(net.node(1).is_root());
    assert!(!evicted(&net, 4), "1 evicted the link of 4, a sibling it was taking as a child");
    let mut children = net.node(1).children().to_vec();
    children.sort();
    assert_eq!(children, vec![id(2), id(3), id(4)]);
    net.assert_one_tree();
}

/// Two trees that know nothing of each other: root 2 over 20 and 21, root 1 over 10 (and 11).
fn two_trees(with_11: bool) -> Net {
    let mut net = Net::new(3);
    net.add(2, &[]);
    net.add(20, &[2]);
    net.add(21, &[2]);
    net.add(1, &[]);
    net.add(10, &[1]);
    if with_11 {
        net.add(11, &[1]);
    }
    net
}

#[test]
fn the_lower_root_absorbs_the_higher_one_with_its_subtree() {
    let mut net = two_trees(true);
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
fn a_root_probe_round_moves_past_dead_peers_to_the_other_tree() {
    // A fragment's root whose contacts are mostly dead (a wave of failures took them) and one
    // member of another tree: one round of probes goes through the dead ones at once and meets
    // the other tree; one random probe per round would find it once in eight rounds.
    let mut net = two_trees(false);
    let mut peers: Vec<NodeId> = (90..97).map(id).collect();
    peers.push(id(10));
    net.command(2, Command::AddPeers { peers });
    let t0 = net.now;
    // A new root's first probe round comes within 1.1 s.
    net.advance(Duration::from_millis(1500));
    assert_eq!(net.node(2).root(), Some(id(1)), "merged within the first round");
    let probes = net.log.iter().filter(|(f, _, m)| *f == id(2) && matches!(m, TreeMsg::Probe { .. })).count();
    assert!(probes >= 1, "the merge came from node 2's own probes");
    assert!(net.events_of(2, t0).iter().any(|(_, e)| *e == plush_core::Event::StoppedBeingRoot));
    assert_eq!(net.node(20).root(), Some(id(1)));
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
