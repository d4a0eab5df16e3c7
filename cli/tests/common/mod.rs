//! Helpers of the tests that run the `plush` binary: each run is bounded in time (killed past
//! its limit) and checked for leftovers: the clients of a run are the processes whose command
//! line names its key file, `plush-key-<pid>-...`; any found once the run exited are killed,
//! and the test fails.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What one `plush` run gave.
pub struct Ran {
    pub code: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: String,
    pub took: Duration,
}

/// Processes whose command line contains `needle` (read from /proc).
pub fn processes_with(needle: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()))
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| String::from_utf8_lossy(&c).contains(needle))
        })
        .collect()
}

pub fn reader(mut from: impl Read + Send + 'static) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = from.read_to_end(&mut v);
        v
    })
}

/// Run `plush` with `args`, killed after `limit`; fail if it ran that long or left a client.
pub fn plush(args: &[&str], limit: Duration) -> Ran {
    plush_with_input(args, None, limit)
}

/// [`plush`] with `input` on its stdin (closed after it), or stdin from /dev/null.
pub fn plush_with_input(args: &[&str], input: Option<&str>, limit: Duration) -> Ran {
    plush_env(args, input, &[], limit)
}

/// [`plush_with_input`] with extra environment variables.
pub fn plush_env(args: &[&str], input: Option<&str>, env: &[(&str, &str)], limit: Duration) -> Ran {
    let t0 = Instant::now();
    let mut child: Child = Command::new(env!("CARGO_BIN_EXE_plush"))
        .args(args)
        .envs(env.iter().copied())
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the plush binary starts");
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        // Written whole, then closed: the shell reads to the end of its input.
        let text = text.to_owned();
        std::thread::spawn(move || {
            let _ = stdin.write_all(text.as_bytes());
        });
    }
    let out = reader(child.stdout.take().expect("piped stdout"));
    let err = reader(child.stderr.take().expect("piped stderr"));
    let marker = format!("plush-key-{}-", child.id());
    let mut timed_out = false;
    let status = loop {
        if let Some(s) = child.try_wait().expect("waitpid") {
            break s;
        }
        if t0.elapsed() > limit {
            timed_out = true;
            let _ = child.kill();
            break child.wait().expect("reap the killed run");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = t0.elapsed();
    // The run is reaped; anything still naming its key file is a leftover client.
    let left = processes_with(&marker);
    for pid in &left {
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    }
    let stdout = out.join().expect("stdout reader");
    let stderr = String::from_utf8_lossy(&err.join().expect("stderr reader")).into_owned();
    assert!(!timed_out, "plush {args:?} ran past {limit:?}; stderr: {stderr}");
    assert!(left.is_empty(), "plush {args:?} left clients {left:?} running; stderr: {stderr}");
    Ran { code: status.code(), stdout, stderr, took }
}
