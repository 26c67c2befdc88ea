//! REQUIRETLS (RFC 8689) in the delivery engine, end to end over loopback: a REQUIRETLS
//! message goes only to an MX host found through DNSSEC (or an MTA-STS policy), over verified
//! TLS, to a next hop that advertises REQUIRETLS, with the parameter passed on; each missing
//! condition bounces it with 5.7.30 and says which; an unreachable host only defers it; and
//! `TLS-Required: No` sets the receiver's policy aside. Nets 131 and up of 127.61.<net>.x.

mod common;

use common::engine::*;
use mxpipe::dnsserver::{DnsServer, ZoneBuilder};
use mxpipe::engine::{EngineConfig, MessageTls, PortMap, Submission};
use mxpipe::outcome::{Status, TlsUse};
use mxpipe::sink::SinkConfig;
use mxpipe::tls::dane::Tlsa;

fn requiretls_sink(c: &mut SinkConfig) {
    c.requiretls = true;
}

fn tagged(id: &str, to: &str, tls: MessageTls) -> Submission {
    Submission { tls, ..msg(id, &[to]) }
}

/// Validating DNSSEC against the test server's keys, trusting `roots`.
fn validating(dns: &DnsServer, ports: PortMap, roots: &[&mxpipe::tls::GeneratedPki]) -> EngineConfig {
    let mut cfg = engine_config(dns, ports, roots);
    cfg.resolver.validate_dnssec = true;
    cfg.resolver.trust_anchor = Some(dns.trust_anchors());
    cfg
}

/// Delivered twice, over WebPKI (a trusted CA) and over DANE, to sinks that advertise
/// REQUIRETLS; the sink records both as carrying it. A plain message to the same sink does not
/// carry it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requiretls_is_delivered_over_verified_tls_and_passed_on() {
    bounded(async {
        let net = 131;
        let ports = free_ports(net);
        let trusted = pki(&["mx.a131.test"]);
        let untrusted = pki(&["mx.b131.test"]);
        let a = sink(ip(net, 1), ports, &trusted.identity, requiretls_sink).await;
        let b = sink(ip(net, 2), ports, &untrusted.identity, requiretls_sink).await;
        let mut z = ZoneBuilder::new("test.").dnssec();
        z.mx("a131.test", 10, "mx.a131.test").a("mx.a131.test", ip(net, 1));
        z.mx("b131.test", 10, "mx.b131.test").a("mx.b131.test", ip(net, 2));
        let t = Tlsa::for_cert(&untrusted.identity.chain[0], 3, 1, 1).unwrap();
        z.tlsa("_25._tcp.mx.b131.test", t.usage, t.selector, t.matching, &t.data);
        let dns = dns(net, z).await;

        let msgs = vec![
            tagged("m1", "x@a131.test", MessageTls::RequireTls),
            tagged("m2", "y@b131.test", MessageTls::RequireTls),
            msg("m3", &["z@a131.test"]),
        ];
        let (o, _) = deliver(validating(&dns, ports, &[&trusted]), msgs).await;
        let x = one(&o, "x@a131.test");
        assert_eq!((x.status, x.tls, x.policy.as_deref()), (Status::Delivered, TlsUse::Starttls, Some("requiretls")), "{x:#?}");
        let y = one(&o, "y@b131.test");
        assert_eq!((y.status, y.policy.as_deref()), (Status::Delivered, Some("dane")), "{y:#?}");
        assert!(y.policy_sources.contains(&"requiretls"), "{y:#?}");
        let z = one(&o, "z@a131.test");
        assert_eq!((z.status, z.policy.as_deref()), (Status::Delivered, Some("opportunistic")), "{z:#?}");
        let (sa, sb) = (sink_stats(a).await, sink_stats(b).await);
        assert_eq!((sa.messages, sa.requiretls_messages), (2, 1), "only m1 carried REQUIRETLS to a");
        assert_eq!((sb.messages, sb.requiretls_messages), (1, 1));
        dns.shutdown().await;
    })
    .await;
}

/// Each missing condition bounces with 5.7.30 and names itself, and nothing is sent:
/// - the MX answer is not DNSSEC-authenticated (validation off) and no MTA-STS policy lists it;
/// - the certificate cannot be verified (no trusted root, no DANE);
/// - the next hop does not advertise REQUIRETLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_missing_condition_bounces_with_5_7_30() {
    bounded(async {
        let net = 132;
        let ports = free_ports(net);
        let trusted = pki(&["mx.a132.test", "mx.c132.test"]);
        let untrusted = pki(&["mx.b132.test"]);
        let a = sink(ip(net, 1), ports, &trusted.identity, requiretls_sink).await;
        let b = sink(ip(net, 2), ports, &untrusted.identity, requiretls_sink).await;
        let c = sink(ip(net, 3), ports, &trusted.identity, |_| {}).await;
        let mut z = ZoneBuilder::new("test.").dnssec();
        z.mx("a132.test", 10, "mx.a132.test").a("mx.a132.test", ip(net, 1));
        z.mx("b132.test", 10, "mx.b132.test").a("mx.b132.test", ip(net, 2));
        z.mx("c132.test", 10, "mx.c132.test").a("mx.c132.test", ip(net, 3));
        let dns = dns(net, z).await;

        // Without validation: nothing is authenticated, so a132 fails the first condition.
        let (o, _) = deliver(engine_config(&dns, ports, &[&trusted]), vec![tagged("m1", "x@a132.test", MessageTls::RequireTls)]).await;
        let x = one(&o, "x@a132.test");
        assert_eq!((x.status, x.enhanced.as_deref()), (Status::Bounced, Some("5.7.30")), "{x:#?}");
        assert!(x.reply.contains("REQUIRETLS") && x.reply.contains("DNSSEC"), "{}", x.reply);

        let msgs = vec![tagged("m2", "y@b132.test", MessageTls::RequireTls), tagged("m3", "z@c132.test", MessageTls::RequireTls)];
        let (o, _) = deliver(validating(&dns, ports, &[&trusted]), msgs).await;
        let y = one(&o, "y@b132.test");
        assert_eq!((y.status, y.enhanced.as_deref()), (Status::Bounced, Some("5.7.30")), "{y:#?}");
        assert!(y.reply.contains("REQUIRETLS") && y.reply.contains("certificate"), "{}", y.reply);
        let z = one(&o, "z@c132.test");
        assert_eq!((z.status, z.enhanced.as_deref()), (Status::Bounced, Some("5.7.30")), "{z:#?}");
        assert!(z.reply.contains("does not advertise REQUIRETLS"), "{}", z.reply);
        let (sa, sb, sc) = (sink_stats(a).await, sink_stats(b).await, sink_stats(c).await);
        assert_eq!((sa.messages, sb.messages, sc.messages), (0, 0, 0));
        dns.shutdown().await;
    })
    .await;
}

/// An MX host that is merely unreachable is no reason to bounce: the REQUIRETLS message is
/// deferred, to be retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_host_defers_a_requiretls_message() {
    bounded(async {
        let net = 133;
        let ports = free_ports(net);
        let mut z = ZoneBuilder::new("test.").dnssec();
        z.mx("a133.test", 10, "mx.a133.test").a("mx.a133.test", ip(net, 1));
        let dns = dns(net, z).await;
        let (o, _) = deliver(validating(&dns, ports, &[]), vec![tagged("m1", "x@a133.test", MessageTls::RequireTls)]).await;
        let x = one(&o, "x@a133.test");
        assert_eq!(x.status, Status::Deferred, "{x:#?}");
        dns.shutdown().await;
    })
    .await;
}

/// `TLS-Required: No` sets the receiver's policy aside: a `starttls-` host whose certificate
/// does not verify, which defers a plain message, gets this one with opportunistic TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_required_no_relaxes_to_opportunistic() {
    bounded(async {
        let net = 134;
        let ports = free_ports(net);
        let untrusted = pki(&["starttls-mx.a134.test"]);
        let s = sink(ip(net, 1), ports, &untrusted.identity, |_| {}).await;
        let mut z = ZoneBuilder::new("test.");
        z.mx("a134.test", 10, "starttls-mx.a134.test").a("starttls-mx.a134.test", ip(net, 1));
        let dns = dns(net, z).await;
        let msgs = vec![tagged("m1", "x@a134.test", MessageTls::Optional), msg("m2", &["y@a134.test"])];
        let (o, _) = deliver(engine_config(&dns, ports, &[]), msgs).await;
        let x = one(&o, "x@a134.test");
        assert_eq!((x.status, x.tls, x.policy.as_deref()), (Status::Delivered, TlsUse::Starttls, Some("tls-required-no")), "{x:#?}");
        let y = one(&o, "y@a134.test");
        assert_eq!(y.status, Status::Deferred, "{y:#?}");
        assert_eq!(sink_stats(s).await.messages, 1);
        dns.shutdown().await;
    })
    .await;
}
