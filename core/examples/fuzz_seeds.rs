//! Writes a seed corpus for the frame-decoder fuzz target: real encoded frames of every message
//! kind (several per file, as a stream carries them), plus the edge cases of framing.
//!
//! `cargo run -p plush-core --example fuzz_seeds -- DIR`

use plush_core::ransub::Entry;
use plush_core::wire::{encode_hello, FramePool, Hello, JoinMode, List, Message, RanSubMsg, Role, TreeMsg};
use plush_core::NodeId;
use std::path::PathBuf;

fn id(i: u32) -> NodeId {
    NodeId::loopback(i, 7000)
}

fn main() -> std::io::Result<()> {
    let dir = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "fuzz/corpus/frame_decoder".into()));
    std::fs::create_dir_all(&dir)?;
    let entry = Entry { id: id(3), free: 4, depth: 2, payload: [1, 2, 3, 4, 5, 6, 7, 8] };
    let v6 = NodeId::new("[2001:db8::7]:9000".parse().expect("a valid address"));
    let msgs = vec![
        ("join", Message::Tree(TreeMsg::Join { joiner: id(1), mode: JoinMode::Forward, hops: 0 })),
        ("join_redirect", Message::Tree(TreeMsg::Join { joiner: v6, mode: JoinMode::Redirect, hops: 3 })),
        (
            "join_failover",
            Message::Tree(TreeMsg::Join { joiner: id(1), mode: JoinMode::Failover { dead_root: id(0) }, hops: 0 }),
        ),
        ("join_direct", Message::Tree(TreeMsg::Join { joiner: id(9), mode: JoinMode::Direct, hops: 1 })),
        (
            "join_accept",
            Message::Tree(TreeMsg::JoinAccept {
                path: List(vec![id(0), id(2)]),
                top: List(vec![id(2), id(4)]),
                siblings: List(vec![id(4)]),
                direct: true,
            }),
        ),
        ("join_reject", Message::Tree(TreeMsg::JoinReject)),
        ("remove", Message::Tree(TreeMsg::Remove)),
        ("siblings", Message::Tree(TreeMsg::Siblings { list: List(vec![id(1), id(2), id(3)]) })),
        ("root_info", Message::Tree(TreeMsg::RootInfo { path: List(vec![id(0), id(1)]), top: List(vec![id(1)]) })),
        ("probe", Message::Tree(TreeMsg::Probe { root: id(0) })),
        ("probe_reply", Message::Tree(TreeMsg::ProbeReply { root: id(5) })),
        ("leave", Message::Tree(TreeMsg::Leave)),
        ("broadcast", Message::Tree(TreeMsg::Broadcast { id: 7 })),
        ("broadcast_reply", Message::Tree(TreeMsg::BroadcastReply { id: 7, node: id(8) })),
        ("heartbeat", Message::Tree(TreeMsg::Heartbeat)),
        ("verify", Message::Tree(TreeMsg::Verify { joiner: id(9), route: List(vec![id(3), id(2)]) })),
        ("verify_ok", Message::Tree(TreeMsg::VerifyOk { joiner: id(9), route: List(vec![id(3)]) })),
        ("verify_fail", Message::Tree(TreeMsg::VerifyFail { joiner: id(9), route: List(vec![id(3)]) })),
        (
            "distribute",
            Message::RanSub(RanSubMsg::Distribute {
                epoch: 4,
                population: 1000,
                all: List(vec![entry; 3]),
                nondesc: List(vec![entry; 2]),
            }),
        ),
        ("collect", Message::RanSub(RanSubMsg::Collect { epoch: 4, population: 37, set: List(vec![entry; 4]) })),
    ];
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
