//! Arbitrary bytes from a peer, read the way a driver reads a socket.
//!
//! The input is one connection's byte stream, delivered in chunks whose size comes from the
//! first byte. After each chunk the reader takes every whole frame off the front of its buffer
//! with `split_frame`, and decodes each payload both as a `Hello` and as a `Message`. A prefix
//! over the maximum ends the stream, as it closes a connection.
//!
//! Checked: nothing panics; the frames found are the same whatever the chunking (compared with
//! reading the whole input at once); and every message that decodes re-encodes through a
//! `FramePool` into a frame that decodes to an equal message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use plush_core::wire::{Hello, Message};
use plush_core::frame::{split_frame, FramePool, PREFIX};

/// The default maximum frame size (1 MiB).
const MAX_FRAME: usize = 1 << 20;

/// Every whole frame at the front of `buf`, and whether the stream must close (a bad prefix).
fn frames(buf: &[u8]) -> (Vec<&[u8]>, usize, bool) {
    let mut found = Vec::new();
    let mut at = 0;
    loop {
        match split_frame(&buf[at..], MAX_FRAME) {
            Ok(Some((payload, used))) => {
                assert_eq!(used, PREFIX + payload.len(), "consumed = prefix + payload");
                assert!(used <= buf.len() - at, "never past the buffer");
                found.push(payload);
                at += used;
            }
            Ok(None) => return (found, at, false),
            Err(_) => return (found, at, true),
        }
    }
}

/// Decode one payload every way a driver would, and check the round trip of a message.
fn check_payload(pool: &mut FramePool, payload: &[u8]) {
    let _ = Hello::decode(payload);
    let Ok(msg) = Message::decode(payload) else {
        return;
    };
    // The canonical encoding is never longer than any encoding that decodes: it fits.
    let frame = pool.encode(&msg, MAX_FRAME).expect("a decoded message re-encodes within the maximum");
    assert!(frame.payload().len() <= payload.len(), "re-encoding grew the message");
    let (again, used) =
        split_frame(&frame, MAX_FRAME).expect("our own frame has a valid prefix").expect("our own frame is whole");
    assert_eq!(used, frame.len());
    assert_eq!(again, frame.payload());
    assert_eq!(Message::decode(again).as_ref(), Ok(&msg), "round trip");
}

fuzz_target!(|data: &[u8]| {
    let chunk = usize::from(data.first().copied().unwrap_or(0) % 32) + 1;
    let (whole, _, _) = frames(data);

    // The streaming reader: a buffer filled chunk by chunk and drained frame by frame.
    let mut pool = FramePool::default();
    let mut buf: Vec<u8> = Vec::new();
    let mut seen = 0;
    'stream: for piece in data.chunks(chunk) {
        buf.extend_from_slice(piece);
        let (found, used, close) = frames(&buf);
        for payload in found {
            assert_eq!(whole.get(seen).copied(), Some(payload), "chunking changed a frame");
            seen += 1;
            check_payload(&mut pool, payload);
        }
        if close {
            break 'stream;
        }
        buf.drain(..used);
    }
    assert_eq!(seen, whole.len(), "chunking changed the number of frames");
});
