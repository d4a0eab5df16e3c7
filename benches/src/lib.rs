//! # plush-benches
//!
//! Criterion benchmarks of Plush, run with `cargo bench -p plush-benches`:
//! - `benches/sim.rs`: simulator throughput (events per second) on [`failure_scenario`].
//! - `benches/wire.rs`: encoding, decoding and framing of one message.
//!
//! This library holds what the benchmarks share, so that a number quoted elsewhere can name the
//! exact scenario it measured.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use plush_sim::Scenario;

/// Seed of every benchmarked scenario: fixed, so each iteration replays the same run.
pub const SEED: u64 = 424_242;

/// The simulator benchmark: `nodes` nodes build a tree, then a quarter of them and the root
/// crash (process crashes) and the survivors repair it.
///
/// With 10,000 nodes this is the run of the README's first command, with a fixed seed.
pub fn failure_scenario(nodes: u32) -> Scenario {
    Scenario { nodes, seed: SEED, kill: 0.25, kill_root: true, ..Scenario::default() }
}
