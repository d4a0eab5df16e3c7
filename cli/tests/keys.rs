//! Addresses and keys (issue 17, point 5), through the built `plush` binary:
//! - `plush client --listen` refuses an unspecified address (`0.0.0.0`, `[::]`) with exit
//!   status 2 and a message naming it;
//! - every key-file error names the file: a missing file, a key that is one byte repeated
//!   (all zeros included), which is refused;
//! - a controller removes the key files that controllers no longer running left in its
//!   temporary directory (`$TMPDIR`) when it starts, and keeps those of live processes;
//! - a controller killed by SIGTERM or SIGHUP removes its key file (and dies of the signal); one
//!   killed by SIGKILL leaves it, and the next controller's start removes it.
//!
//! Each test has a temporary directory of its own (the controllers' `TMPDIR`), removed at the
//! end. Every process a test starts is killed and reaped, the clients of a killed controller
//! and their jobs included, also when an assertion fails ([`Controller`]'s drop).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A good key: 64 hex digits, not one byte repeated.
const GOOD_KEY: &str = "00112233445566778899aabbccddeeff0123456789abcdeffedcba9876543210";

/// A directory of its own under the system's temporary directory, removed on drop.
struct TestDir(PathBuf);

impl TestDir {
    fn new(name: &str) -> TestDir {
        let p = std::env::temp_dir().join(format!("plush-keys-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create the test directory");
        TestDir(p)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn str(&self) -> &str {
        self.0.to_str().expect("a UTF-8 temporary directory")
    }

    /// The names of the key files (`plush-key-*`) in the directory, sorted.
    fn key_files(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.0)
            .expect("read the test directory")
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str().map(str::to_owned))
            .filter(|n| n.starts_with("plush-key-"))
            .collect();
        v.sort();
        v
    }

    /// Write `text` to `name` in the directory with mode 0600.
    fn write_key(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        let mut f =
            std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&p).expect("create a key file");
        f.write_all(text.as_bytes()).expect("write a key file");
        p
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Poll `cond` every 20 ms until it holds or `limit` passes; whether it held.
fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let t0 = Instant::now();
    loop {
        if cond() {
            return true;
        }
        if t0.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A port nobody listens on at 127.0.0.1 now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("bind a free port").port()
}

/// The processes whose parent is `pid` (from /proc), and theirs, and so on.
fn descendants(pid: u32) -> Vec<u32> {
    let mut parent_of: Vec<(u32, u32)> = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else { continue };
            // "pid (comm) state ppid ...": comm may hold spaces, so cut after its last ')'.
            let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { continue };
            if let Some(ppid) = rest.split_whitespace().nth(1).and_then(|s| s.parse::<u32>().ok()) {
                parent_of.push((p, ppid));
            }
        }
    }
    let mut found = vec![pid];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(parent_of.iter().filter(|(_, pp)| *pp == parent).map(|(p, _)| *p));
        i += 1;
    }
    found.remove(0);
    found
}

/// Whether `pid` runs (exists and is not a zombie).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().next().map(|st| st != "Z")))
        .unwrap_or(false)
}

fn kill(pid: u32, sig: &str) {
    let _ = Command::new("kill").args([sig, &pid.to_string()]).stderr(Stdio::null()).status();
}

/// The clients a controller started with its key file in `dir`: the processes whose command
/// line names `dir/plush-key-`.
fn clients_in(dir: &TestDir) -> Vec<u32> {
    common::processes_with(&format!("{}/plush-key-", dir.str()))
}

/// Kill `pids` and everything they started (their jobs), with SIGKILL.
fn kill_all(pids: &[u32]) {
    let mut all: Vec<u32> = Vec::new();
    for &p in pids {
        all.extend(descendants(p));
        all.push(p);
    }
    for p in &all {
        kill(*p, "-KILL");
    }
}

/// A `plush run --local N -- CMD...` controller with `TMPDIR` set to a test directory. On drop
/// it is killed and reaped, and so are the clients and jobs it left behind.
struct Controller<'a> {
    dir: &'a TestDir,
    child: Child,
    stderr: Option<JoinHandle<Vec<u8>>>,
}

impl<'a> Controller<'a> {
    fn start(dir: &'a TestDir, args: &[&str]) -> Controller<'a> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_plush"))
            .args(args)
            .env("TMPDIR", dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the plush binary starts");
        let stderr = Some(common::reader(child.stderr.take().expect("piped stderr")));
        Controller { dir, child, stderr }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Wait until its `n` clients run and each has started its job (a child process).
    fn wait_for_jobs(&mut self, n: usize) {
        let ok = wait_until(Duration::from_secs(60), || {
            let clients = clients_in(self.dir);
            clients.len() == n && clients.iter().all(|&c| !descendants(c).is_empty())
        });
        assert!(ok, "{n} clients running their jobs; found {:?}; stderr: {}", clients_in(self.dir), self.stderr());
    }

    /// Send `sig` and wait (at most 20 s) for the controller to exit.
    fn signal_and_wait(&mut self, sig: &str) -> ExitStatus {
        kill(self.pid(), sig);
        let t0 = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().expect("waitpid") {
                return s;
            }
            assert!(t0.elapsed() < Duration::from_secs(20), "the controller outlived {sig} by 20 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Its stderr so far, once it has exited (empty before).
    fn stderr(&mut self) -> String {
        if !matches!(self.child.try_wait(), Ok(Some(_))) {
            return String::new();
        }
        match self.stderr.take() {
            Some(h) => String::from_utf8_lossy(&h.join().unwrap_or_default()).into_owned(),
            None => String::new(),
        }
    }
}

impl Drop for Controller<'_> {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Whatever is left of its cluster: clients (named by the key file's path) and their jobs.
        for _ in 0..50 {
            let left = clients_in(self.dir);
            if left.is_empty() {
                break;
            }
            kill_all(&left);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn client_refuses_an_unspecified_listen_address() {
    let dir = TestDir::new("unspecified");
    // A good key file: without the check, the client would start and listen.
    let key = dir.write_key("good.hex", &format!("{GOOD_KEY}\n"));
    let port = free_port();
    for addr in [format!("0.0.0.0:{port}"), format!("[::]:{port}")] {
        let ran =
            common::plush(&["client", "--listen", &addr, "--key-file", key.to_str().unwrap()], Duration::from_secs(20));
        assert_eq!(ran.code, Some(2), "--listen {addr}: exit status; stderr: {}", ran.stderr);
        assert!(ran.stderr.contains(&addr), "the message names {addr}: {}", ran.stderr);
        assert!(ran.stderr.contains("unspecified"), "the message says why: {}", ran.stderr);
    }
}

#[test]
fn a_missing_key_file_is_named() {
    let dir = TestDir::new("missing");
    let missing = dir.path().join("no-such-key.hex");
    let addr = format!("127.0.0.1:{}", free_port());
    let ran =
        common::plush(&["client", "--listen", &addr, "--key-file", missing.to_str().unwrap()], Duration::from_secs(20));
    assert_eq!(ran.code, Some(1), "stderr: {}", ran.stderr);
    assert!(ran.stderr.contains(missing.to_str().unwrap()), "the error names the key file: {}", ran.stderr);
}

#[test]
fn a_key_of_one_repeated_byte_is_refused_and_named() {
    let dir = TestDir::new("weak");
    let addr = format!("127.0.0.1:{}", free_port());
    for (name, byte) in [("zeros.hex", "00"), ("ab.hex", "ab"), ("ff.hex", "FF")] {
        let key = dir.write_key(name, &format!("{}\n", byte.repeat(32)));
        let path = key.to_str().unwrap();
        let ran = common::plush(&["client", "--listen", &addr, "--key-file", path], Duration::from_secs(20));
        assert_eq!(ran.code, Some(1), "{name}: stderr: {}", ran.stderr);
        assert!(ran.stderr.contains(path), "{name}: the error names the key file: {}", ran.stderr);
        assert!(ran.stderr.contains("one byte repeated"), "{name}: the error says why: {}", ran.stderr);
    }
    // The same file with one byte changed is a key: the client starts on it (and is killed).
    let key = dir.write_key("almost.hex", &format!("01{}\n", "00".repeat(31)));
    let mut child = Command::new(env!("CARGO_BIN_EXE_plush"))
        .args(["client", "--listen", &addr, "--key-file", key.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the plush binary starts");
    let mut line = String::new();
    let read = BufReader::new(child.stdout.take().expect("piped stdout")).read_line(&mut line);
    let _ = child.kill();
    let _ = child.wait();
    assert!(read.is_ok() && line.starts_with(plush_mio::READY_PREFIX), "the client started: {line:?}");
}

#[test]
fn a_controller_removes_stale_key_files_of_dead_controllers_only() {
    let dir = TestDir::new("stale");
    // A pid that ran and was reaped: dead.
    let mut t = Command::new("true").spawn().expect("run true");
    let dead = t.id();
    t.wait().expect("reap true");
    assert!(!Path::new(&format!("/proc/{dead}")).exists());
    let stale = format!("plush-key-{dead}-00000000deadbeef.hex");
    let live = format!("plush-key-{}-00000000cafef00d.hex", std::process::id());
    dir.write_key(&stale, &format!("{GOOD_KEY}\n"));
    dir.write_key(&live, &format!("{GOOD_KEY}\n"));
    dir.write_key("other.hex", &format!("{GOOD_KEY}\n"));

    let ran = common::plush_env(
        &["run", "--local", "2", "--", "true"],
        None,
        &[("TMPDIR", dir.str())],
        Duration::from_secs(60),
    );
    assert_eq!(ran.code, Some(0), "stderr: {}", ran.stderr);
    // The stale file is gone, the live process's kept, and the controller's own removed at exit.
    assert_eq!(dir.key_files(), vec![live], "key files left in {}", dir.str());
    assert!(dir.path().join("other.hex").exists(), "a file not named like a key file is kept");
}

/// A controller sent `sig` while its job runs: like Ctrl-C, it cancels the job, dismantles the
/// cluster and exits the ordinary way; its key file is gone and so are its clients.
fn signalled_controller_cleans_up(name: &str, sig: &str) {
    let dir = TestDir::new(name);
    let mut c = Controller::start(&dir, &["run", "--local", "3", "--", "sleep", "30"]);
    c.wait_for_jobs(3);
    assert_eq!(dir.key_files().len(), 1, "the controller's key file: {:?}", dir.key_files());
    let clients = clients_in(&dir);
    let status = c.signal_and_wait(sig);
    assert!(status.code().is_some(), "exits (not killed) on {sig}: {status:?}; stderr: {}", c.stderr());
    assert_eq!(dir.key_files(), Vec::<String>::new(), "no key file left after {sig}");
    let gone = wait_until(Duration::from_secs(30), || clients.iter().all(|&p| !alive(p)));
    assert!(gone, "{sig}: clients {clients:?} outlived the controller by 30 s");
}

#[test]
fn sigterm_removes_the_key_file_and_takes_the_clients_down() {
    signalled_controller_cleans_up("sigterm", "-TERM");
}

#[test]
fn a_lost_terminal_removes_the_key_file_and_takes_the_clients_down() {
    signalled_controller_cleans_up("sighup", "-HUP");
}

#[test]
fn sigkill_leaves_the_key_file_and_the_next_start_removes_it() {
    let dir = TestDir::new("sigkill");
    {
        let mut c = Controller::start(&dir, &["run", "--local", "3", "--", "sleep", "30"]);
        c.wait_for_jobs(3);
        let status = c.signal_and_wait("-KILL");
        assert_eq!(status.signal(), Some(9));
        let left = dir.key_files();
        assert_eq!(left.len(), 1, "SIGKILL leaves the key file: {left:?}");
        assert!(left[0].starts_with(&format!("plush-key-{}-", c.pid())), "{left:?}");
        // Its clients are killed here (they still name the file) and reaped by init.
    }
    let ran = common::plush_env(
        &["run", "--local", "2", "--", "true"],
        None,
        &[("TMPDIR", dir.str())],
        Duration::from_secs(60),
    );
    assert_eq!(ran.code, Some(0), "stderr: {}", ran.stderr);
    assert_eq!(dir.key_files(), Vec::<String>::new(), "the next start removed the stale file");
}

#[test]
fn ctrl_c_removes_the_key_file_and_takes_the_clients_down() {
    let dir = TestDir::new("sigint");
    let mut c = Controller::start(&dir, &["run", "--local", "3", "--", "sleep", "30"]);
    c.wait_for_jobs(3);
    let clients = clients_in(&dir);
    let status = c.signal_and_wait("-INT");
    // Ctrl-C cancels the job and dismantles the cluster: an ordinary exit.
    assert!(status.code().is_some(), "exits (not killed) on Ctrl-C: {status:?}; stderr: {}", c.stderr());
    assert_eq!(dir.key_files(), Vec::<String>::new(), "no key file left after Ctrl-C");
    let gone = wait_until(Duration::from_secs(30), || clients.iter().all(|&p| !alive(p)));
    assert!(gone, "clients {clients:?} outlived the controller by 30 s");
}
