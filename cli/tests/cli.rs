//! The `plush` binary as scripts use it: exit statuses, error messages and the JSON report of
//! `plush sim`.

use serde_json::Value;
use std::process::{Command, Output};

/// Run the `plush` binary with `args`.
fn plush(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_plush")).args(args).output().expect("the plush binary runs")
}

/// Run `plush sim --json` with `args`, check that it exits 0, and parse its one JSON object.
fn sim_json(args: &[&str]) -> Value {
    let mut argv = vec!["sim", "--json"];
    argv.extend_from_slice(args);
    let out = plush(&argv);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "plush {argv:?} failed\nstdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.trim().lines().count(), 1, "one JSON object on one line: {stdout}");
    serde_json::from_str(&stdout).expect("stdout is JSON")
}

/// `v[path]` as an unsigned integer.
fn int(v: &Value, path: &str) -> u64 {
    v.pointer(path).and_then(Value::as_u64).unwrap_or_else(|| panic!("{path} is not an integer in {v}"))
}

/// Assert that `args` are refused with exit status 2 and a message that names `flag`.
fn refused(args: &[&str], flag: &str) {
    let out = plush(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "plush {args:?}: {stderr}");
    assert!(stderr.contains(flag), "the error names {flag}: {stderr}");
    assert!(out.stdout.is_empty(), "nothing on stdout");
}

#[test]
fn a_latency_range_upside_down_is_refused() {
    refused(&["sim", "--latency", "9..1"], "--latency");
    refused(&["sim", "--latency", "5"], "--latency");
    refused(&["sim", "--latency", "a..b"], "--latency");
    refused(&["sim", "--latency", "-1..5"], "--latency");
}

#[test]
fn a_kill_fraction_above_one_is_refused() {
    refused(&["sim", "--kill", "1.5"], "--kill");
    refused(&["sim", "--kill", "-0.5"], "--kill");
    refused(&["sim", "--heal-after", "-1"], "--heal-after");
    refused(&["sim", "--partition", "-0.5"], "--partition");
    refused(&["sim", "--crash", "meteor"], "--crash");
    refused(&["sim", "--nodes", "0"], "--nodes");
    refused(&["sim", "--nodes", "16777215"], "--nodes");
    refused(&["sim", "--degree", "0"], "--degree");
}

#[test]
fn help_describes_plush_and_lists_sim() {
    let out = plush(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("Plush"), "{help}");
    assert!(help.contains("sim"), "{help}");
}

#[test]
fn a_tree_of_300_builds_and_a_run_repeats_exactly() {
    let args = ["--nodes", "300", "--seed", "5"];
    let r = sim_json(&args);
    assert_eq!(r["converged"], Value::Bool(true), "{r}");
    assert_eq!(int(&r, "/seed"), 5);
    assert_eq!(int(&r, "/nodes"), 300);
    assert_eq!(int(&r, "/invariant_violations"), 0, "{r}");
    assert_eq!(int(&r, "/tree/roots"), 1, "{r}");
    assert_eq!(int(&r, "/tree/orphans"), 0, "{r}");
    assert_eq!(int(&r, "/broadcast/replies"), 300, "{r}");

    let again = sim_json(&args);
    let hash = r["trace_hash"].as_str().expect("trace_hash is a string");
    assert!(!hash.is_empty());
    assert_eq!(again["trace_hash"].as_str(), Some(hash), "same seed, same trace");
}

#[test]
fn a_quarter_and_the_root_killed_the_survivors_rebuild_one_tree() {
    let r = sim_json(&["--kill", "0.25", "--kill-root", "--nodes", "500", "--seed", "3"]);
    assert_eq!(r["converged"], Value::Bool(true), "{r}");
    assert_eq!(int(&r, "/invariant_violations"), 0, "{r}");
    assert!(int(&r, "/recovery/killed") > 0, "{r}");
    assert_eq!(int(&r, "/recovery/roots"), 1, "{r}");
    let expected = int(&r, "/broadcast_after/expected");
    assert!(expected > 0 && expected < 500, "{r}");
    assert_eq!(int(&r, "/broadcast_after/replies"), expected, "{r}");
}

#[test]
fn the_human_summary_prints_the_seed_and_how_to_reproduce() {
    let out = plush(&["sim", "--nodes", "50", "--seed", "11", "--kill", "0.1"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("seed 11"), "{stdout}");
    assert!(stdout.contains("reproduce: plush sim --nodes 50 --seed 11 --kill 0.1"), "{stdout}");
}

#[test]
fn without_a_seed_one_is_chosen_and_printed() {
    let out = plush(&["sim", "--nodes", "20"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let seed = stderr
        .split_whitespace()
        .skip_while(|w| *w != "seed")
        .nth(1)
        .unwrap_or_else(|| panic!("the seed is printed: {stderr}"));
    assert!(seed.parse::<u64>().is_ok(), "{stderr}");
    assert!(stdout.contains(&format!("--seed {seed}")), "{stdout}");
}

#[test]
fn under_a_small_fd_budget_the_tree_repairs_and_no_tree_link_is_evicted() {
    let r = sim_json(&["--nodes", "400", "--fd-budget", "24", "--kill", "0.25", "--seed", "9"]);
    assert_eq!(r["converged"], Value::Bool(true), "{r}");
    assert_eq!(int(&r, "/invariant_violations"), 0, "{r}");
    assert_eq!(int(&r, "/conns/budget"), 24, "{r}");
    let max_open = int(&r, "/conns/max_open");
    assert!(max_open > 0 && max_open <= 24, "a node held {max_open} links: {r}");
    assert!(int(&r, "/conns/evictions") > 0, "the budget bit: idle links were evicted: {r}");
    assert_eq!(int(&r, "/conns/pinned_evictions"), 0, "{r}");
    assert_eq!(int(&r, "/recovery/killed"), 100, "{r}");
    assert_eq!(int(&r, "/broadcast_after/replies"), int(&r, "/broadcast_after/expected"), "{r}");
}

#[test]
fn without_ransub_repair_every_repair_goes_through_the_root() {
    let r = sim_json(&["--nodes", "400", "--kill", "0.25", "--seed", "4", "--no-ransub-repair"]);
    assert_eq!(r["converged"], Value::Bool(true), "{r}");
    assert_eq!(int(&r, "/recovery/via_ransub"), 0, "{r}");
    assert!(int(&r, "/recovery/via_root") > 0, "orphans repaired through the root: {r}");
    // The same run with RanSub repair uses it.
    let with = sim_json(&["--nodes", "400", "--kill", "0.25", "--seed", "4"]);
    assert_eq!(with["converged"], Value::Bool(true), "{with}");
    assert!(int(&with, "/recovery/via_ransub") > 0, "{with}");
}

#[test]
fn an_fd_budget_below_two_links_is_refused() {
    refused(&["sim", "--fd-budget", "1"], "--fd-budget");
    refused(&["sim", "--fd-budget", "0"], "--fd-budget");
    refused(&["sim", "--fd-budget=-3"], "--fd-budget");
}

#[test]
fn a_job_through_faults_reaches_the_controller_exactly_once() {
    let args = ["--nodes", "2000", "--seed", "11", "--job", "--kill", "0.25", "--kill-root", "--fault-during-job"];
    let r = sim_json(&args);
    assert_eq!(r["converged"], Value::Bool(true), "{r}");
    let expected = int(&r, "/job/expected");
    assert_eq!(expected, int(&r, "/broadcast_after/expected"), "the job counts the survivors: {r}");
    assert!(expected > 1000 && expected < 2000, "{r}");
    assert_eq!(int(&r, "/job/lost"), 0, "{r}");
    assert_eq!(int(&r, "/job/duplicates"), 0, "{r}");
    // Every survivor answered, and merging kept the controller's traffic small.
    assert!(int(&r, "/job/results") >= expected, "{r}");
    let messages = int(&r, "/job/merged_messages_at_controller");
    assert!(messages > 0 && messages <= 100, "{messages} messages at the controller: {r}");
    assert_eq!(int(&r, "/job/distinct_outputs"), 1, "{r}");
}

#[test]
fn distinct_outputs_travel_as_distinct_groups() {
    let r = sim_json(&["--nodes", "300", "--seed", "5", "--job", "--job-outputs", "7"]);
    assert_eq!(r["converged"], Value::Bool(true), "{r}");
    assert_eq!(int(&r, "/job/distinct_outputs"), 7, "{r}");
    assert_eq!(int(&r, "/job/results"), 300, "{r}");
    assert_eq!(int(&r, "/job/lost"), 0, "{r}");
}

#[test]
fn job_flags_need_job() {
    refused(&["sim", "--fault-during-job"], "--job");
    refused(&["sim", "--job", "--job-outputs", "0"], "--job-outputs");
}

#[test]
fn a_swarm_ends_with_its_summary_as_json() {
    let out = plush(&["sim", "--swarm", "8", "--seed-base", "3", "--jobs", "2", "--swarm-nodes", "20..80", "--json"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let last = stdout.trim().lines().last().expect("a summary line");
    let s: Value = serde_json::from_str(last).expect("the last line is JSON");
    assert_eq!(int(&s, "/runs"), 8, "{s}");
    for field in ["failures", "not_converged", "ransub_miscounts", "lost", "duplicates", "invariant_violations"] {
        assert_eq!(int(&s, &format!("/{field}")), 0, "{s}");
    }
    assert_eq!(stdout.trim().lines().count(), 1, "no failure lines: {stdout}");
    // Swarm flags need --swarm.
    refused(&["sim", "--seed-base", "3"], "--swarm");
}

#[test]
fn tree_launch_in_the_simulator_has_members_launch_and_reports_who_did() {
    let tree = [
        "--nodes",
        "300",
        "--seed",
        "5",
        "--job",
        "--launch-from",
        "tree",
        "--launch-ms",
        "300",
        "--launch-fanout",
        "8",
    ];
    let r = sim_json(&tree);
    assert_eq!(r["converged"], Value::Bool(true), "{r}");
    assert_eq!(int(&r, "/build/launches_by_controller"), 1, "{r}");
    assert_eq!(int(&r, "/build/launches_by_members"), 299, "{r}");
    let ctrl = ["--nodes", "300", "--seed", "5", "--job", "--launch-ms", "300", "--launch-fanout", "8"];
    let c = sim_json(&ctrl);
    assert_eq!(int(&c, "/build/launches_by_controller"), 300, "{c}");
    assert_eq!(int(&c, "/build/launches_by_members"), 0, "{c}");
    // The same run again repeats exactly.
    assert_eq!(sim_json(&tree)["trace_hash"], r["trace_hash"]);
    refused(&["sim", "--launch-ms", "300"], "--job");
    refused(&["sim", "--job", "--launch-fanout", "0"], "--launch-fanout");
    refused(&["sim", "--job", "--launch-ms", "-5"], "--launch-ms");
    refused(&["sim", "--job", "--launch-from", "ssh"], "--launch-from");
}
