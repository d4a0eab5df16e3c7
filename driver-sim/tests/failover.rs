//! Root failover against a false alarm: a child of the root that stops hearing from it (its
//! link alone stalls, or the child itself was paused) starts a failover, but the root is alive.
//! Its siblings must not follow it out of the tree.

use plush_core::{Config, NodeId, TreeState};
use plush_sim::{Scenario, Sim};
use std::time::Duration;

/// A tree of `n` nodes (root fan-out `degree`), converged.
fn build(n: u32, degree: usize, seed: u64) -> Sim {
    let config = Config { max_children: degree, ..Config::default() };
    let sc = Scenario { nodes: n, seed, config, ..Scenario::default() };
    let mut sim = Sim::new(n, &sc);
    sim.start(0, Vec::new());
    for i in 1..n {
        sim.start(i, vec![Sim::id(0)]);
    }
    let deadline = sim.now() + Duration::from_secs(120);
    while sim.now() < deadline {
        let t = sim.now() + Duration::from_millis(100);
        sim.run_until(t, |_| false);
        if sim.converged() {
            return sim;
        }
    }
    panic!("seed {seed}: the tree did not converge");
}

/// Live nodes that are roots of a tree.
fn roots(sim: &Sim) -> Vec<u32> {
    (0..sim.len())
        .filter(|&i| sim.alive(i) && sim.node(i).is_some_and(|n| n.state() == TreeState::Joined && n.is_root()))
        .collect()
}

fn index(id: NodeId) -> u32 {
    id.loopback_index().expect("a simulated node")
}

/// The root's highest child stops hearing from the root for 6 s (the root drops it, it takes the
/// root for dead and sends `Join(Failover)` to its lowest sibling). That sibling still hears the
/// root: it keeps it and refuses the join. No other child of the root ever leaves it (the
/// stalled child may root its own fragment for a while), and the tree is whole again after the
/// stall, under the same root.
#[test]
fn a_false_failover_does_not_take_a_live_sibling_out_of_the_tree() {
    for seed in [1, 2, 3, 4, 5] {
        let mut sim = build(40, 4, seed);
        let [root] = roots(&sim)[..] else { panic!("seed {seed}: one root after the build") };
        let root_node = sim.node(root).expect("the root");
        let mut children: Vec<u32> = root_node.children().iter().map(|c| index(*c)).collect();
        children.sort_unstable();
        assert!(children.len() >= 2, "seed {seed}: the root has siblings to fail over to");
        let stalled = *children.last().expect("a child");
        let start = sim.now();
        sim.clog(stalled, root, start + Duration::from_secs(6));
        let others: Vec<u32> = children.iter().copied().filter(|&c| c != stalled).collect();
        let mut left_root = false;
        let mut deserted: Vec<u32> = Vec::new();
        while sim.now() < start + Duration::from_secs(30) {
            let t = sim.now() + Duration::from_millis(50);
            sim.run_until(t, |_| false);
            left_root |= sim.node(stalled).is_some_and(|n| n.parent() != Some(Sim::id(root)));
            for &c in &others {
                if sim.node(c).is_some_and(|n| n.parent() != Some(Sim::id(root))) && !deserted.contains(&c) {
                    deserted.push(c);
                }
            }
        }
        assert!(left_root, "seed {seed}: the stalled child never took its root for dead (the test tests nothing)");
        assert!(deserted.is_empty(), "seed {seed}: healthy children {deserted:?} left their live root");
        assert_eq!(roots(&sim), vec![root], "seed {seed}: the live root stayed the root");
        assert!(sim.converged(), "seed {seed}: the tree is whole after the stall");
        assert_eq!(sim.violations, 0, "seed {seed}: {:?}", sim.violation_texts);
    }
}

/// The root's lowest child stops hearing from the root for 3.5 s, as a paused process does (the
/// root drops it at 3 s, it takes the root for dead at about the same time). With no lower
/// sibling it makes itself root at once (a real failover must not wait), then probes its former
/// siblings: they answer with the live root, and the two trees merge within round trips of
/// the link coming back (simulated time; the first probe of an ordinary new root comes a
/// second later and goes to a random peer).
#[test]
fn a_false_failover_by_the_lowest_sibling_merges_back_at_once() {
    for seed in [1, 2, 3, 4, 5] {
        let mut sim = build(40, 4, seed);
        let [root] = roots(&sim)[..] else { panic!("seed {seed}: one root after the build") };
        let root_node = sim.node(root).expect("the root");
        let mut children: Vec<u32> = root_node.children().iter().map(|c| index(*c)).collect();
        children.sort_unstable();
        let stalled = children[0];
        let start = sim.now();
        sim.clog(stalled, root, start + Duration::from_millis(3_500));
        let (mut two_for, mut longest) = (Duration::ZERO, Duration::ZERO);
        let step = Duration::from_millis(10);
        while sim.now() < start + Duration::from_secs(30) {
            let t = sim.now() + step;
            sim.run_until(t, |_| false);
            if roots(&sim).len() > 1 {
                two_for += step;
                longest = longest.max(two_for);
            } else {
                two_for = Duration::ZERO;
            }
        }
        eprintln!("seed {seed}: two roots for at most {longest:?}");
        assert!(
            longest < Duration::from_millis(800),
            "seed {seed}: two roots for {longest:?}, past the 0.6 s left of the stall"
        );
        assert_eq!(roots(&sim).len(), 1, "seed {seed}: one root after the stall");
        assert!(sim.converged(), "seed {seed}: the tree is whole after the stall");
    }
}
