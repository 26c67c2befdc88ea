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

/// The engine delivers to Postfix, found through our DNS server under MX names whose prefix
/// selects STARTTLS on 25 (mapped to the peer's STARTTLS port) and implicit TLS on 26.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interop_engine_delivers_to_postfix_over_starttls_and_implicit_tls() {
    use mxpipe::dnsserver::{DnsServer, ZoneBuilder};
    use mxpipe::engine::{Engine, EngineConfig, PortMap, Submission};
    use mxpipe::outcome::{Status, TlsUse};
    let Some(pf) = peers::postfix("interop_engine_delivers_to_postfix_over_starttls_and_implicit_tls") else { return };
    let std::net::IpAddr::V4(v4) = pf.addr else { panic!("the Postfix peer listens on IPv4") };
    let mut z = ZoneBuilder::new("example.test.");
    z.mx("st.example.test", 10, "starttls-pf.example.test").a("starttls-pf.example.test", v4);
    z.mx("sm.example.test", 10, "smtps-pf.example.test").a("smtps-pf.example.test", v4);
    let dns = DnsServer::start(vec![z], "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let mut cfg = EngineConfig::default();
    cfg.resolver.nameserver = Some(dns.addr());
    cfg.port_map = PortMap { smtp: pf.starttls_port, smtps: pf.implicit_port, ..PortMap::default() };
    cfg.extra_roots = certs::load_certs(&pf.ca).unwrap();
    cfg.command_timeout = Duration::from_secs(20);
    let run = tokio::task::spawn_blocking(move || {
        let (engine, rx) = Engine::start(cfg).unwrap();
        for i in 0..20 {
            let to = vec![format!("u{i}@st.example.test"), format!("u{i}@sm.example.test")];
            let data = format!("Subject: interop {i}\r\n\r\nhello Postfix\r\n..dot\r\n").into_bytes();
            engine.submit(Submission::new(format!("pf{i}"), "sender@mxpipe.test", to, data)).unwrap();
        }
        let stats = engine.shutdown();
        (rx.try_iter().collect::<Vec<_>>(), stats)
    });
    let (outcomes, stats) = tokio::time::timeout(Duration::from_secs(120), run).await.unwrap().unwrap();
    dns.shutdown().await;
    assert_eq!(outcomes.len(), 40);
    for o in &outcomes {
        assert_eq!(o.status, Status::Delivered, "{o:?}");
        assert!(o.reply.starts_with("250"), "{}", o.reply);
        if o.rcpt.ends_with("@st.example.test") {
            assert_eq!((o.tls, o.port, o.policy.as_deref()), (TlsUse::Starttls, Some(pf.starttls_port), Some("starttls-prefix")));
        } else {
            assert_eq!((o.tls, o.port, o.policy.as_deref()), (TlsUse::Implicit, Some(pf.implicit_port), Some("smtps-prefix")));
        }
    }
    assert!(stats.transactions_per_connection > 1.0, "connections reused: {stats:?}");
}
