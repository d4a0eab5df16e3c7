//! Issue 19, the orphaned tree: `plush run --linger 5s` whose controller is SIGKILLed. Every
//! client and every job process is gone within 5 s plus two heartbeat intervals, without anybody
//! dismantling the overlay.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::processes_with;

const HOSTS: usize = 5;
/// The linger given, and the heartbeat interval (`Config::heartbeat`).
const LINGER: Duration = Duration::from_secs(5);
const HEARTBEAT: Duration = Duration::from_secs(1);
/// How long the hosts may take to start the job.
const START_LIMIT: Duration = Duration::from_secs(60);

/// Live (not zombie) processes of process group `pgid`.
fn group_members(pgid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
            let Some(close) = s.rfind(')') else { return false };
            let f: Vec<&str> = s[close + 1..].split_whitespace().collect();
            f.first() != Some(&"Z") && f.get(2).and_then(|g| g.parse::<u32>().ok()) == Some(pgid)
        })
        .collect()
}

/// The job's process groups, as the jobs wrote them (one file per host).
fn job_groups(dir: &std::path::Path) -> Vec<u32> {
    let Ok(rd) = std::fs::read_dir(dir) else { return Vec::new() };
    rd.flatten()
        .filter(|e| e.file_name().to_str().is_some_and(|n| n.starts_with("127.")))
        .filter_map(|e| std::fs::read_to_string(e.path()).ok()?.trim().parse().ok())
        .collect()
}

/// Kill whatever is left: clients (by their key file's name) and the members of the job groups,
/// one pid at a time. Never `kill -9 -PGID`: procps-ng 4.0's kill(1) turns a negative pid into
/// `kill(-1, SIGKILL)`, every process of the user (it happened here: see the notes of issue 19).
fn reap(marker: &str, groups: &[u32]) {
    let pids = processes_with(marker).into_iter().chain(groups.iter().flat_map(|&g| group_members(g)));
    for pid in pids.filter(|&p| p > 1 && p != std::process::id()) {
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    }
}

#[test]
fn clients_whose_controller_was_killed_end_after_the_linger() {
    let dir = std::env::temp_dir().join(format!("plush-linger-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a test directory");
    // The key file goes to the test's directory too: a SIGKILLed controller leaves it.
    let tmp = dir.join("tmp");
    std::fs::create_dir_all(&tmp).expect("a temporary directory");
    let script = r#"echo $$ > "$RUNDIR/$PLUSH_NODE"; sleep 600"#;
    let hosts = HOSTS.to_string();
    let mut ctrl = Command::new(env!("CARGO_BIN_EXE_plush"))
        .args(["run", "--local", &hosts, "--linger", "5s", "--", "sh", "-c", script])
        .env("RUNDIR", &dir)
        .env("TMPDIR", &tmp)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the plush binary starts");
    let marker = format!("plush-key-{}-", ctrl.id());
    // Every host runs the job.
    let t0 = Instant::now();
    let started = loop {
        let groups = job_groups(&dir);
        if groups.len() == HOSTS {
            break Some(groups);
        }
        if t0.elapsed() > START_LIMIT || ctrl.try_wait().ok().flatten().is_some() {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let Some(groups) = started else {
        let _ = ctrl.kill();
        let _ = ctrl.wait();
        reap(&marker, &job_groups(&dir));
        panic!("the job did not start on the {HOSTS} hosts within {START_LIMIT:?}");
    };
    let clients = processes_with(&marker);
    assert_eq!(clients.len(), HOSTS, "clients {clients:?}");
    // The controller dies without a word.
    ctrl.kill().expect("SIGKILL the controller");
    ctrl.wait().expect("reap the controller");
    let killed = Instant::now();
    // Meanwhile the jobs run on (checked only when the test was not itself held up past it).
    std::thread::sleep(LINGER / 2);
    if killed.elapsed() < LINGER - HEARTBEAT {
        let c = processes_with(&marker);
        let alive = groups.iter().filter(|&&g| !group_members(g).is_empty()).count();
        if c.len() != HOSTS || alive != HOSTS {
            reap(&marker, &groups);
            panic!("before the linger ran out: {} clients and {alive} jobs left of {HOSTS}", c.len());
        }
    }
    // Poll until nothing is left, or the bound passes.
    let bound = LINGER + HEARTBEAT * 2;
    let (left_clients, left_jobs) = loop {
        let c = processes_with(&marker);
        let j: Vec<u32> = groups.iter().flat_map(|&g| group_members(g)).collect();
        if (c.is_empty() && j.is_empty()) || killed.elapsed() > bound {
            break (c, j);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    reap(&marker, &groups);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(left_clients.is_empty(), "clients {left_clients:?} still ran {bound:?} after the controller died");
    assert!(left_jobs.is_empty(), "job processes {left_jobs:?} still ran {bound:?} after the controller died");
}

/// `--linger` takes `30s`, `10m`, `2h` or seconds, from 1 s to 30 days; anything else is a usage
/// error naming the flag, before any client starts.
#[test]
fn bad_lingers_are_usage_errors() {
    for bad in ["0", "0.5s", "5x", "ten", "31d", "-3", "999h"] {
        let flag = format!("--linger={bad}");
        let r = common::plush(&["run", "--local", "1", &flag, "--", "true"], Duration::from_secs(20));
        assert_eq!(r.code, Some(2), "--linger {bad}: {}", r.stderr);
        assert!(r.stderr.contains("--linger"), "--linger {bad}: {}", r.stderr);
    }
}
