//! The load generator's measurement honesty (issue 13), each bias against the project's own
//! sink over loopback, with faults injected in the sink (`--delay`-style reply delays, a
//! connection limit, a key-exchange group it insists on) and the figures checked against the
//! sink's own counters. The sink runs in this process on a runtime of its own
//! ([`EmbeddedSink`]), as `--embedded-sink` runs it.

use std::sync::Arc;
use std::time::Duration;

use mxpipe::sink::{PortStats, SinkConfig, StatsSnapshot};
use mxpipe::tls::{ClientResumption, GeneratedPki, Kx, Verify};
use mxpipe_loadgen::conn::{self, Attempt, Target};
use mxpipe_loadgen::embedded::EmbeddedSink;
use mxpipe_loadgen::{Config, PortOrder, PortReport, Report, TlsKind};

/// A verifying client (the embedded sink swaps in trust in its own CA), X25519, no
/// resumption, 4 workers.
fn base() -> Config {
    let mut c = Config::new("127.0.0.1");
    c.verify = Verify::Roots(Arc::new(rustls::RootCertStore::empty()));
    c.kx = Kx::X25519;
    c.resume = ClientResumption::Off;
    c.concurrency = 4;
    c.timeout = Duration::from_secs(10);
    c
}

/// Start a sink whose every reply waits `delay`, and point `cfg` at it.
async fn sink_with_delay(cfg: &mut Config, delay: Duration) -> EmbeddedSink {
    EmbeddedSink::start_with(cfg, |s, _| s.faults.delay = delay).await.unwrap()
}

async fn run(cfg: &Config) -> Report {
    tokio::time::timeout(Duration::from_secs(120), mxpipe_loadgen::run(cfg)).await.expect("the run ends by itself").unwrap()
}

fn port<'r>(r: &'r Report, tls: &str) -> &'r PortReport {
    r.ports.iter().find(|p| p.tls == tls).unwrap_or_else(|| panic!("no {tls} port in report"))
}

fn side(s: &StatsSnapshot, tls: &str) -> PortStats {
    if tls == "starttls" {
        s.starttls
    } else {
        s.implicit
    }
}

/// Every scheduled connection is in the headline latency row exactly once.
fn check_accounting(p: &PortReport) {
    let b = &p.latency_breakdown_us;
    assert_eq!(p.attempts, p.successes + p.errors, "{}", p.tls);
    assert_eq!(p.scheduled, p.attempts + p.missed, "{}", p.tls);
    assert_eq!((b.ok.count, b.failed.count, b.missed.count), (p.successes, p.errors, p.missed), "{}", p.tls);
    assert_eq!(p.latency_us.count, p.scheduled, "{}", p.tls);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_counts_missed_connections_at_a_lower_bound() {
    let mut cfg = base();
    let sink = sink_with_delay(&mut cfg, Duration::from_millis(100)).await;
    // Implicit TLS: banner and QUIT replies each wait 100 ms, so a connection takes about
    // 200 ms and 10 slots carry about 50/s of the 100/s offered.
    cfg.starttls_port = None;
    cfg.rate = Some(100.0);
    cfg.concurrency = 10;
    cfg.duration = Some(Duration::from_secs(2));
    let r = run(&cfg).await;
    let s = sink.stop().await;
    let p = port(&r, "implicit");
    check_accounting(p);
    assert_eq!(p.scheduled, 200);
    assert!(p.missed >= 50, "only {} missed of {}", p.missed, p.scheduled);
    // The sink saw exactly the connections that were started, none of the missed ones.
    assert_eq!(s.implicit.connections, p.attempts);
    assert_eq!(s.implicit.handshakes_full, p.handshakes);
    // The earliest missed connection was due about halfway: its lower bound is large.
    let m = p.latency_breakdown_us.missed;
    assert!(m.max >= 500_000 && m.max <= 2_000_000, "{m:?}");
    assert!(p.warnings.iter().any(|w| w.contains("never started")), "{:?}", p.warnings);
    assert_eq!(r.exit_status(), mxpipe_loadgen::report::EXIT_MISSED);
    assert!(r.to_table().contains("MISSED"), "{}", r.to_table());
}

/// The binary says so in its exit status, and documents it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_exits_3_when_the_open_loop_misses() {
    let mut cfg = base();
    let sink = sink_with_delay(&mut cfg, Duration::from_millis(100)).await;
    let port = cfg.implicit_port.unwrap().to_string();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_mxpipe-loadgen"))
            .args(["--host", "127.0.0.1", "--implicit-port", &port, "--insecure", "--kx", "x25519", "--resume", "off"])
            .args(["--rate", "100", "-c", "5", "-d", "1", "--json", "--no-progress"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let s = sink.stop().await;
    assert_eq!(out.status.code(), Some(3), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let p = &v["ports"][0];
    assert!(p["missed"].as_u64().unwrap() > 0, "{p}");
    assert_eq!(p["attempts"].as_u64().unwrap(), s.implicit.connections);
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_mxpipe-loadgen")).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("3 when the open loop"), "{help}");
    assert!(help.contains("handshake signature"), "{help}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_counts_completions_inside_the_window_and_the_tail_apart() {
    let mut cfg = base();
    // STARTTLS: banner, EHLO and STARTTLS replies each wait 150 ms before the handshake, and
    // QUIT's after it: a connection takes about 600 ms, so the third round of the 1.5 s
    // window completes its handshakes after the window.
    let sink = sink_with_delay(&mut cfg, Duration::from_millis(150)).await;
    cfg.implicit_port = None;
    cfg.duration = Some(Duration::from_millis(1500));
    let r = run(&cfg).await;
    let s = sink.stop().await;
    let p = port(&r, "starttls");
    check_accounting(p);
    assert_eq!(p.errors, 0, "{:?}", p.error_examples);
    assert_eq!(p.handshakes, s.starttls.handshakes_full);
    assert_eq!(p.handshakes_in_window + p.tail_handshakes, p.handshakes);
    assert!(p.tail_handshakes >= 1, "no tail: {p:?}");
    assert!(p.tail_s > 0.1, "tail {} s", p.tail_s);
    assert!((p.window_s - 1.5).abs() < 0.05, "window {} s", p.window_s);
    assert!((p.handshakes_per_s - p.handshakes_in_window as f64 / p.window_s).abs() < 1e-9);
    assert!((p.duration_s - p.window_s - p.tail_s).abs() < 1e-9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warmup_is_kept_out_of_the_figures_and_the_order_is_chosen() {
    let mut cfg = base();
    let sink = sink_with_delay(&mut cfg, Duration::from_millis(20)).await;
    cfg.concurrency = 2;
    cfg.resume = ClientResumption::Tickets;
    cfg.warmup = Duration::from_millis(400);
    cfg.duration = Some(Duration::from_millis(400));
    cfg.order = PortOrder::ImplicitFirst;
    let r = run(&cfg).await;
    let s = sink.stop().await;
    assert_eq!(r.ports[0].tls, "implicit");
    assert_eq!(r.ports[1].tls, "starttls");
    assert_eq!(r.settings.order, "implicit,starttls");
    for p in &r.ports {
        check_accounting(p);
        let k = side(&s, &p.tls);
        assert!(p.warmup.attempts >= 2, "{}: {:?}", p.tls, p.warmup);
        // The sink saw the warm-up too; the report keeps it apart.
        assert_eq!(k.connections, p.attempts + p.warmup.attempts, "{}", p.tls);
        assert_eq!(k.handshakes_full + k.handshakes_resumed, p.handshakes + p.warmup.handshakes, "{}", p.tls);
        // The cold start (each worker's first, full handshake) was in the warm-up.
        assert!(p.warmup.handshakes >= 2);
        assert!(p.resumed + 2 >= p.handshakes, "{}: {} full of {}", p.tls, p.full, p.handshakes);
        assert!((p.window_s - 0.4).abs() < 0.05, "{}", p.window_s);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_to_first_byte_on_both_ports() {
    let mut cfg = base();
    let delay = Duration::from_millis(100);
    let sink = sink_with_delay(&mut cfg, delay).await;
    cfg.concurrency = 2;
    cfg.count = Some(6);
    cfg.duration = Some(Duration::from_secs(30));
    let r = run(&cfg).await;
    let s = sink.stop().await;
    for p in &r.ports {
        check_accounting(p);
        let b = &p.latency_breakdown_us;
        assert_eq!(b.ttfb.count, side(&s, &p.tls).connections, "{}", p.tls);
        assert_eq!(b.ttfb.count, 6);
        assert!(b.ttfb.p50 >= b.connect.p50, "{}: {b:?}", p.tls);
    }
    // The STARTTLS port's first byte is the (delayed) banner; the implicit port's is the
    // ServerHello, which the reply delay does not hold back.
    let st = port(&r, "starttls").latency_breakdown_us;
    let im = port(&r, "implicit").latency_breakdown_us;
    assert!(st.ttfb.p50 >= delay.as_micros() as u64, "{st:?}");
    assert!(im.ttfb.max < delay.as_micros() as u64, "{im:?}");
    assert!(st.ttfb.max < 2 * delay.as_micros() as u64, "the banner alone, not EHLO too: {st:?}");

    // Attempt by attempt: the implicit port's first byte comes before the client has finished
    // the handshake (it still verifies the certificate and sends Finished), and the STARTTLS
    // port's is the banner, inside the plaintext dialogue.
    let mut cfg = base();
    let sink = sink_with_delay(&mut cfg, delay).await;
    for (kind, port) in [(TlsKind::Implicit, cfg.implicit_port), (TlsKind::StartTls, cfg.starttls_port)] {
        let t = target(&cfg, kind, port.unwrap());
        for seq in 0..3 {
            let mut a = Attempt::default();
            conn::run(&t, None, seq, &mut a).await.unwrap();
            let (ttfb, connect) = (a.ttfb.unwrap(), a.connect.unwrap());
            assert!(ttfb > connect, "{kind:?} {a:?}");
            match kind {
                TlsKind::Implicit => assert!(ttfb < connect + a.handshake.unwrap(), "{a:?}"),
                TlsKind::StartTls => {
                    assert!(ttfb >= delay && ttfb < connect + a.starttls.unwrap(), "{a:?}")
                }
            }
        }
    }
    let s = sink.stop().await;
    assert_eq!((s.implicit.connections, s.starttls.connections), (3, 3));
}

/// One connection's settings, as a phase builds them, for driving [`conn::run`] directly.
fn target(cfg: &Config, kind: TlsKind, port: u16) -> Target {
    let opts = mxpipe::tls::ClientOptions { verify: cfg.verify.clone(), kx: cfg.kx, resumption: ClientResumption::Off, tls12_only: false };
    let window = (std::time::Instant::now(), std::time::Instant::now() + Duration::from_secs(3600));
    Target {
        kind,
        addr: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        server_name: rustls_pki_types::ServerName::try_from("localhost").unwrap(),
        connector: tokio_rustls::TlsConnector::from(mxpipe::tls::client_config(&opts, None).unwrap()),
        timeout: cfg.timeout,
        linger0: false,
        ehlo_name: cfg.ehlo_name.clone(),
        mail_from: cfg.mail_from.clone(),
        rcpt_to: cfg.rcpt_to.clone(),
        transaction: None,
        window,
        panic_at: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_show_in_the_latency_at_their_timeout() {
    let mut cfg = base();
    let sink = sink_with_delay(&mut cfg, Duration::from_millis(400)).await;
    cfg.concurrency = 2;
    cfg.count = Some(4);
    cfg.duration = Some(Duration::from_secs(30));
    cfg.timeout = Duration::from_millis(150);
    let r = run(&cfg).await;
    let s = sink.stop().await;
    for p in &r.ports {
        check_accounting(p);
        assert_eq!((p.errors_by_class.timeout, p.errors_by_class.cut, p.successes), (4, 0, 0), "{}: {:?}", p.tls, p.errors_by_class);
        assert_eq!(side(&s, &p.tls).connections, 4);
        let f = p.latency_breakdown_us.failed;
        assert!(f.p50 >= 150_000 && f.max < 400_000, "{}: {f:?}", p.tls);
        assert!(p.latency_us.p50 >= 150_000, "{}: {:?}", p.tls, p.latency_us);
    }
    assert_eq!(r.exit_status(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_cut_at_the_end_is_not_a_step_timeout() {
    let mut cfg = base();
    // Four replies of 300 ms each: every step is within the 500 ms timeout, but the whole
    // connection (1.2 s) outlasts the 0.3 s window plus one timeout.
    let sink = sink_with_delay(&mut cfg, Duration::from_millis(300)).await;
    cfg.implicit_port = None;
    cfg.concurrency = 2;
    cfg.duration = Some(Duration::from_millis(300));
    cfg.timeout = Duration::from_millis(500);
    let r = run(&cfg).await;
    let s = sink.stop().await;
    let p = port(&r, "starttls");
    check_accounting(p);
    assert_eq!((p.attempts, p.errors_by_class.cut, p.errors_by_class.timeout), (2, 2, 0), "{:?}", p.errors_by_class);
    assert_eq!(s.starttls.connections, 2);
    let f = p.latency_breakdown_us.failed;
    assert!(f.p50 >= 750_000 && f.max < 1_100_000, "{f:?}");
    assert!(p.warnings.iter().any(|w| w.contains("cut")), "{:?}", p.warnings);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_close_is_told_apart_from_a_tls_failure() {
    // A sink at its connection limit closes implicit-TLS connections without a word.
    let mut cfg = base();
    let sink = EmbeddedSink::start_with(&mut cfg, |s, _| {
        s.max_conns = 1;
        s.faults.delay = Duration::from_millis(200);
    })
    .await
    .unwrap();
    cfg.starttls_port = None;
    cfg.count = Some(12);
    cfg.duration = Some(Duration::from_secs(30));
    let r = run(&cfg).await;
    let s = sink.stop().await;
    let p = port(&r, "implicit");
    check_accounting(p);
    assert!(p.errors_by_class.closed > 0, "{:?} {:?}", p.errors_by_class, p.error_examples);
    assert_eq!(p.errors_by_class.closed, s.rejected_busy, "{:?}", p.error_examples);
    assert_eq!(p.errors_by_class.tls, 0, "{:?}", p.error_examples);
    assert_eq!(p.successes, s.implicit.handshakes_full);

    // TLS spoken to a plaintext port: the client cannot parse the banner as TLS.
    let mut cfg = base();
    let sink = EmbeddedSink::start_with(&mut cfg, |_, _| {}).await.unwrap();
    cfg.implicit_port = cfg.starttls_port.take();
    cfg.count = Some(4);
    cfg.duration = Some(Duration::from_secs(30));
    let r = run(&cfg).await;
    let s = sink.stop().await;
    let p = port(&r, "implicit");
    assert_eq!((p.errors_by_class.tls, p.errors_by_class.closed), (4, 0), "{:?} {:?}", p.errors_by_class, p.error_examples);
    assert_eq!(s.starttls.connections, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_attempt_keeps_its_counts() {
    let mut cfg = base();
    let sink = EmbeddedSink::start_with(&mut cfg, |_, _| {}).await.unwrap();
    cfg.starttls_port = None;
    cfg.concurrency = 2;
    cfg.count = Some(10);
    cfg.duration = Some(Duration::from_secs(30));
    cfg.panic_at = Some(3);
    let r = run(&cfg).await;
    let s = sink.stop().await;
    let p = port(&r, "implicit");
    check_accounting(p);
    assert_eq!((p.attempts, p.successes, p.errors_by_class.panic), (10, 9, 1), "{:?}", p.errors_by_class);
    // The panicking attempt had completed its handshake: it is counted, as the sink counted it.
    assert_eq!(p.handshakes, 10);
    assert_eq!(s.implicit.handshakes_full, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_retry_requests_are_flagged() {
    // A server that takes P-256 only: a client offering X25519 shares first (the default
    // list) gets a HelloRetryRequest on every full handshake.
    let p256_only = |s: &mut SinkConfig, pki: &GeneratedPki| {
        let c = rustls::ServerConfig::builder_with_provider(mxpipe::tls::provider(Kx::P256))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(pki.identity.chain.clone(), pki.identity.key.clone_key())
            .unwrap();
        s.tls = Arc::new(c);
    };
    for (kx, retries) in [(Kx::Default, 5), (Kx::P256, 0)] {
        let mut cfg = base();
        let sink = EmbeddedSink::start_with(&mut cfg, p256_only).await.unwrap();
        cfg.implicit_port = None;
        cfg.kx = kx;
        cfg.count = Some(5);
        cfg.duration = Some(Duration::from_secs(30));
        let r = run(&cfg).await;
        let s = sink.stop().await;
        let p = port(&r, "starttls");
        assert_eq!((p.handshakes, p.hello_retries), (5, retries), "{kx:?}: {:?}", p.error_examples);
        assert_eq!(s.starttls.handshakes_full, 5);
        assert_eq!(p.kx.as_deref(), Some("secp256r1"));
        assert_eq!(p.warnings.iter().any(|w| w.contains("HelloRetryRequest")), retries > 0, "{:?}", p.warnings);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_once_checks_each_chain_once_and_every_signature() {
    let mut cfg = base();
    let sink = EmbeddedSink::start_with(&mut cfg, |_, _| {}).await.unwrap();
    cfg.verify_once = true;
    cfg.count = Some(20);
    cfg.duration = Some(Duration::from_secs(30));
    let r = run(&cfg).await;
    let s = sink.stop().await;
    assert_eq!(r.settings.verify, "roots-once");
    for p in &r.ports {
        let v = p.verify_once.expect("verify-once counters");
        assert_eq!((p.handshakes, p.errors), (20, 0), "{:?}", p.error_examples);
        // Once, or once by each of the 4 workers whose first handshakes overlapped.
        assert!((1..=4).contains(&v.chain_checks), "{}: {v:?}", p.tls);
        assert_eq!(v.chain_checks + v.reused, 20, "{}", p.tls);
        // Every full handshake's signature is checked.
        assert_eq!(v.signature_checks, side(&s, &p.tls).handshakes_full, "{}", p.tls);
        assert_eq!(v.signature_checks, 20);
    }

    // The once is a real verification: a certificate for another name is refused.
    let mut cfg = base();
    let sink = EmbeddedSink::start_with(&mut cfg, |_, _| {}).await.unwrap();
    cfg.verify_once = true;
    cfg.server_name = "other.example.test".into();
    cfg.count = Some(3);
    cfg.duration = Some(Duration::from_secs(30));
    let r = run(&cfg).await;
    let s = sink.stop().await;
    for p in &r.ports {
        assert_eq!((p.handshakes, p.errors_by_class.certificate), (0, 3), "{}: {:?}", p.tls, p.errors_by_class);
        assert_eq!(p.verify_once.unwrap().chain_checks, 0);
    }
    assert_eq!(s.starttls.handshake_failures + s.implicit.handshake_failures, 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_sinks_cpu_and_counters_are_reported_apart() {
    let mut cfg = base();
    let sink = EmbeddedSink::start(&mut cfg).await.unwrap();
    cfg.concurrency = 2;
    cfg.count = Some(60);
    cfg.duration = Some(Duration::from_secs(30));
    let process0 = mxpipe::sys::CpuTime::now();
    let mut r = run(&cfg).await;
    let process = mxpipe::sys::CpuTime::now().since(&process0).total_secs();
    let sink_cpu = sink.cpu().as_secs_f64();
    let s = sink.stop().await;
    let sink_s = r.sink_cpu_s.expect("the sink's CPU");
    assert!(sink_s > 0.0 && r.client_cpu_s > 0.0, "client {} sink {sink_s}", r.client_cpu_s);
    // The two parts add up to the process's CPU (within what ran outside `run`).
    assert!(r.client_cpu_s + sink_s <= process + 0.05, "{} + {sink_s} > {process}", r.client_cpu_s);
    assert!(sink_s <= sink_cpu + 1e-3);
    for p in &r.ports {
        assert!(p.sink_cpu_s.unwrap() > 0.0, "{}", p.tls);
        assert_eq!(side(&s, &p.tls).connections, 60);
    }
    r.embedded_sink = Some(s);
    let t = r.to_table();
    assert!(t.contains("embedded sink's own counters") && t.contains("embedded sink CPU"), "{t}");
    let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
    assert_eq!(v["embedded_sink"]["implicit"]["connections"], 60);
}
