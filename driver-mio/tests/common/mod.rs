//! Helpers shared by the loopback tests: client processes that are always killed and reaped,
//! free ports, key files, /proc readings.
#![allow(dead_code)]

use plush_core::NodeId;
use plush_mio::{ClusterConfig, Key};
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

/// The client binary of this package.
pub fn client_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_plush-mio-client"))
}

/// A cluster configuration that launches this package's client binary.
pub fn cluster_config() -> ClusterConfig {
    ClusterConfig { client_program: client_bin(), ..ClusterConfig::default() }
}

/// A port free on the first `n` loopback addresses (127.0.0.1 ..), searched from `start`.
/// Each test starts from its own `start`, so tests running at once do not collide.
pub fn free_port(n: u32, start: u16) -> u16 {
    'port: for port in start..start.saturating_add(500) {
        let mut held = Vec::new();
        for i in 0..n {
            match TcpListener::bind(NodeId::loopback(i, port).addr()) {
                Ok(l) => held.push(l),
                Err(_) => continue 'port,
            }
        }
        return port;
    }
    panic!("no free port from {start} on {n} loopback addresses");
}

/// A client process started by a test: killed and reaped on drop, whatever happened.
pub struct ClientGuard {
    pub child: Child,
    /// Kept open so that the client's stdout stays a pipe with a reader.
    _stdout: Option<BufReader<ChildStdout>>,
}

impl ClientGuard {
    /// Start a client at `addr` with `key_file` and wait for its ready line (or its exit).
    pub fn start(addr: NodeId, key_file: &Path) -> ClientGuard {
        let mut cmd = Command::new(client_bin());
        cmd.args(["client", "--listen", &addr.to_string(), "--key-file"]).arg(key_file);
        Self::start_command(addr, cmd)
    }

    /// The same, under a hard and soft limit of `nofile` open files (set by `sh`'s `ulimit`,
    /// which then `exec`s the client, so the pid is the client's).
    pub fn start_limited(addr: NodeId, key_file: &Path, nofile: u32) -> ClientGuard {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(format!("ulimit -n {nofile} && exec \"$0\" \"$@\""))
            .arg(client_bin())
            .args(["client", "--listen", &addr.to_string(), "--key-file"])
            .arg(key_file);
        Self::start_command(addr, cmd)
    }

    fn start_command(addr: NodeId, mut cmd: Command) -> ClientGuard {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the client binary");
        let stdout = child.stdout.take().map(BufReader::new);
        let mut g = ClientGuard { child, _stdout: stdout };
        let mut line = String::new();
        if let Some(out) = g._stdout.as_mut() {
            // The client prints its line or exits (end of stream): this read is bounded.
            let _ = out.read_line(&mut line);
        }
        assert!(line.starts_with(plush_mio::READY_PREFIX), "client at {addr} did not start: {line:?}");
        g
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Wait (bounded) for the client to exit by itself; its exit code, if it did.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s.code().unwrap_or(-1));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for ClientGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A key file of its own, removed on drop.
pub struct TempKey(pub PathBuf);

impl TempKey {
    pub fn new(tag: &str) -> TempKey {
        let p = std::env::temp_dir().join(format!("plush-test-key-{tag}-{}-{:x}", std::process::id(), rand_u64()));
        Key::generate().write_new_file(&p).expect("write a key file");
        TempKey(p)
    }
}

impl Drop for TempKey {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn rand_u64() -> u64 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    t.rotate_left(17) ^ u64::from(std::process::id())
}

/// Resident memory of a process in KiB, from /proc.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
