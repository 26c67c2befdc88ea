//! MTA-STS for one shard (RFC 8461 §5): which policy applies to a destination now, and fetching
//! new ones without holding up deliveries that already have one.
//!
//! The policies themselves live in the engine's [`PolicyState`](crate::policy::state::PolicyState)
//! (kept across restarts). For each resolution of a destination the shard looks at the
//! `_mta-sts` TXT record (asked again at most every [`TXT_TTL`]) and compares its `id` with the
//! cached policy's:
//! - same id, not near expiry: the cached policy, no HTTP;
//! - new id or near expiry, with a cached policy in force: the cached policy now, and a fetch
//!   in the background (the cached one stays in force if it fails, §5.1);
//! - no cached policy: the delivery waits for the fetch (bounded by its timeout); if it fails,
//!   the domain is treated as having no policy (§5) and the failure is counted;
//! - no TXT record: a cached policy stays in force until it lapses (§8.3 has senders keep it).
//!
//! Fetches are single-flight per domain: a domain belongs to one shard, so a map on the shard
//! (no lock) is enough. A failed fetch is not tried again for [`RETRY_AFTER_FAILURE`].

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::shard::Shard;
use crate::policy::mta_sts::{self, fetch::FetchConfig, StsPolicy};
use crate::policy::state::{unix_now, CachedSts};

/// How long a domain whose policy could not be fetched is left alone before the next try.
pub(super) const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(300);
/// Most domains remembered as failed (each a few dozen bytes); past it the oldest go.
const MAX_FAILED: usize = 10_000;
/// How long a `_mta-sts` TXT answer (an id, or none) is reused before the name is asked
/// again. The resolver has no TTL-bound cache for TXT, and asking once per delivery worker
/// would cost a DNS round trip per burst per domain; a policy change is seen within this.
const TXT_TTL: Duration = Duration::from_secs(300);
/// Most TXT answers kept per shard.
const MAX_TXT: usize = 100_000;

/// A shard's fetches under way and recent failures.
pub(super) struct StsShard {
    fetch: FetchConfig,
    /// Domain → the signal that its fetch ended.
    inflight: RefCell<HashMap<String, tokio::sync::watch::Receiver<bool>>>,
    /// Domain → until when not to fetch again.
    failed: RefCell<HashMap<String, Instant>>,
    /// Domain → its TXT record's id (or none), until when.
    txt: RefCell<HashMap<String, (Option<String>, Instant)>>,
}

impl StsShard {
    pub(super) fn new(fetch: FetchConfig) -> StsShard {
        StsShard { fetch, inflight: RefCell::default(), failed: RefCell::default(), txt: RefCell::default() }
    }
}

/// The MTA-STS policy in force for `domain`, fetching one if needed (module docs). `None`:
/// MTA-STS is off, the domain has none, or it could not be had.
pub(super) async fn policy_for(shard: &Rc<Shard>, domain: &str) -> Option<StsPolicy> {
    if !shard.cfg.policy.mta_sts {
        return None;
    }
    let state = shard.cfg.state.as_ref()?;
    let now = unix_now();
    let cached = state.sts(domain, now);
    let id = txt_id(shard, domain).await;
    let Some(id) = id else { return cached.map(|c| c.policy) };
    match cached {
        Some(c) if c.id == id && !c.due(now) => Some(c.policy),
        Some(c) => {
            if !recently_failed(shard, domain) && !shard.sts.inflight.borrow().contains_key(domain) {
                // Registered now, not when the spawned task first runs: the other workers of a
                // burst get here before it does, and each would start a refresh of its own.
                let done = begin_fetch(shard, domain);
                let (s, d) = (shard.clone(), domain.to_string());
                tokio::task::spawn_local(async move { fetch(&s, &d, id, done).await });
            }
            Some(c.policy)
        }
        None => {
            if recently_failed(shard, domain) {
                return None;
            }
            let waiting = shard.sts.inflight.borrow().get(domain).cloned();
            match waiting {
                Some(mut done) => {
                    let _ = done.wait_for(|d| *d).await;
                }
                None => fetch(shard, domain, id, begin_fetch(shard, domain)).await,
            }
            state.sts(domain, unix_now()).map(|c| c.policy)
        }
    }
}

/// The id of `domain`'s `_mta-sts` TXT record, from the shard's short cache or DNS.
async fn txt_id(shard: &Shard, domain: &str) -> Option<String> {
    if let Some((id, until)) = shard.sts.txt.borrow().get(domain) {
        if Instant::now() < *until {
            return id.clone();
        }
    }
    let id = match shard.resolver.txt(&format!("_mta-sts.{domain}")).await {
        Ok(records) => match mta_sts::parse_txt(&records) {
            Ok(txt) => txt.map(|t| t.id),
            Err(e) => {
                // §3.1: an unusable record is as good as none, but a cached policy stays.
                tracing::debug!(domain, error = %e, "unusable _mta-sts TXT record");
                None
            }
        },
        // A DNS failure is no reason to drop a cached policy, nor to fetch; asked again next time.
        Err(_) => return None,
    };
    let mut txt = shard.sts.txt.borrow_mut();
    if txt.len() >= MAX_TXT {
        txt.clear();
    }
    txt.insert(domain.to_string(), (id.clone(), Instant::now() + TXT_TTL));
    id
}

fn recently_failed(shard: &Shard, domain: &str) -> bool {
    let mut failed = shard.sts.failed.borrow_mut();
    match failed.get(domain) {
        Some(&until) if Instant::now() < until => true,
        Some(_) => {
            failed.remove(domain);
            false
        }
        None => false,
    }
}

/// Mark `domain`'s fetch as under way; the sender signals its end (see [`fetch`]).
fn begin_fetch(shard: &Shard, domain: &str) -> tokio::sync::watch::Sender<bool> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    shard.sts.inflight.borrow_mut().insert(domain.to_string(), rx);
    tx
}

/// Fetch `domain`'s policy for TXT `id` and keep it; one at a time per domain: the caller
/// registered it with [`begin_fetch`] (before any await), and `tx` says when it ended.
async fn fetch(shard: &Rc<Shard>, domain: &str, id: String, tx: tokio::sync::watch::Sender<bool>) {
    let c = &shard.counters;
    c.sts_fetches.fetch_add(1, Ordering::Relaxed);
    let host = format!("mta-sts.{domain}");
    let result = match shard.resolver.host_addrs(&host).await {
        Ok(addrs) => mta_sts::fetch::fetch_policy(domain, &addrs, &shard.sts.fetch).await.map_err(|e| format!("{}: {e}", e.kind())),
        Err(e) => Err(format!("sts-policy-fetch-error: {host}: {e}")),
    };
    match result {
        Ok(policy) => {
            let now = unix_now();
            let expires = now.saturating_add(u64::from(policy.max_age));
            tracing::debug!(domain, mode = %policy.mode, max_age = policy.max_age, "MTA-STS policy fetched");
            if let Some(state) = &shard.cfg.state {
                state.put_sts(domain, CachedSts { id, policy, fetched: now, expires });
            }
        }
        Err(why) => {
            c.sts_fetch_failures.fetch_add(1, Ordering::Relaxed);
            if let Some(t) = &shard.cfg.tlsrpt {
                // RFC 8460 §4.3.2: the fetch failure under the domain's (unknown) STS policy.
                use crate::tlsrpt::{Failure, PolicyDesc, PolicyType, ResultType};
                let kind = why.split(':').next().and_then(ResultType::parse).unwrap_or(ResultType::StsPolicyFetchError);
                let policy = PolicyDesc { policy_type: PolicyType::Sts, policy_string: Vec::new(), mx_host: Vec::new() };
                let f = Failure { receiving_mx_hostname: None, failure_reason_code: Some(why.clone()), ..Failure::new(kind) };
                t.failure(domain, &policy, &f, std::time::SystemTime::now());
            }
            tracing::warn!(domain, error = %why, "MTA-STS policy fetch failed; a cached policy, if any, stays in force");
            let mut failed = shard.sts.failed.borrow_mut();
            if failed.len() >= MAX_FAILED {
                let now = Instant::now();
                failed.retain(|_, until| *until > now);
                if failed.len() >= MAX_FAILED {
                    failed.clear();
                }
            }
            failed.insert(domain.to_string(), Instant::now() + RETRY_AFTER_FAILURE);
        }
    }
    shard.sts.inflight.borrow_mut().remove(domain);
    let _ = tx.send(true);
}
