//! Policy look-up on the engine's hot path: called per MX host per delivery attempt, so it must
//! cost far less than the connection it plans. The cache is warm with 10,000 destinations, as a
//! bulk sender's shard would be.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use mxpipe::policy::{plan_cached, prefix_of, Floor, PolicyCache, PolicyOptions};

const HOSTS: [(&str, &str); 3] =
    [("plain", "mx1.example.com"), ("starttls", "starttls-mx1.example.com"), ("smtps", "smtps-mx1.example.com")];

fn warm_cache(opts: &PolicyOptions, now: Instant) -> PolicyCache {
    let mut cache = PolicyCache::new(opts);
    for i in 0..10_000 {
        let host = match i % 3 {
            0 => format!("mx{i}.example.net"),
            1 => format!("starttls-mx{i}.example.net"),
            _ => format!("smtps-mx{i}.example.net"),
        };
        match i % 4 {
            0 => cache.port26_unusable(&host, now),
            1 => cache.starttls_absent(&host, now),
            2 => cache.tls_failed(&host, now),
            _ => cache.failure(&host, "451 4.7.0 try again later", now),
        }
    }
    // The benchmarked hosts are in the cache too, so `plan` reads a real entry.
    cache.starttls_absent("mx1.example.com", now);
    cache.failure("starttls-mx1.example.com", "certificate expired", now);
    cache.port26_unusable("smtps-mx1.example.com", now);
    cache
}

fn bench(c: &mut Criterion) {
    let opts = PolicyOptions::default();
    let now = Instant::now();
    let cache = warm_cache(&opts, now);
    assert!(cache.len() >= 10_000);
    let later = now + Duration::from_secs(1);

    let mut g = c.benchmark_group("prefix_of");
    for (name, host) in HOSTS {
        g.bench_function(name, |b| b.iter(|| prefix_of(black_box(host))));
    }
    g.finish();

    let mut g = c.benchmark_group("plan_cached");
    for (name, host) in HOSTS {
        g.bench_function(name, |b| b.iter(|| plan_cached(&cache, black_box(host), true, Floor::None, later)));
    }
    g.bench_function("plain_floor_verified", |b| {
        b.iter(|| plan_cached(&cache, black_box("MX1.Example.COM."), true, Floor::Verified, later))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
