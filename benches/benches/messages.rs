//! Per message kind, in the core.
//!
//! - `kind/KIND`: decode one message of every kind ([`plush_core::samples::messages`]) from its
//!   payload and encode it again through a frame pool: the wire cost of each kind of every layer.
//! - `handle/...`: decode + handle + encode at a relay with a parent and 12 children, for what a
//!   running overlay carries most: a child's broadcast reply relayed up, the parent's heartbeat,
//!   a whole job (run relayed down, 12 results merged into one up, the ack relayed down), a whole
//!   RanSub epoch (distribute to 12 children, 12 collects compacted into one up), and the
//!   connection table at its budget (a touch of an idle link; a new link evicting the oldest).
//!
//! Throughput is in input messages (frames handed to the node, or link events) per second.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use plush_benches::{JobRound, LinkChurn, RanSubRound, Relay};
use plush_core::frame::FramePool;
use plush_core::samples;
use plush_core::wire::{JobMsg, Message, TreeMsg};
use std::hint::black_box;
use std::time::Duration;

fn wire(c: &mut Criterion) {
    let mut g = c.benchmark_group("kind");
    g.warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(1));
    g.throughput(Throughput::Elements(1));
    let mut pool = FramePool::default();
    for msg in samples::messages() {
        let payload = pool.encode(&msg, 1 << 20).expect("a sample encodes").payload().to_vec();
        let name = match &msg {
            Message::Job(JobMsg::Run(spec)) if spec.push.is_some() => "job.run(push)",
            m => m.kind(),
        };
        g.bench_function(name, |b| {
            b.iter(|| {
                let m = Message::decode(black_box(&payload)).expect("a sample decodes");
                let f = pool.encode(&m, 1 << 20).expect("a sample encodes");
                black_box(f.payload().len())
            })
        });
    }
    g.finish();
}

fn handle(c: &mut Criterion) {
    let mut g = c.benchmark_group("handle");
    g.warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));

    let mut relay = Relay::new(12);
    let child = relay.children()[3];
    let mut pool = FramePool::default();
    let reply = Message::Tree(TreeMsg::BroadcastReply { id: 9, node: child });
    let reply = pool.encode(&reply, 1 << 20).expect("encodes").payload().to_vec();
    g.throughput(Throughput::Elements(1));
    g.bench_function("broadcast_reply_up", |b| b.iter(|| relay.feed(child, &reply)));

    let parent = relay.node().parent().expect("the relay has a parent");
    let hb = pool.encode(&Message::Tree(TreeMsg::Heartbeat), 1 << 20).expect("encodes").payload().to_vec();
    g.bench_function("heartbeat_from_parent", |b| b.iter(|| relay.feed(parent, &hb)));

    // 14 frames in: the run, 12 results, the ack.
    let mut jobs = JobRound::new();
    g.throughput(Throughput::Elements(14));
    g.bench_function("job_round_12_children", |b| b.iter(|| jobs.round()));

    // 13 frames in: the distribute, 12 collects.
    let mut ransub = RanSubRound::new();
    g.throughput(Throughput::Elements(13));
    g.bench_function("ransub_epoch_12_children", |b| b.iter(|| ransub.epoch()));

    let mut churn = LinkChurn::new();
    g.throughput(Throughput::Elements(1));
    g.bench_function("conn_touch", |b| b.iter(|| churn.touch()));
    g.bench_function("conn_evict", |b| b.iter(|| churn.evict()));
    g.finish();
}

criterion_group!(benches, wire, handle);
criterion_main!(benches);
