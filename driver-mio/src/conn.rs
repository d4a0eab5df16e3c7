//! One TCP connection: its handshake phase, read buffers and bounded write queue.
//!
//! Layers, from the socket up: raw bytes; handshake frames (hellos and the two Noise messages,
//! each at most [`crate::secure::MAX_HANDSHAKE_FRAME`] bytes) until the handshake is done, then sealed records
//! ([`crate::secure`]); inside the records, the machine's frames. Outgoing, the machine's frames
//! wait in the [`WriteQueue`] in the clear and are sealed only when the socket can take them
//! ([`Conn::flush`]), at most [`SEAL_AHEAD`] bytes ahead of the socket, as a few large records.

use crate::secure::{Channel, Handshake, SecureError, MAX_PLAIN};
use mio::net::TcpStream;
use plush_core::frame::{extend_small, Frame, PREFIX};
use plush_core::NodeId;
use std::collections::VecDeque;
use std::io::{self, Write};
use std::net::IpAddr;
use std::time::Instant as StdInstant;

/// Bytes a read asks the kernel for at most: the size of the driver's one read buffer, which
/// every connection reads into (see [`ReadBuf`]).
pub const READ_CHUNK: usize = 16 << 10;
/// Frames this short are copied into a buffer of the queue's own rather than queued by
/// reference (see [`WriteQueue::push`]).
pub const COPY_BELOW: usize = 512;
/// Largest buffer small frames are copied into.
pub const BATCH: usize = 16 << 10;
/// Sealed bytes prepared ahead of the socket at most (plus one record): plaintext stays in the
/// queue, shared with the frame's other receivers, until the socket can take it.
pub const SEAL_AHEAD: usize = 128 << 10;

/// What a hello's nonce says about its connection, so that both ends of a pair of connections
/// to one peer agree on what the second one means (see the driver's module docs, "One link per
/// peer"). The hello's format is the one every version must keep decoding, so the nonce (a
/// random `u64` to the handshake, which takes it into its prologue) carries three fields:
/// - `incarnation` (bits 63..44): random per driver, the same on all its connections; a
///   connection from another incarnation of a peer is from a new process;
/// - `link` (bits 43..22): random per connection, never 0; the dialer's is the link's name at
///   both ends;
/// - `lost` (bits 21..0): from a dialer, the name of the last link to this peer that it had up
///   and lost (0: none it remembers); from an acceptor, 0.
///
/// The fields are short, so a name can collide with another by chance (one in 4 million per
/// comparison); a nonce from an older client is random, so its fields are too: two of its
/// connections look like two incarnations, and a second link from it replaces the first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkTag {
    /// The sender's incarnation (20 bits).
    pub incarnation: u32,
    /// The connection's name on the sender's side (22 bits, not 0).
    pub link: u32,
    /// The last link to the receiver the sender lost (22 bits; 0 for none).
    pub lost: u32,
}

impl LinkTag {
    const INCARNATION_BITS: u32 = 20;
    const LINK_BITS: u32 = 22;
    const LINK_MASK: u64 = (1 << Self::LINK_BITS) - 1;

    /// A fresh incarnation for a driver.
    pub fn new_incarnation() -> u32 {
        rand::random::<u32>() >> (32 - Self::INCARNATION_BITS)
    }

    /// A fresh link name (never 0).
    pub fn new_link() -> u32 {
        (rand::random::<u32>() >> (32 - Self::LINK_BITS)).max(1)
    }

    /// The nonce carrying this tag.
    pub fn nonce(self) -> u64 {
        (u64::from(self.incarnation) << (2 * Self::LINK_BITS))
            | ((u64::from(self.link) & Self::LINK_MASK) << Self::LINK_BITS)
            | (u64::from(self.lost) & Self::LINK_MASK)
    }

    /// The tag a nonce carries (any `u64` reads as one).
    pub fn of_nonce(n: u64) -> LinkTag {
        LinkTag {
            incarnation: (n >> (2 * Self::LINK_BITS)) as u32,
            link: ((n >> Self::LINK_BITS) & Self::LINK_MASK) as u32,
            lost: (n & Self::LINK_MASK) as u32,
        }
    }
}

/// What a second authenticated connection to a peer means, beside the open link `old`; both
/// are described by [`Ends`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Duplicate {
    /// The peer, or we, lost `old` and dialed again, or the peer is a new process: the new
    /// connection replaces `old`, and the machine hears `Closed` then `Connected`. The other
    /// end's machine heard of the loss already (it lost the link, or is new).
    Redial,
    /// Each side dialed one while it had no link: both ends keep the one dialed by the lower
    /// id and tell their machines nothing.
    Simultaneous,
}

/// A connection's two ends, as its hellos told them: who dialed, its name, and what the peer's
/// hello said.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ends {
    /// We dialed it.
    pub we_dialed: bool,
    /// Its name: the dialer's `link`.
    pub link: u32,
    /// The peer's hello.
    pub peer: LinkTag,
}

impl Duplicate {
    /// Classify `new` beside `old` from what both ends know alike, so that both reach the same
    /// verdict whatever the timing: another incarnation of the peer, or two dials by one side
    /// (it dials only without a link, so it lost the first) are redials; so is a dial by the
    /// peer that names `old` as the link it lost. A dial by the peer that does not name `old`
    /// was made while it had no link and before `old` was up at its end: a simultaneous open,
    /// as is a dial of ours beside `old` (we dialed without a link, so `old` came up here
    /// after, and the peer's dial of it named some other link, or none).
    pub fn classify(old: &Ends, new: &Ends) -> Duplicate {
        let redial = old.peer.incarnation != new.peer.incarnation
            || old.we_dialed == new.we_dialed
            || (!new.we_dialed && new.peer.lost == old.link);
        if redial {
            Duplicate::Redial
        } else {
            Duplicate::Simultaneous
        }
    }
}

/// Where a connection stands.
#[derive(Debug)]
pub enum Phase {
    /// Outgoing: the TCP connect is in progress.
    Connecting,
    /// Our hello is queued; the peer's is awaited.
    Hello,
    /// Hellos exchanged: the Noise handshake with `peer` (the id its hello announced) runs.
    Noise(Box<Handshake>, NodeId),
    /// Authenticated: the link to this peer.
    Open(NodeId),
    /// Lost the tie-break against another link to the same peer: nothing new is written; what
    /// was queued is flushed, then our side shuts down (unless [`Conn::hold`]); frames still
    /// read are delivered; it is dropped at the peer's end of stream or at its deadline.
    Retired(NodeId),
    /// The machine closed the link: what was queued is flushed, then our side shuts down; what
    /// is read is discarded; dropped at the peer's end of stream or at its deadline.
    Closing,
}

/// Bytes received and not yet taken as frames: the start of a frame that is not whole yet.
///
/// Reads go to the driver's read buffer ([`READ_CHUNK`] bytes, one for all connections), and
/// whole frames are taken from there; only what is left of a partial frame is copied here.
/// The memory is freed as soon as that frame is taken, so a connection between frames (every
/// idle link) holds none.
///
/// Bound: at most one frame (`PREFIX + max_frame`) plus [`READ_CHUNK`]. A prefix announcing
/// more than `max_frame` closes the connection before anything is kept (`split_frame` checks
/// it), room is reserved for the whole frame once its prefix is in, and a read appends with
/// `reserve_exact`, so the buffer never grows by doubling.
#[derive(Debug, Default)]
pub struct ReadBuf {
    kept: Vec<u8>,
}

/// The bytes the frame starting `rest` takes in all (at least `rest.len()`).
fn frame_want(rest: &[u8]) -> usize {
    let whole = match rest.get(..PREFIX) {
        Some(p) => PREFIX + u32::from_be_bytes([p[0], p[1], p[2], p[3]]) as usize,
        None => PREFIX,
    };
    whole.max(rest.len())
}

impl ReadBuf {
    /// Nothing is kept: frames can be cut from the next read's bytes in place.
    pub fn is_empty(&self) -> bool {
        self.kept.is_empty()
    }

    /// Keep `rest`, what is left of a read after its whole frames were taken (nothing kept
    /// before). Empty `rest` keeps nothing.
    pub fn keep(&mut self, rest: &[u8]) {
        if rest.is_empty() {
            self.kept = Vec::new();
            return;
        }
        let mut v = Vec::with_capacity(frame_want(rest));
        v.extend_from_slice(rest);
        self.kept = v;
    }

    /// Take the kept bytes out with `fresh` (a read's bytes) appended, to cut frames from;
    /// hand the result back with [`ReadBuf::put_back`].
    pub fn take_joined(&mut self, fresh: &[u8]) -> Vec<u8> {
        let mut v = std::mem::take(&mut self.kept);
        v.reserve_exact(fresh.len());
        v.extend_from_slice(fresh);
        v
    }

    /// Hand back what [`ReadBuf::take_joined`] returned, of which the first `used` bytes were
    /// taken as frames. The rest is kept, in a buffer sized for its frame.
    pub fn put_back(&mut self, mut v: Vec<u8>, used: usize) {
        v.drain(..used.min(v.len()));
        if v.is_empty() {
            self.kept = Vec::new();
            return;
        }
        let want = frame_want(&v);
        if v.capacity() < want {
            v.reserve_exact(want - v.len());
        } else if v.capacity() > want + READ_CHUNK {
            // A large frame was taken and a small one started: do not hold the large buffer.
            v.shrink_to(want);
        }
        self.kept = v;
    }

    /// Bytes of memory held.
    pub fn capacity(&self) -> usize {
        self.kept.capacity()
    }
}

/// Something queued for writing.
#[derive(Debug)]
pub enum Chunk {
    /// A frame from the machine (shared with its other receivers).
    Frame(Frame),
    /// Handshake bytes of the driver's own.
    Bytes(Vec<u8>),
}

impl Chunk {
    fn bytes(&self) -> &[u8] {
        match self {
            Chunk::Frame(f) => f,
            Chunk::Bytes(b) => b,
        }
    }
}

/// Frames waiting to be written, oldest first. The driver bounds it in bytes
/// ([`crate::DriverConfig::write_queue_limit`]).
#[derive(Debug, Default)]
pub struct WriteQueue {
    q: VecDeque<Chunk>,
    /// Bytes of the front chunk already written.
    off: usize,
    /// Bytes queued and not written.
    bytes: usize,
}

impl WriteQueue {
    /// Queue a chunk. A small one (at most [`COPY_BELOW`] bytes) is copied onto the end of the
    /// last chunk when that is a buffer of our own with room (up to [`BATCH`] bytes): a stream of
    /// small frames is written from a few contiguous buffers, not one `iovec` each (the kernel
    /// copies every piece separately, which cost a relay most of its time).
    pub fn push(&mut self, c: Chunk) {
        let b = c.bytes();
        self.bytes += b.len();
        if b.len() <= COPY_BELOW {
            if let Some(Chunk::Bytes(last)) = self.q.back_mut() {
                if last.len() + b.len() <= BATCH {
                    extend_small(last, b);
                    return;
                }
            }
            if let Chunk::Frame(_) = c {
                let mut own = Vec::with_capacity(4 * COPY_BELOW);
                own.extend_from_slice(b);
                self.q.push_back(Chunk::Bytes(own));
                return;
            }
        }
        self.q.push_back(c);
    }

    /// Bytes waiting.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Nothing waits.
    pub fn is_empty(&self) -> bool {
        self.q.is_empty()
    }

    /// Move up to `max` bytes from the front of the queue to the end of `out`, in order.
    pub fn take_into(&mut self, out: &mut Vec<u8>, max: usize) {
        let mut left = max;
        while left > 0 {
            let Some(front) = self.q.front() else { break };
            let b = &front.bytes()[self.off..];
            let n = b.len().min(left);
            out.extend_from_slice(&b[..n]);
            left -= n;
            self.bytes -= n;
            if n == b.len() {
                self.off = 0;
                self.q.pop_front();
            } else {
                self.off += n;
            }
        }
        if self.q.is_empty() && self.q.capacity() > 64 {
            self.q = VecDeque::new();
        }
    }
}

/// One connection and everything the driver keeps for it.
#[derive(Debug)]
pub struct Conn {
    /// The socket.
    pub stream: TcpStream,
    /// For a connection we dialed: the node we dialed.
    pub dialed: Option<NodeId>,
    /// Where it stands.
    pub phase: Phase,
    /// Our hello's nonce on this connection (a [`LinkTag`]; set when the hello is first sent).
    pub nonce: u64,
    /// The connection's two ends, once the peer's hello is in.
    pub ends: Option<Ends>,
    /// When the current phase must be over (connect, handshake, linger); `None` while open.
    pub deadline: Option<StdInstant>,
    /// Incoming bytes of a handshake frame or record not yet whole.
    pub rbuf: ReadBuf,
    /// Opened plaintext of a machine frame not yet whole.
    pub plain: ReadBuf,
    /// The machine's frames, in the clear, not yet sealed.
    pub wq: WriteQueue,
    /// Bytes ready for the socket (handshake frames, sealed records), from `out_off` on.
    pub out: Vec<u8>,
    /// Bytes of `out` already written.
    pub out_off: usize,
    /// The secure channel, once the handshake is done.
    pub chan: Option<Box<Channel>>,
    /// For an accepted connection: the peer's address, whose handshakes are counted together.
    pub source: Option<IpAddr>,
    /// When the connection was made (the oldest handshake of a source is evicted first).
    pub since: StdInstant,
    /// Our side was shut down (after the last queued byte of a retired or closing link).
    pub shut: bool,
    /// A retired connection that may still be the peer's link (it may not have finished the
    /// handshake of the one kept): not shut from our side, but closed at the peer's end of
    /// stream or at its deadline (see the driver's module docs, "One link per peer").
    pub hold: bool,
    /// Queued for a flush at the end of the turn.
    pub dirty: bool,
    /// An incoming connection counted among those in handshake.
    pub counted: bool,
}

impl Conn {
    /// A fresh connection in `phase`.
    pub fn new(stream: TcpStream, dialed: Option<NodeId>, phase: Phase, deadline: StdInstant) -> Conn {
        Conn {
            stream,
            dialed,
            phase,
            nonce: 0,
            ends: None,
            deadline: Some(deadline),
            rbuf: ReadBuf::default(),
            plain: ReadBuf::default(),
            wq: WriteQueue::default(),
            out: Vec::new(),
            out_off: 0,
            chan: None,
            source: None,
            since: StdInstant::now(),
            shut: false,
            hold: false,
            dirty: false,
            counted: false,
        }
    }

    /// Whether the handshake is still going on.
    pub fn in_handshake(&self) -> bool {
        matches!(self.phase, Phase::Connecting | Phase::Hello | Phase::Noise(..))
    }

    /// Bytes waiting to be written: sealed or not.
    pub fn pending(&self) -> usize {
        self.wq.bytes() + self.out.len() - self.out_off
    }

    /// Free the sealing buffer if nothing waits in it (the driver calls this once quiet).
    pub fn release_buffers(&mut self) {
        if self.out_off == self.out.len() {
            self.out = Vec::new();
            self.out_off = 0;
        }
    }

    /// Queue bytes of the driver's own (handshake frames) for the socket as they are.
    pub fn push_raw(&mut self, b: &[u8]) {
        self.out.extend_from_slice(b);
    }

    /// Write what is ready, sealing more of the queue as the socket takes it: `Ok(true)` once
    /// everything is written, `Ok(false)` when the socket is full. `scratch` gathers a record's
    /// plaintext. Bytes written are added to `written`. Frames queued before the channel is up
    /// (which the driver never does) are an error rather than sent in the clear.
    pub fn flush(&mut self, scratch: &mut Vec<u8>, written: &mut u64) -> io::Result<bool> {
        loop {
            while self.out_off < self.out.len() {
                match self.stream.write(&self.out[self.out_off..]) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => {
                        self.out_off += n;
                        *written += n as u64;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            // Kept for the next write (a busy relay seals every turn): at most SEAL_AHEAD and one
            // record. An idle link gives it back (`release_buffers`).
            self.out_off = 0;
            self.out.clear();
            if self.wq.is_empty() {
                return Ok(true);
            }
            let Some(chan) = self.chan.as_mut() else {
                return Err(io::Error::other("frames queued before the secure channel was up"));
            };
            while self.out.len() < SEAL_AHEAD && !self.wq.is_empty() {
                scratch.clear();
                self.wq.take_into(scratch, MAX_PLAIN);
                chan.seal(scratch, &mut self.out).map_err(|e: SecureError| io::Error::other(e.to_string()))?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_tag_survives_its_nonce_and_any_nonce_reads_as_a_tag() {
        let t = LinkTag { incarnation: (1 << 20) - 1, link: 0x2a_beef, lost: 1 };
        assert_eq!(LinkTag::of_nonce(t.nonce()), t);
        let u = LinkTag::of_nonce(u64::MAX);
        assert_eq!(u, LinkTag { incarnation: (1 << 20) - 1, link: (1 << 22) - 1, lost: (1 << 22) - 1 });
        for _ in 0..1000 {
            assert!(LinkTag::new_incarnation() < 1 << 20);
            let l = LinkTag::new_link();
            assert!(l > 0 && l < 1 << 22);
        }
    }

    /// Both ends of a pair of connections reach one verdict, from the same hellos.
    #[test]
    fn both_ends_classify_a_second_connection_alike() {
        let (inc_a, inc_b) = (5, 9);
        // Connection `x` dialed by `a`, `y` by `b`; `lost` is what the dialer named.
        let hello = |inc, link, lost| LinkTag { incarnation: inc, link, lost };
        let at = |we_dialed: bool, link: u32, peer: LinkTag| Ends { we_dialed, link, peer };
        for (x_lost, y_lost, want) in [
            // Each dialed with no link, or naming an older one: a simultaneous open.
            (0, 0, Duplicate::Simultaneous),
            (77, 78, Duplicate::Simultaneous),
            // `b` dialed `y` naming `x`: it had `x` up and lost it.
            (0, 100, Duplicate::Redial),
        ] {
            let (x, y) = (100, 200);
            // At `a`: `x` is ours, `y` the peer's (its hello carries `b`'s incarnation).
            let a_x = at(true, x, hello(inc_b, 31, 0));
            let a_y = at(false, y, hello(inc_b, y, y_lost));
            // At `b`: the mirror image.
            let b_x = at(false, x, hello(inc_a, x, x_lost));
            let b_y = at(true, y, hello(inc_a, 32, 0));
            if want == Duplicate::Redial {
                // `b` lost `x`, so only `a` sees two; `y` comes up after `x` there.
                assert_eq!(Duplicate::classify(&a_x, &a_y), want);
                continue;
            }
            // Whichever came up first at each end.
            for (a_old, a_new) in [(a_x, a_y), (a_y, a_x)] {
                assert_eq!(Duplicate::classify(&a_old, &a_new), want, "at a, lost {x_lost} {y_lost}");
            }
            for (b_old, b_new) in [(b_x, b_y), (b_y, b_x)] {
                assert_eq!(Duplicate::classify(&b_old, &b_new), want, "at b, lost {x_lost} {y_lost}");
            }
        }
        // Two dials by one side, or a peer of another incarnation: a redial.
        let old = at(false, 1, hello(inc_b, 1, 0));
        assert_eq!(Duplicate::classify(&old, &at(false, 2, hello(inc_b, 2, 0))), Duplicate::Redial);
        assert_eq!(
            Duplicate::classify(&at(true, 1, hello(inc_b, 3, 0)), &at(false, 2, hello(inc_b + 1, 2, 0))),
            Duplicate::Redial
        );
    }

    /// Drain `q` in pieces of `step` bytes, as sealing does.
    fn drain(q: &mut WriteQueue, step: usize, out: &mut Vec<u8>) {
        let mut rounds = 0;
        while !q.is_empty() {
            q.take_into(out, step);
            rounds += 1;
            assert!(rounds < 1_000_000);
        }
        assert_eq!(q.bytes(), 0);
    }

    #[test]
    fn pieces_taken_keep_the_byte_order() {
        let mut q = WriteQueue::default();
        let mut want = Vec::new();
        for i in 0..100u8 {
            let b = vec![i; (i as usize % 7) + 1];
            want.extend_from_slice(&b);
            q.push(Chunk::Bytes(b));
        }
        assert_eq!(q.bytes(), want.len());
        let mut out = Vec::new();
        drain(&mut q, 5, &mut out);
        assert_eq!(out, want);
    }

    #[test]
    fn small_frames_are_copied_into_few_buffers_in_order() {
        use plush_core::frame::encode_once;
        use plush_core::wire::{Message, TreeMsg};
        let small = encode_once(&Message::Tree(TreeMsg::Heartbeat)).unwrap();
        let mut q = WriteQueue::default();
        let mut want = Vec::new();
        let mut out = Vec::new();
        for i in 0..3000u32 {
            if i % 1000 == 999 {
                // A large chunk between runs of small ones, queued as it is.
                let big = vec![(i % 251) as u8; 4 * COPY_BELOW];
                want.extend_from_slice(&big);
                q.push(Chunk::Bytes(big));
            } else {
                want.extend_from_slice(&small);
                q.push(Chunk::Frame(small.clone()));
            }
            if i % 10 == 0 {
                // Pieces taken while frames are still being appended.
                q.take_into(&mut out, 7);
            }
        }
        assert!(q.q.len() < 3000 / 100, "{} chunks queued", q.q.len());
        assert!(q.q.iter().all(|c| c.bytes().len() <= BATCH + 4 * COPY_BELOW));
        drain(&mut q, MAX_PLAIN, &mut out);
        assert_eq!(out, want);
    }

    #[test]
    fn read_buffer_keeps_only_partial_frames() {
        let mut rb = ReadBuf::default();
        rb.keep(&[]);
        assert!(rb.is_empty());
        assert_eq!(rb.capacity(), 0);
        // Two bytes of a prefix: room for a prefix.
        rb.keep(&[0, 0]);
        assert_eq!(rb.capacity(), PREFIX);
        // The prefix completes (a 100-byte frame) with 10 payload bytes: room for the frame.
        let mut v = rb.take_joined(&[0, 100, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
        assert!(rb.is_empty());
        assert_eq!(v.len(), 14);
        rb.put_back(v, 0);
        assert_eq!(rb.capacity(), PREFIX + 100);
        // The rest of the frame and the start of the next: the first is taken.
        let mut fresh = vec![7u8; 90];
        fresh.extend_from_slice(&[0, 0, 0, 3, 1]);
        v = rb.take_joined(&fresh);
        assert_eq!(v.capacity(), v.len(), "a read appends exactly");
        assert_eq!(v.len(), 14 + fresh.len());
        rb.put_back(v, PREFIX + 100);
        assert_eq!(rb.capacity(), 14 + 95, "small enough to keep");
        v = rb.take_joined(&[2, 3]);
        assert_eq!(&v[..], &[0, 0, 0, 3, 1, 2, 3]);
        rb.put_back(v, 7);
        assert!(rb.is_empty());
        assert_eq!(rb.capacity(), 0, "freed once the frame was taken");
    }

    #[test]
    fn a_large_buffer_is_not_kept_for_a_small_frame() {
        let mut rb = ReadBuf::default();
        let mut start = (200_000u32).to_be_bytes().to_vec();
        start.push(1);
        rb.keep(&start);
        let mut v = rb.take_joined(&vec![5u8; 199_999]);
        v.extend_from_slice(&[0, 0, 0, 1]);
        rb.put_back(v, PREFIX + 200_000);
        assert_eq!(rb.capacity(), PREFIX + 1);
    }
}
