//! The driver's link handling, with a probe machine in place of the core's: simultaneous
//! opens (also one whose half reaches one end late), replacement (by the same dialer, or by a
//! peer that lost our link without our seeing it), a peer announcing the wrong id, write-queue
//! overflow. Two drivers run in this thread, turned in alternation; every loop is bounded. A
//! relay in front of one driver's listener (threads of this test, bounded in time) holds a
//! connection back or keeps an end of stream from arriving, as a lost SYN or FIN would.

use plush_core::frame::{encode_once, FramePool};
use plush_core::wire::{JobMsg, Message, Role, TreeMsg};
use plush_core::Machine;
use plush_core::{InputError, Instant, LinkEvent, NodeId, Output, ProcessEvent};
use plush_mio::driver::{Driver, DriverConfig};
use plush_mio::Key;
use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

#[derive(Default)]
struct Probe {
    out: VecDeque<Output>,
    links: Vec<(NodeId, LinkEvent)>,
    frames: Vec<(NodeId, usize)>,
}

impl Machine for Probe {
    const ROLE: Role = Role::Client;
    fn handle_frame(&mut self, _now: Instant, from: NodeId, payload: &[u8]) -> Result<(), InputError> {
        self.frames.push((from, payload.len()));
        Ok(())
    }
    fn handle_link(&mut self, _now: Instant, peer: NodeId, ev: LinkEvent) {
        self.links.push((peer, ev));
    }
    fn handle_timeout(&mut self, _now: Instant) {}
    fn handle_process(&mut self, _now: Instant, _ev: ProcessEvent) {}
    fn handle_launched(&mut self, _now: Instant, _host: NodeId, _r: Result<(), &'static str>) {}
    fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }
    fn poll_timeout(&self) -> Option<Instant> {
        None
    }
}

fn key() -> Key {
    Key::from_bytes([0x42; 32])
}

/// A probe driver listening on `ip:0`, announcing `claim` instead of its address if given.
fn probe(ip: [u8; 4], claim: Option<NodeId>) -> Driver<Probe> {
    let l = std::net::TcpListener::bind((std::net::Ipv4Addr::from(ip), 0)).expect("bind");
    let id = claim.unwrap_or_else(|| NodeId::new(l.local_addr().expect("addr")));
    Driver::new(Probe::default(), id, l, key(), DriverConfig::default()).expect("driver")
}

fn order(d: &mut Driver<Probe>, o: Output) {
    d.m.out.push_back(o);
    d.drain();
}

/// Turn both drivers until `done` holds; false after `limit`.
fn spin(
    a: &mut Driver<Probe>,
    b: &mut Driver<Probe>,
    limit: Duration,
    mut done: impl FnMut(&Driver<Probe>, &Driver<Probe>) -> bool,
) -> bool {
    let end = std::time::Instant::now() + limit;
    while std::time::Instant::now() < end {
        if done(a, b) {
            return true;
        }
        a.turn(Some(Duration::from_millis(2))).expect("turn");
        b.turn(Some(Duration::from_millis(2))).expect("turn");
    }
    done(a, b)
}

fn heartbeat() -> plush_core::frame::Frame {
    encode_once(&Message::Tree(TreeMsg::Heartbeat)).expect("encode")
}

/// Order a heartbeat from `a` to `b` and one from `b` to `a`.
fn heartbeat_each_way(a: &mut Driver<Probe>, b: &mut Driver<Probe>) {
    let (ia, ib) = (a.id(), b.id());
    order(a, Output::Transmit { to: ib, frame: heartbeat() });
    order(b, Output::Transmit { to: ia, frame: heartbeat() });
}

#[test]
fn a_simultaneous_open_settles_on_one_link_without_telling_the_machines() {
    let mut a = probe([127, 0, 0, 1], None);
    let mut b = probe([127, 0, 0, 2], None);
    let (ia, ib) = (a.id(), b.id());
    order(&mut a, Output::Connect(ib));
    order(&mut b, Output::Connect(ia));
    assert!(spin(&mut a, &mut b, Duration::from_secs(5), |a, b| !a.m.links.is_empty() && !b.m.links.is_empty()));
    for _ in 0..3 {
        heartbeat_each_way(&mut a, &mut b);
    }
    let settled = spin(&mut a, &mut b, Duration::from_secs(5), |a, b| {
        a.m.frames.len() == 3 && b.m.frames.len() == 3 && a.connection_count() == 1 && b.connection_count() == 1
    });
    assert!(
        settled,
        "frames {} {}, connections {} {}",
        a.m.frames.len(),
        b.m.frames.len(),
        a.connection_count(),
        b.connection_count()
    );
    assert_eq!(a.m.links, vec![(ib, LinkEvent::Connected)]);
    assert_eq!(b.m.links, vec![(ia, LinkEvent::Connected)]);
    assert_eq!((a.stats.duplicate_links, b.stats.duplicate_links), (1, 1));
    // The surviving link still works both ways.
    heartbeat_each_way(&mut a, &mut b);
    assert!(spin(&mut a, &mut b, Duration::from_secs(5), |a, b| a.m.frames.len() == 4 && b.m.frames.len() == 4));
}

#[test]
fn a_redial_replaces_the_old_link_and_the_peer_hears_of_it() {
    let mut a = probe([127, 0, 0, 1], None);
    let mut b = probe([127, 0, 0, 3], None);
    let (ia, ib) = (a.id(), b.id());
    order(&mut a, Output::Connect(ib));
    assert!(spin(&mut a, &mut b, Duration::from_secs(5), |a, b| !a.m.links.is_empty() && !b.m.links.is_empty()));
    // `a` drops the link and dials again at once.
    order(&mut a, Output::Close(ib));
    order(&mut a, Output::Connect(ib));
    assert!(spin(&mut a, &mut b, Duration::from_secs(5), |a, b| a.m.links.len() == 2 && b.m.links.len() == 3));
    assert_eq!(a.m.links, vec![(ib, LinkEvent::Connected), (ib, LinkEvent::Connected)]);
    assert_eq!(b.m.links, vec![(ia, LinkEvent::Connected), (ia, LinkEvent::Closed), (ia, LinkEvent::Connected)]);
    order(&mut a, Output::Transmit { to: ib, frame: heartbeat() });
    assert!(spin(&mut a, &mut b, Duration::from_secs(5), |_, b| b.m.frames.len() == 1));
}

/// `a` dials `b`'s address; once the link is up at both ends, `b` freezes (its sockets stay
/// open: `a` sees no end of stream, as when a killed process's FIN is lost or not yet in) and a
/// new process with `b`'s id dials `a`, well after the link came up. That is a redial, not a
/// simultaneous open: both machines must agree that the link was reset (`a`'s hears `Closed`
/// then `Connected`, the new one's `Connected`), and the new link carries frames both ways.
/// Taken as a simultaneous open, `a`'s machine heard nothing: it kept its peer's old state
/// (a child kept a parent that had dropped it, until its silence timeout).
fn a_redial_by_a_peer_that_lost_the_link_resets_it_at_both_ends(a_ip: [u8; 4], b_ip: [u8; 4]) {
    let mut a = probe(a_ip, None);
    let mut b1 = probe(b_ip, None);
    let (ia, ib) = (a.id(), b1.id());
    order(&mut a, Output::Connect(ib));
    assert!(spin(&mut a, &mut b1, Duration::from_secs(5), |a, b| !a.m.links.is_empty() && !b.m.links.is_empty()));
    assert_eq!(a.m.links, vec![(ib, LinkEvent::Connected)]);
    // At once: the verdict does not hang on timing (`b2` is another incarnation).
    // `b1` is never turned again; `b2` is `b` restarted (another port, the same id).
    let mut b2 = probe(b_ip, Some(ib));
    order(&mut b2, Output::Connect(ia));
    assert!(spin(&mut a, &mut b2, Duration::from_secs(5), |a, b| !b.m.links.is_empty() && a.stats.duplicate_links == 1));
    order(&mut b2, Output::Transmit { to: ia, frame: heartbeat() });
    order(&mut a, Output::Transmit { to: ib, frame: heartbeat() });
    let delivered =
        spin(&mut a, &mut b2, Duration::from_secs(5), |a, b| a.m.frames.len() == 1 && b.m.frames.len() == 1);
    assert_eq!(
        a.m.links,
        vec![(ib, LinkEvent::Connected), (ib, LinkEvent::Closed), (ib, LinkEvent::Connected)],
        "the machine whose peer lost the link must hear of it"
    );
    assert_eq!(b2.m.links, vec![(ia, LinkEvent::Connected)]);
    assert!(delivered, "frames on the new link: {} at a, {} at b", a.m.frames.len(), b2.m.frames.len());
    assert_eq!(a.stats.redials_across, 1);
    assert_eq!(a.link_count(), 1);
    drop(b1);
}

#[test]
fn a_redial_by_a_lower_peer_that_lost_the_link_resets_it_at_both_ends() {
    // b < a: the old rule kept b's new link and retired a's without telling a's machine.
    a_redial_by_a_peer_that_lost_the_link_resets_it_at_both_ends([127, 0, 0, 11], [127, 0, 0, 10]);
}

#[test]
fn a_redial_by_a_higher_peer_that_lost_the_link_resets_it_at_both_ends() {
    // a < b: the old rule kept a's old link (to the frozen process) and retired the new one.
    a_redial_by_a_peer_that_lost_the_link_resets_it_at_both_ends([127, 0, 0, 12], [127, 0, 0, 13]);
}

#[test]
fn a_peer_announcing_another_id_is_refused() {
    let mut a = probe([127, 0, 0, 1], None);
    let mut b = probe([127, 0, 0, 4], Some(NodeId::loopback(8, 1)));
    // Dial b's real address; b claims to be 127.0.0.9:1.
    let real = b.listen_addr().expect("addr");
    let target = NodeId::new(real);
    order(&mut a, Output::Connect(target));
    assert!(spin(&mut a, &mut b, Duration::from_secs(5), |a, _| !a.m.links.is_empty()));
    assert_eq!(a.m.links, vec![(target, LinkEvent::ConnectFailed)]);
    assert!(a.stats.handshake_failures >= 1);
    assert!(b.m.links.is_empty(), "b never sees a link");
}

#[test]
fn a_peer_that_does_not_read_is_cut_off_at_the_write_queue_bound() {
    let mut a = probe([127, 0, 0, 1], None);
    let mut b = probe([127, 0, 0, 5], None);
    let ib = b.id();
    order(&mut a, Output::Connect(ib));
    assert!(spin(&mut a, &mut b, Duration::from_secs(5), |a, b| !a.m.links.is_empty() && !b.m.links.is_empty()));
    // From now on b is never turned: it reads nothing.
    let mut pool = FramePool::default();
    let big = Message::Job(JobMsg::Output { job: 1, node: ib, bytes: vec![7; (1 << 20) - 64], err: false });
    let mut sent = 0;
    while !a.m.links.contains(&(ib, LinkEvent::Closed)) {
        assert!(sent < 200, "200 MiB queued without the bound closing the link");
        let frame = pool.encode(&big, 1 << 20).expect("encode");
        order(&mut a, Output::Transmit { to: ib, frame });
        sent += 1;
        a.turn(Some(Duration::ZERO)).expect("turn");
    }
    assert_eq!(a.stats.write_overflows, 1);
    assert_eq!(a.link_count(), 0);
    eprintln!("closed after {sent} frames of 1 MiB (kernel buffers took the rest)");
    drop(b);
}

/// A relay listening on `ip:0` that forwards each connection it takes to `target`: the first
/// one only after `hold_first`, and, with `keep_open`, without passing on the target's end of
/// stream (the client's end stays open, as when a FIN is lost). It takes connections for 10 s.
fn relay(ip: [u8; 4], target: SocketAddr, hold_first: Duration, keep_open: bool) -> SocketAddr {
    let l = TcpListener::bind((std::net::Ipv4Addr::from(ip), 0)).expect("bind relay");
    let addr = l.local_addr().expect("relay addr");
    l.set_nonblocking(true).expect("nonblocking");
    std::thread::spawn(move || {
        let end = std::time::Instant::now() + Duration::from_secs(10);
        let mut first = true;
        while std::time::Instant::now() < end {
            let Ok((client, _)) = l.accept() else {
                std::thread::sleep(Duration::from_millis(2));
                continue;
            };
            if std::mem::take(&mut first) {
                std::thread::sleep(hold_first);
            }
            let _ = client.set_nonblocking(false);
            let Ok(server) = TcpStream::connect(target) else { continue };
            let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else { continue };
            std::thread::spawn(move || pipe(c2, s2, true));
            std::thread::spawn(move || pipe(server, client, !keep_open));
        }
    });
    addr
}

/// Copy `from` to `to` until `from` ends (at most 15 s of waiting for a read); then shut `to`'s
/// writing side if `pass_eof`, or hold `to` open for the rest of those 15 s.
fn pipe(mut from: TcpStream, mut to: TcpStream, pass_eof: bool) {
    let end = std::time::Instant::now() + Duration::from_secs(15);
    let _ = from.set_read_timeout(Some(Duration::from_millis(100)));
    let mut buf = [0u8; 16 << 10];
    while std::time::Instant::now() < end {
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    if pass_eof {
        let _ = to.shutdown(Shutdown::Write);
    } else {
        std::thread::sleep(end.saturating_duration_since(std::time::Instant::now()));
    }
}

/// A probe driver on `ip` whose id is a relay's address in front of its listener.
fn behind_relay(ip: [u8; 4], hold_first: Duration, keep_open: bool) -> Driver<Probe> {
    let l = TcpListener::bind((std::net::Ipv4Addr::from(ip), 0)).expect("bind");
    let front = relay(ip, l.local_addr().expect("addr"), hold_first, keep_open);
    Driver::new(Probe::default(), NodeId::new(front), l, key(), DriverConfig::default()).expect("driver")
}

/// `a` and `b` dial each other at once, but `a`'s dial reaches `b` half a second late (as
/// after a lost SYN), long after `b`'s own link came up at both ends. It is still one half of
/// a simultaneous open: both ends must settle on one link without telling their machines,
/// whichever id is lower. Judged by timing, `b` took the late dial for a redial (its machine
/// heard the link reset) while `a` did not: one machine kept a link the other had dropped.
fn a_simultaneous_open_reaching_one_end_late_is_one_at_both_ends(a_ip: [u8; 4], b_ip: [u8; 4]) {
    let mut a = probe(a_ip, None);
    let mut b = behind_relay(b_ip, Duration::from_millis(500), false);
    let (ia, ib) = (a.id(), b.id());
    order(&mut a, Output::Connect(ib));
    order(&mut b, Output::Connect(ia));
    assert!(spin(&mut a, &mut b, Duration::from_secs(5), |a, b| !a.m.links.is_empty() && !b.m.links.is_empty()));
    assert_eq!(b.stats.duplicate_links, 0, "the late half must not have reached b yet");
    let both = spin(&mut a, &mut b, Duration::from_secs(5), |a, b| {
        a.stats.duplicate_links == 1 && b.stats.duplicate_links == 1
    });
    assert!(both, "duplicates: a {} b {}", a.stats.duplicate_links, b.stats.duplicate_links);
    heartbeat_each_way(&mut a, &mut b);
    let settled = spin(&mut a, &mut b, Duration::from_secs(5), |a, b| {
        a.m.frames.len() == 1 && b.m.frames.len() == 1 && a.connection_count() == 1 && b.connection_count() == 1
    });
    assert_eq!(a.m.links, vec![(ib, LinkEvent::Connected)]);
    assert_eq!(b.m.links, vec![(ia, LinkEvent::Connected)]);
    assert!(
        settled,
        "frames {} {}, connections {} {}",
        a.m.frames.len(),
        b.m.frames.len(),
        a.connection_count(),
        b.connection_count()
    );
    assert_eq!((a.link_count(), b.link_count()), (1, 1));
}

#[test]
fn a_simultaneous_open_reaching_the_higher_end_late_is_one_at_both_ends() {
    a_simultaneous_open_reaching_one_end_late_is_one_at_both_ends([127, 0, 0, 20], [127, 0, 0, 21]);
}

#[test]
fn a_simultaneous_open_reaching_the_lower_end_late_is_one_at_both_ends() {
    a_simultaneous_open_reaching_one_end_late_is_one_at_both_ends([127, 0, 0, 23], [127, 0, 0, 22]);
}

/// `b` dials `a`; `a`'s machine closes the link and at once asks for it again. `a`'s end of
/// stream never reaches `b` (the relay in front of `a` holds it back), so `b` still holds the
/// old link when `a`'s new dial arrives, within a few milliseconds of the old one coming up.
/// `a`'s hello names the link it lost: `b` replaces it and its machine hears of the reset,
/// whichever id is lower.
fn a_redial_naming_the_lost_link_resets_it_however_soon(a_ip: [u8; 4], b_ip: [u8; 4]) {
    let mut a = behind_relay(a_ip, Duration::ZERO, true);
    let mut b = probe(b_ip, None);
    let (ia, ib) = (a.id(), b.id());
    order(&mut b, Output::Connect(ia));
    assert!(spin(&mut a, &mut b, Duration::from_secs(5), |a, b| !a.m.links.is_empty() && !b.m.links.is_empty()));
    order(&mut a, Output::Close(ib));
    order(&mut a, Output::Connect(ib));
    assert!(spin(&mut a, &mut b, Duration::from_secs(5), |a, b| a.m.links.len() == 2 && b.m.links.len() == 3));
    assert_eq!(a.m.links, vec![(ib, LinkEvent::Connected), (ib, LinkEvent::Connected)]);
    assert_eq!(b.m.links, vec![(ia, LinkEvent::Connected), (ia, LinkEvent::Closed), (ia, LinkEvent::Connected)]);
    assert_eq!(b.stats.redials_across, 1);
    heartbeat_each_way(&mut a, &mut b);
    assert!(spin(&mut a, &mut b, Duration::from_secs(5), |a, b| a.m.frames.len() == 1 && b.m.frames.len() == 1));
    assert_eq!((a.link_count(), b.link_count()), (1, 1));
}

#[test]
fn a_redial_by_a_lower_peer_naming_the_lost_link_resets_it_however_soon() {
    a_redial_naming_the_lost_link_resets_it_however_soon([127, 0, 0, 24], [127, 0, 0, 25]);
}

#[test]
fn a_redial_by_a_higher_peer_naming_the_lost_link_resets_it_however_soon() {
    a_redial_naming_the_lost_link_resets_it_however_soon([127, 0, 0, 27], [127, 0, 0, 26]);
}
