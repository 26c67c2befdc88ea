//! DANE (RFC 7672) in the delivery engine, end to end over loopback: a DNSSEC-signed zone from
//! `mxpipe::dnsserver` with MX, A and TLSA records, a validating resolver that trusts the
//! zone's key, and sinks as MX hosts whose certificates no WebPKI root vouches for (the engine
//! is given no extra roots), so only DANE can authenticate them. One test per case; each test
//! has its own 127.61.<net>.x addresses (nets 101 and up), ports and servers.

mod common;

use common::engine::*;
use mxpipe::dnsserver::{DnsServer, ZoneBuilder};
use mxpipe::engine::{EngineConfig, PortMap};
use mxpipe::outcome::{Status, TlsUse};
use mxpipe::tls::dane::Tlsa;
use mxpipe::tls::Identity;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// An engine that validates DNSSEC against the test server's keys and trusts no extra root.
fn dane_config(dns: &DnsServer, ports: PortMap) -> EngineConfig {
    let mut cfg = engine_config(dns, ports, &[]);
    cfg.resolver.validate_dnssec = true;
    cfg.resolver.trust_anchor = Some(dns.trust_anchors());
    cfg
}

/// Publish `t` at `name`.
fn tlsa(z: &mut ZoneBuilder, name: &str, t: &Tlsa) {
    z.tlsa(name, t.usage, t.selector, t.matching, &t.data);
}

fn record(cert: &CertificateDer<'_>, usage: u8, selector: u8, matching: u8) -> Tlsa {
    Tlsa::for_cert(cert, usage, selector, matching).unwrap()
}

/// A self-signed certificate for `name` that expired in 2001: only DANE-EE accepts it.
fn expired_identity(name: &str) -> Identity {
    let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
    params.not_before = rcgen::date_time_ymd(2000, 1, 1);
    params.not_after = rcgen::date_time_ymd(2001, 1, 1);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    Identity { chain: vec![cert.der().clone()], key: PrivateKeyDer::try_from(key.serialize_der()).unwrap() }
}

/// DANE-EE (3 1 1 and 3 0 1) authenticates certificates WebPKI would refuse: one for another
/// name from an untrusted CA, and a self-signed one long expired (names and dates are
/// ignored, §3.1.1). The plan is decided by DANE and the connection uses STARTTLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dane_ee_authenticates_what_webpki_would_refuse() {
    bounded(async {
        let net = 101;
        let ports = free_ports(net);
        let other = pki(&["not-the-mx.elsewhere.test"]);
        let old = expired_identity("also-wrong.test");
        let a = sink(ip(net, 1), ports, &other.identity, |_| {}).await;
        let b = sink(ip(net, 2), ports, &old, |_| {}).await;
        let mut z = ZoneBuilder::new("test.").dnssec();
        z.mx("a101.test", 10, "mx.a101.test").a("mx.a101.test", ip(net, 1));
        z.mx("b101.test", 10, "mx.b101.test").a("mx.b101.test", ip(net, 2));
        tlsa(&mut z, "_25._tcp.mx.a101.test", &record(&other.identity.chain[0], 3, 1, 1));
        tlsa(&mut z, "_25._tcp.mx.b101.test", &record(&old.chain[0], 3, 0, 1));
        let dns = dns(net, z).await;

        let (o, _) = deliver(dane_config(&dns, ports), vec![msg("m1", &["x@a101.test"]), msg("m2", &["y@b101.test"])]).await;
        for rcpt in ["x@a101.test", "y@b101.test"] {
            let r = one(&o, rcpt);
            assert_eq!(
                (r.status, r.tls, r.policy.as_deref(), r.dnssec),
                (Status::Delivered, TlsUse::Starttls, Some("dane"), true),
                "{r:#?}"
            );
            assert_eq!(r.policy_sources, vec!["dane"]);
        }
        assert_eq!((sink_stats(a).await.messages, sink_stats(b).await.messages), (1, 1));
        dns.shutdown().await;
    })
    .await;
}

/// DANE-EE that matches no presented certificate: deferred, nothing sent, and the reason
/// names DANE; an unsigned-looking copy of the same domain without TLSA is delivered
/// opportunistically to the same sink (control: the sink itself is fine).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dane_ee_mismatch_defers_and_sends_nothing() {
    bounded(async {
        let net = 102;
        let ports = free_ports(net);
        let served = pki(&["mx.a102.test"]);
        let published = pki(&["mx.a102.test"]);
        let s = sink(ip(net, 1), ports, &served.identity, |_| {}).await;
        let mut z = ZoneBuilder::new("test.").dnssec();
        z.mx("a102.test", 10, "mx.a102.test").a("mx.a102.test", ip(net, 1));
        z.mx("c102.test", 10, "mx.c102.test").a("mx.c102.test", ip(net, 1));
        tlsa(&mut z, "_25._tcp.mx.a102.test", &record(&published.identity.chain[0], 3, 1, 1));
        let dns = dns(net, z).await;

        let (o, _) = deliver(dane_config(&dns, ports), vec![msg("m1", &["x@a102.test"]), msg("m2", &["y@c102.test"])]).await;
        let x = one(&o, "x@a102.test");
        assert_eq!((x.status, x.policy.as_deref()), (Status::Deferred, None), "{x:#?}");
        assert!(x.reply.to_ascii_lowercase().contains("dane"), "{}", x.reply);
        let y = one(&o, "y@c102.test");
        assert_eq!((y.status, y.policy.as_deref()), (Status::Delivered, Some("opportunistic")), "{y:#?}");
        assert_eq!(sink_stats(s).await.messages, 1, "only the control message");
        dns.shutdown().await;
    })
    .await;
}

/// DANE-TA (2 0 1 of the issuing CA, which the server sends in its chain): delivered when the
/// chain leads to that CA and the leaf names the MX host; deferred when the records name
/// another CA, and when the chain is right but the leaf is for another name (§3.2.2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dane_ta_checks_the_chain_and_the_name() {
    bounded(async {
        let net = 103;
        let ports = free_ports(net);
        let good = pki(&["mx.a103.test"]);
        let wrong_name = pki(&["mx.elsewhere.test"]);
        let other_ca = pki(&["mx.b103.test"]);
        let a = sink(ip(net, 1), ports, &good.identity, |_| {}).await;
        let b = sink(ip(net, 2), ports, &good.identity, |_| {}).await;
        let c = sink(ip(net, 3), ports, &wrong_name.identity, |_| {}).await;
        let mut z = ZoneBuilder::new("test.").dnssec();
        z.mx("a103.test", 10, "mx.a103.test").a("mx.a103.test", ip(net, 1));
        z.mx("b103.test", 10, "mx.b103.test").a("mx.b103.test", ip(net, 2));
        z.mx("c103.test", 10, "mx.c103.test").a("mx.c103.test", ip(net, 3));
        tlsa(&mut z, "_25._tcp.mx.a103.test", &record(&good.ca_der, 2, 0, 1));
        tlsa(&mut z, "_25._tcp.mx.b103.test", &record(&other_ca.ca_der, 2, 0, 1));
        tlsa(&mut z, "_25._tcp.mx.c103.test", &record(&wrong_name.ca_der, 2, 0, 1));
        let dns = dns(net, z).await;

        let msgs = vec![msg("m1", &["x@a103.test"]), msg("m2", &["y@b103.test"]), msg("m3", &["z@c103.test"])];
        let (o, _) = deliver(dane_config(&dns, ports), msgs).await;
        let x = one(&o, "x@a103.test");
        assert_eq!((x.status, x.policy.as_deref()), (Status::Delivered, Some("dane")), "{x:#?}");
        for rcpt in ["y@b103.test", "z@c103.test"] {
            let r = one(&o, rcpt);
            assert_eq!(r.status, Status::Deferred, "{r:#?}");
            assert!(r.reply.to_ascii_lowercase().contains("dane"), "{}", r.reply);
        }
        assert_eq!((sink_stats(a).await.messages, sink_stats(b).await.messages, sink_stats(c).await.messages), (1, 0, 0));
        dns.shutdown().await;
    })
    .await;
}

/// Secure TLSA records none of which is usable for SMTP (PKIX-EE 1 and PKIX-TA 0 usages):
/// TLS is still mandatory, without authentication (§2.2). A host with STARTTLS and an
/// untrusted certificate gets the message; one without STARTTLS gets nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_tlsa_still_requires_tls() {
    bounded(async {
        let net = 104;
        let ports = free_ports(net);
        let cert = pki(&["mx.a104.test"]);
        let tls_sink = sink(ip(net, 1), ports, &cert.identity, |_| {}).await;
        let clear_sink = sink(ip(net, 2), ports, &cert.identity, no_starttls).await;
        let mut z = ZoneBuilder::new("test.").dnssec();
        z.mx("a104.test", 10, "mx.a104.test").a("mx.a104.test", ip(net, 1));
        z.mx("b104.test", 10, "mx.b104.test").a("mx.b104.test", ip(net, 2));
        for host in ["mx.a104.test", "mx.b104.test"] {
            let name = format!("_25._tcp.{host}");
            // The right digests under usages SMTP cannot use.
            tlsa(&mut z, &name, &Tlsa { usage: 1, ..record(&cert.identity.chain[0], 3, 1, 1) });
            tlsa(&mut z, &name, &Tlsa { usage: 0, ..record(&cert.ca_der, 2, 0, 1) });
        }
        let dns = dns(net, z).await;

        let (o, _) = deliver(dane_config(&dns, ports), vec![msg("m1", &["x@a104.test"]), msg("m2", &["y@b104.test"])]).await;
        let x = one(&o, "x@a104.test");
        assert_eq!((x.status, x.tls, x.policy.as_deref()), (Status::Delivered, TlsUse::Starttls, Some("dane")), "{x:#?}");
        let y = one(&o, "y@b104.test");
        assert_eq!(y.status, Status::Deferred, "{y:#?}");
        assert!(y.reply.contains("STARTTLS"), "{}", y.reply);
        assert_eq!((sink_stats(tls_sink).await.messages, sink_stats(clear_sink).await.messages), (1, 0));
        dns.shutdown().await;
    })
    .await;
}

/// DANE takes precedence over MTA-STS (RFC 8461 §2): an `enforce` policy that lists another
/// host, with a certificate WebPKI refuses, would defer; usable TLSA records for the MX host
/// deliver it, authenticated by DANE, with both sources recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dane_takes_precedence_over_mta_sts() {
    bounded(async {
        let net = 105;
        let web = pki(&["*.a105.test", "*.b105.test"]);
        let untrusted = pki(&["mx.a105.test", "mx.b105.test"]);
        let mut ports = free_ports(net);
        let ps = PolicyServer::start((policy_ip(net), 0).into(), web.identity.clone(), std::time::Duration::ZERO, |_| {
            text_plain(policy("enforce", &["listed.elsewhere.test"]))
        })
        .await;
        ports.https = ps.addr.port();
        let s = sink(ip(net, 1), ports, &untrusted.identity, |_| {}).await;
        let mut z = ZoneBuilder::new("test.").dnssec();
        for d in ["a105.test", "b105.test"] {
            z.mx(d, 10, &format!("mx.{d}")).a(&format!("mx.{d}"), ip(net, 1));
            z.txt(&format!("_mta-sts.{d}"), "v=STSv1; id=1").a(&format!("mta-sts.{d}"), policy_ip(net));
        }
        // Only a105 publishes TLSA.
        tlsa(&mut z, "_25._tcp.mx.a105.test", &record(&untrusted.identity.chain[0], 3, 1, 1));
        let dns = dns(net, z).await;

        let mut cfg = dane_config(&dns, ports);
        cfg.extra_roots = vec![web.ca_der.clone()];
        let (o, _) = deliver(cfg, vec![msg("m1", &["x@a105.test"]), msg("m2", &["y@b105.test"])]).await;
        let x = one(&o, "x@a105.test");
        assert_eq!((x.status, x.policy.as_deref()), (Status::Delivered, Some("dane")), "{x:#?}");
        assert_eq!(x.policy_sources, vec!["mta-sts", "dane"]);
        let y = one(&o, "y@b105.test");
        assert_eq!(y.status, Status::Deferred, "{y:#?}");
        assert!(y.reply.contains("MTA-STS"), "{}", y.reply);
        assert_eq!(sink_stats(s).await.messages, 1);
        ps.stop().await;
        dns.shutdown().await;
    })
    .await;
}

/// The implicit-TLS port of an `smtps-` host has its own records (`_26._tcp`): delivered over
/// implicit TLS authenticated by them. When only `_25._tcp` matches, port 26 fails its DANE
/// check and the host's port 25 carries the message, still under DANE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dane_on_port_26_of_an_smtps_host() {
    bounded(async {
        let net = 106;
        let ports = free_ports(net);
        let cert = pki(&["smtps-mx.a106.test", "smtps-mx.b106.test"]);
        let unrelated = pki(&["x.test"]);
        let a = sink(ip(net, 1), ports, &cert.identity, |_| {}).await;
        let b = sink(ip(net, 2), ports, &cert.identity, |_| {}).await;
        let mut z = ZoneBuilder::new("test.").dnssec();
        z.mx("a106.test", 10, "smtps-mx.a106.test").a("smtps-mx.a106.test", ip(net, 1));
        z.mx("b106.test", 10, "smtps-mx.b106.test").a("smtps-mx.b106.test", ip(net, 2));
        tlsa(&mut z, "_26._tcp.smtps-mx.a106.test", &record(&cert.identity.chain[0], 3, 1, 1));
        tlsa(&mut z, "_26._tcp.smtps-mx.b106.test", &record(&unrelated.identity.chain[0], 3, 1, 1));
        tlsa(&mut z, "_25._tcp.smtps-mx.b106.test", &record(&cert.identity.chain[0], 3, 1, 1));
        let dns = dns(net, z).await;

        let (o, _) = deliver(dane_config(&dns, ports), vec![msg("m1", &["x@a106.test"]), msg("m2", &["y@b106.test"])]).await;
        let x = one(&o, "x@a106.test");
        assert_eq!((x.status, x.tls, x.policy.as_deref()), (Status::Delivered, TlsUse::Implicit, Some("dane")), "{x:#?}");
        assert_eq!(x.policy_sources, vec!["smtps-prefix", "dane"]);
        let y = one(&o, "y@b106.test");
        assert_eq!((y.status, y.tls, y.policy.as_deref()), (Status::Delivered, TlsUse::Starttls, Some("dane")), "{y:#?}");
        assert_eq!((sink_stats(a).await.messages, sink_stats(b).await.messages), (1, 1));
        dns.shutdown().await;
    })
    .await;
}

/// Without DNSSEC validation no answer is authenticated, so TLSA records are not trusted
/// (RFC 7672 §2.2): a record that matches nothing does not stop delivery, and none is asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_validation_tlsa_is_not_used() {
    bounded(async {
        let net = 107;
        let ports = free_ports(net);
        let cert = pki(&["mx.a107.test"]);
        let other = pki(&["mx.a107.test"]);
        let s = sink(ip(net, 1), ports, &cert.identity, |_| {}).await;
        let mut z = ZoneBuilder::new("test.").dnssec();
        z.mx("a107.test", 10, "mx.a107.test").a("mx.a107.test", ip(net, 1));
        tlsa(&mut z, "_25._tcp.mx.a107.test", &record(&other.identity.chain[0], 3, 1, 1));
        let dns = dns(net, z).await;

        let (o, stats) = deliver(engine_config(&dns, ports, &[]), vec![msg("m1", &["x@a107.test"])]).await;
        let x = one(&o, "x@a107.test");
        assert_eq!((x.status, x.policy.as_deref(), x.dnssec), (Status::Delivered, Some("opportunistic"), false), "{x:#?}");
        assert_eq!(stats.dns_queries, 4, "MX, A, AAAA and the _mta-sts TXT, no TLSA: {stats:?}");
        assert_eq!(stats.tlsa_lookups, 0);
        assert_eq!(sink_stats(s).await.messages, 1);
        dns.shutdown().await;
    })
    .await;
}

/// A warm burst to DANE domains pays no extra lookup: the second burst in the same engine
/// asks the DNS server nothing (MX, addresses and TLSA all cached by their TTLs), and its
/// connections resume the sessions the DANE verifier accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_burst_pays_no_tlsa_lookup() {
    bounded(async {
        let net = 108;
        let ports = free_ports(net);
        let cert = pki(&["mx.a108.test"]);
        let s = sink(ip(net, 1), ports, &cert.identity, |_| {}).await;
        let mut z = ZoneBuilder::new("test.").dnssec();
        z.mx("a108.test", 10, "mx.a108.test").a("mx.a108.test", ip(net, 1));
        tlsa(&mut z, "_25._tcp.mx.a108.test", &record(&cert.identity.chain[0], 3, 1, 1));
        let dns = std::sync::Arc::new(dns(net, z).await);

        let mut cfg = dane_config(&dns, ports);
        cfg.idle_timeout = std::time::Duration::ZERO;
        let d = dns.clone();
        let ((first, second, cold, warm), stats) = with_engine(cfg, move |engine, rx| {
            let before = d.queries();
            engine.submit(msg("m1", &["x@a108.test"])).unwrap();
            let first = recv(rx, 1);
            let cold = d.queries() - before;
            let before = d.queries();
            engine.submit(msg("m2", &["y@a108.test"])).unwrap();
            let second = recv(rx, 1);
            (first, second, cold, d.queries() - before)
        })
        .await;
        for o in first.iter().chain(&second) {
            assert_eq!((o.status, o.policy.as_deref()), (Status::Delivered, Some("dane")), "{o:#?}");
        }
        assert!(cold >= 4, "MX, A, AAAA and TLSA (and DNSSEC keys) on the cold burst: {cold}");
        assert_eq!(warm, 0, "nothing asked on the warm burst");
        assert!(second[0].resumed, "the second connection resumed the DANE-verified session: {:#?}", second[0]);
        assert_eq!((stats.tls_full_handshakes, stats.tls_resumed_handshakes), (1, 1), "{stats:?}");
        assert_eq!((stats.tlsa_lookups, stats.dane_configs), (1, 1), "one lookup and one config for both bursts: {stats:?}");
        assert_eq!(sink_stats(s).await.messages, 2);
        std::sync::Arc::try_unwrap(dns).ok().unwrap().shutdown().await;
    })
    .await;
}

/// Insecure answers mean no DANE (RFC 7672 §2.2): an MX answer from an unsigned zone (proven
/// insecure by its signed parent's delegation without DS), and a signed MX answer whose host
/// lives in that unsigned zone, are both delivered without DANE, though TLSA records that
/// match nothing are published for them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insecure_mx_or_host_means_no_dane() {
    bounded(async {
        let net = 109;
        let ports = free_ports(net);
        let cert = pki(&["mx.plain.test"]);
        let other = pki(&["mx.plain.test"]);
        let s = sink(ip(net, 1), ports, &cert.identity, |_| {}).await;
        let mut parent = ZoneBuilder::new("test.").dnssec();
        parent.mx("a109.test", 10, "mx.plain.test");
        let mut child = ZoneBuilder::new("plain.test.");
        child.mx("b109.plain.test", 10, "mx.plain.test").a("mx.plain.test", ip(net, 1));
        tlsa(&mut child, "_25._tcp.mx.plain.test", &record(&other.identity.chain[0], 3, 1, 1));
        let dns = DnsServer::start(vec![parent, child], std::net::SocketAddr::from((ip(net, 53), 0))).await.unwrap();

        let (o, _) = deliver(dane_config(&dns, ports), vec![msg("m1", &["x@a109.test"]), msg("m2", &["y@b109.plain.test"])]).await;
        let x = one(&o, "x@a109.test");
        assert_eq!((x.status, x.policy.as_deref(), x.dnssec), (Status::Delivered, Some("opportunistic"), true), "{x:#?}");
        let y = one(&o, "y@b109.plain.test");
        assert_eq!((y.status, y.policy.as_deref(), y.dnssec), (Status::Delivered, Some("opportunistic"), false), "{y:#?}");
        assert_eq!(sink_stats(s).await.messages, 2);
        dns.shutdown().await;
    })
    .await;
}

/// A TLSA answer whose signatures do not verify (bogus) is not "no DANE": the host is not
/// used and the message is deferred with the reason, nothing sent (RFC 7672 §2.2). The same
/// host without the bogus RRset, for another domain, is delivered under DANE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bogus_tlsa_defers() {
    bounded(async {
        let net = 110;
        let ports = free_ports(net);
        let cert = pki(&["mx.a110.test", "mx.b110.test"]);
        let s = sink(ip(net, 1), ports, &cert.identity, |_| {}).await;
        let mut z = ZoneBuilder::new("test.").dnssec();
        z.mx("a110.test", 10, "mx.a110.test").a("mx.a110.test", ip(net, 1));
        z.mx("b110.test", 10, "mx.b110.test").a("mx.b110.test", ip(net, 1));
        let good = record(&cert.identity.chain[0], 3, 1, 1);
        tlsa(&mut z, "_25._tcp.mx.a110.test", &good);
        tlsa(&mut z, "_25._tcp.mx.b110.test", &good);
        z.bogus("_25._tcp.mx.a110.test", hickory_proto::rr::RecordType::TLSA);
        let dns = dns(net, z).await;

        let (o, stats) = deliver(dane_config(&dns, ports), vec![msg("m1", &["x@a110.test"]), msg("m2", &["y@b110.test"])]).await;
        assert_eq!((stats.tlsa_lookups, stats.tlsa_failures), (2, 1), "{stats:?}");
        let x = one(&o, "x@a110.test");
        assert_eq!(x.status, Status::Deferred, "{x:#?}");
        assert!(x.reply.contains("TLSA") && x.reply.contains("DNSSEC"), "{}", x.reply);
        let y = one(&o, "y@b110.test");
        assert_eq!((y.status, y.policy.as_deref()), (Status::Delivered, Some("dane")), "{y:#?}");
        assert_eq!(sink_stats(s).await.messages, 1);
        dns.shutdown().await;
    })
    .await;
}

/// With egress sources, each source resumes only the DANE-verified sessions it got itself: a
/// second source's first connection to the same host is a full handshake (a ticket shown
/// from another address would let the receiver link the two), its second resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_egress_source_keeps_its_own_dane_sessions() {
    bounded(async {
        let net = 111;
        let ports = free_ports(net);
        let cert = pki(&["mx.a111.test"]);
        let s = sink(ip(net, 1), ports, &cert.identity, |_| {}).await;
        let mut z = ZoneBuilder::new("test.").dnssec();
        z.mx("a111.test", 10, "mx.a111.test").a("mx.a111.test", ip(net, 1));
        tlsa(&mut z, "_25._tcp.mx.a111.test", &record(&cert.identity.chain[0], 3, 1, 1));
        let dns = dns(net, z).await;
        let egress: mxpipe::egress::EgressConfig = toml::from_str(
            r#"
            default_pool = "c"
            [[source]]
            name = "c"
            address = "127.0.0.4"
            ehlo = "c.out.test"
            [[source]]
            name = "d"
            address = "127.0.0.5"
            ehlo = "d.out.test"
            [[pool]]
            name = "c"
            sources = [{ source = "c" }]
            [[pool]]
            name = "d"
            sources = [{ source = "d" }]
            "#,
        )
        .unwrap();
        let mut cfg = dane_config(&dns, ports);
        cfg.egress = Some(std::sync::Arc::new(mxpipe::egress::Egress::new(&egress).unwrap()));
        cfg.idle_timeout = std::time::Duration::ZERO;
        let (got, stats) = with_engine(cfg, move |engine, rx| {
            let mut got = Vec::new();
            for (id, pool) in [("m1", "c"), ("m2", "c"), ("m3", "d"), ("m4", "d")] {
                let mut m = msg(id, &[&format!("{id}@a111.test")]);
                m.pool = Some(pool.into());
                engine.submit(m).unwrap();
                got.extend(recv(rx, 1));
            }
            got
        })
        .await;
        for o in &got {
            assert_eq!((o.status, o.policy.as_deref()), (Status::Delivered, Some("dane")), "{o:#?}");
        }
        let resumed: Vec<(&str, bool)> = got.iter().map(|o| (o.source.as_deref().unwrap_or("-"), o.resumed)).collect();
        assert_eq!(resumed, [("c", false), ("c", true), ("d", false), ("d", true)], "{got:#?}");
        assert_eq!((stats.tls_full_handshakes, stats.tls_resumed_handshakes), (2, 2), "{stats:?}");
        assert_eq!(sink_stats(s).await.messages, 4);
        dns.shutdown().await;
    })
    .await;
}
