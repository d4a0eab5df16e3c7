//! Repairs after a process crash, on LAN-like links (issue 20's side-by-side with real clients):
//! no survivor waits out a wave of direct joins (`repair_timeout`, 500 ms) for an answer that
//! cannot come. Each case is a run whose repair did wait a wave before its fix; the runs are
//! deterministic, so these are simulated times, not the machine's.

use plush_sim::{run, Scenario, SimReport};

/// A quarter of `nodes` and the root killed (process crashes), links of `lat` ms one way, two
/// RanSub epochs before the crash (as the netem harness runs it).
fn crash(nodes: u32, seed: u64, lat: (f64, f64)) -> SimReport {
    crash_lossy(nodes, seed, lat, 0.0)
}

#[test]
fn a_candidate_that_crashed_with_the_parent_costs_no_wave() {
    // An orphan hears of its parent's crash first and asks the root (its nearest ancestor left),
    // whose reset is still on its way: the join goes out on a link that then closes. Without a
    // `Closing` frame before it, that close is a crash, an answer at once. (Waiting for every
    // closed candidate made each of these repairs wait the wave out: 540 to 573 ms.)
    for seed in 1..=6 {
        let r = crash(30, seed, (6.0, 14.0));
        assert!(
            r.recovery.sim_ms < 500.0,
            "seed {seed}: whole again after {} ms: a survivor waited out a wave",
            r.recovery.sim_ms
        );
    }
}

#[test]
fn a_refusal_from_a_member_a_candidate_passed_the_join_to_answers_for_that_candidate() {
    // A candidate too deep to place a leaf passes its join up to its parent, which is still
    // repairing and refuses: the refusal comes from a member the orphan never asked, and the
    // candidate itself never answers. (Waiting for it took 501 ms; the others recovered in 2.)
    let r = crash(100, 2, (0.05, 0.2));
    assert!(r.recovery.sim_ms < 500.0, "whole again after {} ms: a survivor waited out a wave", r.recovery.sim_ms);
}

/// [`crash`] with `loss` (a fraction of frames lost, each sent again a retransmission timeout
/// later).
fn crash_lossy(nodes: u32, seed: u64, lat: (f64, f64), loss: f64) -> SimReport {
    let r = run(&Scenario {
        nodes,
        seed,
        kill: 0.25,
        kill_root: true,
        latency_min_ms: lat.0,
        latency_max_ms: lat.1,
        steady_epochs: 2,
        loss,
        ..Scenario::default()
    });
    assert!(r.converged && r.invariant_violations == 0, "seed {seed}, loss {loss}: {:?}", r.violations);
    r
}

#[test]
fn a_lost_frame_delays_a_repair_by_a_retransmission_timeout() {
    // With loss, some repairs meet a lost frame and finish a retransmission timeout (200 ms)
    // later than the same run without it; none fails for it.
    let mut slower = 0;
    for seed in 1..=5 {
        let clean = crash(100, seed, (2.0, 14.0)).recovery.sim_ms;
        let lossy = crash_lossy(100, seed, (2.0, 14.0), 0.02).recovery.sim_ms;
        if lossy >= clean + 150.0 {
            slower += 1;
        }
    }
    assert!(slower >= 1, "no repair of five met a lost frame at 2 % loss");
}

#[test]
fn a_crash_reaches_its_peers_after_the_reset_latency_when_one_is_given() {
    // Frames at LAN speed; the resets of the crash take 300 ms to reach anyone, so nothing can
    // be repaired before then. Without the field they take a frame's latency.
    let sc = |reset: Option<(f64, f64)>| Scenario {
        nodes: 100,
        seed: 4,
        kill: 0.25,
        kill_root: true,
        latency_min_ms: 0.5,
        latency_max_ms: 2.0,
        steady_epochs: 2,
        reset_latency_ms: reset,
        ..Scenario::default()
    };
    let quick = run(&sc(None));
    let slow = run(&sc(Some((300.0, 300.0))));
    for r in [&quick, &slow] {
        assert!(r.converged && r.invariant_violations == 0, "{:?}", r.violations);
    }
    assert!(quick.recovery.sim_ms < 300.0, "without a reset latency: {} ms", quick.recovery.sim_ms);
    assert!(slow.recovery.sim_ms >= 300.0, "resets 300 ms late, whole again after {} ms", slow.recovery.sim_ms);
}
