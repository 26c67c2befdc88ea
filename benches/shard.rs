//! Shard routing: the per-part cost of choosing a shard and splitting recipients by domain.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mxpipe::engine::{domain_of, shard_of};

fn bench(c: &mut Criterion) {
    let domains: Vec<String> = (0..1000).map(|i| format!("destination-{i}.example.com")).collect();
    let mut g = c.benchmark_group("shard");
    g.throughput(Throughput::Elements(domains.len() as u64));
    g.bench_function("shard_of x1000", |b| {
        b.iter(|| {
            let mut acc = 0usize;
            for d in &domains {
                acc = acc.wrapping_add(shard_of(black_box(d), 2));
            }
            acc
        })
    });
    let rcpts: Vec<String> = (0..1000).map(|i| format!("user{i}@Destination-{}.Example.com", i % 50)).collect();
    g.bench_function("domain_of x1000", |b| b.iter(|| rcpts.iter().filter_map(|r| domain_of(black_box(r))).count()));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
