//! MTA-STS (RFC 8461) in the delivery engine, end to end over loopback: `_mta-sts` TXT records
//! and MX/A records from `mxpipe::dnsserver`, the policy served over HTTPS (axum behind
//! tokio-rustls, certificate from a generated CA the engine trusts) on the mapped https port of
//! `mta-sts.<domain>`, and sinks as MX hosts. One test per behaviour; each test has its own
//! 127.61.<n>.x addresses, ports, servers and state directory, so they run in parallel.
//!
//! Every server stops by itself ([`SERVER_LIFETIME`]) and every test body is bounded.

mod common;

use std::net::Ipv4Addr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::http::header::{CONTENT_TYPE, LOCATION};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use common::engine::*;
use mxpipe::dnsserver::ZoneBuilder;
use mxpipe::engine::Submission;
use mxpipe::outcome::{Status, TlsUse};
use mxpipe::policy::mta_sts::Mode;
use mxpipe::policy::state::unix_now;

/// Row 1: enforce, the MX is listed and has a valid certificate for its name: delivered over
/// verified STARTTLS, decided by MTA-STS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enforce_listed_mx_with_valid_certificate_is_delivered() {
    bounded(async {
        let net = 1;
        let ca = pki(&["*.d1.t.test"]);
        let mut ports = free_ports(net);
        let ps = PolicyServer::start((policy_ip(net), 0).into(), ca.identity.clone(), Duration::ZERO, |host| {
            assert_eq!(host, "mta-sts.d1.t.test");
            text_plain(policy("enforce", &["mx1.d1.t.test"]))
        })
        .await;
        ports.https = ps.addr.port();
        let mx = sink(ip(net, 1), ports, &ca.identity, |_| {}).await;
        let mut z = ZoneBuilder::new("test.");
        z.mx("d1.t.test", 10, "mx1.d1.t.test").a("mx1.d1.t.test", ip(net, 1));
        z.txt("_mta-sts.d1.t.test", "v=STSv1; id=20260101").a("mta-sts.d1.t.test", policy_ip(net));
        let dns = dns(net, z).await;

        let (o, stats) = deliver(engine_config(&dns, ports, &[&ca]), vec![msg("m1", &["a@d1.t.test"])]).await;
        let a = one(&o, "a@d1.t.test");
        assert_eq!((a.status, a.tls, a.policy.as_deref()), (Status::Delivered, TlsUse::Starttls, Some("mta-sts")), "{a:#?}");
        assert_eq!(a.policy_sources, vec!["mta-sts"]);
        assert_eq!(a.policy_report, None);
        assert_eq!((stats.mta_sts_fetches, stats.mta_sts_fetch_failures), (1, 0), "{stats:?}");
        assert_eq!(ps.stop().await, 1);
        assert_eq!(sink_stats(mx).await.messages, 1);
        dns.shutdown().await;
    })
    .await;
}

/// Row 2: enforce, the MX is listed but offers no STARTTLS (d2), or presents a certificate
/// from a trusted CA for another name (w2): deferred, nothing sent. A domain (b2) whose
/// primary is that STARTTLS-less sink and whose backup is listed with a valid certificate:
/// delivered through the backup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enforce_listed_mx_without_verified_tls_is_deferred_and_a_verified_backup_is_used() {
    bounded(async {
        let net = 2;
        let ca = pki(&["*.d2.t.test", "*.b2.t.test", "*.w2.t.test"]);
        // Trusted, but for another name.
        let wrong = pki(&["mx.elsewhere.test"]);
        let mut ports = free_ports(net);
        let ps = PolicyServer::start((policy_ip(net), 0).into(), ca.identity.clone(), Duration::ZERO, |host| match host {
            "mta-sts.d2.t.test" => text_plain(policy("enforce", &["mx1.d2.t.test"])),
            "mta-sts.w2.t.test" => text_plain(policy("enforce", &["mx1.w2.t.test"])),
            "mta-sts.b2.t.test" => text_plain(policy("enforce", &["mx1.b2.t.test", "mx2.b2.t.test"])),
            other => (StatusCode::NOT_FOUND, format!("no policy for {other}")).into_response(),
        })
        .await;
        ports.https = ps.addr.port();
        let clear = sink(ip(net, 1), ports, &ca.identity, no_starttls).await;
        let wrong_name = sink(ip(net, 2), ports, &wrong.identity, |_| {}).await;
        let good = sink(ip(net, 3), ports, &ca.identity, |_| {}).await;
        let mut z = ZoneBuilder::new("test.");
        z.mx("d2.t.test", 10, "mx1.d2.t.test").a("mx1.d2.t.test", ip(net, 1));
        z.mx("w2.t.test", 10, "mx1.w2.t.test").a("mx1.w2.t.test", ip(net, 2));
        z.mx("b2.t.test", 10, "mx1.b2.t.test").a("mx1.b2.t.test", ip(net, 1));
        z.mx("b2.t.test", 20, "mx2.b2.t.test").a("mx2.b2.t.test", ip(net, 3));
        for d in ["d2", "w2", "b2"] {
            z.txt(&format!("_mta-sts.{d}.t.test"), "v=STSv1; id=1").a(&format!("mta-sts.{d}.t.test"), policy_ip(net));
        }
        let dns = dns(net, z).await;

        let (o, stats) = deliver(
            engine_config(&dns, ports, &[&ca, &wrong]),
            vec![msg("m1", &["a@d2.t.test"]), msg("m2", &["b@w2.t.test"]), msg("m3", &["c@b2.t.test"])],
        )
        .await;
        let a = one(&o, "a@d2.t.test");
        assert_eq!(a.status, Status::Deferred, "{a:#?}");
        assert!(a.reply.contains("STARTTLS") && a.reply.contains("mta-sts"), "{}", a.reply);
        let b = one(&o, "b@w2.t.test");
        assert_eq!(b.status, Status::Deferred, "{b:#?}");
        assert!(b.reply.contains("certificate") && b.reply.contains("mta-sts"), "{}", b.reply);
        let c = one(&o, "c@b2.t.test");
        assert_eq!(
            (c.status, c.mx.as_deref(), c.tls, c.policy.as_deref()),
            (Status::Delivered, Some("mx2.b2.t.test"), TlsUse::Starttls, Some("mta-sts")),
            "{c:#?}"
        );
        assert_eq!(stats.mta_sts_fetches, 3, "{stats:?}");
        ps.stop().await;
        assert_eq!(sink_stats(clear).await.messages, 0, "nothing in clear to the STARTTLS-less sink");
        assert_eq!(sink_stats(wrong_name).await.messages, 0, "nothing to the wrong-name certificate");
        assert_eq!(sink_stats(good).await.messages, 1);
        dns.shutdown().await;
    })
    .await;
}

/// Row 3: enforce, the only MX is not among the policy's `mx` patterns: refused before any
/// connection, deferred with a reason naming MTA-STS. A wildcard pattern `*.d.t.test` covers
/// `mx1.d.t.test`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enforce_unlisted_mx_is_refused_and_a_wildcard_matches() {
    bounded(async {
        let net = 3;
        let ca = pki(&["*.u3.t.test", "*.d.t.test"]);
        let mut ports = free_ports(net);
        let ps = PolicyServer::start((policy_ip(net), 0).into(), ca.identity.clone(), Duration::ZERO, |host| match host {
            "mta-sts.u3.t.test" => text_plain(policy("enforce", &["mx1.u3.t.test"])),
            _ => text_plain(policy("enforce", &["*.d.t.test"])),
        })
        .await;
        ports.https = ps.addr.port();
        let rogue = sink(ip(net, 1), ports, &ca.identity, |_| {}).await;
        let wild = sink(ip(net, 2), ports, &ca.identity, |_| {}).await;
        let mut z = ZoneBuilder::new("test.");
        z.mx("u3.t.test", 10, "rogue.u3.t.test").a("rogue.u3.t.test", ip(net, 1));
        z.mx("d.t.test", 10, "mx1.d.t.test").a("mx1.d.t.test", ip(net, 2));
        for d in ["u3.t.test", "d.t.test"] {
            z.txt(&format!("_mta-sts.{d}"), "v=STSv1; id=1").a(&format!("mta-sts.{d}"), policy_ip(net));
        }
        let dns = dns(net, z).await;

        let (o, stats) = deliver(engine_config(&dns, ports, &[&ca]), vec![msg("m1", &["a@u3.t.test", "b@d.t.test"])]).await;
        let a = one(&o, "a@u3.t.test");
        assert_eq!(a.status, Status::Deferred, "{a:#?}");
        assert!(a.reply.contains("MTA-STS") && a.reply.contains("rogue.u3.t.test"), "{}", a.reply);
        let b = one(&o, "b@d.t.test");
        assert_eq!((b.status, b.tls, b.policy.as_deref()), (Status::Delivered, TlsUse::Starttls, Some("mta-sts")), "{b:#?}");
        assert_eq!(stats.mta_sts_fetches, 2, "{stats:?}");
        ps.stop().await;
        let r = sink_stats(rogue).await;
        assert_eq!((r.messages, r.starttls.connections), (0, 0), "the unlisted host is not even connected to: {r:?}");
        assert_eq!(sink_stats(wild).await.messages, 1);
        dns.shutdown().await;
    })
    .await;
}

/// Row 4: testing: nothing is enforced, what enforce would refuse is counted and reported. A
/// sink without STARTTLS (nt4) gets the message in clear; so do an unlisted host (un4) and one
/// with a wrong-name certificate (wc4), over TLS; a listed host with a valid certificate (ok4)
/// gets it with no report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn testing_delivers_and_reports_what_enforce_would_refuse() {
    bounded(async {
        let net = 4;
        let ca = pki(&["*.nt4.t.test", "*.ok4.t.test", "*.un4.t.test", "*.wc4.t.test"]);
        let wrong = pki(&["mx.elsewhere.test"]);
        let mut ports = free_ports(net);
        let ps = PolicyServer::start((policy_ip(net), 0).into(), ca.identity.clone(), Duration::ZERO, |host| {
            let domain = host.strip_prefix("mta-sts.").unwrap_or(host).to_string();
            text_plain(policy("testing", &[&format!("mx1.{domain}")]))
        })
        .await;
        ports.https = ps.addr.port();
        let clear = sink(ip(net, 1), ports, &ca.identity, no_starttls).await;
        let good = sink(ip(net, 2), ports, &ca.identity, |_| {}).await;
        let wrong_name = sink(ip(net, 3), ports, &wrong.identity, |_| {}).await;
        let mut z = ZoneBuilder::new("test.");
        z.mx("nt4.t.test", 10, "mx1.nt4.t.test").a("mx1.nt4.t.test", ip(net, 1));
        z.mx("ok4.t.test", 10, "mx1.ok4.t.test").a("mx1.ok4.t.test", ip(net, 2));
        z.mx("un4.t.test", 10, "rogue.un4.t.test").a("rogue.un4.t.test", ip(net, 2));
        z.mx("wc4.t.test", 10, "mx1.wc4.t.test").a("mx1.wc4.t.test", ip(net, 3));
        for d in ["nt4", "ok4", "un4", "wc4"] {
            z.txt(&format!("_mta-sts.{d}.t.test"), "v=STSv1; id=1").a(&format!("mta-sts.{d}.t.test"), policy_ip(net));
        }
        let dns = dns(net, z).await;

        let rcpts = ["a@nt4.t.test", "b@ok4.t.test", "c@un4.t.test", "d@wc4.t.test"];
        let (o, stats) = deliver(engine_config(&dns, ports, &[&ca, &wrong]), vec![msg("m1", &rcpts)]).await;
        for r in rcpts {
            let x = one(&o, r);
            assert_eq!((x.status, x.policy.as_deref()), (Status::Delivered, Some("opportunistic")), "{x:#?}");
            assert!(x.policy_sources.contains(&"mta-sts-testing"), "{r}: {:?}", x.policy_sources);
        }
        let a = one(&o, "a@nt4.t.test");
        assert_eq!(a.tls, TlsUse::None, "delivered in clear");
        assert!(a.policy_report.as_deref().is_some_and(|r| r.contains("mx1.nt4.t.test") && r.contains("no TLS")), "{a:#?}");
        let b = one(&o, "b@ok4.t.test");
        assert_eq!((b.tls, b.policy_report.as_deref()), (TlsUse::Starttls, None), "{b:#?}");
        let c = one(&o, "c@un4.t.test");
        assert!(
            c.policy_report.as_deref().is_some_and(|r| r.contains("rogue.un4.t.test") && r.contains("not an MX host listed")),
            "{c:#?}"
        );
        let d = one(&o, "d@wc4.t.test");
        assert_eq!(d.tls, TlsUse::Starttls, "{d:#?}");
        assert!(d.policy_report.as_deref().is_some_and(|r| r.contains("certificate")), "{d:#?}");
        assert!(stats.mta_sts_testing_failures >= 3, "{stats:?}");
        assert_eq!(stats.mta_sts_fetches, 4, "{stats:?}");
        ps.stop().await;
        assert_eq!(sink_stats(clear).await.messages, 1);
        assert_eq!(sink_stats(good).await.messages, 2);
        assert_eq!(sink_stats(wrong_name).await.messages, 1);
        dns.shutdown().await;
    })
    .await;
}

/// Row 5: `mode: none`: fetched, then as if the domain had no policy: a STARTTLS-less listed
/// host and an unlisted host both get their message, opportunistic, with no report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mode_none_is_as_if_no_policy() {
    bounded(async {
        let net = 5;
        let ca = pki(&["*.n5.t.test", "*.m5.t.test"]);
        let mut ports = free_ports(net);
        let ps = PolicyServer::start((policy_ip(net), 0).into(), ca.identity.clone(), Duration::ZERO, |host| {
            let domain = host.strip_prefix("mta-sts.").unwrap_or(host).to_string();
            text_plain(policy("none", &[&format!("mx1.{domain}")]))
        })
        .await;
        ports.https = ps.addr.port();
        let clear = sink(ip(net, 1), ports, &ca.identity, no_starttls).await;
        let mut z = ZoneBuilder::new("test.");
        z.mx("n5.t.test", 10, "mx1.n5.t.test").a("mx1.n5.t.test", ip(net, 1));
        z.mx("m5.t.test", 10, "rogue.m5.t.test").a("rogue.m5.t.test", ip(net, 1));
        for d in ["n5", "m5"] {
            z.txt(&format!("_mta-sts.{d}.t.test"), "v=STSv1; id=1").a(&format!("mta-sts.{d}.t.test"), policy_ip(net));
        }
        let dns = dns(net, z).await;

        let (o, stats) = deliver(engine_config(&dns, ports, &[&ca]), vec![msg("m1", &["a@n5.t.test", "b@m5.t.test"])]).await;
        for r in ["a@n5.t.test", "b@m5.t.test"] {
            let x = one(&o, r);
            assert_eq!((x.status, x.tls, x.policy.as_deref()), (Status::Delivered, TlsUse::None, Some("opportunistic")), "{x:#?}");
            assert_eq!((x.policy_sources.clone(), x.policy_report.as_deref()), (vec!["opportunistic"], None), "{x:#?}");
        }
        assert_eq!((stats.mta_sts_fetches, stats.mta_sts_fetch_failures, stats.mta_sts_testing_failures), (2, 0, 0), "{stats:?}");
        assert_eq!(ps.stop().await, 2, "both policies were fetched");
        assert_eq!(sink_stats(clear).await.messages, 2);
        dns.shutdown().await;
    })
    .await;
}

/// Row 6: the policy cannot be had — a malformed body (enforce without `mx`), a 404, a 301
/// (with a valid enforce policy as its body), a certificate for another name on the policy
/// host — and none is cached: delivered as if the domain had no MTA-STS (here in clear, which
/// the enforce policy in the 404's and 301's bodies would have refused), failures counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_policy_without_a_cached_one_is_no_policy() {
    bounded(async {
        let net = 6;
        let ca = pki(&["*.mal6.t.test", "*.nf6.t.test", "*.rd6.t.test", "*.wc6.t.test"]);
        // The policy host of wc6 presents a trusted certificate for another name.
        let wrong = pki(&["mta-sts.elsewhere.test"]);
        let mut ports = free_ports(net);
        let body = |d: &str| policy("enforce", &[&format!("mx1.{d}.t.test")]);
        let ps = PolicyServer::start((policy_ip(net), 0).into(), ca.identity.clone(), Duration::ZERO, move |host| match host {
            "mta-sts.mal6.t.test" => text_plain("version: STSv1\r\nmode: enforce\r\nmax_age: 86400\r\n".into()),
            "mta-sts.nf6.t.test" => (StatusCode::NOT_FOUND, [(CONTENT_TYPE, "text/plain")], body("nf6")).into_response(),
            "mta-sts.rd6.t.test" => (
                StatusCode::MOVED_PERMANENTLY,
                [(LOCATION, "https://mta-sts.nf6.t.test/.well-known/mta-sts.txt"), (CONTENT_TYPE, "text/plain")],
                body("rd6"),
            )
                .into_response(),
            _ => text_plain(body("wc6")),
        })
        .await;
        ports.https = ps.addr.port();
        let bad_cert = PolicyServer::start((ip(net, 201), ports.https).into(), wrong.identity.clone(), Duration::ZERO, move |_| {
            text_plain(body("wc6"))
        })
        .await;
        let clear = sink(ip(net, 1), ports, &ca.identity, no_starttls).await;
        let mut z = ZoneBuilder::new("test.");
        let domains = ["mal6", "nf6", "rd6", "wc6"];
        for d in domains {
            z.mx(&format!("{d}.t.test"), 10, &format!("mx1.{d}.t.test")).a(&format!("mx1.{d}.t.test"), ip(net, 1));
            let policy_host = if d == "wc6" { ip(net, 201) } else { policy_ip(net) };
            z.txt(&format!("_mta-sts.{d}.t.test"), "v=STSv1; id=1").a(&format!("mta-sts.{d}.t.test"), policy_host);
        }
        let dns = dns(net, z).await;

        let rcpts: Vec<String> = domains.iter().map(|d| format!("a@{d}.t.test")).collect();
        let rcpts: Vec<&str> = rcpts.iter().map(String::as_str).collect();
        let (o, stats) = deliver(engine_config(&dns, ports, &[&ca, &wrong]), vec![msg("m1", &rcpts)]).await;
        for r in &rcpts {
            let x = one(&o, r);
            assert_eq!((x.status, x.tls, x.policy.as_deref()), (Status::Delivered, TlsUse::None, Some("opportunistic")), "{x:#?}");
            assert_eq!((x.policy_sources.clone(), x.policy_report.as_deref()), (vec!["opportunistic"], None), "{x:#?}");
        }
        assert_eq!((stats.mta_sts_fetches, stats.mta_sts_fetch_failures), (4, 4), "{stats:?}");
        assert_eq!(ps.stop().await, 3, "mal6, nf6 and rd6 asked; the redirect was not followed");
        assert_eq!(bad_cert.stop().await, 0, "no request over the wrong-name certificate");
        assert_eq!(sink_stats(clear).await.messages, 4);
        dns.shutdown().await;
    })
    .await;
}

/// Row 7: a cached enforce policy (fetched by a first engine into the state directory) stays
/// in force when it cannot be refreshed: the TXT id changed and the policy host is gone. The
/// MX now points at a STARTTLS-less sink, which gets nothing — neither before the failed
/// refresh nor after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_refresh_keeps_the_cached_policy_in_force() {
    bounded(async {
        let net = 7;
        let dir = StateDir::new("refresh-fails");
        let ca = pki(&["*.d7.t.test"]);
        let mut ports = free_ports(net);
        let ps = PolicyServer::start((policy_ip(net), 0).into(), ca.identity.clone(), Duration::ZERO, |_| {
            text_plain(policy("enforce", &["mx1.d7.t.test"]))
        })
        .await;
        ports.https = ps.addr.port();
        let good = sink(ip(net, 1), ports, &ca.identity, |_| {}).await;
        let clear = sink(ip(net, 2), ports, &ca.identity, no_starttls).await;

        // First run: the policy is fetched and kept.
        let mut z = ZoneBuilder::new("test.");
        z.mx("d7.t.test", 10, "mx1.d7.t.test").a("mx1.d7.t.test", ip(net, 1));
        z.txt("_mta-sts.d7.t.test", "v=STSv1; id=first").a("mta-sts.d7.t.test", policy_ip(net));
        let dns1 = dns(net, z).await;
        let mut cfg = engine_config(&dns1, ports, &[&ca]);
        cfg.state = Some(dir.open());
        let (o, stats) = deliver(cfg, vec![msg("m1", &["a@d7.t.test"])]).await;
        assert_eq!((o[0].status, o[0].policy.as_deref()), (Status::Delivered, Some("mta-sts")), "{o:#?}");
        assert_eq!(stats.mta_sts_fetches, 1);
        dns1.shutdown().await;
        assert_eq!(ps.stop().await, 1);

        // Second run: new id, nothing listens on the policy host, the MX moved to a host
        // without STARTTLS.
        let mut z = ZoneBuilder::new("test.");
        z.mx("d7.t.test", 10, "mx1.d7.t.test").a("mx1.d7.t.test", ip(net, 2));
        z.txt("_mta-sts.d7.t.test", "v=STSv1; id=second").a("mta-sts.d7.t.test", policy_ip(net));
        let dns2 = dns(net, z).await;
        let mut cfg = engine_config(&dns2, ports, &[&ca]);
        cfg.state = Some(dir.open());
        let ((before, failures, after), _) = with_engine(cfg, |engine, rx| {
            engine.submit(msg("m2", &["b@d7.t.test"])).unwrap();
            let before = recv(rx, 1).remove(0);
            // The refresh (in the background) fails: nothing listens.
            wait_until("the refresh to fail", || engine.stats().mta_sts_fetch_failures >= 1);
            let failures = engine.stats().mta_sts_fetch_failures;
            engine.submit(msg("m3", &["c@d7.t.test"])).unwrap();
            (before, failures, recv(rx, 1).remove(0))
        })
        .await;
        assert_eq!(failures, 1);
        for x in [&before, &after] {
            assert_eq!(x.status, Status::Deferred, "the cached enforce policy applies: {x:#?}");
            assert!(x.reply.contains("STARTTLS") && x.reply.contains("mta-sts"), "{}", x.reply);
        }
        dns2.shutdown().await;
        assert_eq!(sink_stats(good).await.messages, 1);
        assert_eq!(sink_stats(clear).await.messages, 0, "nothing in clear under the cached policy");
    })
    .await;
}

/// Row 8: a new TXT id means a new policy. A first engine fetches policy A (testing); the
/// domain then publishes a new id and policy B (enforce) on a new server (new DNS server,
/// maybe new ports; the same state directory). The next engine fetches again (the new server
/// counts one request) and enforces B. By design (src/engine/sts.rs), a refresh of a cached
/// policy runs in the background: the delivery that notices the new id still goes under A,
/// which stays in force until B is in; deliveries after that are under B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_id_fetches_the_new_policy() {
    bounded(async {
        let net = 8;
        let dir = StateDir::new("new-id");
        let ca = pki(&["*.d8.t.test"]);
        let mut ports = free_ports(net);
        let clear = sink(ip(net, 1), ports, &ca.identity, no_starttls).await;
        let zone = |id: &str| {
            let mut z = ZoneBuilder::new("test.");
            z.mx("d8.t.test", 10, "mx1.d8.t.test").a("mx1.d8.t.test", ip(net, 1));
            z.txt("_mta-sts.d8.t.test", &format!("v=STSv1; id={id}")).a("mta-sts.d8.t.test", policy_ip(net));
            z
        };

        // Run 1: policy A, testing: delivered in clear, reported.
        let a = PolicyServer::start((policy_ip(net), 0).into(), ca.identity.clone(), Duration::ZERO, |_| {
            text_plain(policy("testing", &["mx1.d8.t.test"]))
        })
        .await;
        ports.https = a.addr.port();
        let dns1 = dns(net, zone("A1")).await;
        let mut cfg = engine_config(&dns1, ports, &[&ca]);
        cfg.state = Some(dir.open());
        let (o, stats) = deliver(cfg, vec![msg("m1", &["a@d8.t.test"])]).await;
        assert_eq!((o[0].status, o[0].tls), (Status::Delivered, TlsUse::None), "{o:#?}");
        assert!(o[0].policy_sources.contains(&"mta-sts-testing"), "{o:#?}");
        assert_eq!(stats.mta_sts_fetches, 1);
        dns1.shutdown().await;
        assert_eq!(a.stop().await, 1);

        // Run 2: id B2, policy B, enforce, on a new server.
        let b = PolicyServer::start((policy_ip(net), 0).into(), ca.identity.clone(), Duration::ZERO, |_| {
            text_plain(policy("enforce", &["mx1.d8.t.test"]))
        })
        .await;
        ports.https = b.addr.port();
        let dns2 = dns(net, zone("B2")).await;
        let mut cfg = engine_config(&dns2, ports, &[&ca]);
        cfg.state = Some(dir.open());
        let requests = b.requests.clone();
        let ((first, refreshed, second), stats) = with_engine(cfg, move |engine, rx| {
            engine.submit(msg("m2", &["b@d8.t.test"])).unwrap();
            let first = recv(rx, 1).remove(0);
            let state = engine.policy_state().clone();
            wait_until("policy B to be cached", || state.sts("d8.t.test", unix_now()).is_some_and(|c| c.id == "B2"));
            let refreshed = state.sts("d8.t.test", unix_now()).unwrap();
            engine.submit(msg("m3", &["c@d8.t.test"])).unwrap();
            (first, refreshed, recv(rx, 1).remove(0))
        })
        .await;
        assert_eq!(requests.load(Ordering::SeqCst), 1, "the new id made exactly one fetch");
        assert_eq!((stats.mta_sts_fetches, stats.mta_sts_fetch_failures), (1, 0), "{stats:?}");
        assert_eq!(refreshed.policy.mode, Mode::Enforce);
        // The delivery that found the new id: under the cached A while B is fetched.
        assert_eq!((first.status, first.tls), (Status::Delivered, TlsUse::None), "{first:#?}");
        assert!(first.policy_sources.contains(&"mta-sts-testing"), "{first:#?}");
        // Then B applies.
        assert_eq!(second.status, Status::Deferred, "policy B (enforce) applies: {second:#?}");
        assert!(second.reply.contains("STARTTLS") && second.reply.contains("mta-sts"), "{}", second.reply);
        dns2.shutdown().await;
        assert_eq!(b.stop().await, 1);
        assert_eq!(sink_stats(clear).await.messages, 2, "m1 and m2 only");
    })
    .await;
}

/// Row 9: a cached policy survives a restart: a second engine on the same state directory,
/// with the same TXT id and the policy host down, enforces it without fetching.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_policy_survives_a_restart() {
    bounded(async {
        let net = 9;
        let dir = StateDir::new("restart");
        let ca = pki(&["*.d9.t.test"]);
        let mut ports = free_ports(net);
        let ps = PolicyServer::start((policy_ip(net), 0).into(), ca.identity.clone(), Duration::ZERO, |_| {
            text_plain(policy("enforce", &["mx1.d9.t.test"]))
        })
        .await;
        ports.https = ps.addr.port();
        let good = sink(ip(net, 1), ports, &ca.identity, |_| {}).await;
        let clear = sink(ip(net, 2), ports, &ca.identity, no_starttls).await;
        let zone = |mx: Ipv4Addr| {
            let mut z = ZoneBuilder::new("test.");
            z.mx("d9.t.test", 10, "mx1.d9.t.test").a("mx1.d9.t.test", mx);
            z.txt("_mta-sts.d9.t.test", "v=STSv1; id=same").a("mta-sts.d9.t.test", policy_ip(net));
            z
        };

        let dns1 = dns(net, zone(ip(net, 1))).await;
        let mut cfg = engine_config(&dns1, ports, &[&ca]);
        cfg.state = Some(dir.open());
        let (o, stats) = deliver(cfg, vec![msg("m1", &["a@d9.t.test"])]).await;
        assert_eq!((o[0].status, o[0].policy.as_deref()), (Status::Delivered, Some("mta-sts")), "{o:#?}");
        assert_eq!(stats.mta_sts_fetches, 1);
        dns1.shutdown().await;
        assert_eq!(ps.stop().await, 1);

        // Restart: the policy host is down, the MX now has no STARTTLS.
        let dns2 = dns(net, zone(ip(net, 2))).await;
        let mut cfg = engine_config(&dns2, ports, &[&ca]);
        cfg.state = Some(dir.open());
        let (o, stats) = deliver(cfg, vec![msg("m2", &["b@d9.t.test"])]).await;
        let b = one(&o, "b@d9.t.test");
        assert_eq!(b.status, Status::Deferred, "the cached enforce policy applies: {b:#?}");
        assert!(b.reply.contains("STARTTLS") && b.reply.contains("mta-sts"), "{}", b.reply);
        assert_eq!((stats.mta_sts_fetches, stats.mta_sts_fetch_failures), (0, 0), "{stats:?}");
        dns2.shutdown().await;
        assert_eq!(sink_stats(good).await.messages, 1);
        assert_eq!(sink_stats(clear).await.messages, 0);
    })
    .await;
}

/// Row 10: single flight and the cached path. A burst of many messages to many recipients of
/// one domain starts several workers at once while the policy is slow to come (300 ms): one
/// request. A second burst on the same engine: none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_fetch_for_a_burst_and_none_for_the_next() {
    bounded(async {
        let net = 10;
        let ca = pki(&["*.d10.t.test"]);
        let mut ports = free_ports(net);
        let ps = PolicyServer::start((policy_ip(net), 0).into(), ca.identity.clone(), Duration::from_millis(300), |_| {
            text_plain(policy("enforce", &["mx1.d10.t.test"]))
        })
        .await;
        ports.https = ps.addr.port();
        let good = sink(ip(net, 1), ports, &ca.identity, |_| {}).await;
        let mut z = ZoneBuilder::new("test.");
        z.mx("d10.t.test", 10, "mx1.d10.t.test").a("mx1.d10.t.test", ip(net, 1));
        z.txt("_mta-sts.d10.t.test", "v=STSv1; id=1").a("mta-sts.d10.t.test", policy_ip(net));
        let dns = dns(net, z).await;

        const MSGS: usize = 200;
        const RCPTS: usize = 3;
        let burst = |tag: &str| -> Vec<Submission> {
            (0..MSGS)
                .map(|m| {
                    let to: Vec<String> = (0..RCPTS).map(|r| format!("u{m}-{r}@d10.t.test")).collect();
                    let to: Vec<&str> = to.iter().map(String::as_str).collect();
                    msg(&format!("{tag}{m}"), &to)
                })
                .collect()
        };
        let (b1, b2) = (burst("a"), burst("b"));
        let requests = ps.requests.clone();
        let ((first, s1, after_first, second), s2) = with_engine(engine_config(&dns, ports, &[&ca]), move |engine, rx| {
            for m in b1 {
                engine.submit(m).unwrap();
            }
            let first = recv(rx, MSGS * RCPTS);
            let (s1, after_first) = (engine.stats(), requests.load(Ordering::SeqCst));
            for m in b2 {
                engine.submit(m).unwrap();
            }
            (first, s1, after_first, recv(rx, MSGS * RCPTS))
        })
        .await;
        for o in first.iter().chain(&second) {
            assert_eq!((o.status, o.policy.as_deref()), (Status::Delivered, Some("mta-sts")), "{o:#?}");
        }
        assert!(s1.connections_opened >= 2, "several workers ran at once: {s1:?}");
        assert_eq!((after_first, s1.mta_sts_fetches), (1, 1), "one fetch for the first burst: {s1:?}");
        assert_eq!(s2.mta_sts_fetches, 1, "none for the second: {s2:?}");
        assert_eq!(ps.stop().await, 1);
        assert_eq!(sink_stats(good).await.recipients, (2 * MSGS * RCPTS) as u64);
        dns.shutdown().await;
    })
    .await;
}

/// Row 10, the refresh path: single flight also holds when a cached policy is refreshed in the
/// background. A first engine caches policy 1; a second engine on the same state directory
/// finds a new TXT id and gets a burst that starts several workers at once: each delivers
/// under the cached policy, and the new one is asked for exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_refresh_for_a_burst_after_the_id_changed() {
    bounded(async {
        let net = 11;
        let dir = StateDir::new("refresh-burst");
        let ca = pki(&["*.d11.t.test"]);
        let mut ports = free_ports(net);
        let good = sink(ip(net, 1), ports, &ca.identity, |_| {}).await;
        let zone = |id: &str| {
            let mut z = ZoneBuilder::new("test.");
            z.mx("d11.t.test", 10, "mx1.d11.t.test").a("mx1.d11.t.test", ip(net, 1));
            z.txt("_mta-sts.d11.t.test", &format!("v=STSv1; id={id}")).a("mta-sts.d11.t.test", policy_ip(net));
            z
        };
        let serve = || text_plain(policy("enforce", &["mx1.d11.t.test"]));

        let first = PolicyServer::start((policy_ip(net), 0).into(), ca.identity.clone(), Duration::ZERO, move |_| serve()).await;
        ports.https = first.addr.port();
        let dns1 = dns(net, zone("one")).await;
        let mut cfg = engine_config(&dns1, ports, &[&ca]);
        cfg.state = Some(dir.open());
        let (o, _) = deliver(cfg, vec![msg("m0", &["a@d11.t.test"])]).await;
        assert_eq!((o[0].status, o[0].policy.as_deref()), (Status::Delivered, Some("mta-sts")), "{o:#?}");
        dns1.shutdown().await;
        assert_eq!(first.stop().await, 1);

        // The refresh is slow (300 ms), so every worker of the burst finds it under way.
        let second =
            PolicyServer::start((policy_ip(net), 0).into(), ca.identity.clone(), Duration::from_millis(300), move |_| serve()).await;
        ports.https = second.addr.port();
        let dns2 = dns(net, zone("two")).await;
        let mut cfg = engine_config(&dns2, ports, &[&ca]);
        cfg.state = Some(dir.open());
        const MSGS: usize = 200;
        let burst: Vec<Submission> = (0..MSGS).map(|m| msg(&format!("b{m}"), &[&format!("u{m}@d11.t.test")])).collect();
        let (o, stats) = with_engine(cfg, move |engine, rx| {
            for m in burst {
                engine.submit(m).unwrap();
            }
            let o = recv(rx, MSGS);
            let state = engine.policy_state().clone();
            wait_until("the refreshed policy", || state.sts("d11.t.test", unix_now()).is_some_and(|c| c.id == "two"));
            o
        })
        .await;
        assert!(o.iter().all(|o| o.status == Status::Delivered && o.policy.as_deref() == Some("mta-sts")), "{o:#?}");
        assert!(stats.connections_opened >= 2, "several workers ran at once: {stats:?}");
        assert_eq!(stats.mta_sts_fetches, 1, "{stats:?}");
        assert_eq!(second.stop().await, 1, "one refresh for the whole burst");
        assert_eq!(sink_stats(good).await.messages, 1 + MSGS as u64);
        dns2.shutdown().await;
    })
    .await;
}
