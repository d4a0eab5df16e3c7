//! One real message of every kind ([`crate::wire::KINDS`]), with contents of the size a
//! running overlay sends: the seed corpus of the frame-decoder fuzz target and the inputs of
//! the per-kind wire benchmark are built from these, so that neither misses a layer.
//!
//! Nothing here is used by the protocol itself.

use crate::id::NodeId;
use crate::nodeset::NodeSet;
use crate::ransub::Entry;
use crate::wire::{
    BlobRef, ControlMsg, ExitStatus, Filler, Group, JobKind, JobMsg, JoinMode, List, Message, PushSpec, RanSubMsg,
    RunSpec, Target, TreeMsg,
};

/// Bytes of data in the sample chunk. Real chunks are larger (128 KiB by default); this one
/// stays small so that the fuzzer's seeds stay under its input size limit.
const CHUNK_BYTES: usize = 1024;

fn id(i: u32) -> NodeId {
    NodeId::loopback(i, 7000)
}

fn set(from: u32, to: u32) -> NodeSet {
    let mut s = NodeSet::new();
    for i in from..to {
        s.insert(id(i));
    }
    s
}

/// At least one message of every kind in [`crate::wire::KINDS`], in that order (two `job.run`:
/// a command and a push).
pub fn messages() -> Vec<Message> {
    let entry = |i: u32| Entry { id: id(i), free: 4, depth: 2, payload: [1, 2, 3, 4, 5, 6, 7, 8] };
    let tree = |m| Message::Tree(m);
    let control = |m| Message::Control(m);
    let job = |m| Message::Job(m);
    let path = List(vec![id(0), id(2), id(5)]);
    let top = List((1..13).map(id).collect());
    let spec = RunSpec {
        job: 42,
        kind: JobKind::Command,
        target: Target::Nodes(set(1, 200)),
        argv: List(vec!["sh".into(), "-c".into(), "uname -r && df -h / | tail -1".into()]),
        env: List(vec![("LC_ALL".into(), "C".into())]),
        cwd: Some("/tmp".into()),
        timeout_ms: 60_000,
        stream: false,
        push: None,
        max_output: 0,
    };
    let push = PushSpec {
        path: "/srv/data/".into(),
        name: "input.bin".into(),
        mode: 0o644,
        size: 10 << 20,
        digest: [7; 32],
        chunk: 128 << 10,
        upgrade: false,
        build: 0,
    };
    let group = |code: i32, text: &str, nodes: NodeSet| Group {
        status: ExitStatus::Exited(code),
        truncated: false,
        output: text.as_bytes().to_vec(),
        nodes,
        stderr: Vec::new(),
        blob: None,
    };
    vec![
        tree(TreeMsg::Join { joiner: id(1), mode: JoinMode::Forward, hops: 0 }),
        tree(TreeMsg::JoinAccept { path: path.clone(), top: top.clone(), siblings: List(vec![]), direct: false }),
        tree(TreeMsg::JoinReject),
        tree(TreeMsg::Remove),
        tree(TreeMsg::Siblings { list: top.clone() }),
        tree(TreeMsg::RootInfo { path: path.clone(), top }),
        tree(TreeMsg::Probe { root: id(0) }),
        tree(TreeMsg::ProbeReply { root: id(5) }),
        tree(TreeMsg::Leave),
        tree(TreeMsg::Broadcast { id: 7, filler: Filler(100) }),
        tree(TreeMsg::BroadcastReply { id: 7, node: id(8) }),
        tree(TreeMsg::Heartbeat),
        tree(TreeMsg::Verify { joiner: id(9), route: List(vec![id(3), id(2)]) }),
        tree(TreeMsg::VerifyOk { joiner: id(9), route: List(vec![id(3)]) }),
        tree(TreeMsg::VerifyFail { joiner: id(9), route: List(vec![id(3)]) }),
        tree(TreeMsg::Closing),
        Message::RanSub(RanSubMsg::Distribute {
            epoch: 4,
            population: 1000,
            all: List((10..20).map(entry).collect()),
            nondesc: List((20..30).map(entry).collect()),
        }),
        Message::RanSub(RanSubMsg::Collect { epoch: 4, population: 37, set: List((10..20).map(entry).collect()) }),
        control(ControlMsg::SetCtrl { ctrl: id(900) }),
        control(ControlMsg::SetRoot { root: id(0) }),
        control(ControlMsg::SetPeer { host: id(77), ctrl: id(900) }),
        control(ControlMsg::InviteFailed { host: id(77) }),
        control(ControlMsg::Joined { node: id(77), build: 0x1234_5678_9abc_def0 }),
        control(ControlMsg::Disconnected { node: id(12), related: true }),
        control(ControlMsg::GetStatus),
        control(ControlMsg::Status { joined: true }),
        control(ControlMsg::Participants { nodes: set(1, 500), last: true }),
        control(ControlMsg::Forget { nodes: set(40, 44) }),
        control(ControlMsg::Disconnect),
        control(ControlMsg::Census),
        control(ControlMsg::Maintenance { script: "#!/bin/sh\nmountpoint -q /scratch || exit 1\n".into() }),
        control(ControlMsg::MaintenanceFailed {
            node: id(4),
            status: ExitStatus::Exited(1),
            output: b"scratch disk not mounted\n".to_vec(),
        }),
        control(ControlMsg::Linger { ms: 5_000 }),
        control(ControlMsg::Share { hosts: List((20..52).map(id).collect()), fanout: 32 }),
        job(JobMsg::Run(Box::new(spec.clone()))),
        job(JobMsg::Run(Box::new(RunSpec {
            job: 43,
            kind: JobKind::Push,
            argv: List(vec![]),
            push: Some(push),
            ..spec.clone()
        }))),
        job(JobMsg::Output { job: 42, node: id(3), bytes: b"6.1.0-18-amd64\n".to_vec(), err: false }),
        job(JobMsg::Results {
            job: 42,
            groups: List(vec![
                group(0, "6.1.0-18-amd64\n/dev/sda1  40G  12G  26G  32% /\n", set(1, 180)),
                Group { stderr: b"df: /: Input/output error\n".to_vec(), ..group(1, "", set(180, 181)) },
                Group {
                    blob: Some(BlobRef { digest: [9; 32], stdout_len: 3 << 20, len: (3 << 20) + 100 }),
                    ..group(0, "", set(181, 190))
                },
            ]),
            complete: true,
        }),
        job(JobMsg::Ack { job: 42, nodes: set(1, 181) }),
        job(JobMsg::Cancel { job: 42 }),
        job(JobMsg::BarrierEnter { name: "data-loaded".into(), nodes: set(1, 13) }),
        job(JobMsg::BarrierRelease { name: "data-loaded".into() }),
        job(JobMsg::Chunk { job: 43, index: 17, data: (0..CHUNK_BYTES).map(|i| i as u8).collect() }),
        job(JobMsg::ChunkAck { job: 43, next: 18, resume: false }),
        job(JobMsg::OutputAck { job: 42, bytes: 65_536 }),
        job(JobMsg::Blob {
            job: 42,
            digest: [9; 32],
            offset: 1 << 20,
            total: (3 << 20) + 100,
            data: (0..CHUNK_BYTES).map(|i| (i * 7) as u8).collect(),
        }),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::FramePool;
    use crate::wire::KINDS;

    #[test]
    fn there_is_a_sample_of_every_kind_and_each_round_trips() {
        let msgs = messages();
        let mut kinds: Vec<&str> = msgs.iter().map(Message::kind).collect();
        kinds.dedup();
        assert_eq!(kinds, KINDS, "one sample per kind, in the order of KINDS");
        let mut pool = FramePool::default();
        for m in &msgs {
            let frame = pool.encode(m, 1 << 20).expect("a sample encodes");
            assert_eq!(Message::decode(frame.payload()).as_ref(), Ok(m), "{} round-trips", m.kind());
        }
    }
}
