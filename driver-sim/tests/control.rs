//! The control plane through the simulator: a `Controller` in its own slot builds the tree by
//! invitations (each host's client launched on request), then the tests strike at it and check
//! what the module docs of `plush_core::control` and `plush_core::controller` promise.

use plush_core::frame::FramePool;
use plush_core::wire::{ControlMsg, JobMsg, Message, RunSpec, Target};
use plush_core::{
    Command, Config, Controller, Event, HostState, InputError, Instant, LinkEvent, Node, NodeId, NodeSet,
    Report as CtrlReport, TreeState,
};
use plush_sim::{CrashKind, Sim};
use rand::{RngExt, SeedableRng};
use rand_pcg::Pcg64;
use std::time::Duration;

mod common;
use common::{build, ctrl_slot, index, joined, root_of, run_for, scenario};
use plush_sim::play::command_spec;

#[test]
fn invitation_limit_is_never_exceeded() {
    let n = 200;
    let mut sc = scenario(n, 41);
    sc.config.max_invitations = 5;
    let mut sim = Sim::new(n, &sc);
    sim.add_controller();
    let hosts: Vec<NodeId> = (0..n).map(Sim::id).collect();
    sim.ctrl_do(|c, now| c.add_hosts(now, &hosts));
    let mut steps = 0;
    let done = loop {
        let c = sim.controller().expect("a controller");
        assert!(c.outstanding() <= 5, "t={}ms: {} invitations outstanding", sim.now().as_millis(), c.outstanding());
        assert!(c.stats().max_outstanding <= 5, "max outstanding {}", c.stats().max_outstanding);
        if joined(&sim) == n as usize && sim.converged() {
            break true;
        }
        if steps == 20_000 {
            break false;
        }
        steps += 1;
        let t = sim.now() + Duration::from_millis(10);
        sim.run_until(t, |_| false);
    };
    let c = sim.controller().expect("a controller");
    assert!(done, "not built after {steps} steps: host counts {:?}", c.host_counts());
    assert_eq!(c.host_counts()[HostState::Joined as usize], n as usize);
    assert_eq!(c.outstanding(), 0);
    // The limit was reached, not just respected: the test would see a breach.
    assert_eq!(c.stats().max_outstanding, 5);
    // No client ran: every host was launched once, and every launch was asked for.
    assert_eq!(sim.launches, n);
    assert_eq!(c.stats().launches, u64::from(n));
    assert!(sim.converged());
    assert_eq!(sim.violations, 0, "{:?}", sim.violation_texts);
}

#[test]
fn a_flapping_host_becomes_failed_and_is_never_reinvited() {
    let n = 30;
    let mut sim = build(&scenario(n, 42));
    let ctrl = ctrl_slot(&sim);
    let root = root_of(&sim);
    // A leaf: its crash disturbs nobody else.
    let v = (0..n).find(|&i| i != root && sim.node(i).is_some_and(|x| x.children().is_empty())).expect("a leaf");
    let vid = Sim::id(v);
    sim.recording = true;
    let disconnected_reports = |sim: &Sim| {
        sim.messages
            .iter()
            .filter(|(_, _, to, m)| {
                *to == ctrl && matches!(m, Message::Control(ControlMsg::Disconnected { node, .. }) if *node == vid)
            })
            .count()
    };
    for round in 1..=2 {
        // The process dies; a client is started again at once (the controller re-invites it).
        sim.crash(v, CrashKind::Process);
        sim.launch_idle(v);
        let back = run_for(&mut sim, Duration::from_secs(30), Duration::from_millis(50), |s| {
            s.controller().and_then(|c| c.host_state(&vid)) == Some(HostState::Joined)
                && s.node(v).is_some_and(|x| x.state() == TreeState::Joined)
                && s.converged()
        });
        assert!(
            back,
            "round {round}: host {v} did not rejoin: {:?}, node state {:?}",
            sim.controller().and_then(|c| c.host_state(&vid)),
            sim.node(v).map(|x| x.state())
        );
        assert!(disconnected_reports(&sim) >= round, "round {round}: the controller never heard of the crash");
    }
    assert!(sim.now() < Instant::ZERO + Duration::from_secs(600), "the three disconnects must fit in the window");
    sim.crash(v, CrashKind::Process);
    sim.launch_idle(v);
    let failed = run_for(&mut sim, Duration::from_secs(30), Duration::from_millis(50), |s| {
        s.controller().and_then(|c| c.host_state(&vid)) == Some(HostState::Failed)
    });
    assert!(failed, "host {v} is {:?} after 3 disconnects", sim.controller().and_then(|c| c.host_state(&vid)));
    assert_eq!(sim.host_failures, 1);
    let failed_at = sim.now();
    let invitations = sim.controller().expect("a controller").stats().invitations;
    // A client runs there and answers, but nobody may invite it again.
    sim.run_until(failed_at + Duration::from_secs(60), |_| false);
    let c = sim.controller().expect("a controller");
    assert_eq!(c.host_state(&vid), Some(HostState::Failed));
    assert_eq!(c.stats().invitations, invitations, "invitations sent after the host failed");
    let set_peers: Vec<_> = sim
        .messages
        .iter()
        .filter(|(at, _, _, m)| {
            *at >= failed_at && matches!(m, Message::Control(ControlMsg::SetPeer { host, .. }) if *host == vid)
        })
        .collect();
    assert!(set_peers.is_empty(), "host {v} invited again after it failed: {set_peers:?}");
    assert!(sim.node(v).is_none_or(|x| x.state() != TreeState::Joined), "the failed host joined again");
    assert_eq!(c.host_counts()[HostState::Joined as usize], n as usize - 1);
    assert_eq!(c.host_counts()[HostState::Failed as usize], 1);
    // The others still form one tree (the failed host's idle client is not in it).
    let root = Sim::id(root_of(&sim));
    for i in (0..n).filter(|&i| i != v) {
        assert!(
            sim.node(i).is_some_and(|x| x.state() == TreeState::Joined && x.root() == Some(root)),
            "node {i} is not in the tree"
        );
    }
}

/// The whole overlay restarts (an upgrade of every host, a power cut), one host a moment before
/// the rest: the controller invites that first one through the root, which then dies with the
/// others. The invitation is lost with the root; the controller must not wait for it to expire
/// (and then fail a live host) but found the tree again and invite everyone. The first to
/// restart is a member, or the root (the host that founded the tree on the controller's own
/// invitation: that it was once invited directly must not make its new invitation look so).
#[test]
fn an_overlay_restarted_at_once_is_rebuilt_without_waiting_for_lost_invitations() {
    restart_everything(false);
    restart_everything(true);
}

fn restart_everything(root_first: bool) {
    let n = 30;
    let mut sim = build(&scenario(n, 7));
    let root = root_of(&sim);
    let first = if root_first { root } else { (0..n).find(|&i| i != root).expect("a member") };
    let fid = Sim::id(first);
    sim.crash(first, CrashKind::Process);
    sim.launch_idle(first);
    let limit = sim.now() + Duration::from_secs(30);
    sim.run_until(limit, |s| s.controller().and_then(|c| c.host_state(&fid)) == Some(HostState::Invited));
    assert_eq!(
        sim.controller().and_then(|c| c.host_state(&fid)),
        Some(HostState::Invited),
        "the controller re-invites the first restarted host through the root"
    );
    for i in (0..n).filter(|&i| i != first) {
        sim.crash(i, CrashKind::Process);
        sim.launch_idle(i);
    }
    let t0 = sim.now();
    // Well within the invitation expiry (300 s): the lost invitation is not waited for.
    let back = run_for(&mut sim, Duration::from_secs(120), Duration::from_millis(200), |s| {
        joined(s) == n as usize && s.converged()
    });
    let c = sim.controller().expect("a controller");
    assert!(
        back,
        "root first {root_first}: not rebuilt after {:?}: host counts {:?}",
        sim.now().since(t0),
        c.host_counts()
    );
    assert_eq!(c.host_counts()[HostState::Failed as usize], 0, "a live host was failed");
    assert_eq!(sim.violations, 0, "{:?}", sim.violation_texts);
}

/// With a maintenance script, every host gets it before its invitation (from the controller
/// for the first host, from the root for the others) and runs it before joining; hosts whose
/// script fails are failed at the controller, never join, and exit.
#[test]
fn hosts_run_the_maintenance_script_before_joining_and_a_failing_one_stays_out() {
    let n = 60;
    let sc = scenario(n, 11);
    let mut sim = Sim::new(n, &sc);
    sim.add_controller();
    sim.recording = true;
    let bad = [0u32, 17, 42];
    sim.maintenance_fails = bad.to_vec();
    sim.ctrl_do(|c, now| c.set_maintenance(now, Some("test -w /tmp".to_string())).expect("a short script"));
    let hosts: Vec<NodeId> = (0..n).map(Sim::id).collect();
    sim.ctrl_do(|c, now| c.add_hosts(now, &hosts));
    let good = n as usize - bad.len();
    let done =
        run_for(&mut sim, Duration::from_secs(120), Duration::from_millis(100), |s| joined(s) == good && s.converged());
    let c = sim.controller().expect("a controller");
    assert!(done, "host counts {:?}", c.host_counts());
    for &b in &bad {
        assert_eq!(c.host_state(&Sim::id(b)), Some(HostState::Failed), "host {b}");
        assert!(sim.node(b).is_none(), "host {b} still runs after its script failed");
    }
    assert_eq!(c.host_counts()[HostState::Failed as usize], bad.len());
    let ctrl = ctrl_slot(&sim);
    for i in 0..n {
        let id = Sim::id(i);
        let first_invite = sim.messages.iter().position(|(_, _, to, m)| {
            *to == i && matches!(m, Message::Control(ControlMsg::SetPeer { host, .. }) if *host == id)
        });
        let script = sim.messages.iter().position(|(_, _, to, m)| {
            *to == i && matches!(m, Message::Control(ControlMsg::Maintenance { script }) if script == "test -w /tmp")
        });
        let (Some(invite), Some(script)) = (first_invite, script) else {
            panic!("host {i}: invitation {first_invite:?}, script {script:?}")
        };
        assert!(script < invite, "host {i} got its invitation before the script");
        let failed_reports = sim
            .messages
            .iter()
            .filter(|(_, from, to, m)| {
                *from == i && *to == ctrl && matches!(m, Message::Control(ControlMsg::MaintenanceFailed { .. }))
            })
            .count();
        assert_eq!(failed_reports, usize::from(bad.contains(&i)), "host {i}");
    }
    assert_eq!(sim.violations, 0, "{:?}", sim.violation_texts);
}

#[test]
fn a_root_change_moves_the_controllers_link() {
    let n = 30;
    let mut sim = build(&scenario(n, 43));
    let ctrl = ctrl_slot(&sim);
    let ctrl_id = Sim::id(ctrl);
    let old = root_of(&sim);
    assert_eq!(sim.controller().and_then(|c| c.root()), Some(Sim::id(old)));
    let crashed_at = sim.now();
    sim.crash(old, CrashKind::Process);
    let moved = run_for(&mut sim, Duration::from_secs(60), Duration::from_millis(100), |s| {
        s.converged()
            && s.live_count() == n - 1
            && s.main_root().is_some_and(|r| s.controller().and_then(|c| c.root()) == Some(Sim::id(r)))
    });
    let new = sim.main_root().expect("a new root");
    let c = sim.controller().expect("a controller");
    assert!(moved, "the controller's root is {:?}, the tree's {new}", c.root());
    assert_ne!(new, old);
    assert_eq!(c.root(), Some(Sim::id(new)));
    assert_ne!(c.link_pins(&Sim::id(new)), 0, "the controller's link to the new root is not pinned");
    assert_eq!(c.link_pins(&Sim::id(old)), 0, "the controller still pins the dead root");
    assert_ne!(
        sim.node(new).expect("the new root").link_pins(&ctrl_id),
        0,
        "the new root's link to the controller is not pinned"
    );
    assert!(c.stats().root_changes >= 2);
    assert!(
        sim.ctrl_log.iter().any(|(at, r)| *at >= crashed_at && *r == CtrlReport::RootChanged(Sim::id(new))),
        "no RootChanged({new}) report: {:?}",
        sim.ctrl_log
    );
    // The link stays: a minute later the same root, still pinned.
    let t = sim.now() + Duration::from_secs(60);
    sim.run_until(t, |_| false);
    let c = sim.controller().expect("a controller");
    assert_eq!(c.root(), Some(Sim::id(new)));
    assert_ne!(c.link_pins(&Sim::id(new)), 0);
}

/// Build, cut the controller's link to the root until both ends declare it dead, let the
/// controller find the root again (by itself, or, with `at_root`, by attaching at the root as
/// soon as the cut heals), and check that the root sent it the members as `Participants`.
fn reconnect_and_check_participants(seed: u64, at_root: bool) {
    let n = 30;
    let mut sim = build(&scenario(n, seed));
    let ctrl = ctrl_slot(&sim);
    let root = root_of(&sim);
    sim.recording = true;
    let cut_at = sim.now();
    let heal_at = cut_at + Duration::from_secs(5);
    // Hold everything between the controller and the root: both ends declare the link dead.
    sim.clog(ctrl, root, heal_at);
    let lost = run_for(&mut sim, Duration::from_secs(5), Duration::from_millis(50), |s| {
        s.controller().is_some_and(|c| c.root().is_none())
    });
    assert!(lost, "the controller never declared its root link dead");
    let lost_at = sim.now();
    let root_lost = run_for(&mut sim, Duration::from_secs(2), Duration::from_millis(50), |s| {
        s.node(root).is_some_and(|x| x.link_pins(&Sim::id(ctrl)) == 0)
    });
    assert!(root_lost, "the root never declared its controller link dead");
    if at_root {
        sim.run_until(heal_at, |_| false);
        sim.ctrl_do(|c, now| c.attach(now, Sim::id(root)));
    }
    let back = run_for(&mut sim, Duration::from_secs(60), Duration::from_millis(100), |s| {
        s.controller().and_then(|c| c.root()) == Some(Sim::id(root))
            && s.messages.iter().any(|(at, _, to, m)| {
                *at >= lost_at
                    && *to == ctrl
                    && matches!(m, Message::Control(ControlMsg::Participants { last: true, .. }))
            })
    });
    // Whom the controller asked where the root is.
    let asked: Vec<u32> = sim
        .messages
        .iter()
        .filter(|(at, from, _, m)| {
            *at >= lost_at && *from == ctrl && matches!(m, Message::Control(ControlMsg::SetCtrl { .. }))
        })
        .map(|(_, _, to, _)| *to)
        .collect();
    let mut members = NodeSet::new();
    let mut parts = 0;
    for (at, from, to, m) in &sim.messages {
        if let (true, true, Message::Control(ControlMsg::Participants { nodes, .. })) = (*at >= lost_at, *to == ctrl, m)
        {
            assert_eq!(*from, root, "Participants from {from}, not the root");
            members.extend(nodes);
            parts += 1;
        }
    }
    assert!(
        back,
        "after reconnecting (root {:?}, asked {asked:?}, the root is {root}), the controller got {parts} \
         Participants parts",
        sim.controller().and_then(|c| c.root())
    );
    let live: NodeSet = (0..n).filter(|&i| sim.alive(i)).map(Sim::id).collect();
    assert_eq!(live.len(), u64::from(n));
    assert!(live.minus(&members).is_empty(), "members missing from Participants: {:?}", live.minus(&members));
    assert!(members.minus(&live).is_empty(), "Participants name non-members: {:?}", members.minus(&live));
    let c = sim.controller().expect("a controller");
    assert_eq!(c.host_counts()[HostState::Joined as usize], n as usize);
    assert_ne!(c.link_pins(&Sim::id(root)), 0);
    assert_ne!(sim.node(root).expect("the root").link_pins(&Sim::id(ctrl)), 0);
    assert!(sim.converged());
}

/// The controller finds the root again by itself: after `join_retry` it asks a random member
/// (with this seed, not the root), whose `SetCtrl` travels up to the root.
#[test]
fn a_reconnecting_controller_receives_participants() {
    reconnect_and_check_participants(44, false);
}

/// The same when the controller's `SetCtrl` reaches the root directly.
#[test]
fn a_controller_reattaching_at_the_root_receives_participants() {
    reconnect_and_check_participants(44, true);
}

#[test]
fn a_partial_barrier_releases_at_threshold_after_timeout_and_reports_late_nodes() {
    let n = 40;
    let mut sim = build(&scenario(n, 45));
    sim.recording = true;
    let timeout = Duration::from_secs(2);
    let opened = sim.now();
    let r = sim.ctrl_do(|c, now| c.barrier(now, "b", Target::All, 0.5, timeout));
    assert_eq!(r, Some(Ok(())));
    // 60% enter.
    let entered: Vec<u32> = (0..n).filter(|i| i % 5 < 3).collect();
    assert_eq!(entered.len(), 24);
    for &i in &entered {
        assert!(sim.command(i, Command::BarrierEnter { name: "b".into() }), "node {i} could not enter");
    }
    let released_events = |sim: &Sim| -> Vec<(Instant, u32)> {
        sim.node_events
            .iter()
            .filter(|(_, _, e)| matches!(e, Event::BarrierReleased(name) if name == "b"))
            .map(|(at, i, _)| (*at, *i))
            .collect()
    };
    let released_report = |sim: &Sim| {
        sim.ctrl_log.iter().find_map(|(at, r)| match r {
            CtrlReport::BarrierReleased { name, entered, expected, partial } if name == "b" => {
                Some((*at, *entered, *expected, *partial))
            }
            _ => None,
        })
    };
    // Nothing is released before the timeout, although every entry has arrived.
    sim.run_until(opened + timeout - Duration::from_millis(1), |_| false);
    assert_eq!(released_report(&sim), None, "released before the timeout");
    assert!(released_events(&sim).is_empty(), "a node was let go before the timeout");
    // After it: a partial release.
    sim.run_until(opened + timeout + Duration::from_secs(1), |_| false);
    let (at, count, expected, partial) = released_report(&sim).expect("no release after the timeout");
    assert!(at >= opened + timeout);
    assert!(partial, "a release with 24 of 40 must be partial");
    assert_eq!((count, expected), (24, 40));
    let mut let_go: Vec<u32> = released_events(&sim).iter().map(|&(_, i)| i).collect();
    let_go.sort_unstable();
    assert_eq!(let_go, entered, "the nodes let go are not those that entered");
    // A late entrant passes at once and is reported.
    let late = 3;
    assert!(!entered.contains(&late));
    let before = released_events(&sim).len();
    let now = sim.now();
    assert!(sim.command(late, Command::BarrierEnter { name: "b".into() }));
    let events = released_events(&sim);
    assert_eq!(events.len(), before + 1);
    assert_eq!(events[before], (now, late), "the late node was not let through at once");
    let reported = run_for(&mut sim, Duration::from_secs(2), Duration::from_millis(50), |s| {
        s.ctrl_log.iter().any(|(_, r)| matches!(r, CtrlReport::BarrierLate { name, .. } if name == "b"))
    });
    assert!(reported, "no BarrierLate report: {:?}", sim.ctrl_log);
    let late_nodes: Vec<&NodeSet> = sim
        .ctrl_log
        .iter()
        .filter_map(|(_, r)| match r {
            CtrlReport::BarrierLate { name, nodes } if name == "b" => Some(nodes),
            _ => None,
        })
        .collect();
    assert_eq!(late_nodes, vec![&NodeSet::one(Sim::id(late))]);
    // Nobody else was let go twice or without entering.
    assert_eq!(released_events(&sim).len(), entered.len() + 1);
}

#[test]
fn dismantle_leaves_no_node_running() {
    let n = 30;
    let mut sim = build(&scenario(n, 46));
    assert_eq!(sim.live_count(), n);
    assert_eq!(sim.exits, 0);
    sim.ctrl_do(|c, now| c.dismantle(now));
    let gone = run_for(&mut sim, Duration::from_secs(10), Duration::from_millis(100), |s| s.live_count() == 0);
    assert!(gone, "{} nodes still run", sim.live_count());
    assert_eq!(sim.exits, n);
    assert_eq!(sim.violations, 0, "{:?}", sim.violation_texts);
    // Nothing comes back.
    let t = sim.now() + Duration::from_secs(30);
    sim.run_until(t, |_| false);
    assert_eq!(sim.live_count(), 0);
    assert_eq!(sim.exits, n);
}

/// A client that nobody contacts (launched, never invited) exits by itself after
/// `idle_expiry`, and not before; one that has links stays.
#[test]
fn an_idle_client_exits_after_idle_expiry() {
    let n = 10;
    let sc = scenario(n, 48);
    // The controller invites all but the last slot; a client runs there, never contacted.
    let mut sim = Sim::new(n, &sc);
    sim.add_controller();
    let hosts: Vec<NodeId> = (0..n - 1).map(Sim::id).collect();
    sim.ctrl_do(|c, now| c.add_hosts(now, &hosts));
    let built = run_for(&mut sim, Duration::from_secs(30), Duration::from_millis(100), |s| {
        joined(s) == (n - 1) as usize && s.converged()
    });
    assert!(built, "the tree of {} hosts did not build", n - 1);
    let lone = n - 1;
    sim.launch_idle(lone);
    assert!(sim.alive(lone));
    let start = sim.now();
    let expiry = sc.config.idle_expiry;
    sim.run_until(start + expiry - Duration::from_secs(1), |_| false);
    assert!(sim.alive(lone), "the idle client exited before idle_expiry");
    sim.run_until(start + expiry + Duration::from_secs(1), |_| false);
    assert!(!sim.alive(lone), "the idle client still runs after idle_expiry");
    assert_eq!(sim.exits, 1);
    // The members, which have links, are all still there.
    assert_eq!(sim.live_count(), n - 1);
}

fn spec(job: u64) -> RunSpec {
    command_spec(job, &["echo", "not from above"])
}

#[test]
fn a_run_from_a_non_parent_is_rejected() {
    let n = 30;
    let mut sc = scenario(n, 47);
    // A narrow tree, so that non-root nodes have children.
    sc.config.max_children = 3;
    let mut sim = build(&sc);
    sim.recording = true;
    let root = root_of(&sim);
    // Y: a non-root node with a child X (linked to Y, but below it).
    let y =
        (0..n).find(|&i| i != root && sim.node(i).is_some_and(|x| !x.children().is_empty())).expect("an interior node");
    let x = index(sim.node(y).expect("y").children()[0]);
    let p = index(sim.node(y).expect("y").parent().expect("y's parent"));
    // And the root's child R, which is not the controller.
    let r = index(sim.node(root).expect("root").children()[0]);
    let rejected = |sim: &Sim, at: u32, from: u32| {
        sim.node_events.iter().any(|(_, i, e)| *i == at && *e == Event::CommandRejected(Sim::id(from)))
    };
    // Jobs each node tracks (the root's census of the controller's tree is one of them).
    let jobs = |sim: &Sim| (0..n).map(|i| sim.node(i).map_or(0, |z| z.job_count())).collect::<Vec<_>>();
    for (to, from) in [(y, x), (root, r)] {
        let before = sim.node(to).expect("target").stats().commands_rejected;
        let jobs_before = jobs(&sim);
        assert!(sim.inject(from, to, &Message::Job(JobMsg::Run(Box::new(spec(77))))), "no link {from} -> {to}");
        let t = sim.now() + Duration::from_millis(500);
        sim.run_until(t, |_| false);
        let node = sim.node(to).expect("target");
        assert_eq!(node.stats().commands_rejected, before + 1, "node {to} took a Run from {from}");
        assert!(rejected(&sim, to, from), "node {to} did not report the Run from {from}");
        assert_eq!(jobs(&sim), jobs_before, "a Run from {from} to {to} started a job somewhere");
    }
    // The same Run from Y's parent is obeyed: the injection itself works.
    let (y_jobs, x_jobs) = (sim.node(y).expect("y").job_count(), sim.node(x).expect("x").job_count());
    assert!(sim.inject(p, y, &Message::Job(JobMsg::Run(Box::new(spec(78))))));
    let t = sim.now() + Duration::from_millis(500);
    sim.run_until(t, |_| false);
    assert_eq!(sim.node(y).expect("y").job_count(), y_jobs + 1, "node {y} ignored a Run from its parent");
    assert_eq!(sim.node(x).expect("x").job_count(), x_jobs + 1, "node {y} did not pass the Run to {x}");
    assert!(!rejected(&sim, y, p));
}

/// Every control message, and a few job messages, as valid payloads.
fn valid_payloads() -> Vec<Vec<u8>> {
    let a = Sim::id(1);
    let b = Sim::id(2);
    let mut two = NodeSet::one(a);
    two.insert(b);
    let msgs = [
        Message::Control(ControlMsg::SetCtrl { ctrl: a }),
        Message::Control(ControlMsg::SetRoot { root: a }),
        Message::Control(ControlMsg::SetPeer { host: Sim::id(0), ctrl: a }),
        Message::Control(ControlMsg::SetPeer { host: b, ctrl: a }),
        Message::Control(ControlMsg::InviteFailed { host: b }),
        Message::Control(ControlMsg::Joined { node: b, build: 0 }),
        Message::Control(ControlMsg::Disconnected { node: b, related: false }),
        Message::Control(ControlMsg::GetStatus),
        Message::Control(ControlMsg::Status { joined: true }),
        Message::Control(ControlMsg::Participants { nodes: two.clone(), last: true }),
        Message::Control(ControlMsg::Forget { nodes: two.clone() }),
        Message::Control(ControlMsg::Disconnect),
        Message::Job(JobMsg::Run(Box::new(spec(5)))),
        Message::Job(JobMsg::Ack { job: 5, nodes: two.clone() }),
        Message::Job(JobMsg::BarrierEnter { name: "b".into(), nodes: two }),
        Message::Job(JobMsg::BarrierRelease { name: "b".into() }),
    ];
    let mut pool = FramePool::default();
    msgs.iter().map(|m| pool.encode(m, 1 << 20).expect("encodes").payload().to_vec()).collect()
}

/// A node (or a controller) with an open link from `peer`, so that frames reach the protocol.
fn fresh_node(peer: NodeId) -> Node {
    let mut node = Node::new(Sim::id(0), Config::default(), 1, Instant::ZERO);
    node.handle_link(Instant::ZERO, peer, LinkEvent::Connected);
    while node.poll_output().is_some() {}
    node
}

fn fresh_controller(peer: NodeId) -> Controller {
    let mut c = Controller::new(Sim::id(9), Config::default(), 1, Instant::ZERO);
    c.handle_link(Instant::ZERO, peer, LinkEvent::Connected);
    while c.poll_output().is_some() {}
    c
}

/// Hand `bytes` from `peer` to the node and the controller; true if they do not decode (and
/// then both must have refused them).
fn feed(node: &mut Node, ctrl: &mut Controller, peer: NodeId, now: Instant, bytes: &[u8]) -> bool {
    let bad = Message::decode(bytes).is_err();
    let r = node.handle_frame(now, peer, bytes);
    while node.poll_output().is_some() {}
    let rc = ctrl.handle_frame(now, peer, bytes);
    while ctrl.poll_output().is_some() {}
    if bad {
        assert!(matches!(r, Err(InputError::Decode(_))), "node took {bytes:?}: {r:?}");
        assert!(matches!(rc, Err(InputError::Decode(_))), "controller took {bytes:?}: {rc:?}");
    }
    bad
}

#[test]
fn malformed_control_messages_are_errors_not_panics() {
    let peer = Sim::id(1);
    let now = Instant::ZERO + Duration::from_secs(1);
    let mut node = fresh_node(peer);
    let mut ctrl = fresh_controller(peer);
    let payloads = valid_payloads();
    // Every valid payload decodes; every strict prefix of it, and it with a byte more, does not.
    for p in &payloads {
        assert!(Message::decode(p).is_ok());
        for cut in 0..p.len() {
            assert!(
                feed(&mut fresh_node(peer), &mut fresh_controller(peer), peer, now, &p[..cut]),
                "prefix {cut} of {p:?}"
            );
        }
        let mut long = p.clone();
        long.push(0);
        assert!(feed(&mut fresh_node(peer), &mut fresh_controller(peer), peer, now, &long), "{long:?}");
    }
    let mut errors = 0u64;
    // Every byte of every valid payload, set to every value: errors where it does not decode,
    // and never a panic where it does.
    for p in &payloads {
        for k in 0..p.len() {
            for v in 0..=255u8 {
                let mut m = p.clone();
                m[k] = v;
                errors += u64::from(feed(&mut node, &mut ctrl, peer, now, &m));
            }
        }
    }
    // Random bytes, random lengths; and random bytes after a valid control tag.
    let mut rng = Pcg64::seed_from_u64(48);
    for round in 0..20_000 {
        let len = rng.random_range(0..48usize);
        let mut m: Vec<u8> = (0..len).map(|_| rng.random::<u8>()).collect();
        if round % 2 == 0 && !m.is_empty() {
            m[0] = 2; // Message::Control
            if m.len() > 1 {
                m[1] = rng.random_range(0..12u8);
            }
        }
        errors += u64::from(feed(&mut node, &mut ctrl, peer, now, &m));
    }
    assert!(errors > 10_000, "only {errors} malformed frames");
    assert_eq!(node.stats().decode_errors, errors);
    // A valid message without a link is refused too.
    let mut lonely = Node::new(Sim::id(0), Config::default(), 1, Instant::ZERO);
    assert_eq!(lonely.handle_frame(now, peer, &payloads[0]), Err(InputError::NoLink(peer)));
}

/// Every `SetPeer` the controller sent, as (to, host), draining its outputs.
fn set_peers_sent(c: &mut Controller) -> Vec<(NodeId, NodeId)> {
    let mut sent = Vec::new();
    while let Some(o) = c.poll_output() {
        if let plush_core::Output::Transmit { to, frame } = o {
            if let Ok(Message::Control(ControlMsg::SetPeer { host, .. })) = Message::decode(frame.payload()) {
                sent.push((to, host));
            }
        }
    }
    sent
}

#[test]
fn a_host_launched_while_the_root_is_unknown_waits_for_the_root_instead_of_founding_a_tree() {
    // The bug this guards against: with slow launches (ssh on a loaded machine), the root link
    // broke, and every host whose launch completed meanwhile was invited directly and founded
    // a tree of its own; the old roots were left alone, "joined" but in no tree.
    let (h1, h2) = (Sim::id(1), Sim::id(2));
    let mut pool = FramePool::default();
    let mut frame = |m: ControlMsg| pool.encode(&Message::Control(m), 1 << 20).expect("encodes").payload().to_vec();
    let mut c = Controller::new(Sim::id(9), Config::default(), 1, Instant::ZERO);
    let t = |s: u64| Instant::ZERO + Duration::from_millis(s);
    c.add_hosts(t(0), &[h1, h2]);
    c.handle_link(t(1), h1, LinkEvent::Connected);
    // The first host is invited directly and founds the tree.
    assert_eq!(set_peers_sent(&mut c), vec![(h1, h1)]);
    c.handle_frame(t(2), h1, &frame(ControlMsg::SetRoot { root: h1 })).expect("SetRoot");
    c.handle_frame(t(3), h1, &frame(ControlMsg::Joined { node: h1, build: 0 })).expect("Joined");
    // h2 goes through the root; the root finds no client there, so the controller launches one.
    assert!(set_peers_sent(&mut c).contains(&(h1, h2)));
    c.handle_frame(t(4), h1, &frame(ControlMsg::InviteFailed { host: h2 })).expect("InviteFailed");
    while c.poll_output().is_some() {}
    // The root link breaks; then h2's launch completes.
    c.handle_link(t(5), h1, LinkEvent::Closed);
    c.handle_launched(t(6), h2, Ok(()));
    // (Had it dialed h2, the link would come up now and the invitation go out.)
    c.handle_link(t(6), h2, LinkEvent::Connected);
    let sent = set_peers_sent(&mut c);
    assert!(!sent.iter().any(|&(to, _)| to == h2), "h2 was invited directly, to found a tree: {sent:?}");
    assert_eq!(c.host_state(&h2), Some(HostState::Invited));
    // Once a root announces itself, h2 is invited through it.
    c.handle_link(t(7), h1, LinkEvent::Connected);
    c.handle_frame(t(8), h1, &frame(ControlMsg::SetRoot { root: h1 })).expect("SetRoot");
    assert!(set_peers_sent(&mut c).contains(&(h1, h2)));
}

#[test]
fn a_barrier_past_its_deadline_without_enough_entries_asks_for_no_timer_in_the_past() {
    // Found by the controller_inputs fuzz target: the barrier's deadline stayed the next
    // timeout after it passed, so the driver was asked to wake up in the past, forever (a
    // spinning event loop; a simulator whose time stopped).
    let mut c = Controller::new(Sim::id(200), Config::default(), 1, Instant::ZERO);
    let target = Target::Nodes(NodeSet::one(Sim::id(1)));
    c.barrier(Instant::ZERO, "b", target, 1.0, Duration::from_secs(1)).expect("a barrier");
    let t = c.poll_timeout().expect("the barrier's deadline");
    assert_eq!(t, Instant::ZERO + Duration::from_secs(1));
    c.handle_timeout(t);
    while c.poll_output().is_some() {}
    assert!(c.poll_timeout().is_none_or(|next| next > t), "next timeout {:?} is not after {t:?}", c.poll_timeout());
    let later = t + Duration::from_secs(60);
    c.handle_timeout(later);
    assert!(c.poll_timeout().is_none_or(|next| next > later));
}

/// The root holds a member's census answer a moment (the controller's merge delay) before it
/// passes it on. A member killed in that moment was reported lost first, and its answer,
/// passed on after, told the controller it had joined again: nobody invited the client
/// launched in its place (CI saw it on real processes). The root now leaves out of a census
/// the members it reported lost while the census ran, and the new client is invited and joins.
#[test]
fn a_census_answer_older_than_a_loss_does_not_make_the_lost_member_joined() {
    for seed in [3, 8, 21] {
        let n = 30;
        let mut sim = build(&scenario(n, seed));
        let ctrl = ctrl_slot(&sim);
        let root = root_of(&sim);
        let children: Vec<u32> = sim.node(root).expect("the root").children().iter().map(|c| index(*c)).collect();
        assert!(children.len() >= 2, "seed {seed}: the root has {} children", children.len());
        let victim = children[0];
        // A loss elsewhere (a leaf's process) makes the controller ask for a census.
        let leaf = (0..n)
            .find(|&i| {
                i != root && sim.node(i).is_some_and(|x| x.children().is_empty() && x.parent() != Some(Sim::id(victim)))
            })
            .expect("a leaf");
        sim.recording = true;
        sim.crash(leaf, CrashKind::Process);
        let is_census_answer = |m: &Message| {
            matches!(m, Message::Job(JobMsg::Results { job, groups, .. })
                if job >> 63 == 1 && groups.0.iter().any(|g| g.nodes.contains(&Sim::id(victim))))
        };
        let answered = sim.run_until(sim.now() + Duration::from_secs(10), |s| {
            s.messages.iter().any(|(_, from, to, m)| *from == victim && *to == root && is_census_answer(m))
        });
        assert!(answered, "seed {seed}: no census answer from {victim} reached the root");
        // Killed while its answer waits at the root.
        sim.crash(victim, CrashKind::Process);
        run_for(&mut sim, Duration::from_secs(2), Duration::from_millis(20), |_| false);
        sim.launch_idle(victim);
        sim.launch_idle(leaf);
        let reported = sim.messages.iter().find_map(|(at, from, to, m)| {
            let lost = matches!(m, Message::Control(ControlMsg::Disconnected { node, .. }) if *node == Sim::id(victim));
            (*from == root && *to == ctrl && lost).then_some(*at)
        });
        let reported = reported.unwrap_or_else(|| panic!("seed {seed}: the root never reported {victim} lost"));
        let stale: Vec<Instant> = sim
            .messages
            .iter()
            .take_while(|(_, from, to, m)| {
                !(*from == root && *to == ctrl && matches!(m, Message::Control(ControlMsg::Participants { last: true, .. })))
            })
            .filter(|(at, from, to, m)| {
                *at >= reported
                    && *from == root
                    && *to == ctrl
                    && matches!(m, Message::Control(ControlMsg::Participants { nodes, .. }) if nodes.contains(&Sim::id(victim)))
            })
            .map(|(at, ..)| *at)
            .collect();
        assert!(stale.is_empty(), "seed {seed}: the census named {victim} after the root reported it lost");
        // A client starts there again (after the controller found none and retries later): it
        // is invited and joins, and the whole tree is back, as the controller says.
        let back = run_for(&mut sim, Duration::from_secs(30), Duration::from_millis(100), |s| {
            joined(s) == n as usize && s.converged() && s.node(victim).is_some_and(|x| x.state() == TreeState::Joined)
        });
        assert!(
            back,
            "seed {seed}: {victim} is {:?} to the controller, {:?} in fact",
            sim.controller().and_then(|c| c.host_state(&Sim::id(victim))),
            sim.node(victim).map(|x| x.state())
        );
    }
}

/// A member that dies with its parent is reported by nobody: a census finds it (the root
/// checks each host believed joined that the census does not list). The root checks 64 at
/// once and keeps the rest waiting, so a mass loss is found in one census, not 64 hosts per
/// census every `recheck_delay` (a job waited for each such host until then).
#[test]
fn a_mass_loss_nobody_reported_is_found_by_one_census() {
    let n = 3000;
    let seed = 7;
    let mut sim = build(&scenario(n, seed));
    let root = root_of(&sim);
    let ctrl = ctrl_slot(&sim);
    // A quarter of the processes die at once, the root spared.
    let mut rng = Pcg64::seed_from_u64(seed);
    let mut killed = Vec::new();
    for i in 0..n {
        if i != root && i != ctrl && rng.random_bool(0.25) {
            killed.push(i);
        }
    }
    let unreported = killed
        .iter()
        .filter(|&&i| sim.node(i).and_then(|x| x.parent()).is_some_and(|p| killed.contains(&index(p))))
        .count();
    assert!(unreported > 2 * 64, "only {unreported} losses nobody reports");
    for &i in &killed {
        sim.crash(i, CrashKind::Process);
    }
    let believed = |s: &Sim| {
        let c = s.controller().expect("a controller");
        killed.iter().filter(|&&i| c.host_state(&Sim::id(i)) == Some(HostState::Joined)).count()
    };
    let found = run_for(&mut sim, Duration::from_secs(8), Duration::from_millis(100), |s| believed(s) == 0);
    assert!(
        found,
        "8 s after the crash the controller still believes {} of {} dead hosts joined",
        believed(&sim),
        killed.len()
    );
}

/// A `SetCtrl` that reaches the root from below means the controller is looking for its root
/// (it asked a member) or a fragment that merged names it: either way the controller may not
/// know this root, whatever the root's own link says (its `SetRoot` can be lost, sent into a
/// one-way partition that healed since: swarm seed 5453 then left the controller rootless,
/// seeking in vain, for the rest of the run and one result never arrived). The root answers
/// with `SetRoot` every time.
#[test]
fn the_root_answers_a_controller_looking_for_it_through_a_member() {
    let n = 30;
    let mut sim = build(&scenario(n, 12));
    let ctrl = ctrl_slot(&sim);
    let root = root_of(&sim);
    let child = index(sim.node(root).expect("the root").children()[0]);
    sim.recording = true;
    let from = sim.now();
    let asked = Message::Control(ControlMsg::SetCtrl { ctrl: Sim::id(ctrl) });
    assert!(sim.inject(child, root, &asked), "no link {child} -> {root}");
    run_for(&mut sim, Duration::from_millis(500), Duration::from_millis(50), |_| false);
    let answered = sim.messages.iter().any(|(at, f, to, m)| {
        *at >= from
            && *f == root
            && *to == ctrl
            && matches!(m, Message::Control(ControlMsg::SetRoot { root: r }) if *r == Sim::id(root))
    });
    assert!(answered, "the root did not tell the controller where it is");
    assert_eq!(sim.controller().and_then(|c| c.root()), Some(Sim::id(root)));
}

/// A tree of one host: its root has no parent or child, only the controller's link, and leads
/// that link's heartbeats all the same. Without them the controller, which only answers,
/// declared the link silent after `dead_after`, dropped it, and found the root again by seeking:
/// a cycle of a few seconds, forever, on every cluster of one host (and a dropped record on
/// that link went unseen, since nothing followed it).
#[test]
fn a_lone_root_keeps_its_controllers_link_alive() {
    for seed in [1, 2, 3] {
        let mut sim = build(&scenario(1, seed));
        let ctrl = ctrl_slot(&sim);
        let root = root_of(&sim);
        let c = sim.controller().expect("a controller");
        assert_eq!(c.root(), Some(Sim::id(root)));
        let changes = c.stats().root_changes;
        // Long enough for several `dead_after`s, and a lost link to be found again.
        run_for(&mut sim, Duration::from_secs(30), Duration::from_millis(100), |_| false);
        let c = sim.controller().expect("a controller");
        assert_eq!(c.root(), Some(Sim::id(root)), "seed {seed}: the controller lost its root");
        assert_eq!(c.stats().root_changes, changes, "seed {seed}: the controller's root link was lost and found again");
        let node = sim.node(root).expect("the root");
        assert_eq!(node.stats().silent_links, 0, "seed {seed}: the root found its controller link silent");
        assert_ne!(node.link_pins(&Sim::id(ctrl)), 0, "seed {seed}: the root's controller link is not pinned");
    }
}
