//! Issue 19: a tree whose controller is gone lingers for `Config::linger` (or what the controller
//! told it), then the root dismantles it; a controller that comes back within the linger cancels
//! the countdown. See the module docs of `plush_core::control` ("Lingering").

use plush_core::{HostState, NodeId};
use plush_sim::{CrashKind, Scenario, Sim};
use std::time::Duration;

mod common;
use common::{build, joined, root_of};
use plush_sim::play::command_spec;

fn scenario(n: u32, seed: u64, linger_s: u64) -> Scenario {
    let mut sc = Scenario { nodes: n, seed, ..Scenario::default() };
    sc.config.linger = Duration::from_secs(linger_s);
    sc
}

#[test]
fn an_orphaned_tree_dismantles_after_the_linger_and_not_before() {
    let (n, linger) = (40, 20);
    let sc = scenario(n, 61, linger);
    let mut sim = build(&sc);
    let root = root_of(&sim);
    assert_eq!(sim.node(root).and_then(|r| r.orphaned_since()), None, "a root with its controller counts nothing");
    let crashed = sim.now();
    assert!(sim.crash_controller().is_some());
    // Just before the linger runs out, everybody is still there (jobs would run on).
    sim.run_until(crashed + Duration::from_secs(linger) - Duration::from_millis(500), |_| false);
    assert_eq!(sim.live_count(), n, "the tree ended before the linger");
    assert!(sim.node(root).and_then(|r| r.orphaned_since()).is_some_and(|t| t >= crashed), "the root is not counting");
    assert_eq!(sim.exits, 0);
    // Within two heartbeats after it, nobody is.
    let bound = crashed + Duration::from_secs(linger) + sc.config.heartbeat * 2;
    sim.run_until(bound, |s| s.live_count() == 0);
    assert_eq!(sim.live_count(), 0, "{} clients outlived the linger by two heartbeats", sim.live_count());
    assert_eq!(sim.exits, n, "every client exits by itself");
    assert_eq!(sim.violations, 0, "{:?}", sim.violation_texts);
}

#[test]
fn a_controller_back_within_the_linger_cancels_the_countdown() {
    let (n, linger) = (40, 20);
    let sc = scenario(n, 62, linger);
    let mut sim = build(&sc);
    let root = root_of(&sim);
    let crashed = sim.now();
    sim.crash_controller();
    sim.run_until(crashed + Duration::from_secs(linger / 2), |_| false);
    assert!(sim.node(root).and_then(|r| r.orphaned_since()).is_some());
    // A new controller process attaches through the root it knew.
    assert!(sim.restart_controller(|c, now| c.attach(now, Sim::id(root))));
    let back = sim.now();
    sim.run_until(back + Duration::from_secs(2), |_| false);
    assert_eq!(sim.controller().and_then(|c| c.root()), Some(Sim::id(root)), "the new controller found the root");
    assert_eq!(sim.node(root).and_then(|r| r.orphaned_since()), None, "the countdown was not cancelled");
    // Long past the first controller's linger, the tree is whole.
    sim.run_until(crashed + Duration::from_secs(3 * linger), |_| false);
    assert_eq!(sim.live_count(), n, "the tree ended although its controller came back");
    assert_eq!(sim.exits, 0);
    // And the count starts again when this one goes too.
    let crashed = sim.now();
    sim.crash_controller();
    sim.run_until(crashed + Duration::from_secs(linger) + sc.config.heartbeat * 2, |s| s.live_count() == 0);
    assert_eq!(sim.live_count(), 0);
    assert_eq!(sim.violations, 0, "{:?}", sim.violation_texts);
}

/// The controller's linger (`Controller::set_linger`) reaches every member, those that join
/// later included, and is the one the tree keeps.
#[test]
fn the_controllers_linger_reaches_every_member_and_is_kept() {
    let n = 40;
    // The clients' own default is long: only the controller's 5 s can end the tree in time.
    let sc = scenario(n, 63, 3600);
    let mut sim = Sim::new(n, &sc);
    sim.add_controller();
    let linger = Duration::from_secs(5);
    sim.ctrl_do(|c, now| c.set_linger(now, Some(linger)));
    let first: Vec<NodeId> = (0..n / 2).map(Sim::id).collect();
    sim.ctrl_do(|c, now| c.add_hosts(now, &first));
    sim.run_until(sim.now() + Duration::from_secs(20), |_| false);
    let rest: Vec<NodeId> = (n / 2..n).map(Sim::id).collect();
    sim.ctrl_do(|c, now| c.add_hosts(now, &rest));
    let deadline = sim.now() + Duration::from_secs(60);
    while sim.now() < deadline && !(joined(&sim) == n as usize && sim.converged()) {
        sim.run_until(sim.now() + Duration::from_millis(100), |_| false);
    }
    assert_eq!(joined(&sim), n as usize);
    for i in 0..n {
        assert_eq!(sim.node(i).map(|x| x.linger()), Some(linger), "node {i} does not know the controller's linger");
    }
    let crashed = sim.now();
    sim.crash_controller();
    sim.run_until(crashed + linger - Duration::from_millis(500), |_| false);
    assert_eq!(sim.live_count(), n);
    sim.run_until(crashed + linger + sc.config.heartbeat * 2, |s| s.live_count() == 0);
    assert_eq!(sim.live_count(), 0, "{} clients outlived the controller's linger", sim.live_count());
}

/// A root that dies while the controller is away: its successor cannot know how long the tree
/// has been alone, and counts from its own becoming root; the tree still ends, within the linger
/// of that moment plus two heartbeats.
#[test]
fn a_new_root_counts_the_linger_from_its_becoming_root() {
    let (n, linger) = (40, 20);
    let sc = scenario(n, 64, linger);
    let mut sim = build(&sc);
    let root = root_of(&sim);
    let crashed = sim.now();
    sim.crash_controller();
    sim.run_until(crashed + Duration::from_secs(linger / 2), |_| false);
    sim.crash(root, CrashKind::Process);
    let killed = sim.now();
    let became = {
        let deadline = killed + Duration::from_secs(30);
        loop {
            sim.run_until(sim.now() + Duration::from_millis(50), |_| false);
            let r = sim.main_root().filter(|&r| r != root);
            if let Some(t) = r.and_then(|r| sim.node(r)).and_then(|x| x.orphaned_since()) {
                break t;
            }
            assert!(sim.now() < deadline, "no new root counts");
        }
    };
    assert!(became >= killed);
    // Past the first root's deadline: the new one has its own.
    sim.run_until(crashed + Duration::from_secs(linger) + Duration::from_secs(1), |_| false);
    assert_eq!(sim.live_count(), n - 1, "the new root ended the tree on its predecessor's count");
    sim.run_until(became + Duration::from_secs(linger) + sc.config.heartbeat * 2, |s| s.live_count() == 0);
    assert_eq!(sim.live_count(), 0, "{} clients outlived the new root's linger", sim.live_count());
    assert_eq!(sim.violations, 0, "{:?}", sim.violation_texts);
}

// ----- item 4: a new controller resumes from a journal -------------------------------------

use plush_core::frame::FramePool;
use plush_core::wire::{ExitStatus, Group, JobMsg, List, Message, RunSpec};
use plush_core::{Config, Controller, Instant, LinkEvent, NodeSet, Output, Report as CtrlReport};

fn spec(job: u64) -> RunSpec {
    command_spec(job, &["true"])
}

/// `adopt_job`: results of nodes already shown are not reported again (they count as
/// duplicates), the others are, and the acknowledgement covers both.
#[test]
fn an_adopted_job_reports_only_what_was_not_shown() {
    let root = Sim::id(1);
    let (a, b, c) = (Sim::id(2), Sim::id(3), Sim::id(4));
    let t = Instant::ZERO;
    let mut ctrl = Controller::new(Sim::id(9), Config::default(), 1, t);
    ctrl.adopt_hosts(t, &[(root, HostState::Joined), (a, HostState::Joined), (b, HostState::Failed)]);
    assert_eq!(ctrl.host_counts(), [0, 0, 2, 0, 1], "adopted hosts are not invited again");
    let shown: NodeSet = [a, b].into_iter().collect();
    ctrl.adopt_job(t, spec(7), shown.clone(), false).expect("adopted");
    assert_eq!(
        ctrl.adopt_job(t, spec(7), NodeSet::new(), false),
        Err(plush_core::controller::ControllerError::Duplicate)
    );
    assert_eq!(ctrl.results_of(7), Some(&shown));
    ctrl.attach(t, root);
    ctrl.handle_link(t, root, LinkEvent::Connected);
    let frame = |m: &Message| FramePool::default().encode(m, 1 << 20).expect("encodes").payload().to_vec();
    let set_root = frame(&Message::Control(plush_core::wire::ControlMsg::SetRoot { root }));
    ctrl.handle_frame(t, root, &set_root).expect("SetRoot");
    // The Run goes to the root again (the job was not complete).
    let mut runs = 0;
    while let Some(o) = ctrl.poll_output() {
        if let Output::Transmit { frame, .. } = o {
            runs += usize::from(matches!(Message::decode(frame.payload()), Ok(Message::Job(JobMsg::Run(_)))));
        }
    }
    assert_eq!(runs, 1);
    let group = Group {
        status: ExitStatus::Exited(0),
        truncated: false,
        output: b"ok\n".to_vec(),
        nodes: [a, b, c].into_iter().collect(),
        stderr: Vec::new(),
        blob: None,
    };
    let results = frame(&Message::Job(JobMsg::Results { job: 7, groups: List(vec![group]), complete: true }));
    ctrl.handle_frame(t, root, &results).expect("Results");
    let mut reported = Vec::new();
    while let Some(o) = ctrl.poll_output() {
        if let Output::Report(r) = o {
            if let CtrlReport::Result { nodes, .. } = *r {
                reported.push(nodes);
            }
        }
    }
    assert_eq!(reported, vec![NodeSet::one(c)], "only the node not shown before is reported");
    assert_eq!(ctrl.stats().duplicate_results, 2);
    assert_eq!(ctrl.results_of(7).map(|s| s.len()), Some(3));
    // A job adopted as complete is not sent again.
    ctrl.adopt_job(t, spec(8), NodeSet::new(), true).expect("adopted");
    while let Some(o) = ctrl.poll_output() {
        if let Output::Transmit { frame, .. } = o {
            assert!(
                !matches!(Message::decode(frame.payload()), Ok(Message::Job(JobMsg::Run(_)))),
                "Run of a complete job"
            );
        }
    }
}

/// The simulator's controller crash: the job is half shown when the controller dies with a
/// quarter of the nodes (the root among them); a new controller process comes back 10 s later
/// with the journal and shows every survivor's result, none twice.
#[test]
fn a_controller_back_with_its_journal_shows_every_result_once() {
    let sc = Scenario {
        nodes: 600,
        seed: 65,
        job: true,
        fault_during_job: true,
        kill: 0.25,
        kill_root: true,
        controller_crash_at_s: Some(1.0),
        controller_back_after_s: Some(10.0),
        ..Scenario::default()
    };
    let r = plush_sim::run(&sc);
    let c = r.controller.expect("a controller report");
    let j = r.job.expect("a job report");
    assert!(r.converged && r.invariant_violations == 0, "{:?}", r.violations);
    assert!(c.crashed_at_ms > 0.0 && c.attached_at_ms.is_some_and(|a| a >= c.crashed_at_ms + 10_000.0), "{c:?}");
    assert!(c.results_before > 0 && c.results_after > 0, "both controllers showed results: {c:?}");
    assert_eq!((c.shown_twice, c.missing), (0, 0), "{c:?}");
    assert_eq!((j.lost, j.duplicates), (0, 0), "{j:?}");
    assert_eq!(j.results, c.results_before + c.results_after);
}

/// Never back: the tree ends within the linger and one epoch of the crash, although the root
/// died with the controller (its successor counts from its own start).
#[test]
fn a_tree_whose_controller_never_comes_back_is_gone_within_the_linger_and_an_epoch() {
    let mut sc = Scenario {
        nodes: 600,
        seed: 66,
        job: true,
        fault_during_job: true,
        kill: 0.2,
        kill_root: true,
        crash: CrashKind::Host,
        controller_crash_at_s: Some(1.0),
        ..Scenario::default()
    };
    sc.config.linger = Duration::from_secs(30);
    let r = plush_sim::run(&sc);
    let c = r.controller.expect("a controller report");
    assert!(c.never_back);
    assert_eq!(c.left, 0, "{c:?}");
    let bound = (sc.config.linger + sc.config.ransub_epoch).as_secs_f64() * 1000.0;
    assert!(c.gone_after_ms.is_some_and(|g| g <= bound && g >= 30_000.0), "{c:?}");
}

/// Swarm seed 50295: the linger ran out while a node was still repairing (silent crashes of 37 %
/// with the root, connections refused until 35 s). The tree's dismantle never reached it, and it
/// went on trying to join dead contacts for ever. A node without a tree counts the linger too.
#[test]
fn a_node_still_repairing_when_its_tree_ends_is_gone_within_the_linger() {
    let mut sc = Scenario {
        nodes: 1569,
        seed: 50295,
        latency_min_ms: 1.0,
        latency_max_ms: 82.0,
        kill: 0.37,
        kill_root: true,
        crash: CrashKind::Host,
        refuse: 9,
        heal_after_s: 35.0,
        job: true,
        fault_during_job: true,
        job_outputs: 6,
        controller_crash_at_s: Some(0.2),
        ..Scenario::default()
    };
    sc.config.max_children = 9;
    sc.config.linger = Duration::from_secs(24);
    let r = plush_sim::run(&sc);
    let c = r.controller.expect("a controller report");
    assert!(c.never_back);
    assert_eq!(c.left, 0, "a node outlived its tree: {c:?}");
    let bound = (sc.config.linger + sc.config.ransub_epoch).as_secs_f64() * 1000.0;
    assert!(c.gone_after_ms.is_some_and(|g| g <= bound), "{c:?}");
}

/// Swarm seed 50153: the controller dies and a new one comes back at once at the same address.
/// Its connection reaches the root before the old connection's reset, so the root saw no
/// reconnect and never sent again the results that had been in flight to the dead one (10 of
/// 725 missing until the next `SetCtrl` refresh). A replaced connection now counts as one.
/// (The swarm crashed the controller 1.9 s into the job; since failovers and repairs got
/// faster, every result is in by then, so the crash comes at 1.5 s, with results in flight.)
#[test]
fn a_controller_back_at_once_at_the_same_address_gets_every_result() {
    let mut sc = Scenario {
        nodes: 725,
        seed: 50153,
        latency_min_ms: 2.0,
        latency_max_ms: 92.0,
        kill: 0.19,
        crash: CrashKind::Host,
        refuse: 3,
        heal_after_s: 10.0,
        job: true,
        job_outputs: 9,
        controller_crash_at_s: Some(1.5),
        controller_back_after_s: Some(0.0),
        ..Scenario::default()
    };
    sc.config.max_children = 7;
    sc.config.max_links = 31;
    sc.config.linger = Duration::from_secs(178);
    let r = plush_sim::run(&sc);
    let c = r.controller.expect("a controller report");
    assert!(c.results_after > 0, "{c:?}");
    assert_eq!((c.shown_twice, c.missing), (0, 0), "{c:?}");
    let j = r.job.expect("a job report");
    assert_eq!((j.lost, j.duplicates), (0, 0), "{j:?}");
}

/// Only the controller and a node's parent may set its linger: a child (or any other member)
/// that sends `Linger` is refused and changes nothing.
#[test]
fn a_linger_from_below_is_refused() {
    let n = 20;
    let sc = scenario(n, 67, 600);
    let mut sim = build(&sc);
    let root = root_of(&sim);
    let child = sim.node(root).and_then(|r| r.children().first().copied()).expect("a child of the root");
    let c = child.loopback_index().expect("a simulated id");
    let before = sim.node(root).map(|r| r.stats().commands_rejected).unwrap_or_default();
    let msg = Message::Control(plush_core::wire::ControlMsg::Linger { ms: 1000 });
    assert!(sim.inject(c, root, &msg));
    sim.run_until(sim.now() + Duration::from_secs(1), |_| false);
    let r = sim.node(root).expect("the root");
    assert_eq!(r.stats().commands_rejected, before + 1);
    assert_eq!(r.linger(), Duration::from_secs(600));
    // From the parent it is taken, and passed on down.
    assert!(sim.inject(root, c, &msg));
    sim.run_until(sim.now() + Duration::from_secs(1), |_| false);
    assert_eq!(sim.node(c).map(|x| x.linger()), Some(Duration::from_secs(1)));
    let grandchildren: Vec<NodeId> = sim.node(c).map(|x| x.children().to_vec()).unwrap_or_default();
    for g in grandchildren {
        let g = g.loopback_index().expect("a simulated id");
        assert_eq!(sim.node(g).map(|x| x.linger()), Some(Duration::from_secs(1)), "node {g}");
    }
}
