//! The `smtps-` rule end to end (docs/mx-prefix-policy.md): *any* failure on port 26 of an
//! `smtps-` MX host (refused, handshake timeout, reset, a plaintext banner, a TLS alert, a
//! certificate for the wrong name or from an untrusted CA) moves on to verified STARTTLS on
//! port 25 of the same host, before the next MX host; and port 26 being unusable is learned, so
//! the next burst does not touch it. When port 25 fails policy too, nothing goes out in clear.
//!
//! Each test has its own DNS server, its own 127.62.N.0/24 addresses and its own port pair. The
//! primary MX host `smtps-mx.d.t.test` is a sink on the mapped port 25 (valid certificate from
//! the test CA) and, on the mapped port 26, one of the misbehaving servers below. The backup MX
//! (less preferred) is a sink that would take anything: it must get nothing.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mxpipe::dnsserver::{DnsServer, ZoneBuilder};
use mxpipe::engine::{Engine, EngineConfig, EngineStats, PortMap, Submission};
use mxpipe::outcome::{Outcome, Status, TlsUse};
use mxpipe::resolve::ResolverConfig;
use mxpipe::sink::{Sink, SinkConfig, StatsSnapshot};
use mxpipe::tls::{self, GeneratedPki, Identity, Kx, ServerResumption};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// Bound on every wait of a test (engine runs, outcomes, background servers).
const T: Duration = Duration::from_secs(30);
/// The engine's TLS handshake timeout: the silent port 26 costs this much, once.
const HANDSHAKE: Duration = Duration::from_millis(500);
/// Connections a port-26 server serves before it stops by itself.
const MAX_ACCEPTS: usize = 8;

const DOMAIN: &str = "d.t.test";
const PRIMARY: &str = "smtps-mx.d.t.test";
const BACKUP: &str = "mx-backup.d.t.test";

fn ip(net: u8, d: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 62, net, d)
}

/// Two distinct free ports on `at`, the engine's 25 and 26 for every address of the test.
fn free_ports(at: Ipv4Addr) -> PortMap {
    let pick = || std::net::TcpListener::bind((at, 0)).unwrap().local_addr().unwrap().port();
    for _ in 0..100 {
        let (a, b) = (pick(), pick());
        if a != b {
            return PortMap { smtp: a, smtps: b, ..PortMap::default() };
        }
    }
    panic!("no two distinct free ports on {at}");
}

fn pki(names: &[&str]) -> GeneratedPki {
    tls::certs::generate(&names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap()
}

fn server_tls(identity: Identity) -> Arc<rustls::ServerConfig> {
    tls::server_config(identity, ServerResumption::default()).unwrap()
}

/// A sink on `addr` with STARTTLS on the mapped port 25 only (unless `adjust` says otherwise).
async fn sink(addr: Ipv4Addr, ports: PortMap, identity: Identity, adjust: impl FnOnce(&mut SinkConfig)) -> Sink {
    let mut c = SinkConfig::new(server_tls(identity));
    c.listen = vec![IpAddr::V4(addr)];
    c.starttls_port = Some(ports.smtp);
    c.implicit_port = None;
    c.idle_timeout = Duration::from_secs(20);
    adjust(&mut c);
    Sink::start(c).await.unwrap()
}

/// What the server on port 26 does with each connection.
#[derive(Clone)]
enum Port26 {
    /// Nothing listens: the connect is refused.
    Closed,
    /// Accepts TCP and never says a word.
    Silent,
    /// Speaks plaintext SMTP where TLS was expected.
    Banner,
    /// Closes with SO_LINGER 0 (RST) as soon as it accepts.
    ResetAtOnce,
    /// Reads the ClientHello, then closes with RST.
    ResetAfterHello,
    /// Reads the ClientHello, answers with a fatal handshake_failure alert record.
    Alert,
    /// A real TLS server with this config (refusing, or with a bad certificate).
    Tls(Arc<rustls::ServerConfig>),
    /// Completes the TLS handshake (a valid certificate), then resets before any banner.
    TlsThenReset(Arc<rustls::ServerConfig>),
}

/// A misbehaving port-26 server, stopping by itself after [`MAX_ACCEPTS`] connections or `T`.
struct Server26 {
    accepted: Arc<AtomicUsize>,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<usize>,
}

impl Server26 {
    async fn start(addr: SocketAddr, behaviour: Port26) -> Option<Server26> {
        if matches!(behaviour, Port26::Closed) {
            return None;
        }
        let listener = TcpListener::bind(addr).await.unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let (stop, mut stopped) = oneshot::channel();
        let count = accepted.clone();
        let task = tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + T;
            while count.load(Ordering::SeqCst) < MAX_ACCEPTS {
                let sock = tokio::select! {
                    r = listener.accept() => match r { Ok((s, _)) => s, Err(_) => break },
                    _ = &mut stopped => break,
                    _ = tokio::time::sleep_until(deadline) => break,
                };
                count.fetch_add(1, Ordering::SeqCst);
                let b = behaviour.clone();
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(T, serve26(sock, b)).await;
                });
            }
            // Connections the kernel completed but nobody accepted yet reached port 26 too.
            let std = listener.into_std().unwrap();
            std.set_nonblocking(true).unwrap();
            let mut n = count.load(Ordering::SeqCst);
            for _ in 0..MAX_ACCEPTS {
                if std.accept().is_err() {
                    break;
                }
                n += 1;
            }
            n
        });
        Some(Server26 { accepted, stop, task })
    }

    /// Stop, and return every connection that reached it.
    async fn finish(self) -> usize {
        let _ = self.stop.send(());
        tokio::time::timeout(T, self.task).await.expect("port-26 server stopped").unwrap()
    }
}

/// Read until the client closes (each handler is bounded by `T` in its caller).
async fn drain(sock: &mut TcpStream) {
    let mut buf = [0u8; 2048];
    while let Ok(n) = sock.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
}

async fn serve26(mut sock: TcpStream, behaviour: Port26) {
    let mut hello = [0u8; 2048];
    match behaviour {
        Port26::Closed => unreachable!("nothing listens"),
        Port26::Silent => drain(&mut sock).await,
        Port26::Banner => {
            let _ = sock.write_all(b"220 smtps-mx.d.t.test ESMTP plaintext here\r\n").await;
            drain(&mut sock).await;
        }
        Port26::ResetAtOnce => {
            sock.set_zero_linger().unwrap();
            drop(sock);
        }
        Port26::ResetAfterHello => {
            let n = sock.read(&mut hello).await.unwrap_or(0);
            assert!(n > 0 && hello[0] == 0x16, "a TLS handshake record came first");
            sock.set_zero_linger().unwrap();
            drop(sock);
        }
        Port26::Alert => {
            let n = sock.read(&mut hello).await.unwrap_or(0);
            assert!(n > 0 && hello[0] == 0x16, "a TLS handshake record came first");
            // TLS record: alert (21), TLS 1.2 legacy version, length 2: fatal (2), handshake_failure (40).
            let _ = sock.write_all(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28]).await;
            drain(&mut sock).await;
        }
        Port26::Tls(cfg) => {
            if let Ok(mut tls) = tokio_rustls::TlsAcceptor::from(cfg).accept(sock).await {
                // Only reached if the client accepted the certificate, which it must not.
                let _ = tls.write_all(b"220 smtps-mx.d.t.test ESMTP\r\n").await;
                let _ = tls.flush().await;
                let mut buf = [0u8; 1024];
                let _ = tls.read(&mut buf).await;
            }
        }
        Port26::TlsThenReset(cfg) => {
            if let Ok(tls) = tokio_rustls::TlsAcceptor::from(cfg).accept(sock).await {
                tls.get_ref().0.set_zero_linger().unwrap();
                drop(tls);
            }
        }
    }
}

fn engine_config(dns: &DnsServer, ports: PortMap, roots: &[&GeneratedPki]) -> EngineConfig {
    EngineConfig {
        shards: 1,
        resolver: ResolverConfig { nameserver: Some(dns.addr()), timeout: Duration::from_secs(2), ..ResolverConfig::default() },
        port_map: ports,
        extra_roots: roots.iter().map(|p| p.ca_der.clone()).collect(),
        kx: Kx::X25519,
        connect_timeout: Duration::from_secs(2),
        tls_handshake_timeout: HANDSHAKE,
        command_timeout: Duration::from_secs(10),
        // Close connections after each burst, so the second burst connects again.
        idle_timeout: Duration::ZERO,
        ..EngineConfig::default()
    }
}

fn msg(id: &str, rcpts: &[&str]) -> Submission {
    let to = rcpts.iter().map(|r| r.to_string()).collect();
    Submission::new(id, "sender@mxpipe.test", to, format!("Subject: {id}\r\n\r\nhello\r\n").into_bytes())
}

/// One message to two recipients of `domain`: one part, so one worker and one connection (two
/// messages could be picked up by the shard in two wake-ups, and each get its own worker).
fn burst(tag: &str, domain: &str) -> Vec<Submission> {
    vec![msg(tag, &[&format!("u1@{domain}"), &format!("u2@{domain}")])]
}

/// What two bursts to the same destination, one after the other, came to.
struct Bursts {
    first: Vec<Outcome>,
    second: Vec<Outcome>,
    /// Connections port 26 had accepted when the first burst's outcomes were all in.
    port26_after_first: usize,
    connect_failures_after_first: u64,
    stats: EngineStats,
}

/// Run `first`, wait for all its outcomes, then run `second`, with one engine.
async fn two_bursts(cfg: EngineConfig, first: Vec<Submission>, second: Vec<Submission>, port26: Arc<AtomicUsize>) -> Bursts {
    let run = tokio::task::spawn_blocking(move || {
        let (engine, rx) = Engine::start(cfg).unwrap();
        let take = |msgs: Vec<Submission>| -> Vec<Outcome> {
            let n: usize = msgs.iter().map(|m| m.to.len()).sum();
            for m in msgs {
                engine.submit(m).unwrap();
            }
            (0..n).map(|_| rx.recv_timeout(T).expect("an outcome in time")).collect()
        };
        let first = take(first);
        let port26_after_first = port26.load(Ordering::SeqCst);
        let connect_failures_after_first = engine.stats().connect_failures;
        let second = take(second);
        let stats = engine.shutdown();
        assert!(rx.try_recv().is_err(), "exactly one outcome per recipient");
        Bursts { first, second, port26_after_first, connect_failures_after_first, stats }
    });
    tokio::time::timeout(T * 2, run).await.expect("engine finished in time").unwrap()
}

/// What a fallback test saw, for its assertions.
struct Fallback {
    bursts: Bursts,
    ports: PortMap,
    primary_addr: Ipv4Addr,
    primary: StatsSnapshot,
    backup: StatsSnapshot,
    /// Connections that reached port 26 in all, when a server listened there.
    port26_total: Option<usize>,
}

/// `smtps-mx.d.t.test` (preference 10) on 127.62.`net`.1: `behaviour` on port 26, a sink with a
/// valid certificate for that name on port 25. `mx-backup.d.t.test` (preference 20) on .2: a
/// sink with a valid certificate and both ports, that would take anything. Two bursts of one
/// message to two recipients.
async fn fallback(net: u8, behaviour: Port26, roots_extra: &[&GeneratedPki]) -> Fallback {
    let valid = pki(&[PRIMARY, BACKUP]);
    let ports = free_ports(ip(net, 250));
    let (a, b) = (ip(net, 1), ip(net, 2));
    let primary = sink(a, ports, valid.identity.clone(), |_| {}).await;
    let backup = sink(b, ports, valid.identity.clone(), |c| c.implicit_port = Some(ports.smtps)).await;
    let server26 = Server26::start(SocketAddr::from((a, ports.smtps)), behaviour).await;
    let mut z = ZoneBuilder::new("t.test.");
    z.mx(DOMAIN, 10, PRIMARY).a(PRIMARY, a);
    z.mx(DOMAIN, 20, BACKUP).a(BACKUP, b);
    let dns = DnsServer::start(vec![z], SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await.unwrap();
    let mut roots = vec![&valid];
    roots.extend_from_slice(roots_extra);
    let cfg = engine_config(&dns, ports, &roots);
    let counter = server26.as_ref().map_or_else(|| Arc::new(AtomicUsize::new(0)), |s| s.accepted.clone());
    let bursts = two_bursts(cfg, burst("a", DOMAIN), burst("b", DOMAIN), counter).await;
    let port26_total = match server26 {
        Some(s) => Some(s.finish().await),
        None => None,
    };
    let primary = primary.shutdown(Duration::from_secs(2)).await.stats;
    let backup = backup.shutdown(Duration::from_secs(2)).await.stats;
    dns.shutdown().await;
    Fallback { bursts, ports, primary_addr: a, primary, backup, port26_total }
}

/// Every message went by verified STARTTLS to port 25 of the `smtps-` host, the backup got
/// nothing, and the second burst did not touch port 26.
fn assert_fell_back_to_25(f: &Fallback) {
    for o in f.bursts.first.iter().chain(&f.bursts.second) {
        assert_eq!(
            (o.status, o.tls, o.port, o.mx.as_deref(), o.addr, o.policy.as_deref()),
            (
                Status::Delivered,
                TlsUse::Starttls,
                Some(f.ports.smtp),
                Some(PRIMARY),
                Some(IpAddr::V4(f.primary_addr)),
                Some("smtps-prefix")
            ),
            "{o:#?}"
        );
    }
    assert_eq!(f.bursts.first.len() + f.bursts.second.len(), 4);
    assert_eq!((f.primary.messages, f.primary.recipients), (2, 4), "both messages on the smtps- host's port 25");
    assert_eq!(f.primary.starttls.connections, 2, "one port-25 connection per burst: {:#?}", f.bursts.stats);
    assert_eq!(f.primary.starttls.handshakes(), 2, "each with STARTTLS");
    assert_eq!(
        (f.backup.messages, f.backup.starttls.connections, f.backup.implicit.connections),
        (0, 0, 0),
        "the backup MX was never contacted"
    );
    match f.port26_total {
        Some(total) => {
            assert_eq!(f.bursts.port26_after_first, 1, "the first burst tried port 26 once");
            assert_eq!(total, 1, "the second burst did not touch port 26 (learned unusable)");
        }
        None => {
            assert_eq!(f.bursts.connect_failures_after_first, 1, "port 26 refused once");
            assert_eq!(f.bursts.stats.connect_failures, 1, "the second burst did not try port 26 again");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port26_refused_falls_back_to_verified_starttls_on_25() {
    let f = fallback(1, Port26::Closed, &[]).await;
    assert_fell_back_to_25(&f);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port26_silent_times_out_and_falls_back_to_25() {
    let started = std::time::Instant::now();
    let f = fallback(2, Port26::Silent, &[]).await;
    assert_fell_back_to_25(&f);
    // Bounded by the engine's handshake timeout, paid once (not the 10 s default).
    assert!(started.elapsed() < Duration::from_secs(8), "took {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port26_plaintext_banner_falls_back_to_25() {
    let f = fallback(3, Port26::Banner, &[]).await;
    assert_fell_back_to_25(&f);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port26_reset_at_once_falls_back_to_25() {
    let f = fallback(4, Port26::ResetAtOnce, &[]).await;
    assert_fell_back_to_25(&f);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port26_reset_after_client_hello_falls_back_to_25() {
    let f = fallback(5, Port26::ResetAfterHello, &[]).await;
    assert_fell_back_to_25(&f);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port26_fatal_alert_record_falls_back_to_25() {
    let f = fallback(6, Port26::Alert, &[]).await;
    assert_fell_back_to_25(&f);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port26_rustls_refusing_the_handshake_falls_back_to_25() {
    // The engine offers X25519 only; this server takes P-256 only, so rustls refuses with an
    // alert (no key exchange group in common).
    let id = pki(&[PRIMARY]).identity;
    let cfg = rustls::ServerConfig::builder_with_provider(tls::provider(Kx::P256))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(id.chain, id.key)
        .unwrap();
    let f = fallback(7, Port26::Tls(Arc::new(cfg)), &[]).await;
    assert_fell_back_to_25(&f);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port26_reset_after_a_verified_handshake_falls_back_to_25() {
    // TLS itself succeeds (trusted CA, right name); the session dies before the banner, which
    // the engine sees as an SMTP failure rather than a TLS one.
    let good = pki(&[PRIMARY]);
    let f = fallback(11, Port26::TlsThenReset(server_tls(good.identity.clone())), &[&good]).await;
    assert_fell_back_to_25(&f);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port26_certificate_for_the_wrong_name_falls_back_to_25() {
    // Trusted by the engine (its CA is among the roots), but for another name.
    let wrong = pki(&["not-smtps-mx.d.t.test"]);
    let f = fallback(8, Port26::Tls(server_tls(wrong.identity.clone())), &[&wrong]).await;
    assert_fell_back_to_25(&f);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port26_certificate_from_an_untrusted_ca_falls_back_to_25() {
    // The right name, from a CA the engine does not trust.
    let untrusted = pki(&[PRIMARY]);
    let f = fallback(9, Port26::Tls(server_tls(untrusted.identity)), &[]).await;
    assert_fell_back_to_25(&f);
}

/// Port 26 and port 25 of the `smtps-` host both present a certificate for the wrong name.
/// Domain `a.t.test` has two less preferred MX hosts that would take the message, but not with
/// verified TLS (one without STARTTLS, taking mail in clear; one with a wrong-name certificate):
/// it is deferred, and nobody gets anything. Domain `b.t.test` has, after those, a host with a
/// valid certificate: the message goes there, by STARTTLS, and only there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_ports_failing_policy_never_sends_in_clear() {
    let net = 10;
    let wrong = pki(&["not-the-mx.t.test"]);
    let good = pki(&["mx-good.b.t.test"]);
    let ports = free_ports(ip(net, 250));
    let (p, clear, badcert, ok) = (ip(net, 1), ip(net, 2), ip(net, 3), ip(net, 4));
    let primary = sink(p, ports, wrong.identity.clone(), |_| {}).await;
    let clear_sink = sink(clear, ports, wrong.identity.clone(), |c| c.starttls = false).await;
    let badcert_sink = sink(badcert, ports, wrong.identity.clone(), |_| {}).await;
    let good_sink = sink(ok, ports, good.identity.clone(), |_| {}).await;
    let server26 = Server26::start(SocketAddr::from((p, ports.smtps)), Port26::Tls(server_tls(wrong.identity.clone()))).await.unwrap();
    let mut z = ZoneBuilder::new("t.test.");
    for d in ["a", "b"] {
        let domain = format!("{d}.t.test");
        let host = |h: &str| format!("{h}.{domain}");
        z.mx(&domain, 10, &host("smtps-mx")).a(&host("smtps-mx"), p);
        z.mx(&domain, 20, &host("mx-clear")).a(&host("mx-clear"), clear);
        z.mx(&domain, 30, &host("mx-badcert")).a(&host("mx-badcert"), badcert);
    }
    z.mx("b.t.test", 40, "mx-good.b.t.test").a("mx-good.b.t.test", ok);
    let dns = DnsServer::start(vec![z], SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await.unwrap();
    let cfg = engine_config(&dns, ports, &[&wrong, &good]);
    let b = two_bursts(cfg, vec![msg("m1", &["u@a.t.test"])], vec![msg("m2", &["u@b.t.test"])], server26.accepted.clone()).await;
    let port26_total = server26.finish().await;
    let [primary, clear_sink, badcert_sink, good_sink] =
        [primary, clear_sink, badcert_sink, good_sink].map(|s| async move { s.shutdown(Duration::from_secs(2)).await.stats });
    let (primary, clear_sink, badcert_sink, good_sink) = (primary.await, clear_sink.await, badcert_sink.await, good_sink.await);
    dns.shutdown().await;

    let a = &b.first[0];
    assert_eq!(a.status, Status::Deferred, "{a:#?}");
    assert!(a.reply.contains("certificate"), "the policy failure is reported: {}", a.reply);
    let m2 = &b.second[0];
    assert_eq!(
        (m2.status, m2.tls, m2.mx.as_deref(), m2.port),
        (Status::Delivered, TlsUse::Starttls, Some("mx-good.b.t.test"), Some(ports.smtp)),
        "{m2:#?}"
    );
    assert!(port26_total >= 1, "port 26 was tried");
    assert_eq!(primary.messages, 0, "nothing to the smtps- host with the wrong certificate");
    assert!(primary.starttls.connections >= 1, "its port 25 was tried after port 26");
    assert_eq!(clear_sink.messages, 0, "nothing in clear to the backup without STARTTLS");
    assert_eq!(badcert_sink.messages, 0, "nothing to the backup with the wrong certificate");
    assert_eq!(good_sink.messages, 1, "only the verified backup got a message");
}
