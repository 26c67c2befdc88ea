//! Per-destination scheduling state: suspension (with escalation on repeated rate limits),
//! a message-rate limit and a connection counter, in a bounded map that forgets destinations
//! that have gone idle.
//!
//! A *destination* is whatever name the caller keys it by. The daemon keeps one
//! [`Destinations`] for recipient domains and a second one for MX hosts, each with its own
//! [`LimitTable`], and takes a slot in both before connecting: that gives per-domain and
//! per-MX-host concurrency (many domains hosted by one provider share its MX hosts' limit).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use super::{normalize, ReplyClass, SettingError};

/// Longest automatic or manual suspension, and the cap on each escalation step: a destination
/// that has been quiet for a day deserves a fresh try, and the cap keeps `Instant` arithmetic
/// far from overflow.
pub const MAX_SUSPENSION: Duration = Duration::from_secs(24 * 3600);

/// Longest spacing the rate limit enforces (rates below one message a day act as one a day).
pub const MAX_EMISSION_INTERVAL: Duration = Duration::from_secs(24 * 3600);

/// The limits of one destination.
#[derive(Debug, Clone, PartialEq)]
pub struct DestinationLimits {
    /// Connections open at once. 0 allows none.
    pub max_connections: u32,
    /// Messages per second, `None` for no limit.
    pub msgs_per_s: Option<f64>,
    /// Messages that may go at once after a quiet spell, before the rate applies (at least 1).
    pub burst: u32,
}

impl Default for DestinationLimits {
    /// 20 connections (Postfix's default destination concurrency), no rate limit.
    fn default() -> Self {
        DestinationLimits { max_connections: 20, msgs_per_s: None, burst: 1 }
    }
}

impl DestinationLimits {
    /// Reject limits that cannot be what the operator meant, naming the setting.
    pub fn validate(&self) -> Result<(), SettingError> {
        if self.max_connections == 0 {
            return Err(SettingError::new("max_connections", "must be at least 1 (suspend a destination to stop it)"));
        }
        if let Some(r) = self.msgs_per_s {
            if !r.is_finite() || r <= 0.0 {
                return Err(SettingError::new("msgs_per_s", format!("{r} is not a positive number")));
            }
        }
        if self.burst == 0 {
            return Err(SettingError::new("burst", "must be at least 1"));
        }
        Ok(())
    }

    /// The spacing between messages, or `None` without a (usable) rate.
    fn emission_interval(&self) -> Option<Duration> {
        let rate = self.msgs_per_s.filter(|r| r.is_finite() && *r > 0.0)?;
        Some(Duration::try_from_secs_f64(1.0 / rate).map_or(MAX_EMISSION_INTERVAL, |d| d.min(MAX_EMISSION_INTERVAL)))
    }
}

/// Limits by destination name: an exact name, else the longest matching `*.suffix` pattern,
/// else the default. Names and patterns are compared lowercase without a trailing dot.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LimitTable {
    default: DestinationLimits,
    exact: HashMap<String, DestinationLimits>,
    /// Keyed by the suffix after `*.`.
    wildcard: HashMap<String, DestinationLimits>,
}

impl LimitTable {
    /// A table where every destination gets `default`.
    pub fn new(default: DestinationLimits) -> Self {
        LimitTable { default, exact: HashMap::new(), wildcard: HashMap::new() }
    }

    /// Set the limits for `pattern`: `example.com` is that name only; `*.example.com` is every
    /// name under it (`mx1.example.com`, `a.b.example.com`) but not `example.com` itself.
    pub fn insert(&mut self, pattern: &str, limits: DestinationLimits) {
        let pattern = normalize(pattern);
        match pattern.strip_prefix("*.") {
            Some(suffix) => self.wildcard.insert(suffix.to_string(), limits),
            None => self.exact.insert(pattern.into_owned(), limits),
        };
    }

    /// [`LimitTable::insert`], by value, for building a table in one expression.
    pub fn with(mut self, pattern: &str, limits: DestinationLimits) -> Self {
        self.insert(pattern, limits);
        self
    }

    /// The limits that apply to `name`.
    pub fn get(&self, name: &str) -> &DestinationLimits {
        let name = normalize(name);
        if let Some(l) = self.exact.get(name.as_ref()) {
            return l;
        }
        if !self.wildcard.is_empty() {
            // Suffixes from longest to shortest: the most specific pattern wins.
            for (i, _) in name.match_indices('.') {
                if let Some(l) = self.wildcard.get(&name[i + 1..]) {
                    return l;
                }
            }
        }
        &self.default
    }

    /// Check the default and every override, naming the pattern in the error.
    pub fn validate(&self) -> Result<(), SettingError> {
        self.default.validate()?;
        let exact = self.exact.iter().map(|(k, v)| (k.clone(), v));
        let wild = self.wildcard.iter().map(|(k, v)| (format!("*.{k}"), v));
        for (pattern, limits) in exact.chain(wild) {
            limits.validate().map_err(|e| SettingError { problem: format!("{} (for {pattern})", e.problem), ..e })?;
        }
        Ok(())
    }
}

/// Settings of a [`Destinations`] map.
#[derive(Debug, Clone, PartialEq)]
pub struct DestinationOptions {
    /// Connection and rate limits by destination name.
    pub limits: LimitTable,
    /// Suspension after the 1st, 2nd, … consecutive 421 or rate-limit episode; the last step
    /// repeats. Each is capped at [`MAX_SUSPENSION`].
    pub suspension_steps: Vec<Duration>,
    /// An episode that starts this long after the previous suspension ended starts the
    /// escalation again from the first step, as a success does.
    pub escalation_memory: Duration,
    /// A destination with no connection open, no suspension and no use for this long is
    /// forgotten (it costs nothing to recreate).
    pub idle_ttl: Duration,
    /// Most destinations held; at least 1.
    pub max_entries: usize,
}

impl Default for DestinationOptions {
    fn default() -> Self {
        DestinationOptions {
            limits: LimitTable::default(),
            suspension_steps: vec![Duration::from_secs(60), Duration::from_secs(300), Duration::from_secs(900)],
            escalation_memory: Duration::from_secs(3600),
            idle_ttl: Duration::from_secs(3600),
            max_entries: 100_000,
        }
    }
}

impl DestinationOptions {
    /// Reject settings that cannot be what the operator meant, naming the setting.
    pub fn validate(&self) -> Result<(), SettingError> {
        self.limits.validate()?;
        if self.suspension_steps.is_empty() || self.suspension_steps.iter().any(|d| d.is_zero()) {
            return Err(SettingError::new(
                "suspension_steps",
                "must list at least one duration, each longer than zero",
            ));
        }
        if let Some(d) = self.suspension_steps.iter().find(|d| **d > MAX_SUSPENSION) {
            return Err(SettingError::new(
                "suspension_steps",
                format!("{d:?} is longer than the {MAX_SUSPENSION:?} maximum"),
            ));
        }
        if self.max_entries == 0 {
            return Err(SettingError::new("max_entries", "must be at least 1"));
        }
        Ok(())
    }
}

/// The suspension for the episode after `level` earlier ones: the last step repeats, each is
/// capped at [`MAX_SUSPENSION`], and with no steps configured (which `validate` refuses) it is
/// a minute, never nothing.
fn suspension_step(steps: &[Duration], level: u32) -> Duration {
    let i = usize::try_from(level).unwrap_or(usize::MAX).min(steps.len().saturating_sub(1));
    steps.get(i).copied().unwrap_or(Duration::from_secs(60)).min(MAX_SUSPENSION)
}

/// Where an entry sits in the least-recently-used order: its last use, then a sequence
/// number so equal instants stay distinct keys.
type OrderKey = (Instant, u64);

#[derive(Debug)]
struct Entry {
    in_flight: u32,
    /// Manual or automatic; cleared by `resume`.
    suspended_until: Option<Instant>,
    /// Consecutive suspension episodes since the last success.
    level: u32,
    /// When the last automatic suspension ended (or ends), for `escalation_memory`.
    episode_end: Option<Instant>,
    /// The rate limit's theoretical arrival time (GCRA): when the bucket is full again.
    tat: Option<Instant>,
    order: OrderKey,
}

impl Entry {
    fn suspended(&self, now: Instant) -> Option<Instant> {
        self.suspended_until.filter(|&u| now < u)
    }

    /// Holds nothing that forgetting would lose, apart from escalation history.
    fn is_idle(&self, now: Instant) -> bool {
        self.in_flight == 0 && self.suspended(now).is_none()
    }
}

/// Scheduling state of every destination the daemon is talking to, owned by one queue runner
/// (no locks) and told `now` by it.
///
/// Bounded by [`DestinationOptions::max_entries`]: when full, idle entries older than
/// `idle_ttl` go first, then the least recently used entry without open connections
/// (preferring one that is not suspended). An entry with open connections is never dropped,
/// because its counter must stay right; if every entry has one, a new destination is
/// refused a connection ([`Destinations::acquire`] returns false) until one is released.
#[derive(Debug)]
pub struct Destinations {
    entries: HashMap<String, Entry>,
    order: BTreeMap<OrderKey, String>,
    opts: DestinationOptions,
    seq: u64,
}

impl Destinations {
    /// An empty map; `opts` is used as given ([`DestinationOptions::validate`] is the caller's).
    pub fn new(opts: DestinationOptions) -> Self {
        Destinations { entries: HashMap::new(), order: BTreeMap::new(), opts, seq: 0 }
    }

    /// Replace the limits (a configuration reload); counters and suspensions stay.
    pub fn set_limits(&mut self, limits: LimitTable) {
        self.opts.limits = limits;
    }

    /// The limits that apply to `name`.
    pub fn limits(&self, name: &str) -> &DestinationLimits {
        self.opts.limits.get(name)
    }

    /// Until when `name` is suspended, if it is at `now`.
    pub fn is_suspended(&self, name: &str, now: Instant) -> Option<Instant> {
        self.entries.get(normalize(name).as_ref())?.suspended(now)
    }

    /// Suspend `name` until `until` (an operator's `mxpipe queue suspend`, or the daemon's own
    /// decision). Never shortens a suspension in force ([`Destinations::resume`] does);
    /// capped at [`MAX_SUSPENSION`] from `now`. Returns the suspension in force, `None` only
    /// when the map is full of destinations with open connections.
    pub fn suspend(&mut self, name: &str, until: Instant, now: Instant) -> Option<Instant> {
        let until = until.min(now + MAX_SUSPENSION);
        let e = self.touch(name, now)?;
        let until = e.suspended(now).map_or(until, |cur| cur.max(until));
        e.suspended_until = Some(until);
        Some(until)
    }

    /// Lift a suspension; returns the end it had, if one was in force. The escalation level
    /// stays, so a destination resumed too early is suspended longer next time.
    pub fn resume(&mut self, name: &str, now: Instant) -> Option<Instant> {
        let e = self.entries.get_mut(normalize(name).as_ref())?;
        let was = e.suspended(now);
        e.suspended_until = None;
        was
    }

    /// Feed a classified reply from `name` into its suspension state, and return the
    /// suspension in force afterwards when the reply is one that suspends.
    ///
    /// - [`ReplyClass::Ok`] resets the escalation (a suspension already in force stays: it is
    ///   short, and the success may come from a connection opened before it).
    /// - [`ReplyClass::RateLimited`] / [`ReplyClass::ServiceUnavailable`] start an episode:
    ///   suspend for the next step of `suspension_steps` and escalate. While a suspension is in
    ///   force further such replies (from connections that were already open) belong to the
    ///   same episode and do not escalate again, so ten parallel connections all answered 421
    ///   cost one step, not ten.
    /// - Temporary and permanent failures concern one message and change nothing.
    ///
    /// `None` also when the map is full of destinations with open connections (see
    /// [`Destinations`]); the daemon then still retries the message with backoff.
    pub fn record(&mut self, name: &str, class: ReplyClass, now: Instant) -> Option<Instant> {
        match class {
            ReplyClass::Ok => {
                if let Some(e) = self.entries.get_mut(normalize(name).as_ref()) {
                    e.level = 0;
                    e.episode_end = None;
                }
                None
            }
            ReplyClass::TempFail | ReplyClass::PermFail => None,
            ReplyClass::RateLimited | ReplyClass::ServiceUnavailable => {
                let memory = self.opts.escalation_memory;
                let e = self.touch(name, now)?;
                if let Some(until) = e.suspended(now) {
                    return Some(until);
                }
                if e.episode_end.and_then(|end| end.checked_add(memory)).is_some_and(|forget| now >= forget) {
                    e.level = 0;
                }
                let level = e.level;
                let until = now + suspension_step(&self.opts.suspension_steps, level);
                let e = self.entries.get_mut(normalize(name).as_ref())?;
                e.level = e.level.saturating_add(1);
                e.episode_end = Some(until);
                e.suspended_until = Some(until);
                Some(until)
            }
        }
    }

    /// Take one message's worth of `name`'s rate limit, or learn when one will be available.
    ///
    /// A generic cell-rate algorithm (an exact token bucket in integer time): messages are
    /// spaced `1 / msgs_per_s` apart, and up to `burst` may go at once after a quiet spell.
    /// Without a rate this always succeeds and stores nothing. When the map is full of busy
    /// destinations the answer is "wait one interval", never "go" unmetered.
    pub fn try_take(&mut self, name: &str, now: Instant) -> Result<(), Instant> {
        let limits = self.opts.limits.get(name);
        let Some(interval) = limits.emission_interval() else { return Ok(()) };
        let tolerance = interval.saturating_mul(limits.burst.max(1) - 1);
        let Some(e) = self.touch(name, now) else { return Err(now + interval) };
        let tat = e.tat.map_or(now, |t| t.max(now));
        // `tat - now` is how far ahead of schedule this destination already is.
        if tat - now > tolerance {
            return Err(tat - tolerance);
        }
        e.tat = Some(tat + interval);
        Ok(())
    }

    /// Take a connection slot for `name`: true if one was free (the caller must
    /// [`release`](Destinations::release) it), false at the limit or when the map is full of
    /// destinations with open connections. Does not look at suspension or rate: ask
    /// [`Destinations::is_suspended`] and [`Destinations::try_take`] for those.
    pub fn acquire(&mut self, name: &str, now: Instant) -> bool {
        let max = self.opts.limits.get(name).max_connections;
        if max == 0 {
            return false;
        }
        let Some(e) = self.touch(name, now) else { return false };
        if e.in_flight >= max {
            return false;
        }
        e.in_flight += 1;
        true
    }

    /// Give back a slot taken with [`Destinations::acquire`]. Returns false (and changes
    /// nothing) when `name` held none, which is a bug in the caller worth logging.
    pub fn release(&mut self, name: &str, now: Instant) -> bool {
        let key = normalize(name);
        match self.entries.get(key.as_ref()) {
            Some(e) if e.in_flight > 0 => {}
            _ => return false,
        }
        if let Some(e) = self.touch(&key, now) {
            e.in_flight -= 1;
        }
        true
    }

    /// Connections open to `name`.
    pub fn in_flight(&self, name: &str) -> u32 {
        self.entries.get(normalize(name).as_ref()).map_or(0, |e| e.in_flight)
    }

    /// Every destination suspended at `now` with its end, sorted by name (for `GET /v1/queues`
    /// and `mxpipe queue list`).
    pub fn suspended(&self, now: Instant) -> Vec<(&str, Instant)> {
        let mut v: Vec<_> =
            self.entries.iter().filter_map(|(k, e)| e.suspended(now).map(|u| (k.as_str(), u))).collect();
        v.sort_unstable();
        v
    }

    /// Destinations held, idle ones not yet swept included.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// No destinations held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Forget every destination idle (no connection, not suspended) and unused for
    /// `idle_ttl`; returns how many. Adding a destination to a full map does this too.
    pub fn purge_idle(&mut self, now: Instant) -> usize {
        let Some(cutoff) = now.checked_sub(self.opts.idle_ttl) else { return 0 };
        let stale: Vec<OrderKey> = self
            .order
            .range(..=(cutoff, u64::MAX))
            .filter(|(_, name)| self.entries.get(name.as_str()).is_some_and(|e| e.is_idle(now)))
            .map(|(k, _)| *k)
            .collect();
        for k in &stale {
            if let Some(name) = self.order.remove(k) {
                self.entries.remove(&name);
            }
        }
        stale.len()
    }

    /// The entry for `name`, created if needed, marked used at `now`. `None` when it does not
    /// exist and no room can be made.
    fn touch(&mut self, name: &str, now: Instant) -> Option<&mut Entry> {
        let key = normalize(name);
        if !self.entries.contains_key(key.as_ref()) {
            if !self.make_room(now) {
                return None;
            }
            let order = (now, self.next_seq());
            let key = key.to_string();
            self.order.insert(order, key.clone());
            let e = Entry { in_flight: 0, suspended_until: None, level: 0, episode_end: None, tat: None, order };
            return Some(self.entries.entry(key).or_insert(e));
        }
        let seq = self.next_seq();
        let e = self.entries.get_mut(key.as_ref())?;
        let old = e.order;
        // A caller's `now` that went backwards must not make a busy entry look old.
        let new = (now.max(old.0), seq);
        e.order = new;
        if let Some(k) = self.order.remove(&old) {
            self.order.insert(new, k);
        }
        Some(e)
    }

    /// Make room for one more entry: sweep idle ones, else drop the least recently used entry
    /// without connections, preferring one that is not suspended.
    fn make_room(&mut self, now: Instant) -> bool {
        let max = self.opts.max_entries.max(1);
        if self.entries.len() < max {
            return true;
        }
        self.purge_idle(now);
        if self.entries.len() < max {
            return true;
        }
        let mut fallback = None;
        let mut victim = None;
        for (k, name) in &self.order {
            let Some(e) = self.entries.get(name.as_str()) else { continue };
            if e.in_flight > 0 {
                continue;
            }
            if e.suspended(now).is_none() {
                victim = Some(*k);
                break;
            }
            fallback = fallback.or(Some(*k));
        }
        match victim.or(fallback).and_then(|k| self.order.remove(&k)) {
            Some(name) => {
                self.entries.remove(&name);
                true
            }
            None => false,
        }
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ReplyClass::*;

    const S: fn(u64) -> Duration = Duration::from_secs;
    const MS: fn(u64) -> Duration = Duration::from_millis;

    fn limits(max_connections: u32, msgs_per_s: Option<f64>, burst: u32) -> DestinationLimits {
        DestinationLimits { max_connections, msgs_per_s, burst }
    }

    fn with_limits(table: LimitTable) -> Destinations {
        Destinations::new(DestinationOptions { limits: table, ..DestinationOptions::default() })
    }

    #[test]
    fn defaults() {
        let o = DestinationOptions::default();
        assert_eq!(o.suspension_steps, vec![S(60), S(300), S(900)]);
        assert_eq!(o.escalation_memory, S(3600));
        assert_eq!(o.idle_ttl, S(3600));
        assert_eq!(o.max_entries, 100_000);
        assert_eq!(*o.limits.get("any.example"), limits(20, None, 1));
        assert_eq!(o.validate(), Result::Ok(()));
    }

    #[test]
    fn manual_suspension_and_resume() {
        let t0 = Instant::now();
        let mut d = Destinations::new(DestinationOptions::default());
        assert_eq!(d.is_suspended("example.com", t0), None);
        assert_eq!(d.suspend("Example.COM.", t0 + S(600), t0), Some(t0 + S(600)));
        assert_eq!(d.is_suspended("example.com", t0), Some(t0 + S(600)));
        assert_eq!(d.is_suspended("EXAMPLE.com.", t0 + S(599)), Some(t0 + S(600)));
        assert_eq!(d.is_suspended("example.com", t0 + S(600)), None);
        assert_eq!(d.is_suspended("other.example", t0), None);
        // A shorter suspension does not shorten the one in force; a longer one extends it.
        assert_eq!(d.suspend("example.com", t0 + S(60), t0), Some(t0 + S(600)));
        assert_eq!(d.suspend("example.com", t0 + S(900), t0), Some(t0 + S(900)));
        // Once over, a shorter one applies.
        assert_eq!(d.suspend("example.com", t0 + S(1000), t0 + S(950)), Some(t0 + S(1000)));
        // Capped at a day.
        assert_eq!(d.suspend("example.com", t0 + S(400_000), t0), Some(t0 + MAX_SUSPENSION));
        assert_eq!(d.resume("example.com", t0), Some(t0 + MAX_SUSPENSION));
        assert_eq!(d.is_suspended("example.com", t0), None);
        assert_eq!(d.resume("example.com", t0), None);
        assert_eq!(d.resume("unknown.example", t0), None);
        assert_eq!(d.suspended(t0), vec![]);
    }

    #[test]
    fn suspension_escalates_caps_and_resets() {
        let t0 = Instant::now();
        let mut d = Destinations::new(DestinationOptions::default());
        let mut now = t0;
        let mut got = vec![];
        for class in [ServiceUnavailable, RateLimited, RateLimited, ServiceUnavailable, RateLimited] {
            let until = d.record("gmail.com", class, now).unwrap();
            got.push((until - now).as_secs());
            assert_eq!(d.is_suspended("gmail.com", now), Some(until));
            now = until; // the suspension ends, the next try is refused again
        }
        assert_eq!(got, [60, 300, 900, 900, 900]);
        // Failures of one message change nothing.
        assert_eq!(d.record("gmail.com", TempFail, now), None);
        assert_eq!(d.record("gmail.com", PermFail, now), None);
        assert_eq!(d.record("gmail.com", RateLimited, now).map(|u| u - now), Some(S(900)));
        // A success resets the escalation but does not lift the suspension in force.
        let until = d.is_suspended("gmail.com", now).unwrap();
        assert_eq!(d.record("gmail.com", Ok, now), None);
        assert_eq!(d.is_suspended("gmail.com", now), Some(until));
        assert_eq!(d.record("gmail.com", RateLimited, until).map(|u| u - until), Some(S(60)));
        // Success for an unknown destination creates nothing.
        assert_eq!(d.record("new.example", Ok, now), None);
        assert_eq!(d.len(), 1);
    }

    #[test]
    fn parallel_421s_are_one_episode() {
        let t0 = Instant::now();
        let mut d = Destinations::new(DestinationOptions::default());
        let first = d.record("example.com", ServiceUnavailable, t0).unwrap();
        for i in 1..10 {
            assert_eq!(d.record("example.com", RateLimited, t0 + MS(i * 10)), Some(first));
        }
        // The next episode is only the second step.
        assert_eq!(d.record("example.com", RateLimited, first), Some(first + S(300)));
        // A manual suspension also absorbs rate-limit replies without escalating.
        let mut d = Destinations::new(DestinationOptions::default());
        d.suspend("example.com", t0 + S(7200), t0);
        assert_eq!(d.record("example.com", RateLimited, t0), Some(t0 + S(7200)));
        assert_eq!(d.record("example.com", RateLimited, t0 + S(7200)), Some(t0 + S(7260)));
    }

    #[test]
    fn escalation_is_forgotten_after_a_quiet_spell() {
        let t0 = Instant::now();
        let mut d =
            Destinations::new(DestinationOptions { escalation_memory: S(600), ..DestinationOptions::default() });
        let end1 = d.record("example.com", RateLimited, t0).unwrap(); // 60 s
        let end2 = d.record("example.com", RateLimited, end1 + S(599)).unwrap();
        assert_eq!(end2 - (end1 + S(599)), S(300));
        // 600 s after the second suspension ended: back to the first step.
        let t = end2 + S(600);
        assert_eq!(d.record("example.com", RateLimited, t), Some(t + S(60)));
    }

    #[test]
    fn custom_and_odd_suspension_steps() {
        let t0 = Instant::now();
        let one = DestinationOptions { suspension_steps: vec![S(10)], ..DestinationOptions::default() };
        let mut d = Destinations::new(one);
        assert_eq!(d.record("a", RateLimited, t0), Some(t0 + S(10)));
        assert_eq!(d.record("a", RateLimited, t0 + S(10)), Some(t0 + S(20)));
        // Empty steps never mean "hammer": a minute. Huge steps are capped.
        let none = DestinationOptions { suspension_steps: vec![], ..DestinationOptions::default() };
        assert_eq!(Destinations::new(none).record("a", RateLimited, t0), Some(t0 + S(60)));
        let huge = DestinationOptions { suspension_steps: vec![Duration::MAX], ..DestinationOptions::default() };
        assert_eq!(Destinations::new(huge).record("a", RateLimited, t0), Some(t0 + MAX_SUSPENSION));
        // Thousands of episodes: the level saturates, nothing overflows.
        let mut d = Destinations::new(DestinationOptions::default());
        let mut now = t0;
        for _ in 0..5_000 {
            now = d.record("a", ServiceUnavailable, now).unwrap();
        }
        assert_eq!(d.record("a", ServiceUnavailable, now), Some(now + S(900)));
    }

    #[test]
    fn token_bucket_refill_math() {
        let t0 = Instant::now();
        let mut d = with_limits(LimitTable::new(limits(20, Some(10.0), 5)));
        // A full bucket: five at once, the sixth waits one interval (100 ms).
        for i in 0..5 {
            assert_eq!(d.try_take("example.com", t0), Result::Ok(()), "take {i}");
        }
        assert_eq!(d.try_take("example.com", t0), Err(t0 + MS(100)));
        // Asking again does not consume anything or move the answer.
        assert_eq!(d.try_take("example.com", t0 + MS(50)), Err(t0 + MS(100)));
        // At the promised instant exactly one goes.
        assert_eq!(d.try_take("example.com", t0 + MS(100)), Result::Ok(()));
        assert_eq!(d.try_take("example.com", t0 + MS(100)), Err(t0 + MS(200)));
        // After 250 ms idle, 2 tokens (and a half) have come back.
        let t = t0 + MS(350);
        assert_eq!(d.try_take("example.com", t), Result::Ok(()));
        assert_eq!(d.try_take("example.com", t), Result::Ok(()));
        assert_eq!(d.try_take("example.com", t), Err(t0 + MS(400)));
        // A long quiet spell refills to the burst, not beyond.
        let t = t0 + S(60);
        for _ in 0..5 {
            assert_eq!(d.try_take("example.com", t), Result::Ok(()));
        }
        assert_eq!(d.try_take("example.com", t), Err(t + MS(100)));
        // Steady state at the rate never waits.
        let mut d = with_limits(LimitTable::new(limits(20, Some(10.0), 1)));
        for i in 0..100 {
            assert_eq!(d.try_take("example.com", t0 + MS(100 * i)), Result::Ok(()), "{i}");
        }
        // Destinations do not share a bucket.
        let mut d = with_limits(LimitTable::new(limits(20, Some(1.0), 1)));
        assert_eq!(d.try_take("a.example", t0), Result::Ok(()));
        assert_eq!(d.try_take("b.example", t0), Result::Ok(()));
        assert_eq!(d.try_take("a.example", t0), Err(t0 + S(1)));
    }

    #[test]
    fn no_rate_means_no_limit_and_no_state() {
        let t0 = Instant::now();
        let mut d = Destinations::new(DestinationOptions::default());
        for _ in 0..1000 {
            assert_eq!(d.try_take("example.com", t0), Result::Ok(()));
        }
        assert!(d.is_empty());
        // Unusable rates (validate refuses them) do not limit either; a tiny one is capped.
        for r in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let mut d = with_limits(LimitTable::new(limits(20, Some(r), 1)));
            assert_eq!(d.try_take("x", t0), Result::Ok(()), "{r}");
            assert_eq!(d.try_take("x", t0), Result::Ok(()), "{r}");
            assert!(d.is_empty());
        }
        let mut d = with_limits(LimitTable::new(limits(20, Some(1e-12), 0)));
        assert_eq!(d.try_take("x", t0), Result::Ok(()));
        assert_eq!(d.try_take("x", t0), Err(t0 + MAX_EMISSION_INTERVAL));
    }

    #[test]
    fn concurrency_limits_from_the_table() {
        let t0 = Instant::now();
        let table = LimitTable::new(limits(2, None, 1))
            .with("Gmail.com.", limits(3, None, 1))
            .with("*.protection.outlook.com", limits(1, None, 1))
            .with("*.eur.protection.outlook.com", limits(4, None, 1))
            .with("paused.example", limits(0, None, 1));
        assert_eq!(table.get("gmail.com").max_connections, 3);
        assert_eq!(table.get("GMAIL.COM.").max_connections, 3);
        assert_eq!(table.get("mx.gmail.com").max_connections, 2);
        assert_eq!(table.get("a-b.mail.protection.outlook.com").max_connections, 1);
        assert_eq!(table.get("x.eur.protection.outlook.com").max_connections, 4);
        assert_eq!(table.get("protection.outlook.com").max_connections, 2);
        assert_eq!(table.get("example.org").max_connections, 2);
        assert_eq!(table.get("").max_connections, 2);

        let mut d = with_limits(table);
        for _ in 0..3 {
            assert!(d.acquire("gmail.com", t0));
        }
        assert!(!d.acquire("gmail.com", t0));
        assert_eq!(d.in_flight("gmail.com"), 3);
        assert!(d.acquire("example.org", t0) && d.acquire("example.org", t0));
        assert!(!d.acquire("Example.org.", t0));
        assert!(d.release("gmail.com", t0));
        assert!(d.acquire("gmail.com", t0));
        assert!(!d.acquire("gmail.com", t0));
        assert!(!d.acquire("paused.example", t0));
        // Releasing more than was taken is refused and changes nothing.
        for _ in 0..3 {
            assert!(d.release("GMAIL.com", t0));
        }
        assert!(!d.release("gmail.com", t0));
        assert!(!d.release("never.example", t0));
        assert_eq!(d.in_flight("gmail.com"), 0);
        assert_eq!(d.in_flight("never.example"), 0);
        // A reload applies to the next acquire; slots held stay counted.
        d.set_limits(LimitTable::new(limits(1, None, 1)));
        assert!(!d.acquire("example.org", t0));
        assert!(d.release("example.org", t0) && d.release("example.org", t0));
        assert!(d.acquire("example.org", t0));
        assert_eq!(d.limits("anything").max_connections, 1);
    }

    #[test]
    fn idle_entries_expire() {
        let t0 = Instant::now();
        let mut d = Destinations::new(DestinationOptions { idle_ttl: S(100), ..DestinationOptions::default() });
        assert!(d.acquire("busy.example", t0));
        d.suspend("suspended.example", t0 + S(500), t0);
        assert!(d.acquire("idle.example", t0));
        assert!(d.release("idle.example", t0 + S(10)));
        assert_eq!(d.len(), 3);
        assert_eq!(d.purge_idle(t0 + S(109)), 0);
        // Idle for 100 s since its release: gone. Busy and suspended entries stay.
        assert_eq!(d.purge_idle(t0 + S(110)), 1);
        assert_eq!(d.len(), 2);
        assert_eq!(d.in_flight("busy.example"), 1);
        assert_eq!(d.purge_idle(t0 + S(499)), 0);
        assert_eq!(d.purge_idle(t0 + S(500)), 1);
        assert!(d.suspended(t0).is_empty());
        assert!(d.release("busy.example", t0 + S(600)));
        assert_eq!(d.purge_idle(t0 + S(699)), 0);
        assert_eq!(d.purge_idle(t0 + S(700)), 1);
        assert!(d.is_empty());
        // An idle_ttl longer than the clock's past never underflows.
        let mut d = Destinations::new(DestinationOptions { idle_ttl: Duration::MAX, ..DestinationOptions::default() });
        assert!(d.acquire("a", t0) && d.release("a", t0));
        assert_eq!(d.purge_idle(t0 + S(1_000_000)), 0);
    }

    #[test]
    fn bounded_map_evicts_least_recently_used_idle_first() {
        let t0 = Instant::now();
        let opts = DestinationOptions { max_entries: 3, ..DestinationOptions::default() };
        let mut d = Destinations::new(opts.clone());
        assert!(d.acquire("a", t0));
        d.suspend("b", t0 + S(3600), t0 + S(1));
        assert!(d.acquire("c", t0 + S(2)) && d.release("c", t0 + S(2)));
        // Full: a has a connection and b is suspended, so c (idle, newest) goes.
        assert!(d.acquire("d", t0 + S(3)));
        assert_eq!(d.len(), 3);
        assert_eq!(d.in_flight("a"), 1);
        assert!(d.is_suspended("b", t0 + S(3)).is_some());
        assert_eq!(d.in_flight("c"), 0);
        assert!(!d.entries.contains_key("c"));
        // Full again with only a suspended entry free of connections: it goes rather than
        // refusing a new destination.
        assert!(d.acquire("e", t0 + S(4)));
        assert!(d.is_suspended("b", t0 + S(4)).is_none());
        assert_eq!(d.len(), 3);
        // Every entry has a connection: the new destination is refused, nothing is lost.
        assert!(!d.acquire("f", t0 + S(5)));
        assert_eq!(d.try_take("f", t0 + S(5)), Result::Ok(()));
        assert_eq!(d.suspend("f", t0 + S(60), t0 + S(5)), None);
        assert_eq!(d.record("f", RateLimited, t0 + S(5)), None);
        assert_eq!(d.len(), 3);
        for n in ["a", "d", "e"] {
            assert_eq!(d.in_flight(n), 1, "{n}");
        }
        // Releasing one makes room again; the least recently used idle entry goes.
        assert!(d.release("d", t0 + S(6)));
        assert!(d.acquire("f", t0 + S(7)));
        assert!(!d.entries.contains_key("d"));

        // Plain LRU among idle entries, refreshed by use; same-instant entries in order.
        let mut d = Destinations::new(opts);
        for n in ["p", "q", "r"] {
            d.suspend(n, t0, t0); // an already-ended suspension: creates an idle entry
        }
        assert!(d.acquire("p", t0) && d.release("p", t0));
        d.suspend("s", t0, t0);
        let mut names: Vec<_> = d.entries.keys().cloned().collect();
        names.sort();
        assert_eq!(names, ["p", "r", "s"]);
        // A token bucket full of debt is still just an idle entry.
        let mut d = Destinations::new(DestinationOptions {
            max_entries: 1,
            limits: LimitTable::new(limits(20, Some(1.0), 1)),
            ..DestinationOptions::default()
        });
        assert_eq!(d.try_take("a", t0), Result::Ok(()));
        assert_eq!(d.try_take("b", t0), Result::Ok(()));
        assert_eq!(d.len(), 1);
        // A zero bound counts as one.
        let mut d = Destinations::new(DestinationOptions { max_entries: 0, ..DestinationOptions::default() });
        assert!(d.acquire("a", t0));
        assert!(!d.acquire("b", t0));
    }

    #[test]
    fn suspended_list_is_sorted() {
        let t0 = Instant::now();
        let mut d = Destinations::new(DestinationOptions::default());
        d.suspend("b.example", t0 + S(10), t0);
        d.record("a.example", RateLimited, t0);
        d.suspend("c.example", t0 + S(1), t0);
        assert_eq!(
            d.suspended(t0),
            vec![("a.example", t0 + S(60)), ("b.example", t0 + S(10)), ("c.example", t0 + S(1))]
        );
        assert_eq!(d.suspended(t0 + S(10)), vec![("a.example", t0 + S(60))]);
    }

    #[test]
    fn validate_names_the_setting() {
        let ok = DestinationOptions::default();
        let bad_limits = |l: DestinationLimits| DestinationOptions { limits: LimitTable::new(l), ..ok.clone() };
        let cases = [
            (bad_limits(limits(0, None, 1)), "max_connections"),
            (bad_limits(limits(1, Some(0.0), 1)), "msgs_per_s"),
            (bad_limits(limits(1, Some(f64::NAN), 1)), "msgs_per_s"),
            (bad_limits(limits(1, Some(-3.0), 1)), "msgs_per_s"),
            (bad_limits(limits(1, Some(3.0), 0)), "burst"),
            (DestinationOptions { suspension_steps: vec![], ..ok.clone() }, "suspension_steps"),
            (DestinationOptions { suspension_steps: vec![S(60), Duration::ZERO], ..ok.clone() }, "suspension_steps"),
            (DestinationOptions { suspension_steps: vec![S(90_000)], ..ok.clone() }, "suspension_steps"),
            (DestinationOptions { max_entries: 0, ..ok.clone() }, "max_entries"),
        ];
        for (o, setting) in cases {
            let err = o.validate().unwrap_err();
            assert_eq!(err.setting, setting, "{err}");
        }
        let table = LimitTable::default().with("*.Outlook.com", limits(1, Some(-1.0), 1));
        let err = DestinationOptions { limits: table, ..ok }.validate().unwrap_err();
        assert_eq!(err.setting, "msgs_per_s");
        assert!(err.to_string().contains("(for *.outlook.com)"), "{err}");
    }
}
