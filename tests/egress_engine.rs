//! Egress sources and pools in the engine, over loopback: connections bind the source's
//! address (a sink that admits only some client addresses shows which one was used), pools
//! chosen by sender-domain rule and by the message's own `pool`, weights, and the connection
//! limit each source has of its own toward a destination. Sources are 127.0.0.2–127.0.0.9.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::engine::*;
use mxpipe::config::{Cidr, Config};
use mxpipe::dnsserver::ZoneBuilder;
use mxpipe::egress::{Egress, EgressConfig};
use mxpipe::engine::limits::{LimitRule, LimitScope};
use mxpipe::outcome::{Outcome, Status};

/// Sources a–d on 127.0.0.2–5; pool `p` = a (weight 3) + b (weight 1); pool `q` = c; pool
/// `r` = c + d; mail from `ruled.test` goes through `q`; the default is `p`.
fn egress() -> Arc<Egress> {
    let cfg: EgressConfig = toml::from_str(
        r#"
        default_pool = "p"
        [[source]]
        name = "a"
        address = "127.0.0.2"
        ehlo = "a.out.test"
        [[source]]
        name = "b"
        address = "127.0.0.3"
        ehlo = "b.out.test"
        [[source]]
        name = "c"
        address = "127.0.0.4"
        ehlo = "c.out.test"
        [[source]]
        name = "d"
        address = "127.0.0.5"
        ehlo = "d.out.test"
        [[pool]]
        name = "p"
        sources = [{ source = "a", weight = 3 }, { source = "b" }]
        [[pool]]
        name = "q"
        sources = [{ source = "c" }]
        [[pool]]
        name = "r"
        sources = [{ source = "c" }, { source = "d" }]
        [[rule]]
        sender_domain = "ruled.test"
        pool = "q"
        "#,
    )
    .unwrap();
    Arc::new(Egress::new(&cfg).unwrap())
}

fn cidr(s: &str) -> Cidr {
    s.parse().unwrap()
}

fn count(outcomes: &[Outcome], source: &str) -> usize {
    outcomes.iter().filter(|o| o.source.as_deref() == Some(source)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_bind_the_source_of_the_pool_chosen_by_rule_or_by_the_message() {
    bounded(async {
        let net = 150;
        let ports = free_ports(net);
        let pki = pki(&["mx.e150.test"]);
        let mut z = ZoneBuilder::new("test.");
        z.mx("e150.test", 10, "mx.e150.test").a("mx.e150.test", ip(net, 1));
        let dns = dns(net, z).await;
        // Only pool p's addresses (a, b) may send here: a connection from any other address
        // (the system's 127.0.0.1 if nothing is bound, or source c) is refused.
        let sink = sink(ip(net, 1), ports, &pki.identity, |c| {
            c.allowed_clients = Some(vec![cidr("127.0.0.2/32"), cidr("127.0.0.3/32")]);
        })
        .await;
        let mut cfg = engine_config(&dns, ports, &[&pki]);
        cfg.egress = Some(egress());
        let mut msgs = Vec::new();
        for i in 0..6 {
            msgs.push(msg(&format!("default{i}"), &[&format!("d{i}@e150.test")]));
        }
        let mut ruled = msg("ruled", &["ruled@e150.test"]);
        ruled.from = "news@mail.ruled.test".into();
        msgs.push(ruled);
        let mut explicit = msg("explicit", &["explicit@e150.test"]);
        explicit.from = "news@mail.ruled.test".into();
        explicit.pool = Some("p".into());
        msgs.push(explicit);
        let mut unknown = msg("unknown", &["unknown@e150.test"]);
        unknown.pool = Some("nope".into());
        msgs.push(unknown);
        let (outcomes, _) = deliver(cfg, msgs).await;
        for i in 0..6 {
            let o = one(&outcomes, &format!("d{i}@e150.test"));
            assert_eq!(o.status, Status::Delivered, "{o:#?}");
            assert_eq!(o.pool.as_deref(), Some("p"));
            assert!(matches!(o.source.as_deref(), Some("a" | "b")), "{o:#?}");
        }
        // The rule sends ruled.test's mail through q, whose only source c the sink refuses.
        let o = one(&outcomes, "ruled@e150.test");
        assert_eq!((o.status, o.pool.as_deref()), (Status::Deferred, Some("q")), "{o:#?}");
        assert!(o.reply.contains("5.7.1"), "refused as a client outside the sink's networks: {}", o.reply);
        assert_eq!(o.source.as_deref(), Some("c"), "the failed attempt names the source it left from: {o:#?}");
        // The message's own pool wins over the rule.
        let o = one(&outcomes, "explicit@e150.test");
        assert_eq!((o.status, o.pool.as_deref()), (Status::Delivered, Some("p")), "{o:#?}");
        // A pool that is not configured: deferred, naming it (never dropped, never sent unbound).
        let o = one(&outcomes, "unknown@e150.test");
        assert_eq!(o.status, Status::Deferred);
        assert!(o.reply.contains("\"nope\""), "{}", o.reply);
        let stats = sink_stats(sink).await;
        assert_eq!(stats.messages, 7, "the six default messages and the explicit one: {stats:#?}");
        assert!(stats.rejected_clients >= 1, "source c's connection was refused, so it came from 127.0.0.4: {stats:#?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_connections_spread_over_the_sources_by_weight() {
    bounded(async {
        let net = 151;
        let ports = free_ports(net);
        let pki = pki(&["mx.e151.test"]);
        let mut z = ZoneBuilder::new("test.");
        z.mx("e151.test", 10, "mx.e151.test").a("mx.e151.test", ip(net, 1));
        let dns = dns(net, z).await;
        let sink = sink(ip(net, 1), ports, &pki.identity, |c| {
            c.allowed_clients = Some(vec![cidr("127.0.0.2/32"), cidr("127.0.0.3/32")]);
        })
        .await;
        let mut cfg = engine_config(&dns, ports, &[&pki]);
        cfg.egress = Some(egress());
        // One message per connection, so that every message is a new choice; one at a time,
        // so that no source is ever at its connection limit (which would overrule the weights).
        cfg.max_msgs_per_conn = 1;
        let n = 300;
        let (outcomes, _) = with_engine(cfg, move |engine, rx| {
            (0..n)
                .flat_map(|i| {
                    engine.submit(msg(&format!("m{i}"), &[&format!("r{i}@e151.test")])).unwrap();
                    recv(rx, 1)
                })
                .collect::<Vec<_>>()
        })
        .await;
        assert!(outcomes.iter().all(|o| o.status == Status::Delivered), "{:#?}", outcomes.iter().find(|o| o.status != Status::Delivered));
        let (a, b) = (count(&outcomes, "a"), count(&outcomes, "b"));
        assert_eq!(a + b, n);
        // Weights 3 : 1, so a takes 225 of 300 on average (σ ≈ 7.5); a loose bound either way.
        assert!((180..=270).contains(&a), "a sent {a}, b sent {b}");
        // What the receiver saw: each message from the source's own address, under its EHLO name.
        let peers = sink.peers();
        let from = |addr: &str, helo: &str| {
            peers.peers.iter().filter(|p| p.ip == Some(addr.parse().unwrap()) && p.helo == helo).map(|p| p.messages).sum::<u64>() as usize
        };
        assert_eq!((from("127.0.0.2", "a.out.test"), from("127.0.0.3", "b.out.test")), (a, b), "{peers:?}");
        assert_eq!(peers.peers.len(), 2, "no other address or EHLO name: {peers:?}");
        let stats = sink_stats(sink).await;
        assert_eq!((stats.messages, stats.rejected_clients), (n as u64, 0), "{stats:#?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_source_has_the_destinations_connection_limit_of_its_own() {
    bounded(async {
        let net = 152;
        let ports = free_ports(net);
        let pki = pki(&["mx.e152.test"]);
        let mut z = ZoneBuilder::new("test.");
        z.mx("e152.test", 10, "mx.e152.test").a("mx.e152.test", ip(net, 1));
        let dns = dns(net, z).await;
        // The sink refuses a second connection from one address: one source over its limit
        // of one would be refused (and its messages deferred).
        let sink = sink(ip(net, 1), ports, &pki.identity, |c| {
            c.max_conns_per_ip = 1;
            c.faults.delay = Duration::from_millis(5);
        })
        .await;
        let mut cfg = engine_config(&dns, ports, &[&pki]);
        cfg.egress = Some(egress());
        cfg.limits = vec![LimitRule { scope: LimitScope::Domain("e152.test".into()), max_conns: Some(1), msgs_per_s: None }];
        let n = 200;
        let msgs = (0..n)
            .map(|i| {
                let mut m = msg(&format!("m{i}"), &[&format!("r{i}@e152.test")]);
                m.pool = Some("r".into());
                m
            })
            .collect();
        let (outcomes, _) = deliver(cfg, msgs).await;
        assert!(outcomes.iter().all(|o| o.status == Status::Delivered), "{:#?}", outcomes.iter().find(|o| o.status != Status::Delivered));
        let (c, d) = (count(&outcomes, "c"), count(&outcomes, "d"));
        assert_eq!(c + d, n);
        assert!(c > 0 && d > 0, "both sources carried mail (one connection each at once): c {c}, d {d}");
        let stats = sink_stats(sink).await;
        assert_eq!(stats.rejected_per_ip, 0, "no source opened a second connection: {stats:#?}");
    })
    .await;
}

#[test]
fn an_address_the_host_lacks_is_an_error_at_start_naming_the_source() {
    let toml = r#"
        [egress]
        default_pool = "p"
        [[egress.source]]
        name = "here"
        address = "127.0.0.6"
        ehlo = "here.out.test"
        [[egress.source]]
        name = "elsewhere"
        address = "192.0.2.1"
        ehlo = "elsewhere.out.test"
        [[egress.pool]]
        name = "p"
        sources = [{ source = "here" }, { source = "elsewhere", weight = 2 }]
    "#;
    let cfg = Config::from_toml_str(toml).expect("the file itself is well-formed");
    let e = cfg.engine_config().expect_err("192.0.2.1 is no address of this host").to_string();
    assert!(e.contains("\"elsewhere\"") && e.contains("192.0.2.1"), "{e}");
    let ok = Config::from_toml_str(&toml.replace("192.0.2.1", "127.0.0.7")).unwrap();
    let engine = ok.engine_config().unwrap();
    let eg = engine.egress.expect("sources reach the engine");
    assert_eq!(eg.sources().len(), 2);
    assert!(eg.has_pool("p") && !eg.has_pool("q"));
}

/// Source a (127.0.0.2) warms up under plan `slow` (3 messages a "day" of `day`); source b
/// (127.0.0.3) is warm. Pool `both` prefers a by far; pool `cold` has only a.
fn warming(day: &str) -> Arc<Egress> {
    let cfg: EgressConfig = toml::from_str(&format!(
        r#"
        default_pool = "both"
        [[warmup]]
        name = "slow"
        caps = [3, 3]
        day = "{day}"
        [[source]]
        name = "a"
        address = "127.0.0.2"
        ehlo = "a.out.test"
        warmup = "slow"
        [[source]]
        name = "b"
        address = "127.0.0.3"
        ehlo = "b.out.test"
        [[pool]]
        name = "both"
        sources = [{{ source = "a", weight = 1000 }}, {{ source = "b" }}]
        [[pool]]
        name = "cold"
        sources = [{{ source = "a" }}]
        "#
    ))
    .unwrap();
    Arc::new(Egress::new(&cfg).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capped_source_leaves_the_pool_to_the_others_and_a_capped_pool_waits() {
    bounded(async {
        let net = 153;
        let ports = free_ports(net);
        let pki = pki(&["mx.e153.test"]);
        let mut z = ZoneBuilder::new("test.");
        z.mx("e153.test", 10, "mx.e153.test").a("mx.e153.test", ip(net, 1));
        let dns = dns(net, z).await;
        let sink = sink(ip(net, 1), ports, &pki.identity, |_| {}).await;
        // A long day: a's cap of 3 holds for the whole test, so b carries the rest.
        let mut cfg = engine_config(&dns, ports, &[&pki]);
        cfg.egress = Some(warming("1h"));
        let n = 10;
        let msgs = (0..n).map(|i| msg(&format!("m{i}"), &[&format!("r{i}@e153.test")])).collect();
        let (outcomes, _) = deliver(cfg, msgs).await;
        assert!(outcomes.iter().all(|o| o.status == Status::Delivered), "{outcomes:#?}");
        assert_eq!((count(&outcomes, "a"), count(&outcomes, "b")), (3, n - 3), "a is capped at 3 for the day");

        // A pool whose only source is capped: its mail waits for the next day (2 s here),
        // never bounced or deferred as a failure.
        let mut cfg = engine_config(&dns, ports, &[&pki]);
        let eg = warming("2s");
        cfg.egress = Some(eg.clone());
        let msgs = (0..5)
            .map(|i| {
                let mut m = msg(&format!("c{i}"), &[&format!("c{i}@e153.test")]);
                m.pool = Some("cold".into());
                m
            })
            .collect();
        let (outcomes, _) = deliver(cfg, msgs).await;
        assert!(outcomes.iter().all(|o| o.status == Status::Delivered && o.source.as_deref() == Some("a")), "{outcomes:#?}");
        let status = eg.warmup().unwrap().status();
        assert!(status.iter().any(|s| s.source == "a" && s.day >= 2), "the last two went on a later day: {status:?}");
        sink_stats(sink).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suspended_source_is_skipped_and_a_fully_suspended_pool_gives_its_mail_back_untried() {
    bounded(async {
        let net = 154;
        let ports = free_ports(net);
        let pki = pki(&["mx.e154.test"]);
        let mut z = ZoneBuilder::new("test.");
        z.mx("e154.test", 10, "mx.e154.test").a("mx.e154.test", ip(net, 1));
        let dns = dns(net, z).await;
        let sink = sink(ip(net, 1), ports, &pki.identity, |_| {}).await;
        let mut cfg = engine_config(&dns, ports, &[&pki]);
        cfg.egress = Some(egress());
        cfg.max_msgs_per_conn = 1;
        let (outcomes, _) = with_engine(cfg, |engine, rx| {
            // Source c is suspended toward e154.test: pool r sends from d only, and pool q
            // (c alone) sends nothing: its mail comes back untried, neither bounced nor tried.
            engine.suspend_source("E154.test.", "c", Some(std::time::Instant::now() + Duration::from_secs(600)));
            for i in 0..10 {
                let mut m = msg(&format!("r{i}"), &[&format!("r{i}@e154.test")]);
                m.pool = Some("r".into());
                engine.submit(m).unwrap();
            }
            let mut m = msg("q", &["q@e154.test"]);
            m.pool = Some("q".into());
            engine.submit(m).unwrap();
            recv(rx, 11)
        })
        .await;
        for i in 0..10 {
            let o = one(&outcomes, &format!("r{i}@e154.test"));
            assert_eq!((o.status, o.source.as_deref()), (Status::Delivered, Some("d")), "{o:#?}");
        }
        let o = one(&outcomes, "q@e154.test");
        assert!(mxpipe::engine::not_attempted(o), "{o:#?}");
        assert_eq!(sink_stats(sink).await.messages, 10);
    })
    .await;
}
