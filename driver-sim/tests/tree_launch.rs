//! Tree launch (`Config::tree_launch`, issue 21): the controller invites the first host, then
//! hands the hosts not yet invited to members in shares of at most `MAX_LIST`; members launch
//! and invite them, each naming itself as the new host's bootstrap, and pass parts of their
//! share on to the hosts they launched. Hosts a member cannot launch go back to the controller,
//! which launches them itself, and reports by name those it cannot launch either. A share whose
//! member died goes out again to another member once it expires.

use plush_core::wire::{ControlMsg, Message, MAX_LIST};
use plush_core::{HostState, Instant, NodeId};
use plush_sim::play::command_spec;
use plush_sim::{LaunchModel, Scenario, Sim};
use std::time::Duration;

mod common;
use common::{ctrl_slot, joined, run_for, scenario, wait_built};

/// A scenario with tree launch on: launches of 300 ms, `fanout` at once per launcher.
fn tree_scenario(n: u32, seed: u64, fanout: u32) -> Scenario {
    let mut sc = scenario(n, seed);
    sc.job = true;
    sc.config.tree_launch = true;
    sc.config.launch_fanout = fanout as usize;
    sc.launch = Some(LaunchModel { ms: 300.0, fanout });
    sc
}

/// A controller given every host of `sc`, recording messages.
fn start(sc: &Scenario) -> Sim {
    let n = sc.nodes;
    let mut sim = Sim::new(n, sc);
    sim.recording = true;
    sim.add_controller();
    let hosts: Vec<NodeId> = (0..n).map(Sim::id).collect();
    sim.ctrl_do(|c, now| c.add_hosts(now, &hosts));
    sim
}

/// Run a job on every host and check that every host's result arrived once.
fn job_reaches_everyone(sim: &mut Sim, n: u32) {
    sim.watch_job(9);
    let r = sim.ctrl_do(|c, now| c.run(now, command_spec(9, &["echo", "hello from plush"])));
    assert_eq!(r, Some(Ok(())));
    let done = run_for(sim, Duration::from_secs(20), Duration::from_millis(50), |s| {
        (0..n).all(|i| s.job.reported.get(i as usize).is_some_and(|&k| k > 0))
    });
    assert!(done, "results missing: {:?}", sim.job.reported.iter().filter(|&&k| k == 0).count());
    assert!(sim.job.reported.iter().take(n as usize).all(|&k| k == 1), "a result shown twice");
}

#[test]
fn members_launch_the_hosts_in_shares_and_invite_them_themselves() {
    let n = 2500;
    let sc = tree_scenario(n, 21, 8);
    let mut sim = start(&sc);
    wait_built(&mut sim, n as usize, sc.seed);
    let ctrl = ctrl_slot(&sim);
    assert_eq!(sim.launches, n, "every client was launched once");
    assert_eq!(sim.launches_by_controller, 1, "the controller launched only the first host");
    let c = sim.controller().expect("a controller");
    assert!(c.stats().shares >= 3, "{} hosts need at least 3 shares of {MAX_LIST}", n - 1);
    assert_eq!(c.stats().shared_hosts, u64::from(n - 1));
    // Every share is bounded, and none holds every host.
    let mut shares = 0;
    for (_, _, _, m) in &sim.messages {
        if let Message::Control(ControlMsg::Share { hosts, .. }) = m {
            shares += 1;
            assert!(hosts.len() <= MAX_LIST && hosts.len() < n as usize - 1, "a share of {}", hosts.len());
        }
    }
    assert!(shares > c.stats().shares, "members passed parts of their shares on");
    // Every host but the first was invited by a member, not by the controller: its first
    // `SetPeer` came from a member, which it then joined through.
    let first = sim.messages.iter().find_map(|(_, from, to, m)| {
        matches!(m, Message::Control(ControlMsg::SetPeer { host, .. }) if Sim::id(*to) == *host).then_some((*from, *to))
    });
    let first_host = first.expect("an invitation").1;
    for i in (0..n).filter(|&i| i != first_host) {
        let inviter = sim.messages.iter().find_map(|(_, from, to, m)| {
            (*to == i && matches!(m, Message::Control(ControlMsg::SetPeer { host, .. }) if *host == Sim::id(i)))
                .then_some(*from)
        });
        assert!(inviter.is_some_and(|f| f != ctrl), "host {i} was invited by {inviter:?} (the controller is {ctrl})");
    }
    job_reaches_everyone(&mut sim, n);
}

#[test]
fn hosts_members_cannot_launch_go_back_to_the_controller() {
    let n = 60;
    let sc = tree_scenario(n, 22, 4);
    let mut sim = start(&sc);
    let refused: Vec<u32> = vec![7, 19, 33, 58];
    sim.member_launch_fails = refused.clone();
    wait_built(&mut sim, n as usize, sc.seed);
    assert_eq!(sim.launches, n, "every client was launched once");
    assert_eq!(
        sim.launches_by_controller,
        1 + refused.len() as u32,
        "the controller launched the first host and those members could not"
    );
    let c = sim.controller().expect("a controller");
    for &i in &refused {
        assert_eq!(c.host_state(&Sim::id(i)), Some(HostState::Joined), "host {i}");
    }
    job_reaches_everyone(&mut sim, n);
}

#[test]
fn a_host_nobody_can_launch_is_reported_failed_by_name() {
    let n = 40;
    let mut sc = tree_scenario(n, 23, 4);
    sc.config.invitation_expiry = Duration::from_secs(20);
    let dead = 17;
    let mut sim = start(&sc);
    sim.member_launch_fails = vec![dead];
    // The host is down: no launcher can start a client there.
    sim.launch_idle(dead);
    sim.crash(dead, plush_sim::CrashKind::Host);
    let failed = run_for(&mut sim, Duration::from_secs(120), Duration::from_millis(100), |s| {
        s.controller().and_then(|c| c.host_state(&Sim::id(dead))) == Some(HostState::Failed)
    });
    assert!(failed, "host {dead} is {:?}", sim.controller().and_then(|c| c.host_state(&Sim::id(dead))));
    assert_eq!(sim.host_failures, 1, "one host was reported failed (by name: `Report::Host`)");
    let c = sim.controller().expect("a controller");
    assert_eq!(c.host_counts()[HostState::Joined as usize], n as usize - 1, "every other host joined");
    assert!(c.stats().launches >= 2, "the controller tried the host itself");
}

#[test]
fn the_share_of_a_member_that_dies_goes_out_again_once_it_expires() {
    let n = 1500;
    let mut sc = tree_scenario(n, 24, 4);
    sc.config.invitation_expiry = Duration::from_secs(20);
    let mut sim = start(&sc);
    let ctrl = ctrl_slot(&sim);
    // The first member other than the root that the controller hands a share to dies at once.
    let mut victim = None;
    for _ in 0..2000 {
        let t = sim.now() + Duration::from_millis(5);
        sim.run_until(t, |_| false);
        victim = sim.messages.iter().find_map(|(_, from, to, m)| {
            (*from == ctrl && *to != 0 && matches!(m, Message::Control(ControlMsg::Share { .. }))).then_some(*to)
        });
        if victim.is_some() {
            break;
        }
    }
    let victim = victim.expect("a second share went out");
    sim.crash(victim, plush_sim::CrashKind::Process);
    let others = n as usize - 1;
    let joined = run_for(&mut sim, Duration::from_secs(120), Duration::from_millis(100), |s| {
        let c = s.controller().expect("a controller");
        (0..n).filter(|&i| i != victim).all(|i| c.host_state(&Sim::id(i)) == Some(HostState::Joined))
    });
    let c = sim.controller().expect("a controller");
    assert!(joined, "hosts of the dead member's share never joined: counts {:?} (victim {victim})", c.host_counts());
    assert!(c.host_counts()[HostState::Joined as usize] >= others);
    // Another member took them: the controller launched only the first host.
    assert_eq!(sim.launches_by_controller, 1, "the expired share went to another member");
    assert!(c.stats().shares >= 3, "the first share, the victim's, and the one that replaced it");
    assert!(sim.now() >= Instant::ZERO + sc.config.invitation_expiry, "they waited for the expiry");
}

#[test]
fn members_hand_the_maintenance_script_on_and_a_host_whose_script_fails_does_not_join() {
    let n = 60;
    let sc = tree_scenario(n, 25, 3);
    let mut sim = Sim::new(n, &sc);
    sim.recording = true;
    sim.add_controller();
    // The first host's script fails too: the tree is founded by the next one.
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
    assert!(sim.launches_by_controller <= 2, "members launched the others: {}", sim.launches_by_controller);
    let ctrl = ctrl_slot(&sim);
    let mut by_members = 0;
    for i in 0..n {
        let id = Sim::id(i);
        let invite = sim.messages.iter().position(|(_, _, to, m)| {
            *to == i && matches!(m, Message::Control(ControlMsg::SetPeer { host, .. }) if *host == id)
        });
        let Some(invite) = invite else { panic!("host {i} was never invited") };
        let inviter = sim.messages[invite].1;
        // The script came from the inviter, before its invitation.
        let script = sim.messages[..invite].iter().any(|(_, from, to, m)| {
            *to == i
                && *from == inviter
                && matches!(m, Message::Control(ControlMsg::Maintenance { script }) if script == "test -w /tmp")
        });
        assert!(script, "host {i} got no script from its inviter {inviter} before the invitation");
        by_members += usize::from(inviter != ctrl);
    }
    assert!(by_members >= n as usize - 3, "{by_members} hosts invited by members");
    assert_eq!(sim.violations, 0, "{:?}", sim.violation_texts);
}
