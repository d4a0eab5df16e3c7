//! Quick manual run without the CLI:
//! `cargo run --release -p plush-sim --example quick -- NODES SEED KILL [root] [host] [part]`.
use plush_sim::{CrashKind, Scenario};
fn main() {
    let a: Vec<String> = std::env::args().collect();
    let host = a.iter().any(|x| x == "host");
    let mut sc = Scenario {
        nodes: a.get(1).and_then(|x| x.parse().ok()).unwrap_or(1000),
        seed: a.get(2).and_then(|x| x.parse().ok()).unwrap_or(1),
        kill: a.get(3).and_then(|x| x.parse().ok()).unwrap_or(0.0),
        kill_root: a.iter().any(|x| x == "root"),
        crash: if host { CrashKind::Host } else { CrashKind::Process },
        phase_limit_s: if host { 60.0 } else { 300.0 },
        partition: a.iter().any(|x| x == "part").then_some(0.5),
        ..Scenario::default()
    };
    sc.config.ransub_repair = !a.iter().any(|x| x == "noransub");
    let (r, sim) = plush_sim::sim::play_sim(&sc);
    let f = r.recovery.fault_at_ms as u64;
    let mut t: Vec<u64> = sim.repair_times.iter().map(|x| x.as_millis().saturating_sub(f)).collect();
    t.sort();
    if !t.is_empty() {
        let q = |f: f64| t[((t.len() - 1) as f64 * f) as usize];
        eprintln!(
            "repairs {} at ms: min {} p50 {} p90 {} p99 {} max {}",
            t.len(),
            q(0.0),
            q(0.5),
            q(0.9),
            q(0.99),
            q(1.0)
        );
    }
    println!("{r:#?}");
    eprintln!(
        "no_candidates {} waves_timed_out {} rejects {} verifies {}",
        sim.total(|s| s.repair_no_candidates),
        sim.total(|s| s.repair_waves_timed_out),
        sim.total(|s| s.join_rejects),
        sim.total(|s| s.root_verifies)
    );
}
