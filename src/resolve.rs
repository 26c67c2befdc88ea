//! MX resolution for the delivery engine, with our own destination cache.
//!
//! This module owns the question "where does mail for this domain go": the MX set (or the
//! implicit MX of RFC 5321 §5.1), each host's addresses, whether the MX answer was
//! DNSSEC-authenticated, and how long that answer may be reused. It does not decide TLS
//! policy (the MX-prefix rules read [`MxHost::name`]) and knows nothing of connections.
//!
//! Why a cache of our own in front of hickory: bulk mail resolves the same destinations again
//! and again, hickory's cache does not merge concurrent misses (a burst of 100 messages to one
//! new domain would send 100 identical query sets), and it caches per record set while the
//! engine wants the whole [`Destination`] at once. hickory's cache is therefore disabled, so
//! that every lookup we count in [`ResolverStats::queries`] really goes to a nameserver.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig as HickoryConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::dnssec::Proof;
use hickory_resolver::proto::op::ResponseCode;
/// TLSA record data as hickory parses it, re-exported for [`TlsaAnswer`].
pub use hickory_resolver::proto::rr::rdata::TLSA;
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};
use hickory_resolver::{Resolver, ResolverBuilder, TokioResolver};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// DNSSEC trust anchors for [`ResolverConfig::trust_anchor`] (hickory's type, re-exported so
/// that callers need not depend on hickory).
pub use hickory_resolver::proto::dnssec::TrustAnchors;

/// MX hosts beyond this many (after sorting by preference) are not resolved: no sender tries
/// that many, and a hostile zone must not turn one resolve() into thousands of queries.
pub const MAX_MX_HOSTS: usize = 16;

/// Resolver settings. The defaults suit production; tests point `nameserver` at a
/// [`crate::dnsserver::DnsServer`] and shorten the timeouts.
#[derive(Clone)]
pub struct ResolverConfig {
    /// Nameserver to query (UDP, TCP on truncation). `None` uses the system resolver
    /// configuration (`/etc/resolv.conf`).
    pub nameserver: Option<SocketAddr>,
    /// Time allowed for one query attempt.
    pub timeout: Duration,
    /// Attempts per query before it counts as a temporary failure.
    pub attempts: usize,
    /// Most destinations (domains) kept in the cache; 0 disables caching.
    pub max_entries: usize,
    /// Positive answers are cached at least this long, whatever their TTL...
    pub min_ttl: Duration,
    /// ...and at most this long.
    pub max_ttl: Duration,
    /// How long NXDOMAIN, null MX and "no address" outcomes are cached.
    pub negative_ttl: Duration,
    /// How long temporary failures (SERVFAIL, REFUSED, timeouts) are cached, so that a burst
    /// to a broken domain does not hammer its nameservers; also caps the lifetime of a
    /// destination in which some host's address lookup failed temporarily.
    pub temp_fail_ttl: Duration,
    /// Ask for DNSSEC validation and report in [`Destination::dnssec`] whether the MX answer
    /// was authenticated. Answers that fail validation become temporary failures.
    pub validate_dnssec: bool,
    /// Trust anchors for validation; `None` uses the IANA root keys built into hickory.
    /// Tests set the key of a zone served by [`crate::dnsserver::DnsServer`].
    pub trust_anchor: Option<Arc<TrustAnchors>>,
}

impl Default for ResolverConfig {
    fn default() -> Self {
        ResolverConfig {
            nameserver: None,
            timeout: Duration::from_secs(5),
            attempts: 2,
            max_entries: 100_000,
            min_ttl: Duration::from_secs(5),
            max_ttl: Duration::from_secs(86_400),
            negative_ttl: Duration::from_secs(300),
            temp_fail_ttl: Duration::from_secs(30),
            validate_dnssec: false,
            trust_anchor: None,
        }
    }
}

impl fmt::Debug for ResolverConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResolverConfig")
            .field("nameserver", &self.nameserver)
            .field("timeout", &self.timeout)
            .field("attempts", &self.attempts)
            .field("max_entries", &self.max_entries)
            .field("min_ttl", &self.min_ttl)
            .field("max_ttl", &self.max_ttl)
            .field("negative_ttl", &self.negative_ttl)
            .field("temp_fail_ttl", &self.temp_fail_ttl)
            .field("validate_dnssec", &self.validate_dnssec)
            .field("trust_anchor", &self.trust_anchor.as_ref().map(|t| t.len()))
            .finish()
    }
}

/// One mail exchanger of a destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MxHost {
    /// Lowercase, without the trailing dot, exactly as published: the MX-prefix policy and
    /// certificate checks use this name, prefix included.
    pub name: String,
    /// MX preference: lower is tried first.
    pub preference: u16,
    /// IPv4 addresses first, then IPv6. Empty when the host has none (the engine skips it).
    pub addrs: Vec<IpAddr>,
    /// The host's A or AAAA answer was DNSSEC-authenticated (either family is enough, as
    /// RFC 7672 §2.2.2 allows: many signed zones botch only their AAAA denial). DANE applies
    /// only to such hosts of a secure MX answer. Always false unless validation is enabled.
    pub dnssec: bool,
}

/// Where the hosts of a [`Destination`] came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteKind {
    /// The domain's MX records.
    Mx,
    /// No MX record: the domain's own A/AAAA records (RFC 5321 §5.1), as one host of
    /// preference 0 named after the domain.
    ImplicitMx,
}

/// The resolved route for one recipient domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// The domain as resolved: lowercase ASCII (IDNs in punycode), no trailing dot.
    pub domain: String,
    /// Whether the hosts are the MX records or the domain itself as implicit MX.
    pub kind: RouteKind,
    /// Ascending preference; hosts of equal preference in random order, shuffled anew on every
    /// [`MxResolver::resolve`] call (also from cache) to spread load as RFC 5321 §5.1 asks.
    pub hosts: Vec<MxHost>,
    /// The MX answer (or, for an implicit MX, the proof that no MX exists) was
    /// DNSSEC-authenticated. Always false unless validation is enabled.
    pub dnssec: bool,
    /// Served from the cache rather than from queries made for this call (callers that
    /// waited on another caller's in-flight lookup get `false`).
    pub from_cache: bool,
}

/// Most TLSA records kept from one answer: a hostile zone can publish thousands.
pub const MAX_TLSA_RECORDS: usize = 32;

/// What a TLSA lookup found ([`MxResolver::tlsa`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsaAnswer {
    /// A DNSSEC-validated TLSA RRset (at most [`MAX_TLSA_RECORDS`]), and its smallest TTL.
    Secure(Vec<TLSA>, u32),
    /// Validated proof that the name has no TLSA records: no DANE.
    SecureNone,
    /// Records or a denial that are not DNSSEC-authenticated (an unsigned zone), or NXDOMAIN:
    /// no DANE.
    Insecure,
    /// The lookup failed: SERVFAIL, a timeout, or a DNSSEC-bogus answer. RFC 7672 §2.2:
    /// the host cannot be used until the lookup succeeds (the message is deferred).
    Failed(String),
}

/// Why a domain has no usable route. [`ResolveError::is_permanent`] says bounce or defer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// RFC 7505 null MX: the domain says it accepts no mail.
    #[error("domain publishes a null MX (RFC 7505): it accepts no mail")]
    NullMx,
    /// NXDOMAIN for the domain.
    #[error("domain does not exist (NXDOMAIN)")]
    NoSuchDomain,
    /// The MX hosts (or the domain itself, without MX) have no A/AAAA records.
    #[error("no mail exchanger of the domain has an IPv4 or IPv6 address")]
    NoAddress,
    /// SERVFAIL, REFUSED, timeout, I/O error, DNSSEC validation failure: try again later.
    #[error("temporary DNS failure: {0}")]
    Temporary(String),
    /// The input is not a domain name we can look up.
    #[error("invalid domain {0:?}")]
    InvalidDomain(String),
}

impl ResolveError {
    /// True when retrying cannot help: the message should bounce.
    pub fn is_permanent(&self) -> bool {
        match self {
            ResolveError::NullMx | ResolveError::NoSuchDomain | ResolveError::InvalidDomain(_) => true,
            ResolveError::NoAddress | ResolveError::Temporary(_) => false,
        }
    }

    /// RFC 3463 enhanced status code for a DSN or a log line.
    pub fn enhanced_code(&self) -> &'static str {
        match self {
            ResolveError::NullMx => "5.1.10",
            ResolveError::NoSuchDomain | ResolveError::InvalidDomain(_) => "5.1.2",
            ResolveError::NoAddress | ResolveError::Temporary(_) => "4.4.3",
        }
    }
}

/// Counters since the resolver was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResolverStats {
    /// [`MxResolver::resolve`] calls.
    pub lookups: u64,
    /// Calls answered from the cache (positive or negative).
    pub cache_hits: u64,
    /// Calls that waited for another caller's in-flight lookup of the same domain.
    pub coalesced: u64,
    /// DNS lookups issued (MX + A + AAAA). hickory's retries and DNSSEC chain queries are
    /// not included; its cache is off, so each of these reached a nameserver.
    pub queries: u64,
}

/// A hickory resolver builder asking `nameserver` (UDP and TCP on its port; hickory 0.26 keeps
/// the port per connection), or the system's resolvers (`/etc/resolv.conf`) when `None`. The
/// caller sets the options; [`MxResolver::new`] and the trust-anchor loader build on it.
pub fn hickory_builder(nameserver: Option<SocketAddr>) -> Result<ResolverBuilder<TokioRuntimeProvider>, String> {
    match nameserver {
        Some(addr) => {
            let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
            for conn in &mut ns.connections {
                conn.port = addr.port();
            }
            Ok(Resolver::builder_with_config(HickoryConfig::from_name_servers(vec![ns]), TokioRuntimeProvider::default()))
        }
        None => TokioResolver::builder_tokio().map_err(|e| format!("cannot read the system resolver configuration: {e}")),
    }
}

/// What a lookup ended in, as cached and as shared with coalesced callers.
type Outcome = Result<Arc<Resolved>, ResolveError>;

/// A destination as cached: hosts sorted by preference, not yet shuffled.
#[derive(Debug)]
struct Resolved {
    domain: String,
    kind: RouteKind,
    hosts: Vec<MxHost>,
    dnssec: bool,
}

struct CacheEntry {
    outcome: Outcome,
    expires: Instant,
    seq: u64,
}

/// The cache and the in-flight table, behind one short-held lock (never across an await).
#[derive(Default)]
struct State {
    cache: HashMap<String, CacheEntry>,
    /// Expiry order, for eviction: expired entries first, then those closest to expiry.
    by_expiry: BTreeMap<(Instant, u64), String>,
    next_seq: u64,
    /// Lookups in progress; callers for the same domain wait on the receiver.
    inflight: HashMap<String, watch::Receiver<Option<Outcome>>>,
}

impl State {
    fn get_fresh(&mut self, key: &str, now: Instant) -> Option<Outcome> {
        let entry = self.cache.get(key)?;
        if entry.expires > now {
            return Some(entry.outcome.clone());
        }
        self.remove(key);
        None
    }

    fn remove(&mut self, key: &str) {
        if let Some(old) = self.cache.remove(key) {
            self.by_expiry.remove(&(old.expires, old.seq));
        }
    }

    fn insert(&mut self, key: String, outcome: Outcome, lifetime: Duration, max_entries: usize, now: Instant) {
        if max_entries == 0 || lifetime.is_zero() {
            return;
        }
        self.remove(&key);
        while self.cache.len() >= max_entries {
            // The first entry by expiry is either expired or the one that would go soonest.
            let Some((_, victim)) = self.by_expiry.pop_first() else { break };
            self.cache.remove(&victim);
        }
        let expires = now + lifetime;
        let seq = self.next_seq;
        self.next_seq += 1;
        self.by_expiry.insert((expires, seq), key.clone());
        self.cache.insert(key, CacheEntry { outcome, expires, seq });
    }
}

#[derive(Default)]
struct Counters {
    lookups: AtomicU64,
    cache_hits: AtomicU64,
    coalesced: AtomicU64,
    queries: AtomicU64,
}

/// MX resolver with a bounded destination cache and single flight per domain.
///
/// `Send + Sync`: the engine keeps one per shard, and one may also be shared across a
/// multi-thread runtime. hickory spawns its connection tasks on the runtime where a query is
/// first made, so use a resolver from the runtime that made it.
pub struct MxResolver {
    lookup: Lookup,
    cfg: ResolverConfig,
    state: Mutex<State>,
    counters: Arc<Counters>,
}

impl fmt::Debug for MxResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MxResolver").field("cfg", &self.cfg).field("stats", &self.stats()).finish()
    }
}

impl MxResolver {
    /// Build a resolver. Fails (as [`ResolveError::Temporary`]) only when `nameserver` is
    /// `None` and the system configuration cannot be read.
    pub fn new(cfg: ResolverConfig) -> Result<MxResolver, ResolveError> {
        let mut cfg = cfg;
        cfg.attempts = cfg.attempts.max(1);
        cfg.max_ttl = cfg.max_ttl.max(cfg.min_ttl);

        let mut builder = hickory_builder(cfg.nameserver).map_err(ResolveError::Temporary)?;
        let opts = builder.options_mut();
        opts.timeout = cfg.timeout;
        opts.attempts = cfg.attempts;
        // Our cache is the one that counts: hickory's would hide queries from the stats and
        // keep records past the moment our destination entry expires.
        opts.cache_size = 0;
        // MX hosts come from DNS only, as with Postfix's default; /etc/hosts is for people.
        opts.use_hosts_file = ResolveHosts::Never;
        opts.validate = cfg.validate_dnssec;
        if let Some(anchor) = &cfg.trust_anchor {
            builder = builder.with_trust_anchor(anchor.clone());
        }
        let resolver = builder.build().map_err(|e| ResolveError::Temporary(format!("cannot build the DNS resolver: {e}")))?;

        let counters = Arc::new(Counters::default());
        let lookup = Lookup {
            resolver,
            deadline: cfg.timeout.saturating_mul(u32::try_from(cfg.attempts).unwrap_or(u32::MAX)),
            counters: counters.clone(),
            validate: cfg.validate_dnssec,
        };
        Ok(MxResolver { lookup, cfg, state: Mutex::new(State::default()), counters })
    }

    /// The route for `domain`: from the cache, from another caller's lookup in flight, or
    /// from DNS. Each call shuffles hosts of equal preference.
    pub async fn resolve(&self, domain: &str) -> Result<Destination, ResolveError> {
        self.counters.lookups.fetch_add(1, Ordering::Relaxed);
        let (key, name) = normalize(domain)?;
        let mut waited = false;
        loop {
            let step = {
                let mut st = self.lock();
                if let Some(outcome) = st.get_fresh(&key, Instant::now()) {
                    Step::Cached(outcome)
                } else if let Some(rx) = st.inflight.get(&key) {
                    Step::Wait(rx.clone())
                } else {
                    let (tx, rx) = watch::channel(None);
                    st.inflight.insert(key.clone(), rx);
                    Step::Lead(tx)
                }
            };
            let mut rx = match step {
                Step::Cached(outcome) => {
                    self.counters.cache_hits.fetch_add(1, Ordering::Relaxed);
                    return materialize(outcome, true);
                }
                Step::Lead(tx) => return self.lead(key, name, tx).await,
                Step::Wait(rx) => rx,
            };
            if !waited {
                waited = true;
                self.counters.coalesced.fetch_add(1, Ordering::Relaxed);
            }
            // The sender goes away without a value only when the leading caller was
            // cancelled; then look again (and perhaps lead ourselves).
            let shared = match rx.wait_for(Option::is_some).await {
                Ok(value) => value.clone(),
                Err(_) => None,
            };
            if let Some(outcome) = shared {
                return materialize(outcome, false);
            }
        }
    }

    /// The TXT records at `name`, each record's character-strings joined into one string (as
    /// RFC 8461 §3.1 and most TXT users want), non-UTF-8 bytes replaced. NXDOMAIN and "no TXT
    /// records" are both an empty list; only a temporary failure is an error.
    ///
    /// Not cached and not coalesced: the destination cache holds whole [`Destination`]s, and
    /// the callers of this (MTA-STS, TLS-RPT) keep what they derive from it for as long as
    /// they need. Each call counts one query in [`ResolverStats::queries`].
    pub async fn txt(&self, name: &str) -> Result<Vec<String>, ResolveError> {
        let (_, name) = normalize(name)?;
        match self.lookup.query(&name, RecordType::TXT).await {
            Answer::Records(records, _) => Ok(records
                .iter()
                .filter_map(|r| match &r.data {
                    RData::TXT(txt) => Some(String::from_utf8_lossy(&txt.txt_data.concat()).into_owned()),
                    _ => None,
                })
                .collect()),
            Answer::NoData(_) | Answer::NxDomain => Ok(Vec::new()),
            Answer::Failed(why) => Err(ResolveError::Temporary(why)),
        }
    }

    /// The addresses of host `name`, IPv4 first, then IPv6: the lookup [`MxResolver::resolve`]
    /// makes for each MX host (A and AAAA concurrently), for hosts that are not MX hosts, such
    /// as an MTA-STS policy host. A name without addresses (or that does not exist) gives an
    /// empty list; a temporary failure of both lookups, or of one when the other found nothing,
    /// is an error. Not cached, for the reason given at [`MxResolver::txt`].
    pub async fn host_addrs(&self, name: &str) -> Result<Vec<IpAddr>, ResolveError> {
        let (_, name) = normalize(name)?;
        let found = self.lookup.addresses(name).await;
        match found.temp_failure {
            Some(why) if found.addrs.is_empty() => Err(ResolveError::Temporary(why)),
            _ => {
                let mut addrs = found.addrs;
                addrs.sort_by_key(|ip| ip.is_ipv6());
                Ok(addrs)
            }
        }
    }

    /// The TLSA RRset of `host` for TCP `port` (`_25._tcp.host`, RFC 7672 §2.2.3), with its
    /// DNSSEC verdict. Only a validated answer means anything for DANE: without validation
    /// every answer is [`TlsaAnswer::Insecure`].
    ///
    /// Not cached, for the reason given at [`MxResolver::txt`]: the engine keeps TLSA answers
    /// per shard for their TTL. Each call counts one query in [`ResolverStats::queries`].
    pub async fn tlsa(&self, host: &str, port: u16) -> TlsaAnswer {
        let name = match normalize(&format!("_{port}._tcp.{}", host.trim_end_matches('.'))) {
            Ok((_, name)) => name,
            Err(e) => return TlsaAnswer::Failed(e.to_string()),
        };
        match self.lookup.query(&name, RecordType::TLSA).await {
            Answer::Records(records, true) => {
                let ttl = records.iter().map(|r| r.ttl).min().unwrap_or(0);
                let tlsa = records
                    .into_iter()
                    .filter_map(|r| match r.data {
                        RData::TLSA(t) => Some(t),
                        _ => None,
                    })
                    .take(MAX_TLSA_RECORDS)
                    .collect();
                TlsaAnswer::Secure(tlsa, ttl)
            }
            Answer::Records(_, false) => TlsaAnswer::Insecure,
            Answer::NoData(true) => TlsaAnswer::SecureNone,
            // A denial that did not validate, or NXDOMAIN (validated or not: both mean "no
            // TLSA", and no DANE either way).
            Answer::NoData(false) | Answer::NxDomain => TlsaAnswer::Insecure,
            // SERVFAIL, timeout, or a bogus answer (hickory reports DnssecBogus as an error).
            Answer::Failed(why) => TlsaAnswer::Failed(why),
        }
    }

    /// Counters since creation.
    pub fn stats(&self) -> ResolverStats {
        let c = &self.counters;
        ResolverStats {
            lookups: c.lookups.load(Ordering::Relaxed),
            cache_hits: c.cache_hits.load(Ordering::Relaxed),
            coalesced: c.coalesced.load(Ordering::Relaxed),
            queries: c.queries.load(Ordering::Relaxed),
        }
    }

    /// Look `key` up for everyone waiting on `tx`, cache the outcome and publish it.
    async fn lead(&self, key: String, name: Name, tx: watch::Sender<Option<Outcome>>) -> Result<Destination, ResolveError> {
        let mut guard = InflightGuard { resolver: self, key: Some(key) };
        let found = self.lookup.destination(&name, guard.key.as_deref().unwrap_or_default()).await;
        let lifetime = self.lifetime_of(&found);
        let outcome: Outcome = found.map(|f| Arc::new(f.resolved));
        if let Some(key) = guard.key.take() {
            let mut st = self.lock();
            st.inflight.remove(&key);
            st.insert(key, outcome.clone(), lifetime, self.cfg.max_entries, Instant::now());
        }
        tx.send_replace(Some(outcome.clone()));
        materialize(outcome, false)
    }

    /// How long an outcome may be served from the cache.
    fn lifetime_of(&self, found: &Result<Found, ResolveError>) -> Duration {
        match found {
            Ok(f) => {
                let ttl = Duration::from_secs(u64::from(f.ttl)).clamp(self.cfg.min_ttl, self.cfg.max_ttl);
                match f.degraded {
                    Degraded::No => ttl,
                    Degraded::HostWithoutAddress => ttl.min(self.cfg.negative_ttl),
                    Degraded::HostTempFailure => ttl.min(self.cfg.temp_fail_ttl),
                }
            }
            Err(ResolveError::Temporary(_)) => self.cfg.temp_fail_ttl,
            Err(ResolveError::InvalidDomain(_)) => Duration::ZERO,
            Err(_) => self.cfg.negative_ttl,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere while holding the lock leaves the maps consistent (every update
        // is a single insert/remove), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What a caller does after one look at the shared state.
enum Step {
    Cached(Outcome),
    Wait(watch::Receiver<Option<Outcome>>),
    Lead(watch::Sender<Option<Outcome>>),
}

/// Removes the in-flight entry if the leading caller is dropped before it finishes, so that
/// waiters see the channel close and retry instead of waiting forever.
struct InflightGuard<'a> {
    resolver: &'a MxResolver,
    key: Option<String>,
}

impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.resolver.lock().inflight.remove(&key);
        }
    }
}

/// Copy a cached outcome for one caller, shuffling hosts of equal preference.
fn materialize(outcome: Outcome, from_cache: bool) -> Result<Destination, ResolveError> {
    let resolved = outcome?;
    let mut hosts = resolved.hosts.clone();
    shuffle_equal_preferences(&mut hosts);
    Ok(Destination { domain: resolved.domain.clone(), kind: resolved.kind, hosts, dnssec: resolved.dnssec, from_cache })
}

/// `hosts` is sorted by preference; shuffle each run of equal preference in place.
fn shuffle_equal_preferences(hosts: &mut [MxHost]) {
    let mut start = 0;
    while start < hosts.len() {
        let pref = hosts[start].preference;
        let end = start + hosts[start..].iter().take_while(|h| h.preference == pref).count();
        fastrand::shuffle(&mut hosts[start..end]);
        start = end;
    }
}

/// Check and canonicalise a domain: the cache key (lowercase ASCII, no trailing dot) and the
/// absolute name to query (the trailing dot keeps search domains and ndots out of it).
fn normalize(domain: &str) -> Result<(String, Name), ResolveError> {
    let invalid = |why: &str| ResolveError::InvalidDomain(format!("{domain}: {why}"));
    let trimmed = domain.trim();
    let bare = trimmed.strip_suffix('.').unwrap_or(trimmed);
    if bare.is_empty() {
        return Err(invalid("empty"));
    }
    if bare.starts_with('[') {
        return Err(invalid("an address literal has no MX; deliver to the address instead"));
    }
    let ascii = if bare.is_ascii() {
        bare.to_ascii_lowercase()
    } else {
        let name = Name::from_utf8(bare).map_err(|e| invalid(&format!("not a valid IDN: {e}")))?;
        name.to_ascii().trim_end_matches('.').to_ascii_lowercase()
    };
    if ascii.len() > 253 {
        return Err(invalid("longer than 253 characters"));
    }
    for label in ascii.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(invalid("each label must be 1 to 63 characters"));
        }
        if !label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return Err(invalid("only letters, digits, '-' and '_' are allowed in a label"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(invalid("a label may not begin or end with '-'"));
        }
    }
    let name = Name::from_ascii(format!("{ascii}.")).map_err(|e| invalid(&e.to_string()))?;
    Ok((ascii, name))
}

/// True when `authorities` hold NSEC/NSEC3 records and all of them validated as secure.
fn denial_is_secure(authorities: &[Record]) -> bool {
    let mut denials = authorities.iter().filter(|r| matches!(r.record_type(), RecordType::NSEC | RecordType::NSEC3)).peekable();
    denials.peek().is_some() && denials.all(|r| r.proof == Proof::Secure)
}

/// One DNS lookup's result, reduced to what resolution needs.
enum Answer {
    /// Records of the asked type, and whether all of them validated as DNSSEC-secure.
    Records(Vec<Record>, bool),
    /// The name exists without records of that type; true if that was proven by DNSSEC.
    NoData(bool),
    NxDomain,
    Failed(String),
}

/// The part of the resolver that talks to DNS; cheap to clone into spawned tasks.
#[derive(Clone)]
struct Lookup {
    resolver: TokioResolver,
    /// Backstop on one lookup, in case hickory's own timeouts add up to more.
    deadline: Duration,
    counters: Arc<Counters>,
    validate: bool,
}

/// The addresses of one host, and what they mean for the destination's lifetime.
#[derive(Default)]
struct HostAddrs {
    addrs: Vec<IpAddr>,
    min_ttl: Option<u32>,
    temp_failure: Option<String>,
    /// Some address RRset validated as secure.
    secure: bool,
}

impl Lookup {
    async fn query(&self, name: &Name, rtype: RecordType) -> Answer {
        self.counters.queries.fetch_add(1, Ordering::Relaxed);
        let result = match tokio::time::timeout(self.deadline, self.resolver.lookup(name.clone(), rtype)).await {
            Ok(result) => result,
            Err(_) => return Answer::Failed(format!("{rtype} {name}: timed out after {:?}", self.deadline)),
        };
        match result {
            Ok(lookup) => {
                let records: Vec<Record> = lookup.answers().iter().filter(|r| r.record_type() == rtype).cloned().collect();
                if records.is_empty() {
                    Answer::NoData(false)
                } else {
                    let secure = self.validate && records.iter().all(|r| r.proof == Proof::Secure);
                    Answer::Records(records, secure)
                }
            }
            Err(NetError::Dns(DnsError::NoRecordsFound(nr))) => match nr.response_code {
                ResponseCode::NXDomain => Answer::NxDomain,
                // A validated denial comes back as an ordinary "no records" whose NSEC/NSEC3
                // authority records carry the proof.
                _ => Answer::NoData(self.validate && denial_is_secure(nr.authorities.as_deref().unwrap_or_default())),
            },
            Err(NetError::Dns(DnsError::Nsec { response, proof, .. })) => {
                if proof == Proof::Bogus {
                    Answer::Failed(format!("{rtype} {name}: DNSSEC validation failed (bogus denial)"))
                } else if response.response_code == ResponseCode::NXDomain {
                    Answer::NxDomain
                } else {
                    Answer::NoData(proof == Proof::Secure)
                }
            }
            Err(e) => Answer::Failed(format!("{rtype} {name}: {e}")),
        }
    }

    /// A and AAAA of `host`, concurrently.
    async fn addresses(&self, host: Name) -> HostAddrs {
        let (v4, v6) = tokio::join!(self.query(&host, RecordType::A), self.query(&host, RecordType::AAAA));
        let mut out = HostAddrs::default();
        for answer in [v4, v6] {
            match answer {
                Answer::Records(records, secure) => {
                    out.secure |= secure;
                    for r in records {
                        let ip = match &r.data {
                            RData::A(a) => IpAddr::V4(a.0),
                            RData::AAAA(a) => IpAddr::V6(a.0),
                            _ => continue,
                        };
                        if !out.addrs.contains(&ip) {
                            out.addrs.push(ip);
                        }
                        out.min_ttl = Some(out.min_ttl.map_or(r.ttl, |t| t.min(r.ttl)));
                    }
                }
                Answer::NoData(_) | Answer::NxDomain => {}
                Answer::Failed(why) => out.temp_failure = Some(why),
            }
        }
        out
    }

    /// Resolve `name` (whose cache key is `domain`) completely.
    async fn destination(&self, name: &Name, domain: &str) -> Result<Found, ResolveError> {
        match self.query(name, RecordType::MX).await {
            Answer::NxDomain => Err(ResolveError::NoSuchDomain),
            Answer::Failed(why) => Err(ResolveError::Temporary(why)),
            Answer::NoData(secure) => self.implicit_mx(name, domain, secure).await,
            Answer::Records(records, secure) => self.mx(&records, domain, secure).await,
        }
    }

    /// RFC 5321 §5.1: without MX records the domain itself is the one host, preference 0.
    async fn implicit_mx(&self, name: &Name, domain: &str, secure: bool) -> Result<Found, ResolveError> {
        let found = self.addresses(name.clone()).await;
        if found.addrs.is_empty() {
            return Err(match found.temp_failure {
                Some(why) => ResolveError::Temporary(why),
                None => ResolveError::NoAddress,
            });
        }
        let degraded = if found.temp_failure.is_some() { Degraded::HostTempFailure } else { Degraded::No };
        Ok(Found {
            resolved: Resolved {
                domain: domain.to_owned(),
                kind: RouteKind::ImplicitMx,
                hosts: vec![MxHost { name: domain.to_owned(), preference: 0, addrs: found.addrs, dnssec: found.secure }],
                dnssec: secure,
            },
            ttl: found.min_ttl.unwrap_or(0),
            degraded,
        })
    }

    /// The MX set: null MX check, then every host's addresses, all hosts concurrently.
    async fn mx(&self, records: &[Record], domain: &str, secure: bool) -> Result<Found, ResolveError> {
        let mut ttl = u32::MAX;
        // One entry per host; a host listed twice keeps its best preference.
        let mut exchanges: HashMap<String, (u16, Name)> = HashMap::new();
        for record in records {
            let RData::MX(mx) = &record.data else { continue };
            // RFC 7505: "." means no mail; a "." next to real hosts is a broken zone, and
            // treating it as null too is the conservative reading.
            if mx.exchange.is_root() {
                return Err(ResolveError::NullMx);
            }
            ttl = ttl.min(record.ttl);
            let exchange = mx.exchange.to_lowercase();
            let host = exchange.to_ascii().trim_end_matches('.').to_owned();
            let entry = exchanges.entry(host).or_insert((mx.preference, exchange));
            entry.0 = entry.0.min(mx.preference);
        }
        let mut sorted: Vec<(u16, String, Name)> = exchanges.into_iter().map(|(host, (pref, name))| (pref, host, name)).collect();
        sorted.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        sorted.truncate(MAX_MX_HOSTS);

        let mut tasks = JoinSet::new();
        for (i, (_, _, name)) in sorted.iter().enumerate() {
            let this = self.clone();
            let name = name.clone();
            tasks.spawn(async move { (i, this.addresses(name).await) });
        }
        let mut results: Vec<Option<HostAddrs>> = sorted.iter().map(|_| None).collect();
        while let Some(joined) = tasks.join_next().await {
            // A task can only fail by panicking; its host then counts as a temporary failure.
            if let Ok((i, found)) = joined {
                if let Some(slot) = results.get_mut(i) {
                    *slot = Some(found);
                }
            }
        }

        let mut hosts = Vec::with_capacity(sorted.len());
        let mut degraded = Degraded::No;
        let mut temp_failure = None;
        for ((preference, name, _), found) in sorted.into_iter().zip(results) {
            let found = found
                .unwrap_or_else(|| HostAddrs { temp_failure: Some(format!("address lookup of {name} failed")), ..HostAddrs::default() });
            if let Some(t) = found.min_ttl {
                ttl = ttl.min(t);
            }
            if let Some(why) = found.temp_failure {
                degraded = Degraded::HostTempFailure;
                temp_failure.get_or_insert(why);
            } else if found.addrs.is_empty() && degraded == Degraded::No {
                degraded = Degraded::HostWithoutAddress;
            }
            // v4 first, then v6, each in the order the server gave.
            let mut addrs = found.addrs;
            addrs.sort_by_key(|ip| ip.is_ipv6());
            hosts.push(MxHost { name, preference, addrs, dnssec: found.secure });
        }
        if hosts.iter().all(|h| h.addrs.is_empty()) {
            return Err(match temp_failure {
                Some(why) => ResolveError::Temporary(why),
                None => ResolveError::NoAddress,
            });
        }
        Ok(Found { resolved: Resolved { domain: domain.to_owned(), kind: RouteKind::Mx, hosts, dnssec: secure }, ttl, degraded })
    }
}

/// A fresh resolution and how long it is good for.
struct Found {
    resolved: Resolved,
    /// Smallest TTL among the MX and address records, before clamping.
    ttl: u32,
    degraded: Degraded,
}

/// A destination that resolved, but not completely: cache it for less than its TTL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Degraded {
    No,
    /// Some host has no address; that may be a zone being fixed (negative TTL).
    HostWithoutAddress,
    /// Some address lookup failed temporarily (temporary-failure TTL).
    HostTempFailure,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_canonicalises() {
        let (key, name) = normalize(" Example.COM. ").unwrap();
        assert_eq!(key, "example.com");
        assert_eq!(name.to_ascii(), "example.com.");
        assert!(name.is_fqdn());
        let (key, _) = normalize("bücher.example").unwrap();
        assert_eq!(key, "xn--bcher-kva.example");
        assert_eq!(normalize("_dmarc.x.test").unwrap().0, "_dmarc.x.test");
    }

    #[test]
    fn normalize_rejects_non_names() {
        let long = format!("{}.test", ["a"; 130].join("."));
        for bad in ["", ".", "..", "a..b", "-a.test", "a-.test", "a b.test", "a/b.test", "[1.2.3.4]", &long] {
            assert!(matches!(normalize(bad), Err(ResolveError::InvalidDomain(_))), "{bad:?}");
        }
    }

    fn host(name: &str, preference: u16) -> MxHost {
        MxHost { name: name.into(), preference, addrs: vec![], dnssec: false }
    }

    #[test]
    fn shuffle_keeps_preference_groups() {
        let sorted = vec![host("a", 1), host("b", 5), host("c", 5), host("d", 5), host("e", 9)];
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let mut hosts = sorted.clone();
            shuffle_equal_preferences(&mut hosts);
            assert_eq!(hosts.iter().map(|h| h.preference).collect::<Vec<_>>(), [1, 5, 5, 5, 9]);
            assert_eq!((hosts[0].name.as_str(), hosts[4].name.as_str()), ("a", "e"));
            seen.insert(hosts.iter().map(|h| h.name.as_str()).collect::<String>());
        }
        assert_eq!(seen.len(), 6, "all orders of the three equal hosts appear");
    }

    fn outcome(domain: &str) -> Outcome {
        Ok(Arc::new(Resolved { domain: domain.into(), kind: RouteKind::Mx, hosts: vec![], dnssec: false }))
    }

    #[test]
    fn cache_evicts_expired_then_soonest_to_expire() {
        let now = Instant::now();
        let mut st = State::default();
        st.insert("long".into(), outcome("long"), Duration::from_secs(100), 3, now);
        st.insert("short".into(), outcome("short"), Duration::from_secs(1), 3, now);
        st.insert("mid".into(), outcome("mid"), Duration::from_secs(50), 3, now);
        // Full: the entry closest to expiry goes first.
        st.insert("new".into(), outcome("new"), Duration::from_secs(60), 3, now);
        assert_eq!(st.cache.len(), 3);
        assert!(!st.cache.contains_key("short"));
        let later = now + Duration::from_secs(55);
        assert!(st.get_fresh("mid", later).is_none(), "expired entries are not served");
        assert!(st.get_fresh("long", later).is_some());
        assert_eq!((st.cache.len(), st.by_expiry.len()), (2, 2));
        // Re-inserting a key replaces it without leaking its old expiry slot.
        st.insert("long".into(), outcome("long"), Duration::from_secs(10), 3, now);
        assert_eq!((st.cache.len(), st.by_expiry.len()), (2, 2));
        // Nothing is cached with a zero bound or zero lifetime.
        st.insert("x".into(), outcome("x"), Duration::ZERO, 3, now);
        st.insert("y".into(), outcome("y"), Duration::from_secs(1), 0, now);
        assert_eq!(st.cache.len(), 2);
    }

    #[test]
    fn error_classification() {
        let all = [
            (ResolveError::NullMx, true, "5.1.10"),
            (ResolveError::NoSuchDomain, true, "5.1.2"),
            (ResolveError::NoAddress, false, "4.4.3"),
            (ResolveError::Temporary("x".into()), false, "4.4.3"),
            (ResolveError::InvalidDomain("x".into()), true, "5.1.2"),
        ];
        for (e, permanent, code) in all {
            assert_eq!((e.is_permanent(), e.enhanced_code()), (permanent, code), "{e}");
        }
    }

    #[test]
    fn resolver_builds_outside_a_runtime() {
        let cfg = ResolverConfig { nameserver: Some(SocketAddr::from(([127, 0, 0, 1], 53))), ..Default::default() };
        let r = MxResolver::new(cfg).expect("no runtime needed to build");
        assert_eq!(r.stats(), ResolverStats::default());
    }

    #[test]
    fn resolver_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<MxResolver>();
    }
}
