//! Relaying allocates nothing in steady state: a counting global allocator watches a node relay
//! 10,000 broadcast frames to 12 children (allocation counts are deterministic, unlike time),
//! of the smallest size and with 16 KiB of filler, one frame per call and in batches (reads of
//! 1,638 frames, as the mio driver hands them over).

use plush_benches::counting::{allocations, Counting};
use plush_benches::Relay;

#[global_allocator]
static A: Counting = Counting;

// One test: the counter is global, so a second test running alongside would add its own.
#[test]
fn relaying_a_broadcast_to_12_children_allocates_nothing_in_steady_state_small_or_16_kib() {
    relay_allocates_nothing(0);
    relay_allocates_nothing(16 << 10);
    batches_allocate_nothing(0, 1638);
    batches_allocate_nothing(16 << 10, 4);
}

fn batches_allocate_nothing(filler: u32, per_read: usize) {
    let mut relay = Relay::new(12);
    relay.set_filler(filler);
    // Warm up: run buffers, the frame pool and the output queue reach their working sizes.
    for _ in 0..20 {
        relay.relay_read(per_read);
    }
    let before = allocations();
    let sent_before = relay.transmits;
    let reads = 10_000usize.div_ceil(per_read);
    for _ in 0..reads {
        relay.relay_read(per_read);
    }
    let allocs = allocations() - before;
    let sent = relay.transmits - sent_before;
    assert!(sent >= reads as u64 * 13, "each read leaves at least once for every child and the parent");
    let one_by_one = reads as u64 * per_read as u64 * 13;
    assert!(sent < one_by_one, "frames leave in runs: {sent} transmits, {one_by_one} one by one");
    assert_eq!(
        allocs,
        0,
        "{allocs} allocations for {} frames relayed in batches, {filler} bytes of filler",
        reads * per_read
    );
}

fn relay_allocates_nothing(filler: u32) {
    let mut relay = Relay::new(12);
    relay.set_filler(filler);
    // Warm up: the frame pool and the output queue reach their working sizes.
    for _ in 0..100 {
        relay.relay_once();
    }
    let before = allocations();
    let sent_before = relay.transmits;
    for _ in 0..10_000 {
        relay.relay_once();
    }
    let allocs = allocations() - before;
    assert_eq!(relay.transmits - sent_before, 10_000 * 13, "12 copies down and one reply up per message");
    assert_eq!(allocs, 0, "{allocs} allocations for 10,000 relayed messages with {filler} bytes of filler");
}
