//! The delivery engine against real servers on loopback, shared by the engine tests
//! (MTA-STS, DANE): sinks as MX hosts on 127.61.<net>.x (each test its own `net`), zones from
//! `mxpipe::dnsserver`, an HTTPS host for MTA-STS policies, an engine run on a blocking thread
//! with every outcome collected. Every server stops by itself ([`SERVER_LIFETIME`]) and every
//! wait is bounded ([`T`]).

use axum::http::header::{CONTENT_TYPE, HOST};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use mxpipe::dnsserver::{DnsServer, ZoneBuilder};
use mxpipe::engine::{Engine, EngineConfig, EngineStats, PortMap, Submission};
use mxpipe::outcome::Outcome;
use mxpipe::policy::state::{PolicyState, StateOptions};
use mxpipe::resolve::ResolverConfig;
use mxpipe::sink::{Sink, SinkConfig, StatsSnapshot};
use mxpipe::tls::{self, GeneratedPki, Identity, ServerResumption};
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Bound on each test body, and on waiting for an engine.
pub const T: Duration = Duration::from_secs(60);
/// Servers built here stop accepting after this long, whatever the test does.
pub const SERVER_LIFETIME: Duration = Duration::from_secs(90);

/// The addresses of test `net`: 127.61.net.host.
pub fn ip(net: u8, host: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 61, net, host)
}

/// Where a test's policy host listens (its `mta-sts.<domain>` A records point here).
pub fn policy_ip(net: u8) -> Ipv4Addr {
    ip(net, 200)
}

pub async fn bounded<F: Future<Output = ()>>(body: F) {
    tokio::time::timeout(T, body).await.expect("test timed out");
}

/// A CA and a server certificate for `names`, signed by it.
pub fn pki(names: &[&str]) -> GeneratedPki {
    tls::certs::generate(&names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap()
}

/// Free SMTP ports for all sinks of test `net`, and a free HTTPS port (for a policy host that
/// is down: nothing listens there).
pub fn free_ports(net: u8) -> PortMap {
    let pick = || std::net::TcpListener::bind((ip(net, 250), 0)).unwrap().local_addr().unwrap().port();
    loop {
        let (a, b, c) = (pick(), pick(), pick());
        if a != b && b != c && a != c {
            return PortMap { smtp: a, smtps: b, https: c };
        }
    }
}

/// A sink on `addr` serving `identity`; `adjust` changes its config.
pub async fn sink(addr: Ipv4Addr, ports: PortMap, identity: &Identity, adjust: impl FnOnce(&mut SinkConfig)) -> Sink {
    let mut c = SinkConfig::new(tls::server_config(identity.clone(), ServerResumption::default()).unwrap());
    c.listen = vec![IpAddr::V4(addr)];
    c.starttls_port = Some(ports.smtp);
    c.implicit_port = Some(ports.smtps);
    c.idle_timeout = Duration::from_secs(20);
    c.session_timeout = SERVER_LIFETIME;
    adjust(&mut c);
    Sink::start(c).await.unwrap()
}

pub fn no_starttls(c: &mut SinkConfig) {
    c.starttls = false;
}

pub async fn sink_stats(s: Sink) -> StatsSnapshot {
    s.shutdown(Duration::from_secs(2)).await.stats
}

pub async fn dns(net: u8, zone: ZoneBuilder) -> DnsServer {
    DnsServer::start(vec![zone], SocketAddr::from((ip(net, 53), 0))).await.unwrap()
}

/// `version: STSv1` with `mode` and `mx` patterns, max_age one day.
pub fn policy(mode: &str, mx: &[&str]) -> String {
    let mut s = format!("version: STSv1\r\nmode: {mode}\r\n");
    for m in mx {
        s.push_str(&format!("mx: {m}\r\n"));
    }
    s + "max_age: 86400\r\n"
}

pub fn text_plain(body: String) -> Response {
    ([(CONTENT_TYPE, "text/plain")], body).into_response()
}

/// An HTTPS server for `/.well-known/mta-sts.txt`, answering `respond(host)` (the Host header
/// without a port) after `delay`, and counting the requests it got.
pub struct PolicyServer {
    pub addr: SocketAddr,
    pub requests: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl PolicyServer {
    pub async fn start<F>(bind: SocketAddr, identity: Identity, delay: Duration, respond: F) -> PolicyServer
    where
        F: Fn(&str) -> Response + Send + Sync + 'static,
    {
        let requests = Arc::new(AtomicUsize::new(0));
        let (respond, count) = (Arc::new(respond), requests.clone());
        let app = Router::new().route(
            "/.well-known/mta-sts.txt",
            get(move |headers: HeaderMap| {
                let (respond, count) = (respond.clone(), count.clone());
                async move {
                    count.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(delay).await;
                    let host = headers.get(HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
                    let host = host.split(':').next().unwrap_or("").to_ascii_lowercase();
                    respond(&host)
                }
            }),
        );
        // A failed handshake is what some tests are about; the engine reports it.
        let (addr, task) = super::https::serve_https(bind, identity, app, SERVER_LIFETIME).await;
        PolicyServer { addr, requests, task }
    }

    /// Stop listening (the port is closed when this returns); the requests it got.
    pub async fn stop(self) -> usize {
        let n = self.requests.clone();
        self.task.abort();
        let _ = self.task.await;
        n.load(Ordering::SeqCst)
    }
}

/// A fresh directory for a persistent policy state, removed when dropped.
pub struct StateDir(pub PathBuf);

impl StateDir {
    pub fn new(tag: &str) -> StateDir {
        let p = std::env::temp_dir().join(format!("mxpipe-sts-engine-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        StateDir(p)
    }

    pub fn open(&self) -> Arc<PolicyState> {
        Arc::new(PolicyState::open(&self.0, StateOptions::default()).unwrap())
    }
}

impl Drop for StateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn engine_config(dns: &DnsServer, ports: PortMap, trusted: &[&GeneratedPki]) -> EngineConfig {
    let mut cfg = EngineConfig {
        shards: 2,
        resolver: ResolverConfig { nameserver: Some(dns.addr()), timeout: Duration::from_secs(2), ..ResolverConfig::default() },
        port_map: ports,
        extra_roots: trusted.iter().map(|p| p.ca_der.clone()).collect(),
        connect_timeout: Duration::from_secs(2),
        tls_handshake_timeout: Duration::from_secs(2),
        command_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(5),
        ..EngineConfig::default()
    };
    cfg.policy.mta_sts_timeout = Duration::from_secs(2);
    cfg
}

pub fn msg(id: &str, to: &[&str]) -> Submission {
    let to: Vec<String> = to.iter().map(|s| s.to_string()).collect();
    Submission::new(id, "sender@mxpipe.test", to, format!("Subject: {id}\r\n\r\nhello\r\n").into_bytes())
}

pub type Outcomes = crossbeam_channel::Receiver<Outcome>;

/// Run `f` with a fresh engine on a blocking thread, then shut the engine down.
pub async fn with_engine<R, F>(cfg: EngineConfig, f: F) -> (R, EngineStats)
where
    R: Send + 'static,
    F: FnOnce(&Engine, &Outcomes) -> R + Send + 'static,
{
    let run = tokio::task::spawn_blocking(move || {
        let (engine, rx) = Engine::start(cfg).unwrap();
        let r = f(&engine, &rx);
        let stats = engine.shutdown();
        assert_eq!(rx.try_iter().count(), 0, "no outcome beyond those expected");
        (r, stats)
    });
    tokio::time::timeout(T, run).await.expect("engine finished in time").unwrap()
}

/// The next `n` outcomes.
pub fn recv(rx: &Outcomes, n: usize) -> Vec<Outcome> {
    (0..n).map(|_| rx.recv_timeout(T).expect("an outcome in time")).collect()
}

/// Deliver `msgs` with a fresh engine: every outcome (one per recipient) and the counters.
pub async fn deliver(cfg: EngineConfig, msgs: Vec<Submission>) -> (Vec<Outcome>, EngineStats) {
    let want: usize = msgs.iter().map(|m| m.to.len()).sum();
    with_engine(cfg, move |engine, rx| {
        for m in msgs {
            engine.submit(m).unwrap();
        }
        recv(rx, want)
    })
    .await
}

pub fn one<'a>(outcomes: &'a [Outcome], rcpt: &str) -> &'a Outcome {
    let v: Vec<_> = outcomes.iter().filter(|o| o.rcpt == rcpt).collect();
    assert_eq!(v.len(), 1, "{rcpt}: {outcomes:#?}");
    v[0]
}

/// Poll `cond` every 20 ms for up to 10 s.
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
