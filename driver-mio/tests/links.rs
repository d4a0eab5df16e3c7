//! The driver's link handling, with a probe machine in place of the core's: simultaneous
//! opens, replacement, a peer announcing the wrong id, write-queue overflow. Two drivers run in
//! this thread, turned in alternation; every loop is bounded.

use plush_core::frame::{encode_once, FramePool};
use plush_core::wire::{JobMsg, Message, Role, TreeMsg};
use plush_core::Machine;
use plush_core::{InputError, Instant, LinkEvent, NodeId, Output, ProcessEvent};
use plush_mio::driver::{Driver, DriverConfig};
use plush_mio::Key;
use std::collections::VecDeque;
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

#[test]
fn a_simultaneous_open_settles_on_one_link_without_telling_the_machines() {
    let mut a = probe([127, 0, 0, 1], None);
    let mut b = probe([127, 0, 0, 2], None);
    let (ia, ib) = (a.id(), b.id());
    order(&mut a, Output::Connect(ib));
    order(&mut b, Output::Connect(ia));
    assert!(spin(&mut a, &mut b, Duration::from_secs(5), |a, b| !a.m.links.is_empty() && !b.m.links.is_empty()));
    for _ in 0..3 {
        order(&mut a, Output::Transmit { to: ib, frame: heartbeat() });
        order(&mut b, Output::Transmit { to: ia, frame: heartbeat() });
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
    order(&mut a, Output::Transmit { to: ib, frame: heartbeat() });
    order(&mut b, Output::Transmit { to: ia, frame: heartbeat() });
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
