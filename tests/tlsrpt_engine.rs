//! What the delivery engine tells TLS-RPT (RFC 8460), end to end over loopback: real
//! sessions to sinks under DANE, an MX prefix and no policy, counted per policy domain and
//! read back as the JSON the day's report will hold.

mod common;

use std::sync::Arc;

use common::engine::*;
use mxpipe::dnsserver::ZoneBuilder;
use mxpipe::outcome::Status;
use mxpipe::tls::dane::Tlsa;
use mxpipe::tlsrpt::{Limits, TlsRpt};
use serde_json::Value;

/// The pending report's `policies` for `domain`, as JSON.
fn policies(t: &TlsRpt, domain: &str) -> Vec<Value> {
    let days = t.pending(domain);
    assert_eq!(days.len(), 1, "{domain}: one day counted");
    let v = serde_json::to_value(&days[0]).unwrap();
    v["policies"].as_array().unwrap().clone()
}

/// One policy's summary and failure details.
fn counts(p: &Value) -> (u64, u64, Vec<(String, u64)>) {
    let s = &p["summary"];
    let details = p["failure-details"]
        .as_array()
        .map(|d| d.iter().map(|f| (f["result-type"].as_str().unwrap().to_string(), f["failed-session-count"].as_u64().unwrap())).collect())
        .unwrap_or_default();
    (s["total-successful-session-count"].as_u64().unwrap(), s["total-failure-session-count"].as_u64().unwrap(), details)
}

/// A DANE success (policy-type tlsa with the records), a DANE mismatch (tlsa, a failure with
/// the verifier's result type), a `starttls-` host without STARTTLS (no-policy-found under the
/// mx-prefix convention, starttls-not-supported) and a plain domain's opportunistic TLS
/// (no-policy-found, a success).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_counted_under_the_policy_that_applied() {
    bounded(async {
        let net = 121;
        let ports = free_ports(net);
        let cert = pki(&["mx.a121.test", "mx.b121.test", "mx.d121.test"]);
        let other = pki(&["x.test"]);
        let tls_sink = sink(ip(net, 1), ports, &cert.identity, |_| {}).await;
        let clear_sink = sink(ip(net, 2), ports, &cert.identity, no_starttls).await;
        let mut z = ZoneBuilder::new("test.").dnssec();
        z.mx("a121.test", 10, "mx.a121.test").a("mx.a121.test", ip(net, 1));
        z.mx("b121.test", 10, "mx.b121.test").a("mx.b121.test", ip(net, 1));
        z.mx("c121.test", 10, "starttls-mx.c121.test").a("starttls-mx.c121.test", ip(net, 2));
        z.mx("d121.test", 10, "mx.d121.test").a("mx.d121.test", ip(net, 1));
        let good = Tlsa::for_cert(&cert.identity.chain[0], 3, 1, 1).unwrap();
        let bad = Tlsa::for_cert(&other.identity.chain[0], 3, 1, 1).unwrap();
        for (name, t) in [("_25._tcp.mx.a121.test", &good), ("_25._tcp.mx.b121.test", &bad)] {
            z.tlsa(name, t.usage, t.selector, t.matching, &t.data);
        }
        let dns = dns(net, z).await;

        let rpt = Arc::new(TlsRpt::open(None, Limits::default()).unwrap());
        let mut cfg = engine_config(&dns, ports, &[]);
        cfg.resolver.validate_dnssec = true;
        cfg.resolver.trust_anchor = Some(dns.trust_anchors());
        cfg.tlsrpt = Some(rpt.clone());
        let msgs = vec![msg("m1", &["x@a121.test"]), msg("m2", &["y@b121.test"]), msg("m3", &["z@c121.test"]), msg("m4", &["w@d121.test"])];
        let (o, _) = deliver(cfg, msgs).await;
        let status: Vec<Status> = ["x@a121.test", "y@b121.test", "z@c121.test", "w@d121.test"].iter().map(|r| one(&o, r).status).collect();
        assert_eq!(status, [Status::Delivered, Status::Deferred, Status::Deferred, Status::Delivered]);

        let a = policies(&rpt, "a121.test");
        assert_eq!(a.len(), 1, "{a:#?}");
        assert_eq!(a[0]["policy"]["policy-type"], "tlsa");
        assert_eq!(a[0]["policy"]["policy-domain"], "a121.test");
        assert_eq!(a[0]["policy"]["policy-string"], serde_json::json!([good.to_string()]));
        assert_eq!(counts(&a[0]), (1, 0, vec![]));

        let b = policies(&rpt, "b121.test");
        assert_eq!(b[0]["policy"]["policy-type"], "tlsa");
        let (ok, failed, details) = counts(&b[0]);
        assert_eq!((ok, failed), (0, 1), "{b:#?}");
        assert_eq!(details.len(), 1);
        assert_eq!(b[0]["failure-details"][0]["receiving-mx-hostname"], "mx.b121.test");
        assert_eq!(b[0]["failure-details"][0]["receiving-ip"], ip(net, 1).to_string());

        let c = policies(&rpt, "c121.test");
        assert_eq!(c[0]["policy"]["policy-type"], "no-policy-found");
        assert_eq!(c[0]["policy"]["policy-string"], serde_json::json!(["mx-prefix: starttls-"]));
        assert_eq!(counts(&c[0]), (0, 1, vec![("starttls-not-supported".into(), 1)]));

        let d = policies(&rpt, "d121.test");
        assert_eq!(d[0]["policy"]["policy-type"], "no-policy-found");
        assert_eq!(counts(&d[0]), (1, 0, vec![]));

        assert_eq!((sink_stats(tls_sink).await.messages, sink_stats(clear_sink).await.messages), (2, 0));
        dns.shutdown().await;
    })
    .await;
}
