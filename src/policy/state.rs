//! What the policy must remember across restarts: pins (spec: "Pinning") and MTA-STS policies
//! (RFC 8461 §5.1: cached for their `max_age`), kept in one JSON file beside the spool (the
//! daemon) or in `send`'s state directory, mode 0600.
//!
//! A pin says "this domain was seen with a prefixed MX host": for its TTL (default 30 days,
//! refreshed at each sighting) every MX host of the domain needs verified TLS, so an attacker
//! who rewrites an unsigned MX answer to drop the prefix gains nothing.
//!
//! Shared by the shards behind one mutex, but touched once per resolution of a domain (when a
//! delivery worker starts), never per message; written by [`PolicyState::flush`] from a
//! thread of its own (the engine's flusher), never from a shard. Times are wall-clock Unix
//! seconds, because they must survive a restart. Bounded by [`StateOptions::max_domains`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::mta_sts::StsPolicy;
use super::{strictest_prefix, Prefix};

/// The state file's name inside the state directory.
pub const FILE_NAME: &str = "policy-state.json";
/// The default pin TTL (spec: 30 days).
pub const DEFAULT_PIN_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// Longest pin TTL accepted: a year, as MTA-STS's `max_age` cap.
pub const MAX_PIN_TTL: Duration = Duration::from_secs(31_557_600);
/// Prefixed host names kept per pin (for the operator's view; a zone can list thousands).
const MAX_PIN_HOSTS: usize = 8;
/// A pin seen again within this time is not rewritten (no file write per delivery).
const REFRESH_GRANULARITY: u64 = 3600;
/// Largest state file read at start: far above what `max_domains` pins take, so only a wrong
/// or hostile file hits it.
const MAX_FILE_BYTES: u64 = 256 << 20;
const VERSION: u32 = 1;

/// Settings of the persistent state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateOptions {
    /// How long a pin holds after the last sighting of a prefixed MX host; zero turns pinning off.
    pub pin_ttl: Duration,
    /// Most domains remembered; past it the pin that expires first is dropped.
    pub max_domains: usize,
}

impl Default for StateOptions {
    fn default() -> Self {
        StateOptions { pin_ttl: DEFAULT_PIN_TTL, max_domains: 100_000 }
    }
}

/// One domain's pin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pin {
    /// The strictest prefix seen among the domain's MX hosts.
    pub prefix: Prefix,
    /// The prefixed MX host names last seen (at most a few).
    pub hosts: Vec<String>,
    /// When the domain was first seen prefixed (Unix seconds).
    pub first_seen: u64,
    /// The last sighting (Unix seconds, to the hour).
    pub last_seen: u64,
    /// When the pin lapses unless seen again (Unix seconds).
    pub expires: u64,
}

impl Pin {
    /// Whether the pin still holds at `now` (Unix seconds).
    pub fn live(&self, now: u64) -> bool {
        now < self.expires
    }
}

/// A domain's MTA-STS policy as fetched, with the TXT record id it was fetched for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedSts {
    /// The `id` of the `_mta-sts` TXT record when the policy was fetched: a new id means a new
    /// policy to fetch.
    pub id: String,
    /// The policy.
    pub policy: StsPolicy,
    /// When it was fetched (Unix seconds).
    pub fetched: u64,
    /// When it lapses: `fetched + max_age` (Unix seconds). Until then it stays in force even
    /// when a refresh fails or the TXT record disappears (RFC 8461 §5.1, §8.3).
    pub expires: u64,
}

impl CachedSts {
    /// Whether it is still in force at `now`.
    pub fn live(&self, now: u64) -> bool {
        now < self.expires
    }

    /// Whether it should be fetched again: lapsing within a day or half its `max_age`,
    /// whichever is sooner, so a policy in use never lapses for want of a refresh.
    pub fn due(&self, now: u64) -> bool {
        let margin = (u64::from(self.policy.max_age) / 2).min(86_400);
        now.saturating_add(margin) >= self.expires
    }
}

/// What an operator sees for a domain (`mxpipe policy show`, `GET /v1/policy/{domain}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DomainView {
    /// The domain asked about.
    pub domain: String,
    /// Its pin, if any (expired ones are shown until they are dropped, with `live: false`).
    pub pin: Option<Pin>,
    /// Whether the pin holds now.
    pub pinned: bool,
    /// Its cached MTA-STS policy, if any (expired ones are dropped).
    #[serde(default)]
    pub mta_sts: Option<CachedSts>,
}

/// The state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Reading or writing the file failed.
    #[error("policy state {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not a state file this version understands.
    #[error(
        "policy state {path} is unreadable ({reason}); it holds the TLS pins, so mxpipe will not start without it: repair it, or move it aside to start with no pins"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

#[derive(Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    version: u32,
    #[serde(default)]
    pins: HashMap<String, Pin>,
    #[serde(default)]
    mta_sts: HashMap<String, CachedSts>,
}

#[derive(Default)]
struct Inner {
    pins: HashMap<String, Pin>,
    sts: HashMap<String, CachedSts>,
    dirty: bool,
}

/// Pins, persistent when the state has a file (see the module docs).
pub struct PolicyState {
    path: Option<PathBuf>,
    opts: StateOptions,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for PolicyState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyState").field("path", &self.path).field("opts", &self.opts).finish_non_exhaustive()
    }
}

/// A Unix time as `2026-12-01 23:36 UTC`, for `mxpipe policy show`.
pub fn format_unix(t: u64) -> String {
    let (y, mo, d) = crate::dsn::civil_from_days(t / 86_400);
    let (h, m) = ((t % 86_400) / 3600, (t % 3600) / 60);
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{m:02} UTC")
}

/// Now, in Unix seconds.
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl PolicyState {
    /// A state that lives only as long as the process (for `send` without `--state-dir`, tests).
    pub fn in_memory(opts: StateOptions) -> PolicyState {
        PolicyState { path: None, opts, inner: Mutex::new(Inner::default()) }
    }

    /// The state kept in `dir` ([`FILE_NAME`]), loaded now; a missing file is an empty state
    /// (the directory is created), an unreadable one an error that names it.
    pub fn open(dir: &Path, opts: StateOptions) -> Result<PolicyState, StateError> {
        let path = dir.join(FILE_NAME);
        let io = |source| StateError::Io { path: path.clone(), source };
        std::fs::create_dir_all(dir).map_err(io)?;
        let (pins, sts) = match std::fs::File::open(&path) {
            Ok(f) => {
                let len = f.metadata().map_err(io)?.len();
                if len > MAX_FILE_BYTES {
                    return Err(StateError::Corrupt { path, reason: format!("{len} bytes, more than {MAX_FILE_BYTES}") });
                }
                let file: File = serde_json::from_reader(std::io::BufReader::new(f))
                    .map_err(|e| StateError::Corrupt { path: path.clone(), reason: e.to_string() })?;
                if file.version != VERSION {
                    return Err(StateError::Corrupt { path, reason: format!("version {} (this mxpipe reads {VERSION})", file.version) });
                }
                (file.pins, file.mta_sts)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (HashMap::new(), HashMap::new()),
            Err(e) => return Err(io(e)),
        };
        let state = PolicyState { path: Some(path), opts, inner: Mutex::new(Inner { pins, sts, dirty: false }) };
        state.prune(unix_now());
        Ok(state)
    }

    /// The file this state is kept in, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic elsewhere while holding the lock leaves plain data behind; keep using it.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A resolution of `domain` returned these MX host names: pin the domain if any is
    /// prefixed (refreshing its TTL), and say whether a pin holds now.
    pub fn sighting<'a>(&self, domain: &str, hosts: impl IntoIterator<Item = &'a str> + Clone, now: u64) -> bool {
        let ttl = self.opts.pin_ttl.min(MAX_PIN_TTL).as_secs();
        let prefix = strictest_prefix(hosts.clone());
        let mut g = self.lock();
        if prefix == Prefix::None || ttl == 0 {
            return ttl > 0 && g.pins.get(domain).is_some_and(|p| p.live(now));
        }
        let seen = now - now % REFRESH_GRANULARITY;
        let prefixed = || hosts.clone().into_iter().filter(|h| super::prefix_of(h) != Prefix::None).take(MAX_PIN_HOSTS).map(String::from);
        match g.pins.get_mut(domain) {
            Some(p) if p.last_seen == seen && p.prefix == prefix => {}
            Some(p) => {
                p.prefix = prefix;
                p.hosts = prefixed().collect();
                p.last_seen = seen;
                p.expires = now.saturating_add(ttl);
                g.dirty = true;
            }
            None => {
                if self.opts.max_domains == 0 {
                    return false;
                }
                if g.pins.len() >= self.opts.max_domains {
                    // Rare (only prefixed domains are pinned), so a scan is fine.
                    if let Some(victim) = g.pins.iter().min_by_key(|(_, p)| p.expires).map(|(d, _)| d.clone()) {
                        g.pins.remove(&victim);
                    }
                }
                let pin = Pin { prefix, hosts: prefixed().collect(), first_seen: now, last_seen: seen, expires: now.saturating_add(ttl) };
                g.pins.insert(domain.to_string(), pin);
                g.dirty = true;
            }
        }
        true
    }

    /// Whether a pin holds for `domain` at `now`.
    pub fn pinned(&self, domain: &str, now: u64) -> bool {
        self.opts.pin_ttl > Duration::ZERO && self.lock().pins.get(domain).is_some_and(|p| p.live(now))
    }

    /// What is remembered of `domain`.
    pub fn view(&self, domain: &str, now: u64) -> DomainView {
        let g = self.lock();
        let pin = g.pins.get(domain).cloned();
        let pinned = self.opts.pin_ttl > Duration::ZERO && pin.as_ref().is_some_and(|p| p.live(now));
        let mta_sts = g.sts.get(domain).filter(|c| c.live(now)).cloned();
        DomainView { domain: domain.to_string(), pin, pinned, mta_sts }
    }

    /// Forget everything about `domain` (pin and MTA-STS policy); whether there was anything.
    pub fn forget(&self, domain: &str) -> bool {
        let mut g = self.lock();
        let had = g.pins.remove(domain).is_some() | g.sts.remove(domain).is_some();
        g.dirty |= had;
        had
    }

    /// `domain`'s cached MTA-STS policy, if one is in force at `now`.
    pub fn sts(&self, domain: &str, now: u64) -> Option<CachedSts> {
        self.lock().sts.get(domain).filter(|c| c.live(now)).cloned()
    }

    /// Keep a freshly fetched MTA-STS policy (replacing the old one).
    pub fn put_sts(&self, domain: &str, cached: CachedSts) {
        let mut g = self.lock();
        if !g.sts.contains_key(domain) && g.sts.len() >= self.opts.max_domains {
            if self.opts.max_domains == 0 {
                return;
            }
            if let Some(victim) = g.sts.iter().min_by_key(|(_, c)| c.expires).map(|(d, _)| d.clone()) {
                g.sts.remove(&victim);
            }
        }
        g.sts.insert(domain.to_string(), cached);
        g.dirty = true;
    }

    /// Drop expired pins.
    pub fn prune(&self, now: u64) {
        let mut g = self.lock();
        let before = g.pins.len() + g.sts.len();
        g.pins.retain(|_, p| p.live(now));
        g.sts.retain(|_, c| c.live(now));
        if g.pins.len() + g.sts.len() != before {
            g.dirty = true;
        }
    }

    /// Write the state to its file if anything changed: a temporary file (mode 0600), synced,
    /// then renamed over the old one, so a crash leaves the old or the new file, never half of
    /// one. Whether it wrote. A state without a file never writes.
    pub fn flush(&self) -> Result<bool, StateError> {
        let Some(path) = &self.path else { return Ok(false) };
        self.prune(unix_now());
        let bytes = {
            let mut g = self.lock();
            if !g.dirty {
                return Ok(false);
            }
            g.dirty = false;
            let file = File { version: VERSION, pins: g.pins.clone(), mta_sts: g.sts.clone() };
            serde_json::to_vec(&file).unwrap_or_default()
        };
        let io = |source| StateError::Io { path: path.clone(), source };
        let written = crate::sys::write_private_atomic(path, &bytes);
        if let Err(e) = written {
            // Try again at the next flush.
            self.lock().dirty = true;
            return Err(io(e));
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 86_400;

    struct Dir(PathBuf);
    impl Dir {
        fn path(&self) -> &Path {
            &self.0
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    fn dir() -> Dir {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let d = std::env::temp_dir().join(format!("mxpipe-policy-state-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        Dir(d)
    }

    #[test]
    fn a_prefixed_sighting_pins_and_a_plain_one_does_not() {
        let s = PolicyState::in_memory(StateOptions::default());
        let t = 1_700_000_000;
        assert!(!s.sighting("plain.example", ["mx.plain.example"], t));
        assert!(!s.pinned("plain.example", t));
        assert!(s.sighting("a.example", ["backup.a.example", "starttls-mx.a.example"], t));
        // The attacker's answer without the prefix: still pinned.
        assert!(s.sighting("a.example", ["evil.example"], t + DAY));
        assert!(s.pinned("a.example", t + 29 * DAY));
        assert!(!s.pinned("a.example", t + 31 * DAY), "the TTL runs from the last prefixed sighting");
        let v = s.view("a.example", t);
        assert_eq!(v.pin.as_ref().unwrap().hosts, vec!["starttls-mx.a.example"]);
        assert_eq!(v.pin.unwrap().prefix, Prefix::StartTls);
    }

    #[test]
    fn sightings_refresh_the_ttl() {
        let s = PolicyState::in_memory(StateOptions::default());
        let t = 1_700_000_000;
        s.sighting("a.example", ["smtps-mx.a.example"], t);
        s.sighting("a.example", ["smtps-mx.a.example"], t + 20 * DAY);
        assert!(s.pinned("a.example", t + 45 * DAY));
        assert!(s.forget("a.example"));
        assert!(!s.pinned("a.example", t + 21 * DAY));
        assert!(!s.forget("a.example"));
    }

    #[test]
    fn pins_survive_a_reopen_in_a_private_file() {
        let d = dir();
        let t = unix_now();
        {
            let s = PolicyState::open(d.path(), StateOptions::default()).unwrap();
            s.sighting("a.example", ["starttls-mx.a.example"], t);
            assert!(s.flush().unwrap());
            assert!(!s.flush().unwrap(), "nothing changed, nothing written");
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(d.path().join(FILE_NAME)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let s = PolicyState::open(d.path(), StateOptions::default()).unwrap();
        assert!(s.pinned("a.example", t + DAY));
        assert!(!s.pinned("b.example", t));
    }

    #[test]
    fn a_corrupt_file_is_an_error_naming_it() {
        let d = dir();
        std::fs::create_dir_all(d.path()).unwrap();
        std::fs::write(d.path().join(FILE_NAME), b"{\"version\": 1, \"pins\": 7}").unwrap();
        let e = PolicyState::open(d.path(), StateOptions::default()).unwrap_err().to_string();
        assert!(e.contains(FILE_NAME) && e.contains("move it aside"), "{e}");
        std::fs::write(d.path().join(FILE_NAME), b"{\"version\": 9}").unwrap();
        let e = PolicyState::open(d.path(), StateOptions::default()).unwrap_err().to_string();
        assert!(e.contains("version 9"), "{e}");
    }

    #[test]
    fn mta_sts_policies_are_kept_until_they_lapse() {
        use crate::policy::mta_sts::Mode;
        let d = dir();
        let t = unix_now();
        let policy = StsPolicy { mode: Mode::Enforce, mx: vec!["*.a.example".into()], max_age: 86_400 * 7 };
        let c = CachedSts { id: "20261201".into(), policy, fetched: t, expires: t + 86_400 * 7 };
        {
            let s = PolicyState::open(d.path(), StateOptions::default()).unwrap();
            s.put_sts("a.example", c.clone());
            s.flush().unwrap();
        }
        let s = PolicyState::open(d.path(), StateOptions::default()).unwrap();
        assert_eq!(s.sts("a.example", t + 86_400), Some(c.clone()));
        assert_eq!(s.sts("a.example", t + 86_400 * 8), None, "lapsed");
        assert!(!c.due(t + 86_400) && c.due(t + 86_400 * 6 + 1), "refreshed within a day of lapsing");
        assert_eq!(s.view("a.example", t).mta_sts, Some(c));
        assert!(s.forget("a.example"));
        assert_eq!(s.sts("a.example", t), None);
    }

    #[test]
    fn dates_for_people() {
        assert_eq!(format_unix(0), "1970-01-01 00:00 UTC");
        assert_eq!(format_unix(1_796_168_160), "2026-12-01 23:36 UTC");
        assert_eq!(format_unix(951_825_600), "2000-02-29 12:00 UTC");
    }

    #[test]
    fn bounded_and_switchable() {
        let s = PolicyState::in_memory(StateOptions { max_domains: 3, ..StateOptions::default() });
        let t = 1_700_000_000;
        for i in 0..10u64 {
            s.sighting(&format!("d{i}.example"), ["starttls-mx.example"], t + i * 4000);
        }
        assert_eq!(s.lock().pins.len(), 3);
        assert!(s.pinned("d9.example", t + 40_000) && !s.pinned("d0.example", t + 40_000));
        let off = PolicyState::in_memory(StateOptions { pin_ttl: Duration::ZERO, ..StateOptions::default() });
        assert!(!off.sighting("a.example", ["starttls-mx.a.example"], t));
        assert!(!off.pinned("a.example", t));
    }
}
