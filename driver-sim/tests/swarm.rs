//! Determinism and the swarm: scenarios drawn from every knob of `plush sim` at once (see
//! `plush_sim::swarm`: kills up to 45 %, the root or not, process and silent host crashes,
//! one-way and two-way partitions, clogs, refusals, restarts, link budgets from 14, latency up
//! to 5..100 ms, degrees 2 to 12, jobs with 1 to 9 outputs), each checked by the swarm's oracle:
//! converged within its bounds, no safety violation, both broadcasts reach every live node, the
//! root's RanSub count of the repaired tree is exactly the live nodes, no link over budget, no
//! tree link evicted, every survivor's job result at the controller exactly once.
//!
//! 300 scenarios of 20 to 600 nodes (small, so that the test stays short, while every knob is
//! drawn). `PLUSH_SWARM_SEEDS=N` changes the number, `PLUSH_SWARM_FIRST=S` the first seed. A
//! failing seed prints the `plush sim` command that reproduces it; `plush sim --swarm N` runs
//! the same swarm at larger sizes.

use plush_sim::swarm::{self, Sizes};
use plush_sim::{run, CrashKind, Scenario};

/// A failed scenario: its seed, its problems and the command that reproduces it.
fn failure(o: &swarm::Outcome) -> String {
    format!("seed {}: {}\n  reproduce: {}", o.seed, o.verdict.problems.join("; "), o.command)
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[test]
fn the_same_seed_gives_the_same_trace_and_another_seed_another() {
    let sc = Scenario { nodes: 800, seed: 42, kill: 0.25, kill_root: true, ..Scenario::default() };
    let a = run(&sc);
    let b = run(&sc);
    assert!(a.converged, "{a:?}");
    assert_eq!(a.trace_hash, b.trace_hash);
    assert_eq!(a.events, b.events);
    let c = run(&Scenario { seed: 43, ..sc });
    assert_ne!(a.trace_hash, c.trace_hash);
}

#[test]
fn swarm_of_scenarios_drawn_from_every_knob_passes_the_oracle() {
    let first = env("PLUSH_SWARM_FIRST", 1);
    let count = env("PLUSH_SWARM_SEEDS", 300);
    let jobs = std::thread::available_parallelism().map_or(1, |n| n.get()).min(4);
    let started = std::time::Instant::now();
    let mut failures = Vec::new();
    // What the swarm exercised: nodes killed (silently by host crashes), partitioned (one way),
    // restarted, clogged and refused runs, runs where a small budget bit, low and high degrees,
    // wide-area runs, jobs through faults and their distinct outputs.
    let (mut killed, mut host_killed, mut partitioned, mut one_way, mut restarted) = (0u64, 0u64, 0u64, 0u64, 0u64);
    let (mut clogged, mut refusing, mut budget_bit, mut degree2, mut degree12, mut wide) = (0u64, 0, 0, 0, 0, 0);
    let (mut jobs_faulted, mut max_outputs, mut root_killed) = (0u64, 0u32, 0u64);
    // Controllers killed (issue 19): a new one resumed and showed results, or none came back.
    let (mut ctrl_resumed, mut ctrl_never) = (0u64, 0u64);
    let summary = swarm::run(count, first, jobs, Sizes { min: 20, max: 600 }, |o| {
        let (sc, r) = (&o.scenario, &o.report);
        if !o.verdict.ok() {
            failures.push(failure(o));
        }
        killed += u64::from(r.recovery.killed);
        if sc.crash == CrashKind::Host {
            host_killed += u64::from(r.recovery.killed);
        }
        root_killed += u64::from(sc.kill_root);
        partitioned += u64::from(r.recovery.partitioned);
        one_way += u64::from(sc.one_way && r.recovery.partitioned > 0);
        restarted += u64::from(r.recovery.restarted);
        clogged += u64::from(sc.clogs > 0);
        refusing += u64::from(sc.refuse > 0);
        budget_bit += u64::from(sc.config.max_links < 64 && r.conns.evictions + r.conns.refused > 0);
        degree2 += u64::from(sc.config.max_children == 2);
        degree12 += u64::from(sc.config.max_children == 12);
        wide += u64::from(sc.latency_max_ms >= 100.0);
        if let Some(j) = &r.job {
            jobs_faulted += u64::from(sc.fault_during_job && r.recovery.killed + r.recovery.partitioned > 0);
            max_outputs = max_outputs.max(j.distinct_outputs);
        }
        if let Some(c) = &r.controller {
            ctrl_resumed += u64::from(!c.never_back && c.attached_at_ms.is_some());
            ctrl_never += u64::from(c.never_back && c.gone_after_ms.is_some());
        }
    });
    assert!(failures.is_empty(), "{} of {count} scenarios failed:\n{}", failures.len(), failures.join("\n"));
    assert_eq!(summary.runs, count);
    assert_eq!(summary.failures, 0, "{summary:?}");
    eprintln!(
        "swarm: {count} scenarios, {killed} killed ({host_killed} silently), {partitioned} partitioned, {restarted} \
         restarted; {clogged} clogged, {refusing} refusing, {budget_bit} where the budget bit, {degree2} of degree 2, \
         {wide} wide-area, {jobs_faulted} jobs through faults; {:.1} s on {jobs} threads",
        started.elapsed().as_secs_f64()
    );
    if count >= 100 {
        assert!(killed > 0 && host_killed > 0 && root_killed > 0, "the swarm killed nodes, silently too, and roots");
        assert!(partitioned > 0 && one_way > 0, "the swarm partitioned, one way too");
        assert!(restarted > 0 && clogged > 0 && refusing > 0, "the swarm restarted, clogged and refused");
        assert!(budget_bit > 0, "the swarm ran nodes into small link budgets");
        assert!(degree2 > 0 && degree12 > 0 && wide > 0, "the swarm drew degrees 2 and 12 and wide-area latency");
        assert!(jobs_faulted > 0 && max_outputs > 1, "the swarm ran jobs through faults, with several outputs");
        assert!(
            ctrl_resumed > 0 && ctrl_never > 0,
            "the swarm killed controllers: {ctrl_resumed} resumed, {ctrl_never} never back"
        );
    }
}

/// Swarm seeds that once closed a loop (`plush sim --swarm` draws them from the default sizes):
/// 1510, a detached top's accept arriving after it had vouched for a joiner named in that
/// accept's path (see "Why no loop can form" in `plush_core::tree`); 1665, the same race,
/// which the fleet had since the direct repairs. Both must pass the oracle.
#[test]
fn the_swarm_seeds_that_closed_loops_stay_loop_free() {
    for seed in [1510, 1665] {
        let mut problems = Vec::new();
        let summary = swarm::run(1, seed, 1, Sizes::default(), |o| {
            if !o.verdict.ok() {
                problems.push(failure(o));
            }
        });
        assert_eq!(summary.runs, 1);
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }
}

/// The swarm's draw covers its whole space, and its command lines name every knob drawn.
#[test]
fn the_swarm_draws_every_knob_in_its_range() {
    let mut seen_kill = (f64::MAX, 0.0f64);
    let (mut degrees, mut budgets, mut outputs) = ([false; 13], (usize::MAX, 0usize), [false; 10]);
    let mut partitions = [false; 9];
    let (mut crashes, mut never) = (0u32, 0u32);
    for seed in 0..2000 {
        let sc = swarm::draw(seed, Sizes::default());
        assert!((50..=2000).contains(&sc.nodes));
        assert_eq!(sc.seed, seed);
        assert!((0.0..=0.45).contains(&sc.kill));
        if sc.kill > 0.0 {
            seen_kill = (seen_kill.0.min(sc.kill), seen_kill.1.max(sc.kill));
        }
        degrees[sc.config.max_children] = true;
        if sc.config.max_links != Scenario::default().config.max_links {
            budgets = (budgets.0.min(sc.config.max_links), budgets.1.max(sc.config.max_links));
        }
        if let Some(p) = sc.partition {
            partitions[(p * 10.0).round() as usize] = true;
        }
        if sc.job {
            outputs[sc.job_outputs as usize] = true;
        }
        assert!(sc.latency_max_ms <= 100.0 && sc.latency_min_ms <= sc.latency_max_ms);
        let cmd = swarm::command(&sc);
        if let Some(at) = sc.controller_crash_at_s {
            assert!(sc.job && (0.0..=3.0).contains(&at));
            crashes += 1;
            match sc.controller_back_after_s {
                // The tree waits for the new controller.
                Some(b) => assert!(sc.config.linger.as_secs_f64() >= b + 60.0, "{cmd}"),
                None => {
                    never += 1;
                    assert!(cmd.contains("--controller-never-back") && cmd.contains("--linger"), "{cmd}");
                }
            }
        }
        assert!(cmd.starts_with(&format!("plush sim --nodes {} --seed {seed}", sc.nodes)), "{cmd}");
    }
    assert_eq!(seen_kill, (0.02, 0.45));
    assert!(degrees[2..=12].iter().all(|&d| d), "degrees 2 to 12: {degrees:?}");
    assert_eq!(budgets, (14, 64));
    assert!(partitions[1..=8].iter().all(|&p| p), "partitions 0.1 to 0.8: {partitions:?}");
    assert!(outputs[1..=9].iter().all(|&o| o), "1 to 9 outputs: {outputs:?}");
    assert!(crashes > 100 && never > 10 && never < crashes, "controller crashes drawn: {crashes}, never back {never}");
}
