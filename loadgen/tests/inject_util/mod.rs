//! Shared by the injection-load tests: a sink on an ephemeral loopback port, and an
//! [`InjectConfig`] for it with the settings most tests use.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use mxpipe::sink::{PortKind, Sink, SinkConfig};
use mxpipe::tls::{self, GeneratedPki, ServerResumption};
use mxpipe_loadgen::inject::{Domains, Door, InjectConfig, Plan, SizeDist};

/// A sink on 127.0.0.1, STARTTLS port only (ephemeral), after `adjust`.
pub async fn sink(adjust: impl FnOnce(&mut SinkConfig)) -> (Sink, GeneratedPki) {
    let pki = tls::certs::generate(&["localhost".into()]).unwrap();
    let mut c = SinkConfig::new(tls::server_config(pki.identity.clone(), ServerResumption::default()).unwrap());
    c.starttls_port = Some(0);
    c.implicit_port = None;
    adjust(&mut c);
    (Sink::start(c).await.unwrap(), pki)
}

/// The sink's STARTTLS port.
pub fn port(s: &Sink) -> u16 {
    s.addr(PortKind::StartTls).unwrap().port()
}

/// A plain SMTP injection of `count` messages, `c` connections, into `port`.
pub fn smtp(port: u16, count: u64, c: usize) -> InjectConfig {
    let sizes = SizeDist::fixed(1500);
    InjectConfig {
        host: "127.0.0.1".into(),
        port,
        door: Door::Smtp { ehlo_name: "inject.test".into(), starttls: None, auth: None, bdat: false },
        concurrency: c,
        count: Some(count),
        duration: Some(Duration::from_secs(60)),
        messages_per_conn: None,
        timeout: Duration::from_secs(10),
        plan: Arc::new(Plan::new("app@src.test", "u@example.test", Domains::Single, 1, &sizes).unwrap()),
        sizes,
        domains: 1,
    }
}

/// `cfg` with another plan.
pub fn with_plan(mut cfg: InjectConfig, domains: Domains, rcpts: usize, sizes: SizeDist) -> InjectConfig {
    cfg.domains = match &domains {
        Domains::Single => 1,
        Domains::Numbered(n) => *n,
        Domains::List(l) => l.len(),
    };
    cfg.plan = Arc::new(Plan::new("app@src.test", "u@example.test", domains, rcpts, &sizes).unwrap());
    cfg.sizes = sizes;
    cfg
}

/// Every message accounted for exactly once.
pub fn assert_balanced(r: &mxpipe_loadgen::inject::InjectReport) {
    assert_eq!(r.attempted, r.acked + r.refused_temp + r.refused_perm + r.lost, "{}", r.to_table());
}
