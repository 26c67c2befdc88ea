//! One shard: an OS thread with a current-thread tokio runtime that owns every destination
//! routed to it — its DNS answers (through its own resolver and cache), what the policy
//! learned, its queue of message parts, its connections (busy and idle) and its TLS tickets.
//! Everything here is touched only from this thread (`Rc`/`RefCell`, no locks).
//!
//! Per destination domain, up to `max_conns_per_dest` workers run. A worker resolves the
//! domain, walks its MX hosts in preference order and each host's policy steps, opens (or
//! takes from the idle pool) a connection, and delivers queued parts over it until the queue
//! is empty, then parks the connection in the pool. Every recipient ends with exactly one
//! outcome: delivered, deferred (with the reason) or bounced (with the reason).

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::Notify;

use super::limits::{Limits, MxBudget};
use super::{Counters, EngineConfig, MessageTls, NOT_ATTEMPTED, WITHDRAWN};
use crate::outcome::{Outcome, Status, TlsUse};
use crate::policy::mta_sts::{fetch::FetchConfig, Mode, StsPolicy};
use crate::policy::{self, DomainFacts, Floor, HostFacts, HostPlan, LogicalPort, PolicyCache, Security, Sts};
use crate::pool::{Bind, Conn, ConnectError, DeliverError, Pool, Target, Timeouts, TlsClients};
use crate::resolve::MxResolver;
use crate::session::{Message, MessageOutcome, RcptStatus};
use crate::tls::{self, ClientOptions, ClientResumption, TicketStore, Verify};
use crate::tlsrpt::{Failure, PolicyDesc, PolicyType, ResultType};

/// Queued parts per open connection of a destination before another connection is opened.
const BACKLOG_PER_CONNECTION: usize = 16;
/// Workers (connections) in a shard that keep it busy: past this, a destination's backlog
/// waits for its open connection rather than paying for another handshake. More connections
/// only help while there are too few to keep the core fed.
const ENOUGH_WORKERS: usize = 128;
/// Addresses tried per MX host: a hostile zone can list thousands.
const MAX_ADDRS_PER_HOST: usize = 10;
/// Reasons kept for a deferral when every MX host failed.
const MAX_REASONS: usize = 4;
/// A rate-limit wait up to this long keeps the connection; a longer one parks it.
const RATE_HOLD: Duration = Duration::from_secs(1);
/// Longest idle time of a pooled connection that holds a cluster lease (a shared
/// `max_conns`), so that another node with a backlog gets the lease soon.
const LEASED_IDLE: Duration = Duration::from_secs(1);
/// How long a worker waits before looking again when every source of its pool is at its
/// connection limit toward the destination (the sources' connections end on their own).
const SOURCE_BUSY_WAIT: Duration = Duration::from_millis(250);

/// What the engine sends a shard.
pub(super) enum Command {
    Deliver(Part),
    /// Finish everything queued, close idle connections, stop. At the deadline, if any,
    /// parts not yet started are deferred as [`NOT_ATTEMPTED`].
    Drain(Option<Instant>),
    /// Give back a domain's parts not yet started, deferred as [`WITHDRAWN`].
    Withdraw(String),
    /// Use no connection from egress source `.1` toward domain `.0` until `.2` (a 421 or a
    /// rate limit from there to that address); `None` lifts it.
    SuspendSource(String, usize, Option<Instant>),
    /// The same toward every MX host of site `.0` (one of [`EngineConfig::mx_sites`]),
    /// whatever domain it serves: sent to every shard.
    SuspendSourceSite(String, usize, Option<Instant>),
}

/// The recipients of one message at one destination domain.
pub(super) struct Part {
    pub id: Arc<str>,
    pub from: Arc<str>,
    pub domain: String,
    pub rcpts: Vec<String>,
    pub data: Arc<[u8]>,
    pub tls: MessageTls,
    /// The egress pool (index into [`crate::egress::Egress::pools`]); `None` without egress.
    pub pool: Option<usize>,
}

/// A shard's queue key: the domain, then after a `|` the message class when it is not the
/// default, then after a `#` the egress pool's index when there is one. REQUIRETLS and
/// `TLS-Required: No` messages need plans of their own, and messages of different pools must
/// never share a connection, so each queues (and connects) apart from the domain's other
/// mail; neither `|` nor `#` occurs in a domain name.
fn queue_key(domain: &str, tls: MessageTls, pool: Option<usize>) -> String {
    let mut key = match tls {
        MessageTls::Default => domain.to_string(),
        MessageTls::RequireTls => format!("{domain}|requiretls"),
        MessageTls::Optional => format!("{domain}|tls-optional"),
    };
    if let Some(p) = pool {
        key.push('#');
        key.push_str(&p.to_string());
    }
    key
}

/// The domain, message class and egress pool of a queue key ([`queue_key`]).
fn split_key(key: &str) -> (&str, MessageTls, Option<usize>) {
    let (rest, pool) = match key.rsplit_once('#') {
        Some((rest, p)) => (rest, p.parse().ok()),
        None => (key, None),
    };
    let (domain, class) = match rest.split_once('|') {
        Some((domain, "requiretls")) => (domain, MessageTls::RequireTls),
        Some((domain, _)) => (domain, MessageTls::Optional),
        None => (rest, MessageTls::Default),
    };
    (domain, class, pool)
}

pub(super) fn count_outcome(c: &Counters, s: Status) {
    let a = match s {
        Status::Delivered => &c.delivered,
        Status::Deferred => &c.deferred,
        Status::Bounced => &c.bounced,
    };
    a.fetch_add(1, Ordering::Relaxed);
}

pub(super) fn spawn(
    id: usize,
    cfg: Arc<EngineConfig>,
    limits: Arc<Limits>,
    rx: crossbeam_channel::Receiver<Command>,
    wake: Arc<Notify>,
    outcomes: crossbeam_channel::Sender<Outcome>,
    counters: Arc<Counters>,
) -> std::io::Result<JoinHandle<()>> {
    // Build what can fail before the thread starts, so start() reports it.
    let resolver = MxResolver::new(cfg.resolver.clone()).map_err(|e| std::io::Error::other(e.to_string()))?;
    // The roots of verified TLS, parsed once for the three clients that check certificates:
    // SMTP, MTA-STS policy fetches and MTA-STS `testing` reports.
    let roots = Verify::webpki_plus(&cfg.extra_roots).map_err(|e| std::io::Error::other(e.to_string()))?;
    let tls = tls_clients(&cfg, &roots).map_err(|e| std::io::Error::other(e.to_string()))?;
    // One TLS session store per egress source: a session is resumed only from the address
    // that made it (a receiver may tie tickets to the client address).
    let sources = cfg.egress.as_ref().map_or(0, |e| e.sources().len());
    let tls_by_source =
        (0..sources).map(|_| tls_clients(&cfg, &roots)).collect::<Result<Vec<_>, _>>().map_err(|e| std::io::Error::other(e.to_string()))?;
    let sts = super::sts::StsShard::new(sts_fetch_config(&cfg, &roots).map_err(|e| std::io::Error::other(e.to_string()))?);
    let verifier = report_verifier(&roots).map_err(std::io::Error::other)?;
    std::thread::Builder::new().name(format!("mxpipe-shard-{id}")).spawn(move || {
        let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                // Without a runtime nothing can be delivered: defer every part we are sent.
                for cmd in rx.iter() {
                    if let Command::Deliver(p) = cmd {
                        for r in &p.rcpts {
                            count_outcome(&counters, Status::Deferred);
                            let _ =
                                outcomes.send(Outcome::local(&p.id, r, Status::Deferred, "4.3.0", format!("shard runtime failed: {e}")));
                        }
                    } else {
                        break;
                    }
                }
                return;
            }
        };
        let local = tokio::task::LocalSet::new();
        let shard = Rc::new(Shard {
            cfg: cfg.clone(),
            limits,
            stop: tokio::sync::watch::Sender::new(false),
            resolver,
            tls,
            sts,
            dane: super::dane::DaneShard::default(),
            verifier,
            policy: RefCell::new(PolicyCache::new(&cfg.policy)),
            domains: RefCell::new(HashMap::new()),
            pool: RefCell::new(Pool::default()),
            outcomes,
            counters,
            idle: Notify::new(),
            next_seq: std::cell::Cell::new(1),
            dns_seen: std::cell::Cell::new(Default::default()),
            slots: RefCell::new(HashMap::new()),
            workers: std::cell::Cell::new(0),
            tls_by_source,
            source_conns: RefCell::new(HashMap::new()),
            suspended_sources: RefCell::new(HashMap::new()),
            suspended_sites: RefCell::new(HashMap::new()),
            warm_capped: RefCell::new(HashMap::new()),
        });
        local.block_on(&rt, run(shard, rx, wake));
    })
}

fn tls_clients(cfg: &EngineConfig, roots: &Verify) -> Result<TlsClients, tls::TlsError> {
    let store = || Arc::new(TicketStore::new(cfg.ticket_hosts, cfg.tickets_per_host.max(cfg.max_conns_per_dest), 1));
    let verifying = tls::client_config(
        &ClientOptions { verify: roots.clone(), kx: cfg.kx, resumption: ClientResumption::Tickets, tls12_only: false },
        Some(store()),
    )?;
    let opportunistic = tls::client_config(
        &ClientOptions { verify: Verify::None, kx: cfg.kx, resumption: ClientResumption::Tickets, tls12_only: false },
        Some(store()),
    )?;
    Ok(TlsClients { verifying, opportunistic })
}

/// The verifier that [`sts_testing_check`] uses: the roots of verified SMTP.
fn report_verifier(roots: &Verify) -> Result<Arc<rustls::client::WebPkiServerVerifier>, String> {
    let Verify::Roots(roots) = roots else {
        return Err("no roots to verify against".into());
    };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    rustls::client::WebPkiServerVerifier::builder_with_provider(roots.clone(), provider).build().map_err(|e| e.to_string())
}

/// How MTA-STS policies are fetched: verified against the same roots as SMTP, on the mapped
/// HTTPS port.
fn sts_fetch_config(cfg: &EngineConfig, roots: &Verify) -> Result<FetchConfig, tls::TlsError> {
    let opts = ClientOptions { verify: roots.clone(), kx: cfg.kx, resumption: ClientResumption::Off, tls12_only: false };
    let mut tls = Arc::unwrap_or_clone(tls::client_config(&opts, None)?);
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let mut f = FetchConfig::new(Arc::new(tls));
    f.port = cfg.port_map.https;
    f.timeout = cfg.policy.mta_sts_timeout;
    Ok(f)
}

pub(super) struct Shard {
    pub(super) cfg: Arc<EngineConfig>,
    limits: Arc<Limits>,
    /// Set at the drain deadline: waits for a slot or a rate limit end, and nothing new starts.
    stop: tokio::sync::watch::Sender<bool>,
    pub(super) resolver: MxResolver,
    tls: TlsClients,
    /// MTA-STS fetches under way and recent failures.
    pub(super) sts: super::sts::StsShard,
    /// TLSA answers and DANE client configs per MX host port.
    pub(super) dane: super::dane::DaneShard,
    /// Checks certificates after the fact, for MTA-STS `testing` reports.
    verifier: Arc<rustls::client::WebPkiServerVerifier>,
    policy: RefCell<PolicyCache>,
    domains: RefCell<HashMap<String, DomainState>>,
    pool: RefCell<Pool>,
    outcomes: crossbeam_channel::Sender<Outcome>,
    pub(super) counters: Arc<Counters>,
    /// Signalled whenever a worker ends, so draining can wait for the last one.
    idle: Notify,
    next_seq: std::cell::Cell<u64>,
    /// The resolver's counters as last added to the engine's, to add only what is new.
    dns_seen: std::cell::Cell<crate::resolve::ResolverStats>,
    /// Per destination address: the connection slots (open connections, busy or idle) and
    /// how many workers wait for one.
    slots: RefCell<HashMap<(Option<Bind>, SocketAddr), Slots>>,
    /// Workers running in this shard, all destinations together.
    workers: std::cell::Cell<usize>,
    /// The TLS clients of each egress source (by index); [`Shard::tls`] serves unbound connections.
    tls_by_source: Vec<TlsClients>,
    /// Connections in use per (egress source, destination domain): each source has the
    /// domain's connection limit of its own.
    source_conns: RefCell<HashMap<(usize, String), usize>>,
    /// Egress sources suspended toward a domain (source, domain) → until: the daemon's
    /// queue manager says so after a 421 or a rate limit from there to that source.
    suspended_sources: RefCell<HashMap<(usize, String), Instant>>,
    /// Egress sources suspended toward a site (source, MX pattern) → until: toward every MX
    /// host of the site, whatever its domain.
    suspended_sites: RefCell<HashMap<(usize, String), Instant>>,
    /// Egress sources whose warm-up cap toward an MX host is used up, (source, host) → until.
    warm_capped: RefCell<HashMap<(usize, String), Instant>>,
}

impl Shard {
    /// The TLS clients (and so the session store) of connections from `bind`.
    fn tls_for(&self, bind: Option<Bind>) -> &TlsClients {
        bind.and_then(|b| self.tls_by_source.get(b.source)).unwrap_or(&self.tls)
    }

    /// Until when egress source `source` is suspended toward `domain` or toward the site of
    /// its MX host `host`, if it is now (the later end when both are).
    fn source_suspended(&self, source: usize, domain: &str, host: &str) -> Option<Instant> {
        let now = Instant::now();
        let by_domain = {
            let m = self.suspended_sources.borrow();
            if m.is_empty() {
                None
            } else {
                m.get(&(source, domain.to_string())).copied().filter(|&u| u > now)
            }
        };
        let by_site = {
            let m = self.suspended_sites.borrow();
            match super::site_of(&self.cfg.mx_sites, host) {
                Some(site) if !m.is_empty() => m.get(&(source, site.to_string())).copied().filter(|&u| u > now),
                _ => None,
            }
        };
        by_domain.max(by_site)
    }

    /// Until when source `source` is capped by its warm-up toward MX host `host`, if it is now.
    fn source_capped(&self, source: usize, host: &str) -> Option<Instant> {
        let m = self.warm_capped.borrow();
        if m.is_empty() {
            return None;
        }
        m.get(&(source, host.to_string())).copied().filter(|&u| u > Instant::now())
    }

    /// The names of egress pool `pool` and source `source` (indexes), for outcomes.
    fn names(&self, pool: Option<usize>, source: Option<usize>) -> (Option<String>, Option<String>) {
        let Some(eg) = &self.cfg.egress else { return (None, None) };
        let pool = pool.and_then(|p| eg.pools().get(p)).map(|p| p.name.to_string());
        let source = source.and_then(|s| eg.sources().get(s)).map(|s| s.name.to_string());
        (pool, source)
    }
}

/// Set (`Some`) or lift (`None`) one suspension of a source, dropping those already over.
fn set_until(m: &mut HashMap<(usize, String), Instant>, key: (usize, String), until: Option<Instant>) {
    let now = Instant::now();
    m.retain(|_, u| *u > now);
    match until {
        Some(u) => {
            m.insert(key, u);
        }
        None => {
            m.remove(&key);
        }
    }
}

/// One connection in use from an egress source to a domain, counted for as long as it lives.
struct SourceUse {
    shard: Rc<Shard>,
    key: Option<(usize, String)>,
}

impl SourceUse {
    fn new(shard: &Rc<Shard>, source: Option<usize>, domain: &str) -> SourceUse {
        let key = source.map(|s| (s, domain.to_string()));
        if let Some(k) = &key {
            *shard.source_conns.borrow_mut().entry(k.clone()).or_default() += 1;
        }
        SourceUse { shard: shard.clone(), key }
    }
}

impl Drop for SourceUse {
    fn drop(&mut self) {
        let Some(k) = self.key.take() else { return };
        let mut m = self.shard.source_conns.borrow_mut();
        if let Some(n) = m.get_mut(&k) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&k);
            }
        }
    }
}

/// The connection slots to one address from one source, and how many workers wait for one.
type Slots = (Arc<tokio::sync::Semaphore>, usize);

#[derive(Default)]
struct DomainState {
    queue: VecDeque<Job>,
    workers: usize,
    /// Workers that currently hold a working connection, or parked theirs only to wait for
    /// the rate limit: the domain is reachable.
    connected: usize,
}

/// A part with the session's numeric id.
struct Job {
    seq: u64,
    part: Part,
    /// The send time it reserved under a rate limit (kept if it goes back in the queue).
    not_before: Option<Instant>,
}

impl Job {
    fn message(&self) -> Message {
        Message {
            id: self.seq,
            from: self.part.from.to_string(),
            rcpts: self.part.rcpts.clone(),
            data: self.part.data.clone(),
            requiretls: self.part.tls == MessageTls::RequireTls,
        }
    }
}

async fn run(shard: Rc<Shard>, rx: crossbeam_channel::Receiver<Command>, wake: Arc<Notify>) {
    let reaper = tokio::task::spawn_local(reap(shard.clone()));
    let mut draining = false;
    loop {
        // Take everything queued before sleeping: bursts arrive many parts per wake-up.
        loop {
            match rx.try_recv() {
                Ok(Command::Deliver(part)) => enqueue(&shard, part),
                Ok(Command::Withdraw(domain)) => {
                    // Every class and pool of the domain.
                    let keys: Vec<String> = shard.domains.borrow().keys().filter(|k| split_key(k).0 == domain).cloned().collect();
                    for key in keys {
                        fail_queue(&shard, &key, Status::Deferred, "4.3.2", WITHDRAWN);
                    }
                }
                Ok(Command::SuspendSource(domain, source, until)) => {
                    set_until(&mut shard.suspended_sources.borrow_mut(), (source, domain), until);
                }
                Ok(Command::SuspendSourceSite(site, source, until)) => {
                    set_until(&mut shard.suspended_sites.borrow_mut(), (source, site), until);
                }
                Ok(Command::Drain(deadline)) => {
                    if let (false, Some(at)) = (draining, deadline) {
                        tokio::task::spawn_local(stop_at(shard.clone(), at));
                    }
                    draining = true;
                }
                Err(crossbeam_channel::TryRecvError::Empty) => break,
                Err(crossbeam_channel::TryRecvError::Disconnected) => {
                    draining = true;
                    break;
                }
            }
        }
        if draining && shard.domains.borrow().values().all(|d| d.workers == 0 && d.queue.is_empty()) {
            break;
        }
        if draining {
            shard.idle.notified().await;
        } else {
            wake.notified().await;
        }
    }
    reaper.abort();
    let conns = shard.pool.borrow_mut().drain();
    let quits: Vec<_> = conns.into_iter().map(|c| c.quit(&shard.tls, timeouts(&shard.cfg))).collect();
    for q in quits {
        q.await;
    }
}

/// At the drain deadline: nothing new starts; queued parts are deferred as not attempted.
async fn stop_at(shard: Rc<Shard>, at: Instant) {
    tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await;
    shard.stop.send_replace(true);
    let domains: Vec<String> = shard.domains.borrow().keys().cloned().collect();
    for d in domains {
        fail_queue(&shard, &d, Status::Deferred, "4.3.2", NOT_ATTEMPTED);
    }
    shard.idle.notify_one();
}

fn stopping(shard: &Shard) -> bool {
    *shard.stop.borrow()
}

/// Sleep until `until`; false if the drain deadline came first.
async fn sleep_unless_stopped(shard: &Shard, until: Instant) -> bool {
    let mut stop = shard.stop.subscribe();
    tokio::select! {
        _ = tokio::time::sleep_until(tokio::time::Instant::from_std(until)) => true,
        _ = stop.wait_for(|v| *v) => false,
    }
}

/// Close connections that idled past their time, and idle ones under an MX budget that
/// someone waits for, twice a second.
async fn reap(shard: Rc<Shard>) {
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut expired = shard.pool.borrow_mut().expired(Instant::now());
        if shard.limits.has_mx_budgets() {
            let limits = &shard.limits;
            expired.extend(shard.pool.borrow_mut().take_hosts(|t| mx_wanted(limits, t)));
        }
        for c in expired {
            let s = shard.clone();
            tokio::task::spawn_local(async move { c.quit(&s.tls, timeouts(&s.cfg)).await });
        }
    }
}

fn timeouts(cfg: &EngineConfig) -> Timeouts {
    Timeouts { connect: cfg.connect_timeout, tls_handshake: cfg.tls_handshake_timeout, max_command: cfg.command_timeout }
}

fn enqueue(shard: &Rc<Shard>, part: Part) {
    let seq = shard.next_seq.get();
    shard.next_seq.set(seq + 1);
    let key = queue_key(&part.domain, part.tls, part.pool);
    let mut max_conns = shard.limits.domain(&part.domain).and_then(|l| l.max_conns).unwrap_or(shard.cfg.max_conns_per_dest);
    if let (Some(eg), Some(p)) = (&shard.cfg.egress, part.pool) {
        // The limit holds per source: a pool of n sources may have n times as many.
        max_conns = max_conns.saturating_mul(eg.pools().get(p).map_or(1, |p| p.members.len().max(1)));
    }
    let spawn = {
        let mut domains = shard.domains.borrow_mut();
        let d = domains.entry(key.clone()).or_default();
        d.queue.push_back(Job { seq, part, not_before: None });
        // One more worker (so one more connection) while under the limit and the backlog is
        // more than the open ones will clear soon: a handshake costs more than a few queued
        // transactions on a warm, pipelining connection.
        let spawn = d.workers == 0
            || (d.workers < max_conns.max(1) && d.queue.len() > d.workers * BACKLOG_PER_CONNECTION && shard.workers.get() < ENOUGH_WORKERS);
        if spawn {
            d.workers += 1;
        }
        spawn
    };
    if spawn {
        spawn_worker(shard, key);
    }
}

/// Start a worker, and a watcher that repairs the domain's counters if the worker panics, so
/// the shard still drains and no queued part is left without an outcome.
fn spawn_worker(shard: &Rc<Shard>, domain: String) {
    shard.workers.set(shard.workers.get() + 1);
    let handle = tokio::task::spawn_local(worker(shard.clone(), domain.clone()));
    let shard = shard.clone();
    tokio::task::spawn_local(async move {
        let result = handle.await;
        shard.workers.set(shard.workers.get().saturating_sub(1));
        let Err(e) = result else { return };
        if !e.is_panic() {
            return;
        }
        tracing::error!(domain = %domain, "internal error: a delivery worker panicked; its part in flight has no outcome");
        let orphaned = {
            let mut domains = shard.domains.borrow_mut();
            match domains.get_mut(&domain) {
                Some(d) => {
                    d.workers = d.workers.saturating_sub(1);
                    d.connected = d.connected.min(d.workers);
                    d.workers == 0
                }
                None => false,
            }
        };
        if orphaned {
            fail_queue(&shard, &domain, Status::Deferred, "4.3.0", "mxpipe internal error (worker panicked)");
            shard.domains.borrow_mut().remove(&domain);
        }
        shard.idle.notify_one();
    });
}

/// Emit one outcome per recipient of `job`.
fn finish(shard: &Shard, job: &Job, status: Status, enhanced: &str, reason: &str, ctx: Option<&OutcomeCtx>) {
    finish_with(shard, job, status, enhanced, reason, |o| match ctx {
        Some(c) => c.fill(o),
        None => o.pool = shard.names(job.part.pool, None).0,
    });
}

/// One local outcome per recipient of `job`, each completed by `fill` before it is counted and sent.
fn finish_with(shard: &Shard, job: &Job, status: Status, enhanced: &str, reason: &str, fill: impl Fn(&mut Outcome)) {
    for r in &job.part.rcpts {
        let mut o = Outcome::local(&job.part.id, r, status, enhanced, reason);
        fill(&mut o);
        count_outcome(&shard.counters, status);
        let _ = shard.outcomes.send(o);
    }
}

/// Connection facts copied into outcomes.
struct OutcomeCtx {
    mx: String,
    addr: SocketAddr,
    tls: TlsUse,
    policy: String,
    sources: Vec<policy::Source>,
    report: Option<String>,
    dnssec: bool,
    resumed: bool,
    tls_version: Option<String>,
    cipher: Option<String>,
    source: Option<String>,
    pool: Option<String>,
}

impl OutcomeCtx {
    fn of(shard: &Shard, pool: Option<usize>, conn: &Conn, plan: &HostPlan, report: Option<String>) -> OutcomeCtx {
        let f = &conn.facts;
        let (pool, source) = shard.names(pool, conn.target.bind.map(|b| b.source));
        OutcomeCtx {
            source,
            pool,
            // The MX host of this destination (a connection may be shared by domains whose
            // MX hosts have one address).
            mx: plan.host.clone(),
            addr: SocketAddr::new(f.addr, f.port),
            tls: f.tls,
            policy: plan.source.to_string(),
            sources: plan.sources.clone(),
            report,
            dnssec: plan.dnssec,
            resumed: f.tls_facts.as_ref().is_some_and(|t| t.resumed),
            tls_version: f.tls_facts.as_ref().map(|t| t.version.clone()),
            cipher: f.tls_facts.as_ref().map(|t| t.cipher.clone()),
        }
    }

    fn fill(&self, o: &mut Outcome) {
        o.mx = Some(self.mx.clone());
        o.addr = Some(self.addr.ip());
        o.port = Some(self.addr.port());
        o.tls = self.tls;
        o.policy = Some(self.policy.clone());
        o.policy_sources = self.sources.iter().map(|s| s.name()).collect();
        o.policy_report.clone_from(&self.report);
        o.dnssec = self.dnssec;
        o.resumed = self.resumed;
        o.tls_version = self.tls_version.clone();
        o.cipher = self.cipher.clone();
        o.source.clone_from(&self.source);
        o.pool.clone_from(&self.pool);
    }
}

fn emit_message_outcome(shard: &Shard, job: &Job, mo: MessageOutcome, ctx: &OutcomeCtx) {
    for r in mo.rcpts {
        let status = match r.status {
            RcptStatus::Delivered => Status::Delivered,
            RcptStatus::Deferred => Status::Deferred,
            RcptStatus::Bounced => Status::Bounced,
        };
        let mut o = Outcome::local(&job.part.id, &r.rcpt, status, "", "");
        ctx.fill(&mut o);
        o.reply = r.reply;
        o.enhanced = r.enhanced;
        count_outcome(&shard.counters, status);
        let _ = shard.outcomes.send(o);
    }
}

fn pop_job(shard: &Shard, domain: &str) -> Option<Job> {
    shard.domains.borrow_mut().get_mut(domain).and_then(|d| d.queue.pop_front())
}

fn push_front(shard: &Shard, domain: &str, job: Job) {
    // The domain's entry lives while it has a worker, and only a worker requeues; or_default
    // keeps the part even if that ever changes.
    shard.domains.borrow_mut().entry(domain.to_string()).or_default().queue.push_front(job);
}

/// Fail every queued part of `domain` with one status and reason.
fn fail_queue(shard: &Shard, domain: &str, status: Status, enhanced: &str, reason: &str) {
    while let Some(job) = pop_job(shard, domain) {
        finish(shard, &job, status, enhanced, reason, None);
    }
}

/// Defer queue `key` with the 4xx reply that refused its session ([`Refusal`]): each outcome
/// has the server's reply (then, in brackets, why every host failed), its host and source.
fn fail_queue_refused(shard: &Shard, key: &str, r: &Refusal, reasons: &str) {
    while let Some(job) = pop_job(shard, key) {
        defer_refused(shard, &job, r, reasons);
    }
}

/// Defer `job` with the 4xx reply that refused a session for it ([`fail_queue_refused`]).
fn defer_refused(shard: &Shard, job: &Job, r: &Refusal, reasons: &str) {
    let (pool, source) = shard.names(job.part.pool, r.source);
    let reply = format!("{} [mxpipe: {reasons}]", r.line);
    finish_with(shard, job, Status::Deferred, "4.4.1", "", |o| {
        o.reply.clone_from(&reply);
        o.enhanced.clone_from(&r.enhanced);
        o.mx = Some(r.host.clone());
        o.pool.clone_from(&pool);
        o.source.clone_from(&source);
    });
}

/// Give back queue `key` untried ([`WITHDRAWN`]) because every source of its pool is
/// suspended toward it or toward the site of MX host `host`: the outcomes name the host, so
/// the queue manager learns the domain's site and holds its mail until the suspension ends.
fn withdraw_toward(shard: &Shard, key: &str, host: &str) {
    while let Some(job) = pop_job(shard, key) {
        let pool = shard.names(job.part.pool, None).0;
        finish_with(shard, &job, Status::Deferred, "4.3.2", WITHDRAWN, |o| {
            o.mx = Some(host.to_string());
            o.pool.clone_from(&pool);
        });
    }
}

fn set_connected(shard: &Shard, domain: &str, delta: isize) {
    if let Some(d) = shard.domains.borrow_mut().get_mut(domain) {
        d.connected = d.connected.saturating_add_signed(delta);
    }
}

/// One delivery worker for one destination domain.
async fn worker(shard: Rc<Shard>, domain: String) {
    work(&shard, &domain).await;
    let mut domains = shard.domains.borrow_mut();
    if let Some(d) = domains.get_mut(&domain) {
        d.workers -= 1;
        let (workers, empty) = (d.workers, d.queue.is_empty());
        if workers == 0 && empty {
            domains.remove(&domain);
        } else if workers == 0 {
            // Parts arrived after this worker decided to stop: start a fresh one.
            d.workers = 1;
            drop(domains);
            spawn_worker(&shard, domain);
            shard.idle.notify_one();
            return;
        }
    }
    drop(domains);
    shard.idle.notify_one();
}

/// Add what the shard's resolver counted since last time to the engine's counters.
fn account_dns(shard: &Shard) {
    let now = shard.resolver.stats();
    let seen = shard.dns_seen.replace(now);
    let c = &shard.counters;
    c.dns_lookups.fetch_add(now.lookups - seen.lookups, Ordering::Relaxed);
    c.dns_cache_hits.fetch_add(now.cache_hits - seen.cache_hits, Ordering::Relaxed);
    c.dns_coalesced.fetch_add(now.coalesced - seen.coalesced, Ordering::Relaxed);
    c.dns_queries.fetch_add(now.queries - seen.queries, Ordering::Relaxed);
}

/// How a connection's run ended.
enum ConnEnd {
    /// The queue ran dry; the connection was parked or closed.
    QueueEmpty,
    /// The connection broke mid-way; the parts in flight got their outcomes.
    Broken(String),
    /// The connection reached `max_msgs_per_conn` and was closed; open another.
    Recycle,
    /// A reused idle connection turned out dead before it took the part; try again at once.
    Stale,
    /// The next part waits for a rate limit until then; the connection was parked.
    Wait(Instant),
}

/// Why one MX host could not be used, and whether trying again later may help for a reason
/// other than the receiver's own TLS setup (see [`work`] on REQUIRETLS).
struct HostFailure {
    reason: String,
    /// Unreachable, an SMTP refusal, a drain: not something about the receiver's TLS.
    transient: bool,
    /// The host refused the session with a 4xx reply (at the greeting or to EHLO).
    refusal: Option<Refusal>,
    /// The egress source the failed connection left from, if any.
    source: Option<usize>,
}

impl HostFailure {
    fn transient(reason: String) -> HostFailure {
        HostFailure { reason, transient: true, refusal: None, source: None }
    }

    fn policy(reason: String) -> HostFailure {
        HostFailure { reason, transient: false, refusal: None, source: None }
    }
}

/// A 4xx reply that refused a session before any transaction (`421 4.7.0 Try again later`
/// as the greeting, the commonest way receivers throttle a sending address): when it ends a
/// queue's attempt, its outcomes carry this reply, the host and the source, so the queue
/// manager suspends the destination (or that source toward it) as after a 421 to a command.
struct Refusal {
    line: String,
    enhanced: Option<String>,
    host: String,
    source: Option<usize>,
}

impl Refusal {
    /// `line` if it is a 4xx SMTP reply.
    fn of(line: &str, host: &str, source: Option<usize>) -> Option<Refusal> {
        let (r, _) = crate::reply::parse_reply(format!("{line}\r\n").as_bytes()).ok().flatten()?;
        (400..500).contains(&r.code).then(|| Refusal {
            line: line.to_string(),
            enhanced: r.enhanced.map(|e| e.to_string()),
            host: host.to_string(),
            source,
        })
    }
}

/// Deliver the queue `key` (a domain and a message class, [`queue_key`]).
///
/// For REQUIRETLS messages (RFC 8689 §4.2.1), when every MX host failed for a reason of the
/// receiver's own making (no MX found through DNSSEC or MTA-STS, no verified TLS, no REQUIRETLS
/// at the next hop) the messages bounce with 5.7.30; when some host was merely unreachable
/// they are deferred like any other, to be retried.
async fn work(shard: &Rc<Shard>, key: &str) {
    let (domain, class, _) = split_key(key);
    let resolved = shard.resolver.resolve(domain).await;
    account_dns(shard);
    let dest = match resolved {
        Ok(d) => d,
        Err(e) => {
            let status = if e.is_permanent() { Status::Bounced } else { Status::Deferred };
            fail_queue(shard, key, status, e.enhanced_code(), &format!("{domain}: {e}"));
            return;
        }
    };
    let floor = shard.cfg.floors.get(domain).copied().unwrap_or(Floor::None);
    let names = || dest.hosts.iter().map(|h| h.name.as_str());
    // Once per resolution, not per message: the pin is refreshed by a prefixed answer and
    // holds against one that lost its prefix.
    let pinned = shard.cfg.state.as_ref().is_some_and(|s| s.sighting(domain, names(), policy::state::unix_now()));
    let sts_policy = if class == MessageTls::Optional { None } else { super::sts::policy_for(shard, domain).await };
    account_dns(shard);
    let sts = match sts_policy.as_ref().map(|p| p.mode) {
        Some(Mode::Enforce) => Sts::Enforce,
        Some(Mode::Testing) => Sts::Testing,
        Some(Mode::None) | None => Sts::None,
    };
    let facts = DomainFacts {
        dnssec: dest.dnssec,
        floor,
        scope: shard.cfg.policy.scope,
        strictest_prefix: policy::strictest_prefix(names()),
        pinned,
        sts,
        requiretls: class == MessageTls::RequireTls,
        relaxed: class == MessageTls::Optional,
    };
    // Why each host failed, most preferred first: a policy failure at the primary MX (maybe
    // an attack) must not hide behind a backup that was merely unreachable.
    let mut reasons: Vec<String> = Vec::new();
    let mut transient = false;
    let mut refusal: Option<Refusal> = None;
    let mut source: Option<usize> = None;
    let mut note = |f: HostFailure| {
        transient |= f.transient;
        if refusal.is_none() {
            refusal = f.refusal;
        }
        source = source.or(f.source);
        if reasons.len() < MAX_REASONS {
            reasons.push(f.reason);
        }
    };
    let (mut broken, mut stale) = (0, 0);
    'again: loop {
        for host in &dest.hosts {
            if host.addrs.is_empty() {
                note(HostFailure::transient(format!("{}: no address", host.name)));
                continue;
            }
            let dane = if class == MessageTls::Optional {
                super::dane::HostDane::default()
            } else {
                super::dane::for_host(shard, &dest, host).await
            };
            account_dns(shard);
            let plan = {
                let cache = shard.policy.borrow();
                let now = Instant::now();
                let mx_floor =
                    shard.cfg.mx_floors.iter().find(|(p, _)| super::limits::host_matches(p, &host.name)).map_or(Floor::None, |&(_, f)| f);
                let h = HostFacts {
                    name: &host.name,
                    floor: mx_floor,
                    learned: cache.get(&host.name, now),
                    sts_listed: sts_policy.as_ref().is_some_and(|p| p.matches(&host.name)),
                    dane: dane.smtp.fact(),
                    dane_smtps: dane.smtps.fact(),
                };
                policy::compose(&facts, &h, now)
            };
            if let Some(why) = &plan.refused {
                // A failed TLSA lookup is DNS trouble that may pass; the other refusals are
                // what the receiver published.
                let lookup = dane.smtp.failure().or(dane.smtps.failure());
                let reason = match lookup {
                    Some(e) if plan.steps.is_empty() => format!("{why}: {e}"),
                    _ => why.clone(),
                };
                if let (Some(t), Some(e)) = (&shard.cfg.tlsrpt, lookup) {
                    let policy = PolicyDesc { policy_type: PolicyType::Tlsa, policy_string: Vec::new(), mx_host: vec![host.name.clone()] };
                    let f = Failure {
                        receiving_mx_hostname: Some(host.name.clone()),
                        failure_reason_code: Some(e.to_string()),
                        ..Failure::new(ResultType::DnssecInvalid)
                    };
                    t.failure(domain, &policy, &f, SystemTime::now());
                }
                note(HostFailure { reason, transient: lookup.is_some(), refusal: None, source: None });
                continue;
            }
            let rpt = Rpt { domain, sts: sts_policy.as_ref(), strictest: facts.strictest_prefix, dane: &dane };
            match try_host(shard, key, &rpt, host, &plan).await {
                Ok(ConnEnd::QueueEmpty) => return,
                Ok(ConnEnd::Recycle) => continue 'again,
                Ok(ConnEnd::Wait(until)) => {
                    // Still counted as connected while it waits: another worker failing
                    // meanwhile must not defer the queue of a reachable domain.
                    set_connected(shard, key, 1);
                    let slept = sleep_unless_stopped(shard, until).await;
                    set_connected(shard, key, -1);
                    if slept {
                        continue 'again;
                    }
                    break 'again;
                }
                Ok(ConnEnd::Stale) => {
                    // Bounded: every stale connection came from the pool or died at once.
                    stale += 1;
                    if stale > 20 {
                        note(HostFailure::transient(format!("{}: connections kept closing before taking a message", host.name)));
                        break 'again;
                    }
                    continue 'again;
                }
                Ok(ConnEnd::Broken(e)) => {
                    note(HostFailure::transient(e));
                    broken += 1;
                    if broken >= 3 {
                        break 'again;
                    }
                    // Parts remain: reconnect from the most preferred host.
                    continue 'again;
                }
                Err(e) => {
                    // A session refused with a 4xx (a receiver throttling this address or
                    // itself): one part takes the reply now, so the queue manager hears of it
                    // and suspends, even if the queue then goes over other connections.
                    if let Some(r) = &e.refusal {
                        if let Some(job) = pop_job(shard, key) {
                            defer_refused(shard, &job, r, &e.reason);
                        }
                    }
                    note(e)
                }
            }
        }
        break;
    }
    if stopping(shard) {
        fail_queue(shard, key, Status::Deferred, "4.3.2", NOT_ATTEMPTED);
        return;
    }
    // Every host failed. Leave the queue to a worker that has a connection; else defer it.
    let connected = shard.domains.borrow().get(key).map_or(0, |d| d.connected);
    if connected == 0 {
        let reason = if reasons.is_empty() { "no usable MX host".to_string() } else { reasons.join("; ") };
        if class == MessageTls::RequireTls && !transient && !reasons.is_empty() {
            fail_queue(shard, key, Status::Bounced, "5.7.30", &format!("REQUIRETLS could not be honoured: {reason}"));
        } else if let Some(r) = refusal {
            fail_queue_refused(shard, key, &r, &reason);
        } else {
            // Named with the source of the most preferred host's failed connection, if bound.
            while let Some(job) = pop_job(shard, key) {
                let (pool, source) = shard.names(job.part.pool, source);
                finish_with(shard, &job, Status::Deferred, "4.4.1", &reason, |o| {
                    o.pool.clone_from(&pool);
                    o.source.clone_from(&source);
                });
            }
        }
    }
}

/// Try one MX host through its policy steps. `Err` carries the reason it could not be used.
async fn try_host(
    shard: &Rc<Shard>,
    key: &str,
    rpt: &Rpt<'_>,
    host: &crate::resolve::MxHost,
    plan: &HostPlan,
) -> Result<ConnEnd, HostFailure> {
    let dane = rpt.dane;
    let requiretls = split_key(key).1 == MessageTls::RequireTls;
    let mut last = HostFailure::transient(String::new());
    for step in &plan.steps {
        let port = match step.port {
            LogicalPort::Smtp => shard.cfg.port_map.smtp,
            LogicalPort::Smtps => shard.cfg.port_map.smtps,
        };
        let addrs = &host.addrs[..host.addrs.len().min(MAX_ADDRS_PER_HOST)];
        // Port 26 of an `smtps-` host: *any* failure there (refused, timeout, reset, a plaintext
        // banner, a TLS alert, a bad certificate) moves on to the host's next step, verified
        // STARTTLS on 25, which weakens nothing (spec). Elsewhere a policy failure ends the host.
        let implicit = step.port == LogicalPort::Smtps;
        let dane_config = if step.security == Security::RequireDane {
            let at = if implicit { &dane.smtps } else { &dane.smtp };
            at.config()
        } else {
            None
        };
        let mut failed = 0;
        for &ip in addrs {
            let target = Target {
                host: host.name.clone(),
                addr: SocketAddr::new(ip, port),
                start: step.start,
                security: step.security,
                verify_name: plan.verify_name.clone(),
                budget: shard.limits.mx_index(&host.name),
                dane: dane_config.clone(),
                bind: None,
                pool: split_key(key).2,
            };
            let opened = match open_for(shard, key, target.clone()).await {
                Err(OpenFail::Busy) => return Ok(ConnEnd::Wait(Instant::now() + SOURCE_BUSY_WAIT)),
                Err(OpenFail::Suspended) => {
                    withdraw_toward(shard, key, &host.name);
                    return Ok(ConnEnd::QueueEmpty);
                }
                Err(OpenFail::Capped(until)) => return Ok(ConnEnd::Wait(until)),
                Err(OpenFail::Connect(e, source)) => Err((e, source)),
                Ok(c) => Ok(c),
            };
            match opened {
                Ok((conn, _in_use)) => {
                    let report = sts_testing_check(shard, &conn, plan);
                    rpt.session(shard, &conn, plan, step, report.as_deref());
                    if requiretls && !conn.session.server_requiretls() {
                        // Usable for the domain's other mail: keep it.
                        park(shard, conn).await;
                        return Err(HostFailure::policy(format!("{}: REQUIRETLS: the next hop does not advertise REQUIRETLS", host.name)));
                    }
                    return Ok(deliver_all(shard, key, conn, plan, report).await);
                }
                Err((ConnectError::Unreachable { addr, reason }, source)) => {
                    shard.counters.connect_failures.fetch_add(1, Ordering::Relaxed);
                    failed += 1;
                    last = HostFailure { source, ..HostFailure::transient(format!("{} ({addr}): {reason}", host.name)) };
                }
                Err((ConnectError::OpportunisticTls { host: h, reason }, _)) => {
                    // Opportunistic: remember, and retry this address in clear at once.
                    rpt.failed(shard, plan, step, ip, ResultType::ValidationFailure, &reason);
                    shard.policy.borrow_mut().tls_failed(&h, Instant::now());
                    let clear = Target { security: Security::Clear, ..target };
                    match open_for(shard, key, clear).await {
                        Err(OpenFail::Busy) => return Ok(ConnEnd::Wait(Instant::now() + SOURCE_BUSY_WAIT)),
                        Err(OpenFail::Suspended) => {
                            withdraw_toward(shard, key, &host.name);
                            return Ok(ConnEnd::QueueEmpty);
                        }
                        Err(OpenFail::Capped(until)) => return Ok(ConnEnd::Wait(until)),
                        Err(OpenFail::Connect(e, _)) => last = HostFailure::transient(format!("{e} (after TLS failed: {reason})")),
                        Ok((conn, _in_use)) => {
                            let report = sts_testing_check(shard, &conn, plan);
                            return Ok(deliver_all(shard, key, conn, plan, report).await);
                        }
                    }
                }
                Err((e @ ConnectError::Policy { .. }, _)) => {
                    // A policy failure may be an attack: never clear text, try the next host
                    // (from port 26, this host's port 25 first). Kept for the report.
                    if let ConnectError::Policy { result, reason, .. } = &e {
                        rpt.failed(shard, plan, step, ip, *result, reason);
                    }
                    shard.policy.borrow_mut().failure(&host.name, &e.to_string(), Instant::now());
                    if !implicit {
                        return Err(HostFailure::policy(format!("{e} (required by {})", plan.source)));
                    }
                    failed += 1;
                    last = HostFailure::policy(format!("{e} (port {port})"));
                }
                Err((e @ ConnectError::Smtp { .. }, source)) => {
                    failed += 1;
                    let refusal = match &e {
                        ConnectError::Smtp { reason, .. } => Refusal::of(reason, &host.name, source),
                        _ => None,
                    };
                    last = HostFailure { refusal, source, ..HostFailure::transient(e.to_string()) };
                }
                Err((e @ ConnectError::Stopped { .. }, _)) => return Err(HostFailure::transient(e.to_string())),
            }
        }
        if implicit && failed == addrs.len() {
            shard.policy.borrow_mut().port26_unusable(&host.name, Instant::now());
        }
    }
    if last.reason.is_empty() {
        last.reason = format!("{}: no policy step usable", host.name);
    }
    Err(last)
}

/// What TLS-RPT (RFC 8460) is told about the sessions a worker opens for one destination: the
/// policy domain and what its policies were.
struct Rpt<'a> {
    domain: &'a str,
    sts: Option<&'a StsPolicy>,
    strictest: policy::Prefix,
    dane: &'a super::dane::HostDane,
}

impl Rpt<'_> {
    /// Count a new connection: a TLS session that a reporting-only policy would not have
    /// refused is a success; one it would have refused is that policy's failure. Reused
    /// connections are no new session, and clear text is no TLS session.
    fn session(&self, shard: &Shard, conn: &Conn, plan: &HostPlan, step: &policy::Step, report: Option<&str>) {
        let Some(t) = &shard.cfg.tlsrpt else { return };
        if conn.reused || (conn.facts.tls == TlsUse::None && report.is_none()) {
            return;
        }
        let policy = self.policy(plan, step);
        match report {
            None => t.success(self.domain, &policy, SystemTime::now()),
            Some(why) => {
                let f = Failure {
                    receiving_mx_hostname: Some(plan.host.clone()),
                    receiving_ip: Some(conn.facts.addr),
                    failure_reason_code: Some(why.to_string()),
                    ..Failure::new(if conn.facts.tls == TlsUse::None {
                        ResultType::StarttlsNotSupported
                    } else {
                        ResultType::ValidationFailure
                    })
                };
                t.failure(self.domain, &policy, &f, SystemTime::now());
            }
        }
    }

    /// Count a session to `ip` that failed its TLS requirement.
    fn failed(&self, shard: &Shard, plan: &HostPlan, step: &policy::Step, ip: std::net::IpAddr, result: ResultType, why: &str) {
        let Some(t) = &shard.cfg.tlsrpt else { return };
        let f = Failure {
            receiving_mx_hostname: Some(plan.host.clone()),
            receiving_ip: Some(ip),
            failure_reason_code: Some(why.to_string()),
            ..Failure::new(result)
        };
        t.failure(self.domain, &self.policy(plan, step), &f, SystemTime::now());
    }

    /// The policy a session under `step` of `plan` was checked against, as TLS-RPT names it:
    /// the TLSA records when DANE decided, the MTA-STS policy when one applied, the MX prefix
    /// by the convention of [`crate::tlsrpt`] (a pin as `mx-prefix: pinned`), else none.
    fn policy(&self, plan: &HostPlan, step: &policy::Step) -> PolicyDesc {
        use policy::Source;
        if step.security == Security::RequireDane {
            let port = if step.port == LogicalPort::Smtps { &self.dane.smtps } else { &self.dane.smtp };
            if let Some(records) = port.records() {
                return PolicyDesc {
                    policy_type: PolicyType::Tlsa,
                    policy_string: records.iter().map(|r| r.to_string()).collect(),
                    mx_host: vec![plan.host.clone()],
                };
            }
        }
        let has = |s: Source| plan.sources.contains(&s);
        if let Some(p) = self.sts.filter(|_| has(Source::MtaSts) || has(Source::MtaStsTesting)) {
            let mut lines = vec!["version: STSv1".to_string(), format!("mode: {}", p.mode)];
            lines.extend(p.mx.iter().map(|m| format!("mx: {m}")));
            lines.push(format!("max_age: {}", p.max_age));
            return PolicyDesc { policy_type: PolicyType::Sts, policy_string: lines, mx_host: p.mx.clone() };
        }
        let prefix = |p: policy::Prefix| format!("{p}-");
        if has(Source::StartTlsPrefix) || has(Source::SmtpsPrefix) {
            PolicyDesc::mx_prefix(&prefix(plan.prefix), &plan.host)
        } else if has(Source::DomainScope) {
            PolicyDesc::mx_prefix(&prefix(self.strictest), &plan.host)
        } else if has(Source::Pin) {
            PolicyDesc::mx_prefix("pinned", &plan.host)
        } else {
            PolicyDesc::none()
        }
    }
}

/// Why [`open_for`] gave no connection.
enum OpenFail {
    /// Every usable source of the pool is at its connection limit toward the domain: wait.
    Busy,
    /// Every source of the pool (of the address's family) is suspended toward the domain:
    /// its queue goes back untried, to wait for the earliest end.
    Suspended,
    /// Every source of the pool not suspended has used up its warm-up cap toward the host:
    /// the queue waits (untried) until the earliest cap ends.
    Capped(Instant),
    /// As [`open`]; with the egress source the connection left from, if any.
    Connect(ConnectError, Option<usize>),
}

/// A connection to `target` for queue `key`: without egress, as [`open`]. With a pool, from
/// one of its sources that is usable toward the domain (the address family of `target`,
/// under its per-source connection limit): an idle connection from any of them first, else a
/// new one from a source chosen by weight. The [`SourceUse`] counts it against its source.
async fn open_for(shard: &Rc<Shard>, key: &str, target: Target) -> Result<(Conn, SourceUse), OpenFail> {
    let (domain, _, pool) = split_key(key);
    let (Some(eg), Some(pool)) = (shard.cfg.egress.clone(), pool) else {
        let conn = open_leased(shard, domain, target).await.map_err(|e| OpenFail::Connect(e, None))?;
        return Ok((conn?, SourceUse::new(shard, None, domain)));
    };
    let Some(p) = eg.pools().get(pool) else {
        return Err(OpenFail::Connect(ConnectError::Stopped { reason: format!("egress pool #{pool} is not configured") }, None));
    };
    let v4 = target.addr.is_ipv4();
    let family: Vec<usize> = p.members.iter().map(|&(s, _)| s).filter(|&s| eg.sources()[s].addr.is_ipv4() == v4).collect();
    if family.is_empty() {
        let reason = format!("no source of egress pool {:?} has an IPv{} address", p.name, if v4 { 4 } else { 6 });
        return Err(OpenFail::Connect(ConnectError::Unreachable { addr: target.addr, reason }, None));
    }
    let limit = shard.limits.domain(domain).and_then(|l| l.max_conns).unwrap_or(shard.cfg.max_conns_per_dest).max(1);
    let host = target.host.as_str();
    if family.iter().all(|&s| shard.source_suspended(s, domain, host).is_some()) {
        return Err(OpenFail::Suspended);
    }
    let capped: Vec<Instant> = family.iter().filter_map(|&s| shard.source_capped(s, host)).collect();
    if !capped.is_empty()
        && family.iter().all(|&s| shard.source_suspended(s, domain, host).is_some() || shard.source_capped(s, host).is_some())
    {
        return Err(OpenFail::Capped(capped.into_iter().min().unwrap_or_else(Instant::now)));
    }
    let usable = |s: usize| {
        family.contains(&s)
            && shard.source_suspended(s, domain, host).is_none()
            && shard.source_capped(s, host).is_none()
            && shard.source_conns.borrow().get(&(s, domain.to_string())).copied().unwrap_or(0) < limit
    };
    // Each source has its own DANE session store too (its own copy of the host's config).
    let bound = |s: usize| Target {
        bind: Some(Bind { source: s, addr: eg.sources()[s].addr }),
        dane: target.dane.as_ref().map(|d| d.for_source(s)),
        ..target.clone()
    };
    for &s in family.iter().filter(|&&s| usable(s)) {
        if let Some(conn) = take_idle(shard, &bound(s)).await {
            return Ok((conn, SourceUse::new(shard, Some(s), domain)));
        }
    }
    let Some(s) = eg.choose(pool, fastrand::u64(..), usable) else { return Err(OpenFail::Busy) };
    // Counted before the connect, so that workers connecting at once share the limit.
    let in_use = SourceUse::new(shard, Some(s), domain);
    let conn = open_leased(shard, domain, bound(s)).await.map_err(|e| OpenFail::Connect(e, Some(s)))?;
    Ok((conn?, in_use))
}

/// An idle connection for `target` from the pool that is still alive.
async fn take_idle(shard: &Rc<Shard>, target: &Target) -> Option<Conn> {
    loop {
        let mut conn = shard.pool.borrow_mut().take(target, Instant::now())?;
        if conn.probe_alive().await {
            shard.counters.connections_reused.fetch_add(1, Ordering::Relaxed);
            return Some(conn);
        }
        // Closed by the server while idle: drop it and look for another.
    }
}

/// Cluster mode: one message of `source`'s warm-up cap toward `host`, counted against the
/// cap the nodes share (their earliest day 1, one counter per source, class and day in
/// Redis; this node's share of it while Redis is down). Returns the answer and, when
/// granted under a cap, the shared counter's name (for a give-back).
async fn warm_take_shared(
    c: &crate::cluster::Cluster,
    w: &crate::egress::warmup::Warmup,
    source: &str,
    host: &str,
) -> (crate::egress::warmup::Take, Option<String>) {
    use crate::egress::warmup::Take;
    if let Some(mine) = w.begin(source) {
        // Kept a year past its last use: a source idle that long starts over.
        let first = c.earliest(&format!("warmstart:{source}"), mine, Duration::from_secs(366 * 86_400)).await;
        w.adopt_start(source, first);
    }
    let Some(q) = w.quote(source, host) else { return (Take::Granted, None) };
    if c.count_take(&q.counter, q.cap, q.ttl).await {
        w.taken(source, host);
        (Take::Granted, Some(q.counter))
    } else {
        (Take::Capped { until: q.until }, None)
    }
}

/// As [`open`], and in cluster mode a new connection first takes its leases under the
/// limits shared with the other nodes (the domain's, the MX budget's; per egress source):
/// `Ok(Err(Busy))` when the cluster is at one of them, so the worker waits and tries again.
async fn open_leased(shard: &Rc<Shard>, domain: &str, target: Target) -> Result<Result<Conn, OpenFail>, ConnectError> {
    if shard.cfg.cluster.is_none() {
        return open(shard, target).await.map(Ok);
    }
    if let Some(conn) = take_idle(shard, &target).await {
        return Ok(Ok(conn));
    }
    let Some(leases) = cluster_leases(shard, domain, &target).await else { return Ok(Err(OpenFail::Busy)) };
    let mut conn = open(shard, target).await?;
    if conn.leases.is_empty() {
        conn.leases = leases;
    }
    Ok(Ok(conn))
}

/// The suffix of a shared limit's name for connections from `bind`'s egress source.
fn source_suffix(shard: &Shard, bind: Option<Bind>) -> String {
    bind.and_then(|b| shard.cfg.egress.as_ref()?.sources().get(b.source)).map(|s| format!("|src:{}", s.name)).unwrap_or_default()
}

/// The leases a new connection to `target` for `domain` needs in cluster mode: one under
/// the domain's own `max_conns` and one under its MX budget's, if set; `None` when the
/// cluster is at one of them.
async fn cluster_leases(shard: &Rc<Shard>, domain: &str, target: &Target) -> Option<Vec<crate::cluster::Lease>> {
    let Some(c) = &shard.cfg.cluster else { return Some(Vec::new()) };
    let sfx = source_suffix(shard, target.bind);
    let mut v = Vec::new();
    if let Some(n) = shard.limits.domain(domain).and_then(|l| l.max_conns) {
        v.push(c.try_lease(&format!("dom:{domain}{sfx}"), n).await?);
    }
    let budget = shard.limits.mx_for(&target.host, target.bind.map(|b| b.source)).and_then(|b| Some((b.pattern.clone(), b.max_conns?)));
    if let Some((pattern, n)) = budget {
        v.push(c.try_lease(&format!("mx:{pattern}{sfx}"), n).await?);
    }
    Some(v)
}

/// How long the next message must wait under the domain's rate and its MX budget's rate
/// ([`rate_wait`]); in cluster mode under the rates shared with the other nodes, reserved
/// in batches of up to `want` send times.
async fn rate_wait_shared(shard: &Shard, domain: &str, host: &str, bind: Option<Bind>, want: usize) -> Duration {
    let source = bind.map(|b| b.source);
    let Some(c) = &shard.cfg.cluster else { return rate_wait(shard, domain, host, source) };
    let sfx = source_suffix(shard, bind);
    let mut d = Duration::ZERO;
    if let Some(per_s) = shard.limits.domain(domain).and_then(|l| l.rate_for(source)).map(|g| g.per_s()) {
        d = d.max(c.rate_reserve(&format!("dom:{domain}{sfx}"), per_s, want).await);
    }
    let mx = shard.limits.mx_for(host, source).and_then(|b| Some((b.pattern.clone(), b.rate.as_ref()?.per_s())));
    if let Some((pattern, per_s)) = mx {
        d = d.max(c.rate_reserve(&format!("mx:{pattern}{sfx}"), per_s, want).await);
    }
    d
}

/// A connection to `target`: an idle one from the pool, or a new one (from the target's
/// egress source, saying its EHLO name, when it has one).
async fn open(shard: &Rc<Shard>, target: Target) -> Result<Conn, ConnectError> {
    if stopping(shard) {
        return Err(ConnectError::Stopped { reason: NOT_ATTEMPTED.into() });
    }
    if let Some(conn) = take_idle(shard, &target).await {
        return Ok(conn);
    }
    let mx_slot = take_mx_slot(shard, &target).await?;
    let slot = take_slot(shard, target.bind, target.addr).await?;
    let egress = shard.cfg.egress.as_ref();
    let ehlo = target.bind.and_then(|b| egress?.sources().get(b.source)).map_or(shard.cfg.ehlo_name.as_str(), |s| s.ehlo.as_str());
    let tls = shard.tls_for(target.bind);
    let (mut conn, full) = Conn::open(target, tls, ehlo, timeouts(&shard.cfg)).await?;
    conn.slot = Some(slot);
    conn.mx_slot = mx_slot;
    let c = &shard.counters;
    c.connections.fetch_add(1, Ordering::Relaxed);
    if conn.facts.tls != TlsUse::None {
        if full { &c.tls_full } else { &c.tls_resumed }.fetch_add(1, Ordering::Relaxed);
    }
    if conn.facts.tls == TlsUse::None && conn.target.security == Security::Opportunistic {
        // Opportunistic host that did not offer STARTTLS: remember, skip the EHLO check next time.
        shard.policy.borrow_mut().starttls_absent(&conn.target.host, Instant::now());
    }
    Ok(conn)
}

/// Someone waits for a connection slot in the MX budget of `target` (its host, from its source).
fn mx_wanted(limits: &Limits, target: &Target) -> bool {
    limits.mx_for(&target.host, target.bind.map(|b| b.source)).is_some_and(|b| b.waiting.load(Ordering::Relaxed) > 0)
}

/// A slot in the operator's connection budget for the MX hosts matching a pattern, if `host`
/// falls under one. When the budget is used up, close this shard's idle connections under it
/// (other shards do on their next reap), then wait in line: connections give their slot back
/// when their queue is empty, or at `max_msgs_per_conn`, so the wait ends. Only the drain
/// deadline cuts it short.
async fn take_mx_slot(shard: &Rc<Shard>, target: &Target) -> Result<Option<tokio::sync::OwnedSemaphorePermit>, ConnectError> {
    let Some(budget) = shard.limits.mx_for(&target.host, target.bind.map(|b| b.source)).cloned() else { return Ok(None) };
    let Some(sem) = budget.conns.clone() else { return Ok(None) };
    if let Ok(p) = sem.clone().try_acquire_owned() {
        return Ok(Some(p));
    }
    let limits = shard.limits.clone();
    let mine = |t: &Target| limits.mx_for(&t.host, t.bind.map(|b| b.source)).is_some_and(|b| Arc::ptr_eq(b, &budget));
    let idle = shard.pool.borrow_mut().take_hosts(mine);
    for c in idle {
        let s = shard.clone();
        tokio::task::spawn_local(async move { c.quit(&s.tls, timeouts(&s.cfg)).await });
    }
    let waiting = WaitCount::new(&budget);
    let mut stop = shard.stop.subscribe();
    let got = tokio::select! {
        p = sem.acquire_owned() => p.ok(),
        _ = stop.wait_for(|v| *v) => None,
    };
    drop(waiting);
    got.map(Some).ok_or_else(|| ConnectError::Stopped { reason: NOT_ATTEMPTED.into() })
}

/// One waiter counted in an MX budget for as long as it lives (also if the wait is dropped).
struct WaitCount<'a>(&'a MxBudget);

impl<'a> WaitCount<'a> {
    fn new(b: &'a MxBudget) -> Self {
        b.waiting.fetch_add(1, Ordering::Relaxed);
        WaitCount(b)
    }
}

impl Drop for WaitCount<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How long the next message on a connection to `host` for `domain` must wait under the
/// domain's own rate and its MX budget's rate; reserves its place in both.
fn rate_wait(shard: &Shard, domain: &str, host: &str, source: Option<usize>) -> Duration {
    let now = Instant::now();
    let d = shard.limits.domain(domain).and_then(|l| l.rate_for(source)).map_or(Duration::ZERO, |g| g.reserve(now));
    let m = shard.limits.mx_for(host, source).and_then(|b| b.rate.as_ref()).map_or(Duration::ZERO, |g| g.reserve(now));
    d.max(m)
}

/// A slot in the per-address connection limit. When none is free, close an idle connection to
/// that address (it holds one), then wait for a slot, bounded by the connect timeout.
async fn take_slot(shard: &Rc<Shard>, bind: Option<Bind>, addr: SocketAddr) -> Result<tokio::sync::OwnedSemaphorePermit, ConnectError> {
    let sem = {
        let mut slots = shard.slots.borrow_mut();
        let limit = shard.cfg.max_conns_per_ip.max(1);
        slots.entry((bind, addr)).or_insert_with(|| (Arc::new(tokio::sync::Semaphore::new(limit)), 0)).0.clone()
    };
    if let Ok(p) = sem.clone().try_acquire_owned() {
        return Ok(p);
    }
    if let Some(idle) = shard.pool.borrow_mut().take_any_at(bind, addr) {
        let s = shard.clone();
        tokio::task::spawn_local(async move { idle.quit(&s.tls, timeouts(&s.cfg)).await });
    }
    set_waiting(shard, bind, addr, 1);
    let got = tokio::time::timeout(shard.cfg.connect_timeout, sem.acquire_owned()).await;
    set_waiting(shard, bind, addr, -1);
    match got {
        Ok(Ok(p)) => Ok(p),
        _ => Err(ConnectError::Unreachable {
            addr,
            reason: format!("all {} connection slots to this address stayed busy", shard.cfg.max_conns_per_ip),
        }),
    }
}

fn set_waiting(shard: &Shard, bind: Option<Bind>, addr: SocketAddr, delta: isize) {
    if let Some(e) = shard.slots.borrow_mut().get_mut(&(bind, addr)) {
        e.1 = e.1.saturating_add_signed(delta);
    }
}

/// Someone waits for a connection slot to `addr`: an idle connection there should make room.
fn slot_wanted(shard: &Shard, bind: Option<Bind>, addr: SocketAddr) -> bool {
    shard.slots.borrow().get(&(bind, addr)).is_some_and(|e| e.1 > 0)
}

/// Keep a connection in the idle pool for reuse, or close it: when no idling is wanted, or
/// someone waits for the slot it holds (its address's, or its MX budget's).
async fn park(shard: &Rc<Shard>, conn: Conn) {
    // A connection holding a cluster lease idles briefly: the other nodes cannot say they
    // wait for the lease, so it goes back soon for whoever needs it.
    let idle = if conn.leases.is_empty() { shard.cfg.idle_timeout } else { shard.cfg.idle_timeout.min(LEASED_IDLE) };
    match Instant::now().checked_add(idle) {
        Some(until)
            if !idle.is_zero() && !slot_wanted(shard, conn.target.bind, conn.target.addr) && !mx_wanted(&shard.limits, &conn.target) =>
        {
            shard.pool.borrow_mut().put(conn, until)
        }
        _ => conn.quit(&shard.tls, timeouts(&shard.cfg)).await,
    }
}

/// Under an MTA-STS policy in `testing` mode: what `enforce` would have refused on this
/// connection (an unlisted host, clear text, a certificate that does not verify for the MX
/// name), counted once per connection and recorded with its outcomes. Only then is the
/// certificate checked (≈ the cost of a verified handshake), so other deliveries pay nothing.
fn sts_testing_check(shard: &Shard, conn: &Conn, plan: &HostPlan) -> Option<String> {
    if !plan.sources.contains(&policy::Source::MtaStsTesting) {
        return None;
    }
    let why = if let Some(r) = &plan.report {
        Some(r.clone())
    } else if conn.facts.tls == TlsUse::None {
        Some(format!("mta-sts testing: {} offered no TLS", plan.host))
    } else if conn.target.security.verifies_certificate() {
        None
    } else {
        verify_chain(shard, conn, &plan.verify_name).err().map(|e| format!("mta-sts testing: {}: certificate: {e}", plan.host))
    };
    if why.is_some() {
        shard.counters.sts_testing_failures.fetch_add(1, Ordering::Relaxed);
    }
    why
}

/// Check the connection's certificate chain against the trusted roots and `name`, as a
/// verified handshake would have.
fn verify_chain(shard: &Shard, conn: &Conn, name: &str) -> Result<(), String> {
    use rustls::client::danger::ServerCertVerifier;
    let certs = conn.peer_certificates().filter(|c| !c.is_empty()).ok_or("no certificate")?;
    let name = rustls_pki_types::ServerName::try_from(name.to_string()).map_err(|e| e.to_string())?;
    shard
        .verifier
        .verify_server_cert(&certs[0], &certs[1..], &name, &[], rustls_pki_types::UnixTime::now())
        .map(|_| ())
        .map_err(|e| format!("{e}"))
}

/// Deliver queued parts of queue `domain` (a [`queue_key`]) over `conn` until the queue is empty; `report` is what a
/// reporting-only policy found wrong with the connection, recorded with every outcome.
async fn deliver_all(shard: &Rc<Shard>, domain: &str, mut conn: Conn, plan: &HostPlan, report: Option<String>) -> ConnEnd {
    set_connected(shard, domain, 1);
    let t = timeouts(&shard.cfg);
    // The connection's facts are settled once it is open: one copy for all its outcomes.
    let (_, _, pool) = split_key(domain);
    let ctx = OutcomeCtx::of(shard, pool, &conn, plan, report);
    let end = loop {
        let Some(mut job) = pop_job(shard, domain) else {
            park(shard, conn).await;
            set_connected(shard, domain, -1);
            return ConnEnd::QueueEmpty;
        };
        let suspended =
            conn.target.bind.is_some_and(|b| shard.source_suspended(b.source, split_key(domain).0, &conn.target.host).is_some());
        if suspended {
            // Its source was suspended toward this domain meanwhile: the rest go from another.
            push_front(shard, domain, job);
            park(shard, conn).await;
            set_connected(shard, domain, -1);
            return ConnEnd::Recycle;
        }
        // Redis went away and this node now holds more connections under a shared limit than
        // its share (taken on shared leases while it could): the excess closes here, between
        // messages, so the cluster as a whole stays within the limit.
        // Every lease is asked (no short cut): each one over its share gives its place up.
        let mut over = false;
        for l in conn.leases.iter_mut() {
            over |= l.yield_over_share();
        }
        if over {
            push_front(shard, domain, job);
            conn.quit(&shard.tls, t).await;
            set_connected(shard, domain, -1);
            return ConnEnd::Recycle;
        }
        if conn.messages >= shard.cfg.max_msgs_per_conn {
            // This connection has done its share: close it and let the worker open another.
            push_front(shard, domain, job);
            conn.quit(&shard.tls, t).await;
            set_connected(shard, domain, -1);
            return ConnEnd::Recycle;
        }
        // Under a rate limit: wait for the send time this part reserved (short waits keep
        // the connection; long ones park it and the worker sleeps).
        if stopping(shard) {
            // Past the drain deadline (a part put back after it): nothing new starts.
            finish(shard, &job, Status::Deferred, "4.3.2", NOT_ATTEMPTED, None);
            continue;
        }
        let not_before = match job.not_before {
            Some(t) => t,
            None => {
                let want = shard.domains.borrow().get(domain).map_or(1, |d| d.queue.len() + 1);
                let t = Instant::now() + rate_wait_shared(shard, split_key(domain).0, &plan.host, conn.target.bind, want).await;
                *job.not_before.insert(t)
            }
        };
        let now = Instant::now();
        if not_before > now {
            // A long wait, or a short one while someone needs this connection's slot: park.
            let wanted = slot_wanted(shard, conn.target.bind, conn.target.addr) || mx_wanted(&shard.limits, &conn.target);
            if wanted || not_before - now > RATE_HOLD {
                push_front(shard, domain, job);
                park(shard, conn).await;
                set_connected(shard, domain, -1);
                return ConnEnd::Wait(not_before);
            }
            if !sleep_unless_stopped(shard, not_before).await {
                finish(shard, &job, Status::Deferred, "4.3.2", NOT_ATTEMPTED, None);
                continue;
            }
        }
        // Under a warm-up plan: one message of the source's daily cap toward this host.
        let warm =
            shard.cfg.egress.as_ref().and_then(|e| Some((e.warmup()?.clone(), e.sources().get(conn.target.bind?.source)?.name.clone())));
        let mut shared_count = None;
        if let Some((w, name)) = &warm {
            let take = match &shard.cfg.cluster {
                None => w.try_take(name, &plan.host),
                Some(c) => {
                    let (take, counter) = warm_take_shared(c, w, name, &plan.host).await;
                    shared_count = counter;
                    take
                }
            };
            if let crate::egress::warmup::Take::Capped { until } = take {
                let wait = until.duration_since(SystemTime::now()).unwrap_or_default();
                let source = conn.target.bind.map_or(0, |b| b.source);
                shard.warm_capped.borrow_mut().insert((source, plan.host.clone()), Instant::now() + wait);
                // The pool's other sources take the rest; if all are capped the queue waits.
                push_front(shard, domain, job);
                park(shard, conn).await;
                set_connected(shard, domain, -1);
                return ConnEnd::Recycle;
            }
        }
        let give_back = || {
            if let Some((w, name)) = &warm {
                w.give_back(name, &plan.host);
            }
            if let (Some(c), Some(counter)) = (&shard.cfg.cluster, &shared_count) {
                c.count_give_back(counter);
            }
        };
        // First use since it was taken from the idle pool?
        let was_reused = std::mem::take(&mut conn.reused);
        match conn.deliver(job.message(), shard.tls_for(conn.target.bind), t).await {
            Ok(mo) => {
                shard.counters.messages_sent.fetch_add(1, Ordering::Relaxed);
                emit_message_outcome(shard, &job, mo, &ctx);
                shard.policy.borrow_mut().success(&plan.host, Instant::now());
            }
            Err(DeliverError::NotSent { .. }) => {
                give_back();
                push_front(shard, domain, job);
                break ConnEnd::Stale;
            }
            Err(DeliverError::Broken { error, .. }) => {
                if was_reused && !conn.server_replied_to_message() {
                    // A parked connection the server closed just as we reused it: it said
                    // nothing about this part, so it cannot have taken it. Put the part back
                    // and open a fresh connection; that is no failure of the host.
                    give_back();
                    push_front(shard, domain, job);
                    break ConnEnd::Stale;
                }
                let reason = format!("{}: connection failed during the transaction, delivery status unknown: {error}", plan.host);
                finish(shard, &job, Status::Deferred, "4.4.2", &reason, Some(&ctx));
                break ConnEnd::Broken(error);
            }
        }
    };
    set_connected(shard, domain, -1);
    end
}
