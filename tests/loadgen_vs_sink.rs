//! The load generator's library against the sink, both in this process, over loopback:
//! the two sides' counts must agree exactly, resumption must show when on and not when off,
//! and each fault must surface as its own error class.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{start_sink, start_sink_with};
use mxpipe::sink::{PortKind, Sink};
use mxpipe::tls::{ClientResumption, GeneratedPki, Kx, ServerResumption, Verify};
use mxpipe_loadgen::{Config, Mode, PortReport, Report};

fn config(sink: &Sink, pki: &GeneratedPki, count: u64) -> Config {
    let mut c = Config::new("127.0.0.1");
    c.starttls_port = sink.addr(PortKind::StartTls).map(|a| a.port());
    c.implicit_port = sink.addr(PortKind::Implicit).map(|a| a.port());
    c.server_name = "localhost".into();
    c.verify = Verify::Roots(Arc::new(pki.roots()));
    c.kx = Kx::X25519;
    c.count = Some(count);
    c.duration = Some(Duration::from_secs(60));
    c.concurrency = 4;
    c.timeout = Duration::from_secs(10);
    c
}

fn port<'r>(r: &'r Report, tls: &str) -> &'r PortReport {
    r.ports.iter().find(|p| p.tls == tls).unwrap_or_else(|| panic!("no {tls} port in report"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_agree_exactly_without_resumption() {
    let (sink, pki) = start_sink(|_| {}).await;
    let mut cfg = config(&sink, &pki, 120);
    cfg.resume = ClientResumption::Off;
    let report = mxpipe_loadgen::run(&cfg).await.unwrap();
    let s = sink.shutdown(Duration::from_secs(5)).await.stats;
    for (tls, side) in [("starttls", s.starttls), ("implicit", s.implicit)] {
        let p = port(&report, tls);
        assert_eq!((p.attempts, p.handshakes, p.full, p.resumed, p.errors), (120, 120, 120, 0, 0), "{tls}");
        assert_eq!((side.connections, side.handshakes_full, side.handshakes_resumed, side.handshake_failures), (120, 120, 0, 0), "{tls}");
        assert_eq!(p.tls_version.as_deref(), Some("TLSv1.3"));
        assert_eq!(p.kx.as_deref(), Some("X25519"));
        assert!(p.latency_us.p50 > 0 && p.latency_us.max >= p.latency_us.p99);
    }
    assert!(report.client_cpu_s > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tickets_resume_and_both_sides_agree() {
    let (sink, pki) = start_sink(|_| {}).await;
    let cfg = config(&sink, &pki, 200);
    let report = mxpipe_loadgen::run(&cfg).await.unwrap();
    let s = sink.shutdown(Duration::from_secs(5)).await.stats;
    for (tls, side) in [("starttls", s.starttls), ("implicit", s.implicit)] {
        let p = port(&report, tls);
        assert_eq!((p.handshakes, p.errors), (200, 0), "{tls}");
        assert_eq!((p.full, p.resumed), (side.handshakes_full, side.handshakes_resumed), "{tls}");
        // Only the first connection of each of the 4 workers can lack a ticket; since the
        // sink issues fresh tickets on resumed handshakes too, every later one resumes.
        assert!(p.resumed >= 200 - 8, "{tls}: only {} of 200 resumed", p.resumed);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_id_resumption_uses_the_server_cache() {
    let (sink, pki) = start_sink(|_| {}).await;
    let mut cfg = config(&sink, &pki, 60);
    cfg.resume = ClientResumption::SessionId;
    let report = mxpipe_loadgen::run(&cfg).await.unwrap();
    sink.shutdown(Duration::from_secs(5)).await;
    for tls in ["starttls", "implicit"] {
        let p = port(&report, tls);
        assert_eq!(p.tls_version.as_deref(), Some("TLSv1.2"), "{tls}");
        assert!(p.resumed >= 50, "{tls}: {} resumed", p.resumed);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_resumption_when_the_sink_offers_none() {
    let (sink, pki) = start_sink_with(ServerResumption { tickets: false, session_cache: 0 }, |_| {}).await;
    let report = mxpipe_loadgen::run(&config(&sink, &pki, 40)).await.unwrap();
    let s = sink.shutdown(Duration::from_secs(5)).await.stats;
    for tls in ["starttls", "implicit"] {
        let p = port(&report, tls);
        assert_eq!((p.handshakes, p.resumed), (40, 0), "{tls}");
    }
    assert_eq!(s.starttls.handshakes_resumed + s.implicit.handshakes_resumed, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_without_starttls_gives_no_starttls_errors() {
    let (sink, pki) = start_sink(|c| c.starttls = false).await;
    let mut cfg = config(&sink, &pki, 20);
    cfg.implicit_port = None;
    let report = mxpipe_loadgen::run(&cfg).await.unwrap();
    sink.shutdown(Duration::from_secs(5)).await;
    let p = port(&report, "starttls");
    assert_eq!((p.attempts, p.handshakes, p.errors, p.errors_by_class.no_starttls), (20, 0, 20, 20));
    assert!(report.all_failed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_name_certificate_gives_certificate_errors() {
    // The sink's certificate is for another name, signed by the CA the client trusts.
    let pki = mxpipe::tls::certs::generate(&["wrong-name.invalid".into()]).unwrap();
    let server = mxpipe::tls::server_config(pki.identity.clone(), ServerResumption::default()).unwrap();
    let mut sc = mxpipe::sink::SinkConfig::new(server);
    sc.starttls_port = Some(0);
    sc.implicit_port = Some(0);
    let sink = Sink::start(sc).await.unwrap();
    let report = mxpipe_loadgen::run(&config(&sink, &pki, 10)).await.unwrap();
    let s = sink.shutdown(Duration::from_secs(5)).await.stats;
    for tls in ["starttls", "implicit"] {
        let p = port(&report, tls);
        assert_eq!((p.handshakes, p.errors_by_class.certificate), (0, 10), "{tls}: {:?}", p.errors_by_class);
    }
    assert_eq!(s.starttls.handshakes() + s.implicit.handshakes(), 0);
    assert_eq!(s.starttls.handshake_failures + s.implicit.handshake_failures, 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_are_counted_on_both_sides() {
    let (sink, pki) = start_sink(|_| {}).await;
    let mut cfg = config(&sink, &pki, 12);
    cfg.mode = Mode::Transaction { messages_per_conn: 5, size: 3000 };
    let report = mxpipe_loadgen::run(&cfg).await.unwrap();
    let s = sink.shutdown(Duration::from_secs(5)).await.stats;
    let sent: u64 = report.ports.iter().map(|p| p.messages).sum();
    assert_eq!(sent, 2 * 12 * 5);
    assert_eq!((s.messages, s.recipients), (sent, sent));
    // --size is the size of the message as generated; the sink counts unstuffed bytes.
    let per_msg = s.bytes / s.messages;
    assert!((2900..=3100).contains(&per_msg), "{per_msg} bytes per message");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_faults_surface_as_smtp_reply_errors() {
    let (sink, pki) = start_sink(|c| c.faults.temp_fail_rate = 1.0).await;
    let mut cfg = config(&sink, &pki, 6);
    cfg.mode = Mode::Transaction { messages_per_conn: 1, size: 500 };
    let report = mxpipe_loadgen::run(&cfg).await.unwrap();
    let s = sink.shutdown(Duration::from_secs(5)).await.stats;
    for tls in ["starttls", "implicit"] {
        let p = port(&report, tls);
        assert_eq!((p.messages, p.errors_by_class.smtp_reply), (0, 6), "{tls}: {:?}", p.errors_by_class);
    }
    assert_eq!((s.messages, s.faults.temp_fail), (0, 12));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_target_finishes_with_connect_errors() {
    // Bind and drop: nothing listens on that port any more.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut cfg = Config::new("127.0.0.1");
    cfg.starttls_port = Some(port);
    cfg.count = Some(5);
    cfg.duration = Some(Duration::from_secs(10));
    let report = tokio::time::timeout(Duration::from_secs(30), mxpipe_loadgen::run(&cfg)).await.unwrap().unwrap();
    let p = port_of(&report);
    assert_eq!((p.attempts, p.errors_by_class.connect), (5, 5));
}

fn port_of(r: &Report) -> &PortReport {
    &r.ports[0]
}
