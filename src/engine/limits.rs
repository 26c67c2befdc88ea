//! Operator limits beyond the defaults: connections and messages per second for one
//! destination domain, and budgets shared by every connection to the MX hosts matching a
//! pattern, whatever the domain (a provider hosting thousands of domains gets one budget).
//!
//! A domain's limits live on its shard only (a domain belongs to one shard), so they are
//! plain per-shard state. An MX budget is shared by all shards: a `tokio` semaphore for its
//! connections (runtime-agnostic, touched once per connection) and an atomic GCRA for its
//! message rate (one compare-and-swap per message). Waiting for either is a timer or a
//! semaphore wait, never polling.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

/// Longest spacing a rate enforces (rates below one message a day act as one a day).
const MAX_INTERVAL: Duration = Duration::from_secs(24 * 3600);

/// What one limit rule applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitScope {
    /// One destination domain (lowercase, no trailing dot).
    Domain(String),
    /// Every MX host matching: a host name, or `*.` and a suffix (hosts under it at any depth,
    /// not the suffix itself). One budget for all of them together.
    MxHosts(String),
}

/// One operator limit, as configured.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitRule {
    /// The domain or MX-host pattern the limits apply to.
    pub scope: LimitScope,
    /// Connections open at once (busy or idle).
    pub max_conns: Option<usize>,
    /// Messages (transactions) per second.
    pub msgs_per_s: Option<f64>,
}

pub use crate::value::mx_pattern::host_matches;

/// A message-rate limit (GCRA) that many threads may share: `reserve` claims the next free
/// send time and says how long to wait for it, so waiters queue up in order with no retries.
#[derive(Debug)]
pub struct RateGate {
    base: Instant,
    /// Theoretical arrival time, in nanoseconds since `base`.
    tat: AtomicU64,
    interval: u64,
    /// How far ahead of the rate a burst may run, in nanoseconds.
    tolerance: u64,
}

impl RateGate {
    /// `msgs_per_s` messages per second, letting `burst` (at least 1) go at once after a
    /// quiet spell.
    pub fn new(msgs_per_s: f64, burst: u32) -> RateGate {
        let interval = Duration::try_from_secs_f64(1.0 / msgs_per_s).map_or(MAX_INTERVAL, |d| d.min(MAX_INTERVAL));
        let interval = interval.as_nanos() as u64;
        RateGate { base: Instant::now(), tat: AtomicU64::new(0), interval, tolerance: interval * u64::from(burst.max(1) - 1) }
    }

    /// The rate, in messages per second (as kept: one interval in nanoseconds).
    pub fn per_s(&self) -> f64 {
        1e9 / self.interval.max(1) as f64
    }

    /// Claim the next send time at or after `now`; returns how long to wait for it (zero if
    /// it may go now).
    pub fn reserve(&self, now: Instant) -> Duration {
        let now = now.saturating_duration_since(self.base).as_nanos() as u64;
        let mut tat = self.tat.load(Ordering::Relaxed);
        loop {
            let go = tat.saturating_sub(self.tolerance).max(now);
            let next = tat.max(now) + self.interval;
            match self.tat.compare_exchange_weak(tat, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return Duration::from_nanos(go - now),
                Err(t) => tat = t,
            }
        }
    }
}

/// A budget shared by every connection to the MX hosts matching one pattern.
#[derive(Debug)]
pub struct MxBudget {
    /// The MX host pattern as configured (see [`host_matches`]).
    pub pattern: String,
    /// Connections open at once to all matching hosts together, busy or idle; `None` for no limit.
    pub max_conns: Option<usize>,
    /// Connection slots (when `max_conns` is set).
    pub conns: Option<Arc<Semaphore>>,
    /// Workers waiting for a slot, in any shard: idle connections under this budget should
    /// close rather than idle while someone waits.
    pub waiting: AtomicUsize,
    /// Messages per second to all matching hosts together; `None` for no limit.
    pub rate: Option<RateGate>,
}

/// A domain's own limits.
#[derive(Debug)]
pub struct DomainLimit {
    /// Connections open at once to this domain, busy or idle; `None` leaves the engine's per-destination limit.
    pub max_conns: Option<usize>,
    /// Messages per second to this domain; `None` for no limit.
    pub rate: Option<RateGate>,
    /// The same rate once per egress source (receivers throttle per sending address): one
    /// gate per source, by source index; empty without a rate or without sources.
    pub per_source: Vec<RateGate>,
}

impl DomainLimit {
    /// The rate gate for messages from `source` (`None`: connections bound to no source).
    pub fn rate_for(&self, source: Option<usize>) -> Option<&RateGate> {
        match source {
            None => self.rate.as_ref(),
            Some(s) => self.per_source.get(s),
        }
    }
}

/// The limits of a running engine, built from its rules at start.
#[derive(Debug, Default)]
pub struct Limits {
    domains: HashMap<String, DomainLimit>,
    /// In rule order: the first pattern matching a host is its budget. Each budget once for
    /// connections bound to no source (index 0) and once per egress source (index 1 + source).
    mx: Vec<Vec<Arc<MxBudget>>>,
}

impl Limits {
    /// Build the limits from `rules`: for a domain named twice the first rule wins; MX budgets keep rule order.
    pub fn new(rules: &[LimitRule]) -> Limits {
        Limits::with_sources(rules, 0)
    }

    /// Like [`Limits::new`], with every limit kept once per egress source as well: a
    /// receiver's limits apply per sending address, so each of `sources` gets its own.
    pub fn with_sources(rules: &[LimitRule], sources: usize) -> Limits {
        let mut l = Limits::default();
        for r in rules {
            let ok_rate = r.msgs_per_s.filter(|x| x.is_finite() && *x > 0.0);
            let rate = || ok_rate.map(|x| RateGate::new(x, 1));
            match &r.scope {
                LimitScope::Domain(d) => {
                    let name = d.trim_end_matches('.').to_ascii_lowercase();
                    let per_source = if ok_rate.is_some() { (0..sources).filter_map(|_| rate()).collect() } else { Vec::new() };
                    l.domains.entry(name).or_insert(DomainLimit { max_conns: r.max_conns, rate: rate(), per_source });
                }
                LimitScope::MxHosts(p) => l.mx.push(
                    (0..=sources)
                        .map(|_| {
                            Arc::new(MxBudget {
                                pattern: p.clone(),
                                max_conns: r.max_conns,
                                conns: r.max_conns.map(|n| Arc::new(Semaphore::new(n.clamp(1, Semaphore::MAX_PERMITS)))),
                                waiting: AtomicUsize::new(0),
                                rate: rate(),
                            })
                        })
                        .collect(),
                ),
            }
        }
        l
    }

    /// A domain's own limits, if it has any.
    pub fn domain(&self, domain: &str) -> Option<&DomainLimit> {
        if self.domains.is_empty() {
            return None;
        }
        self.domains.get(domain)
    }

    /// The budget MX host `host` falls under, if any.
    pub fn mx(&self, host: &str) -> Option<&Arc<MxBudget>> {
        self.mx_for(host, None)
    }

    /// The budget MX host `host` falls under for connections from egress source `source`
    /// (`None`: bound to no source), if any.
    pub fn mx_for(&self, host: &str, source: Option<usize>) -> Option<&Arc<MxBudget>> {
        let slot = source.map_or(0, |s| s + 1);
        self.mx_index(host).and_then(|i| self.mx[i].get(slot))
    }

    /// Which budget (by index) MX host `host` falls under, if any: the first pattern that
    /// matches it.
    pub fn mx_index(&self, host: &str) -> Option<usize> {
        if self.mx.is_empty() {
            return None;
        }
        self.mx.iter().position(|b| b.first().is_some_and(|b| host_matches(&b.pattern, host)))
    }

    /// Whether any MX-pattern budget is configured, so callers can skip the per-host lookup.
    pub fn has_mx_budgets(&self) -> bool {
        !self.mx.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_gate_spaces_reservations() {
        let g = RateGate::new(10.0, 1);
        let t = g.base + Duration::from_secs(5);
        assert_eq!(g.reserve(t), Duration::ZERO);
        assert_eq!(g.reserve(t), Duration::from_millis(100));
        assert_eq!(g.reserve(t), Duration::from_millis(200));
        // Later: the queue of reservations has moved on.
        assert_eq!(g.reserve(t + Duration::from_millis(250)), Duration::from_millis(50));
        // After a quiet spell, one goes at once again (no credit saved up with burst 1).
        let later = t + Duration::from_secs(10);
        assert_eq!(g.reserve(later), Duration::ZERO);
        assert_eq!(g.reserve(later), Duration::from_millis(100));
    }

    #[test]
    fn rate_gate_burst() {
        let g = RateGate::new(1.0, 3);
        let t = g.base + Duration::from_secs(100);
        assert_eq!(g.reserve(t), Duration::ZERO);
        assert_eq!(g.reserve(t), Duration::ZERO);
        assert_eq!(g.reserve(t), Duration::ZERO);
        assert_eq!(g.reserve(t), Duration::from_secs(1));
    }

    #[test]
    fn rate_gate_is_shared_across_threads() {
        let g = Arc::new(RateGate::new(1000.0, 1));
        let t = g.base + Duration::from_secs(1);
        let waits: Vec<Duration> = (0..4)
            .map(|_| {
                let g = g.clone();
                std::thread::spawn(move || (0..250).map(|_| g.reserve(t)).collect::<Vec<_>>())
            })
            .flat_map(|h| h.join().unwrap())
            .collect();
        let mut ms: Vec<u128> = waits.iter().map(|d| d.as_micros()).collect();
        ms.sort_unstable();
        // 1000 reservations at one instant: every 1 ms slot from 0 to 999 taken exactly once.
        assert_eq!(ms, (0..1000).map(|i| i * 1000).collect::<Vec<_>>());
    }

    #[test]
    fn lookups() {
        let l = Limits::new(&[
            LimitRule { scope: LimitScope::Domain("A.test.".into()), max_conns: Some(2), msgs_per_s: Some(0.5) },
            LimitRule { scope: LimitScope::MxHosts("*.big.test".into()), max_conns: Some(3), msgs_per_s: None },
            LimitRule { scope: LimitScope::MxHosts("*.test".into()), max_conns: None, msgs_per_s: Some(5.0) },
        ]);
        assert_eq!(l.domain("a.test").and_then(|d| d.max_conns), Some(2));
        assert!(l.domain("b.test").is_none());
        assert_eq!(l.mx("mx1.big.test").map(|b| b.pattern.as_str()), Some("*.big.test"));
        assert_eq!(l.mx("mx.other.test").map(|b| b.pattern.as_str()), Some("*.test"));
        assert!(l.mx("mx.example.com").is_none());
        assert_eq!(l.mx("mx1.big.test").unwrap().conns.as_ref().unwrap().available_permits(), 3);
    }

    #[test]
    fn each_source_has_its_own_budgets() {
        let rules = [
            LimitRule { scope: LimitScope::Domain("a.test".into()), max_conns: Some(2), msgs_per_s: Some(1.0) },
            LimitRule { scope: LimitScope::MxHosts("*.big.test".into()), max_conns: Some(3), msgs_per_s: None },
        ];
        let l = Limits::with_sources(&rules, 2);
        let b = |s| l.mx_for("mx1.big.test", s).unwrap().clone();
        assert!(!Arc::ptr_eq(&b(Some(0)), &b(Some(1))) && !Arc::ptr_eq(&b(None), &b(Some(0))));
        assert!(l.mx_for("mx1.big.test", Some(2)).is_none(), "no third source");
        let d = l.domain("a.test").unwrap();
        let now = Instant::now();
        assert_eq!(d.rate_for(Some(0)).unwrap().reserve(now), Duration::ZERO);
        assert_eq!(d.rate_for(Some(1)).unwrap().reserve(now), Duration::ZERO, "another source's rate is its own");
        assert!(d.rate_for(Some(0)).unwrap().reserve(now) > Duration::ZERO);
    }
}
