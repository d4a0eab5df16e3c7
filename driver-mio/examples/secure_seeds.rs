//! Writes a seed corpus for the `secure_channel` fuzz target (`fuzz/fuzz_targets/secure_channel.rs`):
//! one input per mode, starting with the hellos the target's connections expect (the dialer is
//! `NodeId::loopback(1, 7000)`, the acceptor `NodeId::loopback(2, 7000)`), a handshake-sized
//! message, an oversized prefix, records of the right shape, and structured inputs.
//!
//! `cargo run -p plush-mio --example secure_seeds -- DIR`

use plush_core::frame::{encode_hello, PREFIX};
use plush_core::wire::{Hello, Role};
use plush_core::NodeId;
use plush_mio::secure::{MAX_HANDSHAKE_FRAME, TAG_LEN};
use std::path::PathBuf;

/// A frame: a big-endian length, then `payload`.
fn frame(payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(payload);
    f
}

/// Bytes that look random enough to a fuzzer.
fn noise(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(131).wrapping_add(seed).rotate_left(3)).collect()
}

fn main() -> std::io::Result<()> {
    let dir = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "fuzz/corpus/secure_channel".into()));
    std::fs::create_dir_all(&dir)?;
    let dialer = encode_hello(&Hello::new(NodeId::loopback(1, 7000), Role::Client, 7));
    let acceptor = encode_hello(&Hello::new(NodeId::loopback(2, 7000), Role::Controller, 9));
    // A Noise NNpsk0 first message: an ephemeral key and an empty payload's tag.
    let msg1 = frame(&noise(32 + TAG_LEN, 1));
    let msg2 = frame(&noise(32 + TAG_LEN, 2));
    let record = frame(&noise(40 + TAG_LEN, 3));
    let oversized = ((MAX_HANDSHAKE_FRAME + 1) as u32).to_be_bytes();
    let cat = |head: &[u8], parts: &[&[u8]]| {
        let mut v = head.to_vec();
        for p in parts {
            v.extend_from_slice(p);
        }
        v
    };
    let seeds: Vec<(&str, Vec<u8>)> = vec![
        // Mode 0, the acceptor: the dialer's hello, then handshake messages and records.
        ("acceptor_hello_msg1", cat(&[0, 0], &[&dialer, &msg1, &record])),
        ("acceptor_hello_oversized", cat(&[0, 3], &[&dialer, &oversized, &[0; 8]])),
        ("acceptor_bad_hello", cat(&[0, 1], &[&frame(&dialer[PREFIX + 1..]), &msg1])),
        ("acceptor_own_id", cat(&[0, 0], &[&acceptor, &msg1])),
        ("acceptor_genuine_then_records", cat(&[4, 2], &[&record, &record, &oversized])),
        // Mode 1, the dialer: the acceptor's hello, then its answer.
        ("dialer_hello_msg2", cat(&[1, 0], &[&acceptor, &msg2, &record])),
        ("dialer_wrong_id", cat(&[1, 0], &[&dialer, &msg2])),
        ("dialer_genuine_then_records", cat(&[5, 9], &[&record, &frame(&[0; TAG_LEN - 1])])),
        // Mode 2: genuine records (0 to 4), then arbitrary ones.
        ("records_none", cat(&[2, 0], &[&record])),
        ("records_four", cat(&[2 | (4 << 2), 5], &[&record, &record])),
        ("records_oversized", cat(&[2 | (1 << 2), 0], &[&[0, 1, 0, 0], &noise(64, 4)])),
        // Mode 3: structured (arbitrary's bytes): a few messages, a few mutations.
        ("structured_a", cat(&[3], &[&noise(64, 5)])),
        ("structured_b", cat(&[3], &[&noise(200, 6)])),
        ("structured_c", cat(&[3, 1, 0, 1], &[&[0xff; 40], &noise(40, 7)])),
    ];
    for (name, bytes) in seeds {
        std::fs::write(dir.join(format!("seed_{name}")), bytes)?;
    }
    Ok(())
}
