//! How long a link takes to come up on loopback: from the TCP connect to the end of the secure
//! handshake (hellos both ways, then the two Noise messages), against a real client (a
//! [`plush_core::Node`] in a real `plush-mio` [`Driver`] on a thread of its own). The harness
//! dials as a member would and speaks the same handshake (`plush_mio::secure`), one connection
//! at a time; the driver opens the link for its machine once its second message is out.
//!
//! Also the cost of the handshake's cryptography alone, in one process (`secure::pair`: both
//! sides' X25519 key pairs and exchanges, and the hashing).
//!
//! `cargo run --release -p plush-benches --example handshake -- [N]` (default 300 handshakes).
//! The last line is JSON: `{"handshake_us": median, "handshake_p90_us": .., "crypto_us": ..}`.

use plush_core::frame::{encode_hello, split_frame, PREFIX};
use plush_core::wire::{Hello, Role};
use plush_core::{Config, Instant, Node, NodeId};
use plush_mio::driver::Driver;
use plush_mio::secure::{self, Handshake, MAX_HANDSHAKE_FRAME};
use plush_mio::{DriverConfig, Key};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant as StdInstant};

const KEY: [u8; 32] = *b"plush handshake benchmark key 32";

/// Read one frame's payload from a blocking stream (handshake frames only).
fn frame(s: &mut TcpStream, buf: &mut Vec<u8>) -> Vec<u8> {
    loop {
        if let Some((p, used)) = split_frame(buf, MAX_HANDSHAKE_FRAME).expect("a handshake frame") {
            let p = p.to_vec();
            buf.drain(..used);
            return p;
        }
        let mut tmp = [0u8; 512];
        let n = s.read(&mut tmp).expect("read");
        assert!(n > 0, "the client closed the connection");
        buf.extend_from_slice(&tmp[..n]);
    }
}

fn main() {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(300);
    let listener = TcpListener::bind("127.0.0.1:0").expect("a listener");
    let target = NodeId::new(listener.local_addr().expect("an address"));
    let stop = Arc::new(AtomicBool::new(false));
    let server = {
        let stop = Arc::clone(&stop);
        thread::spawn(move || {
            let node = Node::new(target, Config::default(), 1, Instant::ZERO);
            let mut d = Driver::new(node, target, listener, Key::from_bytes(KEY), DriverConfig::default())
                .expect("the client's driver");
            while !stop.load(Ordering::Acquire) {
                d.turn(Some(Duration::from_millis(5))).expect("the event loop");
            }
        })
    };
    let key = Key::from_bytes(KEY);
    let me = NodeId::loopback(77, 9);
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        let t0 = StdInstant::now();
        let mut s = TcpStream::connect(target.addr()).expect("connect");
        s.set_nodelay(true).expect("nodelay");
        let ours = encode_hello(&Hello::new(me, Role::Client, i as u64));
        s.write_all(&ours).expect("hello");
        let mut buf = Vec::new();
        let theirs = frame(&mut s, &mut buf);
        Hello::decode(&theirs).expect("a valid hello");
        let mut hs = Handshake::start(&key, true, &ours[PREFIX..], &theirs).expect("start");
        let first = hs.next_frame().expect("first message").expect("our turn");
        s.write_all(&first).expect("first message written");
        hs.read(&frame(&mut s, &mut buf)).expect("the client's message opens");
        assert!(hs.is_finished());
        let _chan = hs.into_channel().expect("a channel");
        times.push(t0.elapsed());
    }
    stop.store(true, Ordering::Release);
    server.join().expect("the client thread");
    times.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let median = us(times[times.len() / 2]);
    let p90 = us(times[times.len() * 9 / 10]);
    let t0 = StdInstant::now();
    let pairs = 200;
    for _ in 0..pairs {
        secure::pair(&key, &key, b"a", b"b").expect("a pair");
    }
    let crypto = us(t0.elapsed()) / f64::from(pairs);
    println!("{n} handshakes on loopback: median {median:.0} us, p90 {p90:.0} us; cryptography of one handshake (both sides) {crypto:.0} us");
    println!("{{\"handshake_us\": {median:.0}, \"handshake_p90_us\": {p90:.0}, \"crypto_us\": {crypto:.0}}}");
}
