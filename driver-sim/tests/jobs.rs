//! The job lifecycle through the simulator: a `Controller` in its own slot builds the tree by
//! invitations, runs jobs on every host's simulated process (one line of output, then exit 0
//! after a duration drawn in the scenario's `job_min_s..job_max_s`), and the tests check what
//! the module docs of `plush_core::control` and `plush_core::controller` promise of timeouts,
//! cancellation, output caps, streaming, merging, the job table's bound, launching at the root
//! and hosts that join while a job runs.

use plush_core::controller::ControllerError;
use plush_core::wire::{ExitStatus, JobKind, JobMsg, Message, RunSpec};
use plush_core::{HostState, Instant, NodeId, NodeSet, Report as CtrlReport};
use plush_sim::Sim;
use std::time::Duration;

mod common;
use common::{build, ctrl_slot, index, root_of, run_for, scenario, wait_built};
use plush_sim::play::command_spec;

/// The line every simulated process prints (with one distinct output).
const LINE: &[u8] = b"hello from plush\n";

fn spec(job: u64) -> RunSpec {
    command_spec(job, &["echo", "hello from plush"])
}

/// Watch `spec.job` and start it through the controller.
fn start(sim: &mut Sim, spec: RunSpec) {
    sim.watch_job(spec.job);
    let r = sim.ctrl_do(|c, now| c.run(now, spec));
    assert_eq!(r, Some(Ok(())), "the controller refused the job");
}

/// One reported node result.
#[derive(Clone, Debug)]
struct NodeResult {
    at: Instant,
    node: u32,
    status: ExitStatus,
    truncated: bool,
    output: Vec<u8>,
}

/// Every node result of `job` the controller reported, one entry per node and report.
fn results(sim: &Sim, job: u64) -> Vec<NodeResult> {
    let mut out = Vec::new();
    for (at, r) in &sim.results {
        if let CtrlReport::Result { job: j, status, truncated, output, nodes, .. } = r {
            if *j == job {
                out.extend(nodes.iter().map(|y| NodeResult {
                    at: *at,
                    node: index(y),
                    status: *status,
                    truncated: *truncated,
                    output: output.as_ref().clone(),
                }));
            }
        }
    }
    out
}

/// Live nodes (slots `0..n`).
fn live(sim: &Sim, n: u32) -> Vec<u32> {
    (0..n).filter(|&i| sim.alive(i)).collect()
}

/// Whether every live node among `0..n` has a reported result of the watched job.
fn all_reported(sim: &Sim, n: u32) -> bool {
    (0..n).all(|i| !sim.alive(i) || sim.job.reported.get(i as usize).is_some_and(|&r| r > 0))
}

/// Every live node's result reported exactly once (the controller removes duplicates by node).
fn assert_each_once(sim: &Sim, n: u32) {
    let nodes = live(sim, n);
    assert!(!nodes.is_empty());
    for &i in &nodes {
        assert_eq!(
            sim.job.reported[i as usize], 1,
            "node {i}'s result reported {} times",
            sim.job.reported[i as usize]
        );
    }
}

#[test]
fn a_job_timeout_kills_and_reports_timed_out() {
    let n = 30;
    let mut sc = scenario(n, 51);
    sc.job_min_s = 2.0;
    sc.job_max_s = 3.0;
    let mut sim = build(&sc);
    let started = sim.now();
    start(&mut sim, RunSpec { timeout_ms: 500, ..spec(1) });
    let done = run_for(&mut sim, Duration::from_secs(5), Duration::from_millis(50), |s| all_reported(s, n));
    assert!(done, "results missing: {:?}", sim.job.reported);
    assert_each_once(&sim, n);
    let rs = results(&sim, 1);
    assert_eq!(rs.len(), n as usize);
    for r in &rs {
        assert_eq!(r.status, ExitStatus::TimedOut, "node {}: {r:?}", r.node);
        // Killed at the timeout, not when the process would have ended by itself (2 s at least).
        assert!(r.at >= started + Duration::from_millis(500), "node {}'s result came before the timeout", r.node);
        assert!(r.at < started + Duration::from_secs(2), "node {}'s result came at {:?}", r.node, r.at.since(started));
    }
    // Every node asked its driver to kill the process.
    let mut signalled: Vec<u32> = sim.signals.iter().filter(|s| s.2 == 1).map(|s| s.1).collect();
    signalled.sort_unstable();
    assert_eq!(signalled, live(&sim, n), "nodes that signalled their process");
    // The processes end by themselves later: nothing changes.
    let t = started + Duration::from_secs(4);
    sim.run_until(t, |_| false);
    assert_each_once(&sim, n);
    assert!(results(&sim, 1).iter().all(|r| r.status == ExitStatus::TimedOut));
    assert!(sim.ctrl_log.iter().any(|(_, r)| *r == CtrlReport::JobComplete { job: 1 }), "no JobComplete report");
    assert_eq!(sim.violations, 0, "{:?}", sim.violation_texts);
}

#[test]
fn cancel_kills_the_job_everywhere() {
    let n = 30;
    let mut sc = scenario(n, 52);
    sc.job_min_s = 2.0;
    sc.job_max_s = 3.0;
    let mut sim = build(&sc);
    let started = sim.now();
    start(&mut sim, spec(2));
    sim.run_until(started + Duration::from_millis(300), |_| false);
    assert!(results(&sim, 2).is_empty(), "results before the cancel: {:?}", results(&sim, 2));
    let r = sim.ctrl_do(|c, now| c.cancel(now, 2));
    assert_eq!(r, Some(Ok(())));
    assert_eq!(sim.ctrl_do(|c, now| c.cancel(now, 99)), Some(Err(ControllerError::Unknown)));
    let done = run_for(&mut sim, Duration::from_secs(5), Duration::from_millis(50), |s| all_reported(s, n));
    assert!(done, "results missing: {:?}", sim.job.reported);
    // Past the longest process: a process that was not killed would have reported by now.
    sim.run_until(started + Duration::from_secs(4), |_| false);
    assert_each_once(&sim, n);
    let rs = results(&sim, 2);
    assert_eq!(rs.len(), n as usize);
    assert!(!rs.iter().any(|r| matches!(r.status, ExitStatus::Exited(_))), "a process ran to its end");
    for r in &rs {
        assert_eq!(r.status, ExitStatus::Cancelled, "node {}: {r:?}", r.node);
        assert!(r.at < started + Duration::from_secs(2), "node {}'s result came at {:?}", r.node, r.at.since(started));
    }
    let mut signalled: Vec<u32> = sim.signals.iter().filter(|s| s.2 == 2).map(|s| s.1).collect();
    signalled.sort_unstable();
    assert_eq!(signalled, live(&sim, n), "nodes that signalled their process");
    assert_eq!(sim.violations, 0, "{:?}", sim.violation_texts);
}

#[test]
fn output_is_capped_and_marked_truncated() {
    let n = 30;
    let sc = scenario(n, 53);
    let mut sim = build(&sc);
    start(&mut sim, RunSpec { max_output: 5, ..spec(3) });
    let done = run_for(&mut sim, Duration::from_secs(5), Duration::from_millis(50), |s| all_reported(s, n));
    assert!(done, "results missing: {:?}", sim.job.reported);
    assert_each_once(&sim, n);
    assert!(LINE.len() > 5);
    let rs = results(&sim, 3);
    assert_eq!(rs.len(), n as usize);
    for r in &rs {
        assert_eq!(r.status, ExitStatus::Exited(0), "node {}", r.node);
        assert!(r.truncated, "node {}'s result is not marked truncated", r.node);
        assert_eq!(r.output.len(), 5, "node {}: {:?}", r.node, String::from_utf8_lossy(&r.output));
        assert_eq!(r.output, &LINE[..5]);
    }
    assert_eq!(sim.job.outputs, vec![LINE[..5].to_vec()]);
}

/// Stream reports of `job` per node: (reports, bytes).
fn streams(sim: &Sim, job: u64, n: u32) -> Vec<(usize, Vec<u8>)> {
    let mut per = vec![(0, Vec::new()); n as usize];
    for (_, r) in &sim.ctrl_log {
        if let CtrlReport::Stream { job: j, node, bytes, err: false } = r {
            if *j == job {
                let i = index(*node) as usize;
                assert!(i < n as usize, "a stream from {node}");
                per[i].0 += 1;
                per[i].1.extend_from_slice(bytes);
            }
        }
    }
    per
}

#[test]
fn streamed_output_reaches_the_controller() {
    let n = 30;
    // Every node's line comes up once, whole, and the results carry no second copy.
    let mut sim = build(&scenario(n, 54));
    start(&mut sim, RunSpec { stream: true, ..spec(4) });
    let done = run_for(&mut sim, Duration::from_secs(5), Duration::from_millis(50), |s| all_reported(s, n));
    assert!(done, "results missing: {:?}", sim.job.reported);
    let per = streams(&sim, 4, n);
    for i in live(&sim, n) {
        assert_eq!(per[i as usize].0, 1, "node {i}: {} stream reports", per[i as usize].0);
        assert_eq!(per[i as usize].1, LINE, "node {i}'s stream");
    }
    assert!(results(&sim, 4).iter().all(|r| r.output.is_empty() && r.status == ExitStatus::Exited(0)));
    // Capped at 3 bytes: each stream is its output's start, and the results say it was cut.
    let mut sim = build(&scenario(n, 55));
    start(&mut sim, RunSpec { stream: true, max_output: 3, ..spec(5) });
    let done = run_for(&mut sim, Duration::from_secs(5), Duration::from_millis(50), |s| all_reported(s, n));
    assert!(done, "results missing: {:?}", sim.job.reported);
    let per = streams(&sim, 5, n);
    for i in live(&sim, n) {
        assert_eq!(per[i as usize].1.as_slice(), &LINE[..3], "node {i}'s stream");
    }
    let cut = sim.total(|s| s.output_bytes_cut);
    assert_eq!(cut as usize, n as usize * (LINE.len() - 3), "bytes cut");
    let rs = results(&sim, 5);
    assert_eq!(rs.len(), n as usize);
    assert!(rs.iter().all(|r| r.truncated), "a cut result not marked truncated");
}

#[test]
fn identical_results_merge_into_few_messages() {
    let n = 300;
    let mut sim = build(&scenario(n, 56));
    start(&mut sim, spec(6));
    let done = run_for(&mut sim, Duration::from_secs(10), Duration::from_millis(50), |s| all_reported(s, n));
    assert!(done, "results missing: {:?}", (0..n).filter(|&i| sim.job.reported[i as usize] == 0).collect::<Vec<_>>());
    // Let acknowledgements and any re-sends settle.
    let t = sim.now() + Duration::from_secs(3);
    sim.run_until(t, |_| false);
    assert_eq!(live(&sim, n).len(), n as usize);
    assert_each_once(&sim, n);
    let msgs = sim.job.ctrl_messages;
    assert!(msgs > 0);
    assert!(msgs <= 30, "{msgs} Results frames reached the controller for {n} identical results");
    assert_eq!(sim.job.outputs, vec![LINE.to_vec()]);
    assert_eq!(sim.controller().expect("a controller").stats().duplicate_results, 0);
}

/// The nodes whose result of `job` reached the controller in `Results` frames (recorded
/// messages), by status and output.
fn delivered(sim: &Sim, job: u64) -> Vec<(ExitStatus, Vec<u8>, NodeSet)> {
    let ctrl = ctrl_slot(sim);
    let mut out: Vec<(ExitStatus, Vec<u8>, NodeSet)> = Vec::new();
    for (_, _, to, m) in &sim.messages {
        if let (true, Message::Job(JobMsg::Results { job: j, groups, .. })) = (*to == ctrl, m) {
            if *j != job {
                continue;
            }
            for g in groups.iter() {
                match out.iter_mut().find(|(s, o, _)| *s == g.status && *o == g.output) {
                    Some(e) => e.2.extend(&g.nodes),
                    None => out.push((g.status, g.output.clone(), g.nodes.clone())),
                }
            }
        }
    }
    out
}

#[test]
fn too_many_jobs_fail_cleanly() {
    let n = 30;
    let mut sc = scenario(n, 57);
    sc.config.max_jobs = 2;
    sc.job_min_s = 2.0;
    sc.job_max_s = 3.0;
    let mut sim = build(&sc);
    let ctrl = ctrl_slot(&sim);
    let root = root_of(&sim);
    // The root's census of the members takes a slot of every node's table until it is done:
    // let it finish (a finished job gives its slot up to a new one).
    let t = sim.now() + Duration::from_secs(2);
    sim.run_until(t, |_| false);
    sim.recording = true;
    let started = sim.now();
    for job in [11, 12] {
        assert_eq!(sim.ctrl_do(|c, now| c.run(now, spec(job))), Some(Ok(())));
    }
    // The controller shares the configuration and bounds its own table the same way: it refuses
    // a third job itself.
    assert_eq!(sim.ctrl_do(|c, now| c.run(now, spec(13))), Some(Err(ControllerError::Full)));
    // The nodes' bound: the third `Run` reaches the root from the controller all the same (as
    // from a controller with a larger table), while both jobs run everywhere.
    sim.run_until(started + Duration::from_millis(200), |_| false);
    for i in live(&sim, n) {
        assert_eq!(sim.node(i).expect("live").job_count(), 2, "node {i} does not run both jobs");
    }
    assert!(
        sim.inject(ctrl, root, &Message::Job(JobMsg::Run(Box::new(spec(13))))),
        "no link from the controller to the root"
    );
    let all: NodeSet = live(&sim, n).into_iter().map(Sim::id).collect();
    let covered = |s: &Sim| {
        delivered(s, 13).iter().fold(NodeSet::new(), |mut acc, g| {
            acc.extend(&g.2);
            acc
        })
    };
    // Within a second and a half (before any of the first two jobs' processes end).
    let failed_everywhere =
        run_for(&mut sim, Duration::from_millis(1500), Duration::from_millis(50), |s| covered(s) == all);
    let got = covered(&sim);
    let third = delivered(&sim, 13);
    assert!(!third.is_empty(), "no result of job 13 reached the controller");
    for (status, output, nodes) in &third {
        assert_eq!(*status, ExitStatus::SpawnFailed, "job 13 at {nodes:?}");
        let text = String::from_utf8_lossy(output);
        assert!(text.contains("too many jobs"), "job 13's output at {nodes:?}: {text:?}");
    }
    // The refused job keeps an entry past the bound (its failure is held until acknowledged),
    // but no process: every node's part of it is the SpawnFailed result checked above, and the
    // table never grows past twice the bound.
    for i in live(&sim, n) {
        assert_eq!(sim.node(i).expect("live").job_count(), 3, "node {i}'s job table");
    }
    // The first two complete normally, everywhere.
    let done = run_for(&mut sim, Duration::from_secs(5), Duration::from_millis(50), |s| {
        [11, 12].iter().all(|&j| s.controller().and_then(|c| c.results_of(j)).is_some_and(|r| r.len() == u64::from(n)))
    });
    assert!(done, "jobs 11 and 12 did not complete");
    for job in [11, 12] {
        let rs = results(&sim, job);
        assert_eq!(rs.len(), n as usize, "job {job}");
        for r in &rs {
            assert_eq!(r.status, ExitStatus::Exited(0), "job {job} at node {}", r.node);
            assert_eq!(r.output, LINE);
        }
        assert!(sim.ctrl_log.iter().any(|(_, r)| *r == CtrlReport::JobComplete { job }), "job {job} not complete");
    }
    assert!(sim.signals.is_empty(), "a process was killed: {:?}", sim.signals);
    // Every node answered the third `Run`, and every answer reached the controller (in time, and
    // still none later).
    let late = covered(&sim);
    assert!(
        failed_everywhere,
        "job 13's SpawnFailed results reached the controller from {} of {n} nodes within 1.5 s, {} by the \
         end (missing {:?})",
        got.len(),
        late.len(),
        all.minus(&late)
    );
}

#[test]
fn launching_at_the_root_works_too() {
    let n = 30;
    let mut sc = scenario(n, 58);
    sc.config.launch_at_root = true;
    let mut sim = Sim::new(n, &sc);
    sim.add_controller();
    // The first host founds the tree before there is a root to launch it: the controller
    // launches that one. Every other one is launched by the root.
    let hosts: Vec<NodeId> = (0..n).map(Sim::id).collect();
    sim.ctrl_do(|c, now| c.add_hosts(now, &hosts));
    wait_built(&mut sim, n as usize, sc.seed);
    let c = sim.controller().expect("a controller");
    assert_eq!(c.host_counts()[HostState::Joined as usize], n as usize);
    for i in 0..n {
        assert_eq!(c.host_state(&Sim::id(i)), Some(HostState::Joined), "host {i}");
    }
    assert_eq!(c.stats().launches, 1, "the controller launched only the first host");
    assert_eq!(sim.launches, n, "every client was launched, all but the first by the root");
    assert_eq!(sim.live_count(), n);
    assert!(sim.converged());
    // And the tree built this way runs jobs.
    start(&mut sim, spec(7));
    let done = run_for(&mut sim, Duration::from_secs(5), Duration::from_millis(50), |s| all_reported(s, n));
    assert!(done, "results missing: {:?}", sim.job.reported);
    assert_each_once(&sim, n);
}

#[test]
fn a_job_started_before_a_host_joins_reaches_it_after_it_joins() {
    let n = 35;
    let late: Vec<u32> = (30..n).collect();
    let sc = scenario(n, 59);
    let mut sim = Sim::new(n, &sc);
    sim.add_controller();
    let first: Vec<NodeId> = (0..30).map(Sim::id).collect();
    sim.ctrl_do(|c, now| c.add_hosts(now, &first));
    wait_built(&mut sim, 30, sc.seed);
    for &i in &late {
        assert!(!sim.alive(i), "host {i} runs before it was added");
    }
    let started = sim.now();
    start(&mut sim, spec(8));
    sim.run_until(started + Duration::from_millis(100), |_| false);
    let later: Vec<NodeId> = late.iter().map(|&i| Sim::id(i)).collect();
    sim.ctrl_do(|c, now| c.add_hosts(now, &later));
    let done = run_for(&mut sim, Duration::from_secs(20), Duration::from_millis(50), |s| all_reported(s, n));
    assert!(done, "results missing: {:?}", sim.job.reported);
    let c = sim.controller().expect("a controller");
    assert_eq!(c.host_counts()[HostState::Joined as usize], n as usize);
    assert_eq!(sim.live_count(), n);
    assert_each_once(&sim, n);
    let rs = results(&sim, 8);
    assert_eq!(rs.len(), n as usize);
    for r in &rs {
        assert_eq!(r.status, ExitStatus::Exited(0), "node {}", r.node);
        assert_eq!(r.output, LINE);
    }
    // The late hosts' results came after they were added (they did run the job).
    for &i in &late {
        let r = rs.iter().find(|r| r.node == i).expect("a result");
        assert!(r.at > started + Duration::from_millis(100), "host {i}'s result at {:?}", r.at.since(started));
    }
    assert!(sim.converged());
}

/// A job held open (`Controller::set_job_open`, as `plush run` holds its command while the
/// build goes on) owes a result from every host that joins while it is open, and no more once
/// closed. Each such host's result reaches the controller soon after it joined: a subtree made
/// whole again by a late member's answer says so at once at every hop, not after the merge
/// delays (20 ms a hop, 100 ms at the root: `Config::merge_delay`, `ctrl_merge_delay`).
#[test]
fn a_job_held_open_expects_the_hosts_that_join_and_hears_from_each_at_once() {
    let (first, open_until, n) = (30u32, 45u32, 50u32);
    let mut sc = scenario(n, 61);
    // A process takes 10 ms; a message 0.5-10 ms.
    (sc.job_min_s, sc.job_max_s) = (0.01, 0.01);
    let mut sim = Sim::new(n, &sc);
    sim.add_controller();
    let hosts: Vec<NodeId> = (0..first).map(Sim::id).collect();
    sim.ctrl_do(|c, now| c.add_hosts(now, &hosts));
    wait_built(&mut sim, first as usize, sc.seed);
    start(&mut sim, spec(9));
    assert_eq!(sim.ctrl_do(|c, _| c.set_job_open(9, true)), Some(Ok(())));
    assert_eq!(sim.controller().and_then(|c| c.job_open(9)), Some(true));
    let done = run_for(&mut sim, Duration::from_secs(5), Duration::from_millis(10), |s| all_reported(s, first));
    assert!(done, "results missing: {:?}", sim.job.reported);
    // Hosts join one by one while the job is open; note when the controller saw each join.
    let mut joined_at: Vec<Option<Instant>> = vec![None; n as usize];
    let add = |sim: &mut Sim, i: u32, joined_at: &mut [Option<Instant>]| {
        sim.ctrl_do(|c, now| c.add_hosts(now, &[Sim::id(i)]));
        let seen = run_for(sim, Duration::from_secs(10), Duration::from_millis(1), |s| {
            s.controller().and_then(|c| c.host_state(&Sim::id(i))) == Some(HostState::Joined)
        });
        assert!(seen, "host {i} did not join");
        joined_at[i as usize] = Some(sim.now());
        // Its result arrives before the next host is added.
        let got = run_for(sim, Duration::from_secs(2), Duration::from_millis(1), |s| all_reported(s, i + 1));
        assert!(got, "no result from host {i}");
    };
    for i in first..open_until {
        add(&mut sim, i, &mut joined_at);
    }
    let expected = sim.controller().and_then(|c| c.job_expected(9).cloned()).expect("the job");
    let want: NodeSet = (0..open_until).map(Sim::id).collect();
    assert_eq!(expected, want, "every host that joined while the job was open owes a result");
    assert_eq!(sim.ctrl_do(|c, _| c.set_job_open(9, false)), Some(Ok(())));
    let later: Vec<NodeId> = (open_until..n).map(Sim::id).collect();
    sim.ctrl_do(|c, now| c.add_hosts(now, &later));
    wait_built(&mut sim, n as usize, sc.seed);
    let expected = sim.controller().and_then(|c| c.job_expected(9).cloned()).expect("the job");
    assert_eq!(expected, want, "a closed job expects no host that joined after");
    let rs = results(&sim, 9);
    for i in first..open_until {
        let r = rs.iter().find(|r| r.node == i).expect("a result");
        assert_eq!(r.status, ExitStatus::Exited(0), "host {i}");
        let joined = joined_at[i as usize].expect("joined");
        let after = r.at.since(joined);
        assert!(after < Duration::from_millis(60), "host {i}'s result came {after:?} after it joined");
    }
    assert_each_once(&sim, open_until);
}

#[test]
fn a_tree_job_reports_every_nodes_parent() {
    let n = 200;
    let mut sim = build(&scenario(n, 57));
    let mut s = spec(7);
    s.kind = JobKind::Tree;
    start(&mut sim, s);
    let done = run_for(&mut sim, Duration::from_secs(10), Duration::from_millis(50), |s| all_reported(s, n));
    assert!(done, "tree answers missing");
    let root = root_of(&sim);
    let got = results(&sim, 7);
    assert_eq!(got.len(), n as usize);
    for r in &got {
        assert_eq!(r.status, ExitStatus::Exited(0));
        let parent = sim.node(r.node).and_then(|x| x.parent());
        let want = parent.map_or_else(String::new, |p| p.addr().to_string());
        assert_eq!(String::from_utf8_lossy(&r.output), want, "node {}", r.node);
        assert_eq!(parent.is_none(), r.node == root);
    }
    // Siblings' answers merge: fewer Results frames reach the controller than there are nodes.
    assert!(sim.job.ctrl_messages < n as u64 / 2, "{} Results frames for {n} nodes", sim.job.ctrl_messages);
}

/// Live output on its way up when links break is never lost silently: every surviving node's
/// line arrives, or its stderr stream says bytes may be missing (`OUTPUT_CUT_PREFIX`). The relays
/// below the root are killed at each of several moments after the job starts; at some of them
/// lines are on their way up, and those are said missing.
#[test]
fn live_output_cut_by_a_broken_link_is_said() {
    let n = 40;
    let marker = plush_core::control::OUTPUT_CUT_PREFIX.as_bytes();
    let said = |s: &Sim, i: u32| {
        s.ctrl_log.iter().any(|(_, r)| {
            matches!(r, CtrlReport::Stream { job: 6, node, bytes, err: true }
                if index(*node) == i && bytes.starts_with(marker))
        })
    };
    let whole = |s: &Sim, i: u32| streams(s, 6, n)[i as usize].1 == LINE;
    let mut cut = 0;
    for ms in (0..30).map(|k| 2 + k * 53) {
        let mut sim = build(&scenario(n, 56));
        start(&mut sim, RunSpec { stream: true, ..spec(6) });
        let t = sim.now() + Duration::from_millis(ms);
        sim.run_until(t, |_| false);
        let root = root_of(&sim);
        let relays: Vec<u32> =
            (0..n).filter(|&i| i != root && sim.node(i).is_some_and(|x| !x.children().is_empty())).collect();
        for &i in &relays {
            sim.crash(i, plush_sim::CrashKind::Process);
        }
        let settled = |s: &Sim| live(s, n).into_iter().all(|i| whole(s, i) || said(s, i));
        let done = run_for(&mut sim, Duration::from_secs(60), Duration::from_millis(100), settled);
        let silent: Vec<u32> = live(&sim, n).into_iter().filter(|&i| !whole(&sim, i) && !said(&sim, i)).collect();
        assert!(done, "killed at {ms} ms: lines neither arrived nor said missing: {silent:?}");
        cut += live(&sim, n).into_iter().filter(|&i| said(&sim, i)).count();
    }
    eprintln!("streams that said bytes may be missing, over 30 kills: {cut}");
    assert!(cut > 0, "the kills were meant to catch lines on their way: none was said missing");
}

/// A host the controller believes joined but that is in no tree (a stale report made it
/// joined: here a forged census part from the root) never answers a job, and nothing else
/// would make the controller look. Once the root says the whole tree answered and the host
/// stayed silent, the controller asks for a census; the root checks the host, finds an idle
/// client there, and the host is invited, joins, and runs the job.
#[test]
fn a_host_believed_joined_outside_the_tree_is_found_when_a_job_waits_for_it() {
    use plush_core::frame::FramePool;
    use plush_core::wire::ControlMsg;
    let n = 30;
    let seed = 4;
    let mut sim = build(&scenario(n, seed));
    let root = root_of(&sim);
    let x = (0..n).find(|&i| i != root && sim.node(i).is_some_and(|y| y.children().is_empty())).expect("a leaf");
    sim.crash(x, plush_sim::CrashKind::Process);
    // Reported lost, no client answers, the launch fails: it waits for its next try.
    run_for(&mut sim, Duration::from_secs(2), Duration::from_millis(50), |_| false);
    let state = |s: &Sim| s.controller().and_then(|c| c.host_state(&Sim::id(x)));
    assert_eq!(state(&sim), Some(HostState::Disconnected));
    let part = Message::Control(ControlMsg::Participants { nodes: NodeSet::one(Sim::id(x)), last: false });
    let payload = FramePool::default().encode(&part, 1 << 20).expect("encodes").payload().to_vec();
    let took = sim.ctrl_do(|c, now| c.handle_frame(now, Sim::id(root), &payload));
    assert_eq!(took, Some(Ok(())));
    assert_eq!(state(&sim), Some(HostState::Joined), "the stale part made it joined");
    // A client runs there again, idle: only an invitation would bring it in.
    sim.launch_idle(x);
    let job = 77;
    start(&mut sim, spec(job));
    let all = run_for(&mut sim, Duration::from_secs(40), Duration::from_millis(100), |s| all_reported(s, n));
    let started = sim.controller().map(|c| c.stats().invitations);
    assert!(
        all,
        "host {x}: {:?} to the controller, {:?} in fact; invitations {started:?}",
        state(&sim),
        sim.node(x).map(|y| y.state())
    );
    assert_each_once(&sim, n);
    let r = results(&sim, job);
    assert!(r.iter().any(|y| y.node == x && y.status == ExitStatus::Exited(0) && y.output == LINE));
}
