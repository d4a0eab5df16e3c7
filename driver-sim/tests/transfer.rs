//! Transfers through the simulator (chunk counts, not bytes): a controller pushes a file down
//! the tree it built; the tests check what `plush_core::transfer` promises: every target ends
//! with the whole file and one verified result, each chunk is stored once per node, and killing
//! nodes mid-transfer, the root included, does not make their subtrees start over.

use plush_core::wire::{ExitStatus, JobKind, List, PushSpec, RunSpec, Target};
use plush_core::{NodeSet, Report as CtrlReport};
use plush_sim::{CrashKind, Sim};
use std::time::Duration;

mod common;
use common::{build, scenario};

fn push_spec(job: u64, chunks: u32, target: Target) -> RunSpec {
    let chunk = 64 << 10;
    RunSpec {
        job,
        kind: JobKind::Push,
        target,
        argv: List::default(),
        env: List::default(),
        cwd: None,
        timeout_ms: 0,
        stream: false,
        push: Some(PushSpec {
            path: "/tmp/data".into(),
            name: "data".into(),
            mode: 0o644,
            size: u64::from(chunks) * chunk as u64 - 10,
            digest: [7; 32],
            chunk,
            upgrade: false,
            build: 0,
        }),
        max_output: 0,
    }
}

/// Nodes with a result `Exited(0)` for `job`, and every other result.
fn outcomes(sim: &Sim, job: u64) -> (NodeSet, Vec<(ExitStatus, NodeSet)>) {
    let mut ok = NodeSet::new();
    let mut other = Vec::new();
    for (_, r) in &sim.results {
        if let CtrlReport::Result { job: j, status, nodes, .. } = r {
            if *j == job {
                if *status == ExitStatus::Exited(0) {
                    ok.extend(nodes);
                } else {
                    other.push((*status, nodes.clone()));
                }
            }
        }
    }
    (ok, other)
}

fn stored(sim: &Sim, i: u32) -> u64 {
    sim.node(i).map_or(0, |n| n.stats().chunks_stored)
}

#[test]
fn a_push_reaches_every_host_with_each_chunk_stored_once() {
    let n = 200;
    let chunks = 300;
    let mut sim = build(&scenario(n, 11));
    sim.watch_job(1);
    let r = sim.ctrl_do(|c, now| c.run(now, push_spec(1, chunks, Target::All)));
    assert_eq!(r, Some(Ok(())));
    let deadline = sim.now() + Duration::from_secs(120);
    while sim.now() < deadline && outcomes(&sim, 1).0.len() < u64::from(n) {
        let t = sim.now() + Duration::from_millis(100);
        sim.run_until(t, |_| false);
    }
    let (ok, other) = outcomes(&sim, 1);
    assert!(other.is_empty(), "failures: {other:?}");
    assert_eq!(ok.len(), u64::from(n), "hosts with the file");
    for i in 0..n {
        assert_eq!(stored(&sim, i), u64::from(chunks), "node {i} stored each chunk once");
    }
    assert_eq!(sim.total(|s| s.chunks_dropped), 0, "no chunk arrived twice or out of order");
    assert_eq!(sim.violations, 0, "{:?}", sim.violation_texts);
}

#[test]
fn a_push_to_some_hosts_installs_only_there_but_flows_through_the_rest() {
    let n = 60;
    let mut sim = build(&scenario(n, 12));
    let targets: NodeSet = (0..n).filter(|i| i % 3 == 0).map(Sim::id).collect();
    sim.watch_job(2);
    sim.ctrl_do(|c, now| c.run(now, push_spec(2, 40, Target::Nodes(targets.clone()))));
    let limit = sim.now() + Duration::from_secs(60);
    while sim.now() < limit && outcomes(&sim, 2).0.len() < targets.len() {
        let t = sim.now() + Duration::from_millis(100);
        sim.run_until(t, |_| false);
    }
    let (ok, other) = outcomes(&sim, 2);
    assert!(other.is_empty(), "failures: {other:?}");
    assert_eq!(ok, targets, "exactly the targets report");
    // Relays fetch only for a child that asks: a leaf that is no target stores nothing.
    for i in 0..n {
        let leaf = sim.node(i).is_some_and(|x| x.children().is_empty());
        if leaf && !targets.contains(&Sim::id(i)) {
            assert_eq!(stored(&sim, i), 0, "leaf {i} is no target but fetched the file");
        }
    }
}

/// The test: a client killed mid-transfer (the root included) does not make its subtree
/// start over. Interior nodes and the root die once about a third of the file went through;
/// every survivor ends with the file, and no survivor stored any chunk twice (its count is the
/// file's chunk count exactly, and no chunk was dropped as a repeat).
#[test]
fn killing_the_root_and_interior_nodes_mid_transfer_does_not_restart_their_subtrees() {
    for seed in [21, 22, 23] {
        let n = 300;
        let chunks = 400;
        let mut sim = build(&scenario(n, seed));
        sim.watch_job(3);
        sim.ctrl_do(|c, now| c.run(now, push_spec(3, chunks, Target::All)));
        let root = sim.main_root().expect("a root");
        // Run until the root holds a third of the file.
        let limit = sim.now() + Duration::from_secs(60);
        while sim.now() < limit && stored(&sim, root) < u64::from(chunks / 3) {
            let t = sim.now() + Duration::from_millis(5);
            sim.run_until(t, |_| false);
        }
        assert!(stored(&sim, root) < u64::from(chunks), "seed {seed}: the transfer was over before the kill");
        // The root and three interior nodes with children of their own.
        let mut victims = vec![root];
        for i in 0..n {
            if victims.len() == 4 {
                break;
            }
            let interior = sim.node(i).is_some_and(|x| !x.is_root() && !x.children().is_empty());
            if interior && !victims.contains(&i) {
                victims.push(i);
            }
        }
        let partial: Vec<(u32, u64)> = (0..n).map(|i| (i, stored(&sim, i))).collect();
        assert!(partial.iter().any(|&(_, s)| s > 0 && s < u64::from(chunks)), "seed {seed}: nobody was mid-way");
        for &v in &victims {
            sim.crash(v, CrashKind::Process);
        }
        let survivors: NodeSet = (0..n).filter(|i| !victims.contains(i)).map(Sim::id).collect();
        let limit = sim.now() + Duration::from_secs(180);
        while sim.now() < limit && !survivors.minus(&outcomes(&sim, 3).0).is_empty() {
            let t = sim.now() + Duration::from_millis(100);
            sim.run_until(t, |_| false);
        }
        let (ok, other) = outcomes(&sim, 3);
        assert!(other.is_empty(), "seed {seed}: failures: {other:?}");
        let missing = survivors.minus(&ok);
        assert!(missing.is_empty(), "seed {seed}: survivors without the file: {missing:?}");
        for i in (0..n).filter(|i| !victims.contains(i)) {
            assert_eq!(
                stored(&sim, i),
                u64::from(chunks),
                "seed {seed}: node {i} (at {} before the kills) stored chunks again",
                partial[i as usize].1
            );
        }
        assert_eq!(sim.total(|s| s.chunks_dropped), 0, "seed {seed}: chunks arrived twice");
        assert_eq!(sim.violations, 0, "seed {seed}: {:?}", sim.violation_texts);
    }
}
