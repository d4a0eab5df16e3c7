//! Failure detection and repair on the in-test network (see `common`): heartbeats on quiet tree
//! links, a silent parent declared failed within `dead_after + heartbeat`, direct repair through
//! RanSub candidates, and the detached-top rule that keeps repairs from closing a loop.

mod common;

use common::{id, Net};
use plush_core::wire::{JoinMode, TreeMsg};
use plush_core::{Config, Event, NodeId, TreeState};
use std::time::Duration;

/// Index of a test node's id.
fn ix(n: NodeId) -> u32 {
    n.loopback_index().expect("a test id")
}

/// A tree of 13 nodes of degree 3 rooted at node 0, after a couple of RanSub epochs so that
/// every node holds views (the time is left off the heartbeat grid), and the root's child with the
/// most children.
fn small_tree() -> (Net, NodeId) {
    let mut net = Net::new(3);
    net.add(0, &[]);
    for i in 1..=12 {
        net.add(i, &[0]);
    }
    net.advance(Duration::from_millis(12_300));
    net.assert_one_tree();
    assert_eq!(net.node(0).children().len(), 3);
    let busiest = net.node(0).children().iter().copied().max_by_key(|c| net.nodes[c].children().len()).unwrap();
    assert!(net.nodes[&busiest].children().len() >= 2, "{busiest} is an interior node with children");
    (net, busiest)
}

#[test]
fn a_silent_parent_is_declared_failed_within_dead_after_plus_a_heartbeat_and_its_children_rejoin() {
    let (mut net, victim) = small_tree();
    let (dead_after, heartbeat) = (net.cfg.dead_after, net.cfg.heartbeat);
    let orphans: Vec<NodeId> = net.nodes[&victim].children().to_vec();
    let crash_at = net.now;
    // A host crash: no reset reaches anyone; what is sent to it vanishes.
    net.crash_host(ix(victim));
    net.advance(dead_after + heartbeat);
    let window = crash_at + dead_after + heartbeat;
    for &o in &orphans {
        let silent: Vec<_> =
            net.events_of(ix(o), crash_at).into_iter().filter(|(_, e)| *e == Event::LinkSilent(victim)).collect();
        let &(t, _) = silent.first().unwrap_or_else(|| panic!("{o} never declared its silent parent {victim} failed"));
        assert!(t <= window, "{o} noticed at {t:?}, after {window:?}");
        // Heartbeats flow every interval, so the last frame from the parent came at most one
        // interval before the crash: failing it earlier would be a false alarm.
        assert!(t >= crash_at + dead_after - heartbeat, "{o} declared {victim} failed too early, at {t:?}");
        assert_eq!(net.nodes[&o].stats().silent_links, 1);
        assert_ne!(net.nodes[&o].parent(), Some(victim));
    }
    // The root notices its silent child as well.
    assert!(!net.node(0).children().contains(&victim), "the root dropped its silent child");
    assert!(net.events_of(0, crash_at).iter().any(|(t, e)| *e == Event::LinkSilent(victim) && *t <= window));

    net.advance(Duration::from_secs(10));
    for &o in &orphans {
        let n = &net.nodes[&o];
        assert_eq!(n.state(), TreeState::Joined, "{o} rejoined");
        assert!(n.parent().is_some_and(|p| p != victim), "{o} has a live parent: {:?}", n.parent());
        assert_eq!(n.stats().repairs_via_ransub + n.stats().repairs_via_root, 1, "{o} repaired once");
    }
    net.assert_one_tree();
    assert_eq!(net.nodes.len(), 12);
}

#[test]
fn a_quiet_tree_link_carries_heartbeats_both_ways_and_nobody_is_declared_dead() {
    // No RanSub epoch within the test: the link carries nothing but heartbeats.
    let cfg = Config { ransub_epoch: Duration::from_secs(3600), ..Config::default() };
    let (heartbeat, dead_after) = (cfg.heartbeat, cfg.dead_after);
    let mut net = Net::with_config(cfg);
    net.add(0, &[]);
    net.add(1, &[0]);
    net.assert_one_tree();
    let (start, logged) = (net.now, net.log.len());
    net.advance(Duration::from_secs(10));
    let count = |from: u32, to: u32| {
        net.log[logged..].iter().filter(|(f, t, m)| (*f, *t) == (id(from), id(to)) && *m == TreeMsg::Heartbeat).count()
    };
    let (down, up) = (count(0, 1), count(1, 0));
    assert!((8..=11).contains(&down), "parent to child: {down} heartbeats in 10 s (one a second expected)");
    assert!((8..=11).contains(&up), "child to parent: {up} answers in 10 s (one a second expected)");
    let others: Vec<_> = net.log[logged..].iter().filter(|(_, _, m)| *m != TreeMsg::Heartbeat).collect();
    assert!(others.is_empty(), "the link carried only heartbeats: {others:?}");
    for i in [0, 1] {
        assert_eq!(net.node(i).stats().silent_links, 0, "node {i} declared a link dead");
        assert!(!net.events_of(i, start).iter().any(|(_, e)| matches!(e, Event::LinkSilent(_))));
    }
    assert_eq!(net.node(1).parent(), Some(id(0)));
    assert_eq!(net.node(0).children(), &[id(1)]);

    // The answers are what keeps the child alive in the parent's eyes: stop them, and the parent
    // declares the child failed within `dead_after` plus one interval.
    let muted_at = net.now;
    net.block(1, 0);
    net.advance(dead_after + heartbeat);
    let silent = net.events_of(0, muted_at).into_iter().find(|(_, e)| *e == Event::LinkSilent(id(1)));
    let (t, _) = silent.expect("the parent declared its mute child failed");
    assert!(t <= muted_at + dead_after + heartbeat, "noticed at {t:?}");
    assert!(!net.node(0).children().contains(&id(1)));
}

#[test]
fn the_children_of_a_crashed_interior_node_repair_directly_and_are_counted() {
    let (mut net, victim) = small_tree();
    let orphans: Vec<NodeId> = net.nodes[&victim].children().to_vec();
    let before: u64 = net.nodes.values().map(|n| n.stats().repairs_via_ransub + n.stats().repairs_via_root).sum();
    assert_eq!(before, 0, "nobody repaired before the crash");
    let crash_at = net.now;
    // A process crash: its links reset at once.
    net.kill(ix(victim));
    net.advance(Duration::from_secs(5));
    let (mut via_ransub, mut via_root) = (0, 0);
    for &o in &orphans {
        let n = &net.nodes[&o];
        assert_eq!(n.state(), TreeState::Joined, "{o} re-attached");
        assert!(n.parent().is_some_and(|p| p != victim));
        let st = n.stats();
        assert_eq!(st.repairs_via_ransub + st.repairs_via_root, 1, "{o}: exactly one repair counted: {st:?}");
        let repaired: Vec<bool> = net
            .events_of(ix(o), crash_at)
            .into_iter()
            .filter_map(|(_, e)| match e {
                Event::Repaired { via_ransub } => Some(via_ransub),
                _ => None,
            })
            .collect();
        assert_eq!(repaired, vec![st.repairs_via_ransub == 1], "{o}: the event agrees with the counters");
        via_ransub += st.repairs_via_ransub;
        via_root += st.repairs_via_root;
    }
    let total: u64 = net.nodes.values().map(|n| n.stats().repairs_via_ransub + n.stats().repairs_via_root).sum();
    assert_eq!(total, orphans.len() as u64, "only the orphans repaired, each counted once");
    assert!(via_ransub > 0, "the grandparent, asked first, took an orphan directly: {via_ransub} / {via_root}");
    // Nobody but the orphans moved: the grandchildren kept their parents.
    for n in net.nodes.values() {
        if !orphans.contains(&n.id()) && n.id() != id(0) {
            assert!(!net.events_of(ix(n.id()), crash_at).iter().any(|(_, e)| matches!(e, Event::ParentChanged(_))));
        }
    }
    net.assert_one_tree();
}

#[test]
fn below_a_detached_top_only_lower_joiners_are_accepted_directly() {
    // A chain 0 - 10 - 20 - 30 (degree 1): T = 20 will be a detached top, C = 30 its child.
    let mut net = Net::new(1);
    for i in [0, 10, 20, 30] {
        net.add(i, &[0]);
    }
    assert_eq!(net.node(10).parent(), Some(id(0)));
    assert_eq!(net.node(20).parent(), Some(id(10)));
    assert_eq!(net.node(30).parent(), Some(id(20)));
    let (t, c) = (20, 30);
    // Keep T detached: whatever it sends to the rest of the tree is lost, so its repair stalls.
    net.block(t, 0);
    net.block(t, 10);
    net.kill(10);
    assert_eq!(net.node(t).state(), TreeState::Joining, "T lost its parent");
    assert_eq!(net.node(t).parent(), None);
    assert_eq!(net.node(t).children(), &[id(c)], "T kept its subtree");
    assert_eq!(net.node(c).parent(), Some(id(t)));

    // X (higher than T) asks C to take it directly: C verifies up to T, which does not vouch
    // for it and holds its answer (C would ask again once T re-attached); C gives up after its
    // repair_timeout.
    let x = 40;
    net.link_phantom(x, c);
    net.inject(x, c, TreeMsg::Join { joiner: id(x), mode: JoinMode::Direct, hops: 0 });
    assert!(!net.node(c).children().contains(&id(x)), "C took X below a detached top lower than X");
    assert!(
        !net.log.iter().any(|(f, to, m)| (*f, *to) == (id(t), id(c))
            && matches!(m, TreeMsg::VerifyOk { joiner, .. } | TreeMsg::VerifyFail { joiner, .. } if *joiner == id(x))),
        "T neither vouched for X nor refused it"
    );
    net.advance(Duration::from_secs(1));
    assert!(!net.node(c).children().contains(&id(x)), "C took X below a detached top lower than X");
    let to_x: Vec<_> = net.lost.iter().filter(|(f, to, _)| (*f, *to) == (id(c), id(x))).map(|l| &l.2).collect();
    assert_eq!(to_x, vec![&TreeMsg::JoinReject], "X was told no, and nothing else");
    assert_eq!(net.node(t).state(), TreeState::Joining, "T is still detached");

    // L (lower than T) asks the same: T vouches for it, C accepts it.
    let l = 15;
    net.link_phantom(l, c);
    net.inject(l, c, TreeMsg::Join { joiner: id(l), mode: JoinMode::Direct, hops: 0 });
    assert_eq!(net.node(c).children(), &[id(l)], "C took L below a detached top higher than L");
    assert!(net.lost.iter().any(|(f, to, m)| (*f, *to) == (id(c), id(l)) && matches!(m, TreeMsg::JoinAccept { .. })));
    assert_eq!(net.node(t).state(), TreeState::Joining, "T is still detached");

    // Once T is attached to a joined root again, X is welcome below C.
    net.unblock(t, 0);
    net.advance(Duration::from_secs(15));
    assert_eq!(net.node(t).state(), TreeState::Joined);
    assert_eq!(net.node(t).parent(), Some(id(0)));
    assert!(net.node(c).children().is_empty(), "C dropped the silent L");
    net.link_phantom(x, c);
    net.inject(x, c, TreeMsg::Join { joiner: id(x), mode: JoinMode::Direct, hops: 0 });
    assert_eq!(net.node(c).children(), &[id(x)], "C took X once its chain reaches a joined root");
}

#[test]
fn when_a_detached_top_reattaches_its_subtree_learns_the_new_path() {
    // A chain 0 - 10 - 20 - 30 (degree 1). T = 20 loses its parent and re-attaches to its
    // grandparent, the root: its own path is [0] before and after, but its child's path, [0, 10,
    // 20], named the dead node and must become [0, 20].
    let mut net = Net::new(1);
    for i in [0, 10, 20, 30] {
        net.add(i, &[0]);
    }
    assert_eq!(net.node(30).depth(), 3);
    net.kill(10);
    net.advance(Duration::from_secs(5));
    assert_eq!(net.node(20).parent(), Some(id(0)), "T re-attached to the root");
    assert_eq!(net.node(20).depth(), 1);
    assert_eq!(net.node(30).parent(), Some(id(20)));
    assert!(
        net.log.iter().any(|(f, to, m)| (*f, *to) == (id(20), id(30))
            && matches!(m, TreeMsg::RootInfo { path, .. } if path[..] == [id(0), id(20)])),
        "T told its child its new path"
    );
    assert_eq!(net.node(30).depth(), 2, "the child's path no longer names the dead node");
    net.assert_one_tree();
}
