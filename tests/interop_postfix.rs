//! Interoperability with a real Postfix (STARTTLS on one port, `smtpd_tls_wrappermode` on
//! another), started by `scripts/test-all.sh`. Skipped loudly without it.

#[path = "common/peers.rs"]
mod peers;

use std::sync::Arc;
use std::time::Duration;

use mxpipe::tls::{certs, ClientResumption, Kx, Verify};
use mxpipe_loadgen::{Config, Mode, Report};

fn config(pf: &peers::Postfix, count: u64) -> Config {
    let mut roots = rustls::RootCertStore::empty();
    certs::add_roots_from_file(&mut roots, &pf.ca).expect("read the Postfix peer's CA");
    let mut c = Config::new(pf.addr.to_string());
    c.starttls_port = Some(pf.starttls_port);
    c.implicit_port = Some(pf.implicit_port);
    c.server_name = "localhost".into();
    c.verify = Verify::Roots(Arc::new(roots));
    c.kx = Kx::X25519;
    c.count = Some(count);
    c.duration = Some(Duration::from_secs(60));
    c.concurrency = 4;
    c
}

fn assert_clean(r: &Report, count: u64) {
    assert_eq!(r.ports.len(), 2);
    for p in &r.ports {
        assert_eq!((p.attempts, p.errors), (count, 0), "{} port {}: {:?} {:?}", p.tls, p.port, p.errors_by_class, p.error_examples);
        assert_eq!(p.handshakes, count, "{}", p.tls);
        assert_eq!(p.tls_version.as_deref(), Some("TLSv1.3"), "{}", p.tls);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interop_postfix_handshakes_verified_on_both_ports() {
    let Some(pf) = peers::postfix("interop_postfix_handshakes_verified_on_both_ports") else { return };
    let mut cfg = config(&pf, 40);
    cfg.resume = ClientResumption::Off;
    let r = mxpipe_loadgen::run(&cfg).await.unwrap();
    assert_clean(&r, 40);
    assert!(r.ports.iter().all(|p| p.resumed == 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interop_postfix_resumes_with_tickets() {
    let Some(pf) = peers::postfix("interop_postfix_resumes_with_tickets") else { return };
    let r = mxpipe_loadgen::run(&config(&pf, 40)).await.unwrap();
    assert_clean(&r, 40);
    for p in &r.ports {
        // Postfix issues a new ticket only after a full handshake (rustls#2204), so about
        // every second handshake resumes; it must be well above none.
        assert!(p.resumed >= 10, "{}: {} of 40 resumed", p.tls, p.resumed);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interop_postfix_accepts_pipelined_transactions() {
    let Some(pf) = peers::postfix("interop_postfix_accepts_pipelined_transactions") else { return };
    let mut cfg = config(&pf, 6);
    cfg.mode = Mode::Transaction { messages_per_conn: 3, size: 2000 };
    let r = mxpipe_loadgen::run(&cfg).await.unwrap();
    assert_clean(&r, 6);
    assert!(r.ports.iter().all(|p| p.messages == 18), "{:?}", r.ports.iter().map(|p| p.messages).collect::<Vec<_>>());
}
