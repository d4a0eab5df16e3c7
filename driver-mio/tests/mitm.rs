//! A man in the middle between a real controller and a real client: every link is a secure
//! channel, so what an attacker on the path writes into a stream is refused, never obeyed.
//!
//! The proxy must be invisible at the IP level (a node's id is its address, and the hellos are
//! bound into the handshake), so the test makes a network namespace of its own, where an
//! nftables rule sends every connection to the client's or the controller's address through
//! the proxy (DNAT to a port of 127.0.0.3), and runs the scenario inside it: it starts this
//! test binary again under `ip netns exec`, with `PLUSH_MITM_INNER` set, to run the ignored
//! test `mitm_inner`. The namespace (and with it every rule and address) is deleted at the end,
//! also when the test fails. It needs root, `ip` and `nft`: without them it says so and skips,
//! except under CI (`.ci/run` installs them), where it fails.
//!
//! Case by case the proxy, on the stream from the controller to the client, flips one bit of a
//! record, injects a well-formed `Run` frame (encoded with the right format, in the clear),
//! replays an earlier record, drops a record, or swaps two. Each time: the command of the
//! injected or replayed frame does not run, the client closes that link and logs it once with
//! the reason, and the overlay carries on (the next job gets its result).

mod common;

use common::client_bin;
use plush_core::frame::encode_once;
use plush_core::wire::{ExitStatus, JobKind, JobMsg, List, Message, RunSpec, Target};
use plush_core::{HostState, NodeId};
use plush_mio::{Cluster, ClusterConfig};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const CTRL: &str = "127.0.0.1:41001";
const CLIENT: &str = "127.0.0.2:41002";
const PROXY_IP: &str = "127.0.0.3";
/// The address through which the proxy reaches the real nodes.
const ALIAS: &str = "127.0.0.4";
/// The proxy's port for connections to the client, and for connections to the controller.
const TO_CLIENT: u16 = 41101;
const TO_CTRL: u16 = 41102;

/// What the proxy does next to the stream from the controller to the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Attack {
    FlipBit,
    Inject,
    Replay,
    Drop,
    Reorder,
}

#[derive(Default)]
struct ProxyState {
    attack: Option<Attack>,
    /// The attack was carried out on a record.
    done: bool,
    /// Records seen from the controller to the client (for the replay).
    records: Vec<Vec<u8>>,
    /// Times the client's side closed a connection after an attack.
    closed_after_attack: u32,
    /// The frame the injection writes.
    inject: Vec<u8>,
    /// What the proxy saw (connections, attacks, ends), printed when the test fails.
    trace: Vec<String>,
    /// Connections accepted so far (their numbers in `trace`).
    conns: u32,
}

fn cmd_ok(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

/// The namespace, deleted on drop.
struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "delete", &self.0]).status();
    }
}

#[test]
fn a_man_in_the_middle_cannot_inject_replay_drop_or_reorder() {
    let ci = std::env::var_os("CI").is_some();
    let can = cmd_ok(Command::new("ip").arg("-V")) && cmd_ok(Command::new("nft").arg("--version"));
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false);
    if !(can && root) {
        assert!(!ci, "under CI the man-in-the-middle test needs root, ip and nft (.ci/run installs them)");
        eprintln!("skipped: needs root, `ip` (iproute2) and `nft` (nftables)");
        return;
    }
    let ns = Netns(format!("plush-mitm-{}", std::process::id()));
    assert!(cmd_ok(Command::new("ip").args(["netns", "add", &ns.0])), "ip netns add");
    assert!(cmd_ok(Command::new("ip").args(["-n", &ns.0, "link", "set", "lo", "up"])), "lo up");
    // Connections to the client or the controller go to the proxy; the proxy reaches the real
    // ones through an alias address, 127.0.0.4 (std cannot choose a connection's source address,
    // so the proxy's own connections are told apart by their destination).
    let rules = format!(
        "table ip mitm {{\n chain out {{\n  type nat hook output priority -100;\n  \
         ip daddr 127.0.0.2 tcp dport 41002 dnat to {PROXY_IP}:{TO_CLIENT}\n  \
         ip daddr 127.0.0.1 tcp dport 41001 dnat to {PROXY_IP}:{TO_CTRL}\n  \
         ip daddr {ALIAS} tcp dport 41002 dnat to 127.0.0.2:41002\n  \
         ip daddr {ALIAS} tcp dport 41001 dnat to 127.0.0.1:41001\n }}\n}}\n"
    );
    let mut nft =
        Command::new("ip").args(["netns", "exec", &ns.0, "nft", "-f", "-"]).stdin(Stdio::piped()).spawn().expect("nft");
    nft.stdin.take().expect("stdin").write_all(rules.as_bytes()).expect("rules written");
    assert!(nft.wait().is_ok_and(|s| s.success()), "nft rules");
    let exe = std::env::current_exe().expect("this test binary");
    let status = Command::new("ip")
        .args(["netns", "exec", &ns.0])
        .arg(exe)
        .args(["mitm_inner", "--exact", "--ignored", "--nocapture", "--test-threads", "1"])
        .env("PLUSH_MITM_INNER", "1")
        .status()
        .expect("the scenario inside the namespace");
    assert!(status.success(), "the scenario inside the namespace failed (see above)");
}

/// A client process whose stderr goes to a file; killed and reaped on drop.
struct Client {
    child: Child,
    log: PathBuf,
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

fn start_client(key_file: &Path, dir: &Path) -> Client {
    let log = dir.join("client.log");
    let err = std::fs::File::create(&log).expect("a log file");
    let mut child = Command::new(client_bin())
        .args(["client", "--listen", CLIENT, "--key-file"])
        .arg(key_file)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(err)
        .spawn()
        .expect("the client starts");
    let mut out = child.stdout.take().expect("stdout");
    let mut first = [0u8; 16];
    // The ready line, or the end of the stream if the client failed: bounded either way.
    let n = out.read(&mut first).unwrap_or(0);
    assert!(n > 0, "the client did not start");
    // Keep the pipe open with a reader (the client never writes more).
    thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = out.read_to_end(&mut sink);
    });
    Client { child, log }
}

/// Frames of a stream: (bytes of the frame with its prefix). Returns whole frames and keeps the
/// rest in `buf`.
fn cut(buf: &mut Vec<u8>) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        if buf.len() < 4 {
            return out;
        }
        let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if buf.len() < 4 + len {
            return out;
        }
        out.push(buf.drain(..4 + len).collect());
    }
}

/// Copy `from` to `to`. With `attacked`, this is the stream from the controller to the client:
/// its frames after the first two (the hello and the handshake message) are records, and the
/// attack in `st` is carried out on the next one.
fn pump(mut from: TcpStream, mut to: TcpStream, attacked: bool, st: Arc<Mutex<ProxyState>>, id: u32) {
    let t0 = Instant::now();
    let mut how = "read end";
    let mut buf = Vec::new();
    let mut seen = 0usize;
    let mut held: Option<Vec<u8>> = None;
    let mut chunk = [0u8; 65536];
    loop {
        let n = match from.read(&mut chunk) {
            Ok(0) => break,
            Err(_) => {
                how = "read error";
                break;
            }
            Ok(n) => n,
        };
        if !attacked {
            if to.write_all(&chunk[..n]).is_err() {
                how = "write error";
                break;
            }
            continue;
        }
        buf.extend_from_slice(&chunk[..n]);
        for f in cut(&mut buf) {
            seen += 1;
            let mut out: Vec<u8> = Vec::new();
            if seen <= 2 {
                out = f;
            } else {
                let mut s = st.lock().expect("proxy state");
                let attack = s.attack.filter(|_| !s.done);
                if attack.is_some() {
                    let m = format!("conn {id}: {attack:?} on record {seen} at {:?}", t0.elapsed());
                    s.trace.push(m);
                }
                match attack {
                    None => {
                        s.records.push(f.clone());
                        out = f;
                    }
                    Some(Attack::FlipBit) => {
                        let mut g = f;
                        let k = g.len() / 2;
                        g[k] ^= 0x04;
                        out = g;
                        s.done = true;
                    }
                    Some(Attack::Inject) => {
                        out.extend_from_slice(&s.inject);
                        out.extend_from_slice(&f);
                        s.done = true;
                    }
                    Some(Attack::Replay) => {
                        for r in &s.records {
                            out.extend_from_slice(r);
                        }
                        out.extend_from_slice(&f);
                        s.done = true;
                    }
                    Some(Attack::Drop) => {
                        s.done = true;
                    }
                    Some(Attack::Reorder) => match held.take() {
                        None => held = Some(f),
                        Some(first) => {
                            out.extend_from_slice(&f);
                            out.extend_from_slice(&first);
                            s.done = true;
                        }
                    },
                }
            }
            if !out.is_empty() && to.write_all(&out).is_err() {
                how = "write error";
                break;
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
    let mut s = st.lock().expect("proxy state");
    let m = format!("conn {id} attacked={attacked}: {how} after {seen} frames, {:?}", t0.elapsed());
    s.trace.push(m);
    if attacked && s.done {
        s.closed_after_attack += 1;
    }
}

/// Accept on `port` of the proxy's address and relay each connection to `target`.
fn proxy(port: u16, target: SocketAddr, ctrl_to_client_is_dialer: bool, st: Arc<Mutex<ProxyState>>) {
    let l = TcpListener::bind((PROXY_IP, port)).expect("the proxy listens");
    thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(a) = conn else { continue };
            // Through the alias address, which the rules send on to the real node.
            let Ok(b) = TcpStream::connect_timeout(&target, Duration::from_secs(2)) else { continue };
            let (a2, b2) = (a.try_clone().expect("clone"), b.try_clone().expect("clone"));
            let (s1, s2) = (Arc::clone(&st), Arc::clone(&st));
            let d = ctrl_to_client_is_dialer;
            let id = {
                let mut s = st.lock().expect("state");
                s.conns += 1;
                let m = format!("conn {} to {target} accepted", s.conns);
                s.trace.push(m);
                s.conns
            };
            thread::spawn(move || pump(a, b, d, s1, id));
            thread::spawn(move || pump(b2, a2, !d, s2, id));
        }
    });
}

fn wait_joined(c: &mut Cluster, host: NodeId, what: &str) {
    let ok = c
        .wait_until(Duration::from_secs(30), |c| c.count(HostState::Joined) == 1 && c.root() == Some(host))
        .expect("event loop");
    assert!(ok, "{what}: the client did not come back");
}

fn echo(c: &mut Cluster, what: &str) {
    let mut got = 0;
    for _ in 0..5 {
        let out = c.run(&["echo", "ok"], Duration::from_secs(15)).expect("run");
        got = out.result_count();
        if got == 1 && out.groups[0].output == b"ok\n" && out.groups[0].status == ExitStatus::Exited(0) {
            return;
        }
        thread::sleep(Duration::from_millis(500));
    }
    panic!("{what}: the overlay did not carry on ({got} results)");
}

#[test]
#[ignore = "runs inside the namespace that a_man_in_the_middle_cannot_inject_replay_drop_or_reorder makes"]
fn mitm_inner() {
    assert!(std::env::var_os("PLUSH_MITM_INNER").is_some(), "run by the namespace test only");
    let dir = std::env::temp_dir().join(format!("plush-mitm-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a work dir");
    // Removed when the test ends, also when it fails (declared first: dropped last).
    let _dir = RemoveOnDrop(dir.clone());
    let marker = dir.join("runs");
    let pwned = dir.join("pwned");
    let st = Arc::new(Mutex::new(ProxyState::default()));
    let ctrl: SocketAddr = CTRL.parse().expect("an address");
    let client: SocketAddr = CLIENT.parse().expect("an address");
    let alias = |a: SocketAddr| SocketAddr::new(ALIAS.parse().expect("an address"), a.port());
    proxy(TO_CLIENT, alias(client), true, Arc::clone(&st));
    proxy(TO_CTRL, alias(ctrl), false, Arc::clone(&st));

    let mut c =
        Cluster::start(ClusterConfig { listen: ctrl, client_program: client_bin(), ..ClusterConfig::default() })
            .expect("the controller starts");
    let _client = start_client(c.key_file(), &dir);
    let host = NodeId::new(client);
    c.add_hosts(&[host]);
    wait_joined(&mut c, host, "start");
    echo(&mut c, "before any attack");

    // A command that leaves a line per run, and a frame of the attacker's that would run another.
    let line = format!("echo run >> {}", marker.display());
    let out = c.run(&["sh", "-c", &line], Duration::from_secs(15)).expect("run");
    assert_eq!(out.result_count(), 1);
    let spec = RunSpec {
        job: 999_999,
        kind: JobKind::Command,
        target: Target::All,
        argv: List(vec!["sh".into(), "-c".into(), format!("touch {}", pwned.display())]),
        env: List(Vec::new()),
        cwd: None,
        timeout_ms: 10_000,
        stream: false,
        push: None,
        max_output: 0,
    };
    st.lock().expect("state").inject =
        encode_once(&Message::Job(JobMsg::Run(Box::new(spec)))).expect("encodes").to_vec();

    let log_of = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    let mut refusals = log_of(&_client.log).matches("closing the link").count();
    for attack in [Attack::FlipBit, Attack::Inject, Attack::Replay, Attack::Drop, Attack::Reorder] {
        {
            let mut s = st.lock().expect("state");
            s.attack = Some(attack);
            s.trace.push(format!("arm {attack:?}"));
            s.done = false;
            s.closed_after_attack = 0;
        }
        // Heartbeats flow every second: the attack lands on one within a few.
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            let s = st.lock().expect("state");
            if s.done && s.closed_after_attack > 0 {
                break;
            }
            drop(s);
            assert!(Instant::now() < end, "{attack:?}: the attacked link was not closed");
            c.wait_until(Duration::from_millis(100), |_| false).expect("event loop");
        }
        st.lock().expect("state").attack = None;
        wait_joined(&mut c, host, &format!("{attack:?}"));
        echo(&mut c, &format!("after {attack:?}"));
        let now = log_of(&_client.log).matches("closing the link").count();
        if now <= refusals {
            let trace = st.lock().expect("state").trace.join("\n");
            panic!(
                "{attack:?}: the client did not log the refused record\nproxy:\n{trace}\nclient:\n{}\n{:?}\n{:?}",
                log_of(&_client.log),
                c.controller_stats(),
                c.driver_stats()
            );
        }
        refusals = now;
    }
    assert!(!pwned.exists(), "the injected command ran");
    assert_eq!(log_of(&marker).lines().count(), 1, "the replayed command ran again");
    let log = log_of(&_client.log);
    eprintln!("the client's log:\n{log}");
    assert!(log.contains(CTRL), "the log names the peer: {log}");
    c.dismantle(Duration::from_secs(10)).expect("dismantle");
}

/// A directory removed on drop.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
