//! The delivery engine: takes messages, gives back exactly one [`Outcome`] per recipient.
//!
//! A message is split by recipient domain; each (message, domain) part is routed to one shard
//! by a hash of the domain, so everything about a destination (its DNS answer, what policy
//! learned, its queue, its connections and TLS tickets) lives on one thread and is touched
//! without locks. Each shard is an OS thread with its own current-thread tokio runtime; parts
//! reach it through a crossbeam channel and a wake-up. Outcomes leave through one crossbeam
//! channel that the embedder drains (the CLI writes them as JSON lines).
//!
//! ```no_run
//! # fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use mxpipe::engine::{Engine, EngineConfig, Submission};
//! let (engine, outcomes) = Engine::start(EngineConfig::default())?;
//! engine.submit(Submission::new("m1", "sender@example.org", vec!["rcpt@example.net".into()], b"Subject: hi\r\n\r\nhello\r\n".to_vec()))?;
//! let stats = engine.shutdown();           // waits until every recipient has an outcome
//! for o in outcomes.try_iter() { println!("{}", o.to_json()); }
//! # let _ = stats; Ok(()) }
//! ```

mod dane;
pub mod input;
pub mod limits;
mod shard;
mod sts;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustls_pki_types::CertificateDer;
use serde::Serialize;

use crate::outcome::{Outcome, Status};
use crate::policy::state::{PolicyState, StateOptions};
use crate::policy::{Floor, PolicyOptions};
use crate::resolve::ResolverConfig;
use crate::tls::Kx;

/// Maps the logical SMTP ports to the ports actually dialled (tests run unprivileged).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortMap {
    /// Port dialled for logical port 25 (SMTP with STARTTLS).
    pub smtp: u16,
    /// Port dialled for logical port 26 (implicit TLS).
    pub smtps: u16,
    /// Port dialled for HTTPS (443): the MTA-STS policy hosts.
    pub https: u16,
}

impl Default for PortMap {
    fn default() -> Self {
        PortMap { smtp: 25, smtps: 26, https: 443 }
    }
}

impl std::str::FromStr for PortMap {
    type Err = String;
    /// `25=2525,26=2526,443=8443` (each may be left out).
    fn from_str(s: &str) -> Result<PortMap, String> {
        let mut map = PortMap::default();
        for part in s.split(',').filter(|p| !p.trim().is_empty()) {
            let (from, to) = part.split_once('=').ok_or_else(|| format!("{part:?} is not FROM=TO"))?;
            let to: u16 = to.trim().parse().map_err(|_| format!("{to:?} is not a port"))?;
            match from.trim() {
                "25" => map.smtp = to,
                "26" => map.smtps = to,
                "443" => map.https = to,
                other => return Err(format!("only ports 25, 26 and 443 can be mapped, not {other:?}")),
            }
        }
        Ok(map)
    }
}

/// Everything that shapes the engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Shard threads (default: one per core).
    pub shards: usize,
    /// How MX records are looked up and cached.
    pub resolver: ResolverConfig,
    /// Where the logical ports 25 and 26 are actually dialled.
    pub port_map: PortMap,
    /// Trust anchors added to the Mozilla roots for verified TLS.
    pub extra_roots: Vec<CertificateDer<'static>>,
    /// Key-exchange groups offered in TLS handshakes (benchmarks pin one).
    pub kx: Kx,
    /// Connections at once per destination domain.
    pub max_conns_per_dest: usize,
    /// Connections at once, busy or idle, per destination address and shard: many domains
    /// are hosted on one server, which must not get one connection per domain at once.
    pub max_conns_per_ip: usize,
    /// Messages on one connection before it is closed and a new one opened.
    pub max_msgs_per_conn: u32,
    /// How long an idle connection is kept for reuse.
    pub idle_timeout: Duration,
    /// Limit on each TCP connect to an MX host.
    pub connect_timeout: Duration,
    /// Limit on each TLS handshake, implicit or after STARTTLS.
    pub tls_handshake_timeout: Duration,
    /// Upper bound on any single SMTP wait (RFC 5321's are minutes).
    pub command_timeout: Duration,
    /// The name sent in EHLO; receivers check it, so it should resolve to the sending address.
    pub ehlo_name: String,
    /// How the TLS policy is applied and how long learned facts are kept.
    pub policy: PolicyOptions,
    /// What the policy keeps across restarts (pins, MTA-STS policies): shared with whoever shows or edits it
    /// (the daemon's API). `None`: the engine keeps an in-memory one with default settings.
    pub state: Option<Arc<PolicyState>>,
    /// Where TLS-RPT (RFC 8460) counts each TLS session's outcome, one `success` or `failure`
    /// per session attempted; shared with the daemon, which reports and shows the counts.
    /// `None`: nothing is counted. MX-prefix failures follow [`crate::tlsrpt`]'s convention.
    pub tlsrpt: Option<Arc<crate::tlsrpt::TlsRpt>>,
    /// Per-domain TLS floors set by the operator (the strictest of floor and MX prefix wins).
    pub floors: HashMap<String, Floor>,
    /// TLS floors by MX host pattern (`mx.example.net` or `*.example.net`); an MX host takes
    /// the first that matches, and the stricter of it and its domain's floor applies.
    pub mx_floors: Vec<(String, Floor)>,
    /// Operator limits for some destinations: a domain's own connection and message-rate
    /// limits, and budgets shared by all connections to the MX hosts matching a pattern.
    pub limits: Vec<limits::LimitRule>,
    /// TLS 1.3 tickets kept per MX host name (at least the connection limit).
    pub tickets_per_host: usize,
    /// MX host names whose tickets are kept, per shard.
    pub ticket_hosts: usize,
    /// Authenticate MX hosts by their DNSSEC-signed TLSA records (DANE, RFC 7672). Takes
    /// effect only with DNSSEC validation on ([`ResolverConfig::validate_dnssec`]): without it no
    /// answer is authenticated, so no TLSA record can be trusted. Default on.
    pub dane: bool,
    /// Where connections leave from: sources (a local address and its EHLO name) and pools
    /// of them ([`crate::egress`]). `None`: the system picks the address, and
    /// [`EngineConfig::ehlo_name`] is said.
    pub egress: Option<Arc<crate::egress::Egress>>,
    /// MX host patterns that group hosts into one receiver ("site") for suspensions of an
    /// egress source: a 421 or a rate limit from a host matching one to source S suspends S
    /// toward every host matching it, whatever domains they serve. An MX host belongs to the
    /// first pattern that matches it. The daemon gives every `[[domain]]` `mx_pattern`.
    pub mx_sites: Vec<String>,
    /// Cluster mode: the operator's limits (`max_conns`, `msgs_per_s` of `[[domain]]`
    /// entries) are shared with the other nodes through Redis ([`crate::cluster`]). `None`:
    /// every limit is this node's own.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            shards: std::thread::available_parallelism().map_or(1, |n| n.get()),
            resolver: ResolverConfig::default(),
            port_map: PortMap::default(),
            extra_roots: Vec::new(),
            kx: Kx::Default,
            max_conns_per_dest: 8,
            max_conns_per_ip: 64,
            max_msgs_per_conn: 1000,
            idle_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            tls_handshake_timeout: Duration::from_secs(10),
            command_timeout: Duration::from_secs(300),
            ehlo_name: "mxpipe.localhost".into(),
            policy: PolicyOptions::default(),
            state: None,
            tlsrpt: None,
            floors: HashMap::new(),
            mx_floors: Vec::new(),
            limits: Vec::new(),
            tickets_per_host: 16,
            ticket_hosts: 50_000,
            dane: true,
            egress: None,
            mx_sites: Vec::new(),
            cluster: None,
        }
    }
}

/// One message to deliver.
#[derive(Debug, Clone)]
pub struct Submission {
    /// The caller's message id, carried into every outcome.
    pub id: String,
    /// Envelope sender without brackets; empty for the null sender.
    pub from: String,
    /// Envelope recipients (`user@domain`); each gets exactly one outcome.
    pub to: Vec<String>,
    /// RFC 5322 bytes (line endings are normalised on the way out).
    pub data: Arc<[u8]>,
    /// What the sender asked of TLS for this message (RFC 8689): nothing special,
    /// REQUIRETLS, or `TLS-Required: No`.
    pub tls: MessageTls,
    /// The egress pool chosen for this message; `None`: the engine's rules by sender domain,
    /// then its default pool.
    pub pool: Option<String>,
}

/// A message's own TLS requirement (RFC 8689), on top of what the receiving domain asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MessageTls {
    /// The receiving domain's composed policy decides.
    #[default]
    Default,
    /// REQUIRETLS: only to MX hosts found through DNSSEC or MTA-STS, over verified TLS
    /// (PKIX or DANE), to a next hop that advertises REQUIRETLS, which is passed on; otherwise
    /// the message bounces with 5.7.30.
    RequireTls,
    /// The message carries `TLS-Required: No`: the sender asks that receivers' TLS policies
    /// be ignored for it, so it goes with opportunistic TLS.
    Optional,
}

impl Submission {
    /// A submission from its parts; `data` can be a `Vec<u8>` or an existing `Arc<[u8]>`.
    pub fn new(id: impl Into<String>, from: impl Into<String>, to: Vec<String>, data: impl Into<Arc<[u8]>>) -> Submission {
        Submission { id: id.into(), from: from.into(), to, data: data.into(), tls: MessageTls::Default, pool: None }
    }
}

/// Why a submission was refused as a whole.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// Refused: [`Engine::shutdown`] has begun or a shard thread is gone; undelivered recipients were deferred.
    #[error("the engine is shutting down")]
    ShuttingDown,
    /// Refused: the message has an empty recipient list (carries its id).
    #[error("message {0:?} has no recipients")]
    NoRecipients(String),
    /// [`Engine::start`] failed: the configuration is unsafe or a shard thread could not be spawned.
    #[error("cannot start the engine: {0}")]
    Start(String),
}

/// Counters shared by the shards and read by [`Engine::stats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub messages: AtomicU64,
    pub recipients: AtomicU64,
    pub delivered: AtomicU64,
    pub deferred: AtomicU64,
    pub bounced: AtomicU64,
    pub connections: AtomicU64,
    pub connections_reused: AtomicU64,
    pub connect_failures: AtomicU64,
    pub messages_sent: AtomicU64,
    pub tls_full: AtomicU64,
    pub tls_resumed: AtomicU64,
    pub dns_lookups: AtomicU64,
    pub dns_cache_hits: AtomicU64,
    pub dns_queries: AtomicU64,
    pub dns_coalesced: AtomicU64,
    pub sts_fetches: AtomicU64,
    pub sts_fetch_failures: AtomicU64,
    pub sts_testing_failures: AtomicU64,
    pub tlsa_lookups: AtomicU64,
    pub tlsa_failures: AtomicU64,
    pub dane_configs: AtomicU64,
}

/// A summary of the engine's work so far.
#[derive(Debug, Clone, Default, Serialize)]
pub struct EngineStats {
    /// Messages submitted.
    pub messages: u64,
    /// Recipients submitted, over all messages.
    pub recipients: u64,
    /// Recipients with a delivered outcome.
    pub delivered: u64,
    /// Recipients with a deferred (temporary failure) outcome.
    pub deferred: u64,
    /// Recipients with a bounced (permanent failure) outcome.
    pub bounced: u64,
    /// Message transactions sent over connections (one per message and destination domain).
    pub transactions: u64,
    /// Connections opened (TCP connect and, where used, TLS handshake succeeded).
    pub connections_opened: u64,
    /// Times an idle connection was taken from the pool instead of opening one.
    pub connections_reused: u64,
    /// TCP connects that were refused or timed out.
    pub connect_failures: u64,
    /// [`EngineStats::transactions`] over [`EngineStats::connections_opened`]: how well connections are reused.
    pub transactions_per_connection: f64,
    /// TLS handshakes that were full (no session resumed).
    pub tls_full_handshakes: u64,
    /// TLS handshakes that resumed a session from a ticket.
    pub tls_resumed_handshakes: u64,
    /// MX resolutions asked of the resolver (see [`ResolverStats::lookups`](crate::resolve::ResolverStats::lookups)).
    pub dns_lookups: u64,
    /// Resolutions answered from the resolver's cache.
    pub dns_cache_hits: u64,
    /// DNS queries sent to a nameserver (MX, A and AAAA).
    pub dns_queries: u64,
    /// Resolutions that waited on another one's in-flight lookup of the same domain.
    pub dns_coalesced: u64,
    /// MTA-STS policy fetches started.
    pub mta_sts_fetches: u64,
    /// MTA-STS policy fetches that failed (a cached policy, if any, stayed in force).
    pub mta_sts_fetch_failures: u64,
    /// Connections to a domain whose MTA-STS policy is in `testing` mode that would have
    /// failed under `enforce` (an unlisted MX host, no TLS, an unverified certificate).
    pub mta_sts_testing_failures: u64,
    /// TLSA lookups sent (DANE; one per MX host port and TTL).
    pub tlsa_lookups: u64,
    /// TLSA lookups that failed or were DNSSEC-bogus (the host port was not used).
    pub tlsa_failures: u64,
    /// DANE client configs built from usable TLSA records (one per record set).
    pub dane_configs: u64,
    /// Seconds since [`Engine::start`].
    pub elapsed_s: f64,
    /// Messages submitted per second of [`EngineStats::elapsed_s`].
    pub messages_per_s: f64,
    /// Process CPU time (user + system) in seconds since [`Engine::start`].
    pub cpu_s: f64,
}

struct ShardHandle {
    tx: crossbeam_channel::Sender<shard::Command>,
    wake: Arc<tokio::sync::Notify>,
    thread: Option<JoinHandle<()>>,
}

/// A running engine.
pub struct Engine {
    shards: Vec<ShardHandle>,
    counters: Arc<Counters>,
    outcomes: crossbeam_channel::Sender<Outcome>,
    started: Instant,
    cpu_start: crate::sys::CpuTime,
    state: Arc<PolicyState>,
    flusher: Flusher,
    egress: Option<Arc<crate::egress::Egress>>,
    mx_sites: Arc<[String]>,
}

/// How often the policy state is written while the engine runs (and once more at shutdown).
const STATE_FLUSH_EVERY: Duration = Duration::from_secs(30);

/// The thread that writes the policy state to its file now and then, off the shards.
struct Flusher {
    stop: Option<crossbeam_channel::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    state: Arc<PolicyState>,
}

impl Flusher {
    fn start(state: Arc<PolicyState>) -> std::io::Result<Flusher> {
        if state.path().is_none() {
            return Ok(Flusher { stop: None, thread: None, state });
        }
        let (tx, rx) = crossbeam_channel::bounded::<()>(1);
        let s = state.clone();
        let thread = std::thread::Builder::new().name("mxpipe-policy-state".into()).spawn(move || {
            while let Err(crossbeam_channel::RecvTimeoutError::Timeout) = rx.recv_timeout(STATE_FLUSH_EVERY) {
                if let Err(e) = s.flush() {
                    tracing::warn!(error = %e, "could not save the policy state; will try again");
                }
            }
        })?;
        Ok(Flusher { stop: Some(tx), thread: Some(thread), state })
    }

    /// Stop the thread and write what is left.
    fn finish(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Err(e) = self.state.flush() {
            tracing::error!(error = %e, "could not save the policy state at shutdown: pins learned in this run are lost");
        }
    }
}

impl Engine {
    /// Start the shard threads. Outcomes arrive on the returned receiver; drain it while
    /// submitting (it is unbounded, so a slow reader costs memory, never a lost outcome).
    pub fn start(mut cfg: EngineConfig) -> Result<(Engine, crossbeam_channel::Receiver<Outcome>), SubmitError> {
        // Settings that would stall or silently weaken delivery are made safe here.
        cfg.max_msgs_per_conn = cfg.max_msgs_per_conn.max(1);
        cfg.max_conns_per_dest = cfg.max_conns_per_dest.max(1);
        cfg.max_conns_per_ip = cfg.max_conns_per_ip.max(1);
        for p in &mut cfg.mx_sites {
            *p = p.trim_end_matches('.').to_ascii_lowercase();
        }
        let state = cfg.state.get_or_insert_with(|| Arc::new(PolicyState::in_memory(StateOptions::default()))).clone();
        let (otx, orx) = crossbeam_channel::unbounded();
        let counters = Arc::new(Counters::default());
        let cfg = Arc::new(cfg);
        // Built here, not in the config, so that each engine has its own budgets.
        let sources = cfg.egress.as_ref().map_or(0, |e| e.sources().len());
        let limits = Arc::new(limits::Limits::with_sources(&cfg.limits, sources));
        let mut shards = Vec::new();
        for id in 0..cfg.shards.max(1) {
            let (tx, rx) = crossbeam_channel::unbounded();
            let wake = Arc::new(tokio::sync::Notify::new());
            let thread = shard::spawn(id, cfg.clone(), limits.clone(), rx, wake.clone(), otx.clone(), counters.clone())
                .map_err(|e| SubmitError::Start(e.to_string()))?;
            shards.push(ShardHandle { tx, wake, thread: Some(thread) });
        }
        let flusher = Flusher::start(state.clone()).map_err(|e| SubmitError::Start(e.to_string()))?;
        let engine = Engine {
            shards,
            counters,
            outcomes: otx,
            started: Instant::now(),
            cpu_start: crate::sys::CpuTime::now(),
            state,
            flusher,
            egress: cfg.egress.clone(),
            mx_sites: cfg.mx_sites.clone().into(),
        };
        Ok((engine, orx))
    }

    /// Hand a message to the engine. Recipients with no usable domain are bounced at once;
    /// the rest are grouped by domain and queued on their shards.
    pub fn submit(&self, msg: Submission) -> Result<(), SubmitError> {
        if msg.to.is_empty() {
            return Err(SubmitError::NoRecipients(msg.id));
        }
        let c = &self.counters;
        c.messages.fetch_add(1, Ordering::Relaxed);
        c.recipients.fetch_add(msg.to.len() as u64, Ordering::Relaxed);
        let pool = match self.egress.as_ref().map_or(crate::egress::PoolChoice::Unbound, |e| e.pool_for(msg.pool.as_deref(), &msg.from)) {
            crate::egress::PoolChoice::Unbound => None,
            crate::egress::PoolChoice::Pool(p) => Some(p),
            refused => {
                // Not a lost message: deferred, so it is retried once the pool exists.
                let why = match refused {
                    crate::egress::PoolChoice::Unknown(name) => format!("egress pool {name:?} is not configured"),
                    _ => format!("no egress pool for sender {:?}: no rule matches and no default_pool is set", msg.from),
                };
                for r in &msg.to {
                    self.emit(Outcome::local(&msg.id, r, Status::Deferred, "4.3.5", why.clone()));
                }
                return Ok(());
            }
        };
        let id: Arc<str> = msg.id.into();
        let from: Arc<str> = msg.from.into();
        let mut by_domain: HashMap<String, Vec<String>> = HashMap::new();
        for rcpt in msg.to {
            match crate::address::Mailbox::parse(&rcpt) {
                Ok(m) => by_domain.entry(m.into_domain().into_string()).or_default().push(rcpt),
                Err(e) => {
                    let o = Outcome::local(&id, &rcpt, Status::Bounced, "5.1.3", format!("unusable recipient address: {}", e.kind));
                    self.emit(o);
                }
            }
        }
        let mut stopped = false;
        for (domain, rcpts) in by_domain {
            let shard = &self.shards[shard_of(&domain, self.shards.len())];
            let part = shard::Part { id: id.clone(), from: from.clone(), domain, rcpts, data: msg.data.clone(), tls: msg.tls, pool };
            let undelivered = if stopped {
                Some(part)
            } else {
                match shard.tx.send(shard::Command::Deliver(part)) {
                    Ok(()) => {
                        shard.wake.notify_one();
                        None
                    }
                    Err(e) => match e.0 {
                        shard::Command::Deliver(part) => Some(part),
                        _ => None,
                    },
                }
            };
            if let Some(part) = undelivered {
                // The shard thread is gone: every remaining recipient still gets its outcome.
                stopped = true;
                for r in part.rcpts {
                    self.emit(Outcome::local(&part.id, &r, Status::Deferred, "4.3.0", "engine shard stopped"));
                }
            }
        }
        if stopped {
            return Err(SubmitError::ShuttingDown);
        }
        Ok(())
    }

    /// Give back the parts for `domain` that no connection has started yet: each recipient
    /// gets a deferral with [`WITHDRAWN`] (no attempt was made). For a destination that was
    /// suspended or bounced while a backlog waited in the engine (behind a rate limit, say).
    pub fn withdraw(&self, domain: &str) {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let shard = &self.shards[shard_of(&domain, self.shards.len())];
        if shard.tx.send(shard::Command::Withdraw(domain)).is_ok() {
            shard.wake.notify_one();
        }
    }

    /// Send no more mail from egress source `source` (by name) to `scope` until `until`
    /// (`None`: lift it): a 421 or a rate limit from there to that address. `scope` is a
    /// destination domain, or one of [`EngineConfig::mx_sites`] (then every shard skips the
    /// source toward every MX host of that site). The pool's other sources carry the mail;
    /// when every source of a message's pool is suspended its parts not yet started come back
    /// as [`WITHDRAWN`]. Unknown source names are ignored.
    pub fn suspend_source(&self, scope: &str, source: &str, until: Option<Instant>) {
        let Some(s) = self.egress.as_ref().and_then(|e| e.sources().iter().position(|x| x.name.eq_ignore_ascii_case(source))) else {
            return;
        };
        let scope = scope.trim_end_matches('.').to_ascii_lowercase();
        if self.is_site(&scope) {
            for shard in &self.shards {
                if shard.tx.send(shard::Command::SuspendSourceSite(scope.clone(), s, until)).is_ok() {
                    shard.wake.notify_one();
                }
            }
            return;
        }
        let shard = &self.shards[shard_of(&scope, self.shards.len())];
        if shard.tx.send(shard::Command::SuspendSource(scope, s, until)).is_ok() {
            shard.wake.notify_one();
        }
    }

    /// The site ([`EngineConfig::mx_sites`]) MX host `host` belongs to, if any.
    pub fn mx_site(&self, host: &str) -> Option<&str> {
        site_of(&self.mx_sites, host)
    }

    /// Whether `scope` (lower-case) is one of the configured sites rather than a domain.
    pub fn is_site(&self, scope: &str) -> bool {
        self.mx_sites.iter().any(|p| p.eq_ignore_ascii_case(scope))
    }

    /// The egress sources and pools, if configured: the intake checks pool names against them.
    pub fn egress(&self) -> Option<&Arc<crate::egress::Egress>> {
        self.egress.as_ref()
    }

    /// What the policy remembers across restarts (pins, MTA-STS policies), to show or edit while it runs.
    pub fn policy_state(&self) -> &Arc<PolicyState> {
        &self.state
    }

    /// Recipients submitted that have no outcome yet: what a submitter should keep bounded.
    pub fn pending(&self) -> u64 {
        self.counters.recipients.load(Ordering::Relaxed).saturating_sub(self.outcomes_given())
    }

    fn emit(&self, o: Outcome) {
        shard::count_outcome(&self.counters, o.status);
        let _ = self.outcomes.send(o);
    }

    /// The counters now.
    pub fn stats(&self) -> EngineStats {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let c = &self.counters;
        let elapsed = self.started.elapsed().as_secs_f64();
        let connections = l(&c.connections);
        let transactions = l(&c.messages_sent);
        EngineStats {
            messages: l(&c.messages),
            recipients: l(&c.recipients),
            delivered: l(&c.delivered),
            deferred: l(&c.deferred),
            bounced: l(&c.bounced),
            transactions,
            connections_opened: connections,
            connections_reused: l(&c.connections_reused),
            connect_failures: l(&c.connect_failures),
            transactions_per_connection: if connections > 0 { transactions as f64 / connections as f64 } else { 0.0 },
            tls_full_handshakes: l(&c.tls_full),
            tls_resumed_handshakes: l(&c.tls_resumed),
            dns_lookups: l(&c.dns_lookups),
            dns_cache_hits: l(&c.dns_cache_hits),
            dns_queries: l(&c.dns_queries),
            dns_coalesced: l(&c.dns_coalesced),
            mta_sts_fetches: l(&c.sts_fetches),
            mta_sts_fetch_failures: l(&c.sts_fetch_failures),
            mta_sts_testing_failures: l(&c.sts_testing_failures),
            tlsa_lookups: l(&c.tlsa_lookups),
            tlsa_failures: l(&c.tlsa_failures),
            dane_configs: l(&c.dane_configs),
            elapsed_s: elapsed,
            messages_per_s: if elapsed > 0.0 { l(&c.messages) as f64 / elapsed } else { 0.0 },
            cpu_s: crate::sys::CpuTime::now().since(&self.cpu_start).total_secs(),
        }
    }

    /// Outcomes given so far (every recipient gets exactly one).
    pub fn outcomes_given(&self) -> u64 {
        let c = &self.counters;
        c.delivered.load(Ordering::Relaxed) + c.deferred.load(Ordering::Relaxed) + c.bounced.load(Ordering::Relaxed)
    }

    /// Wait until every submitted recipient has its outcome, close idle connections, stop the
    /// shards, and return the final counters.
    pub fn shutdown(self) -> EngineStats {
        self.shutdown_by(None)
    }

    /// Like [`Engine::shutdown`], but at `deadline` parts not yet started (queued, waiting for
    /// a connection slot or a rate limit) are deferred with [`NOT_ATTEMPTED`] instead of sent;
    /// transactions already under way finish.
    pub fn shutdown_by(mut self, deadline: Option<Instant>) -> EngineStats {
        for s in &self.shards {
            let _ = s.tx.send(shard::Command::Drain(deadline));
            s.wake.notify_one();
        }
        for s in &mut self.shards {
            if let Some(t) = s.thread.take() {
                let _ = t.join();
            }
        }
        self.flusher.finish();
        if let Some(w) = self.egress.as_ref().and_then(|e| e.warmup()) {
            if let Err(e) = w.save() {
                tracing::error!(error = %e, "could not save the warm-up counters at shutdown: today's sends may be counted again");
            }
        }
        self.stats()
    }
}

/// The reason (after `mxpipe: `) of a deferral for a part that was never tried because the
/// engine was shutting down: it says nothing about the destination and is no attempt.
pub const NOT_ATTEMPTED: &str = "not attempted: shutting down";

/// The reason of a deferral for a part given back untried by [`Engine::withdraw`].
pub const WITHDRAWN: &str = "not attempted: withdrawn (destination suspended or bounced)";

/// Whether `o` is a deferral of a part that was never tried ([`NOT_ATTEMPTED`], [`WITHDRAWN`]).
pub fn not_attempted(o: &Outcome) -> bool {
    // Our own reason (`mxpipe: `), never a server's reply; its `mx` may name the host it
    // would have gone to (a source suspended toward that host's site).
    o.status == Status::Deferred && o.reply.starts_with("mxpipe: not attempted: ")
}

/// The first of `sites` (MX host patterns, [`EngineConfig::mx_sites`]) that `host` matches.
pub(crate) fn site_of<'a>(sites: &'a [String], host: &str) -> Option<&'a str> {
    if sites.is_empty() {
        return None;
    }
    sites.iter().find(|p| limits::host_matches(p, host)).map(String::as_str)
}

/// The destination domain of a recipient as the engine routes it ([`crate::address::Domain`]:
/// A-labels, lowercase, no trailing dot), or `None` if it is not a usable address.
pub fn domain_of(addr: &str) -> Option<String> {
    crate::address::Mailbox::parse(addr).ok().map(|m| m.into_domain().into_string())
}

/// The shard a destination domain belongs to: 64-bit FNV-1a of the (lower-cased) domain.
/// A fixed function, so the same domain goes to the same shard in every run and a
/// benchmark's load spread is reproducible; flooding one shard on purpose would need control
/// of the recipient domains, which a sender has anyway.
pub fn shard_of(domain: &str, shards: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in domain.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % shards.max(1) as u64) as usize
}

/// Parse a `--tls-floor DOMAIN=LEVEL` argument; the domain is normalised as a recipient's is
/// ([`crate::address::Domain`]), so the floor applies to the name the engine routes by.
pub fn parse_floor(s: &str) -> Result<(String, Floor), String> {
    let (domain, level) = s.split_once('=').ok_or_else(|| format!("{s:?} is not DOMAIN=none|encrypt|verify"))?;
    let domain = crate::address::Domain::parse(domain).map_err(|e| format!("domain {e}"))?;
    let floor = level.parse().map_err(|_| format!("{level:?} is not none, encrypt or verify"))?;
    Ok((domain.into_string(), floor))
}

/// Resolve a `--dns` argument.
pub fn parse_dns(s: &str) -> Result<SocketAddr, String> {
    s.parse::<SocketAddr>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
        .map_err(|_| format!("{s:?} is not ADDR:PORT or ADDR"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_map_parses() {
        assert_eq!("25=2525,26=2526".parse::<PortMap>().unwrap(), PortMap { smtp: 2525, smtps: 2526, https: 443 });
        assert_eq!("443=8443".parse::<PortMap>().unwrap().https, 8443);
        assert_eq!("26=4026".parse::<PortMap>().unwrap(), PortMap { smtp: 25, smtps: 4026, https: 443 });
        assert!("587=1".parse::<PortMap>().is_err());
        assert!("25:2525".parse::<PortMap>().is_err());
    }

    #[test]
    fn domains() {
        assert_eq!(domain_of("a@Example.COM."), Some("example.com".into()));
        assert_eq!(domain_of("a@bücher.example"), Some("xn--bcher-kva.example".into()));
        assert_eq!(domain_of("a@b@c.test"), None, "an @ in the local part must be quoted");
        assert_eq!(domain_of("\"a@b\"@c.test"), Some("c.test".into()));
        assert_eq!(domain_of("nodomain"), None);
        assert_eq!(domain_of("@x.test"), None);
        assert_eq!(domain_of("a@"), None);
    }

    #[test]
    fn shards_are_stable_and_spread() {
        assert_eq!(shard_of("example.com", 4), shard_of("example.com", 4));
        let mut counts = [0usize; 4];
        for i in 0..4000 {
            counts[shard_of(&format!("d{i}.test"), 4)] += 1;
        }
        assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
    }
}
