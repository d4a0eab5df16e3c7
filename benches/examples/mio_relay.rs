//! The relay on real TCP: broadcast frames per second through ONE relay on loopback
//! (1 parent → relay → 12 children), side by side with a bare mio forwarder measured in the
//! same run.
//!
//! **Plush.** The relay is a real [`plush_core::Node`] in a real `plush-mio` [`Driver`] on a
//! thread of its own. It joins a tree through the ordinary protocol: it dials its parent
//! (hello, then the Noise handshake of the secure channel), sends `Join`, is accepted, and is handed 12 joiners by
//! `Join(Redirect)` from its parent, which it dials and accepts as children. The parent then
//! streams `Broadcast` frames; the relay decodes each one, hands the same bytes to its 12
//! children and answers its parent with a `BroadcastReply` (one for a run of broadcasts: see
//! below), all through the driver's read buffers, write queues and `writev`. Nothing of the
//! relay is stubbed.
//!
//! **Baseline.** A minimal mio forwarder with no protocol, on the same thread layout: it reads
//! length-prefixed frames from one TCP connection into a 64 KiB buffer (two frames' worth when
//! that is more; at most 16 reads per loop turn, as the driver) and writes every whole frame
//! read to 12 TCP connections: the run of whole frames of each read goes out in one `write` per
//! child; what a child's socket does not take waits in a per-child buffer, and reading pauses
//! while one holds more than 1 MiB. `--baseline-read N` gives it an N-byte buffer instead: the
//! kernel's cost per frame falls as reads and writes grow (256 KiB: about a fifth more frames
//! per second than 64 KiB on the machine of `benches/README.md`).
//!
//! **The relay's batches.** The driver hands the node a turn's reads from the parent (up to 16
//! of 16 KiB) as one batch (`plush_core::batch`): the broadcasts for the children leave as one
//! buffer the 12 share, written once per child per turn, and the relay's replies to a run of
//! broadcasts are coalesced into one.
//!
//! **Frame size.** By default every broadcast is the smallest frame (10 bytes, prefix included):
//! the per-frame costs at their worst. `--frame-bytes N` pads each broadcast with a filler
//! (`plush_core::wire::Filler`: bytes that only give the frame its size, decoded without a copy)
//! to N bytes, the sizes that job announcements (a few hundred bytes) and a push's chunks (tens
//! to hundreds of KiB) have. The parent's window is also bounded to 2 MiB in flight: half the
//! relay's write-queue limit (`DriverConfig::write_queue_limit`, 4 MiB), which a stream of
//! broadcasts, having no flow control of its own, must not overrun. (With 64 MiB, once the relay
//! had become faster than the children could read 16 KiB frames, its queues passed the limit and
//! it closed the children: the round measured nothing.)
//!
//! **Diagnosis** (`--diagnose`, a third side): the same forwarder with the driver's write
//! strategy instead, each frame in a reference-counted buffer of its own shared by the 12
//! queues, written 64 frames (iovecs) per `writev`. `baseline / iovec` is then the price of
//! that strategy alone, `iovec / plush` the price of the protocol and the driver's bookkeeping.
//!
//! **Harness.** Identical for both: a parent thread writes the same broadcast frame over and over
//! (64 KiB `write`s), keeping at most `--window` frames in flight beyond what the slowest child
//! has received; one thread reads the 12 children with mio and counts bytes. For Plush the
//! harness speaks the protocol only as far as the relay needs: hellos, the Noise handshake
//! (`plush_mio::secure`, the same code as the driver's), `JoinAccept` and `Join(Redirect)` from
//! the parent, and a heartbeat from each child every 500 ms (the relay declares silent links
//! dead); it reads and discards the relay's replies.
//!
//! **Sealed links.** Every link of the Plush relay is a secure channel: the parent seals its
//! broadcasts into records of up to 64 KiB, and the relay opens them and seals each child's copy
//! on its own (per-link keys). The baseline forwards plaintext: the ratio is the whole price of
//! the protocol *and* of the encryption. The harness's children do not open what they receive
//! (that would put twelve streams of decryption on the harness's one CPU): they count the
//! plaintext bytes of each record from its length prefix (ciphertext minus the 16-byte tag).
//! That the relay's records really open is checked during the setup, where every frame the
//! children and the parent wait for is opened.
//!
//! The relay (or forwarder) is pinned to a CPU of its own and the harness to the other CPUs,
//! when there are at least two (`--no-pin` to let the scheduler place threads).
//!
//! Rounds alternate baseline and Plush, each with fresh connections and threads; a round warms
//! up, then counts the frames the slowest child received during a fixed time. The relay
//! delivers in batches (a turn of its loop reads 16 times up to 16 KiB per readiness before it
//! writes: batches of about 28,000 frames), so the count moves in steps: the rate is taken
//! between the first and the last step seen in the window. `MIO_RELAY_TRACE=1` prints the count every 100 ms. The figure is
//! the ratio of the medians:
//! `ratio = baseline frames/s ÷ Plush frames/s` (1.0 is parity). The last line printed is JSON:
//! `{"plush_frames_per_s": P, "baseline_frames_per_s": B, "ratio": R, ...}`.
//!
//! `cargo run --release -p plush-benches --example mio_relay -- [--quick] [--rounds N]
//! [--seconds S] [--warmup S] [--window FRAMES] [--no-pin] [--diagnose]
//! [--only plush|baseline|iovec] [--frame-bytes N] [--baseline-read N]`

use mio::net::TcpStream as MioStream;
use mio::{Events, Interest, Poll, Token};
use plush_core::frame::{encode_hello, encode_once, split_frame, FramePool, PREFIX};
use plush_core::wire::MAX_FILLER;
use plush_core::wire::{Filler, Hello, JoinMode, List, Message, Role, TreeMsg};
use plush_core::{Command, Config, Instant, Node, NodeId};
use plush_mio::driver::Driver;
use plush_mio::secure::{Channel, Handshake, MAX_RECORD, TAG_LEN};
use plush_mio::{DriverConfig, Key};
use std::collections::VecDeque;
use std::io::{self, IoSlice, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant as StdInstant};

/// Children of the relay.
const CHILDREN: usize = 12;
/// The cluster key of the run.
const KEY: [u8; 32] = *b"plush mio_relay benchmark key 32";

fn key() -> Key {
    Key::from_bytes(KEY)
}
/// The id carried by every broadcast (a 3-byte varint): frames of 10 bytes, prefix included, with
/// an empty filler (`--frame-bytes` makes them longer).
const BROADCAST_ID: u64 = 1 << 20;
/// Setup (connections, handshakes, joins) must finish within this long.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);
/// The baseline's read buffer.
const FORWARD_BUF: usize = 64 << 10;
/// Largest `--frame-bytes`: the largest filler, its length prefix and the rest of the frame.
const MAX_FRAME_BYTES: usize = MAX_FILLER + 12;
/// Frames in flight past the slowest child are at most `--window`, and at most this many bytes
/// (half the relay's write-queue limit: see the top of the file).
const WINDOW_BYTES: u64 = 2 << 20;
/// Reads per turn of the forwarder's loop at most (the driver's `READS_PER_EVENT`).
const FORWARD_READS: usize = 16;
/// The baseline stops reading while a child's pending bytes exceed this.
const FORWARD_PENDING: usize = 1 << 20;
/// Bytes per `write` of the parent.
const PARENT_BLOCK: usize = 64 << 10;
/// How often each harness child sends a heartbeat to the Plush relay.
const CHILD_HEARTBEAT: Duration = Duration::from_millis(500);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// The bare forwarder: whole runs of frames, one `write` per child per read.
    Baseline,
    /// The bare forwarder with the driver's write strategy (diagnostic, `--diagnose`): each
    /// frame in a buffer of its own shared by the 12 queues, 64 frames per `writev`.
    Iovec,
    /// The real relay.
    Plush,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Baseline => "baseline",
            Mode::Iovec => "iovec",
            Mode::Plush => "plush",
        }
    }
}

struct Opts {
    rounds: usize,
    seconds: f64,
    warmup: f64,
    window: u64,
    pin: bool,
    /// Run one side only (for profiling); no ratio then.
    only: Option<Mode>,
    /// Also run the `iovec` forwarder, which tells the cost of the write strategy apart.
    diagnose: bool,
    /// Size of each broadcast frame, prefix included (`None`: the smallest, 10 bytes).
    frame_bytes: Option<usize>,
    /// The baseline's read buffer: the most it reads, and so forwards, per `read` and `write`.
    baseline_read: usize,
}

fn usage() -> ! {
    eprintln!(
        "usage: mio_relay [--quick] [--rounds N] [--seconds S] [--warmup S] [--window FRAMES] [--no-pin]\n\
         \x20                [--diagnose] [--only plush|baseline|iovec] [--frame-bytes N] [--baseline-read N]\n\
         Frames per second through one relay (1 parent -> relay -> 12 children) on loopback: the\n\
         plush-mio Driver around a real Node, against a bare mio forwarder. Defaults: 3 rounds of\n\
         3 s each (after 0.5 s of warm-up) per side; --quick: 2 rounds of 1.5 s (0.3 s warm-up);\n\
         --diagnose adds a third side, the bare forwarder with the driver's write strategy (one\n\
         buffer and one iovec per frame, 64 per writev); --only runs one side (for profiling) and\n\
         prints no ratio; --frame-bytes N makes every broadcast frame N bytes long, prefix\n\
         included (10, the smallest, by default; at most 65,548: a filler of 64 KiB);\n\
         --baseline-read N gives the baseline an N-byte read buffer (64 KiB by default): it reads\n\
         and writes up to N bytes a call."
    );
    std::process::exit(2)
}

fn parse_opts() -> Opts {
    let mut o = Opts {
        rounds: 3,
        seconds: 3.0,
        warmup: 0.5,
        window: 200_000,
        pin: true,
        only: None,
        diagnose: false,
        frame_bytes: None,
        baseline_read: FORWARD_BUF,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| -> f64 {
            match args.next().and_then(|v| v.parse::<f64>().ok()) {
                Some(v) if v > 0.0 => v,
                _ => {
                    eprintln!("{name} wants a positive number");
                    usage()
                }
            }
        };
        match a.as_str() {
            "--quick" => {
                o.rounds = 2;
                o.seconds = 1.5;
                o.warmup = 0.3;
            }
            "--rounds" => o.rounds = value("--rounds") as usize,
            "--seconds" => o.seconds = value("--seconds"),
            "--warmup" => o.warmup = value("--warmup"),
            "--window" => o.window = value("--window") as u64,
            "--frame-bytes" => {
                let n = value("--frame-bytes") as usize;
                if n > MAX_FRAME_BYTES {
                    eprintln!("--frame-bytes: at most {MAX_FRAME_BYTES}");
                    usage()
                }
                o.frame_bytes = Some(n);
            }
            "--baseline-read" => o.baseline_read = value("--baseline-read") as usize,
            "--no-pin" => o.pin = false,
            "--diagnose" => o.diagnose = true,
            "--only" => {
                o.only = match args.next().as_deref() {
                    Some("plush") => Some(Mode::Plush),
                    Some("baseline") => Some(Mode::Baseline),
                    Some("iovec") => Some(Mode::Iovec),
                    _ => usage(),
                }
            }
            _ => usage(),
        }
    }
    o.rounds = o.rounds.max(1);
    o
}

// ----- CPUs ---------------------------------------------------------------------------------------

/// The CPUs this process may run on.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: `cpu_set_t` is plain data (all zeroes is the empty set); `sched_getaffinity` writes
    // at most `size_of::<cpu_set_t>()` bytes into it, and `CPU_ISSET` reads within it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize).filter(|&c| libc::CPU_ISSET(c, &set)).collect()
    }
}

/// Restrict the calling thread to `cpus` (nothing happens for an empty list).
fn pin_to(cpus: &[usize]) {
    if cpus.is_empty() {
        return;
    }
    // SAFETY: as above; `sched_setaffinity(0, ..)` changes the calling thread only.
    let ok = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cpus {
            libc::CPU_SET(c, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    };
    if !ok {
        eprintln!("warning: cannot pin a thread to CPUs {cpus:?}");
    }
}

/// Where the threads run: the middle (relay or forwarder) alone, the harness elsewhere.
#[derive(Clone)]
struct Cpus {
    middle: Vec<usize>,
    harness: Vec<usize>,
}

// ----- the harness's side of the protocol ---------------------------------------------------------

/// Frames read from a blocking stream during the setup: handshake frames, then (once
/// `chan` is set) frames inside sealed records.
#[derive(Default)]
struct FrameReader {
    buf: Vec<u8>,
    chan: Option<Channel>,
    plain: Vec<u8>,
}

impl FrameReader {
    fn next(&mut self, s: &mut TcpStream) -> io::Result<Vec<u8>> {
        let bad = |e: String| io::Error::new(io::ErrorKind::InvalidData, e);
        loop {
            if let Some(chan) = self.chan.as_mut() {
                // Open every whole record; frames are cut from the plaintext.
                while let Some((record, used)) = split_frame(&self.buf, MAX_RECORD).map_err(|e| bad(e.to_string()))? {
                    chan.open(record, &mut self.plain).map_err(|e| bad(e.to_string()))?;
                    self.buf.drain(..used);
                }
                if let Some((payload, used)) = split_frame(&self.plain, 1 << 20).map_err(|e| bad(e.to_string()))? {
                    let p = payload.to_vec();
                    self.plain.drain(..used);
                    return Ok(p);
                }
            } else if let Some((payload, used)) = split_frame(&self.buf, 1 << 20).map_err(|e| bad(e.to_string()))? {
                let p = payload.to_vec();
                self.buf.drain(..used);
                return Ok(p);
            }
            let mut tmp = [0u8; 4096];
            let n = s.read(&mut tmp)?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&tmp[..n]);
        }
    }

    /// Read frames until one decodes to a message `want` accepts.
    fn wait_for(&mut self, s: &mut TcpStream, what: &str, want: impl Fn(&Message) -> bool) -> Message {
        loop {
            let payload = self.next(s).unwrap_or_else(|e| panic!("waiting for {what}: {e}"));
            if let Ok(m) = Message::decode(&payload) {
                if want(&m) {
                    return m;
                }
            }
        }
    }
}

fn frame_of(payload: &[u8]) -> Vec<u8> {
    let mut v = (payload.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(payload);
    v
}

fn encoded(msg: &Message) -> Vec<u8> {
    encode_once(msg).expect("a small message encodes").to_vec()
}

/// The accepting side of the hellos and the Noise handshake, on a connection the relay
/// dialed. Returns the relay's hello and the channel (`rd` opens what comes next with its own
/// copy of the receiving side: see [`split_channel`]).
fn handshake_accept(s: &mut TcpStream, rd: &mut FrameReader, me: NodeId, nonce: u64) -> (Hello, Channel) {
    let ours = encode_hello(&Hello::new(me, Role::Client, nonce));
    s.write_all(&ours).expect("hello written");
    let theirs_raw = rd.next(s).expect("the relay's hello");
    let theirs = Hello::decode(&theirs_raw).expect("a valid hello");
    let mut hs = Handshake::start(&key(), false, &theirs_raw, &ours[PREFIX..]).expect("a handshake starts");
    hs.read(&rd.next(s).expect("the relay's first handshake message")).expect("the relay holds the key");
    let reply = hs.next_frame().expect("our handshake message").expect("our turn");
    s.write_all(&reply).expect("handshake message written");
    assert!(hs.is_finished());
    (theirs, hs.into_channel().expect("a channel"))
}

fn accept_by(l: &TcpListener, deadline: StdInstant) -> TcpStream {
    l.set_nonblocking(true).expect("a non-blocking listener");
    loop {
        match l.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).expect("a blocking stream");
                s.set_nodelay(true).expect("nodelay");
                s.set_read_timeout(Some(SETUP_TIMEOUT)).expect("a read timeout");
                return s;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                assert!(StdInstant::now() < deadline, "nobody connected to {:?} in time", l.local_addr());
                thread::sleep(Duration::from_millis(1));
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
}

fn into_mio(s: TcpStream) -> MioStream {
    s.set_read_timeout(None).expect("no read timeout");
    s.set_nonblocking(true).expect("a non-blocking stream");
    MioStream::from_std(s)
}

// ----- one round ----------------------------------------------------------------------------------

/// What the threads of a round share.
#[derive(Default)]
struct Shared {
    /// The data phase has begun.
    go: AtomicBool,
    /// The round is over: the middle stops.
    stop: AtomicBool,
    /// The middle has stopped: the harness stops.
    done: AtomicBool,
    /// Frames the slowest child has received in the data phase.
    delivered: AtomicU64,
    /// Frames the parent has written.
    sent: AtomicU64,
    /// Bytes the parent read back from the middle (the relay's replies).
    up_bytes: AtomicU64,
}

/// Counters of the Plush relay at the end of a round.
#[derive(Debug, Default)]
struct RelayReport {
    children: usize,
    frames_in: u64,
    frames_out: u64,
    bytes_in: u64,
    bytes_out: u64,
    write_overflows: u64,
}

struct RoundResult {
    frames_per_s: f64,
    sent: u64,
    delivered: u64,
    up_bytes: u64,
    relay: Option<RelayReport>,
}

/// The payload of a broadcast whose frame is `bytes` long, prefix included (the smallest
/// frame, 10 bytes, when `bytes` is smaller or `None`).
fn broadcast_payload(bytes: Option<usize>) -> Vec<u8> {
    let payload = |filler: u32| {
        let msg = Message::Tree(TreeMsg::Broadcast { id: BROADCAST_ID, filler: Filler(filler) });
        FramePool::default().encode(&msg, 1 << 20).expect("a broadcast encodes").payload().to_vec()
    };
    let smallest = payload(0);
    let Some(want) = bytes else { return smallest };
    // The filler's length prefix grows with it: start just short and add a byte at a time.
    let mut filler = want.saturating_sub(frame_of(&smallest).len() + 2) as u32;
    loop {
        let p = payload(filler);
        if frame_of(&p).len() >= want || filler as usize >= MAX_FILLER {
            return p;
        }
        filler += 1;
    }
}

fn bind() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").expect("a loopback listener")
}

fn round(mode: Mode, o: &Opts, cpus: &Cpus) -> RoundResult {
    let frame = frame_of(&broadcast_payload(o.frame_bytes));
    let parent_l = bind();
    let parent_addr = parent_l.local_addr().expect("an address");
    let child_ls: Vec<TcpListener> = (0..CHILDREN).map(|_| bind()).collect();
    let child_addrs: Vec<SocketAddr> = child_ls.iter().map(|l| l.local_addr().expect("an address")).collect();
    let shared = Arc::new(Shared::default());
    let (ready_tx, ready_rx) = mpsc::channel::<&'static str>();

    let kids = {
        let (shared, ready, cpus, flen) = (Arc::clone(&shared), ready_tx.clone(), cpus.harness.clone(), frame.len());
        thread::spawn(move || {
            pin_to(&cpus);
            children(mode, child_ls, &shared, ready, flen)
        })
    };
    let parent = {
        let (shared, ready, cpus, frame) = (Arc::clone(&shared), ready_tx.clone(), cpus.harness.clone(), frame.clone());
        let window = o.window.min(WINDOW_BYTES / frame.len() as u64).max(4);
        let (window, ids) = (window, child_addrs.iter().map(|a| NodeId::new(*a)).collect::<Vec<_>>());
        thread::spawn(move || {
            pin_to(&cpus);
            parent(mode, parent_l, ids, &shared, ready, &frame, window)
        })
    };
    let middle = {
        let (shared, ready, cpus, flen) = (Arc::clone(&shared), ready_tx, cpus.middle.clone(), frame.len());
        let bufsize = o.baseline_read;
        thread::spawn(move || {
            pin_to(&cpus);
            match mode {
                Mode::Plush => Some(relay(NodeId::new(parent_addr), &shared, ready)),
                Mode::Baseline | Mode::Iovec => {
                    forwarder(mode, parent_addr, &child_addrs, &shared, ready, flen, bufsize);
                    None
                }
            }
        })
    };

    let deadline = StdInstant::now() + SETUP_TIMEOUT;
    let mut ready = Vec::new();
    while ready.len() < 3 {
        let left = deadline.saturating_duration_since(StdInstant::now());
        match ready_rx.recv_timeout(left) {
            Ok(who) => ready.push(who),
            Err(_) => panic!("{}: setup did not finish in {SETUP_TIMEOUT:?} (ready: {ready:?})", mode.name()),
        }
    }
    shared.go.store(true, Ordering::Release);
    thread::sleep(Duration::from_secs_f64(o.warmup));
    // The count advances in steps (a relay turn delivers a batch of frames at once): the rate is
    // taken between the first and the last step seen in the window, so that a whole number of
    // batches is counted; it falls back to the window's ends when fewer than two steps came.
    let trace = std::env::var_os("MIO_RELAY_TRACE").is_some();
    let t0 = StdInstant::now();
    let end = t0 + Duration::from_secs_f64(o.seconds);
    let d0 = shared.delivered.load(Ordering::Acquire);
    let (mut first, mut last, mut seen, mut last_trace) = (None, None, d0, t0);
    loop {
        let now = StdInstant::now();
        let d = shared.delivered.load(Ordering::Acquire);
        if d != seen {
            seen = d;
            first = first.or(Some((now, d)));
            last = Some((now, d));
        }
        if trace && now >= last_trace + Duration::from_millis(100) {
            last_trace = now;
            let sent = shared.sent.load(Ordering::Acquire);
            eprintln!("  {:>6.2} s: sent {sent}, delivered {d}", (now - t0).as_secs_f64());
        }
        if now >= end {
            break;
        }
        thread::sleep(Duration::from_millis(1));
    }
    let (t1, d1) = (StdInstant::now(), shared.delivered.load(Ordering::Acquire));
    let frames_per_s = match (first, last) {
        (Some((ta, da)), Some((tb, db))) if tb > ta && db > da => (db - da) as f64 / (tb - ta).as_secs_f64(),
        _ => (d1 - d0) as f64 / (t1 - t0).as_secs_f64(),
    };
    shared.stop.store(true, Ordering::Release);
    let relay = middle.join().expect("the middle thread");
    shared.done.store(true, Ordering::Release);
    parent.join().expect("the parent thread");
    kids.join().expect("the children thread");
    RoundResult {
        frames_per_s,
        sent: shared.sent.load(Ordering::Acquire),
        delivered: shared.delivered.load(Ordering::Acquire),
        up_bytes: shared.up_bytes.load(Ordering::Acquire),
        relay,
    }
}

// ----- the parent -----------------------------------------------------------------------------------

fn parent(
    mode: Mode,
    listener: TcpListener,
    children: Vec<NodeId>,
    shared: &Shared,
    ready: mpsc::Sender<&'static str>,
    frame: &[u8],
    window: u64,
) {
    let me = NodeId::new(listener.local_addr().expect("an address"));
    let mut s = accept_by(&listener, StdInstant::now() + SETUP_TIMEOUT);
    // Plush: our channel to the relay. Setup frames are read through `rd`, which opens records
    // with the channel; from the data phase on, only our sending side is used (what comes up is
    // read and dropped).
    let mut rd = FrameReader::default();
    if mode == Mode::Plush {
        let (hello, chan) = handshake_accept(&mut s, &mut rd, me, 1);
        rd.chan = Some(chan);
        let relay = hello.node_id;
        rd.wait_for(
            &mut s,
            "the relay's join",
            |m| matches!(m, Message::Tree(TreeMsg::Join { joiner, .. }) if *joiner == relay),
        );
        let accept = TreeMsg::JoinAccept {
            path: List(vec![me]),
            top: List(vec![relay]),
            siblings: List(Vec::new()),
            direct: false,
        };
        let mut out = encoded(&Message::Tree(accept));
        for joiner in children {
            out.extend(encoded(&Message::Tree(TreeMsg::Join { joiner, mode: JoinMode::Redirect, hops: 1 })));
        }
        let mut sealed = Vec::new();
        rd.chan.as_mut().expect("a channel").seal(&out, &mut sealed).expect("sealed");
        s.write_all(&sealed).expect("accept and joins written");
    }
    let _ = ready.send("parent");
    while !shared.go.load(Ordering::Acquire) {
        if shared.done.load(Ordering::Acquire) {
            return;
        }
        thread::sleep(Duration::from_millis(1));
    }

    let flen = frame.len() as u64;
    let block: Vec<u8> = frame.repeat((PARENT_BLOCK / frame.len()).max(1));
    // Plush: plaintext taken from `block` is sealed into `sealed` and written from `sealed_off`.
    let mut chan = rd.chan.take();
    let (mut sealed, mut sealed_off, mut sealed_plain) = (Vec::<u8>::new(), 0usize, 0u64);
    let mut s = into_mio(s);
    let mut poll = Poll::new().expect("a poll");
    poll.registry().register(&mut s, Token(0), Interest::READABLE | Interest::WRITABLE).expect("registered");
    let mut events = Events::with_capacity(8);
    let mut scratch = vec![0u8; 64 << 10];
    let (mut sent, mut up) = (0u64, 0u64);
    'run: while !shared.done.load(Ordering::Acquire) {
        // Whatever comes up (replies, heartbeats) is read and dropped.
        loop {
            match s.read(&mut scratch) {
                Ok(0) => {
                    if !shared.stop.load(Ordering::Acquire) {
                        eprintln!("{}: the middle closed the parent's connection", mode.name());
                    }
                    break 'run;
                }
                Ok(n) => up += n as u64,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    if !shared.stop.load(Ordering::Acquire) {
                        eprintln!("{}: parent read: {e}", mode.name());
                    }
                    break 'run;
                }
            }
        }
        let mut wait = Duration::from_millis(10);
        loop {
            let in_flight = (sent / flen).saturating_sub(shared.delivered.load(Ordering::Acquire));
            if in_flight >= window {
                // The children are behind: look again shortly.
                wait = Duration::from_micros(200);
                break;
            }
            let room = ((window - in_flight) * flen) as usize;
            let off = (sent % block.len() as u64) as usize;
            let end = block.len().min(off + room);
            // Sealed: one record per piece of the block, and `sent` counts its plaintext once the
            // record is written whole. Plaintext (the baseline): the block as it is.
            let bytes = match chan.as_mut() {
                Some(chan) => {
                    if sealed_off == sealed.len() {
                        sealed.clear();
                        sealed_off = 0;
                        sealed_plain = (end - off) as u64;
                        chan.seal(&block[off..end], &mut sealed).expect("sealed");
                    }
                    &sealed[sealed_off..]
                }
                None => &block[off..end],
            };
            match s.write(bytes) {
                Ok(n) if chan.is_some() => {
                    sealed_off += n;
                    if sealed_off == sealed.len() {
                        sent += sealed_plain;
                    }
                }
                Ok(n) => sent += n as u64,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    if !shared.stop.load(Ordering::Acquire) {
                        eprintln!("{}: parent write: {e}", mode.name());
                    }
                    break 'run;
                }
            }
        }
        shared.sent.store(sent / flen, Ordering::Release);
        shared.up_bytes.store(up, Ordering::Release);
        match poll.poll(&mut events, Some(wait)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => panic!("poll: {e}"),
        }
    }
    shared.sent.store(sent / flen, Ordering::Release);
    shared.up_bytes.store(up, Ordering::Release);
}

// ----- the children ---------------------------------------------------------------------------------

fn children(mode: Mode, listeners: Vec<TcpListener>, shared: &Shared, ready: mpsc::Sender<&'static str>, flen: usize) {
    let deadline = StdInstant::now() + SETUP_TIMEOUT;
    let mut streams = Vec::with_capacity(CHILDREN);
    // Plush: each child's channel (for its heartbeats) and what is left over of the setup's
    // reads (the start of the data phase's records, counted below).
    let mut chans: Vec<Option<Channel>> = Vec::with_capacity(CHILDREN);
    let mut counters: Vec<RecordCounter> = Vec::with_capacity(CHILDREN);
    for (i, l) in listeners.iter().enumerate() {
        let mut s = accept_by(l, deadline);
        let mut counter = RecordCounter::default();
        if mode == Mode::Plush {
            let me = NodeId::new(l.local_addr().expect("an address"));
            let mut rd = FrameReader::default();
            let (_, chan) = handshake_accept(&mut s, &mut rd, me, 100 + i as u64);
            rd.chan = Some(chan);
            rd.wait_for(&mut s, "the relay's accept", |m| matches!(m, Message::Tree(TreeMsg::JoinAccept { .. })));
            // Bytes read past the accept belong to later records: counted as they come.
            counter.plain_leftover = rd.plain.len() as u64;
            counter.feed(&std::mem::take(&mut rd.buf));
            chans.push(rd.chan.take());
        } else {
            chans.push(None);
        }
        counters.push(counter);
        streams.push(into_mio(s));
    }
    let _ = ready.send("children");

    let heartbeat_plain = encoded(&Message::Tree(TreeMsg::Heartbeat));
    let mut poll = Poll::new().expect("a poll");
    for (i, s) in streams.iter_mut().enumerate() {
        poll.registry().register(s, Token(i), Interest::READABLE).expect("registered");
    }
    let mut events = Events::with_capacity(64);
    let mut buf = vec![0u8; 256 << 10];
    let mut bytes = [0u64; CHILDREN];
    let mut open = [true; CHILDREN];
    let mut last_beat = StdInstant::now();
    while !shared.done.load(Ordering::Acquire) {
        match poll.poll(&mut events, Some(Duration::from_millis(10))) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => panic!("poll: {e}"),
        }
        for ev in events.iter() {
            let i = ev.token().0;
            while open[i] {
                match streams[i].read(&mut buf) {
                    Ok(0) => open[i] = false,
                    Ok(n) => {
                        // Plaintext bytes: as read, or those of the records read (Plush).
                        let n = if mode == Mode::Plush { counters[i].feed(&buf[..n]) } else { n as u64 };
                        if shared.go.load(Ordering::Relaxed) {
                            bytes[i] += n;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => open[i] = false,
                }
            }
            if !open[i] && !shared.stop.load(Ordering::Acquire) {
                eprintln!("{}: child {i}'s connection closed", mode.name());
            }
        }
        let slowest = bytes.iter().copied().min().unwrap_or(0);
        shared.delivered.store(slowest / flen as u64, Ordering::Release);
        if mode == Mode::Plush && last_beat.elapsed() >= CHILD_HEARTBEAT {
            last_beat = StdInstant::now();
            for (i, s) in streams.iter_mut().enumerate() {
                let mut heartbeat = Vec::new();
                if let Some(chan) = chans[i].as_mut() {
                    chan.seal(&heartbeat_plain, &mut heartbeat).expect("sealed");
                }
                if open[i] && !matches!(s.write(&heartbeat), Ok(n) if n == heartbeat.len()) {
                    eprintln!("plush: child {i}: heartbeat not written whole");
                }
            }
        }
    }
}

/// Counts the plaintext bytes of a stream of sealed records from their length prefixes,
/// without opening them (see the top of the file).
#[derive(Default)]
struct RecordCounter {
    /// Bytes of the current record's prefix seen so far.
    head: Vec<u8>,
    /// Bytes of the current record still to come.
    left: usize,
    /// Plaintext bytes of the current record (counted once it is whole).
    current: usize,
    /// Plaintext the setup had opened but not used (counted once, with the first data).
    plain_leftover: u64,
}

impl RecordCounter {
    /// Take `data`; return the plaintext bytes of the records it completes.
    fn feed(&mut self, mut data: &[u8]) -> u64 {
        let mut plain = std::mem::take(&mut self.plain_leftover);
        while !data.is_empty() {
            if self.left > 0 {
                let n = self.left.min(data.len());
                self.left -= n;
                data = &data[n..];
                if self.left == 0 {
                    plain += std::mem::take(&mut self.current) as u64;
                }
                continue;
            }
            let need = PREFIX - self.head.len();
            let n = need.min(data.len());
            self.head.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.head.len() == PREFIX {
                let len = u32::from_be_bytes([self.head[0], self.head[1], self.head[2], self.head[3]]) as usize;
                self.head.clear();
                self.left = len;
                self.current = len.saturating_sub(TAG_LEN);
            }
        }
        plain
    }
}

// ----- the middle: the Plush relay ------------------------------------------------------------------

fn relay(parent: NodeId, shared: &Shared, ready: mpsc::Sender<&'static str>) -> RelayReport {
    let listener = bind();
    let me = NodeId::new(listener.local_addr().expect("an address"));
    let node = Node::new(me, Config::default(), 1, Instant::ZERO);
    let mut d = Driver::new(node, me, listener, Key::from_bytes(KEY), DriverConfig::default())
        .expect("the relay's driver starts");
    let now = d.now();
    d.m.handle_command(now, Command::Join { bootstrap: vec![parent] }).expect("a fresh node joins");
    d.drain();
    let mut announced = false;
    while !shared.stop.load(Ordering::Acquire) {
        d.turn(Some(Duration::from_millis(5))).expect("the relay's event loop");
        if !announced && d.m.parent() == Some(parent) && d.m.children().len() == CHILDREN {
            announced = true;
            let _ = ready.send("relay");
        }
    }
    let st = d.m.stats();
    RelayReport {
        children: d.m.children().len(),
        frames_in: st.frames_in,
        frames_out: st.frames_out,
        bytes_in: d.stats.bytes_in,
        bytes_out: d.stats.bytes_out,
        write_overflows: d.stats.write_overflows,
    }
}

// ----- the middle: the baseline forwarder -----------------------------------------------------------

/// One outgoing connection of the forwarder and what its socket did not take yet.
struct Down {
    s: MioStream,
    /// `Baseline`: bytes not written yet, from `off` on.
    pending: Vec<u8>,
    off: usize,
    /// `Iovec`: frames not written yet; `front_off` bytes of the first are written.
    frames: VecDeque<Rc<[u8]>>,
    front_off: usize,
    frame_bytes: usize,
}

impl Down {
    fn new(s: MioStream) -> Down {
        Down { s, pending: Vec::new(), off: 0, frames: VecDeque::new(), front_off: 0, frame_bytes: 0 }
    }

    fn waiting(&self) -> usize {
        self.pending.len() - self.off + self.frame_bytes - self.front_off
    }

    /// `Iovec`: queue a frame shared with the other children.
    fn queue(&mut self, f: &Rc<[u8]>) {
        self.frame_bytes += f.len();
        self.frames.push_back(Rc::clone(f));
    }

    /// `Iovec`: write queued frames, at most 64 slices per `writev`, as the driver does.
    fn flush_frames(&mut self) -> io::Result<()> {
        while !self.frames.is_empty() {
            let mut slices = [IoSlice::new(&[]); 64];
            let mut k = 0;
            for (i, f) in self.frames.iter().take(slices.len()).enumerate() {
                slices[i] = IoSlice::new(if i == 0 { &f[self.front_off..] } else { f });
                k += 1;
            }
            let mut n = match self.s.write_vectored(&slices[..k]) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            };
            while n > 0 {
                let Some(front) = self.frames.front() else { break };
                let rest = front.len() - self.front_off;
                if n >= rest {
                    n -= rest;
                    self.frame_bytes -= front.len();
                    self.front_off = 0;
                    self.frames.pop_front();
                } else {
                    self.front_off += n;
                    n = 0;
                }
            }
        }
        Ok(())
    }

    /// Write `bytes` now, or queue what the socket does not take.
    fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        let mut done = 0;
        if self.waiting() == 0 {
            while done < bytes.len() {
                match self.s.write(&bytes[done..]) {
                    Ok(n) => done += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            }
        }
        self.pending.extend_from_slice(&bytes[done..]);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.flush_frames()?;
        while self.pending.len() > self.off {
            match self.s.write(&self.pending[self.off..]) {
                Ok(n) => self.off += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        self.pending.clear();
        self.off = 0;
        Ok(())
    }
}

fn connect(addr: SocketAddr) -> MioStream {
    let s = TcpStream::connect(addr).expect("connected");
    s.set_nodelay(true).expect("nodelay");
    s.set_nonblocking(true).expect("a non-blocking stream");
    MioStream::from_std(s)
}

fn forwarder(
    mode: Mode,
    parent: SocketAddr,
    children: &[SocketAddr],
    shared: &Shared,
    ready: mpsc::Sender<&'static str>,
    flen: usize,
    bufsize: usize,
) {
    let mut poll = Poll::new().expect("a poll");
    let mut up = connect(parent);
    poll.registry().register(&mut up, Token(CHILDREN), Interest::READABLE).expect("registered");
    let mut downs: Vec<Down> = children.iter().map(|a| Down::new(connect(*a))).collect();
    for (i, d) in downs.iter_mut().enumerate() {
        poll.registry().register(&mut d.s, Token(i), Interest::WRITABLE).expect("registered");
    }
    let _ = ready.send("forwarder");
    let mut events = Events::with_capacity(64);
    // Room for two whole frames, whatever their size.
    let mut buf = vec![0u8; bufsize.max(2 * flen)];
    let (mut start, mut end) = (0usize, 0usize);
    let mut paused = false;
    // Set when the read budget ran out with bytes still waiting: poll without sleeping.
    let mut more = false;
    while !shared.stop.load(Ordering::Acquire) {
        let wait = if more { Duration::ZERO } else { Duration::from_millis(10) };
        match poll.poll(&mut events, Some(wait)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => panic!("poll: {e}"),
        }
        let mut failed = None;
        for ev in events.iter() {
            if ev.token().0 < CHILDREN {
                failed = failed.or(downs[ev.token().0].flush().err());
            }
        }
        if paused && downs.iter().all(|d| d.waiting() < FORWARD_PENDING) {
            paused = false;
        }
        more = false;
        let mut reads = 0;
        while !paused && failed.is_none() {
            if reads == FORWARD_READS {
                // Read budget spent (so that the loop sees `stop`): go on after a poll.
                more = true;
                break;
            }
            reads += 1;
            if end == buf.len() {
                buf.copy_within(start..end, 0);
                end -= start;
                start = 0;
            }
            match up.read(&mut buf[end..]) {
                Ok(0) => {
                    failed = Some(io::ErrorKind::UnexpectedEof.into());
                    break;
                }
                Ok(n) => end += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
            // Forward every whole frame read; a partial one waits for the rest.
            let mut p = start;
            while end - p >= 4 {
                let len = u32::from_be_bytes([buf[p], buf[p + 1], buf[p + 2], buf[p + 3]]) as usize;
                assert!(len + 4 <= buf.len(), "a frame larger than the forwarder's buffer");
                if end - p - 4 < len {
                    break;
                }
                p += 4 + len;
            }
            if mode == Mode::Iovec {
                let mut q = start;
                while q < p {
                    let len = u32::from_be_bytes([buf[q], buf[q + 1], buf[q + 2], buf[q + 3]]) as usize;
                    let frame: Rc<[u8]> = Rc::from(&buf[q..q + 4 + len]);
                    for d in &mut downs {
                        d.queue(&frame);
                    }
                    q += 4 + len;
                }
                for d in &mut downs {
                    failed = failed.or(d.flush_frames().err());
                }
            } else {
                for d in &mut downs {
                    failed = failed.or(d.send(&buf[start..p]).err());
                }
            }
            start = p;
            if start == end {
                (start, end) = (0, 0);
            }
            paused = downs.iter().any(|d| d.waiting() >= FORWARD_PENDING);
        }
        if let Some(e) = failed {
            if !shared.stop.load(Ordering::Acquire) {
                eprintln!("baseline: forwarder: {e}");
            }
            break;
        }
    }
}

// ----- main -----------------------------------------------------------------------------------------

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn main() {
    let o = parse_opts();
    let allowed = allowed_cpus();
    let cpus = match allowed.split_last() {
        Some((&last, rest)) if o.pin && !rest.is_empty() => Cpus { middle: vec![last], harness: rest.to_vec() },
        _ => Cpus { middle: Vec::new(), harness: Vec::new() },
    };
    pin_to(&cpus.harness);
    let flen = frame_of(&broadcast_payload(o.frame_bytes)).len();
    println!(
        "mio relay: 1 parent -> relay -> {CHILDREN} children on loopback, {flen}-byte broadcast frames, \
         window {} frames, {} round(s) of {} s (+{} s warm-up) per side",
        o.window, o.rounds, o.seconds, o.warmup
    );
    if cpus.middle.is_empty() {
        println!("threads not pinned (CPUs allowed: {allowed:?})");
    } else {
        println!("relay/forwarder pinned to CPU {:?}, parent and children to CPUs {:?}", cpus.middle, cpus.harness);
    }
    let (mut base, mut iovec, mut plush) = (Vec::new(), Vec::new(), Vec::new());
    for r in 0..o.rounds {
        for mode in [Mode::Baseline, Mode::Iovec, Mode::Plush] {
            let wanted = match o.only {
                Some(m) => m == mode,
                None => mode != Mode::Iovec || o.diagnose,
            };
            if !wanted {
                continue;
            }
            let res = round(mode, &o, &cpus);
            let mut line = format!(
                "round {}: {:<8} {:>12.0} frames/s through the middle ({:.0} deliveries/s; {} frames sent, {} delivered)",
                r + 1,
                mode.name(),
                res.frames_per_s,
                res.frames_per_s * CHILDREN as f64,
                res.sent,
                res.delivered,
            );
            if let Some(rr) = &res.relay {
                line.push_str(&format!(
                    "\n          relay: {} children, node frames in {} / out {}, driver bytes in {} / out {}, \
                     {} write overflows; parent read {:.1} bytes back per frame sent",
                    rr.children,
                    rr.frames_in,
                    rr.frames_out,
                    rr.bytes_in,
                    rr.bytes_out,
                    rr.write_overflows,
                    res.up_bytes as f64 / res.sent.max(1) as f64,
                ));
            }
            println!("{line}");
            if let Some(rr) = res.relay.as_ref().filter(|rr| rr.write_overflows > 0 || rr.children != CHILDREN) {
                // The relay closed children whose queues overran: the round measured a broken
                // tree, not the relay.
                eprintln!(
                    "mio_relay: round {} is void: the relay closed {} children's links (write queues over the limit)",
                    r + 1,
                    rr.write_overflows.max((CHILDREN - rr.children.min(CHILDREN)) as u64)
                );
                std::process::exit(1);
            }
            match mode {
                Mode::Baseline => base.push(res.frames_per_s),
                Mode::Iovec => iovec.push(res.frames_per_s),
                Mode::Plush => plush.push(res.frames_per_s),
            }
        }
    }
    if o.only.is_some() {
        return;
    }
    let (b, p) = (median(base), median(plush));
    if !iovec.is_empty() {
        let i = median(iovec);
        println!(
            "diagnosis: bulk writes -> one iovec per frame costs x{:.2} (baseline / iovec); the protocol and \
             the driver's bookkeeping on top cost x{:.2} (iovec / plush)",
            b / i,
            i / p
        );
    }
    let ratio = if p > 0.0 { format!("{:.3}", b / p) } else { "null".to_string() };
    println!("median: baseline {b:.0} frames/s, plush {p:.0} frames/s: ratio {ratio} (target <= 2.0)");
    println!(
        "{{\"plush_frames_per_s\": {p:.0}, \"baseline_frames_per_s\": {b:.0}, \"ratio\": {ratio}, \
         \"children\": {CHILDREN}, \"frame_bytes\": {flen}, \"baseline_read\": {}, \"rounds\": {}, \"seconds\": {}}}",
        o.baseline_read, o.rounds, o.seconds
    );
}
