//! `--mode inject` against mxpipe's own sink over loopback: what the load generator reports
//! acknowledged must be what the sink received, message for message, recipient for recipient
//! and byte for byte; refusals and drops show under their reply class; STARTTLS, AUTH PLAIN
//! and BDAT work; and the Postfix peer takes the same load (SKIPPED without it).

mod inject_util;
#[path = "../../tests/common/peers.rs"]
mod peers;

use std::sync::Arc;
use std::time::{Duration, Instant};

use inject_util::*;
use mxpipe::tls::{ClientOptions, ClientResumption, GeneratedPki, Kx, Verify};
use mxpipe_loadgen::inject::{self, Domains, Door, SizeDist, StartTls};
use rustls_pki_types::ServerName;

fn starttls(roots: rustls::RootCertStore) -> StartTls {
    let opts =
        ClientOptions { verify: Verify::Roots(Arc::new(roots)), kx: Kx::X25519, resumption: ClientResumption::Off, tls12_only: false };
    let tls = mxpipe::tls::client_config(&opts, None).unwrap();
    StartTls { connector: tokio_rustls::TlsConnector::from(tls), server_name: ServerName::try_from("localhost").unwrap() }
}

fn sink_tls(pki: &GeneratedPki) -> StartTls {
    starttls(pki.roots())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_counts_agree_with_the_sink() {
    let (sink, _) = sink(|_| {}).await;
    let mut cfg = with_plan(smtp(port(&sink), 600, 3), Domains::Numbered(5), 2, SizeDist::parse("1k:3,20k:1").unwrap());
    cfg.messages_per_conn = Some(100);
    let r = inject::run(&cfg).await.unwrap();
    let s = sink.shutdown(Duration::from_secs(5)).await.stats;
    assert_balanced(&r);
    assert_eq!((r.attempted, r.acked, r.lost, r.connection_errors), (600, 600, 0, 0), "{}", r.to_table());
    assert_eq!((s.messages, s.recipients, s.bytes), (r.acked, r.rcpts_acked, r.bytes_acked));
    assert_eq!(r.rcpts_acked, 1200);
    // 600 messages, 100 a connection: 6 connections, and up to one more per worker that
    // opened as the last numbers were taken by another and so sent nothing.
    assert_eq!((r.pipelined_connections, s.starttls.connections), (r.connections, r.connections));
    assert!((6..=9).contains(&r.connections), "{}", r.connections);
    // MAIL, both RCPTs and DATA arrive in one read: far fewer reads than commands.
    assert!(s.command_batches * 2 < s.commands, "{} commands in {} reads", s.commands, s.command_batches);
    assert_eq!(r.ack_latency_us.count, 600);
    assert!(r.acked_per_s > 0.0 && r.ack_latency_us.p50 > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_auth_plain_and_bdat() {
    let line = mxpipe::auth::hash_line("app", "s3cret", 10_000).unwrap();
    let users = Arc::new(mxpipe::auth::Users::parse(&line, std::path::Path::new("users")).unwrap());
    let (sink, pki) = sink(|c| {
        let mut a = mxpipe::smtp_server::Auth::new(users.clone());
        a.failure_delay = Duration::ZERO;
        c.auth = Some(a);
        // Everyone must AUTH: nobody is in an allowed network.
        c.allowed_clients = Some(vec![]);
    })
    .await;
    let mut cfg = smtp(port(&sink), 200, 2);
    cfg.door = Door::Smtp {
        ehlo_name: "inject.test".into(),
        starttls: Some(sink_tls(&pki)),
        auth: Some(("app".into(), "s3cret".into())),
        bdat: true,
    };
    cfg.messages_per_conn = Some(40);
    let r = inject::run(&cfg).await.unwrap();
    assert_eq!((r.acked, r.connection_errors), (200, 0), "{}", r.to_table());
    assert!(r.settings.bdat && r.settings.starttls && r.settings.auth);

    // A wrong password: every connection fails at AUTH, nothing is acknowledged, and the
    // workers stop after their failures in a row instead of spinning until the deadline.
    let mut bad = cfg.clone();
    bad.door = Door::Smtp {
        ehlo_name: "inject.test".into(),
        starttls: Some(sink_tls(&pki)),
        auth: Some(("app".into(), "wrong".into())),
        bdat: false,
    };
    bad.concurrency = 1;
    let t0 = Instant::now();
    let rb = inject::run(&bad).await.unwrap();
    assert!(t0.elapsed() < Duration::from_secs(30));
    assert_eq!((rb.acked, rb.attempted, rb.workers_gave_up), (0, 0, 1), "{}", rb.to_table());
    assert_eq!(rb.errors_by_class.smtp_reply, inject::MAX_FAILED_IN_A_ROW as u64);
    assert!(rb.error_examples["smtp_reply"].contains("AUTH PLAIN"), "{:?}", rb.error_examples);

    let s = sink.shutdown(Duration::from_secs(5)).await.stats;
    assert_eq!(s.messages, 200);
    assert_eq!(s.auth_ok, r.connections);
    assert_eq!(s.starttls.handshakes_full, r.connections + rb.connections);
    assert!(s.auth_failed >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_counted_by_reply_class() {
    let (sink, _) = sink(|c| {
        c.faults.perm_fail_rate = 0.25;
        c.faults.temp_fail_rate = 0.2;
    })
    .await;
    let mut cfg = smtp(port(&sink), 400, 2);
    // Each message refused at RCPT makes its pipelined DATA an error to the sink (it closes
    // after 20) and costs an RSET: few messages a connection keep both under the limits.
    cfg.messages_per_conn = Some(20);
    let r = inject::run(&cfg).await.unwrap();
    let s = sink.shutdown(Duration::from_secs(5)).await.stats;
    assert_balanced(&r);
    assert_eq!((r.attempted, r.lost, r.connection_errors), (400, 0, 0), "{}", r.to_table());
    assert_eq!(r.acked, s.messages);
    assert_eq!(r.refused_by_reply.get("rcpt_5xx").copied().unwrap_or(0), s.faults.perm_fail);
    assert_eq!(r.refused_by_reply.get("rcpt_4xx").copied().unwrap_or(0), s.faults.temp_fail);
    // One recipient a message: a refused RCPT refuses the message.
    assert_eq!((r.refused_perm, r.refused_temp), (s.faults.perm_fail, s.faults.temp_fail));
    assert!(s.faults.perm_fail > 0 && s.faults.temp_fail > 0 && r.acked > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_dropped_at_end_of_data_loses_its_message_only() {
    let (sink, _) = sink(|c| c.faults.drop_rate = 0.1).await;
    let cfg = smtp(port(&sink), 300, 2);
    let r = inject::run(&cfg).await.unwrap();
    let s = sink.shutdown(Duration::from_secs(5)).await.stats;
    assert_balanced(&r);
    assert_eq!(r.attempted, 300);
    assert_eq!((r.acked, r.lost), (s.messages, s.faults.dropped), "{}", r.to_table());
    assert!(r.lost > 0);
    assert_eq!(r.connection_errors, r.lost);
    assert_eq!(r.connections, s.starttls.connections);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duration_bound_run_ends_and_agrees() {
    let (sink, _) = sink(|c| c.faults.delay = Duration::from_millis(2)).await;
    let mut cfg = smtp(port(&sink), 0, 2);
    cfg.count = None;
    cfg.duration = Some(Duration::from_secs(1));
    let t0 = Instant::now();
    let r = inject::run(&cfg).await.unwrap();
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    let s = sink.shutdown(Duration::from_secs(5)).await.stats;
    assert!(r.acked > 10, "{}", r.to_table());
    assert_eq!((r.acked, r.attempted), (s.messages, s.messages));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_starttls_offered_is_an_error_not_plaintext() {
    let (sink, pki) = sink(|c| c.starttls = false).await;
    let mut cfg = smtp(port(&sink), 10, 1);
    cfg.door = Door::Smtp { ehlo_name: "inject.test".into(), starttls: Some(sink_tls(&pki)), auth: None, bdat: false };
    let r = inject::run(&cfg).await.unwrap();
    let s = sink.shutdown(Duration::from_secs(5)).await.stats;
    assert_eq!((r.acked, s.messages, r.errors_by_class.no_starttls), (0, 0, inject::MAX_FAILED_IN_A_ROW as u64));
}

/// The Postfix peer's STARTTLS port (verified against its CA), pipelined, two recipients a
/// message, several connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interop_postfix_takes_the_pipelined_injection() {
    let Some(pf) = peers::postfix("interop_postfix_takes_the_pipelined_injection") else { return };
    let mut roots = rustls::RootCertStore::empty();
    mxpipe::tls::certs::add_roots_from_file(&mut roots, &pf.ca).expect("read the Postfix peer's CA");
    let mut cfg = with_plan(smtp(pf.starttls_port, 60, 3), Domains::Single, 2, SizeDist::parse("1k:2,10k:1").unwrap());
    cfg.host = pf.addr.to_string();
    cfg.messages_per_conn = Some(10);
    cfg.door = Door::Smtp { ehlo_name: "inject.test".into(), starttls: Some(starttls(roots)), auth: None, bdat: false };
    let r = inject::run(&cfg).await.unwrap();
    assert_balanced(&r);
    assert_eq!((r.acked, r.connection_errors, r.rcpts_acked), (60, 0, 120), "{}", r.to_table());
    assert_eq!(r.pipelined_connections, r.connections, "Postfix offers PIPELINING");
}
