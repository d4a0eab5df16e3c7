//! Allocations per relayed message in the core, as a number: the measurement of
//! `tests/relay_allocs.rs` (which asserts zero) without the assertion, for `benches/run.sh`.
//!
//! A counting global allocator watches [`Relay`] (a node with a parent and 12 children, all
//! links up) relay `N` broadcast frames (default 100,000) after a warm-up; every `alloc` and
//! `realloc` counts. Allocation counts are deterministic, unlike time.
//!
//! Prints one human line on stderr and one JSON line on stdout:
//! `{"allocs_per_relayed_msg": F, "allocs": A, "relayed": N, "transmits": T}`.

use plush_benches::Relay;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

struct Counting;
static ALLOCS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; the counter only observes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.realloc(p, l, size) }
    }
}

#[global_allocator]
static A: Counting = Counting;

fn main() {
    let n: u64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let mut relay = Relay::new(12);
    // Warm up: the frame pool and the output queue reach their working sizes.
    for _ in 0..100 {
        relay.relay_once();
    }
    let before = ALLOCS.load(Ordering::Relaxed);
    let sent_before = relay.transmits;
    for _ in 0..n {
        relay.relay_once();
    }
    let allocs = ALLOCS.load(Ordering::Relaxed) - before;
    let transmits = relay.transmits - sent_before;
    let per_msg = allocs as f64 / n.max(1) as f64;
    eprintln!(
        "core relay: {allocs} allocations for {n} relayed messages ({transmits} frames out): {per_msg} per message"
    );
    println!(
        "{{\"allocs_per_relayed_msg\": {per_msg}, \"allocs\": {allocs}, \"relayed\": {n}, \"transmits\": {transmits}}}"
    );
}
