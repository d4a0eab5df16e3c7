//! The swarm: many scenarios drawn from the whole space of `plush sim`'s knobs, run in parallel,
//! each checked by one oracle. `plush sim --swarm N` and the swarm test both use it.
//!
//! **The space.** Every knob takes part, in combination: kill fractions 0 to 0.45, the root or
//! not; process and silent host crashes; one-way and two-way partitions of 0.1 to 0.8; clogs,
//! refusals, restarts; link budgets from 14; latency up to `5..100` ms; degrees 2 to 12; jobs
//! through a controller with 1 to 9 distinct outputs, most of them struck by the faults, and a
//! third of those with their controller killed (issue 19): a new one resumes 0 to 30 s later from
//! what its journal holds, or, in a quarter of them (without partitions or restarts), none ever
//! comes back and the tree must end by itself. Run `i`
//! of a swarm with seed base `S` draws its scenario from seed `S + i`, which is also the
//! scenario's master seed, so a run is named by its seed and repeated by its command line
//! ([`command`]).
//!
//! **The oracle** ([`check`]): every phase converged within its bound ([`Scenario::build_limit`],
//! [`Scenario::repair_limit`]) with no invariant violation; both broadcasts reached every live
//! node; no node held more links than its budget, and no tree link was closed to make room; the
//! root's RanSub count of the repaired tree (its first epoch started after the repair, within
//! two epochs of it) is exactly the live nodes; the job's results reached the controller
//! exactly once for every survivor, across a controller crash too (nothing shown twice, nothing
//! missing); a tree whose controller never came back was gone within its linger and one RanSub
//! epoch of the crash (then the repaired tree's RanSub count and the job's survivors are not
//! checked: there are none); and the faults asked for happened.

use crate::scenario::{CrashKind, Scenario, SimReport};
use rand::{RngExt, SeedableRng};
use rand_pcg::Pcg64;
use serde::Serialize;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Sizes drawn for a swarm's scenarios: nodes from `min` to `max`, inclusive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sizes {
    /// Fewest nodes.
    pub min: u32,
    /// Most nodes.
    pub max: u32,
}

impl Default for Sizes {
    fn default() -> Self {
        Sizes { min: 50, max: 2000 }
    }
}

/// The scenario of swarm seed `seed`, with nodes drawn from `sizes`.
pub fn draw(seed: u64, sizes: Sizes) -> Scenario {
    let mut r = Pcg64::seed_from_u64(seed ^ 0x5eed_5eed_0018);
    let (lo, hi) = (sizes.min.max(2), sizes.max.max(sizes.min.max(2)));
    let mut sc = Scenario { nodes: r.random_range(lo..=hi), seed, ..Scenario::default() };
    sc.config.max_children = r.random_range(2..=12usize);
    if r.random_bool(0.3) {
        // A wide-area testbed.
        sc.latency_min_ms = 5.0;
        sc.latency_max_ms = 100.0;
    } else {
        sc.latency_min_ms = [0.5, 1.0, 2.0, 5.0, 10.0][r.random_range(0..5usize)];
        sc.latency_max_ms = sc.latency_min_ms + f64::from(r.random_range(1..=90u32));
    }
    sc.kill = if r.random_bool(0.15) { 0.0 } else { f64::from(r.random_range(2..=45u32)) / 100.0 };
    sc.kill_root = r.random_bool(0.4);
    sc.crash = if r.random_bool(0.5) { CrashKind::Host } else { CrashKind::Process };
    if r.random_bool(0.4) {
        sc.partition = Some(f64::from(r.random_range(1..=8u32)) / 10.0);
        sc.one_way = r.random_bool(0.4);
    }
    sc.heal_after_s = f64::from(r.random_range(5..=40u32));
    if r.random_bool(0.3) {
        sc.clogs = r.random_range(1..=20);
    }
    if r.random_bool(0.2) {
        sc.refuse = r.random_range(1..=10);
    }
    if (sc.kill > 0.0 || sc.kill_root) && r.random_bool(0.3) {
        sc.restart_after_s = Some(f64::from(r.random_range(2..=20u32)));
    }
    if r.random_bool(0.4) {
        sc.config.max_links = r.random_range(14..=64usize);
    }
    if r.random_bool(0.5) {
        sc.job = true;
        sc.fault_during_job = r.random_bool(0.7);
        sc.job_outputs = r.random_range(1..=9);
        // Drawn last, so that every scenario drawn before this knob existed keeps its others.
        if r.random_bool(0.3) {
            sc.controller_crash_at_s = Some(f64::from(r.random_range(0..=30u32)) / 10.0);
            let never = r.random_bool(0.25) && sc.partition.is_none() && sc.restart_after_s.is_none();
            if never {
                sc.config.linger = core::time::Duration::from_secs(r.random_range(20..=60u64));
            } else {
                let back = r.random_range(0..=30u32);
                sc.controller_back_after_s = Some(f64::from(back));
                // Long enough for the new controller to find the tree after any repair.
                sc.config.linger = core::time::Duration::from_secs(u64::from(back) + r.random_range(60..=180u64));
            }
        }
    }
    // Knobs added later draw from their own stream, so that every scenario drawn before them
    // keeps all its others.
    let mut later = Pcg64::seed_from_u64(seed ^ 0x5eed_5eed_0026);
    if (sc.kill > 0.0 || sc.kill_root) && later.random_bool(0.3) {
        sc.kill_spread_s = f64::from(later.random_range(1..=40u32)) / 10.0;
    }
    sc
}

/// The `plush sim` command line that runs `sc` (every knob [`draw`] sets that differs from
/// `plush sim`'s default).
pub fn command(sc: &Scenario) -> String {
    let d = Scenario::default();
    let mut cmd = format!("plush sim --nodes {} --seed {}", sc.nodes, sc.seed);
    // Writing to a String cannot fail.
    if sc.config.max_children != d.config.max_children {
        let _ = write!(cmd, " --degree {}", sc.config.max_children);
    }
    if (sc.latency_min_ms, sc.latency_max_ms) != (d.latency_min_ms, d.latency_max_ms) {
        let _ = write!(cmd, " --latency {}..{}", sc.latency_min_ms, sc.latency_max_ms);
    }
    if sc.kill != 0.0 {
        let _ = write!(cmd, " --kill {}", sc.kill);
    }
    if sc.kill_root {
        cmd.push_str(" --kill-root");
    }
    if sc.kill_spread_s != 0.0 {
        let _ = write!(cmd, " --kill-spread {}", sc.kill_spread_s);
    }
    if sc.crash == CrashKind::Host {
        cmd.push_str(" --crash host");
    }
    if let Some(p) = sc.partition {
        let _ = write!(cmd, " --partition {p}");
        if sc.one_way {
            cmd.push_str(" --one-way");
        }
    }
    if sc.clogs != 0 {
        let _ = write!(cmd, " --clogs {}", sc.clogs);
    }
    if sc.refuse != 0 {
        let _ = write!(cmd, " --refuse {}", sc.refuse);
    }
    if let Some(t) = sc.restart_after_s {
        let _ = write!(cmd, " --restart-after {t}");
    }
    if sc.config.max_links != d.config.max_links {
        let _ = write!(cmd, " --fd-budget {}", sc.config.max_links);
    }
    if sc.heal_after_s != d.heal_after_s {
        let _ = write!(cmd, " --heal-after {}", sc.heal_after_s);
    }
    if sc.job {
        cmd.push_str(" --job");
        if sc.fault_during_job {
            cmd.push_str(" --fault-during-job");
        }
        if sc.job_outputs != 1 {
            let _ = write!(cmd, " --job-outputs {}", sc.job_outputs);
        }
        if let Some(t) = sc.controller_crash_at_s {
            let _ = write!(cmd, " --controller-crash-at {t}");
            match sc.controller_back_after_s {
                Some(b) => {
                    let _ = write!(cmd, " --controller-back-after {b}");
                }
                None => cmd.push_str(" --controller-never-back"),
            }
        }
    }
    if sc.config.linger != d.config.linger {
        let _ = write!(cmd, " --linger {}", sc.config.linger.as_secs_f64());
    }
    cmd
}

/// What one run broke, by oracle.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Some phase did not converge in its bound, or a broadcast missed a live node.
    pub not_converged: bool,
    /// The root's count of the repaired tree was not the live nodes.
    pub ransub_miscount: bool,
    /// Job results lost (nodes).
    pub lost: u32,
    /// Job results reported twice (nodes).
    pub duplicates: u32,
    /// Safety violations.
    pub invariant_violations: u64,
    /// The controller crashed and a result was shown twice or went missing, or, none coming
    /// back, the tree outlived its linger and one epoch.
    pub controller_failed: bool,
    /// Every problem, in words.
    pub problems: Vec<String>,
}

impl Verdict {
    /// Whether the run passed every oracle.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Check one run of `sc` against the oracle (see the module docs).
pub fn check(sc: &Scenario, r: &SimReport) -> Verdict {
    let mut v = Verdict::default();
    let p = &mut v.problems;
    if !r.converged {
        v.not_converged = true;
        p.push(format!(
            "did not converge: build {:.1} s (bound {:.1} s), tree {:?}; repair {:.1} s: roots {} orphans {} loops {}",
            r.build.sim_ms / 1e3,
            sc.build_limit().as_secs_f64(),
            r.tree,
            r.recovery.sim_ms / 1e3,
            r.recovery.roots,
            r.recovery.orphans,
            r.recovery.loops
        ));
    }
    if r.invariant_violations > 0 {
        v.invariant_violations = r.invariant_violations;
        p.push(format!("{} violations: {:?}", r.invariant_violations, r.violations));
    }
    if r.broadcast.replies != r.broadcast.expected {
        v.not_converged = true;
        p.push(format!("broadcast before: {}/{}", r.broadcast.replies, r.broadcast.expected));
    }
    if r.broadcast_after.replies != r.broadcast_after.expected {
        v.not_converged = true;
        p.push(format!("broadcast after: {}/{}", r.broadcast_after.replies, r.broadcast_after.expected));
    }
    let never_back = r.controller.as_ref().is_some_and(|c| c.never_back);
    if r.converged && r.ransub.population_repaired != r.ransub.live && !never_back {
        v.ransub_miscount = true;
        p.push(format!(
            "RanSub counted {} of {} live nodes after the repair ({:.0} ms after it)",
            r.ransub.population_repaired, r.ransub.live, r.ransub.population_repaired_ms
        ));
    }
    if r.conns.max_open > r.conns.budget {
        p.push(format!("a node held {} links, over its budget of {}", r.conns.max_open, r.conns.budget));
    }
    if r.conns.pinned_evictions > 0 {
        p.push(format!("{} tree links closed while pinned", r.conns.pinned_evictions));
    }
    if (sc.kill * f64::from(sc.nodes)).round() >= 1.0 && r.recovery.killed == 0 {
        p.push("no node was killed".into());
    }
    if sc.partition.is_some() && sc.nodes >= 20 && r.recovery.partitioned == 0 {
        p.push("no node was partitioned".into());
    }
    match (&r.job, sc.job) {
        (Some(j), _) => {
            v.lost = j.lost;
            v.duplicates = j.duplicates;
            if j.lost > 0 || j.duplicates > 0 {
                p.push(format!("job: {} lost, {} duplicates (missing {:?})", j.lost, j.duplicates, j.missing));
            }
            if (j.expected == 0 || j.results == 0) && !never_back {
                p.push(format!("the job ran nowhere: {j:?}"));
            }
        }
        (None, true) => p.push("the job report is missing".into()),
        (None, false) => {}
    }
    match (&r.controller, sc.controller_crash_at_s.filter(|_| sc.job)) {
        (Some(c), _) if !c.ok() => {
            v.controller_failed = true;
            p.push(format!(
                "controller crash: {} shown twice, {} missing, {} nodes left after the linger and an epoch",
                c.shown_twice, c.missing, c.left
            ));
        }
        (Some(c), _) if c.crashed_at_ms == 0.0 => p.push("the controller was not killed".into()),
        (None, Some(_)) => p.push("the controller report is missing".into()),
        _ => {}
    }
    v
}

/// The swarm's summary: runs, runs that failed, and each oracle's count.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Summary {
    /// Scenarios run.
    pub runs: u64,
    /// Runs that broke any oracle.
    pub failures: u64,
    /// Runs that did not converge in their bounds (or whose broadcast missed a live node).
    pub not_converged: u64,
    /// Runs whose root did not count every live node after the repair.
    pub ransub_miscounts: u64,
    /// Job results lost, over all runs (nodes).
    pub lost: u64,
    /// Job results reported twice, over all runs (nodes).
    pub duplicates: u64,
    /// Safety violations, over all runs.
    pub invariant_violations: u64,
    /// Runs whose controller was killed (drawn in about 15% of them).
    pub controller_crashes: u64,
    /// Of those, runs that showed a result twice, missed one, or whose tree outlived its linger.
    pub controller_failures: u64,
}

impl Summary {
    fn add(&mut self, v: &Verdict) {
        self.runs += 1;
        self.failures += u64::from(!v.ok());
        self.not_converged += u64::from(v.not_converged);
        self.ransub_miscounts += u64::from(v.ransub_miscount);
        self.lost += u64::from(v.lost);
        self.duplicates += u64::from(v.duplicates);
        self.invariant_violations += v.invariant_violations;
        self.controller_failures += u64::from(v.controller_failed);
    }
}

/// One finished run, as the swarm hands it to its caller.
#[derive(Debug)]
pub struct Outcome {
    /// The run's seed (and scenario seed).
    pub seed: u64,
    /// Its scenario.
    pub scenario: Scenario,
    /// The command line that repeats it.
    pub command: String,
    /// What the oracle found.
    pub verdict: Verdict,
    /// The full report.
    pub report: SimReport,
}

/// Run `runs` scenarios, seeds `seed_base..seed_base + runs`, on `jobs` threads (at least one),
/// calling `each` with every outcome as it finishes (from one thread at a time, in the order
/// runs finish). Returns the summary.
pub fn run(runs: u64, seed_base: u64, jobs: usize, sizes: Sizes, each: impl FnMut(&Outcome) + Send) -> Summary {
    let next = AtomicU64::new(0);
    let shared = Mutex::new((Summary::default(), each));
    std::thread::scope(|s| {
        for _ in 0..jobs.max(1) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= runs {
                    return;
                }
                let seed = seed_base.wrapping_add(i);
                let scenario = draw(seed, sizes);
                let report = crate::run(&scenario);
                let verdict = check(&scenario, &report);
                let outcome = Outcome { seed, command: command(&scenario), scenario, verdict, report };
                // A panic in `each` on another thread poisons the lock; the summary is still whole.
                let mut g = shared.lock().unwrap_or_else(|e| e.into_inner());
                g.0.add(&outcome.verdict);
                g.0.controller_crashes += u64::from(outcome.report.controller.is_some());
                (g.1)(&outcome);
            });
        }
    });
    shared.into_inner().unwrap_or_else(|e| e.into_inner()).0
}
