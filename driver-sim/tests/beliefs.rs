//! What nodes believe about their place, against the tree as it is: once a repaired tree is
//! quiet, every live node names the real root and knows its real depth (its path to the root,
//! which repairs use to ask the nearest ancestor first and to refuse joins that would close a
//! loop). The simulator's convergence check looks only at parent pointers; this looks at beliefs.

use plush_sim::play::play_sim;
use plush_sim::Sim;
use plush_sim::{CrashKind, Scenario};
use std::time::Duration;

/// Live nodes whose root or depth belief is wrong, as text (at most 10), and how many there are.
fn wrong_beliefs(sim: &Sim) -> (usize, Vec<String>) {
    let root = sim.main_root().expect("a root");
    let mut wrong = Vec::new();
    for i in 0..sim.len() {
        let Some(n) = sim.node(i) else { continue };
        // The real depth: walk the parent pointers up to the root.
        let mut depth = 0u32;
        let mut cur = i;
        while let Some(p) = sim.node(cur).and_then(|x| x.parent()) {
            cur = p.loopback_index().expect("a simulated id");
            depth += 1;
            assert!(depth <= sim.len(), "a loop through node {i}");
        }
        assert_eq!(cur, root, "node {i} hangs below {cur}, not the root {root}");
        if n.root() != Some(Sim::id(root)) || u32::from(n.depth()) != depth {
            wrong.push(format!(
                "node {i}: believes root {:?} depth {}, is at depth {depth} below {}",
                n.root(),
                n.depth(),
                Sim::id(root)
            ));
        }
    }
    let count = wrong.len();
    wrong.truncate(10);
    (count, wrong)
}

fn check(sc: &Scenario) {
    let (r, mut sim) = play_sim(sc);
    assert!(r.converged, "{r:?}");
    // Let whatever the repair set moving settle.
    let until = sim.now() + Duration::from_secs(5);
    sim.run_until(until, |_| false);
    assert!(sim.converged());
    let (count, wrong) = wrong_beliefs(&sim);
    assert!(
        count == 0,
        "seed {}: {count} of {} live nodes hold wrong beliefs:\n{}",
        sc.seed,
        sim.live_count(),
        wrong.join("\n")
    );
}

#[test]
fn after_building_every_node_knows_its_root_and_depth() {
    check(&Scenario { nodes: 1000, seed: 21, ..Scenario::default() });
}

#[test]
fn after_process_crashes_every_survivor_knows_its_root_and_depth() {
    check(&Scenario { nodes: 1000, seed: 22, kill: 0.25, crash: CrashKind::Process, ..Scenario::default() });
}

#[test]
fn after_host_crashes_every_survivor_knows_its_root_and_depth() {
    check(&Scenario { nodes: 1000, seed: 23, kill: 0.25, crash: CrashKind::Host, ..Scenario::default() });
}

#[test]
fn after_a_root_failover_every_survivor_knows_its_new_root_and_depth() {
    check(&Scenario {
        nodes: 1000,
        seed: 24,
        kill: 0.25,
        kill_root: true,
        crash: CrashKind::Host,
        ..Scenario::default()
    });
}
