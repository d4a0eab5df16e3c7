//! Allocations per relayed message in the core, as a number: the measurement of
//! `tests/relay_allocs.rs` (which asserts zero) without the assertion, for `benches/run.sh`.
//!
//! A counting global allocator watches [`Relay`] (a node with a parent and 12 children, all
//! links up) relay `N` broadcast frames (default 100,000) after a warm-up; every `alloc` and
//! `realloc` counts. Allocation counts are deterministic, unlike time.
//!
//! Prints one human line on stderr and one JSON line on stdout:
//! `{"allocs_per_relayed_msg": F, "allocs": A, "relayed": N, "transmits": T}`.

use plush_benches::counting::{allocations, Counting};
use plush_benches::Relay;

#[global_allocator]
static A: Counting = Counting;

fn main() {
    let n: u64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let mut relay = Relay::new(12);
    // Warm up: the frame pool and the output queue reach their working sizes.
    for _ in 0..100 {
        relay.relay_once();
    }
    let before = allocations();
    let sent_before = relay.transmits;
    for _ in 0..n {
        relay.relay_once();
    }
    let allocs = allocations() - before;
    let transmits = relay.transmits - sent_before;
    let per_msg = allocs as f64 / n.max(1) as f64;
    eprintln!(
        "core relay: {allocs} allocations for {n} relayed messages ({transmits} frames out): {per_msg} per message"
    );
    println!(
        "{{\"allocs_per_relayed_msg\": {per_msg}, \"allocs\": {allocs}, \"relayed\": {n}, \"transmits\": {transmits}}}"
    );
}
