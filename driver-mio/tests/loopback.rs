//! End-to-end tests on loopback: real processes, real sockets, the real handshake.
//!
//! Every process a test starts is killed and reaped even when the test fails (guards with
//! `Drop`; the `Cluster` kills its launched clients on drop), and every wait is bounded.

mod common;

use common::{client_bin, cluster_config, free_port, rss_kib, ClientGuard, TempKey};
use plush_core::frame::{encode_hello, encode_once, PREFIX};
use plush_core::wire::{ControlMsg, ExitStatus, Hello, Message, Role, TreeMsg};
use plush_core::{HostState, NodeId};
use plush_mio::{process_exists, Cluster};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn states(c: &Cluster) -> String {
    c.hosts().map(|(id, h)| format!("{id}: {:?} {:?}", h.state, h.why)).collect::<Vec<_>>().join(", ")
}

#[test]
fn twenty_local_clients_run_hostname() {
    let _ = plush_mio::raise_fd_limit();
    let port = free_port(20, 21_000);
    let hosts: Vec<NodeId> = (0..20).map(|i| NodeId::loopback(i, port)).collect();
    let mut c = Cluster::start(cluster_config()).expect("start the controller");
    let t0 = Instant::now();
    c.add_hosts(&hosts);
    let all = c.wait_until(Duration::from_secs(60), |c| c.count(HostState::Joined) == 20).expect("event loop");
    assert!(all, "not all joined: {}", states(&c));
    let joined_in = t0.elapsed();
    let pids = c.launched_pids();
    assert_eq!(pids.len(), 20, "one launched client per host");
    let rss: Vec<u64> = pids.iter().filter_map(|&p| rss_kib(p)).collect();

    let out = c.run(&["hostname"], Duration::from_secs(10)).expect("run");
    let want = std::process::Command::new("hostname").output().expect("hostname here").stdout;
    assert!(out.missing.is_empty(), "missing results: {:?}", out.missing);
    assert_eq!(out.result_count(), 20, "{:?}", out.groups);
    assert_eq!(out.groups.len(), 1, "identical results merge into one group: {:?}", out.groups);
    assert_eq!(out.groups[0].status, ExitStatus::Exited(0));
    assert_eq!(out.groups[0].output, want);
    assert_eq!(out.groups[0].nodes, hosts);
    let second = c.run(&["sh", "-c", "echo out; echo err >&2; exit 3"], Duration::from_secs(10)).expect("run");
    assert_eq!(second.result_count(), 20);
    assert_eq!(second.groups.len(), 1);
    assert_eq!(second.groups[0].status, ExitStatus::Exited(3));

    let d = c.dismantle(Duration::from_secs(30)).expect("dismantle");
    eprintln!(
        "20 clients: all joined in {joined_in:?}; `hostname` answered by all in {:?} ({} result reports); \
         dismantled in {:?} ({} exited, {} killed); client RSS KiB min {} max {}; controller {:?}",
        out.elapsed,
        out.reports,
        d.elapsed,
        d.exited,
        d.killed,
        rss.iter().min().unwrap_or(&0),
        rss.iter().max().unwrap_or(&0),
        c.driver_stats(),
    );
    assert_eq!(d.killed, 0, "every client exited by itself");
    for pid in pids {
        assert!(!process_exists(pid), "client {pid} still exists");
    }
}

#[test]
fn a_wrong_key_cannot_join() {
    let port = free_port(4, 22_000);
    let hosts: Vec<NodeId> = (0..4).map(|i| NodeId::loopback(i, port)).collect();
    let bad_key = TempKey::new("wrong");
    let mut bad = ClientGuard::start(hosts[2], &bad_key.0);
    let mut cfg = cluster_config();
    // Let a host that cannot be reached fail within the test, with its reason.
    cfg.core.invitation_expiry = Duration::from_secs(3);
    cfg.core.join_retry = Duration::from_secs(1);
    let mut c = Cluster::start(cfg).expect("start the controller");
    c.add_hosts(&hosts);
    let others = c
        .wait_until(Duration::from_secs(30), |c| {
            [0, 1, 3].iter().all(|&i| c.host(&hosts[i]).is_some_and(|h| h.state == HostState::Joined))
        })
        .expect("event loop");
    assert!(others, "the hosts with the right key should join: {}", states(&c));
    let failed = c
        .wait_until(Duration::from_secs(30), |c| c.host(&hosts[2]).is_some_and(|h| h.state == HostState::Failed))
        .expect("event loop");
    let h = c.host(&hosts[2]);
    assert!(failed, "the wrong-key host should end failed: {}", states(&c));
    let h = h.expect("known");
    assert!(h.joined_at.is_none(), "never joined");
    assert!(h.why.is_some(), "a failure keeps its reason");
    eprintln!("wrong-key host: {:?} ({:?}); failures: {:?}", h.state, h.why, c.failures());
    assert!(bad.alive(), "refused handshakes do not bring the client down");
    let out = c.run(&["echo", "hi"], Duration::from_secs(10)).expect("run");
    assert_eq!(out.result_count(), 3, "{:?}", out.groups);
    assert!(out.groups.iter().all(|g| !g.nodes.contains(&hosts[2])));
    let pids = c.launched_pids();
    c.dismantle(Duration::from_secs(30)).expect("dismantle");
    for pid in pids {
        assert!(!process_exists(pid), "client {pid} still exists");
    }
}

/// Write `bytes` on a fresh connection to `to` and expect the client to close it within
/// `within` (end of stream or a reset). Returns what it sent before closing.
fn expect_closed(to: NodeId, bytes: &[u8], within: Duration) -> Vec<u8> {
    let mut s = TcpStream::connect(to.addr()).expect("connect to the client");
    s.write_all(bytes).expect("write");
    read_until_closed(&mut s, within)
}

fn read_until_closed(s: &mut TcpStream, within: Duration) -> Vec<u8> {
    let end = Instant::now() + within;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = end.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "the client did not close the connection within {within:?}");
        s.set_read_timeout(Some(left)).expect("timeout");
        match s.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return got,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(e) => panic!("read: {e}"),
        }
    }
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut v = (payload.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(payload);
    v
}

#[test]
fn garbage_closes_only_that_connection() {
    let port = free_port(1, 23_000);
    let host = NodeId::loopback(0, port);
    let mut c = Cluster::start(cluster_config()).expect("start the controller");
    let mut client = ClientGuard::start(host, c.key_file());
    let quick = Duration::from_secs(3);

    // A connection that says nothing is closed at the handshake timeout; checked at the end.
    let mut silent = TcpStream::connect(host.addr()).expect("connect");
    let silent_since = Instant::now();

    // Random bytes in a well-formed frame: not a hello.
    let noise: Vec<u8> = (0..40u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let hello = expect_closed(host, &frame(&noise), quick);
    assert!(Hello::decode(&hello[PREFIX..]).is_ok(), "the client greets first");
    // Random bytes whose first four announce a huge frame.
    expect_closed(host, &[0xc3, 0x9a, 0x11, 0x07, 1, 2, 3, 4, 5, 6, 7, 8], quick);
    // An oversized length prefix, exactly one past the maximum frame; and one past the largest
    // handshake message, which is all a connection may send before its handshake is done.
    expect_closed(host, &((1u32 << 20) + 1).to_be_bytes(), quick);
    expect_closed(host, &((plush_mio::secure::MAX_HANDSHAKE_FRAME as u32) + 1).to_be_bytes(), quick);
    // A valid message before any hello: an invitation from a stranger.
    let setpeer = Message::Control(ControlMsg::SetPeer { host, ctrl: NodeId::loopback(200, 9) });
    expect_closed(host, &encode_once(&setpeer).expect("encode"), quick);
    expect_closed(host, &encode_once(&Message::Tree(TreeMsg::Heartbeat)).expect("encode"), quick);
    // A proper hello, then a message where the Noise handshake message belongs.
    let me = NodeId::loopback(201, 9);
    let mut bytes = encode_hello(&Hello::new(me, Role::Controller, 7));
    bytes.extend_from_slice(&encode_once(&setpeer).expect("encode"));
    expect_closed(host, &bytes, quick);
    // A proper hello and a handshake message made without the key.
    let mut bytes = encode_hello(&Hello::new(me, Role::Controller, 8));
    bytes.extend_from_slice(&frame(&[0x5a; 32]));
    expect_closed(host, &bytes, quick);
    // A hello of another protocol version.
    let mut old = Hello::new(me, Role::Client, 9);
    old.protocol_version = 999;
    expect_closed(host, &encode_hello(&old), quick);

    read_until_closed(&mut silent, Duration::from_secs(10));
    let silent_for = silent_since.elapsed();
    assert!(silent_for >= Duration::from_secs(4), "closed after the handshake timeout, not at once: {silent_for:?}");
    assert!(client.alive(), "garbage does not bring the client down");

    // The client still serves a proper controller.
    c.add_hosts(&[host]);
    let joined = c.wait_until(Duration::from_secs(20), |c| c.count(HostState::Joined) == 1).expect("event loop");
    assert!(joined, "{}", states(&c));
    let out = c.run(&["echo", "hi"], Duration::from_secs(10)).expect("run");
    assert_eq!(out.result_count(), 1, "{:?}", out.groups);
    assert_eq!(out.groups[0].output, b"hi\n");
    assert_eq!(out.groups[0].status, ExitStatus::Exited(0));
    assert!(c.launched_pids().is_empty(), "nothing had to be launched");
    c.dismantle(Duration::from_secs(10)).expect("dismantle");
    assert_eq!(client.wait_exit(Duration::from_secs(10)), Some(0), "the client exits when dismantled");
    let _ = client_bin();
}

#[test]
fn running_out_of_file_descriptors_is_not_fatal() {
    let port = free_port(1, 24_000);
    let host = NodeId::loopback(0, port);
    let mut c = Cluster::start(cluster_config()).expect("start the controller");
    // 48 descriptors: stdio, the poll and listener descriptors, and some 40 connections.
    let mut client = ClientGuard::start_limited(host, c.key_file(), 48);
    let mut conns = Vec::new();
    for _ in 0..80 {
        // The kernel completes these into the listen backlog whether or not the client accepts.
        conns.push(TcpStream::connect(host.addr()).expect("connect"));
    }
    // Which of them got the client's hello, i.e. were accepted before descriptors ran out.
    let mut greeted = 0;
    for s in &mut conns {
        s.set_read_timeout(Some(Duration::from_millis(50))).expect("timeout");
        let mut b = [0u8; 64];
        if matches!(s.read(&mut b), Ok(n) if n > 0) {
            greeted += 1;
        }
    }
    assert!(greeted > 0 && greeted < 80, "the client accepted {greeted} of 80 with 48 descriptors");
    assert!(client.alive(), "running out of descriptors does not end the client");
    drop(conns);
    // Once descriptors are free again the client serves a controller as before.
    c.add_hosts(&[host]);
    let joined = c.wait_until(Duration::from_secs(20), |c| c.count(HostState::Joined) == 1).expect("event loop");
    assert!(joined, "{}", states(&c));
    let out = c.run(&["echo", "still here"], Duration::from_secs(10)).expect("run");
    assert_eq!(out.result_count(), 1, "{:?}", out.groups);
    assert_eq!(out.groups[0].output, b"still here\n");
    c.dismantle(Duration::from_secs(10)).expect("dismantle");
    assert_eq!(client.wait_exit(Duration::from_secs(10)), Some(0), "the client exits when dismantled");
    eprintln!("fd exhaustion: {greeted} of 80 connections accepted under a limit of 48");
}

#[test]
fn jobs_past_their_timeout_are_killed_and_spawn_failures_reported() {
    let port = free_port(3, 26_000);
    let hosts: Vec<NodeId> = (0..3).map(|i| NodeId::loopback(i, port)).collect();
    let mut c = Cluster::start(cluster_config()).expect("start the controller");
    c.add_hosts(&hosts);
    let all = c.wait_until(Duration::from_secs(30), |c| c.count(HostState::Joined) == 3).expect("event loop");
    assert!(all, "{}", states(&c));

    // Each job prints its pid, then a grandchild holds the pipes while the shell sleeps.
    let t = Instant::now();
    let out = c.run(&["sh", "-c", "echo $$; sleep 30 & sleep 30"], Duration::from_secs(1)).expect("run");
    assert!(t.elapsed() < Duration::from_secs(8), "results came back at the timeout: {:?}", t.elapsed());
    assert_eq!(out.result_count(), 3, "{:?}", out.groups);
    let mut pids = Vec::new();
    for g in &out.groups {
        assert_eq!(g.status, ExitStatus::TimedOut, "{g:?}");
        let text = String::from_utf8_lossy(&g.output);
        pids.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
    }
    assert_eq!(pids.len(), 3, "{:?}", out.groups);
    // The whole process group went: the shells and their background sleeps.
    let gone = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(20));
        pids.iter().all(|&p| !process_exists(p))
    });
    assert!(gone, "timed-out jobs still run: {pids:?}");

    let out = c.run(&["/nonexistent/plush-test-command"], Duration::from_secs(5)).expect("run");
    assert_eq!(out.result_count(), 3);
    assert_eq!(out.groups.len(), 1);
    assert_eq!(out.groups[0].status, ExitStatus::SpawnFailed);

    let launched = c.launched_pids();
    let d = c.dismantle(Duration::from_secs(20)).expect("dismantle");
    assert_eq!(d.killed, 0);
    assert!(launched.iter().all(|&p| !process_exists(p)));
}

/// A measurement, not a check run by default: `PLUSH_MIO_CLIENTS=N cargo test --release -p
/// plush-mio --test loopback many_local_clients -- --ignored --nocapture` (default 200).
#[test]
#[ignore]
fn many_local_clients() {
    let _ = plush_mio::raise_fd_limit();
    let n: u32 = std::env::var("PLUSH_MIO_CLIENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(200);
    let port = free_port(n, 27_000);
    let hosts: Vec<NodeId> = (0..n).map(|i| NodeId::loopback(i, port)).collect();
    let mut c = Cluster::start(cluster_config()).expect("start the controller");
    let t0 = Instant::now();
    c.add_hosts(&hosts);
    let all = c.wait_until(Duration::from_secs(300), |c| c.count(HostState::Joined) == n as usize).expect("loop");
    let joined_in = t0.elapsed();
    assert!(all, "{} of {n} joined in {joined_in:?}; failures {:?}", c.count(HostState::Joined), c.failures());
    let pids = c.launched_pids();
    let rss: Vec<u64> = pids.iter().filter_map(|&p| rss_kib(p)).collect();
    let out = c.run(&["hostname"], Duration::from_secs(30)).expect("run");
    assert_eq!(out.result_count(), n as usize, "missing {:?}", out.missing.len());
    let out2 = c.run(&["true"], Duration::from_secs(30)).expect("run");
    let d = c.dismantle(Duration::from_secs(120)).expect("dismantle");
    let total: u64 = rss.iter().sum();
    eprintln!(
        "{n} clients: joined in {joined_in:?}; hostname everywhere in {:?} ({} groups from {} reports), `true` in {:?}; \
         dismantled in {:?} ({} exited, {} killed); client RSS KiB min {} avg {} max {}; controller {:?} {:?}",
        out.elapsed,
        out.groups.len(),
        out.reports,
        out2.elapsed,
        d.elapsed,
        d.exited,
        d.killed,
        rss.iter().min().unwrap_or(&0),
        total / rss.len().max(1) as u64,
        rss.iter().max().unwrap_or(&0),
        c.driver_stats(),
        c.controller_stats(),
    );
    assert_eq!(d.killed, 0);
    assert!(pids.iter().all(|&p| !process_exists(p)));
}

/// The acceptance run: 200 local clients on 127.x addresses join one tree and all run
/// `hostname`; a quarter of the client processes, the root among them, are killed with SIGKILL;
/// the tree repairs, the launcher relaunches the killed hosts, they rejoin, and a second job
/// gets all 200 results; dismantling leaves no client process.
#[test]
fn a_quarter_of_200_clients_and_the_root_killed_all_rejoin_and_the_next_job_reaches_everyone() {
    let _ = plush_mio::raise_fd_limit();
    let n = 200usize;
    let port = free_port(n as u32, 28_000);
    let hosts: Vec<NodeId> = (0..n as u32).map(|i| NodeId::loopback(i, port)).collect();
    let mut c = Cluster::start(cluster_config()).expect("start the controller");
    c.add_hosts(&hosts);
    let all = c.wait_until(Duration::from_secs(60), |c| c.count(HostState::Joined) == n).expect("event loop");
    assert!(all, "{}", states(&c));
    let first = c.run(&["hostname"], Duration::from_secs(20)).expect("run");
    assert_eq!(first.result_count(), n, "missing {:?}", first.missing);
    assert_eq!(first.groups.len(), 1);
    let want = std::process::Command::new("hostname").output().expect("hostname here").stdout;
    assert_eq!(first.groups[0].output, want);

    let root = c.root().expect("a root");
    let clients = c.launched_clients();
    assert_eq!(clients.len(), n);
    // The root and every fourth other host: a quarter in all.
    let mut victims: Vec<(NodeId, u32)> = clients.iter().copied().filter(|(h, _)| *h == root).collect();
    victims.extend(clients.iter().copied().filter(|(h, _)| *h != root).step_by(4).take(n / 4 - 1));
    assert_eq!(victims.len(), n / 4);
    let t = Instant::now();
    let killed_at = c.uptime();
    let pids: Vec<String> = victims.iter().map(|(_, p)| p.to_string()).collect();
    let killed = std::process::Command::new("kill").arg("-9").args(&pids).status().expect("kill");
    assert!(killed.success());
    // Children of the dead notice at once (end of stream) and repair; a new root takes over; the
    // controller follows it, hears which hosts were lost (or finds them missing from a census),
    // relaunches and re-invites them. A victim is back once a new client runs on it and it
    // joined after the kill (a report of its old life may mark it joined for a moment first:
    // the root answers an invitation for a host it still lists as its child with "joined"
    // before it noticed the death), and all of that held for longer than the controller's
    // census recheck (3 s), which finds such a host missing.
    let mut since: Option<Instant> = None;
    let back = c
        .wait_until(Duration::from_secs(120), |c| {
            let launched = c.launched_clients();
            let ok = c.root().is_some_and(|r| r != root)
                && c.count(HostState::Joined) == n
                && victims.iter().all(|(h, pid)| {
                    c.host(h).and_then(|h| h.joined_at).is_some_and(|at| at > killed_at)
                        && launched.iter().any(|(x, p)| x == h && p != pid)
                });
            if !ok {
                since = None;
            }
            ok && since.get_or_insert_with(Instant::now).elapsed() >= Duration::from_millis(3500)
        })
        .expect("event loop");
    let rejoined = victims.iter().filter(|(h, _)| c.host(h).and_then(|h| h.joined_at).is_some_and(|at| at > killed_at));
    assert!(back, "root {:?}, {} of {} victims rejoined: {}", c.root(), rejoined.count(), victims.len(), states(&c));
    // From the kill to the moment the state that then held for 3.5 s was first seen.
    let recovered = since.map_or_else(|| t.elapsed(), |s| s.duration_since(t));
    let second = c.run(&["hostname"], Duration::from_secs(20)).expect("run");
    let launched = c.launched_clients();
    let about: Vec<String> = second
        .missing
        .iter()
        .map(|h| {
            let pid = launched.iter().find(|(x, _)| x == h).map(|(_, p)| *p);
            let victim = victims.iter().any(|(v, _)| v == h);
            format!("{h}: victim {victim}, pid {pid:?} alive {:?}, {:?}", pid.map(process_exists), c.host(h))
        })
        .collect();
    assert_eq!(second.result_count(), n, "missing {about:?}");
    assert_eq!(second.groups.len(), 1);
    eprintln!(
        "{n} clients: first job {:?}; root {root} and {} others killed; new root {:?}, all rejoined in \
         {recovered:?}; second job {:?}",
        first.elapsed,
        victims.len() - 1,
        c.root(),
        second.elapsed
    );
    let launched = c.launched_pids();
    let d = c.dismantle(Duration::from_secs(60)).expect("dismantle");
    assert_eq!(d.killed, 0, "every client exits by itself");
    assert!(launched.iter().all(|&p| !process_exists(p)));
    assert!(victims.iter().all(|&(_, p)| !process_exists(p)));
}

/// The cluster asks the controller what a job expects, what arrived and whether it is
/// complete, and past `Config::max_jobs` forgets the oldest job at both.
#[test]
fn jobs_are_asked_of_the_controller_and_the_oldest_is_forgotten() {
    let port = free_port(3, 38_000);
    let hosts: Vec<NodeId> = (0..3).map(|i| NodeId::loopback(i, port)).collect();
    let mut cfg = cluster_config();
    cfg.core.max_jobs = 3;
    let mut c = Cluster::start(cfg).expect("start the controller");
    c.add_hosts(&hosts);
    assert!(c.wait_settled(Duration::from_secs(60)).expect("event loop"), "{}", states(&c));
    assert_eq!(c.joined_in(None), hosts, "every host joined");
    assert_eq!(c.joined_in(Some(&hosts[1..])), hosts[1..].to_vec(), "only the targeted");
    let mut jobs = Vec::new();
    for _ in 0..3 {
        let out = c.run(&["true"], Duration::from_secs(10)).expect("run");
        assert_eq!(c.job_expected(out.job), Some(hosts.clone()), "job {}", out.job);
        assert_eq!(c.job_progress(out.job), Some((3, 3)));
        assert!(c.job_settled(out.job));
        assert_eq!((out.groups.len(), out.result_count()), (1, 3), "{:?}", out.groups);
        assert!(out.missing.is_empty());
        jobs.push(out.job);
    }
    // One job fewer than the controller's bound is kept once a job starts (room for the next):
    // the first went, at both.
    assert_eq!(c.job_spec(jobs[0]), None);
    assert_eq!(c.job_progress(jobs[0]), None);
    assert_eq!(c.job_progress(jobs[1]), Some((3, 3)));
    assert!(c.job_spec(jobs[2]).is_some_and(|s| s.job == jobs[2]));
    assert_eq!(c.dismantle(Duration::from_secs(30)).expect("dismantle").killed, 0);
}
