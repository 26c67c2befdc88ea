//! DANE for one shard (RFC 7672): the TLSA records of each MX host port, looked up once per
//! TTL, and the verifying client config built from them.
//!
//! DANE applies only when the resolver validates DNSSEC, the destination's MX answer was
//! authenticated and so was the host's address answer (RFC 7672 §2.2.1–2.2.2); then
//! `_25._tcp.<host>` (and `_26._tcp.<host>` for the implicit-TLS port of an `smtps-` host) is
//! asked for. What it gives ([`PortDane`]) feeds the composed policy ([`crate::policy::Dane`]):
//! - usable records: a client config whose verifier checks the server against them
//!   ([`crate::tls::dane`]); its session store is its own, so a session resumed under DANE was
//!   authenticated by the same records;
//! - secure records none of which is usable: TLS without authentication, still mandatory;
//! - a failed or bogus lookup: that port is not used until a lookup succeeds;
//! - no records, or an insecure answer: no DANE.
//!
//! Answers are kept per shard for their TTL (clamped to the resolver's bounds; failures for the
//! resolver's temporary-failure TTL), so a warm burst pays no TLSA lookup. A refresh that finds
//! the same records keeps the existing config and its sessions. Lookups are single-flight per
//! host and port: a host belongs to this shard's destinations, so a map on the shard suffices.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::shard::Shard;
use crate::policy::{self, Prefix};
use crate::resolve::{Destination, MxHost, TlsaAnswer};
use crate::tls::dane::{DaneAuth, Tlsa};
use crate::tls::TicketStore;

/// Most (host, port) answers kept per shard; past it the expired go, then all.
const MAX_ENTRIES: usize = 50_000;

/// What DANE says of one port of one MX host.
#[derive(Clone, Default)]
pub(crate) enum PortDane {
    /// No DANE for this port.
    #[default]
    None,
    /// Usable TLSA records: connect with this config, whose verifier checks them.
    Usable(Arc<DaneClient>),
    /// Secure TLSA records, none usable: TLS mandatory, not authenticated.
    Unusable,
    /// The lookup failed or was bogus (the reason, for the log).
    Failed(String),
}

impl PortDane {
    /// The fact the policy composes from.
    pub(crate) fn fact(&self) -> policy::Dane {
        match self {
            PortDane::None => policy::Dane::None,
            PortDane::Usable(_) => policy::Dane::Usable,
            PortDane::Unusable => policy::Dane::Unusable,
            PortDane::Failed(_) => policy::Dane::Failed,
        }
    }

    /// Why the lookup failed, if it did.
    pub(crate) fn failure(&self) -> Option<&str> {
        match self {
            PortDane::Failed(why) => Some(why),
            _ => None,
        }
    }

    /// The usable records, when there are some.
    pub(crate) fn records(&self) -> Option<&[Tlsa]> {
        match self {
            PortDane::Usable(c) => Some(c.auth.records()),
            _ => None,
        }
    }

    /// The verifying client config, when the records are usable.
    pub(crate) fn config(&self) -> Option<crate::pool::DaneConfig> {
        match self {
            PortDane::Usable(c) => Some(crate::pool::DaneConfig(c.config.clone(), Some(c.sources.clone()))),
            _ => None,
        }
    }
}

/// DANE for the ports of one MX host.
#[derive(Clone, Default)]
pub(crate) struct HostDane {
    /// Port 25 (`_25._tcp.<host>`).
    pub smtp: PortDane,
    /// Port 26 of an `smtps-` host (`_26._tcp.<host>`).
    pub smtps: PortDane,
}

/// The usable TLSA records of one host port and the client config that checks them.
pub(crate) struct DaneClient {
    /// The records (usable ones, as the verifier holds them).
    pub auth: Arc<DaneAuth>,
    /// rustls config with the DANE verifier and its own session store.
    pub config: Arc<rustls::ClientConfig>,
    /// Its copies for egress sources, each with a session store of its own.
    pub sources: Arc<crate::pool::DaneSources>,
}

struct Entry {
    value: PortDane,
    /// The records as published, to tell whether a refresh changed anything.
    records: Vec<Tlsa>,
    expires: Instant,
}

/// A shard's TLSA answers and lookups under way.
#[derive(Default)]
pub(super) struct DaneShard {
    entries: RefCell<HashMap<(String, u16), Entry>>,
    inflight: RefCell<HashMap<(String, u16), tokio::sync::watch::Receiver<bool>>>,
}

/// DANE for `host` of `dest` (module docs); nothing when DANE cannot apply.
pub(super) async fn for_host(shard: &Rc<Shard>, dest: &Destination, host: &MxHost) -> HostDane {
    if !shard.cfg.dane || !shard.cfg.resolver.validate_dnssec || !dest.dnssec || !host.dnssec {
        return HostDane::default();
    }
    let smtp = port(shard, &host.name, 25).await;
    let smtps = if policy::prefix_of(&host.name) == Prefix::Smtps { port(shard, &host.name, 26).await } else { PortDane::None };
    HostDane { smtp, smtps }
}

/// The answer for `host`'s `port`, from the shard's cache or DNS (one lookup at a time).
async fn port(shard: &Rc<Shard>, host: &str, port: u16) -> PortDane {
    let key = (host.to_string(), port);
    loop {
        if let Some(e) = shard.dane.entries.borrow().get(&key) {
            if Instant::now() < e.expires {
                return e.value.clone();
            }
        }
        let waiting = shard.dane.inflight.borrow().get(&key).cloned();
        match waiting {
            Some(mut done) => {
                // Another worker is asking; its answer lands in the cache. If it was cancelled
                // (the channel closed), ask ourselves on the next turn.
                let _ = done.wait_for(|d| *d).await;
                if let Some(e) = shard.dane.entries.borrow().get(&key) {
                    return e.value.clone();
                }
            }
            None => return lookup(shard, key).await,
        }
    }
}

/// Ask DNS for `key`'s TLSA records and keep the answer.
async fn lookup(shard: &Rc<Shard>, key: (String, u16)) -> PortDane {
    let (tx, rx) = tokio::sync::watch::channel(false);
    shard.dane.inflight.borrow_mut().insert(key.clone(), rx);
    // Removes the in-flight mark however this ends (also if the worker is dropped).
    let _guard = Inflight { shard, key: &key };
    shard.counters.tlsa_lookups.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let answer = shard.resolver.tlsa(&key.0, key.1).await;
    let cfg = &shard.cfg.resolver;
    let clamp = |ttl: u32| Duration::from_secs(u64::from(ttl)).clamp(cfg.min_ttl, cfg.max_ttl);
    let (records, lifetime) = match &answer {
        TlsaAnswer::Secure(rs, ttl) => (
            rs.iter()
                .map(|t| Tlsa {
                    usage: t.cert_usage.into(),
                    selector: t.selector.into(),
                    matching: t.matching.into(),
                    data: t.cert_data.clone(),
                })
                .collect(),
            clamp(*ttl),
        ),
        TlsaAnswer::SecureNone | TlsaAnswer::Insecure => (Vec::new(), cfg.negative_ttl),
        TlsaAnswer::Failed(_) => (Vec::new(), cfg.temp_fail_ttl),
    };
    let previous = shard.dane.entries.borrow_mut().remove(&key);
    let value = match answer {
        TlsaAnswer::Secure(..) => match previous {
            // The same records: keep the config, and with it the sessions it holds.
            Some(p) if p.records == records && matches!(p.value, PortDane::Usable(_) | PortDane::Unusable) => p.value,
            _ => build(shard, &key.0, &records),
        },
        TlsaAnswer::SecureNone | TlsaAnswer::Insecure => PortDane::None,
        TlsaAnswer::Failed(why) => {
            shard.counters.tlsa_failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(host = %key.0, port = key.1, error = %why, "TLSA lookup failed: the host port is not used until it succeeds");
            PortDane::Failed(why)
        }
    };
    let mut entries = shard.dane.entries.borrow_mut();
    if entries.len() >= MAX_ENTRIES {
        let now = Instant::now();
        entries.retain(|_, e| e.expires > now);
        if entries.len() >= MAX_ENTRIES {
            entries.clear();
        }
    }
    entries.insert(key.clone(), Entry { value: value.clone(), records, expires: Instant::now() + lifetime });
    drop(entries);
    let _ = tx.send(true);
    value
}

/// The verifying config for `host`'s usable records, or [`PortDane::Unusable`] when none is.
fn build(shard: &Shard, host: &str, records: &[Tlsa]) -> PortDane {
    // The TLSA base domain only as the DANE-TA reference identifier: the next-hop domain is a
    // MAY (RFC 7672 §3.2.2), and leaving it out lets every domain hosted on this MX share one
    // config and its sessions.
    let Some(auth) = DaneAuth::new(records, host, None) else { return PortDane::Unusable };
    let auth = Arc::new(auth);
    let tickets = shard.cfg.tickets_per_host.max(shard.cfg.max_conns_per_dest);
    let store = Arc::new(TicketStore::new(1, tickets, 1));
    match crate::tls::dane::client_config(auth.clone(), shard.cfg.kx, Some(store)) {
        Ok(config) => {
            shard.counters.dane_configs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let sources = Arc::new(crate::pool::DaneSources::new(tickets));
            PortDane::Usable(Arc::new(DaneClient { auth, config, sources }))
        }
        Err(e) => PortDane::Failed(format!("cannot build the DANE client for {host}: {e}")),
    }
}

struct Inflight<'a> {
    shard: &'a Shard,
    key: &'a (String, u16),
}

impl Drop for Inflight<'_> {
    fn drop(&mut self) {
        self.shard.dane.inflight.borrow_mut().remove(self.key);
    }
}
