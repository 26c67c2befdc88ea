//! `--mode http` and `--mode inject` against `mxpipe serve` (run in this process with
//! `mxpipe::daemon::serve`, bearer tokens on), delivering over STARTTLS to a sink found through
//! our DNS server: what the load generator reports acknowledged must be what the daemon took
//! and what reached the sink; a wrong token is refused and counted by its status; and the
//! same over HTTPS, with the API's own TLS listener (`[inject.http.tls]`).

mod inject_util;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use inject_util::*;
use mxpipe::dnsserver::{DnsServer, ZoneBuilder};
use mxpipe::inject::tokens::{self, Scope};
use mxpipe_loadgen::inject::{self, Domains, Door, SizeDist};

fn free_port(ip: &str) -> u16 {
    std::net::TcpListener::bind((ip, 0)).unwrap().local_addr().unwrap().port()
}

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mxpipe-inject-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A daemon in this process: its SMTP and HTTP addresses, the inject token, and how to stop it.
struct Daemon {
    smtp: SocketAddr,
    http: SocketAddr,
    token: String,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<mxpipe::daemon::ServeReport, String>>,
}

/// A daemon; `http_extra` is appended to its `[inject.http]` section.
async fn start_daemon(dir: &std::path::Path, dns: SocketAddr, sink_port: u16, http_extra: &str) -> Daemon {
    let (token, line) = tokens::generate("loadgen", Scope::Inject).unwrap();
    let tokens_file = dir.join("tokens");
    tokens::append_line(&tokens_file, "loadgen", &line).unwrap();
    let smtp: SocketAddr = format!("127.0.0.1:{}", free_port("127.0.0.1")).parse().unwrap();
    let http: SocketAddr = format!("127.0.0.1:{}", free_port("127.0.0.1")).parse().unwrap();
    let toml = format!(
        r#"
[engine]
ehlo_name = "serve.test"
connect_timeout = "2s"
command_timeout = "10s"
[dns]
nameserver = "{dns}"
[ports]
smtp = {sink_port}
smtps = {sink_port}
[spool]
dir = "{spool}"
[retry]
initial = "1s"
max_interval = "2s"
max_age = "1h"
[inject.smtp]
listen = "{smtp}"
allowed_networks = ["127.0.0.0/8"]
[inject.http]
listen = "{http}"
tokens_file = "{tokens}"
{http_extra}
"#,
        spool = dir.join("spool").display(),
        tokens = tokens_file.display(),
    );
    let cfg = mxpipe::config::Config::from_toml_str(&toml).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(mxpipe::daemon::serve(cfg, async move {
        let _ = stopped.await;
    }));
    let t0 = Instant::now();
    while tokio::net::TcpStream::connect(http).await.is_err() {
        assert!(t0.elapsed() < Duration::from_secs(20), "serve did not start listening on {http}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Daemon { smtp, http, token, stop, task }
}

impl Daemon {
    async fn stop(self) -> mxpipe::daemon::ServeReport {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(30), self.task).await.expect("serve stops within 30 s").unwrap().unwrap()
    }
}

/// The destination: d0..d2.example.test, MX to 127.9.7.1 where the sink listens.
async fn destination() -> (mxpipe::sink::Sink, DnsServer) {
    let ip = Ipv4Addr::new(127, 9, 7, 1);
    let port = free_port("127.9.7.1");
    let (sink, _) = sink(|c| {
        c.listen = vec![ip.into()];
        c.starttls_port = Some(port);
    })
    .await;
    let mut z = ZoneBuilder::new("example.test.");
    for i in 0..3 {
        z.mx(&format!("d{i}.example.test"), 10, "mx.example.test");
    }
    z.a("mx.example.test", ip);
    let dns = DnsServer::start(vec![z], "127.0.0.1:0".parse().unwrap()).await.unwrap();
    (sink, dns)
}

async fn wait_for_sink(sink: &mxpipe::sink::Sink, n: u64) {
    let t0 = Instant::now();
    while sink.stats().messages < n {
        assert!(t0.elapsed() < Duration::from_secs(60), "the sink has {} of {n} messages", sink.stats().messages);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_batches_and_smtp_injection_into_serve_reach_the_sink() {
    let dir = tmpdir("serve");
    let (sink, dns) = destination().await;
    let port = sink.addr(mxpipe::sink::PortKind::StartTls).unwrap().port();
    let d = start_daemon(&dir, dns.addr(), port, "").await;

    // HTTP: 250 messages in batches of 20 over 3 keep-alive connections.
    let mut cfg = with_plan(smtp(d.http.port(), 250, 3), Domains::Numbered(3), 1, SizeDist::parse("1k:3,5k:1").unwrap());
    cfg.door = Door::Http { batch: 20, token: Some(d.token.clone()), tls: None };
    let r = inject::run(&cfg).await.unwrap();
    assert_balanced(&r);
    assert_eq!((r.attempted, r.acked, r.connection_errors), (250, 250, 0), "{}", r.to_table());
    // 12 full batches and one of 10, however the workers shared them; one connection each.
    assert_eq!((r.requests, r.ack_latency_us.count, r.connections), (13, 13, 3), "{}", r.to_table());

    // A wrong token: every batch refused 401, nothing taken.
    let mut bad = cfg.clone();
    bad.count = Some(40);
    bad.door = Door::Http { batch: 20, token: Some("mxp_wrong".into()), tls: None };
    let rb = inject::run(&bad).await.unwrap();
    assert_balanced(&rb);
    assert_eq!((rb.acked, rb.refused_perm), (0, 40), "{}", rb.to_table());
    assert_eq!(rb.refused_by_reply.get("http_401"), Some(&2), "{:?}", rb.refused_by_reply);

    // SMTP into the same daemon: pipelined, 2 recipients a message.
    let smtp_cfg = with_plan(smtp(d.smtp.port(), 120, 2), Domains::Numbered(3), 2, SizeDist::fixed(2000));
    let rs = inject::run(&smtp_cfg).await.unwrap();
    assert_eq!((rs.acked, rs.connection_errors), (120, 0), "{}", rs.to_table());
    assert_eq!(rs.pipelined_connections, rs.connections);

    // Every acknowledged recipient delivered once: 250 (HTTP) and 120 × 2 (SMTP) whose two
    // recipients are in two domains, so two deliveries.
    wait_for_sink(&sink, 250 + 240).await;
    let report = d.stop().await;
    assert_eq!(report.injected_messages, 120, "the daemon's own count of SMTP injection");
    let s = sink.shutdown(Duration::from_secs(5)).await.stats;
    assert_eq!((s.messages, s.recipients), (490, 490), "every acknowledged recipient reached the sink exactly once");
    dns.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap()).collect();
    format!("-----BEGIN {label}-----\n{}\n-----END {label}-----\n", lines.join("\n"))
}

/// `--mode http --https` against the daemon's HTTPS API (its certificate verified against
/// the test CA): every batch acknowledged over TLS reaches the sink; plain HTTP to the same
/// listener gets nothing acknowledged, and a client that does not trust the CA fails at the
/// certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_batches_into_serve_reach_the_sink() {
    let dir = tmpdir("serve-https");
    let pki = mxpipe::tls::certs::generate(&["localhost".into()]).unwrap();
    let chain: String = pki.identity.chain.iter().map(|c| pem("CERTIFICATE", c)).collect();
    std::fs::write(dir.join("api.crt"), chain).unwrap();
    std::fs::write(dir.join("api.key"), pem("PRIVATE KEY", pki.identity.key.secret_der())).unwrap();
    let (sink, dns) = destination().await;
    let port = sink.addr(mxpipe::sink::PortKind::StartTls).unwrap().port();
    let tls = format!("tls = {{ cert = \"{}\", key = \"{}\" }}", dir.join("api.crt").display(), dir.join("api.key").display());
    let d = start_daemon(&dir, dns.addr(), port, &tls).await;

    let client = |roots: rustls::RootCertStore| {
        let opts = mxpipe::tls::ClientOptions {
            verify: mxpipe::tls::Verify::Roots(std::sync::Arc::new(roots)),
            kx: mxpipe::tls::Kx::X25519,
            resumption: mxpipe::tls::ClientResumption::Off,
            tls12_only: false,
        };
        inject::StartTls {
            connector: tokio_rustls::TlsConnector::from(mxpipe::tls::client_config(&opts, None).unwrap()),
            server_name: rustls_pki_types::ServerName::try_from("localhost").unwrap(),
        }
    };
    let mut cfg = with_plan(smtp(d.http.port(), 100, 2), Domains::Numbered(3), 1, SizeDist::fixed(1500));
    cfg.door = Door::Http { batch: 25, token: Some(d.token.clone()), tls: Some(client(pki.roots())) };
    let r = inject::run(&cfg).await.unwrap();
    assert_balanced(&r);
    assert_eq!((r.attempted, r.acked, r.connection_errors), (100, 100, 0), "{}", r.to_table());
    assert_eq!((r.requests, r.connections), (4, 2), "{}", r.to_table());
    assert_eq!(r.settings.door, "https");

    // Plain HTTP to the HTTPS listener: nothing is acknowledged.
    let mut plain = cfg.clone();
    plain.count = Some(10);
    plain.concurrency = 1;
    plain.door = Door::Http { batch: 10, token: Some(d.token.clone()), tls: None };
    let rp = inject::run(&plain).await.unwrap();
    assert_eq!(rp.acked, 0, "{}", rp.to_table());
    assert!(rp.connection_errors > 0, "{}", rp.to_table());

    // A client that does not trust the test CA: certificate errors, nothing acknowledged.
    let mut untrusted = plain.clone();
    untrusted.door = Door::Http { batch: 10, token: Some(d.token.clone()), tls: Some(client(rustls::RootCertStore::empty())) };
    let ru = inject::run(&untrusted).await.unwrap();
    assert_eq!(ru.acked, 0, "{}", ru.to_table());
    assert!(ru.errors_by_class.certificate > 0, "{}", ru.to_table());

    wait_for_sink(&sink, 100).await;
    d.stop().await;
    let s = sink.shutdown(Duration::from_secs(5)).await.stats;
    assert_eq!(s.messages, 100, "every message acknowledged over HTTPS reached the sink once");
    dns.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
