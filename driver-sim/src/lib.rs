//! # plush-sim
//!
//! A deterministic discrete-event simulator: thousands to a million copies of the Plush core in
//! one process, on virtual time, with seeded faults and invariant checks.
//!
//! Map of the crate, from what you run to what runs it:
//! - [`scenario`]: [`Scenario`] (what to run) and [`SimReport`] (what came out), the contract of
//!   `plush sim`.
//! - [`run`] (below): plays a [`Scenario`] in its layout.
//! - [`play`]: scenario playback for the tree layout: builds a [`Sim`] and plays it phase by
//!   phase (build, broadcast, faults, repair, job, broadcast).
//! - [`sim`]: [`Sim`], the simulator's state and the handles to drive it: start, command, crash
//!   and restart nodes, crash and bring back the controller, read its records.
//! - `dispatch`: the events and the machines they are for: takes each due event from the
//!   calendar, hands it to the client or controller in its slot, carries out their outputs.
//! - `calendar`: the event calendar, ordered by (time, sequence).
//! - `net`: the network and its faults: FIFO links with `min + exponential` delay, connects
//!   and resets, partitions, clogs, refusals, the trace hash.
//! - `checks`: the safety checks after every event, and the tree's shape and convergence.
//! - [`star`]: the star layout (Plush before Plush-M), modelled in the simulator.
//! - [`swarm`]: scenarios drawn from every knob at once, run in parallel and checked by one
//!   oracle (`plush sim --swarm`).
//! - [`uniformity`]: the chi-square test of RanSub's views.

mod calendar;
mod checks;
mod dispatch;
mod net;
pub mod play;
pub mod scenario;
pub mod sim;
pub mod star;
pub mod swarm;
pub mod uniformity;

pub use scenario::*;
pub use sim::Sim;

/// Run `scenario` to the end and report.
pub fn run(scenario: &Scenario) -> SimReport {
    match scenario.layout {
        Layout::Tree => play::play(scenario),
        Layout::Star => star::play(scenario),
    }
}
