//! DKIM signing at intake (`Dkim::sign`), Ed25519 against RSA-2048, side by side: what one
//! signature costs a message of the daemon's benchmark size (2 KB, perf/daemon.sh) and a large
//! one (100 KB, where hashing the body starts to count). One group per size; in each:
//!
//! - `ed25519`: an Ed25519-SHA256 key (RFC 8463) from `keys::generate`, relaxed/relaxed.
//! - `rsa2048`: an RSA-SHA256 key of 2048 bits, the same message.
//! - `no_key_matches`: the same signer, a message whose `From:` domain no key aligns with: the
//!   header scan a message pays when nothing signs it (the floor under both).
//!
//! The keys are made once per run (`keys::generate`), loaded as the daemon loads a `[[dkim]]`
//! entry (`Dkim::with_pem`), and each signature is checked to be made before it is timed.
//!
//! Run: `cargo bench --bench dkim -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use mxpipe::dkim::keys::{self, Algorithm};
use mxpipe::dkim::{Dkim, Signed};

const DOMAIN: &str = "src.bench.test";

/// A message of about `size` bytes as an application injects it: the usual header fields,
/// `From:` in `from_domain`, then a text body of 76-character CRLF lines.
fn message(size: usize, from_domain: &str) -> Vec<u8> {
    let mut m = format!(
        "From: Sender <news@{from_domain}>\r\nTo: <u@d0.bench.test>\r\nSubject: daemon bench\r\n\
         Date: Wed, 2 Dec 2026 12:00:00 +0000\r\nMessage-ID: <1.2.3@{from_domain}>\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=us-ascii\r\n\r\n"
    )
    .into_bytes();
    let line = b"abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcd\r\n";
    while m.len() + line.len() <= size {
        m.extend_from_slice(line);
    }
    m
}

fn signer(alg: Algorithm) -> Dkim {
    let (pem, _public) = keys::generate(alg, 2048).expect("generate a key");
    Dkim::with_pem(&Dkim::entry(DOMAIN, "s1", "x"), pem.as_bytes()).expect("load the generated key")
}

fn bench(c: &mut Criterion) {
    let ed = signer(Algorithm::Ed25519);
    let rsa = signer(Algorithm::Rsa);
    for (label, size) in [("2KB", 2048), ("100KB", 100 * 1024)] {
        let msg = message(size, DOMAIN);
        let other = message(size, "elsewhere.test");
        // Each must do what the daemon would, or the figures mean nothing.
        for (name, d) in [("ed25519", &ed), ("rsa2048", &rsa)] {
            match d.sign(&msg, None) {
                Ok(Signed::Yes(out, domains)) => {
                    assert!(out.starts_with(b"DKIM-Signature:"), "{name}: no DKIM-Signature field first");
                    assert_eq!(domains, vec![DOMAIN.to_string()], "{name}: signed for the wrong domain");
                }
                other => panic!("{name}: the {label} message was not signed: {other:?}"),
            }
        }
        assert_eq!(ed.sign(&other, None), Ok(Signed::No), "a message of another domain must not be signed");

        let mut g = c.benchmark_group(format!("dkim_sign_{label}"));
        g.throughput(Throughput::Bytes(msg.len() as u64));
        g.bench_with_input(BenchmarkId::from_parameter("ed25519"), &msg, |b, m| b.iter(|| ed.sign(black_box(m), None)));
        g.bench_with_input(BenchmarkId::from_parameter("rsa2048"), &msg, |b, m| b.iter(|| rsa.sign(black_box(m), None)));
        g.bench_with_input(BenchmarkId::from_parameter("no_key_matches"), &other, |b, m| b.iter(|| ed.sign(black_box(m), None)));
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
