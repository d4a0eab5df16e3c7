//! Writes a seed corpus for the frame-decoder fuzz target: real encoded frames of every message
//! kind of every layer (`plush_core::samples`; each file holds its frame twice, as a stream
//! carries them), plus the edge cases of framing.
//!
//! `cargo run -p plush-core --example fuzz_seeds -- DIR`

use plush_core::frame::{encode_hello, FramePool};
use plush_core::samples;
use plush_core::wire::{Hello, JoinMode, List, Message, Role, TreeMsg};
use plush_core::NodeId;
use std::path::PathBuf;

fn id(i: u32) -> NodeId {
    NodeId::loopback(i, 7000)
}

fn main() -> std::io::Result<()> {
    let dir = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "fuzz/corpus/frame_decoder".into()));
    std::fs::create_dir_all(&dir)?;
    let v6 = NodeId::new("[2001:db8::7]:9000".parse().expect("a valid address"));
    // Every kind of every layer (plush_core::samples), then the other shapes of a join.
    let mut msgs: Vec<(String, Message)> = Vec::new();
    for (i, m) in samples::messages().into_iter().enumerate() {
        msgs.push((format!("{:02}_{}", i, m.kind().replace('.', "_")), m));
    }
    let joins = [
        ("join_redirect_v6", TreeMsg::Join { joiner: v6, mode: JoinMode::Redirect, hops: 3 }),
        ("join_failover", TreeMsg::Join { joiner: id(1), mode: JoinMode::Failover { dead_root: id(0) }, hops: 0 }),
        ("join_direct", TreeMsg::Join { joiner: id(9), mode: JoinMode::Direct, hops: 1 }),
        (
            "join_accept_direct",
            TreeMsg::JoinAccept {
                path: List(vec![id(0), id(2)]),
                top: List(vec![id(2), id(4)]),
                siblings: List(vec![id(4)]),
                direct: true,
            },
        ),
    ];
    msgs.extend(joins.into_iter().map(|(name, m)| (name.to_owned(), Message::Tree(m))));
    let mut pool = FramePool::default();
    let mut all = Vec::new();
    // The first byte of an input sets the fuzz target's chunk size; 0 reads it whole.
    for (name, msg) in &msgs {
        let frame = pool.encode(msg, 1 << 20).map_err(|e| std::io::Error::other(format!("{e:?}")))?;
        let mut bytes = vec![0u8];
        bytes.extend_from_slice(&frame);
        bytes.extend_from_slice(&frame);
        all.extend_from_slice(&frame);
        std::fs::write(dir.join(format!("seed_{name}")), bytes)?;
    }
    let hello = encode_hello(&Hello::new(id(1), Role::Client, 42));
    let mut stream = vec![3u8];
    stream.extend_from_slice(&hello);
    stream.extend_from_slice(&all);
    std::fs::write(dir.join("seed_hello_and_every_message"), stream)?;
    std::fs::write(dir.join("seed_oversized_prefix"), [0u8, 0xff, 0xff, 0xff, 0xff, 0])?;
    std::fs::write(dir.join("seed_partial_frame"), [0u8, 0, 0, 0, 9, 0, 10])?;
    println!("{} seeds in {}", msgs.len() + 3, dir.display());
    Ok(())
}
