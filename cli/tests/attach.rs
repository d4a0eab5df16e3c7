//! Issue 19: a controller that dies mid-job, and `plush attach` taking its session over.
//!
//! Real processes: `plush run --local N` is SIGKILLed while its job runs, clients are killed
//! while no controller watches, and `plush attach` must print every survivor's result exactly
//! once, name the killed hosts lost, exit as `plush run` would, and leave no client behind.
//! Every process a test starts is killed and reaped on the way out, failed assertions included
//! (see [`Run`]); every wait is bounded.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{plush, plush_with_input, processes_with, reader};

const LIMIT: Duration = Duration::from_secs(90);

/// A `plush run` started in the background, with its clients (found by the key file its
/// command lines name): all killed when dropped.
struct Run {
    child: Child,
    marker: String,
    out: Option<std::thread::JoinHandle<Vec<u8>>>,
}

impl Run {
    fn start(state: &Path, args: &[&str]) -> Run {
        Run::start_cmd("run", state, args)
    }

    /// `plush CMD --state-dir STATE ARGS...`, its stdin a pipe kept open (a shell waits on it).
    fn start_cmd(cmd: &str, state: &Path, args: &[&str]) -> Run {
        let mut child = Command::new(env!("CARGO_BIN_EXE_plush"))
            .arg(cmd)
            .arg("--state-dir")
            .arg(state)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("plush run starts");
        let marker = format!("plush-key-{}-", child.id());
        let out = Some(reader(child.stdout.take().expect("piped stdout")));
        Run { child, marker, out }
    }

    /// SIGKILL the controller and reap it; what it had printed.
    fn kill_controller(&mut self) -> Vec<u8> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.out.take().map(|h| h.join().unwrap_or_default()).unwrap_or_default()
    }

    /// Its clients still running (zombies have no command line, and do not count).
    fn clients(&self) -> Vec<u32> {
        processes_with(&self.marker)
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for pid in processes_with(&self.marker) {
            kill9(pid);
        }
    }
}

fn kill9(pid: u32) {
    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
}

/// A fresh state directory for one test, removed at the end.
struct State(PathBuf);

impl State {
    fn new(tag: &str) -> State {
        let d = std::env::temp_dir().join(format!("plush-attach-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("a state directory");
        State(d)
    }
    fn arg(&self) -> &str {
        self.0.to_str().expect("a UTF-8 temporary path")
    }
}

impl Drop for State {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `plush sessions --json --no-probe` in `state`: one object per session.
fn sessions(state: &str) -> Vec<Value> {
    let r = plush(&["sessions", "--json", "--no-probe", "--state-dir", state], Duration::from_secs(20));
    assert_eq!(r.code, Some(0), "plush sessions: {}", r.stderr);
    String::from_utf8_lossy(&r.stdout).lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect()
}

/// Poll the session journal (at most `limit`) until `ready` holds for the only session.
fn wait_session(state: &str, limit: Duration, ready: impl Fn(&Value) -> bool) -> Value {
    let end = Instant::now() + limit;
    loop {
        if let Some(s) = sessions(state).into_iter().next() {
            if ready(&s) {
                return s;
            }
        }
        assert!(Instant::now() < end, "the session never got ready within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Wait (bounded) until none of `pids` runs (zombies excepted).
fn wait_gone(pids: &[u32], limit: Duration) -> bool {
    let end = Instant::now() + limit;
    loop {
        let alive = pids.iter().any(|p| std::fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| !c.is_empty()));
        if !alive {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Issue 19's test: 200 local clients run a 10 s job; the controller is SIGKILLed 3 s into it;
/// while it is down a quarter of the clients, the root among them, are SIGKILLed; `plush attach`
/// then prints every survivor's result exactly once, names the killed hosts lost, exits 255 (as
/// `plush run` would with lost hosts), and no client is left once it dismantled.
#[test]
fn an_attach_after_the_controller_and_a_quarter_of_the_hosts_died_prints_every_survivor_once() {
    let state = State::new("crash");
    let mut run = Run::start(&state.0, &["--local", "200", "--", "sh", "-c", "echo out-$PLUSH_NODE; sleep 10"]);
    // The job is journaled once it started (at the first join), and again, expecting every
    // host, once they all joined (each ran it as it joined).
    let s = wait_session(state.arg(), LIMIT, |s| s["jobs"][0]["expected"] == 200);
    let started = Instant::now();
    assert_eq!(s["states"]["joined"], 200, "every host joined: {s}");
    std::thread::sleep(Duration::from_secs(3).saturating_sub(started.elapsed()));
    let printed = run.kill_controller();
    assert!(printed.is_empty(), "nothing was printed before the crash: {}", String::from_utf8_lossy(&printed));

    let s = sessions(state.arg()).into_iter().next().expect("the session is left behind");
    let root = s["root"].as_str().expect("a root in the journal").to_owned();
    let clients: Vec<(String, u32)> = s["clients"]
        .as_array()
        .expect("the clients in the journal")
        .iter()
        .map(|c| (c["host"].as_str().unwrap_or_default().to_owned(), c["pid"].as_u64().unwrap_or(0) as u32))
        .collect();
    assert_eq!(clients.len(), 200);
    // A quarter: the root, and every fourth other host.
    let mut killed: Vec<(String, u32)> = clients.iter().filter(|(h, _)| *h == root).cloned().collect();
    killed.extend(clients.iter().filter(|(h, _)| *h != root).step_by(4).take(49).cloned());
    assert_eq!(killed.len(), 50);
    for (_, pid) in &killed {
        kill9(*pid);
    }
    let killed_pids: Vec<u32> = killed.iter().map(|k| k.1).collect();
    assert!(wait_gone(&killed_pids, Duration::from_secs(10)), "the killed clients died");

    let t0 = Instant::now();
    let r = plush(&["attach", "--state-dir", state.arg()], LIMIT);
    let took = t0.elapsed();
    let stdout = String::from_utf8_lossy(&r.stdout).into_owned();
    for (host, _) in &clients {
        let line = format!("out-{host}");
        let n = stdout.lines().filter(|l| *l == line).count();
        let ip = host.rsplit_once(':').map_or(host.as_str(), |(ip, _)| ip);
        if killed.iter().any(|(h, _)| h == host) {
            assert_eq!(n, 0, "{host} was killed before its job ended");
            assert!(r.stderr.contains(&format!("plush: {ip}: lost")), "{host} is named lost: {}", r.stderr);
        } else {
            assert_eq!(n, 1, "{host}'s result is printed once: {stdout}\n{}", r.stderr);
        }
    }
    assert_eq!(r.code, Some(255), "as plush run with lost hosts: {}", r.stderr);
    assert!(run.clients().is_empty(), "clients left after the dismantle: {:?}", run.clients());
    assert!(sessions(state.arg()).is_empty(), "the finished session's journal is removed");
    eprintln!("attach took {:.1} s", took.as_secs_f64());
}

/// The start of each record of a journal file (after its 8-byte magic), with its payload's first
/// byte (the record's kind: 7 is a result).
fn records(bytes: &[u8]) -> Vec<(usize, usize, u8)> {
    let mut v = Vec::new();
    let mut at = 8;
    while at + 8 <= bytes.len() {
        let len = u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]) as usize;
        if at + 8 + len > bytes.len() {
            break;
        }
        v.push((at, len, bytes[at + 8]));
        at += 8 + len;
    }
    v
}

/// A real journal cut at every byte offset of its last records still reads (`plush sessions`
/// never fails on it, and never counts more results than the whole journal holds), and
/// `plush attach` on a journal torn in the middle of a result record shows every host's result
/// exactly once: the torn result was never acknowledged, so the tree re-sends it.
#[test]
fn a_torn_journal_reads_at_every_offset_and_attach_shows_each_result_once() {
    let state = State::new("torn");
    let script =
        "case $PLUSH_NODE in 127.0.0.[123]:*) echo fast-$PLUSH_NODE;; *) sleep 5; echo slow-$PLUSH_NODE;; esac";
    let mut run = Run::start(&state.0, &["--local", "6", "--", "sh", "-c", script]);
    let s = wait_session(state.arg(), LIMIT, |s| s["jobs"][0]["results"].as_u64().is_some_and(|n| n >= 3));
    let printed = run.kill_controller();
    assert!(printed.is_empty());
    let dir = PathBuf::from(s["dir"].as_str().expect("the session's directory"));
    let id = s["id"].as_str().expect("an id").to_owned();
    let journal = dir.join("journal");
    let bytes = std::fs::read(&journal).expect("the journal");
    let recs = records(&bytes);
    let whole = sessions(state.arg()).into_iter().next().expect("the session");
    let results = whole["jobs"][0]["results"].as_u64().expect("results");
    assert!(results >= 3);

    // Every offset from the start of the third last record to the end, in a scratch state dir.
    let scratch = State::new("torn-scratch");
    let copy = scratch.0.join("plush/sessions").join(&id);
    std::fs::create_dir_all(&copy).expect("a scratch session");
    std::fs::copy(dir.join("key"), copy.join("key")).expect("the key");
    let from = recs[recs.len().saturating_sub(3)].0;
    for cut in from..=bytes.len() {
        std::fs::write(copy.join("journal"), &bytes[..cut]).expect("a torn copy");
        let v = sessions(scratch.arg());
        assert_eq!(v.len(), 1, "cut at {cut}");
        let n = v[0]["jobs"][0]["results"].as_u64().unwrap_or(0);
        assert!(n <= results, "cut at {cut}: {n} results of {results}");
    }

    // Tear the last result record in its middle, and attach.
    let (at, len, _) = *recs.iter().rev().find(|r| r.2 == 7).expect("a result record");
    std::fs::write(&journal, &bytes[..at + 8 + len / 2]).expect("the torn journal");
    let r = plush(&["attach", "--state-dir", state.arg()], LIMIT);
    let stdout = String::from_utf8_lossy(&r.stdout).into_owned();
    assert!(r.stderr.contains("were torn by the crash"), "{}", r.stderr);
    for i in 1..=6 {
        let kind = if i <= 3 { "fast" } else { "slow" };
        let prefix = format!("{kind}-127.0.0.{i}:");
        let n = stdout.lines().filter(|l| l.starts_with(&prefix)).count();
        assert_eq!(n, 1, "127.0.0.{i}'s result once: {stdout}\n{}", r.stderr);
    }
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(run.clients().is_empty(), "clients left: {:?}", run.clients());
}

/// A `plush shell` killed while a background job runs: `plush attach` gives the prompt back
/// with the job as a background job, and `wait` prints each host's result once.
#[test]
fn an_attached_shell_gives_the_prompt_back_and_waits_for_its_background_job() {
    let state = State::new("shell");
    let mut sh = Run::start_cmd("shell", &state.0, &["--local", "4"]);
    let mut stdin = sh.child.stdin.take().expect("piped stdin");
    use std::io::Write;
    stdin.write_all(b"run --bg sh -c 'sleep 3; echo bg-$PLUSH_NODE'\n").expect("the shell reads");
    stdin.flush().expect("flushed");
    wait_session(state.arg(), LIMIT, |s| s["jobs"].as_array().is_some_and(|j| !j.is_empty()));
    sh.kill_controller();
    drop(stdin);
    let r = plush_with_input(&["attach", "--state-dir", state.arg()], Some("wait\n"), LIMIT);
    let stdout = String::from_utf8_lossy(&r.stdout).into_owned();
    assert!(stdout.contains("job 1 taken over"), "{stdout}\n{}", r.stderr);
    for i in 1..=4 {
        let prefix = format!("bg-127.0.0.{i}:");
        let n = stdout.lines().filter(|l| l.starts_with(&prefix)).count();
        assert_eq!(n, 1, "127.0.0.{i}'s result once: {stdout}\n{}", r.stderr);
    }
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(sh.clients().is_empty(), "clients left: {:?}", sh.clients());
    assert!(sessions(state.arg()).is_empty(), "the session ended");
}

/// A `plush apply` killed during its second phase (which ends in a barrier): `plush attach`
/// opens the barrier again, prints the phases that ran, runs the third, and exits 0.
#[test]
fn an_attached_application_goes_on_with_its_later_phases() {
    let state = State::new("apply");
    let file = state.0.join("app.toml");
    let app = r#"[hosts]
local = 4
[[phase]]
name = "one"
run = ["sh", "-c", "echo one-$PLUSH_NODE"]
[[phase]]
name = "two"
run = ["sh", "-c", "sleep 3; echo two-$PLUSH_NODE"]
barrier = { threshold = 1.0, timeout = 30 }
[[phase]]
name = "three"
run = ["sh", "-c", "echo three-$PLUSH_NODE"]
"#;
    std::fs::write(&file, app).expect("the application file");
    let file = file.to_str().expect("a UTF-8 path").to_owned();
    let mut ap = Run::start_cmd("apply", &state.0, &[&file]);
    wait_session(state.arg(), LIMIT, |s| s["jobs"].as_array().is_some_and(|j| j.len() >= 2));
    ap.kill_controller();
    let r = plush(&["attach", "--state-dir", state.arg()], LIMIT);
    let stdout = String::from_utf8_lossy(&r.stdout).into_owned();
    for phase in ["one", "two", "three"] {
        assert_eq!(stdout.lines().filter(|l| *l == format!("=== phase {phase} (4 hosts)")).count(), 1, "{stdout}");
        for i in 1..=4 {
            let prefix = format!("{phase}-127.0.0.{i}:");
            let n = stdout.lines().filter(|l| l.starts_with(&prefix)).count();
            assert_eq!(n, 1, "phase {phase} on 127.0.0.{i} once: {stdout}\n{}", r.stderr);
        }
    }
    assert!(r.stderr.contains("going on with"), "{}", r.stderr);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(ap.clients().is_empty(), "clients left: {:?}", ap.clients());
}
