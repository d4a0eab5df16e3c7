//! RanSub at scale: views that are uniform samples of the membership, and a root that counts the
//! population every epoch, before and after nodes die.

use plush_sim::play::play_sim;
use plush_sim::{run, CrashKind, Scenario};
use std::time::Duration;

#[test]
fn ransub_views_are_uniform() {
    let sc = Scenario { nodes: 1000, seed: 7, steady_epochs: 250, kill: 0.0, ..Scenario::default() };
    let r = run(&sc);
    eprintln!(
        "ransub: {} samples, p(all) = {:.4}, p(non-descendants) = {:.4}, population {}, {} epochs",
        r.ransub.samples,
        r.ransub.uniformity_chi2_p,
        r.ransub.nondesc_chi2_p,
        r.ransub.population_last,
        r.ransub.epochs
    );
    assert!(r.converged, "{r:?}");
    assert!(r.ransub.samples >= 200, "{} views sampled", r.ransub.samples);
    assert!(r.ransub.uniformity_chi2_p > 0.01, "all-nodes views are not uniform: p = {}", r.ransub.uniformity_chi2_p);
    assert!(r.ransub.nondesc_chi2_p > 0.01, "non-descendant views are not uniform: p = {}", r.ransub.nondesc_chi2_p);
    assert!(r.ransub.epochs >= 250, "{} epochs", r.ransub.epochs);
    assert_eq!(r.ransub.population_last, 1000, "the root counts every node");
}

#[test]
fn the_population_count_shrinks_to_the_survivors_after_a_crash() {
    let sc = Scenario { nodes: 500, seed: 11, kill: 0.2, crash: CrashKind::Process, ..Scenario::default() };
    let (r, mut sim) = play_sim(&sc);
    assert!(r.converged, "{r:?}");
    assert_eq!(r.recovery.killed, 100);
    let live = r.broadcast_after.expected;
    assert_eq!(live, 400);
    assert_eq!(sim.live_count(), live);
    // The run ends once the root has counted the repaired tree: exactly the survivors.
    assert_eq!(r.ransub.population_last, live, "the report counts the survivors");
    // Two more epochs on the repaired tree: the root still counts exactly the survivors.
    let (epochs, _) = sim.populations;
    let until = sim.now() + sc.config.ransub_epoch * 2 + Duration::from_millis(100);
    sim.run_until(until, |_| false);
    assert!(sim.populations.0 >= epochs + 2, "epochs went on: {} then {}", epochs, sim.populations.0);
    assert_eq!(sim.populations.1, live, "the root counts the survivors");
    assert!(sim.converged());
}
