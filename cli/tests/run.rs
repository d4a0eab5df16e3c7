//! `plush run --local N` end to end: the real binary starts N `plush client` processes on
//! loopback addresses, runs a command on them, prints the groups and dismantles them.
//!
//! Every run is bounded in time (killed past its limit) and checked for leftovers: the clients of
//! a run are the processes whose command line names its key file, `plush-key-<pid>-...`; any
//! found once the run exited are killed, and the test fails.

use serde_json::Value;
use std::time::Duration;

mod common;
use common::plush;
use std::process::Command;

const LIMIT: Duration = Duration::from_secs(90);
const RULE: &str = "---------------";

fn hostname() -> Vec<u8> {
    Command::new("hostname").output().expect("hostname runs here").stdout
}

#[test]
fn twenty_local_hosts_print_one_group() {
    let r = plush(&["run", "--local", "20", "--", "hostname"], LIMIT);
    let stdout = String::from_utf8_lossy(&r.stdout);
    assert_eq!(r.code, Some(0), "stdout: {stdout}\nstderr: {}", r.stderr);
    let mut want = format!("{RULE}\n127.0.0.[1-20] (20)\n{RULE}\n").into_bytes();
    want.extend_from_slice(&hostname());
    assert_eq!(stdout, String::from_utf8_lossy(&want), "stderr: {}", r.stderr);
    assert!(r.stderr.is_empty(), "nothing failed, nothing on stderr: {}", r.stderr);
    eprintln!("plush run --local 20 -- hostname: {:?}", r.took);
}

#[test]
fn json_lines_give_the_groups_and_a_summary() {
    let r = plush(&["run", "--local", "20", "--json", "--", "hostname"], LIMIT);
    assert_eq!(r.code, Some(0), "stderr: {}", r.stderr);
    let stdout = String::from_utf8_lossy(&r.stdout);
    let lines: Vec<Value> =
        stdout.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}"))).collect();
    assert_eq!(lines.len(), 2, "one group, one summary: {stdout}");
    let g = &lines[0];
    assert_eq!(g["count"], 20, "{g}");
    assert_eq!(g["exit"], 0, "{g}");
    assert_eq!(g["nodes"], "127.0.0.[1-20]", "{g}");
    assert_eq!(g["stdout"].as_str().map(str::as_bytes), Some(&hostname()[..]), "{g}");
    let s = &lines[1]["summary"];
    assert_eq!(s["joined"], 20, "{s}");
    assert_eq!(s["ok"], 20, "{s}");
    assert_eq!(s["failed"], 0, "{s}");
    assert_eq!(s["lost"], 0, "{s}");
    assert_eq!(s["unreachable"], 0, "{s}");
    for k in ["build_ms", "run_ms"] {
        assert!(s[k].is_u64(), "{k} in {s}");
    }
}

#[test]
fn the_largest_remote_exit_status_is_the_exit_status() {
    let r = plush(&["run", "--local", "20", "--", "sh", "-c", "echo bye; exit 3"], LIMIT);
    assert_eq!(r.code, Some(3), "stderr: {}", r.stderr);
    let stdout = String::from_utf8_lossy(&r.stdout);
    assert_eq!(stdout, format!("{RULE}\n127.0.0.[1-20] (20) exit 3\n{RULE}\nbye\n"));
    assert_eq!(r.stderr.lines().count(), 20, "each failed host named: {}", r.stderr);
    assert!(r.stderr.contains("plush: 127.0.0.7: exit 3\n"), "{}", r.stderr);
}

#[test]
fn different_outputs_make_groups_largest_first() {
    let dir = std::env::temp_dir().join(format!("plush-run-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let lock = dir.join("lock");
    let lock = lock.to_str().expect("a UTF-8 temporary path");
    // Exactly one host creates the directory.
    let script = "mkdir \"$0\" 2>/dev/null && echo first || echo other";
    let r = plush(&["run", "--local", "20", "--", "sh", "-c", script, lock], LIMIT);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(r.code, Some(0), "stderr: {}", r.stderr);
    let stdout = String::from_utf8_lossy(&r.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 8, "two groups: {stdout}");
    assert!(lines[1].starts_with("127.0.0.[") && lines[1].ends_with(" (19)"), "{stdout}");
    assert_eq!(lines[3], "other", "{stdout}");
    assert!(lines[5].starts_with("127.0.0.") && lines[5].ends_with(" (1)"), "{stdout}");
    assert_eq!(lines[7], "first", "{stdout}");
}

#[test]
fn a_timeout_kills_the_command_and_exits_255() {
    let r = plush(&["run", "--local", "5", "--timeout", "1", "--", "sleep", "30"], LIMIT);
    assert_eq!(r.code, Some(255), "stderr: {}", r.stderr);
    assert!(r.took < Duration::from_secs(20), "killed after 1 s, not after 30: {:?}", r.took);
    let stdout = String::from_utf8_lossy(&r.stdout);
    assert_eq!(stdout, format!("{RULE}\n127.0.0.[1-5] (5) timed out\n{RULE}\n"));
    assert!(r.stderr.contains("plush: 127.0.0.3: timed out\n"), "{}", r.stderr);
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &["run", "--local", "3"][..],
        &["run", "--local", "3", "--"],
        &["run", "--local", "0", "--", "true"],
        &["run", "--local", "65535", "--", "true"],
        &["run", "--local", "x", "--", "true"],
        &["run", "--", "true"],
        &["run", "--local", "3", "--timeout", "0", "--", "true"],
        &["run", "--local", "3", "--timeout", "-1", "--", "true"],
        &["run", "--local", "3", "--degree", "0", "--", "true"],
    ] {
        let r = plush(args, Duration::from_secs(20));
        assert_eq!(r.code, Some(2), "plush {args:?}: {}", r.stderr);
        assert!(r.stdout.is_empty(), "plush {args:?}: nothing on stdout");
        assert!(r.stderr.contains("error"), "plush {args:?}: {}", r.stderr);
    }
}

#[test]
fn host_sets_with_exclusions_fold_back_by_name() {
    let r = plush(
        &[
            "run",
            "-w",
            "127.0.2.[1-4]",
            "-w",
            "127.0.2.9",
            "-x",
            "127.0.2.2",
            "--port",
            "47501",
            "--launcher",
            "local",
            "--",
            "hostname",
        ],
        LIMIT,
    );
    let stdout = String::from_utf8_lossy(&r.stdout);
    assert_eq!(r.code, Some(0), "stdout: {stdout}\nstderr: {}", r.stderr);
    let mut want = format!("{RULE}\n127.0.2.[1,3-4,9] (4)\n{RULE}\n").into_bytes();
    want.extend_from_slice(&hostname());
    assert_eq!(stdout, String::from_utf8_lossy(&want), "stderr: {}", r.stderr);
}

#[test]
fn a_host_file_is_read_and_a_bad_line_is_named() {
    let dir = std::env::temp_dir().join(format!("plush-hostfile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let good = dir.join("good");
    std::fs::write(&good, "# lab hosts\n127.0.3.[1-2]\n\n127.0.3.5  # the odd one\n").expect("write");
    let r = plush(
        &["run", "-f", good.to_str().expect("utf-8"), "--port", "47502", "--launcher", "local", "--", "true"],
        LIMIT,
    );
    let stdout = String::from_utf8_lossy(&r.stdout);
    assert_eq!(r.code, Some(0), "stdout: {stdout}\nstderr: {}", r.stderr);
    assert!(stdout.contains("127.0.3.[1-2,5] (3)"), "{stdout}");
    let bad = dir.join("bad");
    std::fs::write(&bad, "127.0.3.1\nnode[1-\n").expect("write");
    let r = plush(&["run", "-f", bad.to_str().expect("utf-8"), "--launcher", "local", "--", "true"], LIMIT);
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    assert!(r.stderr.contains(&format!("{}:2:", bad.display())), "the line is named: {}", r.stderr);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_host_that_does_not_resolve_is_named_and_exits_255() {
    let r = plush(
        &[
            "run",
            "-w",
            "127.0.4.1,no-such-host.invalid",
            "--port",
            "47503",
            "--launcher",
            "local",
            "--json",
            "--",
            "true",
        ],
        LIMIT,
    );
    assert_eq!(r.code, Some(255), "{}", r.stderr);
    assert!(r.stderr.contains("no-such-host.invalid: unreachable"), "{}", r.stderr);
    let last = String::from_utf8_lossy(&r.stdout).lines().last().unwrap_or_default().to_owned();
    let v: serde_json::Value = serde_json::from_str(&last).expect("a JSON summary");
    assert_eq!(v["summary"]["ok"], 1);
    assert_eq!(v["summary"]["unreachable"], 1);
}

#[test]
fn host_options_are_checked() {
    for args in [
        &["run", "--local", "2", "-w", "a", "--", "true"][..],
        &["run", "-w", "a", "--launcher-command", "x", "--", "true"],
        &["run", "-w", "node[1-", "--", "true"],
        &["run", "-w", "a", "-x", "a", "--", "true"],
    ] {
        let r = plush(args, Duration::from_secs(20));
        assert_eq!(r.code, Some(2), "plush {args:?}: {}", r.stderr);
        assert!(r.stdout.is_empty(), "plush {args:?}: nothing on stdout");
    }
}

#[test]
fn twenty_local_hosts_launched_by_the_tree_print_one_group() {
    let r = plush(&["run", "--local", "20", "--launch-from", "tree", "--launch-fanout", "2", "--", "hostname"], LIMIT);
    let stdout = String::from_utf8_lossy(&r.stdout);
    assert_eq!(r.code, Some(0), "stdout: {stdout}\nstderr: {}", r.stderr);
    let mut want = format!("{RULE}\n127.0.0.[1-20] (20)\n{RULE}\n").into_bytes();
    want.extend_from_slice(&hostname());
    assert_eq!(stdout, String::from_utf8_lossy(&want), "stderr: {}", r.stderr);
    assert!(r.stderr.is_empty(), "nothing failed, nothing on stderr: {}", r.stderr);
    // A template launcher cannot be handed on to the members.
    let r = plush(
        &[
            "run",
            "--local",
            "2",
            "--launch-from",
            "tree",
            "--launcher",
            "command",
            "--launcher-command",
            "true",
            "--",
            "true",
        ],
        LIMIT,
    );
    assert_eq!(r.code, Some(2), "stderr: {}", r.stderr);
    assert!(r.stderr.contains("--launch-from tree"), "{}", r.stderr);
}

/// The command starts once the first host joined, and each host runs it as it joins: a host
/// whose launch takes 3 s more does not hold the others back. Each host prints its uptime when
/// the command runs there; the four quick hosts ran it well before the slow one, which ran it
/// too (and the build, in the summary, lasted until it joined).
#[test]
fn the_command_runs_on_each_host_as_it_joins() {
    let template = "case {ip} in 127.0.0.5) sleep 3;; esac; exec {plush} client --listen {addr} --key-file -";
    let r = plush(
        &[
            "run",
            "--local",
            "5",
            "--launcher",
            "command",
            "--launcher-command",
            template,
            "--json",
            "--",
            "sh",
            "-c",
            "cut -d' ' -f1 /proc/uptime",
        ],
        LIMIT,
    );
    let stdout = String::from_utf8_lossy(&r.stdout);
    assert_eq!(r.code, Some(0), "stdout: {stdout}\nstderr: {}", r.stderr);
    let lines: Vec<Value> =
        stdout.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}"))).collect();
    let (mut quick, mut slow) = (Vec::new(), None);
    for g in lines.iter().filter(|g| g["nodes"].is_string()) {
        let t: f64 = g["stdout"].as_str().and_then(|s| s.trim().parse().ok()).unwrap_or_else(|| panic!("{g}"));
        if g["nodes"] == "127.0.0.5" {
            slow = Some(t);
        } else {
            assert!(!g["nodes"].as_str().is_some_and(|n| n.contains('5')), "{g}");
            quick.extend(std::iter::repeat_n(t, g["count"].as_u64().expect("count") as usize));
        }
    }
    let slow = slow.unwrap_or_else(|| panic!("no result from the slow host: {stdout}"));
    assert_eq!(quick.len(), 4, "{stdout}");
    for t in &quick {
        assert!(*t + 1.5 < slow, "a quick host ran the command at {t}, the slow one at {slow}: {stdout}");
    }
    let s = &lines.last().expect("a summary")["summary"];
    assert_eq!(s["ok"], 5, "{s}");
    assert!(s["build_ms"].as_u64().is_some_and(|b| b >= 2_500), "the build waited for the slow host: {s}");
}
