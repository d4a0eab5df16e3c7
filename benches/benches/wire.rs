//! The wire format: encoding and decoding one broadcast message, and finding a frame in a
//! buffer, each reported by criterion in operations per second.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use plush_core::frame::{split_frame, FramePool};
use plush_core::wire::{Filler, Message, TreeMsg};
use std::hint::black_box;

/// The default maximum frame size (1 MiB).
const MAX_FRAME: usize = 1 << 20;

fn wire(c: &mut Criterion) {
    let msg = Message::Tree(TreeMsg::Broadcast { id: 0x0123_4567_89ab_cdef, filler: Filler(0) });
    let mut pool = FramePool::default();

    let mut group = c.benchmark_group("wire");
    group.throughput(Throughput::Elements(1));

    // The pool hands back the same buffer every iteration once the frame is dropped, as in a
    // node's steady state.
    group.bench_function("encode_decode_broadcast", |b| {
        b.iter(|| {
            let frame = pool.encode(black_box(&msg), MAX_FRAME).expect("a broadcast fits in a frame");
            Message::decode(frame.payload())
        })
    });

    // A whole frame followed by the start of the next one, as a socket read often leaves it.
    let frame = pool.encode(&msg, MAX_FRAME).expect("a broadcast fits in a frame");
    let mut buf = frame.to_vec();
    buf.extend_from_slice(&frame[..3]);
    group.bench_function("split_frame", |b| {
        b.iter(|| split_frame(black_box(&buf), MAX_FRAME).map(|f| f.map(|(p, n)| p.len() + n)))
    });

    group.finish();
}

criterion_group!(benches, wire);
criterion_main!(benches);
