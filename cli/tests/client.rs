//! `plush client` end to end: a controller (the `plush_mio::Cluster` library) launches three
//! `plush client` processes on loopback addresses, runs a command on them and dismantles them.
//! The `Cluster` kills and reaps whatever it launched, even when an assertion fails.

use plush_core::wire::ExitStatus;
use plush_core::{HostState, NodeId};
use plush_mio::{Cluster, ClusterConfig};
use std::path::PathBuf;
use std::time::Duration;

mod common;

#[test]
fn plush_client_processes_join_run_and_exit() {
    // A port free on 127.0.0.1-3 (other test binaries use 21000-24999).
    let port = (25_000..25_500)
        .find(|&p| (0..3).all(|i| std::net::TcpListener::bind(NodeId::loopback(i, p).addr()).is_ok()))
        .expect("a free port");
    let hosts: Vec<NodeId> = (0..3).map(|i| NodeId::loopback(i, port)).collect();
    let cfg = ClusterConfig { client_program: PathBuf::from(env!("CARGO_BIN_EXE_plush")), ..ClusterConfig::default() };
    let mut c = Cluster::start(cfg).expect("start the controller");
    c.add_hosts(&hosts);
    let joined = c.wait_until(Duration::from_secs(30), |c| c.count(HostState::Joined) == 3).expect("event loop");
    assert!(joined, "{:?}", c.hosts().collect::<Vec<_>>());
    let pids = c.launched_pids();
    assert_eq!(pids.len(), 3);
    let out = c.run(&["echo", "from plush client"], Duration::from_secs(10)).expect("run");
    assert_eq!(out.result_count(), 3, "{:?}", out.groups);
    assert_eq!(out.groups.len(), 1);
    assert_eq!(out.groups[0].status, ExitStatus::Exited(0));
    assert_eq!(out.groups[0].output, b"from plush client\n");
    let d = c.dismantle(Duration::from_secs(20)).expect("dismantle");
    assert_eq!(d.killed, 0, "every client exited by itself");
    assert!(pids.iter().all(|&p| !plush_mio::process_exists(p)));
}

/// Kills, on drop, the processes whose command line holds `needle` (a detached client is no
/// child of the test).
struct KillOnDrop(String);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for pid in common::processes_with(&self.0) {
            let _ = std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status();
        }
    }
}

#[test]
fn a_detached_client_ends_its_launch_and_logs_only_when_it_has_something_to_say() {
    use std::io::{BufRead, Write};
    let port = (25_500..26_000)
        .find(|&p| std::net::TcpListener::bind(NodeId::loopback(40, p).addr()).is_ok())
        .expect("a free port");
    let addr = NodeId::loopback(40, port).addr();
    let home = std::env::temp_dir().join(format!("plush-detach-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&home);
    std::fs::create_dir_all(&home).expect("mkdir");
    let listen = addr.to_string();
    // /proc's command lines separate the arguments with NULs.
    let needle = format!("--listen\0{listen}\0");
    let _kill = KillOnDrop(needle.clone());
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_plush"))
        .args(["client", "--listen", &listen, "--key-file", "-", "--detach", "--max-children", "4"])
        .env("HOME", &home)
        .env_remove("XDG_RUNTIME_DIR")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start plush client");
    let mut stdin = child.stdin.take().expect("stdin");
    writeln!(stdin, "{}", "0123456789abcdef".repeat(4)).expect("the key");
    drop(stdin);
    let mut ready = String::new();
    std::io::BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut ready).expect("ready line");
    if !ready.starts_with("plush-client listening ") {
        let mut err = String::new();
        let _ = std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut err);
        panic!("no ready line ({ready:?}): {err}");
    }
    // The process the launcher started exits 0 once the client listens; the client goes on.
    let end = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(std::time::Instant::now() < end, "the started process did not exit");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr).expect("stderr");
    assert!(stderr.is_empty(), "the launch's stderr: {stderr}");
    assert_eq!(common::processes_with(&needle).len(), 1, "the client runs on");
    let log = home.join(format!(".cache/plush/client-{}-{port}.log", addr.ip()));
    assert!(std::net::TcpStream::connect(addr).is_ok(), "it still listens");
    // Nothing to say yet: no file.
    assert!(!log.exists(), "a log was made with nothing in it");
    // A peer that sends garbage is named in the log (the line that went to the terminal before).
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.write_all(&[0xff; 64]).expect("write");
    let end = std::time::Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&log).is_ok_and(|t| !t.is_empty()) {
        assert!(std::time::Instant::now() < end, "nothing logged in {}", log.display());
        std::thread::sleep(Duration::from_millis(20));
    }
    let text = std::fs::read_to_string(&log).expect("the log");
    assert!(text.contains(&listen), "{text}");
    let _ = std::fs::remove_dir_all(&home);
}
