//! Arbitrary bytes into one connection's receive path, before and after the secure handshake,
//! read the way `plush_mio::driver` reads a socket (`take_frames`, `on_hello`,
//! `on_handshake_message`, `take_records`).
//!
//! The first byte picks a mode, the second the size of the chunks the stream arrives in:
//! - **0, acceptor**: frames cut with `split_frame(buf, MAX_HANDSHAKE_FRAME)`; the first is
//!   decoded as a `Hello` (ours is fixed), the next ones go to a responder's
//!   `Handshake::read`; once the handshake is done, records are cut with `split_frame(buf,
//!   MAX_RECORD)` and opened with `Channel::open`. With bit 0x04 of the first byte a genuine
//!   dialer (same key) first sends its hello and its handshake message, so the arbitrary rest
//!   lands after a completed handshake.
//! - **1, dialer**: the same, as the initiator that dialed a known id (a hello announcing
//!   another id, or ours, closes). With bit 0x04 a genuine acceptor answers our hello and our
//!   first handshake message before the arbitrary rest.
//! - **2, records**: a link set up by `secure::pair` (fixed hellos), a few genuine records
//!   (their count from the first byte), then the arbitrary rest as records.
//! - **3, structured**: genuine sealed records of arbitrary plaintexts, mutated (bits flipped,
//!   records dropped, duplicated, swapped, cut short, forged ones inserted, the stream's bytes
//!   flipped or cut), delivered in chunks.
//!
//! Checked: nothing panics; a connection closes at its first error and takes nothing after it;
//! what stays buffered is less than one frame (or record) and its prefix: a length prefix over
//! the phase's maximum closes before anything is kept; the hellos and handshake messages of the
//! genuine peers always get through; arbitrary records never open (the session keys are fresh
//! for each run); and in the structured mode a record opens exactly when it is byte for byte
//! the next genuine record, and then gives that record's plaintext: a mutated, replayed or
//! reordered record never opens, and genuine ones in order always do.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use plush_core::wire::{Hello, Role};
use plush_core::frame::{encode_hello, split_frame, PREFIX};
use plush_core::NodeId;
use plush_mio::secure::{self, Channel, Handshake, MAX_HANDSHAKE_FRAME, MAX_PLAIN, MAX_RECORD, TAG_LEN};
use plush_mio::Key;

/// Plaintext sealed per input in the structured mode, at most (a few records' worth).
const MAX_PLAIN_TOTAL: usize = 2 * MAX_PLAIN + 1000;
/// Plaintext messages per input in the structured mode, at most.
const MAX_MSGS: usize = 32;
/// Mutations per input, at most.
const MAX_MUTATIONS: usize = 16;
/// Bytes of one forged record, at most.
const MAX_FORGED: usize = 300;

/// The cluster key of every connection here: not one byte repeated.
fn key() -> Key {
    let mut k = [0u8; 32];
    for (i, b) in k.iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(29).wrapping_add(7);
    }
    Key::from_bytes(k)
}

fn dialer_id() -> NodeId {
    NodeId::loopback(1, 7000)
}

fn acceptor_id() -> NodeId {
    NodeId::loopback(2, 7000)
}

/// A hello frame (prefix included), as `Driver` sends it.
fn hello_frame(id: NodeId, nonce: u64) -> Vec<u8> {
    encode_hello(&Hello::new(id, Role::Client, nonce))
}

const DIALER_NONCE: u64 = 0x0123_4567_89ab_cdef;
const ACCEPTOR_NONCE: u64 = 0xfedc_ba98_7654_3210;

enum Phase {
    Hello,
    Noise(Box<Handshake>),
    Open(Box<Channel>),
    Closed,
}

/// One side of a connection, as the driver keeps it: phase, received bytes not yet whole,
/// bytes sent.
struct Conn {
    phase: Phase,
    me: NodeId,
    nonce: u64,
    /// The id dialed, when we dialed.
    dialed: Option<NodeId>,
    buf: Vec<u8>,
    sent: Vec<u8>,
    /// Plaintext bytes opened so far.
    opened: Vec<u8>,
    /// Records opened.
    records: usize,
}

impl Conn {
    fn new(we_dial: bool) -> Conn {
        let (me, nonce, dialed) = if we_dial {
            (dialer_id(), DIALER_NONCE, Some(acceptor_id()))
        } else {
            (acceptor_id(), ACCEPTOR_NONCE, None)
        };
        // Both sides send their hello first.
        Conn {
            phase: Phase::Hello,
            me,
            nonce,
            dialed,
            buf: Vec::new(),
            sent: hello_frame(me, nonce),
            opened: Vec::new(),
            records: 0,
        }
    }

    fn closed(&self) -> bool {
        matches!(self.phase, Phase::Closed)
    }

    fn close(&mut self) {
        self.phase = Phase::Closed;
        self.buf.clear();
    }

    /// Bytes read from the socket.
    fn receive(&mut self, chunk: &[u8]) {
        if self.closed() {
            return;
        }
        self.buf.extend_from_slice(chunk);
        let mut buf = std::mem::take(&mut self.buf);
        let taken = self.take_frames(&buf);
        if !self.closed() {
            buf.drain(..taken);
            self.buf = buf;
            // Bounded memory: less than one frame or record (of the phase's maximum) is kept.
            let max = if matches!(self.phase, Phase::Open(_)) { MAX_RECORD } else { MAX_HANDSHAKE_FRAME };
            assert!(self.buf.len() < PREFIX + max, "{} bytes kept", self.buf.len());
        }
    }

    /// `Driver::take_frames`.
    fn take_frames(&mut self, data: &[u8]) -> usize {
        let mut taken = 0;
        loop {
            match self.phase {
                Phase::Closed => return taken,
                Phase::Open(_) => return taken + self.take_records(&data[taken..]),
                Phase::Hello | Phase::Noise(_) => {}
            }
            let (payload, used) = match split_frame(&data[taken..], MAX_HANDSHAKE_FRAME) {
                Ok(Some(x)) => x,
                Ok(None) => return taken,
                Err(_) => {
                    self.close();
                    return taken;
                }
            };
            assert!(payload.len() <= MAX_HANDSHAKE_FRAME);
            taken += used;
            if matches!(self.phase, Phase::Hello) {
                self.on_hello(payload);
            } else {
                self.on_handshake_message(payload);
            }
        }
    }

    /// `Driver::on_hello`.
    fn on_hello(&mut self, payload: &[u8]) {
        let Ok(hello) = Hello::decode(payload) else { return self.close() };
        if self.dialed.is_some_and(|want| want != hello.node_id) || hello.node_id == self.me {
            return self.close();
        }
        let ours = hello_frame(self.me, self.nonce);
        let ours = &ours[PREFIX..];
        let we_dialed = self.dialed.is_some();
        let (dialer, acceptor) = if we_dialed { (ours, payload) } else { (payload, ours) };
        let started =
            Handshake::start(&key(), we_dialed, dialer, acceptor).and_then(|mut hs| hs.next_frame().map(|f| (hs, f)));
        match started {
            Ok((hs, first)) => {
                // The dialer speaks first, the acceptor waits.
                assert_eq!(first.is_some(), we_dialed);
                if let Some(f) = first {
                    assert!(f.len() <= PREFIX + MAX_HANDSHAKE_FRAME);
                    self.sent.extend_from_slice(&f);
                }
                self.phase = Phase::Noise(Box::new(hs));
            }
            // Starting cannot fail: the parameters are constant and the key the right size.
            Err(e) => panic!("a handshake did not start: {e}"),
        }
    }

    /// `Driver::on_handshake_message`.
    fn on_handshake_message(&mut self, payload: &[u8]) {
        let Phase::Noise(hs) = &mut self.phase else { return };
        match hs.read(payload).and_then(|()| hs.next_frame()) {
            Ok(reply) => {
                if let Some(f) = reply {
                    assert!(f.len() <= PREFIX + MAX_HANDSHAKE_FRAME);
                    self.sent.extend_from_slice(&f);
                }
            }
            Err(_) => return self.close(),
        }
        if !hs.is_finished() {
            return;
        }
        let Phase::Noise(hs) = std::mem::replace(&mut self.phase, Phase::Closed) else { return };
        match hs.into_channel() {
            Ok(chan) => self.phase = Phase::Open(Box::new(chan)),
            Err(e) => panic!("a finished handshake gave no channel: {e}"),
        }
    }

    /// `Driver::take_records`: open every whole record; the first that fails closes.
    fn take_records(&mut self, data: &[u8]) -> usize {
        let mut taken = 0;
        loop {
            let Phase::Open(chan) = &mut self.phase else { return taken };
            match split_frame(&data[taken..], MAX_RECORD) {
                Ok(None) => return taken,
                Err(_) => {
                    self.close();
                    return taken;
                }
                Ok(Some((record, used))) => {
                    let before = self.opened.len();
                    match chan.open(record, &mut self.opened) {
                        Ok(()) => {
                            assert_eq!(self.opened.len() - before, record.len() - TAG_LEN, "plaintext = record - tag");
                            self.records += 1;
                            taken += used;
                        }
                        Err(_) => {
                            assert_eq!(self.opened.len(), before, "nothing of a failed record is kept");
                            self.close();
                            return taken;
                        }
                    }
                }
            }
        }
    }
}

/// Deliver `stream` to `conn` in chunks of `chunk` bytes.
fn feed(conn: &mut Conn, stream: &[u8], chunk: usize) {
    for c in stream.chunks(chunk) {
        conn.receive(c);
        if conn.closed() {
            return;
        }
    }
}

/// Modes 0 and 1: the whole receive path, from the hello on.
fn from_the_start(we_dial: bool, genuine: bool, chunk: usize, rest: &[u8]) {
    let mut conn = Conn::new(we_dial);
    if genuine {
        let (dialer_hello, acceptor_hello) =
            (hello_frame(dialer_id(), DIALER_NONCE), hello_frame(acceptor_id(), ACCEPTOR_NONCE));
        let mut peer = Handshake::start(&key(), !we_dial, &dialer_hello[PREFIX..], &acceptor_hello[PREFIX..])
            .expect("the genuine peer starts");
        if we_dial {
            // The acceptor's hello; we answer it with the first handshake message.
            feed(&mut conn, &acceptor_hello, chunk);
            let sent = std::mem::take(&mut conn.sent);
            let (hello, used) = split_frame(&sent, MAX_HANDSHAKE_FRAME).unwrap().unwrap();
            assert_eq!(hello, &dialer_hello[PREFIX..]);
            let (msg1, _) = split_frame(&sent[used..], MAX_HANDSHAKE_FRAME).unwrap().expect("we sent message 1");
            peer.read(msg1).expect("the genuine acceptor takes our message");
            let msg2 = peer.next_frame().unwrap().expect("the acceptor answers");
            feed(&mut conn, &msg2, chunk);
        } else {
            let msg1 = peer.next_frame().unwrap().expect("the dialer speaks first");
            feed(&mut conn, &dialer_hello, chunk);
            feed(&mut conn, &msg1, chunk);
            let sent = std::mem::take(&mut conn.sent);
            let (_, used) = split_frame(&sent, MAX_HANDSHAKE_FRAME).unwrap().unwrap();
            let (msg2, _) = split_frame(&sent[used..], MAX_HANDSHAKE_FRAME).unwrap().expect("we sent message 2");
            peer.read(msg2).expect("the genuine dialer takes our answer");
        }
        assert!(peer.is_finished());
        assert!(matches!(conn.phase, Phase::Open(_)), "a genuine peer's handshake completes");
    }
    feed(&mut conn, rest, chunk);
    if genuine {
        // Records under fresh session keys cannot be forged.
        assert_eq!(conn.records, 0, "an arbitrary record opened");
    }
}

fn pair() -> (Channel, Channel) {
    let (d, a) = (hello_frame(dialer_id(), DIALER_NONCE), hello_frame(acceptor_id(), ACCEPTOR_NONCE));
    secure::pair(&key(), &key(), &d[PREFIX..], &a[PREFIX..]).expect("same key, same hellos: the handshake completes")
}

/// Mode 2: `genuine` real records, then arbitrary ones.
fn records(genuine: usize, chunk: usize, rest: &[u8]) {
    let (mut tx, rx) = pair();
    let mut conn = Conn::new(false);
    conn.phase = Phase::Open(Box::new(rx));
    let mut stream = Vec::new();
    let mut plain = Vec::new();
    for i in 0..genuine {
        let msg = vec![i as u8; 10 * i + 1];
        tx.seal(&msg, &mut stream).unwrap();
        plain.extend_from_slice(&msg);
    }
    stream.extend_from_slice(rest);
    feed(&mut conn, &stream, chunk);
    // The genuine records come first and all open; no arbitrary one after them does.
    assert_eq!(conn.records, genuine, "records opened");
    assert!(conn.opened == plain, "only the genuine plaintext comes out");
}

#[derive(Arbitrary, Debug)]
struct Msg {
    len: u32,
    fill: u8,
}

#[derive(Arbitrary, Debug)]
enum Mutation {
    /// Flip one bit of one record's ciphertext.
    Flip {
        rec: u16,
        bit: u32,
    },
    Drop {
        rec: u16,
    },
    Duplicate {
        rec: u16,
    },
    Swap {
        a: u16,
        b: u16,
    },
    /// Cut one record short (its prefix says the shorter length).
    Truncate {
        rec: u16,
        keep: u32,
    },
    /// A forged record inserted.
    Insert {
        at: u16,
        bytes: Vec<u8>,
    },
    /// Flip one bit anywhere in the stream, prefixes included.
    FlipStream {
        bit: u32,
    },
    /// The stream ends early.
    CutStream {
        keep: u32,
    },
}

#[derive(Arbitrary, Debug)]
struct Structured {
    /// The acceptor sends (else the dialer).
    acceptor_sends: bool,
    chunk: u16,
    msgs: Vec<Msg>,
    mutations: Vec<Mutation>,
}

/// Mode 3: genuine records, mutated.
fn structured(u: &mut Unstructured) {
    let Ok(s) = Structured::arbitrary(u) else { return };
    let (d, a) = pair();
    let (mut tx, rx) = if s.acceptor_sends { (a, d) } else { (d, a) };
    // Genuine records, each sealed from one message (cut where it is longer than a record).
    let mut total = 0;
    let mut genuine: Vec<(Vec<u8>, Vec<u8>)> = Vec::new(); // (record payload, its plaintext)
    for m in s.msgs.iter().take(MAX_MSGS) {
        let len = (m.len as usize % (2 * MAX_PLAIN + 100)).min(MAX_PLAIN_TOTAL - total);
        total += len;
        let msg: Vec<u8> = (0..len).map(|i| m.fill.wrapping_add(i as u8)).collect();
        let mut sealed = Vec::new();
        tx.seal(&msg, &mut sealed).unwrap();
        let mut rest = &sealed[..];
        let mut pieces = msg.chunks(MAX_PLAIN);
        while let Some((record, used)) = split_frame(rest, MAX_RECORD).unwrap() {
            let piece = pieces.next().expect("one record per piece");
            assert_eq!(record.len(), piece.len() + TAG_LEN);
            genuine.push((record.to_vec(), piece.to_vec()));
            rest = &rest[used..];
        }
        assert!(rest.is_empty() && pieces.next().is_none());
    }
    // The records delivered.
    let mut recs: Vec<Vec<u8>> = genuine.iter().map(|(r, _)| r.clone()).collect();
    let mut cut_stream: Option<u32> = None;
    let mut flip_stream: Vec<u32> = Vec::new();
    let unchanged = s.mutations.is_empty();
    for m in s.mutations.into_iter().take(MAX_MUTATIONS) {
        let n = recs.len();
        match m {
            Mutation::Flip { rec, bit } if n > 0 => {
                let r = &mut recs[rec as usize % n];
                if !r.is_empty() {
                    let bit = bit as usize % (r.len() * 8);
                    r[bit / 8] ^= 1 << (bit % 8);
                }
            }
            Mutation::Drop { rec } if n > 0 => {
                recs.remove(rec as usize % n);
            }
            Mutation::Duplicate { rec } if n > 0 => {
                let r = recs[rec as usize % n].clone();
                recs.insert(rec as usize % n, r);
            }
            Mutation::Swap { a, b } if n > 0 => recs.swap(a as usize % n, b as usize % n),
            Mutation::Truncate { rec, keep } if n > 0 => {
                let r = &mut recs[rec as usize % n];
                r.truncate(keep as usize % (r.len() + 1));
            }
            Mutation::Insert { at, mut bytes } => {
                bytes.truncate(MAX_FORGED);
                recs.insert(at as usize % (n + 1), bytes);
            }
            Mutation::FlipStream { bit } => flip_stream.push(bit),
            Mutation::CutStream { keep } => cut_stream = Some(keep),
            _ => {}
        }
    }
    let mut stream = Vec::new();
    for r in &recs {
        stream.extend_from_slice(&(r.len() as u32).to_be_bytes());
        stream.extend_from_slice(r);
    }
    if !stream.is_empty() {
        for bit in flip_stream {
            let bit = bit as usize % (stream.len() * 8);
            stream[bit / 8] ^= 1 << (bit % 8);
        }
    }
    if let Some(keep) = cut_stream {
        stream.truncate(keep as usize % (stream.len() + 1));
    }

    // The oracle, from the stream as cut into records: each record must open exactly when it is
    // byte for byte the next genuine record; the first that must not closes the link.
    let mut want_records = 0;
    let mut want_plain: Vec<u8> = Vec::new();
    let mut at = 0;
    while let Ok(Some((record, used))) = split_frame(&stream[at..], MAX_RECORD) {
        match genuine.get(want_records) {
            Some((r, p)) if r[..] == *record => {
                want_records += 1;
                want_plain.extend_from_slice(p);
                at += used;
            }
            _ => break,
        }
    }

    let mut conn = Conn::new(!s.acceptor_sends);
    conn.phase = Phase::Open(Box::new(rx));
    let chunk = usize::from(s.chunk % 8192) + 1;
    feed(&mut conn, &stream, chunk);
    assert_eq!(conn.records, want_records, "records opened");
    assert!(conn.opened == want_plain, "the plaintext of the genuine records in order");
    if at == stream.len() {
        // Every record was genuine and in order: the link stays open.
        assert!(!conn.closed(), "a link of genuine records closed");
    }
    if unchanged {
        assert_eq!(conn.records, genuine.len(), "genuine records in order all open");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else { return };
    match sel % 4 {
        0 | 1 => {
            let Some((&c, rest)) = rest.split_first() else { return };
            from_the_start(sel % 4 == 1, sel & 0x04 != 0, usize::from(c) * 17 + 1, rest);
        }
        2 => {
            let Some((&c, rest)) = rest.split_first() else { return };
            records(usize::from(sel >> 2) % 5, usize::from(c) * 17 + 1, rest);
        }
        _ => structured(&mut Unstructured::new(rest)),
    }
});
