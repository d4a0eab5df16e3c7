//! The star layout (`plush sim --layout star`): it converges within the controller's fd limit
//! with sane figures, and fails past it, refusals counted.

use plush_sim::{star, CrashKind, Layout, Scenario};

fn star(nodes: u32, fds: u32, seed: u64) -> Scenario {
    Scenario { nodes, seed, layout: Layout::Star, controller_fds: fds, kill: 0.25, ..Scenario::default() }
}

#[test]
fn a_star_within_its_fd_limit_converges_with_sane_figures() {
    for seed in 1..4 {
        let r = plush_sim::run(&star(300, 300, seed));
        assert!(r.converged, "seed {seed}: {r:?}");
        assert_eq!(r.invariant_violations, 0);
        assert_eq!((r.tree.roots, r.tree.orphans, r.tree.depth, r.tree.max_children), (1, 0, 1, 300));
        assert_eq!(r.conns.refused, 0);
        assert_eq!(r.conns.max_open, 300);
        // 300 joins, 50 at a time, each at least two round trips of at least 1 ms.
        assert!(r.build.sim_ms >= 6.0 * 2.0, "{}", r.build.sim_ms);
        assert_eq!((r.broadcast.replies, r.broadcast.expected), (300, 300));
        // A reply takes a round trip (at least 1 ms) and at most two 10 ms delays plus the
        // controller's 600 frames of 10 µs (at a small heartbeat load).
        assert!(r.broadcast.avg_sim_ms >= 1.0 && r.broadcast.avg_sim_ms <= r.broadcast.max_sim_ms);
        assert!(r.broadcast.max_sim_ms <= 20.0 + 600.0 * 0.011 + 1.0, "{}", r.broadcast.max_sim_ms);
        assert_eq!(r.recovery.killed, 75);
        assert_eq!((r.recovery.roots, r.recovery.orphans, r.recovery.max_children), (1, 0, 225));
        // A reset reaches the controller within one delay: read at the first tick.
        assert_eq!(r.recovery.sim_ms, 250.0);
        assert_eq!((r.broadcast_after.replies, r.broadcast_after.expected), (225, 225));
        assert_eq!(r.recovery.root_joins + r.recovery.via_ransub + r.recovery.via_root, 0);
    }
}

#[test]
fn a_star_past_its_fd_limit_refuses_and_does_not_converge() {
    let r = plush_sim::run(&star(200, 64, 7));
    assert!(!r.converged);
    assert_eq!(r.conns.max_open, 64);
    assert_eq!(r.tree.orphans, 200 - 64, "clients past the limit never join");
    assert_eq!(r.conns.refused, u64::from(200u32 - 64) * u64::from(star::CONNECT_ATTEMPTS));
    assert_eq!(r.broadcast.replies, 64);
    assert_eq!(r.broadcast.expected, 200);
}

#[test]
fn silent_crashes_are_noticed_by_the_heartbeat_timeout() {
    let sc = Scenario { crash: CrashKind::Host, ..star(200, 1024, 3) };
    let r = plush_sim::run(&sc);
    assert!(r.converged, "{r:?}");
    let (hb, dead) = (sc.config.heartbeat.as_secs_f64() * 1e3, sc.config.dead_after.as_secs_f64() * 1e3);
    assert!(r.recovery.sim_ms >= dead - hb && r.recovery.sim_ms <= dead + 250.0, "{}", r.recovery.sim_ms);
}

#[test]
fn a_star_without_its_controller_does_not_recover() {
    let r = plush_sim::run(&Scenario { kill_root: true, ..star(100, 1024, 5) });
    assert!(!r.converged);
    assert_eq!(r.recovery.roots, 0);
    assert_eq!(r.broadcast_after.replies, 0);
}

#[test]
fn star_runs_repeat_exactly_and_refuse_what_they_do_not_model() {
    let a = plush_sim::run(&star(150, 1024, 11));
    let b = plush_sim::run(&star(150, 1024, 11));
    let c = plush_sim::run(&star(150, 1024, 12));
    assert_eq!(a.trace_hash, b.trace_hash);
    assert_eq!(a.broadcast.avg_sim_ms, b.broadcast.avg_sim_ms);
    assert_ne!(a.trace_hash, c.trace_hash);
    assert_eq!(star::unsupported(&Scenario { partition: Some(0.5), ..star(10, 10, 1) }), Some("--partition"));
    assert_eq!(star::unsupported(&Scenario { job: true, ..star(10, 10, 1) }), Some("--job"));
    assert_eq!(star::unsupported(&star(10, 10, 1)), None);
}

#[test]
fn a_star_past_what_its_controller_can_read_drops_the_rest() {
    // 10 µs per heartbeat, one per second: 90 % of the controller at 90,000 clients. With a
    // heartbeat of 10 ms the limit is 900 clients.
    let mut sc = star(1000, 1 << 20, 9);
    sc.kill = 0.0;
    sc.config.heartbeat = std::time::Duration::from_millis(10);
    let r = plush_sim::run(&sc);
    assert!(!r.converged);
    assert_eq!(r.tree.orphans, 1000 - 899, "{:?}", r.tree);
    assert_eq!(r.broadcast.replies, 899);
}
