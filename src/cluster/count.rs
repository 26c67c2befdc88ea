//! Capped counters shared by every node: a source's warm-up sends per destination class and
//! day. A node takes counts in small batches (`count_batch`) and gives back those unused for
//! `spare_hold`; while Redis is down it sends at most its share of the cap (counting what it
//! sent under the name so far).

use std::time::{Duration, Instant};

use super::fallback::share;

/// How often a node asks Redis again for a shared earliest value it knows.
pub const EARLIEST_REFRESH: Duration = Duration::from_secs(60);
/// Most shared earliest values a node remembers (one per warm-up source).
const MAX_EARLIEST: usize = 4096;
use super::{lock, Cluster};

/// One node's view of one capped counter.
#[derive(Debug)]
pub(crate) struct CountState {
    /// Counts taken from Redis and not used yet.
    pub spare: u64,
    /// Counts this node used under the name (shared and local).
    pub used: u64,
    pub last_use: Instant,
    /// How long the counter lives in Redis after its last use.
    ttl: Duration,
}

/// The counter name of a warm-up cap: source, destination class and day number.
pub fn warmup_name(source: &str, class: &str, day: u64) -> String {
    format!("warm:{source}:{class}:{day}")
}

impl Cluster {
    /// Take one count under the shared cap `cap` of counter `name`; false when the cap is
    /// used up (cluster-wide, or this node's share while Redis is down). The counter lives
    /// `ttl` in Redis after its last change (a warm-up day: a little more than the day).
    pub async fn count_take(&self, name: &str, cap: u64, ttl: Duration) -> bool {
        let now = Instant::now();
        {
            let mut m = lock(&self.counts);
            let st = m.entry(name.to_string()).or_insert(CountState { spare: 0, used: 0, last_use: now, ttl });
            st.last_use = now;
            if st.spare > 0 && !self.is_down() {
                st.spare -= 1;
                st.used += 1;
                return true;
            }
        }
        if !self.is_down() {
            let want = u64::from(self.cfg.count_batch).min(cap).max(1);
            let key = self.keys.count(name);
            let mut inv = self.scripts.count_take.key(&key);
            inv.arg(cap).arg(want).arg(ttl.as_millis().max(1) as u64);
            if let Some(got) = self.call::<u64>(&inv).await {
                let mut m = lock(&self.counts);
                let Some(st) = m.get_mut(name) else { return false };
                if got == 0 {
                    return false;
                }
                st.spare += got - 1;
                st.used += 1;
                return true;
            }
        }
        let mut m = lock(&self.counts);
        let Some(st) = m.get_mut(name) else { return false };
        if st.used < share(cap, self.live_nodes()) {
            st.used += 1;
            return true;
        }
        false
    }

    /// Give back one count of `name` taken by [`Cluster::count_take`] but not used after all
    /// (the message was not sent): it goes back with the spares.
    pub fn count_give_back(&self, name: &str) {
        let mut m = lock(&self.counts);
        if let Some(st) = m.get_mut(name) {
            if st.used > 0 {
                st.used -= 1;
                if !self.is_down() {
                    st.spare += 1;
                }
            }
        }
    }

    /// The cluster's earliest value of `name` (a source's warm-up day 1, Unix ms): this
    /// node proposes `mine`, the smaller of the two wins and is kept in Redis for `ttl`.
    /// Asked at most every [`EARLIEST_REFRESH`] per name; between asks, and while Redis is
    /// down, the last answer (or `mine`, if smaller or if there is none yet) is used.
    pub async fn earliest(&self, name: &str, mine: u64, ttl: Duration) -> u64 {
        let now = Instant::now();
        let known = lock(&self.earliest).get(name).copied();
        if let Some((v, at)) = known {
            if v <= mine && now.duration_since(at) < EARLIEST_REFRESH {
                return v;
            }
        }
        let key = self.keys.earliest(name);
        let mut inv = self.scripts.earliest.key(&key);
        inv.arg(mine).arg(ttl.as_millis().max(1) as u64);
        match self.call::<String>(&inv).await.and_then(|v| v.parse::<u64>().ok()) {
            Some(v) => {
                let mut m = lock(&self.earliest);
                if m.len() >= MAX_EARLIEST && !m.contains_key(name) {
                    m.clear();
                }
                m.insert(name.to_string(), (v, now));
                v
            }
            None => known.map_or(mine, |(v, _)| v.min(mine)),
        }
    }

    /// Counts this node used under `name`.
    pub fn count_used(&self, name: &str) -> u64 {
        lock(&self.counts).get(name).map_or(0, |s| s.used)
    }

    /// Give back counts unused for `spare_hold` (all of them with `all`); forget counters
    /// idle past their ttl.
    pub(super) async fn return_counts(&self, all: bool) {
        let now = Instant::now();
        let hold = self.cfg.spare_hold;
        let back: Vec<(String, u64)> = {
            let mut m = lock(&self.counts);
            m.retain(|_, st| now.duration_since(st.last_use) < st.ttl);
            m.iter_mut()
                .filter(|(_, st)| st.spare > 0 && (all || now.duration_since(st.last_use) >= hold))
                .map(|(name, st)| (name.clone(), std::mem::take(&mut st.spare)))
                .collect()
        };
        for (name, n) in back {
            let key = self.keys.count(&name);
            let mut inv = self.scripts.count_return.key(&key);
            inv.arg(n);
            let _: Option<i64> = self.call(&inv).await;
        }
    }
}
