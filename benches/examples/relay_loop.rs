//! The relay case without criterion: relays `N` broadcasts (default 5,000,000) through a node
//! with 12 children and prints relayed messages per second. For profiling (`perf record`) and
//! for `benches/run.sh`.
//!
//! `relay_loop [N] [--batch]`: with `--batch`, as the mio driver feeds a relay, in reads of
//! 1,638 frames (16 KiB) each handled as one batch ([`Relay::relay_read`]); without, one
//! frame per call ([`Relay::relay_once`]).

use plush_benches::Relay;

/// Frames of the smallest broadcast in a 16 KiB read.
const READ_FRAMES: u64 = 1638;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let batch = args.iter().any(|a| a == "--batch");
    let n: u64 = args.iter().find_map(|a| a.parse().ok()).unwrap_or(5_000_000);
    let mut relay = Relay::new(12);
    let step = |relay: &mut Relay| {
        if batch {
            relay.relay_read(READ_FRAMES as usize);
        } else {
            relay.relay_once();
        }
    };
    let per_step = if batch { READ_FRAMES } else { 1 };
    // Warm up: buffers reach their steady size.
    for _ in 0..10_000 / per_step {
        step(&mut relay);
    }
    let steps = n.div_ceil(per_step);
    let t = std::time::Instant::now();
    for _ in 0..steps {
        step(&mut relay);
    }
    let s = t.elapsed().as_secs_f64();
    println!("{:.0}", (steps * per_step) as f64 / s);
}
