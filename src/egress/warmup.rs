//! IP warm-up: a per-source schedule of daily message caps per destination class (gmail,
//! outlook, "other", ...) that grows day by day until the source is warm. Owns the counters
//! and their state file; it does not choose sources or hold messages (the pool does: when
//! [`Warmup::try_take`] says [`Take::Capped`] it tries the pool's next source, and when all
//! are capped the message waits until the earliest `until`, never bounces).
//!
//! Persistence: counters and each source's day-1 start are saved to a small versioned JSON
//! file by [`Warmup::try_take`] at most every [`SAVE_INTERVAL`], and on drop; the caller may
//! call [`Warmup::save`] more often (at shutdown, say). A crash can therefore re-grant at
//! most the takes made since the last save.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// At most this many `[[egress.warmup]]` plans.
pub const MAX_PLANS: usize = 64;
/// At most this many classes per plan (besides "other").
pub const MAX_CLASSES: usize = 64;
/// At most this many MX patterns per class.
pub const MAX_PATTERNS: usize = 256;
/// At most this many explicit daily caps (`caps = [...]`).
pub const MAX_CAPS: usize = 1000;
/// At most this many sources.
pub const MAX_SOURCES: usize = 4096;
/// Longest plan, class or source name.
pub const MAX_NAME: usize = 128;
/// Largest state file read back.
pub const MAX_STATE_FILE: u64 = 16 << 20;
/// `try_take` saves the state file at most this often.
pub const SAVE_INTERVAL: Duration = Duration::from_secs(5);
/// The class of an MX host that is in no configured class.
pub const OTHER_CLASS: &str = "other";

const STATE_VERSION: u32 = 1;

/// One `[[egress.warmup]]` plan: how many messages a new source may send per destination
/// class on each day of its warm-up.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WarmupPlan {
    /// The plan's name, which `[[egress.source]] warmup = "..."` refers to.
    pub name: String,
    /// Day-1 cap per destination class (default 50), growing by `factor` a day.
    #[serde(default = "default_start")]
    pub start: u64,
    /// How much the cap grows each day, 1.0 to 100.0 (default 2.0: doubling).
    #[serde(default = "default_factor")]
    pub factor: f64,
    /// Explicit caps per day (`caps = [50, 100, 250, 500]`), instead of `start`/`factor`;
    /// after the last day the source is warm.
    #[serde(default)]
    pub caps: Option<Vec<u64>>,
    /// Once the day's cap reaches this (or the explicit list ends) the source is warm: no cap.
    /// Without it (and without `caps`) the cap grows forever.
    #[serde(default)]
    pub max: Option<u64>,
    /// Destination classes: `[[egress.warmup.class]] name = "gmail", mx = ["*.google.com"]`;
    /// an MX host in no class is in class "other" (capped the same way). The first class
    /// with a matching pattern wins.
    #[serde(default, rename = "class")]
    pub classes: Vec<WarmupClass>,
    /// Length of a "day" of the schedule: default `"24h"` (tests use e.g. `"2s"`).
    #[serde(default = "default_day", deserialize_with = "crate::value::duration::deserialize")]
    pub day: Duration,
}

fn default_start() -> u64 {
    50
}
fn default_factor() -> f64 {
    2.0
}
fn default_day() -> Duration {
    Duration::from_secs(86_400)
}

impl WarmupPlan {
    /// A plan with the defaults (day-1 cap 50, doubling daily, no classes, never warm).
    pub fn new(name: impl Into<String>) -> WarmupPlan {
        WarmupPlan {
            name: name.into(),
            start: default_start(),
            factor: default_factor(),
            caps: None,
            max: None,
            classes: Vec::new(),
            day: default_day(),
        }
    }

    fn check(&self) -> Result<(), String> {
        let n = &self.name;
        check_name("warm-up plan", n)?;
        if self.start == 0 {
            return Err(format!("warm-up plan {n:?}: start must be at least 1"));
        }
        if !self.factor.is_finite() || !(1.0..=100.0).contains(&self.factor) {
            return Err(format!("warm-up plan {n:?}: factor {} is not between 1.0 and 100.0", self.factor));
        }
        if let Some(caps) = &self.caps {
            if caps.is_empty() || caps.len() > MAX_CAPS {
                return Err(format!("warm-up plan {n:?}: caps must list 1 to {MAX_CAPS} days"));
            }
        }
        if self.day.is_zero() || self.day > Duration::from_secs(366 * 86_400) {
            return Err(format!("warm-up plan {n:?}: day must be more than 0s and at most 366d"));
        }
        if self.classes.len() > MAX_CLASSES {
            return Err(format!("warm-up plan {n:?}: more than {MAX_CLASSES} classes"));
        }
        for (i, c) in self.classes.iter().enumerate() {
            check_name("warm-up class", &c.name)?;
            if c.name == OTHER_CLASS || self.classes[..i].iter().any(|o| o.name == c.name) {
                return Err(format!("warm-up plan {n:?}: class {:?} is reserved or given twice", c.name));
            }
            if c.mx.is_empty() || c.mx.len() > MAX_PATTERNS {
                return Err(format!("warm-up plan {n:?}, class {:?}: mx must list 1 to {MAX_PATTERNS} patterns", c.name));
            }
            for p in &c.mx {
                p.parse::<crate::value::mx_pattern::MxPattern>().map_err(|e| format!("warm-up plan {n:?}, class {:?}: {e}", c.name))?;
            }
        }
        Ok(())
    }

    /// The cap of day `day` (0-based), or None once warm.
    fn cap(&self, day: u64) -> Option<u64> {
        if let Some(caps) = &self.caps {
            return usize::try_from(day).ok().and_then(|d| caps.get(d)).copied();
        }
        let exp = i32::try_from(day.min(4096)).unwrap_or(4096);
        let c = self.start as f64 * self.factor.powi(exp);
        let c = if c >= u64::MAX as f64 { u64::MAX } else { c as u64 };
        match self.max {
            Some(m) if c >= m => None,
            _ => Some(c),
        }
    }

    fn class_of(&self, mx_host: &str) -> &str {
        self.classes
            .iter()
            .find(|c| c.mx.iter().any(|p| crate::value::mx_pattern::host_matches(p, mx_host)))
            .map_or(OTHER_CLASS, |c| c.name.as_str())
    }

    fn class_names(&self) -> impl Iterator<Item = &str> {
        self.classes.iter().map(|c| c.name.as_str()).chain(std::iter::once(OTHER_CLASS))
    }
}

fn check_name(what: &str, n: &str) -> Result<(), String> {
    if n.is_empty() || n.len() > MAX_NAME || n.chars().any(|c| c.is_control()) {
        return Err(format!("{what} name {n:?} must be 1 to {MAX_NAME} printable characters"));
    }
    Ok(())
}

/// A destination class of a warm-up plan: the MX hosts counted together (one provider).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WarmupClass {
    /// The class's name, as shown in the status ("other" is reserved).
    pub name: String,
    /// MX host patterns (`"mx.example.net"`, `"*.google.com"`).
    pub mx: Vec<String>,
}

/// What [`Warmup::try_take`] answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// The message may go from this source (and counts against today's cap).
    Granted,
    /// Today's cap is used up; the source may send to this class again from `until`.
    Capped {
        /// Start of the source's next day.
        until: SystemTime,
    },
}

/// A take under a cap shared by the nodes of a cluster ([`Warmup::quote`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quote {
    /// The shared counter: source, destination class and 0-based day.
    pub counter: String,
    /// Today's cap, for the whole cluster.
    pub cap: u64,
    /// Start of the source's next day (when a used-up cap ends).
    pub until: SystemTime,
    /// How long the counter must live after its last use.
    pub ttl: Duration,
}

/// What one source may still send today to one class, for `GET /v1/queues` and metrics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WarmupStatus {
    /// The source's name.
    pub source: String,
    /// Its warm-up plan.
    pub plan: String,
    /// Day of the warm-up, 1-based (0: not used yet, so not started).
    pub day: u64,
    /// The destination class.
    pub class: String,
    /// Today's cap, None once warm.
    pub cap: Option<u64>,
    /// Messages taken today.
    pub used: u64,
}

/// The clock a [`Warmup`] reads.
pub type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// One source's counters, persisted.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct SourceState {
    /// Day 1 began here (Unix milliseconds); None until first used.
    start_ms: Option<u64>,
    /// The 0-based day `used` counts.
    day: u64,
    used: HashMap<String, u64>,
}

#[derive(Serialize, Deserialize)]
struct StateFile {
    version: u32,
    sources: HashMap<String, SourceState>,
}

struct Source {
    plan: usize,
    state: Mutex<SourceState>,
}

/// The warm-up counters of every source, shared by all engine shards (`Arc<Warmup>`). Each
/// source has its own mutex, held only to count; saving copies the counters first.
pub struct Warmup {
    plans: Vec<WarmupPlan>,
    sources: HashMap<String, Source>,
    state_file: Option<PathBuf>,
    clock: Clock,
    last_save: Mutex<SystemTime>,
}

impl std::fmt::Debug for Warmup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Warmup").field("sources", &self.sources.len()).field("state_file", &self.state_file).finish()
    }
}

fn ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Warmup {
    /// `sources`: (source name, plan name); an unknown plan name is an error naming both.
    /// `state_file`: where counters and each source's warm-up start are kept across restarts
    /// (None: memory only); a missing file is a fresh start, an unreadable or corrupt one an
    /// error naming it. A source's day 1 starts when it is first used.
    pub fn new(plans: &[WarmupPlan], sources: &[(String, String)], state_file: Option<PathBuf>) -> Result<Warmup, String> {
        Warmup::with_clock(plans, sources, state_file, Arc::new(SystemTime::now))
    }

    /// [`Warmup::new`] reading time from `clock` (tests).
    pub fn with_clock(
        plans: &[WarmupPlan],
        sources: &[(String, String)],
        state_file: Option<PathBuf>,
        clock: Clock,
    ) -> Result<Warmup, String> {
        if plans.len() > MAX_PLANS {
            return Err(format!("more than {MAX_PLANS} warm-up plans"));
        }
        if sources.len() > MAX_SOURCES {
            return Err(format!("more than {MAX_SOURCES} warm-up sources"));
        }
        for (i, p) in plans.iter().enumerate() {
            p.check()?;
            if plans[..i].iter().any(|o| o.name == p.name) {
                return Err(format!("warm-up plan {:?} is defined twice", p.name));
            }
        }
        let mut saved = match &state_file {
            Some(path) => load(path)?,
            None => HashMap::new(),
        };
        let mut map = HashMap::new();
        for (source, plan) in sources {
            let Some(i) = plans.iter().position(|p| &p.name == plan) else {
                return Err(format!("egress source {source:?}: no warm-up plan named {plan:?}"));
            };
            let mut st = saved.remove(source).unwrap_or_default();
            // Drop classes the plan no longer has; keeps the map bounded by the config.
            st.used.retain(|c, _| plans[i].class_names().any(|n| n == c));
            map.insert(source.clone(), Source { plan: i, state: Mutex::new(st) });
        }
        let now = clock();
        Ok(Warmup { plans: plans.to_vec(), sources: map, state_file, clock, last_save: Mutex::new(now) })
    }

    /// Where `st` is now: (0-based day, start of the next day), starting day 1 if `start` and
    /// it had not started. Resets the counters at a day boundary.
    fn roll(plan: &WarmupPlan, st: &mut SourceState, now: SystemTime, start: bool) -> Option<(u64, SystemTime)> {
        let now_ms = ms(now);
        let start_ms = match st.start_ms {
            Some(s) => s,
            None if start => *st.start_ms.insert(now_ms),
            None => return None,
        };
        let day_ms = u64::try_from(plan.day.as_millis()).unwrap_or(u64::MAX).max(1);
        let day = now_ms.saturating_sub(start_ms) / day_ms;
        if day != st.day {
            st.day = day;
            st.used.clear();
        }
        let next = start_ms.saturating_add(day.saturating_add(1).saturating_mul(day_ms));
        Some((day, UNIX_EPOCH + Duration::from_millis(next)))
    }

    /// Takes one message of today's cap of `source` for the class `mx_host` falls in. A source
    /// without a plan, or warm, is always Granted. Saves the state file now and then (see the
    /// module docs); a failed save is logged, not returned.
    pub fn try_take(&self, source: &str, mx_host: &str) -> Take {
        let Some(src) = self.sources.get(source) else { return Take::Granted };
        let plan = &self.plans[src.plan];
        let now = (self.clock)();
        let take = {
            let mut st = src.state.lock().unwrap_or_else(|e| e.into_inner());
            let Some((day, next)) = Warmup::roll(plan, &mut st, now, true) else { return Take::Granted };
            match plan.cap(day) {
                None => Take::Granted,
                Some(cap) => {
                    let class = plan.class_of(mx_host);
                    let used = st.used.entry(class.to_string()).or_insert(0);
                    if *used >= cap {
                        Take::Capped { until: next }
                    } else {
                        *used += 1;
                        Take::Granted
                    }
                }
            }
        };
        self.maybe_save(now);
        take
    }

    /// Cluster mode: when `source`'s day 1 began (Unix milliseconds), starting it now if it
    /// had not started; None for a source without a plan. The nodes then agree on the
    /// earliest start any of them saw and each adopts it ([`Warmup::adopt_start`]).
    pub fn begin(&self, source: &str) -> Option<u64> {
        let src = self.sources.get(source)?;
        let mut st = src.state.lock().unwrap_or_else(|e| e.into_inner());
        Warmup::roll(&self.plans[src.plan], &mut st, (self.clock)(), true)?;
        st.start_ms
    }

    /// Cluster mode: `source`'s day 1 began at `start_ms` (the cluster's earliest); its day
    /// and counters follow from that.
    pub fn adopt_start(&self, source: &str, start_ms: u64) {
        let Some(src) = self.sources.get(source) else { return };
        let mut st = src.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.start_ms != Some(start_ms) {
            st.start_ms = Some(start_ms);
            Warmup::roll(&self.plans[src.plan], &mut st, (self.clock)(), false);
        }
    }

    /// Cluster mode: what a take of `source`'s cap toward `mx_host` needs from the shared
    /// counter, or None when no cap applies (no plan, or warm). Counts nothing: after the
    /// shared counter granted it, [`Warmup::taken`] counts it here for the status.
    pub fn quote(&self, source: &str, mx_host: &str) -> Option<Quote> {
        let src = self.sources.get(source)?;
        let plan = &self.plans[src.plan];
        let mut st = src.state.lock().unwrap_or_else(|e| e.into_inner());
        let (day, until) = Warmup::roll(plan, &mut st, (self.clock)(), true)?;
        let cap = plan.cap(day)?;
        let class = plan.class_of(mx_host);
        // The shared counter outlives its day by one day: a late node still sees it used up.
        let ttl = plan.day.saturating_mul(2);
        Some(Quote { counter: crate::cluster::count::warmup_name(source, class, day), cap, until, ttl })
    }

    /// Cluster mode: one message of `source`'s cap toward `mx_host` was granted by the shared
    /// counter; counted here too, for this node's status and state file.
    pub fn taken(&self, source: &str, mx_host: &str) {
        let Some(src) = self.sources.get(source) else { return };
        let plan = &self.plans[src.plan];
        let now = (self.clock)();
        {
            let mut st = src.state.lock().unwrap_or_else(|e| e.into_inner());
            if Warmup::roll(plan, &mut st, now, true).is_some() {
                *st.used.entry(plan.class_of(mx_host).to_string()).or_insert(0) += 1;
            }
        }
        self.maybe_save(now);
    }

    fn maybe_save(&self, now: SystemTime) {
        if self.state_file.is_none() {
            return;
        }
        {
            let mut last = self.last_save.lock().unwrap_or_else(|e| e.into_inner());
            if now.duration_since(*last).unwrap_or_default() < SAVE_INTERVAL {
                return;
            }
            *last = now;
        }
        if let Err(e) = self.save() {
            tracing::warn!(error = %e, file = ?self.state_file, "cannot save the warm-up state");
        }
    }

    /// Gives back one taken message that was not sent after all (same day only: a take of
    /// an earlier day is not given back to today's cap).
    pub fn give_back(&self, source: &str, mx_host: &str) {
        let Some(src) = self.sources.get(source) else { return };
        let plan = &self.plans[src.plan];
        let mut st = src.state.lock().unwrap_or_else(|e| e.into_inner());
        if Warmup::roll(plan, &mut st, (self.clock)(), false).is_some() {
            if let Some(used) = st.used.get_mut(plan.class_of(mx_host)) {
                *used = used.saturating_sub(1);
            }
        }
    }

    /// What each source may still send today per class, sorted by source then class order.
    pub fn status(&self) -> Vec<WarmupStatus> {
        let now = (self.clock)();
        let mut names: Vec<&String> = self.sources.keys().collect();
        names.sort();
        let mut out = Vec::new();
        for name in names {
            let src = &self.sources[name];
            let plan = &self.plans[src.plan];
            let mut st = src.state.lock().unwrap_or_else(|e| e.into_inner());
            let day = Warmup::roll(plan, &mut st, now, false).map(|(d, _)| d);
            for class in plan.class_names() {
                out.push(WarmupStatus {
                    source: name.clone(),
                    plan: plan.name.clone(),
                    day: day.map_or(0, |d| d.saturating_add(1)),
                    class: class.to_string(),
                    cap: plan.cap(day.unwrap_or(0)),
                    used: st.used.get(class).copied().unwrap_or(0),
                });
            }
        }
        out
    }

    /// Writes the state file atomically ([`crate::sys::write_private_atomic`]); safe to call
    /// often. Without a state file, does nothing.
    pub fn save(&self) -> std::io::Result<()> {
        let Some(path) = &self.state_file else { return Ok(()) };
        let sources = self.sources.iter().map(|(n, s)| (n.clone(), s.state.lock().unwrap_or_else(|e| e.into_inner()).clone())).collect();
        let bytes = serde_json::to_vec(&StateFile { version: STATE_VERSION, sources }).map_err(std::io::Error::other)?;
        crate::sys::write_private_atomic(path, &bytes)
    }
}

impl Drop for Warmup {
    fn drop(&mut self) {
        if let Err(e) = self.save() {
            tracing::warn!(error = %e, file = ?self.state_file, "cannot save the warm-up state");
        }
    }
}

fn load(path: &std::path::Path) -> Result<HashMap<String, SourceState>, String> {
    use std::io::Read;
    let f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashMap::new()),
        Err(e) => return Err(format!("warm-up state file {}: {e}", path.display())),
    };
    let mut bytes = Vec::new();
    f.take(MAX_STATE_FILE + 1).read_to_end(&mut bytes).map_err(|e| format!("warm-up state file {}: {e}", path.display()))?;
    if bytes.len() as u64 > MAX_STATE_FILE {
        return Err(format!("warm-up state file {}: larger than {MAX_STATE_FILE} bytes", path.display()));
    }
    let state: StateFile =
        serde_json::from_slice(&bytes).map_err(|e| format!("warm-up state file {} is corrupt ({e}); fix or remove it", path.display()))?;
    if state.version != STATE_VERSION {
        return Err(format!("warm-up state file {}: version {} (this mxpipe reads {STATE_VERSION})", path.display(), state.version));
    }
    Ok(state.sources)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// A clock tests move by hand, in milliseconds since a fixed moment.
    fn clock() -> (Arc<AtomicU64>, Clock) {
        let t = Arc::new(AtomicU64::new(0));
        let t2 = t.clone();
        let base = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        (t, Arc::new(move || base + Duration::from_millis(t2.load(Ordering::Relaxed))))
    }

    fn plan() -> WarmupPlan {
        let mut p = WarmupPlan::new("new-ip");
        p.start = 2;
        p.day = Duration::from_secs(2);
        p.classes = vec![WarmupClass { name: "gmail".into(), mx: vec!["*.google.com".into()] }];
        p
    }

    fn srcs() -> Vec<(String, String)> {
        vec![("ip1".into(), "new-ip".into())]
    }

    fn takes(w: &Warmup, mx: &str, n: usize) -> usize {
        (0..n).filter(|_| w.try_take("ip1", mx) == Take::Granted).count()
    }

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("mxpipe-warmup-{}-{name}", std::process::id()));
        let _ = std::fs::remove_file(&d);
        d
    }

    #[test]
    fn day_one_cap_per_class_and_other() {
        let (_, c) = clock();
        let w = Warmup::with_clock(&[plan()], &srcs(), None, c).unwrap();
        assert_eq!(takes(&w, "alt1.aspmx.l.google.com", 5), 2);
        assert_eq!(takes(&w, "mx.example.net", 5), 2, "class other has its own cap");
        assert_eq!(takes(&w, "mx.other.org", 1), 0, "other hosts share class other");
        assert_eq!(w.try_take("unplanned", "mx.example.net"), Take::Granted);
        let until = match w.try_take("ip1", "x.google.com") {
            Take::Capped { until } => until,
            t => panic!("{t:?}"),
        };
        assert_eq!(until, UNIX_EPOCH + Duration::from_secs(1_800_000_002));
        let st = w.status();
        assert_eq!(st.len(), 2);
        assert_eq!((st[0].class.as_str(), st[0].day, st[0].cap, st[0].used), ("gmail", 1, Some(2), 2));
    }

    #[test]
    fn doubling_then_warm_after_max() {
        let (t, c) = clock();
        let mut p = plan();
        p.max = Some(8);
        let w = Warmup::with_clock(&[p], &srcs(), None, c).unwrap();
        assert_eq!(takes(&w, "mx.example.net", 10), 2);
        t.store(2_000, Ordering::Relaxed);
        assert_eq!(takes(&w, "mx.example.net", 10), 4);
        t.store(4_500, Ordering::Relaxed);
        assert_eq!(w.status()[1].day, 3);
        assert_eq!(w.status()[1].used, 0, "counters reset at each day boundary");
        assert_eq!(takes(&w, "mx.example.net", 10), 10, "cap 8 reaches max: warm");
        assert_eq!(w.status()[1].cap, None);
    }

    #[test]
    fn explicit_caps() {
        let (t, c) = clock();
        let mut p = plan();
        p.caps = Some(vec![1, 3]);
        let w = Warmup::with_clock(&[p], &srcs(), None, c).unwrap();
        assert_eq!(takes(&w, "mx.example.net", 10), 1);
        t.store(2_000, Ordering::Relaxed);
        assert_eq!(takes(&w, "mx.example.net", 10), 3);
        t.store(4_000, Ordering::Relaxed);
        assert_eq!(takes(&w, "mx.example.net", 10), 10, "past the list: warm");
    }

    #[test]
    fn give_back_returns_a_take() {
        let (_, c) = clock();
        let w = Warmup::with_clock(&[plan()], &srcs(), None, c).unwrap();
        assert_eq!(takes(&w, "mx.example.net", 5), 2);
        w.give_back("ip1", "mx.example.net");
        assert_eq!(takes(&w, "mx.example.net", 5), 1);
    }

    #[test]
    fn state_survives_a_restart() {
        let path = tmp("restart");
        let (t, c) = clock();
        {
            let w = Warmup::with_clock(&[plan()], &srcs(), Some(path.clone()), c.clone()).unwrap();
            assert_eq!(takes(&w, "mx.example.net", 1), 1);
        } // dropped: saved
        t.store(500, Ordering::Relaxed);
        let w = Warmup::with_clock(&[plan()], &srcs(), Some(path.clone()), c.clone()).unwrap();
        assert_eq!(takes(&w, "mx.example.net", 5), 1, "the used count came back");
        t.store(2_100, Ordering::Relaxed);
        assert_eq!(w.status()[0].day, 2, "day 1 started before the restart");
        drop(w);
        // Sources no longer configured in the file are fine.
        let w = Warmup::with_clock(&[plan()], &[("ip9".into(), "new-ip".into())], Some(path.clone()), c).unwrap();
        assert_eq!(w.status()[0].day, 0);
        drop(w);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn corrupt_state_file_is_an_error_naming_it() {
        let path = tmp("corrupt");
        std::fs::write(&path, b"{not json").unwrap();
        let e = Warmup::new(&[plan()], &srcs(), Some(path.clone())).unwrap_err();
        assert!(e.contains(&path.display().to_string()) && e.contains("corrupt"), "{e}");
        std::fs::write(&path, br#"{"version":99,"sources":{}}"#).unwrap();
        let e = Warmup::new(&[plan()], &srcs(), Some(path.clone())).unwrap_err();
        assert!(e.contains("version 99"), "{e}");
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn bad_config_errors() {
        let e = Warmup::new(&[plan()], &[("ip1".into(), "nope".into())], None).unwrap_err();
        assert!(e.contains("\"ip1\"") && e.contains("\"nope\""), "{e}");
        let mut p = plan();
        p.factor = 0.5;
        assert!(Warmup::new(&[p], &srcs(), None).unwrap_err().contains("factor"));
        let mut p = plan();
        p.caps = Some(vec![1; MAX_CAPS + 1]);
        assert!(Warmup::new(&[p], &srcs(), None).unwrap_err().contains("caps"));
        let mut p = plan();
        p.classes[0].mx = vec!["a*.b".into()];
        assert!(Warmup::new(&[p], &srcs(), None).is_err());
        let p: WarmupPlan =
            toml::from_str("name = \"x\"\nday = \"2s\"\ncaps = [5]\n[[class]]\nname = \"gmail\"\nmx = [\"*.google.com\"]\n").unwrap();
        assert_eq!((p.day, p.start, p.classes.len()), (Duration::from_secs(2), 50, 1));
        assert!(toml::from_str::<WarmupPlan>("name = \"x\"\nstart_cap = 5\n").is_err());
    }
}
