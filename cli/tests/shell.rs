//! `plush shell` end to end, commands read from a pipe: one overlay serves every command, so
//! the clients' pids stay the same; barriers opened in the shell are entered by jobs with
//! `plush barrier`; `--degree` shapes the tree the clients build; `push` copies a file through
//! the tree. Also `plush run --stream`.

use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;

mod common;
use common::{plush, plush_with_input};

const LIMIT: Duration = Duration::from_secs(90);

fn json_lines(out: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// The `hosts --json` documents: host -> (pid, parent, depth, state).
fn hosts_of(docs: &[Value]) -> BTreeMap<String, (u64, Option<String>, u64, String)> {
    docs.iter()
        .filter(|d| d.get("pid").is_some())
        .map(|d| {
            let host = d["host"].as_str().expect("host").to_owned();
            let pid = d["pid"].as_u64().expect("a local client has a pid");
            let parent = d["parent"].as_str().map(str::to_owned);
            let depth = d["depth"].as_u64().expect("a member has a depth");
            (host, (pid, parent, depth, d["state"].as_str().unwrap_or("").to_owned()))
        })
        .collect()
}

#[test]
fn a_piped_shell_runs_two_commands_on_one_overlay_without_relaunching() {
    let n = 30;
    let input = "hosts\nrun hostname\nrun sh -c 'echo $PLUSH_NODE'\nhosts\n";
    let r = plush_with_input(&["shell", "--local", &n.to_string(), "--json"], Some(input), LIMIT);
    assert_eq!(r.code, Some(0), "stderr: {}", r.stderr);
    let docs = json_lines(&r.stdout);
    // The two `hosts` listings: n entries each, same pids.
    let listings: Vec<&Value> = docs.iter().filter(|d| d.get("pid").is_some()).collect();
    assert_eq!(listings.len(), 2 * n, "{docs:?}");
    let before = hosts_of(&docs[..docs.iter().position(|d| d.get("summary").is_some()).expect("a summary")]);
    let after = hosts_of(&docs[docs.iter().rposition(|d| d.get("summary").is_some()).expect("a summary")..]);
    assert_eq!(before.len(), n);
    let pids = |m: &BTreeMap<String, (u64, Option<String>, u64, String)>| -> Vec<(String, u64)> {
        m.iter().map(|(h, v)| (h.clone(), v.0)).collect()
    };
    assert_eq!(pids(&before), pids(&after), "clients were relaunched between commands");
    // One root, every other member's parent is a member, depths are consistent.
    let roots: Vec<&String> = before.iter().filter(|(_, v)| v.1.is_none()).map(|(h, _)| h).collect();
    assert_eq!(roots.len(), 1, "{before:?}");
    for (h, (_, parent, depth, state)) in &before {
        assert_eq!(state, "joined");
        if let Some(p) = parent {
            assert_eq!(before[p].2 + 1, *depth, "{h}'s depth is not its parent's plus one");
        }
    }
    // Both runs reached every host: two summaries with n ok.
    let summaries: Vec<&Value> = docs.iter().filter_map(|d| d.get("summary")).collect();
    assert_eq!(summaries.len(), 2);
    for s in &summaries {
        assert_eq!(s["ok"], n as u64, "{s}");
        assert_eq!(s["exit"], 0);
    }
    // The second command printed each host's own address: n groups of one.
    let groups: Vec<&Value> = docs.iter().filter(|d| d.get("nodes").is_some()).collect();
    assert_eq!(groups.len(), 1 + n, "{groups:?}");
    // The shell dismantled at the end of its input.
    assert!(docs.last().is_some_and(|d| d["dismantled"] == true), "{:?}", docs.last());
}

#[test]
fn a_barrier_opened_in_the_shell_holds_jobs_until_every_host_entered() {
    let n = 8;
    // Host 127.0.0.3 enters a second later than the rest; nobody prints "after" before it entered.
    let script = r#"case $PLUSH_NODE in 127.0.0.3:*) sleep 1;; esac; date +%s.%N; "$PLUSH" barrier b1 && date +%s.%N"#;
    let input = format!("barrier b1\nrun --stream sh -c '{script}'\nstatus --json\n");
    let r = plush_with_input(&["shell", "--local", &n.to_string()], Some(&input), LIMIT);
    assert_eq!(r.code, Some(0), "stderr: {}", r.stderr);
    let text = String::from_utf8_lossy(&r.stdout);
    // Streamed lines: `host: time`, twice per host (before and after the barrier).
    let mut times: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for line in text.lines() {
        if let Some((host, t)) = line.split_once(": ") {
            if let Ok(t) = t.trim().parse::<f64>() {
                times.entry(host.to_owned()).or_default().push(t);
            }
        }
    }
    assert_eq!(times.len(), n, "{text}");
    let last_entry = times.values().map(|v| v[0]).fold(f64::MIN, f64::max);
    for (h, v) in &times {
        assert_eq!(v.len(), 2, "{h}: {v:?}\n{text}");
        assert!(
            v[1] >= last_entry,
            "{h} went past the barrier at {} before the last host entered at {last_entry}",
            v[1]
        );
    }
    assert!(text.contains("barrier b1 released: 8/8 entered"), "{text}");
    let status: Value =
        serde_json::from_str(text.lines().find(|l| l.starts_with('{')).expect("status --json")).unwrap();
    assert_eq!(status["barriers"][0]["released"], true, "{status}");
    assert_eq!(status["barriers"][0]["entered"], 8, "{status}");
}

#[test]
fn the_degree_reaches_the_clients() {
    let n = 20;
    let r = plush_with_input(&["shell", "--local", &n.to_string(), "--degree", "2", "--json"], Some("hosts\n"), LIMIT);
    assert_eq!(r.code, Some(0), "stderr: {}", r.stderr);
    let hosts = hosts_of(&json_lines(&r.stdout));
    assert_eq!(hosts.len(), n);
    let mut children: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, parent, _, _) in hosts.values() {
        if let Some(p) = parent {
            *children.entry(p.as_str()).or_default() += 1;
        }
    }
    assert!(children.values().all(|&c| c <= 2), "more than 2 children: {children:?}");
    let depth = hosts.values().map(|v| v.2).max().unwrap_or(0);
    assert!(depth >= 4, "20 hosts at degree 2 are at least 4 levels deep, got {depth}");
}

#[test]
fn shell_errors_name_the_problem_and_the_shell_goes_on() {
    let input = "frobnicate\nrun\nrun -w 10.9.9.9 hostname\nrun sh -c 'exit 4'\n";
    let r = plush_with_input(&["shell", "--local", "3"], Some(input), LIMIT);
    assert!(r.stderr.contains("unrecognized subcommand 'frobnicate'"), "{}", r.stderr);
    assert!(r.stderr.contains("10.9.9.9 is not one of this session's hosts"), "{}", r.stderr);
    assert!(r.stderr.contains("127.0.0.1: exit 4"), "{}", r.stderr);
    // The status is that of the last command.
    assert_eq!(r.code, Some(4), "{}", r.stderr);
}

#[test]
fn run_stream_prints_host_prefixed_lines_as_they_come() {
    let r = plush(&["run", "--local", "4", "--stream", "--", "sh", "-c", "echo one; echo two $PLUSH_NODE"], LIMIT);
    assert_eq!(r.code, Some(0), "stderr: {}", r.stderr);
    let text = String::from_utf8_lossy(&r.stdout);
    for i in 1..=4 {
        let host = format!("127.0.0.{i}");
        assert!(text.lines().any(|l| l == format!("{host}: one")), "{text}");
        assert!(text.lines().any(|l| l.starts_with(&format!("{host}: two {host}:"))), "{text}");
    }
    assert_eq!(text.lines().count(), 8, "{text}");
}

#[test]
fn push_copies_a_file_to_every_host_and_the_shell_goes_on_after_a_missing_one() {
    let n = 10;
    let dir = std::env::temp_dir().join(format!("plush-shell-push-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = dir.join("out");
    std::fs::create_dir_all(&out).expect("a temp dir");
    let src = dir.join("payload.txt");
    let content = format!("pushed by test {}\nsecond line\n", std::process::id());
    std::fs::write(&src, &content).expect("write the source");
    let missing = dir.join("nosuch.txt");
    let input = format!(
        "push {src} {out}/\nrun -- cat {out}/payload.txt\npush {missing} {out}/\nrun true\n",
        src = src.display(),
        out = out.display(),
        missing = missing.display()
    );
    let r = plush_with_input(&["shell", "--local", &n.to_string(), "--json"], Some(&input), LIMIT);
    let copied = std::fs::read_to_string(out.join("payload.txt"));
    let _ = std::fs::remove_dir_all(&dir);
    // The last command (`run true`) succeeded: the missing file did not stop the shell.
    assert_eq!(r.code, Some(0), "stderr: {}", r.stderr);
    assert!(
        r.stderr.contains(&format!("plush shell: push: {}: No such file or directory", missing.display())),
        "{}",
        r.stderr
    );
    assert_eq!(copied.as_deref().ok(), Some(content.as_str()));
    let docs = json_lines(&r.stdout);
    let groups: Vec<&Value> = docs.iter().filter(|d| d.get("nodes").is_some()).collect();
    let summaries: Vec<&Value> = docs.iter().filter_map(|d| d.get("summary")).collect();
    // push, run cat, run true: the missing file printed neither groups nor a summary.
    assert_eq!(groups.len(), 3, "{docs:?}");
    assert_eq!(summaries.len(), 3, "{docs:?}");
    // The push: one group of every host, ok; its summary counts the file's bytes.
    assert_eq!((groups[0]["count"].as_u64(), groups[0]["status"].as_str()), (Some(n), Some("ok")), "{}", groups[0]);
    assert_eq!(summaries[0]["ok"], n, "{}", summaries[0]);
    assert_eq!(summaries[0]["bytes"], content.len(), "{}", summaries[0]);
    assert_eq!(summaries[0]["exit"], 0);
    // Every host read the copy: one group of all of them, with the content.
    assert_eq!(groups[1]["count"], n, "{}", groups[1]);
    assert_eq!(groups[1]["stdout"], content.as_str(), "{}", groups[1]);
    assert_eq!(summaries[1]["ok"], n, "{}", summaries[1]);
}
