//! Issue 19: a tree whose controller is gone lingers for `Config::linger` (or what the controller
//! told it), then the root dismantles it; a controller that comes back within the linger cancels
//! the countdown. See the module docs of `plush_core::control` ("Lingering").

use plush_core::{HostState, NodeId};
use plush_sim::{CrashKind, Scenario, Sim};
use std::time::Duration;

fn scenario(n: u32, seed: u64, linger_s: u64) -> Scenario {
    let mut sc = Scenario { nodes: n, seed, ..Scenario::default() };
    sc.config.linger = Duration::from_secs(linger_s);
    sc
}

fn joined(sim: &Sim) -> usize {
    sim.controller().map_or(0, |c| c.host_counts()[HostState::Joined as usize])
}

/// A simulator of `sc.nodes` hosts that a controller invited; returns once all joined.
fn build(sc: &Scenario) -> Sim {
    let n = sc.nodes;
    let mut sim = Sim::new(n, sc);
    sim.add_controller();
    let hosts: Vec<NodeId> = (0..n).map(Sim::id).collect();
    sim.ctrl_do(|c, now| c.add_hosts(now, &hosts));
    let deadline = sim.now() + Duration::from_secs(120);
    while sim.now() < deadline {
        let t = sim.now() + Duration::from_millis(100);
        sim.run_until(t, |_| false);
        if joined(&sim) == n as usize && sim.converged() {
            assert_eq!(sim.violations, 0, "{:?}", sim.violation_texts);
            return sim;
        }
    }
    panic!("seed {}: the controller did not build the tree", sc.seed);
}

fn root_of(sim: &Sim) -> u32 {
    sim.main_root().expect("a root")
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
