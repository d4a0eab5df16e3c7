//! Relaying allocates nothing in steady state: a counting global allocator watches a node relay
//! 10,000 broadcast frames to 12 children (allocation counts are deterministic, unlike time).

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

#[test]
fn relaying_a_broadcast_to_12_children_allocates_nothing_in_steady_state() {
    let mut relay = Relay::new(12);
    // Warm up: the frame pool and the output queue reach their working sizes.
    for _ in 0..100 {
        relay.relay_once();
    }
    let before = ALLOCS.load(Ordering::Relaxed);
    let sent_before = relay.transmits;
    for _ in 0..10_000 {
        relay.relay_once();
    }
    let allocs = ALLOCS.load(Ordering::Relaxed) - before;
    assert_eq!(relay.transmits - sent_before, 10_000 * 13, "12 copies down and one reply up per message");
    assert_eq!(allocs, 0, "{allocs} allocations for 10,000 relayed messages");
}
