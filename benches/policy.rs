//! Policy look-up on the engine's hot path: called per MX host per delivery attempt, so it must
//! cost far less than the connection it plans. The cache is warm with 10,000 destinations, as a
//! bulk sender's shard would be.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use mxpipe::policy::mta_sts::{Mode, StsPolicy};
use mxpipe::policy::{
    compose, plan_cached, prefix_of, strictest_prefix, Dane, DomainFacts, Floor, HostFacts, PolicyCache, PolicyOptions, Sts,
};

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

    // The composed policy as a shard computes it for one MX host on its cached path: the
    // learned facts looked up, the MTA-STS policy's patterns matched, every source combined.
    let sts = StsPolicy { mode: Mode::Enforce, mx: vec!["mx1.example.com".into(), "*.mail.example.net".into()], max_age: 86_400 };
    let hosts = ["starttls-mx1.example.com", "mx1.example.com", "backup.mail.example.net"];
    let mut g = c.benchmark_group("compose");
    for (name, host, sts_mode) in [
        ("prefixed_host", hosts[0], Sts::None),
        ("plain_host_domain_scope", hosts[1], Sts::None),
        ("plain_host_mta_sts_enforce", hosts[2], Sts::Enforce),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                let facts = DomainFacts {
                    strictest_prefix: strictest_prefix(black_box(hosts)),
                    sts: sts_mode,
                    floor: Floor::None,
                    ..DomainFacts::default()
                };
                let host = black_box(host);
                let h = HostFacts {
                    name: host,
                    floor: Floor::None,
                    learned: cache.get(host, later),
                    sts_listed: sts.matches(host),
                    dane: Dane::None,
                    dane_smtps: Dane::None,
                };
                compose(&facts, &h, later)
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
