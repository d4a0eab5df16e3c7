//! Heap per simulated node, measured with a counting allocator (RSS includes more noise).
//!
//! `cargo run --release -p plush-sim --example memory -- [NODES]` builds a tree of NODES nodes
//! (default 10,000), lets one RanSub epoch pass, and prints the bytes still allocated per node,
//! with the simulator's own share broken down.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; the counter only observes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size(), Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static A: Counting = Counting;

fn main() {
    let n: u32 = std::env::args().nth(1).and_then(|x| x.parse().ok()).unwrap_or(10_000);
    let sc = plush_sim::Scenario { nodes: n, seed: 1, steady_epochs: 1, ..Default::default() };
    let (_report, sim) = plush_sim::play::play_sim(&sc);
    let live = LIVE.load(Ordering::Relaxed);
    println!("nodes {n}: {} bytes allocated, {} B/node", live, live / n as usize);
    println!("  Node (inline): {} B", std::mem::size_of::<plush_core::Node>());
    for (part, bytes) in sim.own_bytes() {
        println!("  simulator, {part}: {} B/node", bytes / n as usize);
    }
}
