//! The scenarios of `benches/messages.rs` do what they are named for, round after round: a
//! benchmark of a relay that stopped relaying (a job table full, a RanSub epoch ignored, links
//! no longer evicted) would measure nothing.

use plush_benches::{JobRound, LinkChurn, RanSubRound};

#[test]
fn every_job_round_relays_the_run_and_merges_twelve_results_up() {
    let mut jobs = JobRound::new();
    // More jobs than a node tracks at once (`max_jobs` 64): finished ones must age out or make
    // room, and the run still be relayed.
    for i in 0..300 {
        if i % 50 == 0 {
            jobs.checked_round();
        } else {
            jobs.round();
        }
    }
    jobs.checked_round();
}

#[test]
fn every_ransub_epoch_distributes_to_twelve_children_and_compacts_one_collect_up() {
    let mut r = RanSubRound::new();
    for i in 0..100 {
        if i % 25 == 0 {
            r.checked_epoch();
        } else {
            r.epoch();
        }
    }
    r.checked_epoch();
}

#[test]
fn at_the_budget_each_new_link_evicts_one_and_touches_keep_links_open() {
    let mut churn = LinkChurn::new();
    let before = churn.evictions();
    for _ in 0..1_000 {
        let touched = churn.touch().expect("the relay holds idle links");
        let oldest = churn.oldest();
        let closed = churn.evict().expect("a new link at the budget closes one");
        assert_ne!(closed, touched, "the link just touched is the most recently used");
        assert_eq!(Some(closed), oldest, "the least recently used link goes");
    }
    assert_eq!(churn.evictions() - before, 1_000, "one eviction per new link");
    assert_eq!(churn.links(), plush_benches::CHURN_LINKS, "the table stays at its budget");
}
