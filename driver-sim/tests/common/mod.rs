//! Helpers shared by the simulator's test files (each test file is its own crate and uses only
//! some of them): a default scenario, a tree built by a controller's invitations, and short
//! ways to name the controller's slot, the root and a node's index.

#![allow(dead_code)]

use plush_core::{HostState, NodeId};
use plush_sim::{Scenario, Sim};
use std::time::Duration;

/// The default scenario with `n` nodes and seed `seed`.
pub fn scenario(n: u32, seed: u64) -> Scenario {
    Scenario { nodes: n, seed, ..Scenario::default() }
}

/// Hosts the controller counts as joined (0 without a controller).
pub fn joined(sim: &Sim) -> usize {
    sim.controller().map_or(0, |c| c.host_counts()[HostState::Joined as usize])
}

/// The controller's slot; panics without a controller.
pub fn ctrl_slot(sim: &Sim) -> u32 {
    sim.controller().and_then(|c| c.id().loopback_index()).expect("a controller")
}

/// The main root's slot; panics without one.
pub fn root_of(sim: &Sim) -> u32 {
    sim.main_root().expect("a root")
}

/// The slot of a simulated id; panics on any other id.
pub fn index(id: NodeId) -> u32 {
    id.loopback_index().expect("a simulated id")
}

/// Run until `want` hosts are joined (as the controller sees it) and the live nodes form one
/// converged tree, with no safety violation; panics after two minutes of simulated time.
pub fn wait_built(sim: &mut Sim, want: usize, seed: u64) {
    let deadline = sim.now() + Duration::from_secs(120);
    while sim.now() < deadline {
        let t = sim.now() + Duration::from_millis(100);
        sim.run_until(t, |_| false);
        if joined(sim) == want && sim.converged() {
            assert_eq!(sim.violations, 0, "{:?}", sim.violation_texts);
            return;
        }
    }
    panic!(
        "seed {seed}: the controller did not build the tree: host counts {:?}, converged {}",
        sim.controller().map(|c| c.host_counts()),
        sim.converged()
    );
}

/// A simulator of `sc.nodes` hosts and a controller that invited them all; returns once every
/// host is joined (as the controller sees it) and the tree converged.
pub fn build(sc: &Scenario) -> Sim {
    let n = sc.nodes;
    let mut sim = Sim::new(n, sc);
    sim.add_controller();
    let hosts: Vec<NodeId> = (0..n).map(Sim::id).collect();
    sim.ctrl_do(|c, now| c.add_hosts(now, &hosts));
    wait_built(&mut sim, n as usize, sc.seed);
    sim
}

/// Run in steps of `step` until `done` holds (true) or `limit` of simulated time passed (false).
pub fn run_for(sim: &mut Sim, limit: Duration, step: Duration, mut done: impl FnMut(&Sim) -> bool) -> bool {
    let deadline = sim.now() + limit;
    while sim.now() < deadline {
        let t = (sim.now() + step).min(deadline);
        sim.run_until(t, |_| false);
        if done(sim) {
            return true;
        }
    }
    done(sim)
}
