//! Issue 18's reproduction 4 as its user met it, in `plush shell --local 3`: a background job,
//! a depth-1 client killed with SIGKILL during it (here by the job itself: `kill -9 $PPID` on
//! 127.0.0.3), then `wait --json`. The job ran once on every host, the killed host is named lost
//! during the job with the output that had arrived, and no job process is left.

use serde_json::Value;
use std::time::Duration;

mod common;
use common::plush_env;

const LIMIT: Duration = Duration::from_secs(90);

/// Live (not zombie) processes of process group `pgid`.
fn group_members(pgid: u32) -> usize {
    let Ok(dir) = std::fs::read_dir("/proc") else { return 0 };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
            let Some(close) = s.rfind(')') else { return false };
            let f: Vec<&str> = s[close + 1..].split_whitespace().collect();
            f.first() != Some(&"Z") && f.get(2).and_then(|g| g.parse::<u32>().ok()) == Some(pgid)
        })
        .count()
}

#[test]
fn a_shell_job_whose_client_was_killed_runs_once_and_names_the_host_lost() {
    let dir = std::env::temp_dir().join(format!("plush-faults-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a test directory");
    let d = dir.display().to_string();
    // Every host notes its run (its shell's pid, also its process group) and prints a line; on
    // 127.0.0.3 the job then kills its own client, and sleeps on as an orphan would.
    let script = r#"echo $$ >> "$RUNDIR/$PLUSH_NODE"; echo started; case $PLUSH_NODE in 127.0.0.3:*) sleep 0.5; kill -9 $PPID;; esac; sleep 4; echo done"#;
    let input = format!("run --bg --stream sh -c '{script}'\nwait --json\n");
    let r = plush_env(&["shell", "--local", "3"], Some(&input), &[("RUNDIR", &d)], LIMIT);
    let stdout = String::from_utf8_lossy(&r.stdout).into_owned();
    let docs: Vec<Value> = stdout.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let summary = docs.iter().find_map(|d| d.get("summary")).unwrap_or_else(|| panic!("{stdout}\n{}", r.stderr));
    assert_eq!(summary["ok"], 2, "{summary}\n{}", r.stderr);
    assert_eq!(summary["lost"], 1, "{summary}");
    assert_eq!(summary["failed"], 0, "{summary}");
    assert_eq!(r.code, Some(255), "wait's status: a host was lost");
    let lost = docs.iter().find(|d| d["nodes"] == "127.0.0.3").expect("a group for the killed host");
    assert!(lost["status"].as_str().is_some_and(|s| s.starts_with("lost during the job")), "{lost}");
    assert!(
        // A background job gathers its output (nothing streams while nobody reads): none had
        // arrived when the client died.
        r.stderr
            .contains("127.0.0.3: lost during the job: its client restarted, not run again (no output had arrived)"),
        "{}",
        r.stderr
    );
    // Once per host, and nothing of any run left.
    let mut pids = Vec::new();
    for e in std::fs::read_dir(&dir).expect("the test directory").flatten() {
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1, "{:?} ran {} times", e.file_name(), lines.len());
        pids.extend(lines.iter().filter_map(|l| l.parse::<u32>().ok()));
    }
    assert_eq!(pids.len(), 3);
    let left: Vec<u32> = pids.iter().copied().filter(|&p| group_members(p) > 0).collect();
    assert!(left.is_empty(), "job processes left: {left:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Reproduction 5 in the shell: the client on 127.0.0.3 is stopped (SIGSTOP) half a second into
/// the job and continued 10 s later (both by the job itself, the second from a background
/// subshell). `wait --json` counts its result: three hosts ok, none lost, each ran once.
#[test]
fn a_shell_job_whose_client_was_paused_counts_its_result() {
    let dir = std::env::temp_dir().join(format!("plush-faults-stop-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a test directory");
    let d = dir.display().to_string();
    let script = r#"echo $$ >> "$RUNDIR/$PLUSH_NODE"; case $PLUSH_NODE in 127.0.0.3:*) c=$PPID; (sleep 10; kill -CONT $c) </dev/null >/dev/null 2>&1 & sleep 0.5; kill -STOP $c;; esac; sleep 4; echo out-$PLUSH_NODE"#;
    let input = format!("run --bg sh -c '{script}'\nwait --json\n");
    let r = plush_env(&["shell", "--local", "3"], Some(&input), &[("RUNDIR", &d)], LIMIT);
    let stdout = String::from_utf8_lossy(&r.stdout).into_owned();
    let docs: Vec<Value> = stdout.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let summary = docs.iter().find_map(|d| d.get("summary")).unwrap_or_else(|| panic!("{stdout}\n{}", r.stderr));
    assert_eq!(summary["ok"], 3, "{summary}\n{}", r.stderr);
    assert_eq!(summary["lost"], 0, "{summary}");
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let paused = docs.iter().find(|d| d["nodes"] == "127.0.0.3").expect("the paused host's result");
    assert!(paused["stdout"].as_str().is_some_and(|o| o.starts_with("out-127.0.0.3:")), "{paused}");
    for e in std::fs::read_dir(&dir).expect("the test directory").flatten() {
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        assert_eq!(text.lines().count(), 1, "{:?} ran {} times", e.file_name(), text.lines().count());
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `plush run --retry-lost` marks the job (the process sees `PLUSH_RETRY_LOST=1`); without it the
/// variable is not set.
#[test]
fn retry_lost_reaches_the_job() {
    let with =
        common::plush(&["run", "--local", "2", "--retry-lost", "--", "sh", "-c", "echo r=$PLUSH_RETRY_LOST"], LIMIT);
    assert_eq!(with.code, Some(0), "{}", with.stderr);
    assert!(String::from_utf8_lossy(&with.stdout).contains("r=1"), "{}", String::from_utf8_lossy(&with.stdout));
    let without = common::plush(&["run", "--local", "2", "--", "sh", "-c", "echo r=$PLUSH_RETRY_LOST"], LIMIT);
    assert_eq!(without.code, Some(0), "{}", without.stderr);
    assert!(String::from_utf8_lossy(&without.stdout).contains("r=\n"));
}
