//! Quick manual run without the CLI:
//! `cargo run --release -p plush-sim --example quick -- NODES SEED KILL [root] [host] [part]`.
use plush_sim::{run, CrashKind, Scenario};
fn main() {
    let a: Vec<String> = std::env::args().collect();
    let host = a.iter().any(|x| x == "host");
    let sc = Scenario {
        nodes: a.get(1).and_then(|x| x.parse().ok()).unwrap_or(1000),
        seed: a.get(2).and_then(|x| x.parse().ok()).unwrap_or(1),
        kill: a.get(3).and_then(|x| x.parse().ok()).unwrap_or(0.0),
        kill_root: a.iter().any(|x| x == "root"),
        crash: if host { CrashKind::Host } else { CrashKind::Process },
        phase_limit_s: if host { 60.0 } else { 300.0 },
        partition: a.iter().any(|x| x == "part").then_some(0.5),
        ..Scenario::default()
    };
    println!("{:#?}", run(&sc));
}
