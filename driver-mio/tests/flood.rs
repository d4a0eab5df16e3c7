//! Nothing costly before authentication: a flood from one address (idle connections held and
//! reopened as they are closed, and connections announcing 1 MiB frames) at the root of a
//! 30-client cluster, while the controller runs jobs. Every job gets every result, the
//! flooded client's memory stays within twice what it held idle, the flood holds no more of its
//! descriptors than one address's share of the handshake slots, and a handshake from another
//! address gets through every time.

mod common;

use common::{cluster_config, free_port, rss_kib};
use plush_core::frame::{encode_hello, split_frame, PREFIX};
use plush_core::wire::{Hello, Role};
use plush_core::{HostState, NodeId};
use plush_mio::secure::{Handshake, MAX_HANDSHAKE_FRAME};
use plush_mio::{Cluster, Key};
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

const CLIENTS: u32 = 30;
/// The flooder's address: one source.
const FLOODER: [u8; 4] = [127, 0, 0, 250];
/// Idle connections the flooder keeps open (more than the per-source and the total handshake
/// slots of a client).
const HELD: usize = 300;

/// Whether the peer closed `s` (a non-blocking peek).
fn closed(s: &TcpStream) -> bool {
    let mut b = [0u8; 1];
    let _ = s.set_nonblocking(true);
    match s.peek(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    }
}

/// Hold up to [`HELD`] idle connections to `to`, reopening each as it is closed, and open
/// connections that announce a 1 MiB frame and send most of it, until `stop`. Counts the
/// connections made. Bounded: at most a few thousand connects a second, for the test's length.
fn flood(to: SocketAddr, stop: Arc<AtomicBool>, made: Arc<AtomicU64>) {
    let src = IpAddr::from(FLOODER);
    let mut held: Vec<TcpStream> = Vec::new();
    let big = vec![0x41u8; 1 << 20];
    while !stop.load(Ordering::Acquire) {
        held.retain(|s| !closed(s));
        while held.len() < HELD && !stop.load(Ordering::Acquire) {
            match plush_mio::connect_from(src, to, Duration::from_millis(500)) {
                Ok(s) => {
                    made.fetch_add(1, Ordering::Relaxed);
                    held.push(s);
                }
                Err(_) => break,
            }
        }
        // One connection that announces a frame of 1 MiB and sends it (before any hello).
        if let Ok(mut s) = plush_mio::connect_from(src, to, Duration::from_millis(500)) {
            made.fetch_add(1, Ordering::Relaxed);
            let _ = s.set_write_timeout(Some(Duration::from_millis(200)));
            let _ = s.write_all(&((1u32 << 20) - 1).to_be_bytes());
            let _ = s.write_all(&big[..(1 << 20) - 1]);
            let mut sink = [0u8; 256];
            let _ = s.set_read_timeout(Some(Duration::from_millis(50)));
            let _ = s.read(&mut sink);
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// A whole secure handshake with `to` from `source`, as a member would dial: true once the
/// link is up (within `timeout`).
fn handshake_from(source: IpAddr, to: NodeId, key: &Key, timeout: Duration) -> bool {
    let Ok(mut s) = plush_mio::connect_from(source, to.addr(), timeout) else { return false };
    let _ = s.set_read_timeout(Some(timeout));
    let me = NodeId::new(SocketAddr::new(source, 9));
    let ours = encode_hello(&Hello::new(me, Role::Client, 1));
    let mut buf = Vec::new();
    let next = |s: &mut TcpStream, buf: &mut Vec<u8>| -> Option<Vec<u8>> {
        loop {
            if let Ok(Some((p, used))) = split_frame(buf, MAX_HANDSHAKE_FRAME) {
                let p = p.to_vec();
                buf.drain(..used);
                return Some(p);
            }
            let mut tmp = [0u8; 512];
            match s.read(&mut tmp) {
                Ok(n) if n > 0 => buf.extend_from_slice(&tmp[..n]),
                _ => return None,
            }
        }
    };
    if s.write_all(&ours).is_err() {
        return false;
    }
    let Some(theirs) = next(&mut s, &mut buf) else { return false };
    let Ok(mut hs) = Handshake::start(key, true, &ours[PREFIX..], &theirs) else { return false };
    let Ok(Some(first)) = hs.next_frame() else { return false };
    if s.write_all(&first).is_err() {
        return false;
    }
    let Some(reply) = next(&mut s, &mut buf) else { return false };
    hs.read(&reply).is_ok() && hs.is_finished()
}

/// Open descriptors of a process.
fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

#[test]
fn a_flood_from_one_address_locks_nobody_out_and_costs_no_memory() {
    let _ = plush_mio::raise_fd_limit();
    let port = free_port(CLIENTS, 36_000);
    let hosts: Vec<NodeId> = (0..CLIENTS).map(|i| NodeId::loopback(i + 1, port)).collect();
    let mut c = Cluster::start(cluster_config()).expect("the controller starts");
    c.add_hosts(&hosts);
    let joined = c.wait_until(Duration::from_secs(60), |c| c.count(HostState::Joined) == hosts.len()).expect("loop");
    assert!(joined, "{} of {} joined", c.count(HostState::Joined), hosts.len());
    let root = c.root().expect("a root");
    let pid = c.launched_clients().into_iter().find(|(h, _)| *h == root).map(|(_, p)| p).expect("the root's pid");
    // Idle: let the client trim its heap once quiet (see `client`), then read its memory.
    c.wait_until(Duration::from_secs(3), |_| false).expect("loop");
    let idle = rss_kib(pid).expect("the root's memory");
    let idle_fds = fds(pid);

    let stop = Arc::new(AtomicBool::new(false));
    let made = Arc::new(AtomicU64::new(0));
    let flooder = {
        let (stop, made) = (Arc::clone(&stop), Arc::clone(&made));
        thread::spawn(move || flood(root.addr(), stop, made))
    };
    // The flood builds up; then jobs run through it.
    let started = Instant::now();
    let (mut peak, mut peak_fds) = (idle, idle_fds);
    while started.elapsed() < Duration::from_secs(2) {
        c.wait_until(Duration::from_millis(100), |_| false).expect("loop");
        peak = peak.max(rss_kib(pid).unwrap_or(0));
        peak_fds = peak_fds.max(fds(pid));
    }
    // Another address gets through the flood: a member's handshake succeeds every time.
    let key = Key::read_file(c.key_file()).expect("the cluster key");
    let other = IpAddr::from([127, 0, 0, 251]);
    for k in 0..5 {
        assert!(handshake_from(other, root, &key, Duration::from_secs(3)), "handshake {k} from another address failed");
        c.wait_until(Duration::from_millis(50), |_| false).expect("loop");
    }
    let mut results = Vec::new();
    for k in 0..3 {
        let out = c.run(&["echo", "through the flood"], Duration::from_secs(30)).expect("run");
        results.push(out.result_count());
        peak = peak.max(rss_kib(pid).unwrap_or(0));
        assert_eq!(out.result_count(), hosts.len(), "job {k} lost results during the flood: {:?}", out.groups);
    }
    while started.elapsed() < Duration::from_secs(6) {
        c.wait_until(Duration::from_millis(100), |_| false).expect("loop");
        peak = peak.max(rss_kib(pid).unwrap_or(0));
        peak_fds = peak_fds.max(fds(pid));
    }
    stop.store(true, Ordering::Release);
    flooder.join().expect("the flooder");
    let made = made.load(Ordering::Relaxed);
    eprintln!(
        "flood: {made} connections; root client RSS idle {idle} KiB, peak {peak} KiB; fds idle {idle_fds}, \
         peak {peak_fds}; results {results:?}"
    );
    // One source holds at most its share of the handshake slots (and one just accepted), besides
    // what a running job holds (its two pipes and barrier socket).
    let share = plush_mio::client::HANDSHAKES_PER_SOURCE + 2 + 3;
    assert!(peak_fds <= idle_fds + share, "the flood held {peak_fds} fds (idle {idle_fds})");
    assert!(made > HELD as u64, "the flood reopened connections the client closed ({made} made)");
    assert!(peak <= 2 * idle, "the flooded client grew from {idle} KiB to {peak} KiB");
    c.dismantle(Duration::from_secs(20)).expect("dismantle");
}
