//! Frames: how messages travel on a byte stream, and the buffers they are built in.
//!
//! A frame is a 4-byte big-endian length ([`PREFIX`]) followed by one postcard-encoded
//! [`crate::wire::Message`]. [`split_frame`] is the one place where a stream is cut
//! into frames; both drivers and both machines use it. [`FramePool`] encodes our own messages
//! into shared, reference-counted [`Frame`]s, so that a frame sent to many peers is built once.

use crate::wire::{DecodeError, Hello, JobMsg, Message};
use core::fmt;
use core::ops::Deref;
use serde::Serialize;
use std::rc::Rc;

/// Length of the frame prefix.
pub const PREFIX: usize = 4;

/// Find the first complete frame at the start of `buf`.
///
/// Returns `Ok(None)` while the frame is incomplete, `Ok(Some((payload, consumed)))` once it is
/// whole, and an error when the prefix announces more than `max` bytes (the caller closes the
/// connection). Never reads past `buf` and never allocates.
pub fn split_frame(buf: &[u8], max: usize) -> Result<Option<(&[u8], usize)>, DecodeError> {
    let Some(prefix) = buf.get(..PREFIX) else { return Ok(None) };
    let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
    if len > max {
        return Err(DecodeError::TooLarge { len, max });
    }
    match buf.get(PREFIX..PREFIX + len) {
        Some(payload) => Ok(Some((payload, PREFIX + len))),
        None => Ok(None),
    }
}

/// An encoded frame, length prefix included, ready to write to a socket.
///
/// Cloning is cheap (a reference count): a broadcast is encoded once and the same bytes go to
/// every child. Buffers return to their node's [`FramePool`] once every clone is dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct Frame(Rc<Vec<u8>>);

impl Frame {
    /// The bytes after the length prefix: what [`crate::Node::handle_frame`] takes. (Of a
    /// frame; a run of a batch, see [`crate::batch`], holds several.)
    pub fn payload(&self) -> &[u8] {
        self.0.get(PREFIX..).unwrap_or(&[])
    }

    /// The buffer behind the frame, found without reading memory (a driver may hint the
    /// processor to fetch it before it needs the bytes).
    pub fn buffer(&self) -> &Vec<u8> {
        &self.0
    }

    /// A frame sharing `buf` (a run of a batch: several whole frames).
    pub(crate) fn shared(buf: &Rc<Vec<u8>>) -> Frame {
        Frame(Rc::clone(buf))
    }
}

impl Deref for Frame {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Frame({} bytes)", self.0.len())
    }
}

/// Why a message could not be encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EncodeError {
    /// The encoding is larger than the maximum frame size.
    TooLarge,
}

/// Reusable frame buffers, so that encoding allocates nothing in steady state.
///
/// Holds at most [`FramePool::CAPACITY`] buffers. A buffer is reused once the driver has dropped
/// every clone of the frame it carried; when all are still in use, a fresh unpooled buffer is
/// allocated and freed normally.
#[derive(Debug, Default)]
pub struct FramePool {
    slots: Vec<Rc<Vec<u8>>>,
    next: usize,
}

struct Sink<'a> {
    buf: &'a mut Vec<u8>,
    /// Length the buffer may not pass.
    limit: usize,
}

impl postcard::ser_flavors::Flavor for Sink<'_> {
    type Output = ();
    #[inline]
    fn try_push(&mut self, b: u8) -> postcard::Result<()> {
        if self.buf.len() >= self.limit {
            return Err(postcard::Error::SerializeBufferFull);
        }
        self.buf.push(b);
        Ok(())
    }
    #[inline]
    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        if self.buf.len() + data.len() > self.limit {
            return Err(postcard::Error::SerializeBufferFull);
        }
        if data.len() <= 8 {
            // Varints and small fields: a few pushes beat a call to memmove.
            for &b in data {
                self.buf.push(b);
            }
        } else {
            self.buf.extend_from_slice(data);
        }
        Ok(())
    }
    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// Heap bytes one shared buffer holds: its `Rc` allocation (two counts and the `Vec`) and the
/// bytes' capacity. For memory reports.
pub(crate) fn buffer_bytes(b: &Rc<Vec<u8>>) -> usize {
    2 * core::mem::size_of::<usize>() + core::mem::size_of::<Vec<u8>>() + b.capacity()
}

impl FramePool {
    /// Heap bytes held by kept buffers.
    pub fn heap_bytes(&self) -> usize {
        self.slots.capacity() * core::mem::size_of::<Rc<Vec<u8>>>() + self.slots.iter().map(buffer_bytes).sum::<usize>()
    }

    /// Buffers kept for reuse.
    pub const CAPACITY: usize = 4;
    /// A buffer that grew past this many bytes (a RanSub distribute fits) is freed rather than
    /// kept when next reused, unless that frame is as large.
    pub const MAX_KEPT: usize = 1024;
    /// Capacity of a new buffer.
    pub const FIRST_CAPACITY: usize = 128;

    /// Run `fill` on an empty buffer and wrap it as a frame. `need` is the frame's length when
    /// known (a copy), else 0.
    ///
    /// A kept buffer that grew past [`FramePool::MAX_KEPT`] is freed when next reused for a
    /// frame that does not need it, so large buffers stay only while large frames keep coming
    /// (a relay forwarding a push's chunks reuses them; an idle node holds at most `CAPACITY`
    /// buffers of `MAX_KEPT` bytes).
    fn with_buffer<E>(&mut self, need: usize, fill: impl FnOnce(&mut Vec<u8>) -> Result<(), E>) -> Result<Frame, E> {
        let n = self.slots.len();
        for k in 0..n {
            let i = (self.next + k) % n;
            if let Some(buf) = Rc::get_mut(&mut self.slots[i]) {
                if buf.capacity() > Self::MAX_KEPT && need <= Self::MAX_KEPT {
                    *buf = Vec::with_capacity(Self::FIRST_CAPACITY);
                }
                buf.clear();
                buf.reserve(need);
                fill(buf)?;
                self.next = (i + 1) % n;
                return Ok(Frame(Rc::clone(&self.slots[i])));
            }
        }
        // Most frames are small; a RanSub distribute is a few hundred bytes. Start with room
        // for the usual, not from nothing, so that encoding does not grow the buffer byte by byte.
        let mut buf = Vec::with_capacity(need.max(Self::FIRST_CAPACITY));
        fill(&mut buf)?;
        let rc = Rc::new(buf);
        if n < Self::CAPACITY {
            self.slots.push(Rc::clone(&rc));
        }
        Ok(Frame(rc))
    }

    /// Let go of every kept buffer (those still in a frame live until it is dropped). For a
    /// simulator of a million nodes, where a few hundred bytes kept per idle node add up to
    /// gigabytes, and a buffer from the allocator costs about what reusing one does; a driver
    /// of one node keeps them.
    pub fn trim(&mut self) {
        self.slots.clear();
        self.next = 0;
    }

    /// Encode `msg` as a frame of at most `max` payload bytes.
    pub fn encode<T: Serialize>(&mut self, msg: &T, max: usize) -> Result<Frame, EncodeError> {
        self.with_buffer(0, |buf| encode_into(buf, msg, max))
    }

    /// A frame carrying `payload` verbatim (for relaying bytes as they arrived).
    pub fn copy(&mut self, payload: &[u8]) -> Frame {
        let r: Result<Frame, core::convert::Infallible> = self.with_buffer(PREFIX + payload.len(), |buf| {
            buf.extend_from_slice(&[0; PREFIX]);
            buf.extend_from_slice(payload);
            write_prefix(buf);
            Ok(())
        });
        match r {
            Ok(f) => f,
            Err(never) => match never {},
        }
    }
}

/// Encode `msg` as a frame of at most `max` payload bytes at the end of `buf` (which may hold
/// whole frames already); on error `buf` is left as it was.
pub(crate) fn encode_into<T: Serialize>(buf: &mut Vec<u8>, msg: &T, max: usize) -> Result<(), EncodeError> {
    let start = buf.len();
    buf.extend_from_slice(&[0; PREFIX]);
    let limit = start + PREFIX + max;
    if postcard::serialize_with_flavor(msg, Sink { buf, limit }).is_err() {
        buf.truncate(start);
        return Err(EncodeError::TooLarge);
    }
    write_prefix(&mut buf[start..]);
    Ok(())
}

/// Append a frame carrying `payload` verbatim to `buf` (which may hold whole frames already).
#[inline]
pub(crate) fn push_frame(buf: &mut Vec<u8>, payload: &[u8]) {
    buf.reserve(PREFIX + payload.len());
    buf.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    extend_small(buf, payload);
}

/// `v.extend_from_slice(b)`, without a call to `memcpy` when `b` has at most 16 bytes: for
/// frames of a few bytes that call was several percent of a relay's time (in the core's runs
/// and in the driver's write queues alike).
#[inline]
pub fn extend_small(v: &mut Vec<u8>, b: &[u8]) {
    if b.len() <= 16 {
        v.reserve(b.len());
        // Fixed-size pieces: a loop over the bytes would be turned back into `memcpy`.
        let mut words = b.chunks_exact(8);
        for w in &mut words {
            v.extend_from_slice(&<[u8; 8]>::try_from(w).unwrap_or_default());
        }
        for &x in words.remainder() {
            v.push(x);
        }
    } else {
        v.extend_from_slice(b);
    }
}

fn write_prefix(buf: &mut [u8]) {
    let len = (buf.len() - PREFIX) as u32;
    buf[..PREFIX].copy_from_slice(&len.to_be_bytes());
}

/// Encode a small constant message into a frame of its own (allocates; for frames a node
/// encodes once and reuses).
pub fn encode_once(msg: &Message) -> Option<Frame> {
    encode_small(msg).map(|buf| Frame(Rc::new(buf)))
}

/// The frame of `JobMsg::Chunk { job, index, data }`, built from borrowed bytes (for a driver
/// that reads a chunk from its storage): one allocation, the frame itself. `None` when it would
/// pass `max` payload bytes.
///
/// Postcard writes a byte string as its varint length then the bytes, last field last: the
/// message is encoded with empty data, whose length byte (0) is replaced by the real length
/// and followed by the bytes (a test checks it against the plain encoding).
pub fn chunk_frame(job: u64, index: u32, data: &[u8], max: usize) -> Option<Frame> {
    let head = Message::Job(JobMsg::Chunk { job, index, data: Vec::new() });
    let mut buf = vec![0u8; PREFIX];
    let enc = postcard::to_allocvec(&head).ok()?;
    buf.reserve(enc.len() + 10 + data.len());
    buf.extend_from_slice(&enc[..enc.len() - 1]);
    let mut len = data.len();
    loop {
        let byte = (len & 0x7f) as u8;
        len >>= 7;
        if len == 0 {
            buf.push(byte);
            break;
        }
        buf.push(byte | 0x80);
    }
    buf.extend_from_slice(data);
    if buf.len() - PREFIX > max {
        return None;
    }
    write_prefix(&mut buf);
    Some(Frame(Rc::new(buf)))
}

/// Encode a hello frame (allocates; once per connection).
pub fn encode_hello(hello: &Hello) -> Vec<u8> {
    // A hello is a few dozen bytes: it always fits.
    encode_small(hello).unwrap_or_default()
}

/// A frame of at most 1 KiB in a buffer of its own; `None` if it does not fit.
fn encode_small<T: Serialize>(msg: &T) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    encode_into(&mut buf, msg, 1 << 10).ok()?;
    Some(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bounded::List;
    use crate::id::NodeId;
    use crate::wire::TreeMsg;

    fn id(i: u32) -> NodeId {
        NodeId::loopback(i, 7000)
    }

    #[test]
    fn oversized_prefix_is_refused_before_reading() {
        let buf = [0xff, 0xff, 0xff, 0xff, 1, 2];
        assert_eq!(split_frame(&buf, 1 << 20), Err(DecodeError::TooLarge { len: u32::MAX as usize, max: 1 << 20 }));
        assert_eq!(split_frame(&[0, 0], 10), Ok(None));
        assert_eq!(split_frame(&[0, 0, 0, 3, 1, 2], 10), Ok(None));
    }

    #[test]
    fn encoding_past_the_maximum_fails() {
        let mut pool = FramePool::default();
        let msg = Message::Tree(TreeMsg::Siblings { list: List((0..100).map(id).collect()) });
        assert_eq!(pool.encode(&msg, 16), Err(EncodeError::TooLarge));
    }

    #[test]
    fn pool_reuses_buffers_once_released() {
        let mut pool = FramePool::default();
        let a = pool.encode(&Message::Tree(TreeMsg::Leave), 64).unwrap();
        let pa = a.as_ptr();
        drop(a);
        let b = pool.encode(&Message::Tree(TreeMsg::Remove), 64).unwrap();
        assert_eq!(b.as_ptr(), pa, "released buffer is reused");
        let c = pool.copy(b.payload());
        assert_ne!(c.as_ptr(), b.as_ptr(), "a buffer in use is not handed out twice");
        assert_eq!(c.payload(), b.payload());
    }

    #[test]
    fn large_buffers_stay_while_large_frames_come_and_go_after() {
        let mut pool = FramePool::default();
        let big = vec![7u8; 16 << 10];
        let a = pool.copy(&big);
        let pa = a.as_ptr();
        drop(a);
        let b = pool.copy(&big);
        assert_eq!(b.as_ptr(), pa, "a large frame reuses the large buffer");
        assert_eq!(b.payload(), &big[..]);
        drop(b);
        let c = pool.encode(&Message::Tree(TreeMsg::Leave), 64).unwrap();
        drop(c);
        assert!(
            pool.slots.iter().all(|s| s.capacity() <= FramePool::MAX_KEPT),
            "a small frame gives the large buffer back"
        );
    }

    #[test]
    fn trim_lets_go_of_kept_buffers_and_frames_keep_their_bytes() {
        let mut pool = FramePool::default();
        let small = pool.encode(&Message::Tree(TreeMsg::Leave), 64).unwrap();
        let big = pool.copy(&[7u8; 600]);
        assert_eq!(pool.slots.len(), 2);
        pool.trim();
        assert!(pool.slots.is_empty(), "no buffer is kept");
        assert_eq!(big.payload(), &[7u8; 600][..], "a frame in flight keeps its bytes");
        drop(small);
        let again = pool.encode(&Message::Tree(TreeMsg::Remove), 64).unwrap();
        assert_eq!(pool.slots.len(), 1, "the pool fills again");
        assert!(Rc::ptr_eq(&pool.slots[0], &again.0), "with the new frame's buffer");
    }
}
