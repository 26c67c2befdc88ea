//! The queue manager: what happens to a spooled message between acceptance and its last
//! recipient's final outcome.
//!
//! It runs on one thread and owns the engine. Accepted (and, at start, recovered) messages are
//! submitted for their unfinished recipients; each outcome is recorded in the spool as an
//! attempt (final for delivered and bounced); when a message's round is over, the recipients
//! still deferred wait for their next attempt on a timer (exponential backoff with jitter), or,
//! past the maximum age, are bounced. Bounced recipients get one DSN per round to the envelope
//! sender (none for the null sender), itself spooled before it is sent, like any message.
//!
//! A 421 or a recognised rate-limit reply suspends the recipient's domain
//! ([`Destinations`]): its recipients wait for the suspension's end without being tried.
//! Connection and message-rate limits are the engine's (`EngineConfig::limits`): parts over
//! them wait in the engine's queues.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use crossbeam_channel::{Receiver, Select};

use super::board::{unix_at, Board};
pub use super::report::{ClassCounts, ManagerReport};
use super::spool::{Attempt, FinalStatus, MsgId, Spool, Stored};
use crate::dsn::{build_dsn, Action, DsnInput, FailedRcpt, ReturnContent};
use crate::engine::{Engine, MessageTls, Submission};
use crate::outcome::{Outcome, Status};
use crate::schedule::{classify, Decision, DestinationOptions, Destinations, ReplyClass, RetryPolicy, TimerId, Timers};

/// At shutdown, how long transactions under way may take to finish (each wait is also bounded
/// by the engine's command timeout); parts not started by then stay in the spool untried.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// How often the engine's counters are copied to the board.
const STATS_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// What the manager needs besides its channels.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    /// When to retry a deferred message and when to give up on it.
    pub retry: RetryPolicy,
    /// Our host name, in DSNs.
    pub reporting_mta: String,
    /// Append one JSON line per attempt here (with its TLS facts), if set.
    pub delivery_log: Option<std::path::PathBuf>,
    /// Keep the suspensions in force here (JSON, rewritten on each change), so that they
    /// outlast a restart; if set.
    pub suspensions_file: Option<std::path::PathBuf>,
    /// The intake's DKIM keys: a DSN is signed with those aligned with its From domain (the
    /// reporting MTA's), as intake signs what it accepts. `None`: DSNs go unsigned.
    pub dkim: Option<Arc<crate::dkim::Dkim>>,
    /// Cluster mode: a destination suspended here is suspended on every node, and one
    /// suspended by another node holds its recipients here too. `None`: this node alone.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
}

/// A message the injection side has made durable.
#[derive(Debug, Clone)]
pub struct Accepted {
    /// The spool id it was stored under.
    pub id: MsgId,
    /// Envelope sender; empty for the null sender.
    pub from: String,
    /// Envelope recipients, each still to be delivered.
    pub rcpts: Vec<String>,
    /// The message as received (RFC 5322 bytes).
    pub data: Arc<[u8]>,
    /// What the sender asked of TLS (RFC 8689), as spooled.
    pub tls: MessageTls,
    /// The egress pool the sender named, as spooled; `None`: the engine's rules decide.
    pub pool: Option<String>,
}

/// An operator's command about one destination domain (`mxpipe queue`, the HTTP API).
#[derive(Debug)]
pub enum Control {
    /// Hold its recipients (those already with the engine finish their attempt) for a while.
    Suspend {
        /// The destination domain, as typed (the manager normalises it).
        domain: String,
        /// How long to hold it, from now.
        duration: std::time::Duration,
        /// Where the manager sends the [`ControlReply`].
        reply: tokio::sync::oneshot::Sender<ControlReply>,
    },
    /// Lift a suspension (the operator's or the daemon's own) and try its recipients now.
    Resume {
        /// The destination domain, as typed (the manager normalises it).
        domain: String,
        /// Where the manager sends the [`ControlReply`].
        reply: tokio::sync::oneshot::Sender<ControlReply>,
    },
    /// Give up on every recipient waiting for it: bounced with a DSN to each sender.
    /// Recipients with the engine at that moment are bounced unless that attempt delivers them.
    Bounce {
        /// The destination domain, as typed (the manager normalises it).
        domain: String,
        /// Where the manager sends the [`ControlReply`].
        reply: tokio::sync::oneshot::Sender<ControlReply>,
    },
}

/// What a [`Control`] command did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ControlReply {
    /// The domain the command was about, normalised (lowercase, no trailing dot).
    pub domain: String,
    /// Recipients waiting for the domain (for `bounce`: bounced now).
    pub recipients: u64,
    /// Of those, how many were with the engine (their attempt finishes first).
    pub in_flight: u64,
    /// The suspension in force afterwards (Unix seconds), if any.
    pub suspended_until: Option<f64>,
}

struct Entry {
    from: String,
    data: Arc<[u8]>,
    /// The message's TLS requirement (RFC 8689), handed to the engine with every round.
    tls: MessageTls,
    /// The egress pool the sender named, handed to the engine with every round.
    pool: Option<String>,
    /// Recipients without a final outcome.
    pending: Vec<String>,
    /// Of `pending`, those with the engine in the round in progress.
    sent: Vec<String>,
    /// The round in progress had a real deferral (not only parts given back untried).
    round_deferred: bool,
    /// Its retry (or suspension-end) timer, cancelled when it is submitted earlier.
    timer: Option<TimerId>,
    /// Outcomes still expected for the round in progress (0: waiting for a timer).
    in_flight: usize,
    /// Rounds that ended with something deferred.
    rounds: u32,
    first: Instant,
    received_at: SystemTime,
    last_reply: HashMap<String, (String, Option<String>, Option<String>)>,
    bounced: Vec<FailedRcpt>,
}

/// Run until `stop` says so (or closes), then let the engine finish what it has, record it,
/// and return. Unfinished messages stay in the spool.
/// What wakes the manager: the engine's outcomes, newly accepted messages, and the stop.
pub struct Inputs {
    /// Every recipient's outcome from the engine.
    pub outcomes: Receiver<Outcome>,
    /// Messages the injection side has spooled and acknowledged.
    pub accepted: Receiver<Accepted>,
    /// The operator's commands about destinations, each answered on its own reply channel.
    pub control: Receiver<Control>,
    /// Stop: the manager drains the engine and returns (also when the sender is dropped).
    pub stop: Receiver<()>,
    /// Told once the saved suspensions and the recovered messages are in (and on the board),
    /// so the daemon serves nothing that would show a queue state from before its restart.
    pub ready: Option<crossbeam_channel::Sender<()>>,
}

/// The manager's loop, on the caller's thread. Returns the counters, [`ManagerReport::unfinished`] included.
pub fn run(cfg: ManagerConfig, spool: Arc<Spool>, engine: Engine, recovered: Vec<Stored>, inputs: Inputs, board: Board) -> ManagerReport {
    let Inputs { outcomes, accepted, control, stop, ready } = inputs;
    let log = match &cfg.delivery_log {
        Some(path) => match std::fs::OpenOptions::new().create(true).append(true).open(path) {
            Ok(f) => Some(std::io::BufWriter::new(f)),
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "cannot open the delivery log; continuing without it");
                None
            }
        },
        None => None,
    };
    let mut m = Manager {
        cfg,
        spool,
        engine: Some(engine),
        entries: HashMap::new(),
        timers: Timers::new(),
        report: ManagerReport::default(),
        rng: fastrand::Rng::new(),
        log,
        board,
        totals_at: Instant::now(),
        dests: Destinations::new(DestinationOptions::default()),
        doomed: std::collections::HashSet::new(),
        sites: HashMap::new(),
        cluster_seen: std::collections::HashSet::new(),
    };
    m.load_suspensions();
    m.report.recovered = recovered.len() as u64;
    for s in recovered {
        m.recover(s);
    }
    if let Some(ready) = ready {
        let _ = ready.send(());
    }
    loop {
        // At most a second, so the engine's counters on the board stay fresh when idle.
        let wait = m.timers.next_deadline().map_or(STATS_EVERY, |d| d.saturating_duration_since(Instant::now()).min(STATS_EVERY));
        let mut sel = Select::new();
        let i_out = sel.recv(&outcomes);
        let i_acc = sel.recv(&accepted);
        let i_ctl = sel.recv(&control);
        let i_stop = sel.recv(&stop);
        let op = sel.select_timeout(wait).ok();
        match op {
            None => {}
            Some(op) if op.index() == i_out => {
                if let Ok(o) = op.recv(&outcomes) {
                    m.outcome(o);
                }
                if outcomes.is_empty() {
                    m.flush_log();
                }
            }
            Some(op) if op.index() == i_acc => match op.recv(&accepted) {
                Ok(a) => m.accept(a),
                Err(_) => break,
            },
            Some(op) if op.index() == i_ctl => match op.recv(&control) {
                Ok(c) => m.control(c),
                Err(_) => break,
            },
            Some(op) => {
                debug_assert_eq!(op.index(), i_stop);
                let _ = op.recv(&stop);
                break;
            }
        }
        for id in m.timers.pop_due(Instant::now()) {
            if let Some(e) = m.entries.get_mut(&id) {
                e.timer = None;
            }
            m.submit(id);
        }
        m.cluster_suspensions();
        m.publish(false);
    }
    // Shutdown: no new rounds; the engine finishes the transactions under way, gives back
    // what it has not started by the deadline, and its outcomes are recorded.
    let deadline = Instant::now() + SHUTDOWN_GRACE;
    let stats = m.engine.take().map(|e| e.shutdown_by(Some(deadline))).unwrap_or_default();
    // Recorded as any outcome: with the engine gone nothing new is submitted, and a bounce's
    // DSN is spooled, to go after the next start.
    while let Ok(o) = outcomes.try_recv() {
        m.outcome(o);
    }
    m.flush_log();
    if m.spool.flush().is_err() {
        m.report.spool_errors += 1;
    }
    m.report.unfinished = m.entries.len() as u64;
    m.report.engine = stats;
    m.publish(true);
    m.report
}

struct Manager {
    cfg: ManagerConfig,
    spool: Arc<Spool>,
    /// `None` only after shutdown began.
    engine: Option<Engine>,
    entries: HashMap<MsgId, Entry>,
    timers: Timers<MsgId>,
    report: ManagerReport,
    rng: fastrand::Rng,
    log: Option<std::io::BufWriter<std::fs::File>>,
    board: Board,
    totals_at: Instant,
    /// Per destination domain: suspension after a 421 or a rate-limit reply.
    dests: Destinations,
    /// Recipients an operator bounced while they were with the engine: bounced when that
    /// attempt comes back undelivered.
    doomed: std::collections::HashSet<(MsgId, String)>,
    /// The site ([`crate::engine::EngineConfig::mx_sites`]) each destination domain's mail
    /// last went to (learned from attempts), so that a source suspended toward the site holds
    /// that domain's mail here instead of sending it to the engine to be given back.
    sites: HashMap<String, String>,
    /// Cluster mode: the destinations suspended by the cluster as last seen, so that a new
    /// one withdraws this node's backlog there once.
    cluster_seen: std::collections::HashSet<String>,
}

/// Domains whose site is remembered at most; past it the map starts again (it is relearned
/// from the next attempt of each).
const MAX_SITES: usize = 100_000;

/// A deferral turned into the operator's bounce.
fn operator_bounced(o: &mut Outcome) {
    o.status = Status::Bounced;
    o.reply = format!("mxpipe: bounced by the operator; last attempt: {}", o.reply);
    o.enhanced = Some("5.0.0".into());
}

/// A bounced outcome as a DSN line.
fn failed(o: &Outcome) -> FailedRcpt {
    FailedRcpt {
        rcpt: o.rcpt.clone(),
        action: Action::Failed,
        status: o.enhanced.clone().unwrap_or_else(|| "5.0.0".into()),
        remote_mta: o.mx.clone(),
        diagnostic: Some(o.reply.clone()),
        last_attempt: Some(SystemTime::now()),
    }
}

/// The destination domain of a recipient, as the engine routes it ("" if it has none).
fn domain(rcpt: &str) -> String {
    crate::engine::domain_of(rcpt).unwrap_or_default()
}

/// The suspension key of egress source `source` toward `domain`: suspended apart from the
/// domain itself, since a receiver throttles each sending address on its own.
fn source_key(domain: &str, source: &str) -> String {
    format!("{domain}/{source}")
}

/// Until when message `e`'s recipient at `domain` waits, if it must: its destination's
/// suspension (this node's, or the cluster's), else the earliest end of its pool's sources'
/// suspensions toward the domain or its site ([`pool_suspended`]).
fn held_until(
    dests: &Destinations,
    cluster: Option<&crate::cluster::Cluster>,
    engine: Option<&Engine>,
    sites: &HashMap<String, String>,
    e: &Entry,
    domain: &str,
    now: Instant,
) -> Option<Instant> {
    dests
        .is_suspended(domain, now)
        .or_else(|| cluster.and_then(|c| c.suspended(domain)))
        .or_else(|| pool_suspended(dests, engine, e.pool.as_deref(), &e.from, domain, sites.get(domain).map(String::as_str), now))
}

/// When every source of the pool a message goes through is suspended toward `domain` (or
/// toward `site`, the site its MX hosts belong to), the earliest end of those suspensions:
/// the recipient waits for it (no attempt is made).
fn pool_suspended(
    dests: &Destinations,
    engine: Option<&Engine>,
    pool: Option<&str>,
    from: &str,
    domain: &str,
    site: Option<&str>,
    now: Instant,
) -> Option<Instant> {
    let eg = engine?.egress()?;
    let crate::egress::PoolChoice::Pool(p) = eg.pool_for(pool, from) else { return None };
    let mut end: Option<Instant> = None;
    for &(s, _) in &eg.pools().get(p)?.members {
        let name = &eg.sources()[s].name;
        let by_domain = dests.is_suspended(&source_key(domain, name), now);
        let by_site = site.and_then(|site| dests.is_suspended(&source_key(site, name), now));
        let until = by_domain.max(by_site)?;
        end = Some(end.map_or(until, |e| e.min(until)));
    }
    end
}

/// Whether `rcpt` is at `domain` (lower-case, no trailing dot).
fn domain_is(rcpt: &str, domain: &str) -> bool {
    crate::engine::domain_of(rcpt).as_deref() == Some(domain)
}

/// How a reply bears on its destination: a server reply is classified (rate limit, 421,
/// success); our own reasons (`mxpipe: …`) say nothing about the destination's load.
fn reply_class(o: &Outcome) -> Option<ReplyClass> {
    let code: u16 = o.reply.get(..3)?.parse().ok()?;
    Some(classify(code, o.enhanced.as_deref(), o.reply.get(4..).unwrap_or("")))
}

impl Manager {
    /// Copy the counters to the board (the engine's at most once a second: they cost a
    /// system call).
    fn publish(&mut self, force: bool) {
        let refresh = force || self.totals_at.elapsed() >= STATS_EVERY;
        if refresh {
            self.totals_at = Instant::now();
            if let Some(engine) = &self.engine {
                self.report.engine = engine.stats();
            }
        }
        self.board.publish(&self.report, refresh);
    }

    /// Take back an unfinished message after a restart, on the schedule it had: its failed
    /// rounds are the most deferred attempts of any recipient still pending, and its next
    /// attempt is due that round's backoff after its last one (at once if that has passed, or
    /// if it was never tried).
    fn recover(&mut self, s: Stored) {
        let pending: Vec<String> = s.rcpts.iter().filter(|r| r.done.is_none()).map(|r| r.rcpt.clone()).collect();
        if pending.is_empty() {
            return;
        }
        let now = Instant::now();
        let age = SystemTime::now().duration_since(s.received_at).unwrap_or_default();
        let first = now.checked_sub(age).unwrap_or(now);
        let deferred: Vec<&Attempt> = s.attempts.iter().filter(|a| a.status == "deferred" && pending.contains(&a.rcpt)).collect();
        let rounds = pending
            .iter()
            .map(|r| s.attempts.iter().filter(|a| a.status == "deferred" && a.rcpt == *r).count())
            .max()
            .unwrap_or(0)
            .min(u32::MAX as usize) as u32;
        let last = deferred.iter().map(|a| a.at).max();
        self.board.queued(s.id, &s.from, &pending, s.received_at);
        let last_reply = deferred.iter().map(|a| (a.rcpt.clone(), (a.reply.clone(), None, None))).collect();
        let mut entry = Entry::new(s.from, s.data, s.tls, pending, rounds, first, s.received_at);
        entry.pool = s.pool;
        entry.last_reply = last_reply;
        self.entries.insert(s.id, entry);
        let due = last.and_then(|at| {
            let ago = SystemTime::now().duration_since(at).unwrap_or_default();
            let last_at = now.checked_sub(ago).unwrap_or(now);
            match self.cfg.retry.next_attempt(rounds, first, last_at, self.rng.u64(..)) {
                Decision::RetryAt(t) if t > now => Some(t),
                // Due, or past its age: one more attempt now (expiry follows if it fails).
                _ => None,
            }
        });
        match due {
            Some(t) => self.schedule(s.id, t),
            None => self.submit(s.id),
        }
    }

    fn accept(&mut self, a: Accepted) {
        self.report.accepted += 1;
        // The injection side has already put it on the board (before acknowledging it).
        let mut entry = Entry::new(a.from, a.data, a.tls, a.rcpts, 0, Instant::now(), SystemTime::now());
        entry.pool = a.pool;
        self.entries.insert(a.id, entry);
        self.submit(a.id);
    }

    /// (Re)set the timer of `id` to `at`.
    fn schedule(&mut self, id: MsgId, at: Instant) {
        let Some(e) = self.entries.get_mut(&id) else { return };
        if let Some(old) = e.timer.replace(self.timers.insert(at, id)) {
            self.timers.cancel(old);
        }
        self.board.retry_at(id, at);
    }

    /// Cluster mode: a destination another node suspended is withdrawn from this node's
    /// engine once (what it has queued there comes back deferred and waits like the rest); an
    /// egress source suspended toward a domain or site is suspended in this node's engine.
    fn cluster_suspensions(&mut self) {
        let Some(c) = &self.cfg.cluster else { return };
        let all = c.suspensions();
        for s in all.iter().filter(|s| !self.cluster_seen.contains(&s.name)) {
            let Some(engine) = &self.engine else { break };
            // "scope/source": one egress source toward a domain or site (see `source_key`);
            // the engine skips that source, the pool's others go on.
            match s.name.split_once('/') {
                Some((scope, src)) => engine.suspend_source(scope, src, Some(s.until)),
                None => engine.withdraw(&s.name),
            }
        }
        self.cluster_seen = all.into_iter().map(|s| s.name).collect();
    }

    fn submit(&mut self, id: MsgId) {
        let now = Instant::now();
        let Some(e) = self.entries.get_mut(&id) else { return };
        if e.in_flight > 0 || e.pending.is_empty() || self.engine.is_none() {
            // (No engine: shutting down; the spool keeps it for the next start.)
            return;
        }
        // Recipients at a suspended destination wait for the suspension's end.
        let mut later: Option<Instant> = None;
        let mut to = Vec::with_capacity(e.pending.len());
        for r in &e.pending {
            let held = held_until(&self.dests, self.cfg.cluster.as_deref(), self.engine.as_ref(), &self.sites, e, &domain(r), now);
            match held {
                Some(until) => later = Some(later.map_or(until, |l| l.min(until))),
                None => to.push(r.clone()),
            }
        }
        if to.is_empty() {
            if let Some(at) = later {
                self.schedule(id, at);
            }
            return;
        }
        if let Some(t) = e.timer.take() {
            // Submitted before its timer (a resume): the timer would start an extra round.
            self.timers.cancel(t);
        }
        e.in_flight = to.len();
        e.round_deferred = false;
        self.report.in_flight += to.len() as u64;
        e.sent.clone_from(&to);
        self.board.in_flight(id, &to, true);
        let sub = Submission { id: id.to_string(), from: e.from.clone(), to, data: e.data.clone(), tls: e.tls, pool: e.pool.clone() };
        if let Some(engine) = &self.engine {
            // On error every recipient has already been given a (deferred) outcome.
            let _ = engine.submit(sub);
        }
    }

    /// One delivery-log line: the outcome record (TLS facts included) with time, spool id and
    /// the attempt's round.
    fn log(&mut self, id: MsgId, o: &Outcome) {
        let Some(w) = &mut self.log else { return };
        let round = self.entries.get(&id).map_or(0, |e| e.rounds) + 1;
        let ts = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs_f64();
        /// The line: the outcome's fields after these three, written straight to the log's
        /// buffer (no JSON tree built per line).
        #[derive(serde::Serialize)]
        struct Line<'a> {
            ts: f64,
            spool_id: MsgId,
            attempt: u32,
            #[serde(flatten)]
            o: &'a Outcome,
        }
        use std::io::Write;
        let line = Line { ts, spool_id: id, attempt: round, o };
        if serde_json::to_writer(&mut *w, &line).is_err() || w.write_all(b"\n").is_err() {
            self.report.log_errors += 1;
        }
    }

    fn flush_log(&mut self) {
        use std::io::Write;
        if let Some(w) = &mut self.log {
            if w.flush().is_err() {
                self.report.log_errors += 1;
            }
        }
    }

    fn record(&mut self, id: MsgId, o: &Outcome, fin: Option<FinalStatus>) {
        self.log(id, o);
        self.board.attempt(id, o);
        let status = match o.status {
            Status::Delivered => "delivered",
            Status::Deferred => "deferred",
            Status::Bounced => "bounced",
        };
        let attempt = Attempt { at: SystemTime::now(), rcpt: o.rcpt.clone(), status: status.into(), reply: o.reply.clone() };
        if self.spool.record_attempt(id, attempt, fin).is_err() {
            self.report.spool_errors += 1;
        }
    }

    fn outcome(&mut self, mut o: Outcome) {
        let Ok(id) = o.id.parse::<MsgId>() else { return };
        let doomed = !self.doomed.is_empty() && self.doomed.remove(&(id, o.rcpt.clone()));
        if crate::engine::not_attempted(&o) {
            return self.given_back(id, o, doomed);
        }
        if doomed && o.status == Status::Deferred {
            operator_bounced(&mut o);
            self.report.bounced_by_operator += 1;
        }
        self.report.in_flight = self.report.in_flight.saturating_sub(1);
        let class = self.report.by_class.entry(o.policy.as_deref().unwrap_or("none").to_string()).or_default();
        match o.status {
            Status::Delivered => class.delivered += 1,
            Status::Deferred => class.deferred += 1,
            Status::Bounced => class.bounced += 1,
        }
        let fin = match o.status {
            Status::Delivered => {
                self.report.delivered += 1;
                Some(FinalStatus::Delivered)
            }
            Status::Bounced => {
                self.report.bounced += 1;
                Some(FinalStatus::Bounced)
            }
            Status::Deferred => {
                self.report.deferred_attempts += 1;
                None
            }
        };
        self.record(id, &o, fin);
        let site = self.learn_site(&o);
        if let (Some(class), Some(src)) = (reply_class(&o).filter(|_| o.source.is_some()), o.source.as_deref()) {
            // From an egress source: only that source is suspended, toward the site of the MX
            // host that answered when one is configured (every domain it serves), else toward
            // the domain; the pool's other sources go on (the engine skips this one).
            let (d, now) = (domain(&o.rcpt), Instant::now());
            let scope = site.unwrap_or(d);
            let key = source_key(&scope, src);
            let before = self.dests.is_suspended(&key, now);
            if let Some(until) = self.dests.record(&key, class, now) {
                self.board.suspended(&key, until);
                if before.is_none() {
                    self.save_suspensions();
                    if let Some(engine) = &self.engine {
                        engine.suspend_source(&scope, src, Some(until));
                    }
                    if let Some(c) = &self.cfg.cluster {
                        c.suspend_soon(&key, until.saturating_duration_since(now), &o.reply);
                        self.cluster_seen.insert(key.clone());
                    }
                }
            }
        } else if let Some(class) = reply_class(&o) {
            let d = domain(&o.rcpt);
            let before = self.dests.is_suspended(&d, Instant::now());
            if let Some(until) = self.dests.record(&d, class, Instant::now()) {
                self.board.suspended(&d, until);
                if before.is_none() {
                    self.save_suspensions();
                    if let Some(c) = &self.cfg.cluster {
                        c.suspend_soon(&d, until.saturating_duration_since(Instant::now()), &o.reply);
                        self.cluster_seen.insert(d.clone());
                    }
                    // A backlog waiting in the engine (behind a rate limit) must wait too.
                    if let Some(engine) = &self.engine {
                        engine.withdraw(&d);
                    }
                }
            }
        }
        let Some(e) = self.entries.get_mut(&id) else { return };
        e.in_flight = e.in_flight.saturating_sub(1);
        e.sent.retain(|r| *r != o.rcpt);
        // The last reply is read only for a recipient still pending (its expiry or an
        // operator's bounce), so a final outcome drops it rather than copying four strings.
        if fin.is_some() {
            e.pending.retain(|r| *r != o.rcpt);
            e.last_reply.remove(&o.rcpt);
        } else {
            e.last_reply.insert(o.rcpt.clone(), (o.reply.clone(), o.enhanced.clone(), o.mx.clone()));
        }
        if o.status == Status::Bounced {
            e.bounced.push(failed(&o));
        }
        if o.status == Status::Deferred {
            e.round_deferred = true;
        }
        if e.in_flight == 0 {
            self.end_round(id);
        }
    }

    /// The engine gave a recipient back untried (its destination was withdrawn after a
    /// suspension or an operator's bounce): no attempt, no round counted. Bounced now if the
    /// operator bounced it; otherwise it waits as its destination says (a suspension's end).
    /// Remember the site of the MX host an attempt went to (or would have gone to) for the
    /// recipient's domain, and return it. Only with egress sources and sites configured.
    fn learn_site(&mut self, o: &Outcome) -> Option<String> {
        let engine = self.engine.as_ref()?;
        engine.egress()?;
        let site = engine.mx_site(o.mx.as_deref()?)?.to_string();
        let d = domain(&o.rcpt);
        if self.sites.get(&d) != Some(&site) {
            if self.sites.len() >= MAX_SITES {
                self.sites.clear();
            }
            self.sites.insert(d, site.clone());
        }
        Some(site)
    }

    fn given_back(&mut self, id: MsgId, o: Outcome, doomed: bool) {
        // Given back because its pool's sources are suspended toward a site: learn the domain's.
        self.learn_site(&o);
        self.report.in_flight = self.report.in_flight.saturating_sub(1);
        self.board.in_flight(id, std::slice::from_ref(&o.rcpt), false);
        let Some(e) = self.entries.get_mut(&id) else { return };
        e.in_flight = e.in_flight.saturating_sub(1);
        e.sent.retain(|r| *r != o.rcpt);
        let round_over = e.in_flight == 0;
        let deferred = e.round_deferred;
        if doomed {
            self.operator_bounce(id, vec![o.rcpt]);
        }
        if round_over {
            if deferred {
                self.end_round(id);
            } else {
                self.settle(id);
                self.submit(id);
            }
        }
    }

    /// A round is over: bounce what bounced, finish, or wait for the next attempt.
    fn end_round(&mut self, id: MsgId) {
        let now = Instant::now();
        let Some(e) = self.entries.get_mut(&id) else { return };
        if !e.pending.is_empty() {
            e.rounds = e.rounds.saturating_add(1);
            match self.cfg.retry.next_attempt(e.rounds, e.first, now, self.rng.u64(..)) {
                Decision::RetryAt(at) => {
                    // Not before the earliest end of the suspensions that hold every pending
                    // recipient (a retry then would only be held back again).
                    let ends: Option<Vec<Instant>> = e
                        .pending
                        .iter()
                        .map(|r| {
                            held_until(&self.dests, self.cfg.cluster.as_deref(), self.engine.as_ref(), &self.sites, e, &domain(r), now)
                        })
                        .collect();
                    let at = match ends.and_then(|v| v.into_iter().min()) {
                        Some(end) if end > at => end,
                        _ => at,
                    };
                    self.schedule(id, at);
                }
                Decision::Expire => {
                    // Too old: every recipient still pending is bounced (4.4.7, RFC 3463).
                    let pending = std::mem::take(&mut e.pending);
                    // The delivery log gets each recipient's final outcome, this one too.
                    let mut expired = Vec::with_capacity(pending.len());
                    for rcpt in pending {
                        let (reply, _, mx) = e.last_reply.get(&rcpt).cloned().unwrap_or_default();
                        e.bounced.push(FailedRcpt {
                            rcpt: rcpt.clone(),
                            action: Action::Failed,
                            status: "4.4.7".into(),
                            remote_mta: mx.clone(),
                            diagnostic: Some(reply.clone()),
                            last_attempt: Some(SystemTime::now()),
                        });
                        let mut o = Outcome::local(
                            &id.to_string(),
                            &rcpt,
                            Status::Bounced,
                            "4.4.7",
                            format!("expired after {} attempts; last: {reply}", e.rounds),
                        );
                        o.mx = mx;
                        let attempt = Attempt { at: SystemTime::now(), rcpt, status: "bounced".into(), reply: o.reply.clone() };
                        self.board.expired(id, &attempt.rcpt);
                        if self.spool.record_attempt(id, attempt, Some(FinalStatus::Bounced)).is_err() {
                            self.report.spool_errors += 1;
                        }
                        self.report.expired += 1;
                        expired.push(o);
                    }
                    for o in &expired {
                        self.log(id, o);
                    }
                }
            }
        }
        self.settle(id);
    }

    /// Between rounds: send one DSN for what bounced, and finish the message if nothing is
    /// pending any more.
    fn settle(&mut self, id: MsgId) {
        let Some(e) = self.entries.get_mut(&id) else { return };
        let bounced = std::mem::take(&mut e.bounced);
        let done = e.pending.is_empty();
        if !bounced.is_empty() {
            self.send_dsn(id, bounced);
        }
        if done {
            self.entries.remove(&id);
            self.board.finished(id);
        }
    }

    fn control(&mut self, c: Control) {
        let now = Instant::now();
        let (Control::Suspend { domain, .. } | Control::Resume { domain, .. } | Control::Bounce { domain, .. }) = &c;
        let domain = crate::policy::normalize(domain).into_owned();
        match c {
            Control::Suspend { duration, reply, .. } => {
                let until = self.dests.suspend(&domain, now + duration, now);
                self.board.suspended(&domain, until);
                self.save_suspensions();
                // Parts of a backlog the engine has not started come back and wait too.
                if let Some(engine) = &self.engine {
                    engine.withdraw(&domain);
                }
                let mut r = self.waiting_for(&domain);
                r.suspended_until = Some(unix_at(until));
                let _ = reply.send(r);
            }
            Control::Resume { reply, .. } => {
                self.dests.resume(&domain, now);
                self.board.resumed(&domain);
                // The domain's per-source suspensions (`domain/source`) end too: an operator who
                // resumes a destination means every address may send to it again. The same
                // for a site (`queue resume '*.google.com'`) and its `site/source` keys.
                let prefix = format!("{domain}/");
                let per_source: Vec<String> =
                    self.dests.suspended(now).into_iter().filter(|(k, _)| k.starts_with(&prefix)).map(|(k, _)| k.to_string()).collect();
                for key in per_source {
                    self.dests.resume(&key, now);
                    self.board.resumed(&key);
                    if let (Some(engine), Some((_, src))) = (&self.engine, key.split_once('/')) {
                        engine.suspend_source(&domain, src, None);
                    }
                }
                self.save_suspensions();
                let r = self.waiting_for(&domain);
                // Their next round now: those held only by the suspension go at once (for a
                // site: the mail of every domain last seen going to it).
                let ids = if self.engine.as_ref().is_some_and(|e| e.is_site(&domain)) {
                    let domains: std::collections::HashSet<&str> =
                        self.sites.iter().filter(|(_, s)| **s == domain).map(|(d, _)| d.as_str()).collect();
                    self.entries
                        .iter()
                        .filter(|(_, e)| e.pending.iter().any(|p| domains.contains(self::domain(p).as_str())))
                        .map(|(id, _)| *id)
                        .collect()
                } else {
                    self.ids_waiting_for(&domain)
                };
                for id in ids {
                    self.submit(id);
                }
                let _ = reply.send(r);
            }
            Control::Bounce { reply, .. } => {
                let r = self.waiting_for(&domain);
                for id in self.ids_waiting_for(&domain) {
                    self.bounce_now(id, &domain);
                }
                // Those the engine has not started come back and are bounced then.
                if let Some(engine) = &self.engine {
                    engine.withdraw(&domain);
                }
                let _ = reply.send(r);
            }
        }
        self.publish(false);
    }

    /// Messages with a recipient waiting for `domain`.
    fn ids_waiting_for(&self, domain: &str) -> Vec<MsgId> {
        self.entries.iter().filter(|(_, e)| e.pending.iter().any(|p| domain_is(p, domain))).map(|(id, _)| *id).collect()
    }

    /// Write the suspensions in force (domain → end, Unix seconds) to the suspensions file,
    /// atomically (a temporary file renamed over it).
    fn save_suspensions(&mut self) {
        let Some(path) = &self.cfg.suspensions_file else { return };
        let map: std::collections::BTreeMap<&str, f64> =
            self.dests.suspended(Instant::now()).into_iter().map(|(d, until)| (d, unix_at(until))).collect();
        let tmp = path.with_extension("tmp");
        let written = serde_json::to_vec_pretty(&map)
            .map_err(std::io::Error::other)
            .and_then(|bytes| std::fs::write(&tmp, bytes))
            .and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = written {
            tracing::warn!(path = %path.display(), error = %e, "cannot save the suspensions (they hold until a restart)");
        }
    }

    /// Take back the suspensions saved before a restart (those not yet over).
    fn load_suspensions(&mut self) {
        let Some(path) = &self.cfg.suspensions_file else { return };
        let text = match std::fs::read(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => return tracing::warn!(path = %path.display(), error = %e, "cannot read the suspensions; none restored"),
        };
        let map: std::collections::BTreeMap<String, f64> = match serde_json::from_slice(&text) {
            Ok(m) => m,
            Err(e) => return tracing::warn!(path = %path.display(), error = %e, "the suspensions file is damaged; no suspension restored"),
        };
        let (now, unix_now) = (Instant::now(), SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs_f64());
        for (domain, until) in map {
            let left = until - unix_now;
            if !(left > 0.0 && left.is_finite()) {
                continue;
            }
            let until = now + std::time::Duration::from_secs_f64(left.min(crate::schedule::MAX_SUSPENSION.as_secs_f64()));
            let until = self.dests.suspend(&domain, until, now);
            self.board.suspended(&domain, until);
            if let (Some((d, src)), Some(engine)) = (domain.split_once('/'), &self.engine) {
                // A source's suspension toward a domain: the engine must skip it too.
                engine.suspend_source(d, src, Some(until));
            }
        }
    }

    /// Recipients waiting for `domain`, and how many of them are with the engine.
    fn waiting_for(&self, domain: &str) -> ControlReply {
        let mut r = ControlReply { domain: domain.to_string(), ..ControlReply::default() };
        for e in self.entries.values() {
            for p in e.pending.iter().filter(|p| domain_is(p, domain)) {
                r.recipients += 1;
                if e.sent.contains(p) {
                    r.in_flight += 1;
                }
            }
        }
        r.suspended_until = self.dests.is_suspended(domain, Instant::now()).map(unix_at);
        r
    }

    /// Bounce the recipients of `id` at `domain` (an operator's command): those with the
    /// engine when their attempt comes back undelivered, the others now, with a DSN.
    fn bounce_now(&mut self, id: MsgId, domain: &str) {
        let Some(e) = self.entries.get_mut(&id) else { return };
        let mut now_bounced = Vec::new();
        for p in e.pending.iter().filter(|p| domain_is(p, domain)) {
            if e.sent.contains(p) {
                self.doomed.insert((id, p.clone()));
            } else {
                now_bounced.push(p.clone());
            }
        }
        if now_bounced.is_empty() {
            return;
        }
        self.operator_bounce(id, now_bounced);
        // A round in progress settles at its end.
        if self.entries.get(&id).is_some_and(|e| e.in_flight == 0) {
            self.settle(id);
        }
    }

    /// Bounce `rcpts` of `id` by the operator's command, without an attempt: final in the
    /// spool, logged, counted, and listed for the message's next DSN.
    fn operator_bounce(&mut self, id: MsgId, rcpts: Vec<String>) {
        let Some(e) = self.entries.get_mut(&id) else { return };
        e.pending.retain(|p| !rcpts.contains(p));
        let mut records = Vec::with_capacity(rcpts.len());
        for rcpt in rcpts {
            let (last, _, mx) = e.last_reply.get(&rcpt).cloned().unwrap_or_default();
            let reason = if last.is_empty() {
                "bounced by the operator".to_string()
            } else {
                format!("bounced by the operator; last attempt: {last}")
            };
            let mut o = Outcome::local(&id.to_string(), &rcpt, Status::Bounced, "5.0.0", reason);
            o.mx = mx;
            e.bounced.push(failed(&o));
            records.push(o);
        }
        for o in records {
            self.board.attempt(id, &o);
            self.log(id, &o);
            let attempt = Attempt { at: SystemTime::now(), rcpt: o.rcpt, status: "bounced".into(), reply: o.reply };
            if self.spool.record_attempt(id, attempt, Some(FinalStatus::Bounced)).is_err() {
                self.report.spool_errors += 1;
            }
            self.report.bounced += 1;
            self.report.bounced_by_operator += 1;
            self.report.by_class.entry("none".into()).or_default().bounced += 1;
        }
    }

    /// Spool and send a DSN to the sender of `id` for `rcpts` (none for the null sender).
    fn send_dsn(&mut self, id: MsgId, rcpts: Vec<FailedRcpt>) {
        let Some(e) = self.entries.get(&id) else { return };
        let input = DsnInput {
            reporting_mta: &self.cfg.reporting_mta,
            envelope_from: &e.from,
            envelope_id: None,
            original_message: &e.data,
            arrival: e.received_at,
            rcpts,
            return_content: ReturnContent::Headers,
            message_id_domain: &self.cfg.reporting_mta,
            now: SystemTime::now(),
            boundary_seed: self.rng.u64(..),
        };
        let Some(dsn) = build_dsn(&input) else { return };
        let data: Arc<[u8]> = match self.cfg.dkim.as_ref().map(|d| d.sign(&dsn.data, None)) {
            Some(Ok(crate::dkim::Signed::Yes(signed, _))) => signed.into(),
            Some(Err(e)) => {
                // The bounce still goes (losing it would be worse), unsigned, and is counted.
                tracing::warn!(error = %e, "cannot sign a DSN; it is sent unsigned");
                dsn.data.into()
            }
            Some(Ok(crate::dkim::Signed::No)) | None => dsn.data.into(),
        };
        // RFC 8689 §5: a non-delivery report for a REQUIRETLS message is sent with REQUIRETLS
        // too (it holds the original header, returned as RET=HDRS, which ours always is).
        let tls = if e.tls == MessageTls::RequireTls { MessageTls::RequireTls } else { MessageTls::Default };
        match self.spool.accept_tls(&dsn.from, std::slice::from_ref(&dsn.to), data.clone(), tls) {
            Ok(dsn_id) => {
                self.report.dsns += 1;
                self.board.queued(dsn_id, &dsn.from, std::slice::from_ref(&dsn.to), SystemTime::now());
                self.entries.insert(dsn_id, Entry::new(dsn.from, data, tls, vec![dsn.to], 0, Instant::now(), SystemTime::now()));
                self.submit(dsn_id);
            }
            Err(_) => self.report.spool_errors += 1,
        }
    }
}

impl Entry {
    fn new(
        from: String,
        data: Arc<[u8]>,
        tls: MessageTls,
        pending: Vec<String>,
        rounds: u32,
        first: Instant,
        received_at: SystemTime,
    ) -> Entry {
        Entry {
            from,
            data,
            tls,
            pool: None,
            pending,
            sent: Vec::new(),
            round_deferred: false,
            timer: None,
            in_flight: 0,
            rounds,
            first,
            received_at,
            last_reply: HashMap::new(),
            bounced: Vec::new(),
        }
    }
}
