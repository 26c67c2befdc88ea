//! The server certificate check of a full handshake, DANE against WebPKI, side by side: what a
//! TLSA record saves or costs per new connection. The chain is the one the demo's sink presents
//! (leaf, then the CA that signed it, from `tls::certs::generate`; ECDSA P-256).
//!
//! - `dane_ee_3_1_1`: a DANE-EE record of the leaf's public key (SHA-256): a digest, no signature.
//! - `dane_ta_2_0_1`: a DANE-TA record of the CA certificate (SHA-256): the CA found in the chain,
//!   then the leaf's signature checked against it and the name matched, as WebPKI does.
//! - `webpki`: rustls's `WebPkiServerVerifier` with the CA as the only root, the same chain.
//!
//! Run: `cargo bench --bench dane -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use mxpipe::tls::certs::generate;
use mxpipe::tls::dane::{DaneAuth, DaneMatch, Tlsa};
use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls_pki_types::{ServerName, UnixTime};

const HOST: &str = "starttls-mx0.demo.test";
const DOMAIN: &str = "d0.demo.test";

fn bench(c: &mut Criterion) {
    let pki = generate(&["*.demo.test".into(), "demo.test".into()]).expect("generate a test PKI");
    let leaf = pki.identity.chain[0].clone();
    let intermediates = pki.identity.chain[1..].to_vec();
    let now = UnixTime::now();

    let ee = Tlsa::for_cert(&leaf, 3, 1, 1).expect("DANE-EE record");
    let ta = Tlsa::for_cert(&pki.ca_der, 2, 0, 1).expect("DANE-TA record");
    let ee_auth = DaneAuth::new(&[ee], HOST, Some(DOMAIN)).expect("usable DANE-EE record");
    let ta_auth = DaneAuth::new(&[ta], HOST, Some(DOMAIN)).expect("usable DANE-TA record");
    // Each check must succeed the way it would in a handshake, or the figures mean nothing.
    assert!(matches!(ee_auth.verify(&leaf, &intermediates, now), Ok(DaneMatch::Ee { .. })));
    assert!(matches!(ta_auth.verify(&leaf, &intermediates, now), Ok(DaneMatch::Ta { .. })));

    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(pki.roots()), provider).build().expect("WebPKI verifier");
    let name = ServerName::try_from(HOST).expect("valid name");
    webpki.verify_server_cert(&leaf, &intermediates, &name, &[], now).expect("WebPKI accepts the chain");

    let mut g = c.benchmark_group("server_cert_check");
    g.bench_function("dane_ee_3_1_1", |b| b.iter(|| ee_auth.verify(black_box(&leaf), black_box(&intermediates), now)));
    g.bench_function("dane_ta_2_0_1", |b| b.iter(|| ta_auth.verify(black_box(&leaf), black_box(&intermediates), now)));
    g.bench_function("webpki", |b| {
        b.iter(|| webpki.verify_server_cert(black_box(&leaf), black_box(&intermediates), &name, &[], now).is_ok())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
