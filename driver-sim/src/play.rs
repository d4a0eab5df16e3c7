//! Scenario playback (`plush sim`, the tree layout): build a tree, broadcast, watch RanSub,
//! strike the faults, wait for the repair, run the job, broadcast again, and report.
//!
//! [`play_sim`] drives a [`Sim`] through a [`Scenario`]'s phases by its public handles and reads
//! the figures of the [`SimReport`] from the simulator's records. The build is paced like
//! invitations ([`Scenario::max_outstanding_joins`]), or, with `job`, done by a controller's
//! invitations and launches. The victims, the partition's side, the clogged pairs and the
//! restarts' bootstrap nodes are drawn from one stream of the master seed.

use crate::scenario::{BroadcastReport, Scenario, SimReport};
use crate::sim::{id, idx, mix, Sim};
use crate::uniformity::Uniformity;
use plush_core::wire::{JobKind, RunSpec, Target};
use plush_core::{Command, HostState, Instant, NodeId};
use rand::{RngExt, SeedableRng};
use rand_pcg::Pcg64;
use std::time::Duration;

/// The process's resident memory, in bytes (0 where `/proc` cannot tell).
pub(crate) fn rss_bytes() -> u64 {
    let Ok(s) = std::fs::read_to_string("/proc/self/statm") else { return 0 };
    let pages: u64 = s.split_whitespace().nth(1).and_then(|x| x.parse().ok()).unwrap_or(0);
    pages * 4096
}

/// Play `sc`: build, broadcast, faults, repair, broadcast. See [`Scenario`].
pub fn play(sc: &Scenario) -> SimReport {
    play_sim(sc).0
}

/// [`play`], also returning the simulator as it ended, for inspection.
pub fn play_sim(sc: &Scenario) -> (SimReport, Sim) {
    let wall = std::time::Instant::now();
    let rss0 = rss_bytes();
    let n = sc.nodes.max(1);
    let mut sim = Sim::new(n, sc);
    let mut rng = Pcg64::seed_from_u64(mix(sc.seed, 2));
    let tick = Duration::from_millis(250);
    let limit = Duration::from_micros((sc.phase_limit_s * 1e6) as u64);
    let mut report =
        SimReport { nodes: n, seed: sc.seed, degree: sc.config.max_children as u32, ..SimReport::default() };

    let built = if sc.job {
        build_invited(&mut sim, n, sc.build_limit(), tick)
    } else if sc.paced_by_members {
        build_by_members(&mut sim, sc, tick)
    } else {
        build_paced(&mut sim, sc, &mut rng, tick)
    };
    report.build.sim_ms = sim.now().0 as f64 / 1000.0;
    report.build.launches_by_controller = sim.launches_by_controller;
    report.build.launches_by_members = sim.launches - sim.launches_by_controller;
    report.build.root_joins = sim.total(|s| s.root_joins);
    report.build.member_placements = sim.total(|s| s.member_placements);
    report.tree = sim.shape();
    report.memory.bytes_per_node = rss_bytes().saturating_sub(rss0) / u64::from(n);

    // Broadcast before the faults.
    report.broadcast = broadcast(&mut sim, 1, limit);

    // Steady phase: sample RanSub views, one random receiver per epoch.
    let mut uni = Uniformity::new(n as usize);
    for _ in 0..sc.steady_epochs {
        let t = sim.now() + sc.config.ransub_epoch;
        sim.run_until(t, |_| false);
        sim.sample_views(&mut uni, &mut rng);
    }
    (report.ransub.uniformity_chi2_p, report.ransub.nondesc_chi2_p) = uni.p_values();
    report.ransub.samples = uni.samples;

    if sc.job && sc.fault_during_job {
        start_job(&mut sim, sc);
        // Strike when about half the processes have finished and results are on their way.
        let mid = sim.now() + Duration::from_micros(((sc.job_min_s + sc.job_max_s) / 2.0 * 1e6) as u64);
        sim.run_until(mid, |_| false);
    }

    // Faults.
    let fault_at = sim.now();
    let mut victims: Vec<u32> = Vec::new();
    let root = sim.main_root();
    let kills = ((sc.kill * f64::from(n)).round() as u32).min(n.saturating_sub(1));
    if sc.kill_root {
        victims.extend(root);
    }
    let mut candidates: Vec<u32> = (0..n).filter(|&i| sim.alive(i) && Some(i) != root).collect();
    while victims.len() < kills as usize && !candidates.is_empty() {
        let k = rng.random_range(0..candidates.len());
        victims.push(candidates.swap_remove(k));
    }
    let joins_before = (sim.total(|s| s.root_joins), sim.total(|s| s.root_verifies));
    let moves_before = sim.total(|s| s.moves);
    let repairs_before = sim.repairs;
    let spread = Duration::from_micros((sc.kill_spread_s.max(0.0) * 1e6) as u64);
    if spread > Duration::ZERO {
        // The root first, then by id: the order in which failover picks new roots, so that
        // each new root is among the next to die (the worst order for the repair).
        let first = usize::from(sc.kill_root && root.is_some());
        victims[first..].sort_unstable();
    }
    let last = victims.len().saturating_sub(1).max(1) as u32;
    for (i, &v) in victims.iter().enumerate() {
        if i > 0 && spread > Duration::ZERO {
            sim.run_until(fault_at + spread * i as u32 / last, |_| false);
        }
        sim.crash(v, sc.crash);
    }
    report.recovery.killed = victims.len() as u32;
    report.recovery.fault_at_ms = fault_at.0 as f64 / 1000.0;
    let mut heal_at = fault_at;
    if let Some(frac) = sc.partition {
        let mut live: Vec<u32> = (0..n).filter(|&i| sim.alive(i)).collect();
        let k = ((frac * live.len() as f64).round() as usize).min(live.len());
        let mut side = Vec::with_capacity(k);
        for _ in 0..k {
            let j = rng.random_range(0..live.len());
            side.push(live.swap_remove(j));
        }
        heal_at = fault_at + Duration::from_micros((sc.heal_after_s * 1e6) as u64);
        sim.partition(&side, sc.one_way, heal_at);
        report.recovery.partitioned = side.len() as u32;
    }
    let window_end = fault_at + Duration::from_micros((sc.heal_after_s * 1e6) as u64);
    let live: Vec<u32> = (0..n).filter(|&i| sim.alive(i)).collect();
    if !live.is_empty() {
        for _ in 0..sc.clogs {
            let a = live[rng.random_range(0..live.len())];
            // Clog a tree link when there is one: that is where it hurts.
            let b = match sim.node(a).and_then(|x| x.parent()) {
                Some(p) => idx(p),
                None => live[rng.random_range(0..live.len())],
            };
            sim.clog(a, b, window_end);
        }
        for _ in 0..sc.refuse {
            let a = live[rng.random_range(0..live.len())];
            sim.refuse_connects(a, window_end);
        }
        if sc.clogs > 0 || sc.refuse > 0 {
            heal_at = heal_at.max(window_end);
        }
    }
    let mut restart_at = None;
    if let Some(after) = sc.restart_after_s {
        if !victims.is_empty() {
            let at = fault_at + Duration::from_micros((after * 1e6) as u64);
            restart_at = Some(at);
            heal_at = heal_at.max(at);
        }
    }
    let deadline = heal_at.max(fault_at) + sc.repair_limit();
    let mut recovered = false;
    let never_back = sc.job && sc.controller_crash_at_s.is_some() && sc.controller_back_after_s.is_none();
    while sim.now() < deadline {
        let target = sim.now() + tick;
        sim.run_until(target, |_| false);
        if restart_at.is_some_and(|at| sim.now() >= at) {
            restart_at = None;
            let live: Vec<u32> = (0..n).filter(|&i| sim.alive(i)).collect();
            for &v in &victims {
                let boot =
                    (0..3).filter(|_| !live.is_empty()).map(|_| id(live[rng.random_range(0..live.len())])).collect();
                sim.restart(v, boot);
            }
            report.recovery.restarted = victims.len() as u32;
        }
        if sim.now() >= heal_at && restart_at.is_none() && sim.converged() {
            recovered = true;
            break;
        }
        if never_back && sim.live_count() == 0 {
            // The controller is gone for good and its linger ran out during the repair: the
            // tree ended itself, as it must (`wait_gone` checks that it did so in time).
            recovered = true;
            break;
        }
    }
    // The tick found the tree whole; it has been whole since its shape last changed (not
    // before the heal or the restart), so the time is exact, not rounded up to the tick.
    let whole_at = if recovered { sim.shape_at.max(heal_at).max(fault_at) } else { sim.now() };
    report.recovery.sim_ms = whole_at.since(fault_at).as_micros() as f64 / 1000.0;
    // Where RanSub stood at the repair: the root's epoch, so that its first count of a later
    // epoch (one distributed over the repaired tree) can be found.
    let repaired =
        if recovered { sim.main_root().and_then(|r| Some((sim.now(), r, sim.node(r)?.ransub_epoch()))) } else { None };
    let shape = sim.shape();
    report.recovery.roots = shape.roots;
    report.recovery.orphans = shape.orphans;
    report.recovery.loops = shape.loops;
    report.recovery.max_children = shape.max_children;
    report.recovery.depth_whole = shape.depth;
    report.recovery.root_joins = sim.total(|s| s.root_joins) - joins_before.0;
    report.recovery.root_verifies = sim.total(|s| s.root_verifies) - joins_before.1;
    report.recovery.via_ransub = sim.repairs.0 - repairs_before.0;
    report.recovery.via_root = sim.repairs.1 - repairs_before.1;

    if sc.job {
        if !sc.fault_during_job {
            start_job(&mut sim, sc);
        }
        if sc.controller_crash_at_s.is_some() && sc.controller_back_after_s.is_none() {
            // Nobody collects the results: the tree must end by itself.
            report.controller = Some(wait_gone(&mut sim, sc));
            report.job = Some(job_report(&sim, n));
        } else {
            report.job = Some(wait_job(&mut sim, n, limit));
            report.controller = sc.controller_crash_at_s.map(|_| controller_report(&sim, sc, n));
        }
    }

    // Broadcast after.
    report.broadcast_after = broadcast(&mut sim, 2, limit);
    // The root's count of the repaired tree: a count of an epoch started after the repair
    // (distributed over the repaired tree), within two epochs of the repair. The first such
    // count that is every live node, else the last one in the window.
    let live = sim.live_count();
    report.ransub.live = live;
    if let Some((at, root, epoch)) = repaired {
        let until = at + sc.config.ransub_epoch * 2;
        let counted = |s: &Sim| {
            let mut window = s.counts.iter().filter(|c| c.0 >= at && c.0 <= until && c.1 == root && c.2 > epoch);
            let mut last = None;
            for c in &mut window {
                if c.3 == live {
                    return (Some(*c), true);
                }
                last = Some(*c);
            }
            (last, false)
        };
        if sim.now() < until && !counted(&sim).1 {
            sim.run_until(until, |s| counted(s).1);
        }
        if let (Some((t, _, _, population)), _) = counted(&sim) {
            report.ransub.population_repaired = population;
            report.ransub.population_repaired_ms = t.since(at).as_micros() as f64 / 1000.0;
        }
    }
    // Then let the root count the tree as it ends: an epoch started from now on (at most two).
    if let Some(root) = sim.main_root() {
        let (at, epoch) = (sim.now(), sim.node(root).map_or(0, |n| n.ransub_epoch()));
        let until = at + sc.config.ransub_epoch * 2;
        sim.run_until(until, |s| s.counts.last().is_some_and(|c| c.0 >= at && c.1 == root && c.2 > epoch));
    }

    // Let the members that the repair left too deep move up (see `plush_core::tree`,
    // "Rebalancing"): they start a RanSub epoch after the repair, so wait two, then until an
    // epoch passes with no move asked, at most six in all.
    if let Some((at, _, _)) = repaired {
        let epoch = sc.config.ransub_epoch;
        if sim.now() < at + epoch * 2 {
            sim.run_until(at + epoch * 2, |_| false);
        }
        let mut asked = sim.total(|s| s.moves_asked);
        while sim.now() < at + epoch * 6 {
            sim.run_until(sim.now() + epoch, |_| false);
            let now_asked = sim.total(|s| s.moves_asked);
            if now_asked == asked {
                break;
            }
            asked = now_asked;
        }
    }
    report.recovery.depth = sim.shape().depth;
    report.recovery.moves = sim.total(|s| s.moves) - moves_before;
    report.ransub.epochs = sim.populations.0;
    report.ransub.population_last = sim.populations.1;
    report.conns.budget = sc.config.max_links.min(u32::MAX as usize) as u32;
    report.conns.max_open = sim.max_open;
    report.conns.evictions = sim.total(|s| s.evictions);
    report.conns.refused = sim.total(|s| s.links_refused);
    report.conns.pinned_evictions = sim.pinned_closes;
    report.converged = built && recovered && sim.violations == 0;
    report.invariant_violations = sim.violations;
    report.violations = sim.violation_texts.clone();
    report.events = sim.events;
    report.frames = sim.frames;
    report.trace_hash = format!("{:016x}", sim.trace_hash());
    report.sim_end_ms = sim.now().0 as f64 / 1000.0;
    if let Some(kinds) = &sim.kinds {
        for (k, v) in kinds {
            eprintln!("{v:>12} {k}");
        }
    }
    report.wall_ms = wall.elapsed().as_millis() as u64;
    report.events_per_s = sim.events as f64 / wall.elapsed().as_secs_f64().max(1e-9);
    (report, sim)
}

/// Build: node 0 founds the tree; the others join paced like invitations. Returns whether every
/// node joined one tree.
fn build_paced(sim: &mut Sim, sc: &Scenario, rng: &mut Pcg64, tick: Duration) -> bool {
    let n = sc.nodes.max(1);
    sim.start(0, Vec::new());
    let mut next = 1u32;
    let deadline = sim.now() + sc.build_limit();
    loop {
        while next < n && (next - sim.joined_once) < sc.max_outstanding_joins as u32 {
            // Two members drawn at random, then the founder: the joiner asks a member first,
            // which places it (see `JoinMode::Leaf`), and the root only when those fail.
            let mut boot = Vec::with_capacity(3);
            for _ in 0..2 {
                let j = rng.random_range(0..next);
                if sim.nodes[j as usize].joined_once && !boot.contains(&id(j)) {
                    boot.push(id(j));
                }
            }
            if !boot.contains(&id(0)) {
                boot.push(id(0));
            }
            sim.start(next, boot);
            next += 1;
        }
        if next >= n && sim.joined_once >= n && sim.converged() {
            return true;
        }
        if sim.now() >= deadline {
            return false;
        }
        let target = sim.now() + tick;
        let all_started = next >= n;
        sim.run_until(target, |s| !all_started && s.joined_once + sc.max_outstanding_joins as u32 > next);
    }
}

/// Build as a tree launch does, without the launches' cost: node 0 founds the tree, and every
/// node that joined invites the next ones in turn, up to `config.launch_fanout` outstanding at
/// once (each frees its slot when it joins), and is their first contact, the founder second.
/// Returns whether every node joined one tree.
fn build_by_members(sim: &mut Sim, sc: &Scenario, tick: Duration) -> bool {
    let n = sc.nodes.max(1);
    let fanout = sc.config.launch_fanout.clamp(1, usize::from(u16::MAX)) as u16;
    // Per node: who invited it, and how many of its own invitations are outstanding. Inviters
    // with room wait in `ready`, oldest first.
    let mut inviter = vec![0u32; n as usize];
    let mut out = vec![0u16; n as usize];
    let mut ready = std::collections::VecDeque::new();
    sim.first_joins = Some(Vec::new());
    sim.start(0, Vec::new());
    let mut next = 1u32;
    let deadline = sim.now() + sc.build_limit();
    loop {
        for j in sim.first_joins.as_mut().map(std::mem::take).unwrap_or_default() {
            if j != 0 {
                let inv = inviter[j as usize] as usize;
                out[inv] -= 1;
                if out[inv] + 1 == fanout {
                    ready.push_back(inv as u32);
                }
            }
            ready.push_back(j);
        }
        while next < n {
            let Some(&inv) = ready.front() else { break };
            inviter[next as usize] = inv;
            out[inv as usize] += 1;
            if out[inv as usize] == fanout {
                ready.pop_front();
            }
            let boot = if inv == 0 { vec![id(0)] } else { vec![id(inv), id(0)] };
            sim.start(next, boot);
            next += 1;
        }
        if next >= n && sim.joined_once >= n && sim.converged() {
            sim.first_joins = None;
            return true;
        }
        if sim.now() >= deadline {
            sim.first_joins = None;
            return false;
        }
        let target = sim.now() + tick;
        let all_started = next >= n;
        sim.run_until(target, |s| !all_started && s.first_joins.as_ref().is_some_and(|f| !f.is_empty()));
    }
}

/// Build through the control plane: a controller (its own slot) is given every host; no client
/// runs yet, so each invitation ends in a launch, then the client joins through the root.
fn build_invited(sim: &mut Sim, n: u32, build_limit: Duration, tick: Duration) -> bool {
    sim.add_controller();
    let hosts: Vec<NodeId> = (0..n).map(id).collect();
    sim.ctrl_do(|c, now| c.add_hosts(now, &hosts));
    let deadline = sim.now() + build_limit;
    while sim.now() < deadline {
        let target = sim.now() + tick;
        sim.run_until(target, |_| false);
        let joined = sim.controller().map_or(0, |c| c.host_counts()[HostState::Joined as usize]);
        if joined as u32 >= n && sim.joined_once >= n && sim.converged() {
            return true;
        }
    }
    false
}

/// The job every node runs in `--job`.
pub const SIM_JOB: u64 = 1;

/// A command run on every host (`Target::All`) with `argv`, and nothing else asked (see
/// [`RunSpec::new`]). The `--job` job is one.
pub fn command_spec(job: u64, argv: &[&str]) -> RunSpec {
    RunSpec::new(job, JobKind::Command, Target::All, argv.iter().map(|a| (*a).to_owned()).collect())
}

fn start_job(sim: &mut Sim, sc: &Scenario) {
    sim.watch_job(SIM_JOB);
    let spec = command_spec(SIM_JOB, &["echo", "hello from plush"]);
    let _ = sim.ctrl_do(|c, now| c.run(now, spec));
    if let Some(at) = sc.controller_crash_at_s {
        let secs = |s: f64| Duration::from_secs_f64(s.max(0.0));
        sim.plan_controller_crash(sim.now() + secs(at), sc.controller_back_after_s.map(secs));
    }
}

/// Never back: run until every node is gone, or `linger` plus one RanSub epoch after the crash.
fn wait_gone(sim: &mut Sim, sc: &Scenario) -> crate::scenario::ControllerReport {
    if let Some(at) = sim.ctrl_crash.crash_at {
        sim.run_until(at, |_| false);
    }
    let crashed = sim.ctrl_crash.crashed_at.unwrap_or(sim.now());
    let bound = crashed + sc.config.linger + sc.config.ransub_epoch;
    let mut gone_at = None;
    while sim.now() < bound && gone_at.is_none() {
        let target = (sim.now() + Duration::from_millis(250)).min(bound);
        sim.run_until(target, |s| s.live_count() == 0);
        if sim.live_count() == 0 {
            gone_at = Some(sim.now());
        }
    }
    let mut r = controller_report(sim, sc, sc.nodes.max(1));
    r.gone_after_ms = gone_at.map(|t| t.since(crashed).as_micros() as f64 / 1000.0);
    r.left = sim.live_count();
    r
}

/// The controller's crash and return, from the simulator's record.
fn controller_report(sim: &Sim, sc: &Scenario, n: u32) -> crate::scenario::ControllerReport {
    let c = &sim.ctrl_crash;
    let ms = |t: Instant| t.0 as f64 / 1000.0;
    let j = job_report(sim, n);
    crate::scenario::ControllerReport {
        crashed_at_ms: c.crashed_at.map_or(0.0, ms),
        attached_at_ms: c.attached_at.map(ms),
        results_before: c.shown_by.iter().filter(|&&b| b & 1 != 0).count() as u32,
        results_after: c.shown_by.iter().filter(|&&b| b & 2 != 0).count() as u32,
        shown_twice: j.duplicates,
        missing: j.lost,
        linger_ms: sc.config.linger.as_micros() as f64 / 1000.0,
        never_back: sc.controller_back_after_s.is_none(),
        gone_after_ms: None,
        left: 0,
    }
}

/// Wait until every live node's result reached the controller (or `limit`), and account.
fn wait_job(sim: &mut Sim, n: u32, limit: Duration) -> crate::scenario::JobReport {
    let deadline = sim.now() + limit;
    // Every live node's result, and every dead node's result that a live node received (it
    // is in the tree, on its way up: a repair may hold it a while, and it counts as lost in
    // `job_report` only if it never arrives).
    let all_in = |s: &Sim| {
        (0..n).all(|i| {
            let held_alive = || s.job.receivers.get(i as usize).is_some_and(|v| v.iter().any(|&x| x < n && s.alive(x)));
            s.job.reported.get(i as usize).is_some_and(|&r| r > 0) || (!s.alive(i) && !held_alive())
        })
    };
    // A controller crash planned or under way (issue 19): wait for the new controller too, and
    // until it has been attached for a few seconds, so that what the tree re-sends it arrives
    // (and would be counted if shown twice).
    let c = &sim.ctrl_crash;
    let resumed = |s: &Sim| {
        let c = &s.ctrl_crash;
        c.crash_at.is_none()
            && c.back_at.is_none()
            && (c.crashed_at.is_none() || c.attached_at.is_some_and(|t| s.now() >= t + Duration::from_secs(3)))
    };
    let planned = c.crash_at.is_some() || c.crashed_at.is_some();
    while sim.now() < deadline && !(all_in(sim) && (!planned || resumed(sim))) {
        let target = (sim.now() + Duration::from_millis(50)).min(deadline);
        sim.run_until(target, |_| false);
    }
    job_report(sim, n)
}

/// The job's figures, from the simulator's record.
pub fn job_report(sim: &Sim, n: u32) -> crate::scenario::JobReport {
    let j = &sim.job;
    let mut r = crate::scenario::JobReport::default();
    for i in 0..n {
        let reported = j.reported.get(i as usize).copied().unwrap_or(0);
        if sim.alive(i) {
            r.expected += 1;
        }
        if reported > 0 {
            r.results += 1;
        }
        r.duplicates += u32::from(reported.saturating_sub(1));
        if reported == 0 {
            let held_alive = j.receivers.get(i as usize).is_some_and(|v| v.iter().any(|&x| x < n && sim.alive(x)));
            // A host whose process restarted owes nothing unless its result survived it: its
            // job died with the process, and it never runs a job twice; when it rejoins after
            // the tree forgot the job, nothing reaches it, and the real controller names it
            // lost (`plush_mio::Cluster`'s lost grace).
            if (sim.alive(i) && !sim.restarted(i)) || held_alive {
                r.lost += 1;
                if sim.alive(i) && r.missing.len() < 10 {
                    r.missing.push(i);
                }
            }
        }
    }
    if std::env::var_os("PLUSH_SIM_WHY").is_some() {
        // Debugging (`PLUSH_SIM_WHY=1`): which nodes still hold the first missing results.
        for &m in r.missing.iter().take(3) {
            let holders: Vec<String> = (0..n)
                .filter_map(|x| {
                    let node = sim.node(x)?;
                    let (held, unsent) = node.holds_result(j.id, &id(m));
                    (held || unsent)
                        .then(|| format!("{x} (unsent {unsent}, parent {:?}, root {})", node.parent(), node.is_root()))
                })
                .collect();
            eprintln!("missing {m}: held by {holders:?}");
        }
    }
    r.merged_messages_at_controller = j.ctrl_messages;
    r.distinct_outputs = j.outputs.len() as u32;
    if let (Some(a), Some(b)) = (j.started, j.last_result) {
        r.sim_ms = b.since(a).as_micros() as f64 / 1000.0;
    }
    r.hosts_failed = sim.host_failures;
    r.root_changes = sim.controller().map_or(0, |c| c.stats().root_changes);
    r.unlisted = sim.controller().map_or(0, |c| c.stats().unlisted);
    r
}

/// Broadcast from the main root and wait for every live node's reply (or `limit`).
fn broadcast(sim: &mut Sim, bid: u64, limit: Duration) -> BroadcastReport {
    let expected = sim.live_count();
    let mut r = BroadcastReport { expected, ..BroadcastReport::default() };
    let Some(root) = sim.main_root() else { return r };
    let start = sim.now();
    let first = sim.replies.len();
    if !sim.command(root, Command::Broadcast { id: bid }) {
        return r;
    }
    let mut seen = vec![false; sim.len() as usize];
    let mut count = 0u32;
    let mut scanned = first;
    let deadline = start + limit.min(Duration::from_secs(60));
    while sim.now() < deadline && count < expected {
        let target = (sim.now() + Duration::from_millis(50)).min(deadline);
        sim.run_until(target, |s| s.replies.len() - first >= expected as usize);
        let (mut sum, mut max) = (r.avg_sim_ms * f64::from(count), r.max_sim_ms);
        for &(b, node, at) in &sim.replies[scanned..] {
            if b == bid && (node as usize) < seen.len() && !seen[node as usize] && sim.alive(node) {
                seen[node as usize] = true;
                count += 1;
                let ms = at.since(start).as_micros() as f64 / 1000.0;
                sum += ms;
                max = max.max(ms);
            }
        }
        scanned = sim.replies.len();
        r.avg_sim_ms = if count > 0 { sum / f64::from(count) } else { 0.0 };
        r.max_sim_ms = max;
    }
    r.replies = count;
    r.missing = (0..sim.len()).filter(|&i| sim.alive(i) && !seen[i as usize]).take(10).collect();
    sim.replies.truncate(first);
    r
}
