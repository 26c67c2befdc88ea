//! Per-destination suspension, with escalation on repeated rate limits, in a bounded map that
//! forgets destinations that have gone idle.
//!
//! A *destination* is whatever name the caller keys it by; the daemon's queue manager keys it
//! by recipient domain. Connection and message-rate limits are not kept here: the engine
//! enforces them itself (`engine::limits`), so this map only holds destinations that a 421,
//! a rate-limit reply or an operator has suspended.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use super::{normalize, ReplyClass, SettingError};

/// Longest automatic or manual suspension, and the cap on each escalation step: a destination
/// that has been quiet for a day deserves a fresh try, and the cap keeps `Instant` arithmetic
/// far from overflow.
pub const MAX_SUSPENSION: Duration = Duration::from_secs(24 * 3600);

/// Settings of a [`Destinations`] map.
#[derive(Debug, Clone, PartialEq)]
pub struct DestinationOptions {
    /// Suspension after the 1st, 2nd, … consecutive 421 or rate-limit episode; the last step
    /// repeats. Each is capped at [`MAX_SUSPENSION`].
    pub suspension_steps: Vec<Duration>,
    /// An episode that starts this long after the previous suspension ended starts the
    /// escalation again from the first step, as a success does.
    pub escalation_memory: Duration,
    /// A destination not suspended and not used for this long is forgotten, escalation
    /// history included (it costs nothing to recreate).
    pub idle_ttl: Duration,
    /// Most destinations held; at least 1.
    pub max_entries: usize,
}

impl Default for DestinationOptions {
    fn default() -> Self {
        DestinationOptions {
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
        if self.suspension_steps.is_empty() || self.suspension_steps.iter().any(|d| d.is_zero()) {
            return Err(SettingError::new("suspension_steps", "must list at least one duration, each longer than zero"));
        }
        if let Some(d) = self.suspension_steps.iter().find(|d| **d > MAX_SUSPENSION) {
            return Err(SettingError::new("suspension_steps", format!("{d:?} is longer than the {MAX_SUSPENSION:?} maximum")));
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
    /// Manual or automatic; cleared by `resume`.
    suspended_until: Option<Instant>,
    /// Consecutive suspension episodes since the last success.
    level: u32,
    /// When the last automatic suspension ended (or ends), for `escalation_memory`.
    episode_end: Option<Instant>,
    order: OrderKey,
}

impl Entry {
    fn suspended(&self, now: Instant) -> Option<Instant> {
        self.suspended_until.filter(|&u| now < u)
    }
}

/// Suspension state of every destination the daemon has had to hold back, owned by one queue
/// runner (no locks) and told `now` by it.
///
/// Bounded by [`DestinationOptions::max_entries`]: when full, entries not suspended and unused
/// for `idle_ttl` go first, then the least recently used entry not suspended (losing only its
/// escalation history), and only when every entry is suspended the least recently used of
/// those. Adding a destination therefore always succeeds.
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

    /// Until when `name` is suspended, if it is at `now`.
    pub fn is_suspended(&self, name: &str, now: Instant) -> Option<Instant> {
        self.entries.get(normalize(name).as_ref())?.suspended(now)
    }

    /// Suspend `name` until `until` (an operator's `mxpipe queue suspend`, or the daemon's own
    /// decision). Never shortens a suspension in force ([`Destinations::resume`] does);
    /// capped at [`MAX_SUSPENSION`] from `now`. Returns the suspension in force.
    pub fn suspend(&mut self, name: &str, until: Instant, now: Instant) -> Instant {
        let until = until.min(now + MAX_SUSPENSION);
        let e = self.touch(name, now);
        let until = e.suspended(now).map_or(until, |cur| cur.max(until));
        e.suspended_until = Some(until);
        until
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
                let e = self.touch(name, now);
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

    /// Every destination suspended at `now` with its end, sorted by name (for `GET /v1/queues`
    /// and `mxpipe queue list`).
    pub fn suspended(&self, now: Instant) -> Vec<(&str, Instant)> {
        let mut v: Vec<_> = self.entries.iter().filter_map(|(k, e)| e.suspended(now).map(|u| (k.as_str(), u))).collect();
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

    /// Forget every destination not suspended at `now` and unused for `idle_ttl`; returns
    /// how many. Adding a destination to a full map does this too.
    pub fn purge_idle(&mut self, now: Instant) -> usize {
        let Some(cutoff) = now.checked_sub(self.opts.idle_ttl) else { return 0 };
        let stale: Vec<OrderKey> = self
            .order
            .range(..=(cutoff, u64::MAX))
            .filter(|(_, name)| self.entries.get(name.as_str()).is_some_and(|e| e.suspended(now).is_none()))
            .map(|(k, _)| *k)
            .collect();
        for k in &stale {
            if let Some(name) = self.order.remove(k) {
                self.entries.remove(&name);
            }
        }
        stale.len()
    }

    /// The entry for `name`, created if needed (making room first), marked used at `now`.
    fn touch(&mut self, name: &str, now: Instant) -> &mut Entry {
        let key = normalize(name).into_owned();
        let seq = self.next_seq();
        let order = match self.entries.get(&key) {
            // A caller's `now` that went backwards must not make an entry look old.
            Some(e) => {
                let old = e.order;
                self.order.remove(&old);
                (now.max(old.0), seq)
            }
            None => {
                self.make_room(now);
                (now, seq)
            }
        };
        self.order.insert(order, key.clone());
        let e = self.entries.entry(key).or_insert(Entry { suspended_until: None, level: 0, episode_end: None, order });
        e.order = order;
        e
    }

    /// Make room for one more entry: sweep idle ones, else drop the least recently used entry
    /// not suspended, else (every entry suspended) the least recently used one.
    fn make_room(&mut self, now: Instant) {
        let max = self.opts.max_entries.max(1);
        if self.entries.len() < max {
            return;
        }
        self.purge_idle(now);
        if self.entries.len() < max {
            return;
        }
        let not_suspended = self.order.iter().find(|(_, name)| self.entries.get(name.as_str()).is_some_and(|e| e.suspended(now).is_none()));
        let victim = not_suspended.or_else(|| self.order.first_key_value()).map(|(k, _)| *k);
        if let Some(name) = victim.and_then(|k| self.order.remove(&k)) {
            self.entries.remove(&name);
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

    #[test]
    fn defaults() {
        let o = DestinationOptions::default();
        assert_eq!(o.suspension_steps, vec![S(60), S(300), S(900)]);
        assert_eq!(o.escalation_memory, S(3600));
        assert_eq!(o.idle_ttl, S(3600));
        assert_eq!(o.max_entries, 100_000);
        assert_eq!(o.validate(), Result::Ok(()));
    }

    #[test]
    fn manual_suspension_and_resume() {
        let t0 = Instant::now();
        let mut d = Destinations::new(DestinationOptions::default());
        assert_eq!(d.is_suspended("example.com", t0), None);
        assert_eq!(d.suspend("Example.COM.", t0 + S(600), t0), t0 + S(600));
        assert_eq!(d.is_suspended("example.com", t0), Some(t0 + S(600)));
        assert_eq!(d.is_suspended("EXAMPLE.com.", t0 + S(599)), Some(t0 + S(600)));
        assert_eq!(d.is_suspended("example.com", t0 + S(600)), None);
        assert_eq!(d.is_suspended("other.example", t0), None);
        // A shorter suspension does not shorten the one in force; a longer one extends it.
        assert_eq!(d.suspend("example.com", t0 + S(60), t0), t0 + S(600));
        assert_eq!(d.suspend("example.com", t0 + S(900), t0), t0 + S(900));
        // Once over, a shorter one applies.
        assert_eq!(d.suspend("example.com", t0 + S(1000), t0 + S(950)), t0 + S(1000));
        // Capped at a day.
        assert_eq!(d.suspend("example.com", t0 + S(400_000), t0), t0 + MAX_SUSPENSION);
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
        let mut d = Destinations::new(DestinationOptions { escalation_memory: S(600), ..DestinationOptions::default() });
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
    fn idle_entries_expire() {
        let t0 = Instant::now();
        let mut d = Destinations::new(DestinationOptions { idle_ttl: S(100), ..DestinationOptions::default() });
        d.suspend("long.example", t0 + S(500), t0);
        d.suspend("short.example", t0 + S(10), t0);
        assert_eq!(d.record("escalated.example", RateLimited, t0 + S(5)), Some(t0 + S(65)));
        assert_eq!(d.len(), 3);
        assert_eq!(d.purge_idle(t0 + S(99)), 0);
        // Unused for 100 s and no longer suspended: gone. Suspended entries stay.
        assert_eq!(d.purge_idle(t0 + S(100)), 1);
        assert!(!d.entries.contains_key("short.example"));
        assert_eq!(d.purge_idle(t0 + S(104)), 0);
        // Its escalation history goes with it: the next episode is the first step again.
        assert_eq!(d.purge_idle(t0 + S(105)), 1);
        assert_eq!(d.record("escalated.example", RateLimited, t0 + S(105)), Some(t0 + S(165)));
        assert_eq!(d.purge_idle(t0 + S(499)), 1);
        assert_eq!(d.suspended(t0 + S(499)), vec![("long.example", t0 + S(500))]);
        assert_eq!(d.purge_idle(t0 + S(500)), 1);
        assert!(d.is_empty());
        // An idle_ttl longer than the clock's past never underflows.
        let mut d = Destinations::new(DestinationOptions { idle_ttl: Duration::MAX, ..DestinationOptions::default() });
        d.suspend("a", t0, t0);
        assert_eq!(d.purge_idle(t0 + S(1_000_000)), 0);
    }

    #[test]
    fn bounded_map_never_evicts_a_suspension_while_another_entry_can_go() {
        let t0 = Instant::now();
        let names = |d: &Destinations| {
            let mut v: Vec<_> = d.entries.keys().cloned().collect();
            v.sort();
            v
        };
        let opts = DestinationOptions { max_entries: 3, ..DestinationOptions::default() };
        let mut d = Destinations::new(opts.clone());
        d.suspend("a", t0 + S(3600), t0);
        assert_eq!(d.record("b", RateLimited, t0 + S(1)), Some(t0 + S(61)));
        d.suspend("c", t0 + S(3600), t0 + S(2));
        // Full: b's suspension is over and it holds only escalation history, so it goes,
        // though a is older.
        d.suspend("d", t0 + S(3600), t0 + S(100));
        assert_eq!(names(&d), ["a", "c", "d"]);
        // Every entry suspended: the least recently used goes rather than refusing the new one.
        assert_eq!(d.record("e", RateLimited, t0 + S(101)), Some(t0 + S(161)));
        assert_eq!(names(&d), ["c", "d", "e"]);
        assert_eq!(d.is_suspended("a", t0 + S(101)), None);
        // Use refreshes an entry: c is used again, so d is now the oldest.
        d.suspend("c", t0 + S(10), t0 + S(102));
        d.suspend("f", t0 + S(3600), t0 + S(103));
        assert_eq!(names(&d), ["c", "e", "f"]);
        // A caller's `now` that went backwards does not make an entry look old: e goes, not c.
        d.suspend("c", t0 + S(3600), t0);
        d.suspend("g", t0 + S(3600), t0 + S(104));
        assert_eq!(names(&d), ["c", "f", "g"]);
        assert_eq!(d.suspended(t0 + S(104)).len(), 3);

        // Plain LRU among entries not suspended, refreshed by use; same-instant entries in order.
        let mut d = Destinations::new(opts);
        for n in ["p", "q", "r"] {
            d.suspend(n, t0, t0); // an already-ended suspension: creates an entry not suspended
        }
        d.suspend("p", t0, t0);
        d.suspend("s", t0, t0);
        assert_eq!(names(&d), ["p", "r", "s"]);
        // A zero bound counts as one.
        let mut d = Destinations::new(DestinationOptions { max_entries: 0, ..DestinationOptions::default() });
        d.suspend("a", t0 + S(60), t0);
        assert_eq!(d.suspend("b", t0 + S(60), t0), t0 + S(60));
        assert_eq!(names(&d), ["b"]);
    }

    #[test]
    fn suspended_list_is_sorted() {
        let t0 = Instant::now();
        let mut d = Destinations::new(DestinationOptions::default());
        d.suspend("b.example", t0 + S(10), t0);
        d.record("a.example", RateLimited, t0);
        d.suspend("c.example", t0 + S(1), t0);
        assert_eq!(d.suspended(t0), vec![("a.example", t0 + S(60)), ("b.example", t0 + S(10)), ("c.example", t0 + S(1))]);
        assert_eq!(d.suspended(t0 + S(10)), vec![("a.example", t0 + S(60))]);
    }

    #[test]
    fn validate_names_the_setting() {
        let ok = DestinationOptions::default();
        let cases = [
            (DestinationOptions { suspension_steps: vec![], ..ok.clone() }, "suspension_steps"),
            (DestinationOptions { suspension_steps: vec![S(60), Duration::ZERO], ..ok.clone() }, "suspension_steps"),
            (DestinationOptions { suspension_steps: vec![S(90_000)], ..ok.clone() }, "suspension_steps"),
            (DestinationOptions { max_entries: 0, ..ok }, "max_entries"),
        ];
        for (o, setting) in cases {
            let err = o.validate().unwrap_err();
            assert_eq!(err.setting, setting, "{err}");
        }
    }
}
