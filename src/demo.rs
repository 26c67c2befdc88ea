//! `mxpipe demo`: the whole engine on an embedded default that needs nothing installed.
//!
//! Starts, in this process, a real DNS server (hickory-server on loopback UDP/TCP) serving
//! generated domains whose MX hosts mix `starttls-`, `smtps-` and plain names spread over
//! many 127.x.y.z addresses, and the sink listening on all of those addresses with a
//! certificate for `*.demo.test` from a generated CA. The plain domains (a third) publish an
//! MTA-STS policy, half in `enforce` mode and half in `testing` mode, served by an HTTPS
//! policy host in this process with its own generated CA. The zone is DNSSEC-signed and the
//! resolver validates it; a third of the domains (spread over the three kinds of MX name)
//! publish TLSA records for their MX hosts (DANE, half DANE-EE, half DANE-TA), which then
//! decide how their certificates are checked. Then it delivers a generated burst with the
//! engine, through the real resolver, policy, pool, TLS and SMTP code, and reports.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use crate::dnsserver::{DnsServer, ZoneBuilder};
use crate::engine::{Engine, EngineConfig, EngineStats, PortMap, Submission};
use crate::outcome::{Outcome, Tally};
use crate::resolve::ResolverConfig;
use crate::sink::{Sink, SinkConfig, StatsSnapshot};
use crate::tls::{self, ServerResumption};

/// The size of the generated world and burst.
#[derive(Debug, Clone)]
pub struct DemoConfig {
    /// Generated recipient domains, each with one MX host.
    pub domains: usize,
    /// Messages in each burst.
    pub messages: usize,
    /// Recipients per message, spread over the generated domains.
    pub rcpts_per_msg: usize,
    /// Bytes of each generated message.
    pub size: usize,
    /// Loopback addresses the MX hosts are spread over (127.1.x.y).
    pub addresses: usize,
    /// The burst is sent this many times, each after the previous one has all its outcomes,
    /// to show what a warm engine (cached DNS and policy, idle connections) saves.
    pub bursts: usize,
    /// Sign the zone, validate DNSSEC and publish TLSA records for a third of the domains
    /// ([`dane_usage`]). Off: an unsigned zone, no validation, no DANE (the baseline).
    pub signed: bool,
    /// Engine settings; resolver, port map and trust are filled in by the demo.
    pub engine: EngineConfig,
    /// Sign every message with a key of this algorithm made for the run (its record published
    /// in the demo zone at `demo._domainkey.demo.test`, the sender in `news.demo.test`);
    /// `None`: unsigned. Default Ed25519. Signing happens before each burst's clock starts,
    /// as the daemon signs at intake; its time is reported apart ([`DemoReport::dkim`]).
    pub dkim: Option<crate::dkim::Algorithm>,
    /// DNSSEC anchor files ([`crate::dnssec`]) trusted beside the demo zone's own key (a DS
    /// is resolved through the demo's DNS server); any file signs the zone and validates, as
    /// `engine.resolver.validate_dnssec` does.
    pub trust_anchor_files: Vec<std::path::PathBuf>,
    /// Egress sources and pools to send from ([`crate::egress::demo_config`] by default):
    /// every fifth message asks for the pool `transactional` when there is one, the rest take
    /// the default. `None`: the system's address.
    pub egress: Option<crate::egress::EgressConfig>,
}

impl Default for DemoConfig {
    fn default() -> Self {
        DemoConfig {
            domains: 300,
            messages: 3000,
            rcpts_per_msg: 2,
            size: 2048,
            addresses: 64,
            bursts: 2,
            signed: true,
            dkim: Some(crate::dkim::Algorithm::Ed25519),
            engine: EngineConfig::default(),
            trust_anchor_files: Vec::new(),
            egress: Some(crate::egress::demo_config()),
        }
    }
}

/// One burst of the demo, from the engine's counters before and after it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BurstReport {
    /// Messages submitted in this burst.
    pub messages: u64,
    /// Wall-clock seconds from the first submission to the last outcome.
    pub seconds: f64,
    /// [`BurstReport::messages`] over [`BurstReport::seconds`].
    pub messages_per_s: f64,
    /// Connections opened during the burst.
    pub connections_opened: u64,
    /// Idle connections reused instead of opening new ones.
    pub connections_reused: u64,
    /// TLS handshakes without session resumption.
    pub tls_full_handshakes: u64,
    /// TLS handshakes that resumed a session.
    pub tls_resumed_handshakes: u64,
    /// DNS queries the engine's resolver sent (0 once the cache is warm).
    pub dns_queries: u64,
}

/// What the demo did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DemoReport {
    /// One report per burst, in order.
    pub bursts: Vec<BurstReport>,
    /// The engine's counters over the whole run.
    pub engine: EngineStats,
    /// Recipients by outcome status, over all bursts.
    pub outcomes: Tally,
    /// What the sink received.
    pub sink: StatsSnapshot,
    /// Requests the embedded DNS server answered (any type, UDP or TCP).
    pub dns_server_queries: u64,
    /// What DKIM signing did; `None` when the demo did not sign.
    pub dkim: Option<DemoDkim>,
}

/// DKIM signing in the demo.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DemoDkim {
    /// `ed25519` or `rsa`.
    pub algorithm: &'static str,
    /// Where the public key is published.
    pub record: String,
    /// Messages signed, over all bursts.
    pub signed: u64,
    /// Messages left unsigned (none expected: every demo sender aligns).
    pub unsigned: u64,
    /// CPU seconds spent signing (one thread), over all bursts.
    pub seconds: f64,
    /// Microseconds per signed message.
    pub us_per_message: f64,
}

/// The demo's signing key, made for the run, and its TXT record in `zone`.
fn demo_dkim(alg: crate::dkim::Algorithm, zone: &mut ZoneBuilder) -> Result<crate::dkim::Dkim, String> {
    let (pem, public) = crate::dkim::keys::generate(alg, 2048)?;
    zone.txt(&format!("{DKIM_SELECTOR}._domainkey.demo.test"), &crate::dkim::keys::txt_record(alg, &public));
    let entry = crate::dkim::Dkim::entry("demo.test", DKIM_SELECTOR, "(generated)");
    crate::dkim::Dkim::with_pem(&entry, pem.as_bytes())
}

const DKIM_SELECTOR: &str = "demo";

/// The i-th loopback address of the demo (127.1.0.1, 127.1.0.2, …).
fn address(i: usize) -> Ipv4Addr {
    let n = i as u32 + 1;
    Ipv4Addr::new(127, 1, (n >> 8) as u8, (n & 0xff) as u8)
}

/// The MX host name of domain `i`: a third each `starttls-`, `smtps-` and plain.
pub fn mx_name(i: usize) -> String {
    match i % 3 {
        0 => format!("starttls-mx{i}.demo.test"),
        1 => format!("smtps-mx{i}.demo.test"),
        _ => format!("mx{i}.demo.test"),
    }
}

/// Domains that get an MTA-STS policy, at most (each needs a name on the policy host's
/// certificate).
const MAX_STS_DOMAINS: usize = 1000;

/// The MTA-STS mode domain `i` publishes, if any: every plain domain (a third of all), half
/// `enforce` and half `testing`, among the first 3,000 domains (at most 1,000 policies).
pub fn sts_mode(i: usize) -> Option<&'static str> {
    if i >= MAX_STS_DOMAINS * 3 {
        return None;
    }
    match i % 6 {
        2 => Some("enforce"),
        5 => Some("testing"),
        _ => None,
    }
}

/// The DANE record domain `i`'s MX host publishes, if any: a third of the domains (every
/// third group of three, so each kind of MX name has some), alternately DANE-EE `3 1 1` of the
/// sink's certificate and DANE-TA `2 0 1` of its CA.
pub fn dane_usage(i: usize) -> Option<u8> {
    match ((i / 3) % 3, (i / 9) % 2) {
        (0, 0) => Some(3),
        (0, _) => Some(2),
        _ => None,
    }
}

/// A generated message of about `size` bytes.
pub fn message(i: usize, from: &str, to: &[String], size: usize) -> Vec<u8> {
    let mut m = format!(
        "From: <{from}>\r\nTo: {}\r\nSubject: mxpipe demo message {i}\r\nMessage-ID: <demo-{i}@mxpipe.localhost>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n",
        to.iter().map(|t| format!("<{t}>")).collect::<Vec<_>>().join(", ")
    )
    .into_bytes();
    let line = b"The quick brown fox jumps over the lazy dog; mxpipe delivers it over TLS.\r\n";
    while m.len() < size {
        m.extend_from_slice(line);
    }
    m
}

/// Run the demo on the current tokio runtime (the sink and DNS server run here; the engine
/// has its own shard threads).
pub async fn run(cfg: DemoConfig, mut on_outcome: impl FnMut(&Outcome) + Send + 'static) -> Result<DemoReport, String> {
    if cfg.domains == 0 || cfg.messages == 0 || cfg.rcpts_per_msg == 0 {
        return Err("--domains, --messages and --rcpts-per-msg must be at least 1".into());
    }
    let addresses = cfg.addresses.clamp(1, 60_000);
    // Signed, the resolver validates against the zone's key (and any anchor files given),
    // so that DANE applies (the engine's `dane` switch still decides whether it is used).
    let signed = cfg.signed || !cfg.trust_anchor_files.is_empty();
    let pki = tls::certs::generate(&["*.demo.test".into(), "demo.test".into()]).map_err(|e| e.to_string())?;
    let ee = tls::dane::Tlsa::for_cert(&pki.identity.chain[0], 3, 1, 1).map_err(|e| e.to_string())?;
    let ta = tls::dane::Tlsa::for_cert(&pki.ca_der, 2, 0, 1).map_err(|e| e.to_string())?;
    let mut zone = if signed { ZoneBuilder::new("demo.test.").dnssec() } else { ZoneBuilder::new("demo.test.") };
    let mut sts_hosts = Vec::new();
    for i in 0..cfg.domains {
        let host = mx_name(i);
        zone.mx(&format!("d{i}.demo.test"), 10, &host);
        zone.a(&host, address(i % addresses));
        if let Some(usage) = dane_usage(i).filter(|_| signed) {
            let t = if usage == 3 { &ee } else { &ta };
            zone.tlsa(&format!("_25._tcp.{host}"), t.usage, t.selector, t.matching, &t.data);
            if i % 3 == 1 {
                zone.tlsa(&format!("_26._tcp.{host}"), t.usage, t.selector, t.matching, &t.data);
            }
        }
        if sts_mode(i).is_some() {
            zone.txt(&format!("_mta-sts.d{i}.demo.test"), "v=STSv1; id=demo1");
            zone.a(&format!("mta-sts.d{i}.demo.test"), Ipv4Addr::LOCALHOST);
            sts_hosts.push(format!("mta-sts.d{i}.demo.test"));
        }
    }
    let dkim = cfg.dkim.map(|alg| demo_dkim(alg, &mut zone)).transpose()?;
    let mut dkim_time = Duration::ZERO;
    let dns = DnsServer::start(vec![zone], SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .await
        .map_err(|e| format!("cannot start the demo DNS server: {e}"))?;

    let server_tls = tls::server_config(pki.identity.clone(), ServerResumption::default()).map_err(|e| e.to_string())?;
    let listen: Vec<IpAddr> = (0..addresses.min(cfg.domains)).map(|i| IpAddr::V4(address(i))).collect();
    let sink = start_sink(server_tls, listen).await?;
    let ports = PortMap {
        smtp: sink.addr(crate::sink::PortKind::StartTls).map_or(0, |a| a.port()),
        smtps: sink.addr(crate::sink::PortKind::Implicit).map_or(0, |a| a.port()),
        ..PortMap::default()
    };

    let mut ecfg = cfg.engine.clone();
    let anchors = if cfg.trust_anchor_files.is_empty() {
        dns.trust_anchors()
    } else {
        let mut anchors = (*dns.trust_anchors()).clone();
        crate::dnssec::add_from_files(&mut anchors, &cfg.trust_anchor_files, Some(dns.addr())).await.map_err(|e| e.to_string())?;
        std::sync::Arc::new(anchors)
    };
    ecfg.resolver = ResolverConfig {
        nameserver: Some(dns.addr()),
        validate_dnssec: signed,
        trust_anchor: signed.then_some(anchors),
        ..ResolverConfig::default()
    };
    ecfg.port_map = ports;
    ecfg.extra_roots = vec![pki.ca_der.clone()];
    let policy_host = if sts_hosts.is_empty() {
        None
    } else {
        let sts_pki = tls::certs::generate(&sts_hosts).map_err(|e| e.to_string())?;
        ecfg.extra_roots.push(sts_pki.ca_der.clone());
        let (port, task) = start_policy_host(sts_pki.identity).await?;
        ecfg.port_map.https = port;
        Some(task)
    };
    ecfg.connect_timeout = Duration::from_secs(5);
    if let Some(e) = &cfg.egress {
        let eg = crate::egress::Egress::new(e).map_err(|e| format!("demo egress sources: {e} (try --no-egress)"))?;
        ecfg.egress = Some(std::sync::Arc::new(eg));
    }
    let transactional = ecfg.egress.as_ref().is_some_and(|e| e.has_pool("transactional"));
    let (engine, outcomes) = Engine::start(ecfg).map_err(|e| e.to_string())?;
    let collector = std::thread::spawn(move || {
        let mut tally = Tally::default();
        for o in outcomes.iter() {
            tally.add(&o);
            on_outcome(&o);
        }
        tally
    });
    let mut bursts = Vec::new();
    for b in 0..cfg.bursts.max(1) {
        // The burst, signed as an intake would before acknowledging it.
        let mut burst = Vec::with_capacity(cfg.messages);
        let ts = std::time::Instant::now();
        for m in 0..cfg.messages {
            let to: Vec<String> = (0..cfg.rcpts_per_msg)
                .map(|r| format!("user{}@d{}.demo.test", m * cfg.rcpts_per_msg + r, (m * 7 + r * 13) % cfg.domains))
                .collect();
            let from = "sender@news.demo.test";
            let mut data = message(m, from, &to, cfg.size);
            if let Some(d) = &dkim {
                if let crate::dkim::Signed::Yes(signed, _) = d.sign(&data, None).map_err(|e| e.to_string())? {
                    data = signed;
                }
            }
            let mut sub = Submission::new(format!("demo-{b}-{m}"), from, to, data);
            if transactional && m % 5 == 0 {
                sub.pool = Some("transactional".into());
            }
            burst.push(sub);
        }
        dkim_time += ts.elapsed();
        let before = engine.stats();
        let t0 = std::time::Instant::now();
        for sub in burst {
            engine.submit(sub).map_err(|e| e.to_string())?;
        }
        // Every recipient of this burst has its outcome (bounded: every wait in the engine is).
        while engine.pending() > 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let seconds = t0.elapsed().as_secs_f64();
        let after = engine.stats();
        bursts.push(BurstReport {
            messages: after.messages - before.messages,
            seconds,
            messages_per_s: (after.messages - before.messages) as f64 / seconds.max(1e-9),
            connections_opened: after.connections_opened - before.connections_opened,
            connections_reused: after.connections_reused - before.connections_reused,
            tls_full_handshakes: after.tls_full_handshakes - before.tls_full_handshakes,
            tls_resumed_handshakes: after.tls_resumed_handshakes - before.tls_resumed_handshakes,
            dns_queries: after.dns_queries - before.dns_queries,
        });
    }
    let stats = tokio::task::spawn_blocking(move || engine.shutdown()).await.map_err(|e| e.to_string())?;
    let tally = collector.join().map_err(|_| "outcome collector panicked".to_string())?;
    let sink_stats = sink.shutdown(Duration::from_secs(5)).await.stats;
    let dns_server_queries = dns.queries();
    dns.shutdown().await;
    if let Some(t) = policy_host {
        t.abort();
    }
    let dkim = dkim.map(|d| {
        let st = d.stats();
        DemoDkim {
            algorithm: cfg.dkim.map_or("", |a| a.key_type()),
            record: format!("{DKIM_SELECTOR}._domainkey.demo.test"),
            signed: st.signed,
            unsigned: st.unsigned,
            seconds: dkim_time.as_secs_f64(),
            us_per_message: dkim_time.as_secs_f64() * 1e6 / st.signed.max(1) as f64,
        }
    });
    Ok(DemoReport { bursts, engine: stats, outcomes: tally, sink: sink_stats, dns_server_queries, dkim })
}

/// The demo's MTA-STS policy host on 127.0.0.1 (an ephemeral port): each `mta-sts.dN` name
/// gets the policy of the mode [`sts_mode`] gives domain N. Ends when the task is aborted.
async fn start_policy_host(identity: tls::certs::Identity) -> Result<(u16, tokio::task::JoinHandle<()>), String> {
    use axum::http::{header, HeaderMap, StatusCode};
    use axum::response::IntoResponse;
    let app = axum::Router::new().route(
        "/.well-known/mta-sts.txt",
        axum::routing::get(|headers: HeaderMap| async move {
            let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
            let mode = host
                .strip_prefix("mta-sts.d")
                .and_then(|r| r.strip_suffix(".demo.test"))
                .and_then(|n| n.parse::<usize>().ok())
                .and_then(sts_mode);
            match mode {
                Some(mode) => {
                    let body = format!("version: STSv1\r\nmode: {mode}\r\nmx: *.demo.test\r\nmax_age: 86400\r\n");
                    ([(header::CONTENT_TYPE, "text/plain")], body).into_response()
                }
                None => StatusCode::NOT_FOUND.into_response(),
            }
        }),
    );
    let server = tls::server_config(identity, ServerResumption::default()).map_err(|e| e.to_string())?;
    let acceptor = tokio_rustls::TlsAcceptor::from(server);
    let listener =
        tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.map_err(|e| format!("cannot start the demo policy host: {e}"))?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let (acceptor, app) = (acceptor.clone(), app.clone());
            tokio::spawn(async move {
                let Ok(Ok(tls)) = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await else { return };
                let svc = hyper_util::service::TowerToHyperService::new(app);
                let conn = hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(tls), svc);
                let _ = tokio::time::timeout(Duration::from_secs(30), conn).await;
            });
        }
    });
    Ok((port, task))
}

/// Start the sink on every demo address with one pair of ports (picked free on the first).
async fn start_sink(server_tls: Arc<rustls::ServerConfig>, listen: Vec<IpAddr>) -> Result<Sink, String> {
    let mut last = String::new();
    for _ in 0..5 {
        let pick = || std::net::TcpListener::bind(SocketAddr::new(listen[0], 0)).and_then(|l| l.local_addr()).map(|a| a.port());
        let (p25, p26) = match (pick(), pick()) {
            (Ok(a), Ok(b)) if a != b => (a, b),
            _ => continue,
        };
        let mut sc = SinkConfig::new(server_tls.clone());
        sc.listen = listen.clone();
        sc.starttls_port = Some(p25);
        sc.implicit_port = Some(p26);
        sc.hostname = "sink.demo.test".into();
        match Sink::start(sc).await {
            Ok(s) => return Ok(s),
            Err(e) => last = e.to_string(),
        }
    }
    Err(format!("cannot start the demo sink: {last}"))
}
