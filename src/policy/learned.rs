//! What earlier deliveries learned about each MX host (port 26 unusable, STARTTLS absent, an
//! opportunistic handshake failed, the last failure), owned by one shard and bounded.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use super::{normalize, PolicyOptions, MAX_LEARNED_TTL, MAX_REASON_LEN};

/// The last failure recorded for a host.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Failure {
    reason: String,
    at: Instant,
    until: Instant,
}

/// What earlier deliveries learned about one MX host. Each fact holds until its expiry
/// instant; every accessor takes `now` so an expired fact is never used.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Learned {
    port26_until: Option<Instant>,
    starttls_absent_until: Option<Instant>,
    tls_failed_until: Option<Instant>,
    last_failure: Option<Failure>,
}

fn live(until: Option<Instant>, now: Instant) -> bool {
    until.is_some_and(|u| now < u)
}

impl Learned {
    /// Port 26 gave no usable session recently: refused, timed out, reset, a plaintext banner, a TLS
    /// alert or a bad certificate (only `smtps-` hosts are tried there).
    pub fn port26_unusable(&self, now: Instant) -> bool {
        live(self.port26_until, now)
    }
    /// EHLO did not advertise STARTTLS.
    pub fn starttls_absent(&self, now: Instant) -> bool {
        live(self.starttls_absent_until, now)
    }
    /// An opportunistic TLS handshake failed.
    pub fn tls_failed(&self, now: Instant) -> bool {
        live(self.tls_failed_until, now)
    }
    /// The last failure's reason and when it happened, until it expires or a success clears it.
    pub fn last_failure(&self, now: Instant) -> Option<(&str, Instant)> {
        self.last_failure.as_ref().filter(|f| now < f.until).map(|f| (f.reason.as_str(), f.at))
    }

    /// When the last fact expires; the entry is worthless from then on.
    fn expires(&self) -> Option<Instant> {
        [self.port26_until, self.starttls_absent_until, self.tls_failed_until, self.last_failure.as_ref().map(|f| f.until)]
            .into_iter()
            .flatten()
            .max()
    }

    fn is_live(&self, now: Instant) -> bool {
        self.expires().is_some_and(|e| now < e)
    }
}

/// Where an entry sits in the eviction order: its expiry, then a sequence number so equal
/// instants stay distinct keys.
type OrderKey = (Instant, u64);

struct Entry {
    learned: Learned,
    order: OrderKey,
}

/// Per-destination memory of what was learned, owned by one engine shard (no locks).
///
/// Bounded by [`PolicyOptions::max_entries`]. Every fact lives `learned_ttl` from when it was
/// recorded, so the entry that expires first is also the one least recently told anything:
/// one ordered index serves both "evict expired first" and "then the oldest", in O(log n).
/// Host names are normalized (case, trailing dot) like [`plan`](super::plan) does.
pub struct PolicyCache {
    entries: HashMap<String, Entry>,
    order: BTreeMap<OrderKey, String>,
    ttl: Duration,
    max_entries: usize,
    seq: u64,
}

impl PolicyCache {
    /// An empty cache with `opts.learned_ttl` (capped) and `opts.max_entries`.
    pub fn new(opts: &PolicyOptions) -> Self {
        PolicyCache {
            entries: HashMap::new(),
            order: BTreeMap::new(),
            ttl: opts.learned_ttl.min(MAX_LEARNED_TTL),
            max_entries: opts.max_entries,
            seq: 0,
        }
    }

    /// What is known about `host`, or `None` when nothing is or all of it has expired.
    pub fn get(&self, host: &str, now: Instant) -> Option<&Learned> {
        self.entries.get(normalize(host).as_ref()).map(|e| &e.learned).filter(|l| l.is_live(now))
    }

    /// Port 26 failed (any way): plan the next deliveries to this `smtps-` host on 25 only,
    /// which is just as strict (verified STARTTLS).
    pub fn port26_unusable(&mut self, host: &str, now: Instant) {
        self.record(host, now, |l, until| l.port26_until = Some(until));
    }

    /// EHLO did not offer STARTTLS: plan this host in clear if it is opportunistic.
    pub fn starttls_absent(&mut self, host: &str, now: Instant) {
        self.record(host, now, |l, until| l.starttls_absent_until = Some(until));
    }

    /// An opportunistic handshake failed: plan this host in clear rather than fail again.
    pub fn tls_failed(&mut self, host: &str, now: Instant) {
        self.record(host, now, |l, until| l.tls_failed_until = Some(until));
    }

    /// Remember why the last delivery to `host` failed (truncated to [`MAX_REASON_LEN`]).
    pub fn failure(&mut self, host: &str, reason: &str, now: Instant) {
        let reason = truncate(reason, MAX_REASON_LEN).to_string();
        self.record(host, now, |l, until| l.last_failure = Some(Failure { reason, at: now, until }));
    }

    /// A delivery succeeded: forget the last failure. The other facts stay, because a success
    /// on port 25 or in clear says nothing about port 26 or about STARTTLS. Does not create an
    /// entry, and drops one that no longer holds anything.
    pub fn success(&mut self, host: &str, now: Instant) {
        let key = normalize(host);
        let Some(entry) = self.entries.get_mut(key.as_ref()) else { return };
        if entry.learned.last_failure.take().is_none() {
            return;
        }
        let old = entry.order;
        match entry.learned.expires().filter(|&e| now < e) {
            Some(expires) => {
                let new = (expires, self.seq);
                self.seq += 1;
                entry.order = new;
                if let Some(k) = self.order.remove(&old) {
                    self.order.insert(new, k);
                }
            }
            None => {
                self.order.remove(&old);
                self.entries.remove(key.as_ref());
            }
        }
    }

    /// Entries held, including expired ones not yet swept.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// No entries held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Drop every expired entry; returns how many. Writes do this too, so calling it is only
    /// needed to release memory in a shard that has stopped learning.
    pub fn purge_expired(&mut self, now: Instant) -> usize {
        let mut n = 0;
        while let Some(entry) = self.order.first_entry() {
            if now < entry.key().0 {
                break;
            }
            let host = entry.remove();
            self.entries.remove(&host);
            n += 1;
        }
        n
    }

    fn record(&mut self, host: &str, now: Instant, set: impl FnOnce(&mut Learned, Instant)) {
        if self.max_entries == 0 {
            return;
        }
        // With the TTL capped this cannot overflow; if it did, forgetting is safe.
        let Some(until) = now.checked_add(self.ttl) else { return };
        self.purge_expired(now);
        let key = normalize(host);
        let seq = self.seq;
        self.seq += 1;
        if let Some(entry) = self.entries.get_mut(key.as_ref()) {
            set(&mut entry.learned, until);
            let old = entry.order;
            let new = (entry.learned.expires().unwrap_or(until), seq);
            entry.order = new;
            if let Some(k) = self.order.remove(&old) {
                self.order.insert(new, k);
            }
            return;
        }
        if self.entries.len() >= self.max_entries {
            if let Some((_, oldest)) = self.order.pop_first() {
                self.entries.remove(&oldest);
            }
        }
        let mut learned = Learned::default();
        set(&mut learned, until);
        let order = (learned.expires().unwrap_or(until), seq);
        let key = key.into_owned();
        self.order.insert(order, key.clone());
        self.entries.insert(key, Entry { learned, order });
    }
}

/// At most `max` bytes of `s`, cut on a character boundary.
pub(crate) fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
