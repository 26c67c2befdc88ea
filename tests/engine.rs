//! The delivery engine end to end: a real DNS server, real sinks on several 127.x addresses
//! (all on the same pair of ports, as MX hosts of different domains would be), real TLS.
//! Every row and consequence of the MX-prefix policy, DNS failures, SMTP faults, pipelining,
//! connection reuse and TLS resumption.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use mxpipe::dnsserver::{DnsServer, ZoneBuilder};
use mxpipe::engine::{Engine, EngineConfig, EngineStats, PortMap, Submission};
use mxpipe::outcome::{Outcome, Status, TlsUse};
use mxpipe::resolve::ResolverConfig;
use mxpipe::sink::{Sink, SinkConfig, StatsSnapshot};
use mxpipe::tls::{self, GeneratedPki, ServerResumption};

const T: Duration = Duration::from_secs(60);

fn ip(d: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 3, 0, d)
}

/// Two free ports, used by every sink of a test on its own address.
fn free_ports() -> PortMap {
    let pick = || std::net::TcpListener::bind("127.3.0.250:0").unwrap().local_addr().unwrap().port();
    loop {
        let (a, b) = (pick(), pick());
        if a != b {
            return PortMap { smtp: a, smtps: b, ..PortMap::default() };
        }
    }
}

/// A sink's adjustment of its config, per address.
type Adjust = Box<dyn FnOnce(&mut SinkConfig)>;

struct World {
    dns: DnsServer,
    sinks: Vec<Sink>,
    pki: GeneratedPki,
    ports: PortMap,
}

impl World {
    /// Start the DNS server with `zones` and one sink per (address, adjust) pair. All sinks
    /// serve one certificate, for `*.t.test`, from a CA the engine trusts; an MX host named
    /// outside `t.test` therefore presents a trusted certificate for the wrong name.
    async fn start(zones: Vec<ZoneBuilder>, sinks: Vec<(u8, Adjust)>) -> World {
        let pki = tls::certs::generate(&["*.t.test".into()]).unwrap();
        let ports = free_ports();
        let mut started = Vec::new();
        for (d, adjust) in sinks {
            let mut c = SinkConfig::new(tls::server_config(pki.identity.clone(), ServerResumption::default()).unwrap());
            c.listen = vec![IpAddr::V4(ip(d))];
            c.starttls_port = Some(ports.smtp);
            c.implicit_port = Some(ports.smtps);
            c.idle_timeout = Duration::from_secs(20);
            adjust(&mut c);
            started.push(Sink::start(c).await.unwrap());
        }
        let dns = DnsServer::start(zones, SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await.unwrap();
        World { dns, sinks: started, pki, ports }
    }

    fn engine_config(&self) -> EngineConfig {
        EngineConfig {
            shards: 2,
            resolver: ResolverConfig { nameserver: Some(self.dns.addr()), timeout: Duration::from_secs(2), ..ResolverConfig::default() },
            port_map: self.ports,
            extra_roots: vec![self.pki.ca_der.clone()],
            connect_timeout: Duration::from_secs(2),
            command_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(5),
            ..EngineConfig::default()
        }
    }

    async fn stop(self) -> Vec<StatsSnapshot> {
        let mut out = Vec::new();
        for s in self.sinks {
            out.push(s.shutdown(Duration::from_secs(2)).await.stats);
        }
        self.dns.shutdown().await;
        out
    }
}

fn msg(id: &str, to: &[&str]) -> Submission {
    let to: Vec<String> = to.iter().map(|s| s.to_string()).collect();
    Submission::new(id, "sender@mxpipe.test", to, format!("Subject: {id}\r\n\r\nhello\r\n").into_bytes())
}

/// Deliver `msgs` with a fresh engine and return every outcome and the engine's counters.
async fn deliver(cfg: EngineConfig, msgs: Vec<Submission>) -> (Vec<Outcome>, EngineStats) {
    let want: usize = msgs.iter().map(|m| m.to.len()).sum();
    let run = tokio::task::spawn_blocking(move || {
        let (engine, rx) = Engine::start(cfg).unwrap();
        for m in msgs {
            engine.submit(m).unwrap();
        }
        let stats = engine.shutdown();
        (rx.try_iter().collect::<Vec<_>>(), stats)
    });
    let (outcomes, stats) = tokio::time::timeout(T, run).await.expect("engine finished in time").unwrap();
    assert_eq!(outcomes.len(), want, "exactly one outcome per recipient: {outcomes:#?}");
    (outcomes, stats)
}

fn one<'a>(outcomes: &'a [Outcome], rcpt: &str) -> &'a Outcome {
    let v: Vec<_> = outcomes.iter().filter(|o| o.rcpt == rcpt).collect();
    assert_eq!(v.len(), 1, "{rcpt}: {outcomes:#?}");
    v[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_policy_row_delivers_as_the_spec_says() {
    let mut z = ZoneBuilder::new("t.test.");
    z.mx("st.t.test", 10, "starttls-mx.t.test").a("starttls-mx.t.test", ip(1));
    z.mx("sm.t.test", 10, "smtps-mx.t.test").a("smtps-mx.t.test", ip(1));
    z.mx("pl.t.test", 10, "mx.t.test").a("mx.t.test", ip(1));
    let w = World::start(vec![z], vec![(1, Box::new(|_| {}))]).await;
    let (o, _) = deliver(w.engine_config(), vec![msg("m1", &["a@st.t.test", "b@sm.t.test", "c@pl.t.test"])]).await;
    let st = one(&o, "a@st.t.test");
    assert_eq!(
        (st.status, st.tls, st.policy.as_deref(), st.port),
        (Status::Delivered, TlsUse::Starttls, Some("starttls-prefix"), Some(w.ports.smtp))
    );
    let sm = one(&o, "b@sm.t.test");
    assert_eq!(
        (sm.status, sm.tls, sm.policy.as_deref(), sm.port),
        (Status::Delivered, TlsUse::Implicit, Some("smtps-prefix"), Some(w.ports.smtps))
    );
    let pl = one(&o, "c@pl.t.test");
    assert_eq!((pl.status, pl.tls, pl.policy.as_deref()), (Status::Delivered, TlsUse::Starttls, Some("opportunistic")));
    assert!(st.reply.starts_with("250 2.0.0"), "{}", st.reply);
    assert_eq!(st.tls_version.as_deref(), Some("TLSv1.3"));
    let s = w.stop().await;
    assert_eq!((s[0].messages, s[0].recipients), (3, 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_prefix_never_falls_back_to_clear() {
    let mut z = ZoneBuilder::new("t.test.");
    z.mx("nostarttls.t.test", 10, "starttls-a.t.test").a("starttls-a.t.test", ip(2));
    z.mx("badcert.t.test", 10, "starttls-b.wrongname.test");
    z.mx("plain.t.test", 10, "plain.t.test").a("plain.t.test", ip(2));
    let mut other = ZoneBuilder::new("wrongname.test.");
    other.a("starttls-b.wrongname.test", ip(3));
    let w =
        World::start(vec![z, other], vec![(2, Box::new(|c: &mut SinkConfig| c.starttls = false)), (3, Box::new(|_: &mut SinkConfig| {}))])
            .await;
    let (o, _) =
        deliver(w.engine_config(), vec![msg("m1", &["a@nostarttls.t.test", "b@badcert.t.test"]), msg("m2", &["c@plain.t.test"])]).await;
    let a = one(&o, "a@nostarttls.t.test");
    assert_eq!(a.status, Status::Deferred);
    assert!(a.reply.contains("STARTTLS"), "{}", a.reply);
    let b = one(&o, "b@badcert.t.test");
    assert_eq!(b.status, Status::Deferred);
    assert!(b.reply.contains("certificate"), "{}", b.reply);
    // The same sink without STARTTLS takes mail in clear from a plain (opportunistic) MX name.
    let c = one(&o, "c@plain.t.test");
    assert_eq!((c.status, c.tls), (Status::Delivered, TlsUse::None));
    let s = w.stop().await;
    assert_eq!(s[0].messages, 1, "only the plain host's message reached the STARTTLS-less sink");
    assert_eq!(s[1].messages, 0, "nothing was sent to the wrong-name host");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtps_prefix_falls_back_to_25_and_remembers_26_is_closed() {
    let mut z = ZoneBuilder::new("t.test.");
    z.mx("sm.t.test", 10, "smtps-c.t.test").a("smtps-c.t.test", ip(4));
    let w = World::start(vec![z], vec![(4, Box::new(|c: &mut SinkConfig| c.implicit_port = None))]).await;
    let cfg = w.engine_config();
    let run = tokio::task::spawn_blocking(move || {
        let (engine, rx) = Engine::start(cfg).unwrap();
        engine.submit(msg("m1", &["a@sm.t.test"])).unwrap();
        let first = rx.recv_timeout(T).unwrap();
        let failures_after_first = engine.stats().connect_failures;
        engine.submit(msg("m2", &["b@sm.t.test"])).unwrap();
        let second = rx.recv_timeout(T).unwrap();
        (first, second, failures_after_first, engine.shutdown())
    });
    let (first, second, failures_after_first, stats) = run.await.unwrap();
    for o in [&first, &second] {
        assert_eq!((o.status, o.tls, o.port), (Status::Delivered, TlsUse::Starttls, Some(w.ports.smtp)), "{o:?}");
        assert_eq!(o.policy.as_deref(), Some("smtps-prefix"));
    }
    assert_eq!(failures_after_first, 1, "port 26 refused once");
    assert_eq!(stats.connect_failures, 1, "the second message skipped port 26 from the policy cache");
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_mx_is_used_when_the_first_fails() {
    let mut z = ZoneBuilder::new("t.test.");
    // Nothing listens on 127.3.0.99.
    z.mx("two.t.test", 10, "mx-dead.t.test").a("mx-dead.t.test", ip(99));
    z.mx("two.t.test", 20, "mx-live.t.test").a("mx-live.t.test", ip(5));
    let w = World::start(vec![z], vec![(5, Box::new(|_| {}))]).await;
    let (o, stats) = deliver(w.engine_config(), vec![msg("m1", &["a@two.t.test"])]).await;
    let a = one(&o, "a@two.t.test");
    assert_eq!((a.status, a.mx.as_deref()), (Status::Delivered, Some("mx-live.t.test")));
    assert!(stats.connect_failures >= 1);
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_failures_bounce_or_defer() {
    let mut z = ZoneBuilder::new("t.test.");
    z.null_mx("nullmx.t.test");
    z.a("implicit.t.test", ip(6));
    let w = World::start(vec![z], vec![(6, Box::new(|_| {}))]).await;
    let (o, _) = deliver(
        w.engine_config(),
        vec![msg("m1", &["a@nullmx.t.test", "b@nxdomain.t.test", "c@implicit.t.test", "d@outside.example", "no-at-sign"])],
    )
    .await;
    let a = one(&o, "a@nullmx.t.test");
    assert_eq!((a.status, a.enhanced.as_deref()), (Status::Bounced, Some("5.1.10")));
    assert_eq!(one(&o, "b@nxdomain.t.test").status, Status::Bounced);
    let c = one(&o, "c@implicit.t.test");
    assert_eq!((c.status, c.mx.as_deref()), (Status::Delivered, Some("implicit.t.test")), "implicit MX: the domain's own A record");
    assert_eq!(one(&o, "d@outside.example").status, Status::Deferred, "REFUSED by the server is temporary");
    assert_eq!(one(&o, "no-at-sign").status, Status::Bounced);
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_faults_give_matching_outcomes() {
    let mut z = ZoneBuilder::new("t.test.");
    z.mx("temp.t.test", 10, "temp.t.test").a("temp.t.test", ip(7));
    z.mx("perm.t.test", 10, "perm.t.test").a("perm.t.test", ip(8));
    z.mx("drop.t.test", 10, "drop.t.test").a("drop.t.test", ip(9));
    let w = World::start(
        vec![z],
        vec![
            (7, Box::new(|c: &mut SinkConfig| c.faults.temp_fail_rate = 1.0)),
            (8, Box::new(|c: &mut SinkConfig| c.faults.perm_fail_rate = 1.0)),
            (9, Box::new(|c: &mut SinkConfig| c.faults.drop_rate = 1.0)),
        ],
    )
    .await;
    let (o, _) = deliver(w.engine_config(), vec![msg("m1", &["a@temp.t.test", "b@perm.t.test", "c@drop.t.test"])]).await;
    let a = one(&o, "a@temp.t.test");
    assert_eq!((a.status, a.enhanced.as_deref()), (Status::Deferred, Some("4.3.0")), "{a:?}");
    assert!(a.reply.starts_with("451"), "{}", a.reply);
    let b = one(&o, "b@perm.t.test");
    assert_eq!((b.status, b.enhanced.as_deref()), (Status::Bounced, Some("5.1.1")), "{b:?}");
    let c = one(&o, "c@drop.t.test");
    assert_eq!(c.status, Status::Deferred, "{c:?}");
    assert!(c.reply.contains("delivery status unknown"), "{}", c.reply);
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelining_reuse_and_resumption_on_a_second_burst() {
    let mut z = ZoneBuilder::new("t.test.");
    for i in 0..20 {
        let host = if i % 2 == 0 { format!("starttls-h{i}.t.test") } else { format!("smtps-h{i}.t.test") };
        z.mx(&format!("d{i}.t.test"), 10, &host).a(&host, ip(10 + (i % 4) as u8));
    }
    let w = World::start(vec![z], (10..14).map(|d| (d, Box::new(|_: &mut SinkConfig| {}) as Adjust)).collect()).await;
    let mut cfg = w.engine_config();
    // Close connections between bursts, so the second burst must handshake again.
    cfg.idle_timeout = Duration::ZERO;
    cfg.max_conns_per_dest = 2;
    let burst =
        |tag: &str| -> Vec<Submission> { (0..200).map(|m| msg(&format!("{tag}{m}"), &[&format!("u{m}@d{}.t.test", m % 20)])).collect() };
    let b1 = burst("a");
    let b2 = burst("b");
    let run = tokio::task::spawn_blocking(move || {
        let (engine, rx) = Engine::start(cfg).unwrap();
        for m in b1 {
            engine.submit(m).unwrap();
        }
        let first: Vec<Outcome> = (0..200).map(|_| rx.recv_timeout(T).unwrap()).collect();
        let after_first = engine.stats();
        std::thread::sleep(Duration::from_millis(1200)); // the reaper closes idle connections
        for m in b2 {
            engine.submit(m).unwrap();
        }
        let second: Vec<Outcome> = (0..200).map(|_| rx.recv_timeout(T).unwrap()).collect();
        (first, second, after_first, engine.shutdown())
    });
    let (first, second, s1, s2) = run.await.unwrap();
    assert!(first.iter().chain(&second).all(|o| o.status == Status::Delivered));
    // Reuse: far fewer connections than messages.
    assert!(s1.transactions_per_connection >= 4.0, "{s1:?}");
    let full = s2.tls_full_handshakes - s1.tls_full_handshakes;
    let resumed = s2.tls_resumed_handshakes - s1.tls_resumed_handshakes;
    assert!(full + resumed > 0);
    let ratio = resumed as f64 / (full + resumed) as f64;
    assert!(ratio >= 0.95, "second burst resumed {resumed} of {} handshakes", full + resumed);
    assert!(second.iter().filter(|o| o.resumed).count() >= 190);
    let sinks = w.stop().await;
    let (cmds, batches): (u64, u64) = sinks.iter().map(|s| (s.commands, s.command_batches)).fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    assert!(cmds as f64 / batches as f64 > 1.5, "pipelining: {cmds} commands in {batches} reads");
    assert_eq!(sinks.iter().map(|s| s.messages).sum::<u64>(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_the_server_closed_while_idle_are_not_reused_blindly() {
    let mut z = ZoneBuilder::new("t.test.");
    z.mx("idle.t.test", 10, "mx-idle.t.test").a("mx-idle.t.test", ip(20));
    // The sink gives up on idle clients after 1 s (421 and close); the engine would keep
    // them for 30 s.
    let w = World::start(vec![z], vec![(20, Box::new(|c: &mut SinkConfig| c.idle_timeout = Duration::from_secs(1)))]).await;
    let mut cfg = w.engine_config();
    cfg.idle_timeout = Duration::from_secs(30);
    let run = tokio::task::spawn_blocking(move || {
        let (engine, rx) = Engine::start(cfg).unwrap();
        engine.submit(msg("m1", &["a@idle.t.test"])).unwrap();
        let first = rx.recv_timeout(T).unwrap();
        std::thread::sleep(Duration::from_millis(1800));
        engine.submit(msg("m2", &["b@idle.t.test"])).unwrap();
        let second = rx.recv_timeout(T).unwrap();
        (first, second, engine.shutdown())
    });
    let (first, second, stats) = run.await.unwrap();
    assert_eq!(first.status, Status::Delivered);
    assert_eq!(second.status, Status::Delivered, "{second:?}");
    assert_eq!((stats.connections_opened, stats.connections_reused), (2, 0), "{stats:?}");
    let s = w.stop().await;
    assert_eq!((s[0].messages, s[0].timeouts), (2, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dnssec_is_recorded_and_a_bogus_answer_defers() {
    // Signed zone: the MX answer validates against the zone's key as trust anchor.
    let mut signed = ZoneBuilder::new("t.test.").dnssec();
    signed.mx("sec.t.test", 10, "starttls-sec.t.test").a("starttls-sec.t.test", ip(30));
    let w = World::start(vec![signed], vec![(30, Box::new(|_| {}))]).await;
    let mut cfg = w.engine_config();
    cfg.resolver.validate_dnssec = true;
    cfg.resolver.trust_anchor = Some(w.dns.trust_anchors());
    let (o, _) = deliver(cfg, vec![msg("m1", &["a@sec.t.test"])]).await;
    let a = one(&o, "a@sec.t.test");
    assert_eq!((a.status, a.dnssec, a.policy.as_deref()), (Status::Delivered, true, Some("starttls-prefix")), "{a:?}");
    w.stop().await;

    // Unsigned zone, validation on: our test server cannot prove the zone insecure (it
    // serves no parent zones), so the answer is bogus and the part is deferred, nothing sent.
    let mut plain = ZoneBuilder::new("t.test.");
    plain.mx("unsec.t.test", 10, "starttls-unsec.t.test").a("starttls-unsec.t.test", ip(31));
    let w = World::start(vec![plain], vec![(31, Box::new(|_| {}))]).await;
    let mut cfg = w.engine_config();
    cfg.resolver.validate_dnssec = true;
    cfg.resolver.trust_anchor = Some(w.dns.trust_anchors());
    let (o, _) = deliver(cfg, vec![msg("m1", &["b@unsec.t.test"])]).await;
    let b = one(&o, "b@unsec.t.test");
    assert_eq!((b.status, b.dnssec), (Status::Deferred, false), "{b:?}");
    let s = w.stop().await;
    assert_eq!(s[0].messages, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_floor_is_stricter_than_a_plain_name() {
    // A plain MX name would be opportunistic; a Verified floor for the domain makes TLS with
    // a valid certificate mandatory, so a host without STARTTLS is deferred, not sent in clear.
    let mut z = ZoneBuilder::new("t.test.");
    z.mx("floor.t.test", 10, "mx-floor.t.test").a("mx-floor.t.test", ip(32));
    // The same for every domain whose MX host matches a pattern floor, and only for those.
    z.mx("hosted.t.test", 10, "mx1.pinned.t.test").a("mx1.pinned.t.test", ip(32));
    z.mx("other.t.test", 10, "mx.other.t.test").a("mx.other.t.test", ip(32));
    let w = World::start(vec![z], vec![(32, Box::new(|c: &mut SinkConfig| c.starttls = false))]).await;
    let mut cfg = w.engine_config();
    cfg.floors.insert("floor.t.test".into(), mxpipe::policy::Floor::Verified);
    cfg.mx_floors.push(("*.pinned.t.test".into(), mxpipe::policy::Floor::Encrypted));
    let (o, _) = deliver(cfg, vec![msg("m1", &["a@floor.t.test", "b@hosted.t.test", "c@other.t.test"])]).await;
    for r in ["a@floor.t.test", "b@hosted.t.test"] {
        let a = one(&o, r);
        assert_eq!(a.status, Status::Deferred, "{a:?}");
        assert!(a.reply.contains("STARTTLS"), "{}", a.reply);
    }
    let c = one(&o, "c@other.t.test");
    assert_eq!((c.status, c.tls), (Status::Delivered, mxpipe::outcome::TlsUse::None), "{c:?}");
    let s = w.stop().await;
    assert_eq!(s[0].messages, 1, "only the domain without a floor got its message (in clear)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn domain_scope_keeps_a_stripped_backup_from_getting_mail_in_clear() {
    // The attack: STARTTLS stripped at the prefixed primary (a policy failure) and at the
    // unprefixed backup. Under domain scope (the default) the backup needs verified TLS too,
    // so the message is deferred and nothing reaches either in clear. The same when the
    // primary has no address at all.
    let mut z = ZoneBuilder::new("t.test.");
    z.mx("scoped.t.test", 10, "starttls-p.t.test").a("starttls-p.t.test", ip(40));
    z.mx("scoped.t.test", 20, "backup.t.test").a("backup.t.test", ip(41));
    z.mx("noaddr.t.test", 10, "starttls-gone.t.test");
    z.mx("noaddr.t.test", 20, "backup.t.test");
    let stripped = || -> Adjust { Box::new(|c: &mut SinkConfig| c.starttls = false) };
    let w = World::start(vec![z], vec![(40, stripped()), (41, stripped())]).await;
    let (o, _) = deliver(w.engine_config(), vec![msg("m1", &["a@scoped.t.test", "b@noaddr.t.test"])]).await;
    for r in ["a@scoped.t.test", "b@noaddr.t.test"] {
        let x = one(&o, r);
        assert_eq!(x.status, Status::Deferred, "{x:?}");
        assert!(
            x.reply.contains("backup.t.test") && x.reply.contains("domain-scope"),
            "the reason names the backup and the source: {}",
            x.reply
        );
    }
    let s = w.stop().await;
    assert_eq!((s[0].messages, s[1].messages), (0, 0), "nothing was sent in clear");

    // Host scope, documented as weaker: the backup is opportunistic and takes it in clear.
    let mut z = ZoneBuilder::new("t.test.");
    z.mx("scoped.t.test", 10, "starttls-p.t.test").a("starttls-p.t.test", ip(40));
    z.mx("scoped.t.test", 20, "backup.t.test").a("backup.t.test", ip(41));
    let w = World::start(vec![z], vec![(40, stripped()), (41, stripped())]).await;
    let mut cfg = w.engine_config();
    cfg.policy.scope = mxpipe::policy::Scope::Host;
    let (o, _) = deliver(cfg, vec![msg("m1", &["a@scoped.t.test"])]).await;
    let a = one(&o, "a@scoped.t.test");
    assert_eq!((a.status, a.tls, a.mx.as_deref()), (Status::Delivered, TlsUse::None, Some("backup.t.test")), "{a:?}");
    w.stop().await;
}

/// A state directory under the system's temporary directory, removed at drop.
struct StateDir(std::path::PathBuf);
impl StateDir {
    fn new(tag: &str) -> StateDir {
        let d = std::env::temp_dir().join(format!("mxpipe-engine-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        StateDir(d)
    }
    fn state(&self) -> std::sync::Arc<mxpipe::policy::state::PolicyState> {
        use mxpipe::policy::state::{PolicyState, StateOptions};
        std::sync::Arc::new(PolicyState::open(&self.0, StateOptions::default()).unwrap())
    }
}
impl Drop for StateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pin_survives_a_restart_and_holds_when_the_prefix_vanishes() {
    let dir = StateDir::new("pin");
    // First run: the domain publishes a prefixed MX; delivery pins it.
    let mut z = ZoneBuilder::new("t.test.");
    z.mx("pin.t.test", 10, "starttls-pin.t.test").a("starttls-pin.t.test", ip(42));
    let w = World::start(vec![z], vec![(42, Box::new(|_| {}))]).await;
    let mut cfg = w.engine_config();
    cfg.state = Some(dir.state());
    let (o, _) = deliver(cfg, vec![msg("m1", &["a@pin.t.test"])]).await;
    assert_eq!(one(&o, "a@pin.t.test").status, Status::Delivered);
    w.stop().await;
    assert!(dir.0.join(mxpipe::policy::state::FILE_NAME).exists(), "the pin was saved at shutdown");

    // After a restart, an attacker's answer without the prefix, to a host that offers no
    // STARTTLS: the pin still asks for verified TLS, so nothing goes out in clear.
    let stripped = || -> Adjust { Box::new(|c: &mut SinkConfig| c.starttls = false) };
    let mut z = ZoneBuilder::new("t.test.");
    z.mx("pin.t.test", 10, "mx-pin.t.test").a("mx-pin.t.test", ip(43));
    let w = World::start(vec![z], vec![(43, stripped())]).await;
    let mut cfg = w.engine_config();
    let state = dir.state();
    assert!(state.view("pin.t.test", mxpipe::policy::state::unix_now()).pinned, "loaded from the file");
    cfg.state = Some(state);
    let (o, _) = deliver(cfg, vec![msg("m2", &["b@pin.t.test"])]).await;
    let b = one(&o, "b@pin.t.test");
    assert_eq!(b.status, Status::Deferred, "{b:?}");
    assert!(b.reply.contains("required by pin"), "{}", b.reply);
    // Without the pin (forgotten by the operator) the same answer gets opportunistic TLS.
    let state = dir.state();
    assert!(state.forget("pin.t.test"));
    let mut cfg = w.engine_config();
    cfg.state = Some(state);
    let (o, _) = deliver(cfg, vec![msg("m3", &["c@pin.t.test"])]).await;
    assert_eq!(one(&o, "c@pin.t.test").status, Status::Delivered);
    let s = w.stop().await;
    assert_eq!(s[0].messages, 1, "only the message sent after forgetting reached the stripped host");
}
