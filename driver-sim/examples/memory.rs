//! Heap per simulated node, measured with a counting allocator (RSS includes more noise).
//!
//! `cargo run --release -p plush-sim --example memory -- [NODES [KILL]]` builds a tree of NODES
//! nodes (default 10,000, seed 5), lets one RanSub epoch pass, kills the fraction KILL of them
//! with the root (default none) and lets the tree repair, then prints the most bytes ever
//! allocated at once and the bytes still allocated per node, the nodes' heap by part
//! (`Node::heap_parts`: list capacities, per live node) and the simulator's own share.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; the counter only observes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let now = LIVE.fetch_add(l.size(), Ordering::Relaxed) + l.size();
        PEAK.fetch_max(now, Ordering::Relaxed);
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
    let kill: f64 = std::env::args().nth(2).and_then(|x| x.parse().ok()).unwrap_or(0.0);
    let sc =
        plush_sim::Scenario { nodes: n, seed: 5, steady_epochs: 1, kill, kill_root: kill > 0.0, ..Default::default() };
    let (_report, sim) = plush_sim::play::play_sim(&sc);
    let live = LIVE.load(Ordering::Relaxed);
    println!("peak live heap: {} B/node", PEAK.load(Ordering::Relaxed) / n as usize);
    println!("nodes {n}: {} bytes allocated, {} B/node", live, live / n as usize);
    println!("  Node (inline): {} B", std::mem::size_of::<plush_core::Node>());
    let mut parts = [0usize; 4];
    let mut names = [""; 4];
    let live_nodes = (0..sim.len())
        .filter_map(|i| sim.node(i))
        .inspect(|node| {
            for (k, (name, b)) in node.heap_parts().into_iter().enumerate() {
                parts[k] += b;
                names[k] = name;
            }
        })
        .count()
        .max(1);
    for (name, b) in names.iter().zip(parts) {
        println!("  nodes' heap, {name}: {} B/live node", b / live_nodes);
    }
    for (part, bytes) in sim.own_bytes() {
        println!("  simulator, {part}: {} B/node", bytes / n as usize);
    }
}
