//! Joins placed below the root, and the depth after a large repair (issue 24): a leaf is placed
//! by the member it asks, the root handles few joins in a build and in a repair, and the
//! subtrees a repair left too deep move up until the tree is at most twice as deep as before.

use plush_sim::play::play;
use plush_sim::{CrashKind, Scenario};

#[test]
fn a_build_places_leaves_at_the_members_they_ask_not_at_the_root() {
    let n = 5000;
    let r = play(&Scenario { nodes: n, seed: 31, ..Scenario::default() });
    assert!(r.converged, "{r:?}");
    // Every joiner but the founder's first children asked a member that invited it.
    assert!(r.build.member_placements >= u64::from(n) * 95 / 100, "{:?}", r.build);
    assert!(r.build.root_joins <= u64::from(n) / 50, "{:?}", r.build);
    // As shallow as the root's own placements: a complete tree of degree 12 holding 5,000
    // nodes is 4 deep; the members at the ideal depth take children one level further.
    assert!(r.tree.depth <= 5, "{:?}", r.tree);
}

#[test]
fn a_large_repair_rejoins_below_the_root_and_the_depth_comes_back() {
    for (seed, crash) in [(32, CrashKind::Process), (33, CrashKind::Host)] {
        let sc = Scenario { nodes: 5000, seed, kill: 0.25, kill_root: true, crash, ..Scenario::default() };
        let r = play(&sc);
        assert!(r.converged, "seed {seed}: {r:?}");
        let rec = &r.recovery;
        // At most 2 % of the killed nodes' orphans rejoined through the root.
        assert!(rec.root_joins * 50 <= u64::from(rec.killed), "seed {seed}: {rec:?}");
        // The moves bring the depth back within twice the depth before the fault.
        assert!(rec.depth <= 2 * r.tree.depth, "seed {seed}: tree {:?}, {rec:?}", r.tree);
        if rec.depth_whole > 2 * r.tree.depth {
            assert!(rec.moves > 0, "seed {seed}: deep after the repair, and nothing moved: {rec:?}");
        }
        assert_eq!(r.broadcast_after.replies, r.broadcast_after.expected, "seed {seed}");
    }
}
