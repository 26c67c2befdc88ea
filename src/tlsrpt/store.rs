//! [`TlsRpt`]: the TLS-RPT counters, per policy domain, per UTC day, per policy, with failure
//! details grouped as §4.4 `failure-details`.
//!
//! Fed from the engine's hot path (once per SMTP connection, from several shard threads), so
//! one mutex around a map, held for a lookup and an increment; no I/O under it. Bounded by
//! [`Limits`]: what does not fit is counted in an overflow counter, never a panic or an
//! allocation without bound. Kept across restarts in a JSON file (mode 0600, written by
//! [`TlsRpt::flush`] as a temporary file renamed over the old one); counts made since the last
//! flush are lost in a crash, which a report tolerates (it is statistics).
//!
//! It does not send anything: [`super::Reporter`] takes the days that ended
//! ([`TlsRpt::take_due`]) and removes each once it is sent ([`TlsRpt::sent`]).

use std::borrow::Cow;
use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::report::{policy_reports, DateRange, PolicyReport};
use super::{Failure, PolicyDesc};

/// The counters file's name in the daemon's state directory.
pub const FILE_NAME: &str = "tlsrpt.json";
const VERSION: u32 = 1;
/// Largest counters file read at start.
const MAX_FILE_BYTES: u64 = 256 << 20;
const DAY: u64 = 86_400;

/// Bounds on what the counters hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Policy domains counted per UTC day; sessions for more domains are counted only in
    /// [`Overflow::sessions`].
    pub max_domains_per_day: usize,
    /// Distinct policies per domain and day (a policy changing during the day makes two);
    /// sessions under more are counted in the day's `sessions_not_counted`.
    pub max_policies_per_domain: usize,
    /// Distinct failure-detail groups per policy; failures past it are still in
    /// `total-failure-session-count`, and in the policy's `details_not_counted`.
    pub max_failure_groups: usize,
    /// Longest string kept (host names, policy lines, reason codes), in bytes; longer ones
    /// are cut at a character boundary.
    pub max_string: usize,
    /// Most `policy-string` and `mx-host` entries kept per policy.
    pub max_policy_strings: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_domains_per_day: 10_000, max_policies_per_domain: 8, max_failure_groups: 64, max_string: 255, max_policy_strings: 64 }
    }
}

/// Sessions one failure-detail group counted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DetailCount {
    /// The group's fields.
    pub failure: Failure,
    /// `failed-session-count`.
    pub count: u64,
}

/// One policy's counts for one domain and day.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyCounts {
    /// The policy.
    pub policy: PolicyDesc,
    /// `total-successful-session-count`.
    pub successes: u64,
    /// `total-failure-session-count`.
    pub failures: u64,
    /// `failure-details`, in first-seen order.
    pub details: Vec<DetailCount>,
    /// Failures not in `details` because [`Limits::max_failure_groups`] was reached.
    #[serde(default)]
    pub details_not_counted: u64,
}

/// Everything counted for one policy domain on one UTC day: what one report holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DayAggregate {
    /// The policy domain (lowercase, no trailing dot).
    pub domain: String,
    /// The UTC day, in days since 1970-01-01.
    pub day: u64,
    /// Per policy.
    pub policies: Vec<PolicyCounts>,
    /// Sessions not counted because [`Limits::max_policies_per_domain`] was reached.
    #[serde(default)]
    pub sessions_not_counted: u64,
}

impl DayAggregate {
    /// The day's first second (Unix time).
    pub fn start_unix(&self) -> u64 {
        self.day * DAY
    }

    /// The day's last second (Unix time): the report's end, as in RFC 8460's example
    /// (`…T23:59:59Z`).
    pub fn end_unix(&self) -> u64 {
        self.day * DAY + DAY - 1
    }

    /// When the day ended (midnight UTC after it).
    pub fn ended(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs((self.day + 1) * DAY)
    }
}

/// The operator's view of one pending day (`GET /v1/tlsrpt/{domain}`): the report's
/// `date-range` and `policies` exactly as the report will hold them, and what did not fit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DayReport {
    /// `date-range`.
    #[serde(rename = "date-range")]
    pub date_range: DateRange,
    /// `policies`.
    pub policies: Vec<PolicyReport>,
    /// Sessions of this domain and day not counted (too many policies), not in the report.
    #[serde(rename = "sessions-not-counted")]
    pub sessions_not_counted: u64,
}

/// Sessions no domain counted: the domain bound was reached.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Overflow {
    /// Sessions for domains past [`Limits::max_domains_per_day`].
    pub sessions: u64,
}

#[derive(Default)]
struct Inner {
    days: HashMap<(u64, String), DayAggregate>,
    per_day: HashMap<u64, usize>,
    overflow: Overflow,
    dirty: bool,
}

#[derive(Serialize, Deserialize)]
struct File {
    version: u32,
    days: Vec<DayAggregate>,
    #[serde(default)]
    overflow: Overflow,
}

/// Thread-safe TLS-RPT counters; persistent when opened with a path (module docs).
pub struct TlsRpt {
    path: Option<PathBuf>,
    limits: Limits,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for TlsRpt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsRpt").field("path", &self.path).field("limits", &self.limits).finish_non_exhaustive()
    }
}

fn unix_day(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) / DAY
}

/// A domain as counted: lowercase, no trailing dot.
fn domain_key(domain: &str) -> String {
    domain.strip_suffix('.').unwrap_or(domain).to_ascii_lowercase()
}

fn cut(s: &str, max: usize) -> String {
    crate::policy::learned::truncate(s, max).to_string()
}

impl TlsRpt {
    /// Counters kept in the file `path` (loaded now; a missing file is an empty store, its
    /// directory is created), or in memory only with `None`. An unreadable file is an error
    /// naming it.
    pub fn open(path: Option<PathBuf>, limits: Limits) -> Result<TlsRpt, String> {
        let mut inner = Inner::default();
        if let Some(p) = &path {
            let named = |e: &dyn std::fmt::Display| format!("TLS-RPT counters {}: {e}", p.display());
            if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| named(&e))?;
            }
            match std::fs::File::open(p) {
                Ok(f) => {
                    let len = f.metadata().map_err(|e| named(&e))?.len();
                    if len > MAX_FILE_BYTES {
                        return Err(named(&format!("{len} bytes, more than {MAX_FILE_BYTES}; move it aside")));
                    }
                    let file: File = serde_json::from_reader(io::BufReader::new(f))
                        .map_err(|e| named(&format!("unreadable ({e}); move it aside to start with no counters")))?;
                    if file.version != VERSION {
                        return Err(named(&format!("version {} (this mxpipe reads {VERSION})", file.version)));
                    }
                    inner.overflow = file.overflow;
                    for agg in file.days {
                        *inner.per_day.entry(agg.day).or_default() += 1;
                        inner.days.insert((agg.day, agg.domain.clone()), agg);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(named(&e)),
            }
        }
        Ok(TlsRpt { path, limits, inner: Mutex::new(inner) })
    }

    /// The file the counters are kept in, if any.
    pub fn path(&self) -> Option<&std::path::Path> {
        self.path.as_deref()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic elsewhere while holding the lock leaves plain counters behind; keep using them.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One successful TLS session to `domain`'s MX under `policy`.
    pub fn success(&self, domain: &str, policy: &PolicyDesc, now: SystemTime) {
        self.count(domain, policy, None, now);
    }

    /// One failed session (`f` says why and where).
    pub fn failure(&self, domain: &str, policy: &PolicyDesc, f: &Failure, now: SystemTime) {
        self.count(domain, policy, Some(f), now);
    }

    /// `p` within the string limits: borrowed when it already is (the usual case, so the hot
    /// path does not copy the policy), cut otherwise.
    fn clamp_policy<'a>(&self, p: &'a PolicyDesc) -> Cow<'a, PolicyDesc> {
        let l = &self.limits;
        let fits = |v: &[String]| v.len() <= l.max_policy_strings && v.iter().all(|s| s.len() <= l.max_string);
        if fits(&p.policy_string) && fits(&p.mx_host) {
            return Cow::Borrowed(p);
        }
        let strings = |v: &[String]| v.iter().take(l.max_policy_strings).map(|s| cut(s, l.max_string)).collect();
        Cow::Owned(PolicyDesc { policy_type: p.policy_type, policy_string: strings(&p.policy_string), mx_host: strings(&p.mx_host) })
    }

    /// `f` within the string limits, borrowed when it already is.
    fn clamp_failure<'a>(&self, f: &'a Failure) -> Cow<'a, Failure> {
        let max = self.limits.max_string;
        let fits = |s: &Option<String>| s.as_ref().is_none_or(|s| s.len() <= max);
        if fits(&f.receiving_mx_hostname) && fits(&f.additional_information) && fits(&f.failure_reason_code) {
            return Cow::Borrowed(f);
        }
        let c = |s: &Option<String>| s.as_deref().map(|s| cut(s, max));
        Cow::Owned(Failure {
            result: f.result,
            sending_mta_ip: f.sending_mta_ip,
            receiving_mx_hostname: c(&f.receiving_mx_hostname),
            receiving_ip: f.receiving_ip,
            additional_information: c(&f.additional_information),
            failure_reason_code: c(&f.failure_reason_code),
        })
    }

    fn count(&self, domain: &str, policy: &PolicyDesc, failure: Option<&Failure>, now: SystemTime) {
        let day = unix_day(now);
        let key = (day, domain_key(domain));
        let policy = self.clamp_policy(policy);
        let failure = failure.map(|f| self.clamp_failure(f));
        let limits = self.limits;
        let mut g = self.lock();
        g.dirty = true;
        if !g.days.contains_key(&key) {
            let n = g.per_day.get(&day).copied().unwrap_or(0);
            if n >= limits.max_domains_per_day {
                g.overflow.sessions += 1;
                return;
            }
            *g.per_day.entry(day).or_default() += 1;
            let agg = DayAggregate { domain: key.1.clone(), day, policies: Vec::new(), sessions_not_counted: 0 };
            g.days.insert(key.clone(), agg);
        }
        let Some(agg) = g.days.get_mut(&key) else { return };
        let i = match agg.policies.iter().position(|p| p.policy == *policy) {
            Some(i) => i,
            None if agg.policies.len() < limits.max_policies_per_domain => {
                agg.policies.push(PolicyCounts {
                    policy: policy.into_owned(),
                    successes: 0,
                    failures: 0,
                    details: Vec::new(),
                    details_not_counted: 0,
                });
                agg.policies.len() - 1
            }
            None => {
                agg.sessions_not_counted += 1;
                return;
            }
        };
        let counts = &mut agg.policies[i];
        let Some(failure) = failure else {
            counts.successes += 1;
            return;
        };
        counts.failures += 1;
        match counts.details.iter().position(|d| d.failure == *failure) {
            Some(i) => counts.details[i].count += 1,
            None if counts.details.len() < limits.max_failure_groups => {
                counts.details.push(DetailCount { failure: failure.into_owned(), count: 1 })
            }
            None => counts.details_not_counted += 1,
        }
    }

    /// What is counted for `domain` and not yet reported, oldest day first, as the reports
    /// will hold it.
    pub fn pending(&self, domain: &str) -> Vec<DayReport> {
        let key = domain_key(domain);
        let g = self.lock();
        let mut days: Vec<&DayAggregate> = g.days.values().filter(|a| a.domain == key).collect();
        days.sort_by_key(|a| a.day);
        days.into_iter()
            .map(|a| DayReport { date_range: DateRange::of(a), policies: policy_reports(a), sessions_not_counted: a.sessions_not_counted })
            .collect()
    }

    /// Sessions not counted for any domain (the domain bound).
    pub fn overflow(&self) -> Overflow {
        self.lock().overflow
    }

    /// Every domain's days that ended before `now`'s UTC day, oldest first. They stay in the
    /// store until [`TlsRpt::sent`] removes them, so one that cannot be sent is offered again.
    pub fn take_due(&self, now: SystemTime) -> Vec<DayAggregate> {
        let today = unix_day(now);
        let g = self.lock();
        let mut due: Vec<DayAggregate> = g.days.values().filter(|a| a.day < today).cloned().collect();
        due.sort_by(|a, b| (a.day, &a.domain).cmp(&(b.day, &b.domain)));
        due
    }

    /// `agg` is done with (sent, or dropped because its domain takes no reports): remove it.
    pub fn sent(&self, agg: &DayAggregate) {
        let mut g = self.lock();
        if g.days.remove(&(agg.day, agg.domain.clone())).is_some() {
            if let Some(n) = g.per_day.get_mut(&agg.day) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    g.per_day.remove(&agg.day);
                }
            }
            g.dirty = true;
        }
    }

    /// Write the counters to the file if anything changed since the last write: a temporary
    /// file (mode 0600), synced, renamed over the old one. A store without a file never writes.
    pub fn flush(&self) -> io::Result<()> {
        let Some(path) = &self.path else { return Ok(()) };
        let bytes = {
            let mut g = self.lock();
            if !g.dirty {
                return Ok(());
            }
            g.dirty = false;
            let mut days: Vec<DayAggregate> = g.days.values().cloned().collect();
            days.sort_by(|a, b| (a.day, &a.domain).cmp(&(b.day, &b.domain)));
            serde_json::to_vec(&File { version: VERSION, days, overflow: g.overflow }).map_err(io::Error::other)?
        };
        let written = crate::sys::write_private_atomic(path, &bytes);
        if let Err(e) = written {
            // Try again at the next flush.
            self.lock().dirty = true;
            return Err(io::Error::new(e.kind(), format!("TLS-RPT counters {}: {e}", path.display())));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tlsrpt::ResultType;

    fn at(day: u64, secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(day * DAY + secs)
    }

    #[test]
    fn bounds_count_overflow_instead_of_growing() {
        let limits =
            Limits { max_domains_per_day: 2, max_policies_per_domain: 1, max_failure_groups: 1, max_string: 5, max_policy_strings: 1 };
        let s = TlsRpt::open(None, limits).unwrap();
        let p = PolicyDesc::none();
        for d in ["a.test", "b.test", "c.test", "d.test"] {
            s.success(d, &p, at(10, 5));
        }
        assert_eq!(s.overflow().sessions, 2);
        // Another day has its own domain budget.
        s.success("c.test", &p, at(11, 5));
        assert_eq!(s.overflow().sessions, 2);
        // A second policy for a.test does not fit.
        s.success("a.test", &PolicyDesc::mx_prefix("smtps-", "smtps-mx.a.test"), at(10, 6));
        let mut f = Failure::new(ResultType::CertificateExpired);
        f.receiving_mx_hostname = Some("mx-long-name.a.test".into());
        s.failure("a.test", &p, &f, at(10, 7));
        s.failure("a.test", &p, &Failure::new(ResultType::StarttlsNotSupported), at(10, 8));
        let due = s.take_due(at(12, 0));
        let a = due.iter().find(|a| a.domain == "a.test" && a.day == 10).unwrap();
        assert_eq!(a.sessions_not_counted, 1);
        let c = &a.policies[0];
        assert_eq!((c.successes, c.failures, c.details.len(), c.details_not_counted), (1, 2, 1, 1));
        assert_eq!(c.details[0].failure.receiving_mx_hostname.as_deref(), Some("mx-lo"));
    }

    #[test]
    fn due_only_after_the_day_and_until_sent() {
        let s = TlsRpt::open(None, Limits::default()).unwrap();
        s.success("A.test.", &PolicyDesc::none(), at(10, 86_399));
        assert!(s.take_due(at(10, 86_399)).is_empty());
        let due = s.take_due(at(11, 0));
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].domain, "a.test");
        assert_eq!(s.take_due(at(11, 1)).len(), 1, "still there until sent");
        s.sent(&due[0]);
        assert!(s.take_due(at(11, 2)).is_empty());
        assert!(s.pending("a.test").is_empty());
    }
}
