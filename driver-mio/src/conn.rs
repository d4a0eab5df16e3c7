//! One TCP connection: its handshake phase, read buffer and bounded write queue.

use mio::net::TcpStream;
use plush_core::wire::{extend_small, Frame, Hello, PREFIX};
use plush_core::NodeId;
use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};
use std::time::Instant as StdInstant;

/// Bytes a read asks the kernel for at most: the size of the driver's one read buffer, which
/// every connection reads into (see [`ReadBuf`]).
pub const READ_CHUNK: usize = 16 << 10;
/// Frames this short are copied into a buffer of the queue's own rather than queued by
/// reference (see [`WriteQueue::push`]).
pub const COPY_BELOW: usize = 512;
/// Largest buffer small frames are copied into.
pub const BATCH: usize = 16 << 10;
/// Most slices handed to one `write_vectored` call.
const MAX_IOV: usize = 64;

/// Where a connection stands.
#[derive(Debug)]
pub enum Phase {
    /// Outgoing: the TCP connect is in progress.
    Connecting,
    /// Our hello is queued; the peer's is awaited.
    Hello,
    /// The peer's hello was checked and our tag queued; the peer's tag is awaited.
    Auth(Hello),
    /// Authenticated: the link to this peer.
    Open(NodeId),
    /// Lost the tie-break against another link to the same peer: nothing new is written; what
    /// was queued is flushed, then our side shuts down; frames still read are delivered; it is
    /// dropped at the peer's end of stream or at its deadline.
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

    /// Write as much as the socket takes, many frames per call. `Ok(true)` once empty,
    /// `Ok(false)` when the socket is full. Returns the bytes written through `written`.
    pub fn write_to(&mut self, w: &mut impl Write, written: &mut u64) -> io::Result<bool> {
        while !self.q.is_empty() {
            let mut slices: [IoSlice<'_>; MAX_IOV] = [IoSlice::new(&[]); MAX_IOV];
            let mut n_slices = 0;
            for (i, c) in self.q.iter().take(MAX_IOV).enumerate() {
                let b = c.bytes();
                slices[i] = IoSlice::new(if i == 0 { &b[self.off.min(b.len())..] } else { b });
                n_slices += 1;
            }
            let n = match w.write_vectored(&slices[..n_slices]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            *written += n as u64;
            self.bytes -= n;
            let mut left = n;
            while left > 0 {
                let Some(front) = self.q.front() else { break };
                let rest = front.bytes().len() - self.off;
                if left >= rest {
                    left -= rest;
                    self.off = 0;
                    self.q.pop_front();
                } else {
                    self.off += left;
                    left = 0;
                }
            }
        }
        if self.q.capacity() > 64 {
            self.q = VecDeque::new();
        }
        Ok(true)
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
    /// Our nonce on this connection.
    pub nonce: u64,
    /// When the current phase must be over (connect, handshake, linger); `None` while open.
    pub deadline: Option<StdInstant>,
    /// Incoming bytes.
    pub rbuf: ReadBuf,
    /// Outgoing bytes.
    pub wq: WriteQueue,
    /// Our side was shut down (after the last queued byte of a retired or closing link).
    pub shut: bool,
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
            nonce: rand::random(),
            deadline: Some(deadline),
            rbuf: ReadBuf::default(),
            wq: WriteQueue::default(),
            shut: false,
            dirty: false,
            counted: false,
        }
    }

    /// Whether the handshake is still going on.
    pub fn in_handshake(&self) -> bool {
        matches!(self.phase, Phase::Connecting | Phase::Hello | Phase::Auth(_))
    }
}

/// A frame of our own: length prefix, then `payload`.
pub fn own_frame(payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(PREFIX + payload.len());
    v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    v.extend_from_slice(payload);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that takes at most `cap` bytes per call and then blocks once.
    struct Trickle {
        out: Vec<u8>,
        cap: usize,
        calls: usize,
    }
    impl Write for Trickle {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.write_vectored(&[IoSlice::new(b)])
        }
        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            self.calls += 1;
            if self.calls % 3 == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(self.cap - n);
                self.out.extend_from_slice(&b[..take]);
                n += take;
                if n == self.cap {
                    break;
                }
            }
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn partial_vectored_writes_keep_the_byte_order() {
        let mut q = WriteQueue::default();
        let mut want = Vec::new();
        for i in 0..100u8 {
            let b = vec![i; (i as usize % 7) + 1];
            want.extend_from_slice(&b);
            q.push(Chunk::Bytes(b));
        }
        let mut w = Trickle { out: Vec::new(), cap: 5, calls: 0 };
        let mut written = 0;
        let mut rounds = 0;
        while !q.write_to(&mut w, &mut written).unwrap() {
            rounds += 1;
            assert!(rounds < 1000);
        }
        assert_eq!(w.out, want);
        assert_eq!(written as usize, want.len());
        assert_eq!(q.bytes(), 0);
    }

    #[test]
    fn small_frames_are_copied_into_few_buffers_in_order() {
        use plush_core::wire::{encode_once, Message, TreeMsg};
        let small = encode_once(&Message::Tree(TreeMsg::Heartbeat)).unwrap();
        let mut q = WriteQueue::default();
        let mut want = Vec::new();
        let mut w = Trickle { out: Vec::new(), cap: 7, calls: 0 };
        let mut written = 0;
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
                // Partial writes while frames are still being appended.
                let _ = q.write_to(&mut w, &mut written).unwrap();
            }
        }
        assert!(q.q.len() < 3000 / 100, "{} chunks queued", q.q.len());
        assert!(q.q.iter().all(|c| c.bytes().len() <= BATCH + 4 * COPY_BELOW));
        let mut rounds = 0;
        while !q.write_to(&mut w, &mut written).unwrap() {
            rounds += 1;
            assert!(rounds < 100_000);
        }
        assert_eq!(w.out, want);
        assert_eq!(written as usize, want.len());
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
