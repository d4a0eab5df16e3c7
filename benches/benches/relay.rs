//! The relay case in the core: a node receives a broadcast frame from its parent, decodes it
//! once, hands the same bytes to 12 children and answers up. Throughput is relayed input
//! messages per second on one core.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use plush_benches::Relay;

fn relay(c: &mut Criterion) {
    let mut relay = Relay::new(12);
    let mut g = c.benchmark_group("relay");
    g.throughput(Throughput::Elements(1));
    g.bench_function("broadcast_to_12_children", |b| b.iter(|| relay.relay_once()));
    g.finish();
}

criterion_group!(benches, relay);
criterion_main!(benches);
