//! Simulator throughput: one whole 10,000-node run with a quarter of the nodes and the root
//! killed, reported by criterion in simulator events per second.

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use plush_benches::failure_scenario;
use std::hint::black_box;
use std::time::Duration;

/// Nodes in the benchmarked scenario.
const NODES: u32 = 10_000;

fn sim_throughput(c: &mut Criterion) {
    let scenario = failure_scenario(NODES);
    // The run is deterministic, so one run tells how many events every iteration processes.
    let events = plush_sim::run(&scenario).events;

    let mut group = c.benchmark_group("sim");
    // One iteration is a whole run (a few hundred milliseconds): few samples, flat sampling.
    group.sample_size(10);
    group.sampling_mode(SamplingMode::Flat);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(10));
    group.throughput(Throughput::Elements(events));
    group.bench_function("10k_nodes_kill_quarter_and_root", |b| b.iter(|| plush_sim::run(black_box(&scenario)).events));
    group.finish();
}

criterion_group!(benches, sim_throughput);
criterion_main!(benches);
