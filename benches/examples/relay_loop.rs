//! The relay case without criterion: relays `N` broadcasts (default 5,000,000) through a node
//! with 12 children and prints relayed messages per second. For profiling (`perf record`) and
//! for `benches/run.sh`.

use plush_benches::Relay;

fn main() {
    let n: u64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(5_000_000);
    let mut relay = Relay::new(12);
    // Warm up: buffers reach their steady size.
    for _ in 0..10_000 {
        relay.relay_once();
    }
    let t = std::time::Instant::now();
    for _ in 0..n {
        relay.relay_once();
    }
    let s = t.elapsed().as_secs_f64();
    println!("{:.0}", n as f64 / s);
}
