//! # plush-sim
//!
//! A deterministic discrete-event simulator: thousands to a million copies of the Plush core in
//! one process, on virtual time, with seeded faults and invariant checks.
//!
//! Map of the crate:
//! - [`scenario`]: [`Scenario`] (what to run) and [`Report`] (what came out), the contract of
//!   `plush sim`.
//! - [`sim`]: [`Sim`], the engine: the event heap ordered by (time, sequence), FIFO links with
//!   `min + exponential` delay, process and host crashes, partitions, clogs, connect failures,
//!   the trace hash, and the safety and liveness checks.
//! - [`uniformity`]: the chi-square test of RanSub's views.
//! - [`swarm`]: scenarios drawn from every knob at once, run in parallel and checked by one
//!   oracle (`plush sim --swarm`).
//! - [`star`]: the star layout (Plush before Plush-M), modelled in the simulator.
//! - [`run`]: builds a [`Sim`] for a [`Scenario`] and plays it phase by phase.

pub mod scenario;
pub mod sim;
pub mod star;
pub mod swarm;
pub mod uniformity;

pub use scenario::*;
pub use sim::Sim;

/// Run `scenario` to the end and report.
pub fn run(scenario: &Scenario) -> Report {
    match scenario.layout {
        Layout::Tree => sim::play(scenario),
        Layout::Star => star::play(scenario),
    }
}
