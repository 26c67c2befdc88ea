//! The board: what the queue manager shows the outside (the HTTP API, metrics) of its state.
//!
//! The manager owns the queue; it writes a copy of what observers need here, under one
//! mutex taken once per event, and observers read it without reaching into the manager's
//! thread. Finished messages stay visible for a while (a bounded history), so a client can
//! look up a message after it was delivered.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime};

use serde::Serialize;

use super::report::ManagerReport;
use super::spool::MsgId;
use crate::outcome::Outcome;

/// Finished messages kept for lookups.
const FINISHED_KEPT: usize = 10_000;
/// Attempts kept per recipient in the view (the spool keeps them all).
const ATTEMPTS_KEPT: usize = 20;

/// One attempt, as shown.
#[derive(Debug, Clone, Serialize)]
pub struct AttemptView {
    /// When the outcome was recorded, Unix seconds.
    pub ts: f64,
    /// The outcome: `delivered`, `deferred` or `bounced`.
    pub status: &'static str,
    /// The server's reply on one line, or mxpipe's own reason (prefixed `mxpipe:`).
    pub reply: String,
    /// The MX host that answered, if a connection got that far.
    pub mx: Option<String>,
    /// How TLS was used: `starttls`, `implicit` or `none`.
    pub tls: &'static str,
    /// The egress source the attempt left from, when sources are configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The egress pool the message went through, when sources are configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
}

/// One recipient, as shown.
#[derive(Debug, Clone, Serialize)]
pub struct RcptView {
    /// The recipient address as given at injection.
    pub rcpt: String,
    /// `queued`, `deferred` (waiting for a retry), `delivered` or `bounced`.
    pub state: &'static str,
    /// Handed to the engine: an attempt is under way (its state is the one before it).
    pub in_flight: bool,
    /// The latest attempts, oldest first (at most 20; the spool keeps them all).
    pub attempts: Vec<AttemptView>,
}

/// One message, as shown by `GET /v1/messages/{id}`.
#[derive(Debug, Clone, Serialize)]
pub struct MessageView {
    /// The spool id, in hex as the API takes it.
    pub id: String,
    /// Envelope sender; empty for the null sender (DSNs).
    pub from: String,
    /// When the message was accepted into the spool, Unix seconds.
    pub received_at: f64,
    /// Every envelope recipient with its state.
    pub rcpts: Vec<RcptView>,
    /// When the next attempt is due (Unix seconds), for a deferred message.
    pub next_attempt: Option<f64>,
    /// Every recipient is delivered or bounced; the message is kept for lookups only.
    pub finished: bool,
}

/// One destination domain, as shown by `GET /v1/queues`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct QueueView {
    /// The destination domain, lowercase.
    pub domain: String,
    /// Recipients waiting (queued or deferred).
    pub recipients: u64,
    /// Of those, recipients that have been tried and wait for a retry.
    pub deferred: u64,
    /// Of `recipients`, those handed to the engine now (an attempt under way, or waiting in
    /// the engine for a connection or a rate slot).
    pub in_flight: u64,
    /// The earliest next attempt among its deferred recipients (Unix seconds).
    pub next_attempt: Option<f64>,
    /// Until when the destination is suspended (a 421 or a rate-limit reply), Unix seconds.
    pub suspended_until: Option<f64>,
}

#[derive(Default)]
struct Inner {
    live: HashMap<MsgId, MessageView>,
    finished: HashMap<MsgId, MessageView>,
    finished_order: VecDeque<MsgId>,
    /// The manager's counters as last published.
    report: ManagerReport,
    suspended: HashMap<String, SystemTime>,
    /// The injection listener's counters, once it runs.
    injection: Option<InjectionStats>,
    /// Attempts by (egress source, pool, status): as many keys as configured sources times
    /// pools times three, since outcomes name only configured ones.
    by_source: std::collections::BTreeMap<(String, String, &'static str), u64>,
    /// The engine's egress sources and pools, once the daemon has said.
    egress: Option<Arc<crate::egress::Egress>>,
}

/// The egress sources, as `GET /v1/queues` shows them under `"egress"`.
#[derive(Debug, Clone, Serialize)]
pub struct SourceView {
    /// The source's name.
    pub name: String,
    /// Its local address.
    pub address: std::net::IpAddr,
    /// The EHLO name it says.
    pub ehlo: String,
    /// The pools it is in.
    pub pools: Vec<String>,
    /// Recipient attempts from it so far, by outcome (`delivered`, `deferred`, `bounced`).
    pub attempts: std::collections::BTreeMap<&'static str, u64>,
    /// Destinations it is suspended toward (a 421 or a rate limit to this address), with
    /// the end (Unix seconds).
    pub suspended: std::collections::BTreeMap<String, f64>,
    /// Its warm-up today, per destination class, when it follows a plan.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warmup: Vec<crate::egress::warmup::WarmupStatus>,
}

/// Reads the SMTP injection listener's counters.
type InjectionStats = Arc<dyn Fn() -> crate::smtp_server::StatsSnapshot + Send + Sync>;

/// Shared between the manager (writer) and observers (readers).
#[derive(Clone, Default)]
pub struct Board(Arc<Mutex<Inner>>);

/// One Prometheus metric without labels: its HELP, TYPE and value lines.
fn metric(s: &mut String, name: &str, kind: &str, help: &str, value: u64) {
    s.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"));
}

fn unix(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs_f64()
}

/// The wall-clock time of a (future) `Instant`.
fn wall_clock(at: Instant) -> SystemTime {
    SystemTime::now() + at.saturating_duration_since(Instant::now())
}

/// A (future) `Instant` as Unix seconds, as clients are shown times.
pub(crate) fn unix_at(at: Instant) -> f64 {
    unix(wall_clock(at))
}

impl Board {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic elsewhere while holding it leaves a consistent-enough view; keep serving.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A message entered the queue (accepted or recovered).
    pub fn queued(&self, id: MsgId, from: &str, rcpts: &[String], received_at: SystemTime) {
        let v = MessageView {
            id: format!("{id:X}"),
            from: from.to_string(),
            received_at: unix(received_at),
            rcpts: rcpts.iter().map(|r| RcptView { rcpt: r.clone(), state: "queued", in_flight: false, attempts: Vec::new() }).collect(),
            next_attempt: None,
            finished: false,
        };
        self.lock().live.insert(id, v);
    }

    /// An attempt's outcome for one recipient.
    pub fn attempt(&self, id: MsgId, o: &Outcome) {
        let mut g = self.lock();
        if let Some(source) = &o.source {
            let status = o.status.as_str();
            *g.by_source.entry((source.clone(), o.pool.clone().unwrap_or_default(), status)).or_default() += 1;
        }
        let Some(m) = g.live.get_mut(&id) else { return };
        if let Some(r) = m.rcpts.iter_mut().find(|r| r.rcpt == o.rcpt) {
            r.in_flight = false;
            r.state = o.status.as_str();
            if r.attempts.len() >= ATTEMPTS_KEPT {
                r.attempts.remove(0);
            }
            r.attempts.push(AttemptView {
                ts: unix(SystemTime::now()),
                status: r.state,
                reply: o.reply.clone(),
                mx: o.mx.clone(),
                tls: o.tls.as_str(),
                source: o.source.clone(),
                pool: o.pool.clone(),
            });
        }
    }

    /// `rcpts` of message `id` were handed to the engine (`yes`), or given back by it
    /// untried (`!yes`); an attempt's outcome ends it too ([`Board::attempt`]).
    pub fn in_flight(&self, id: MsgId, rcpts: &[String], yes: bool) {
        let mut g = self.lock();
        let Some(m) = g.live.get_mut(&id) else { return };
        for r in m.rcpts.iter_mut().filter(|r| rcpts.contains(&r.rcpt)) {
            r.in_flight = yes;
        }
    }

    /// A recipient was bounced without an attempt (expiry).
    pub fn expired(&self, id: MsgId, rcpt: &str) {
        let mut g = self.lock();
        if let Some(r) = g.live.get_mut(&id).and_then(|m| m.rcpts.iter_mut().find(|r| r.rcpt == rcpt)) {
            r.in_flight = false;
            r.state = "bounced";
        }
    }

    /// The next attempt of a deferred message is due at `at`.
    pub fn retry_at(&self, id: MsgId, at: Instant) {
        if let Some(m) = self.lock().live.get_mut(&id) {
            m.next_attempt = Some(unix_at(at));
        }
    }

    /// Every recipient of the message has its final outcome.
    pub fn finished(&self, id: MsgId) {
        let mut g = self.lock();
        let Some(mut m) = g.live.remove(&id) else { return };
        m.finished = true;
        m.next_attempt = None;
        g.finished.insert(id, m);
        g.finished_order.push_back(id);
        while g.finished_order.len() > FINISHED_KEPT {
            if let Some(old) = g.finished_order.pop_front() {
                g.finished.remove(&old);
            }
        }
    }

    /// A destination is suspended until `until`.
    pub fn suspended(&self, domain: &str, until: Instant) {
        self.lock().suspended.insert(domain.to_string(), wall_clock(until));
    }

    /// Where to read the SMTP injection listener's counters for `/metrics`.
    pub fn set_injection_stats(&self, read: impl Fn() -> crate::smtp_server::StatsSnapshot + Send + Sync + 'static) {
        self.lock().injection = Some(Arc::new(read));
    }

    /// The engine's egress sources and pools, shown by [`Board::egress`].
    pub fn set_egress(&self, egress: Option<Arc<crate::egress::Egress>>) {
        self.lock().egress = egress;
    }

    /// Each egress source with its attempts, suspensions and warm-up; empty without sources.
    pub fn egress(&self) -> Vec<SourceView> {
        let g = self.lock();
        let Some(eg) = g.egress.clone() else { return Vec::new() };
        let warm = eg.warmup().map(|w| w.status()).unwrap_or_default();
        let now = SystemTime::now();
        eg.sources()
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let mut attempts = std::collections::BTreeMap::new();
                for ((src, _, status), n) in &g.by_source {
                    if **src == *s.name {
                        *attempts.entry(*status).or_default() += n;
                    }
                }
                let suffix = format!("/{}", s.name).to_ascii_lowercase();
                let suspended = g
                    .suspended
                    .iter()
                    .filter(|(k, &t)| t > now && k.ends_with(&suffix))
                    .map(|(k, &t)| (k[..k.len() - suffix.len()].to_string(), unix(t)))
                    .collect();
                SourceView {
                    name: s.name.to_string(),
                    address: s.addr,
                    ehlo: s.ehlo.clone(),
                    pools: eg.pools().iter().filter(|p| p.members.iter().any(|&(m, _)| m == i)).map(|p| p.name.to_string()).collect(),
                    attempts,
                    suspended,
                    warmup: warm.iter().filter(|w| *w.source == *s.name).cloned().collect(),
                }
            })
            .collect()
    }

    /// A destination's suspension was lifted.
    pub fn resumed(&self, domain: &str) {
        self.lock().suspended.remove(domain);
    }

    /// Publish the manager's counters (the engine's part only when `with_engine`: reading
    /// it costs a system call, so the manager refreshes it at most once a second).
    pub fn publish(&self, report: &ManagerReport, with_engine: bool) {
        let mut g = self.lock();
        let engine = std::mem::take(&mut g.report.engine);
        g.report = report.clone();
        if !with_engine {
            g.report.engine = engine;
        }
    }

    /// A message by its id as shown to clients (hexadecimal).
    pub fn message(&self, id: MsgId) -> Option<MessageView> {
        let g = self.lock();
        g.live.get(&id).or_else(|| g.finished.get(&id)).cloned()
    }

    /// Waiting recipients by destination domain.
    pub fn queues(&self) -> Vec<QueueView> {
        let g = self.lock();
        let mut by: BTreeMap<String, QueueView> = BTreeMap::new();
        for m in g.live.values() {
            for r in m.rcpts.iter().filter(|r| r.state == "queued" || r.state == "deferred") {
                let domain = crate::engine::domain_of(&r.rcpt).unwrap_or_default();
                let q = by.entry(domain.clone()).or_insert_with(|| QueueView { domain, ..QueueView::default() });
                q.recipients += 1;
                q.in_flight += u64::from(r.in_flight);
                if r.state == "deferred" && !r.in_flight {
                    q.deferred += 1;
                    if let Some(t) = m.next_attempt {
                        q.next_attempt = Some(q.next_attempt.map_or(t, |x: f64| x.min(t)));
                    }
                }
            }
        }
        let now = SystemTime::now();
        g.suspended.iter().filter(|(_, &t)| t > now).for_each(|(d, &t)| {
            let q = by.entry(d.clone()).or_insert_with(|| QueueView { domain: d.clone(), ..QueueView::default() });
            q.suspended_until = Some(unix(t));
        });
        by.into_values().collect()
    }

    /// Counters and gauges as Prometheus text (exposition format 0.0.4).
    pub fn metrics(&self) -> String {
        let g = self.lock();
        let t = &g.report;
        let (live, waiting) =
            (g.live.len(), g.live.values().flat_map(|m| &m.rcpts).filter(|r| r.state == "queued" || r.state == "deferred").count());
        let mut s = String::new();
        metric(&mut s, "mxpipe_messages_accepted_total", "counter", "Messages accepted into the spool.", t.accepted);
        metric(&mut s, "mxpipe_messages_recovered_total", "counter", "Unfinished messages recovered from the spool at start.", t.recovered);
        metric(&mut s, "mxpipe_recipients_delivered_total", "counter", "Recipients delivered.", t.delivered);
        metric(
            &mut s,
            "mxpipe_delivery_attempts_deferred_total",
            "counter",
            "Recipient attempts that ended deferred.",
            t.deferred_attempts,
        );
        metric(&mut s, "mxpipe_recipients_bounced_total", "counter", "Recipients bounced (permanent failure or expiry).", t.bounced);
        metric(&mut s, "mxpipe_recipients_expired_total", "counter", "Recipients bounced for exceeding the maximum age.", t.expired);
        metric(&mut s, "mxpipe_dsns_total", "counter", "Bounce messages (DSNs) queued.", t.dsns);
        metric(&mut s, "mxpipe_spool_errors_total", "counter", "Spool writes that failed.", t.spool_errors);
        metric(
            &mut s,
            "mxpipe_recipients_bounced_by_operator_total",
            "counter",
            "Recipients bounced by `mxpipe queue bounce`.",
            t.bounced_by_operator,
        );
        metric(&mut s, "mxpipe_delivery_log_errors_total", "counter", "Delivery-log lines that could not be written.", t.log_errors);
        metric(&mut s, "mxpipe_queue_messages", "gauge", "Messages in the queue (unfinished).", live as u64);
        metric(&mut s, "mxpipe_recipients_in_flight", "gauge", "Recipients with the delivery engine now.", t.in_flight);
        metric(&mut s, "mxpipe_queue_recipients", "gauge", "Recipients waiting (queued or deferred).", waiting as u64);
        let now = SystemTime::now();
        let suspended = g.suspended.values().filter(|&&t| t > now).count();
        metric(
            &mut s,
            "mxpipe_destinations_suspended",
            "gauge",
            "Destinations suspended after a 421 or a rate-limit reply.",
            suspended as u64,
        );
        if !g.by_source.is_empty() {
            s.push_str("# HELP mxpipe_egress_attempts_total Recipient attempts by egress source, pool and outcome.\n");
            s.push_str("# TYPE mxpipe_egress_attempts_total counter\n");
            for ((source, pool, status), n) in &g.by_source {
                s.push_str(&format!("mxpipe_egress_attempts_total{{source=\"{source}\",pool=\"{pool}\",status=\"{status}\"}} {n}\n"));
            }
        }
        let e = &t.engine;
        metric(&mut s, "mxpipe_connections_opened_total", "counter", "SMTP connections opened.", e.connections_opened);
        metric(&mut s, "mxpipe_connections_reused_total", "counter", "Idle connections reused.", e.connections_reused);
        metric(&mut s, "mxpipe_tls_handshakes_full_total", "counter", "Full TLS handshakes.", e.tls_full_handshakes);
        metric(&mut s, "mxpipe_tls_handshakes_resumed_total", "counter", "Resumed TLS handshakes.", e.tls_resumed_handshakes);
        metric(&mut s, "mxpipe_dns_lookups_total", "counter", "MX resolutions asked of the resolver.", e.dns_lookups);
        metric(&mut s, "mxpipe_dns_cache_hits_total", "counter", "MX resolutions answered from the cache.", e.dns_cache_hits);
        metric(&mut s, "mxpipe_dns_queries_total", "counter", "DNS queries sent.", e.dns_queries);
        metric(&mut s, "mxpipe_connect_failures_total", "counter", "TCP connects refused or timed out.", e.connect_failures);
        metric(&mut s, "mxpipe_transactions_total", "counter", "Message transactions sent over connections.", e.transactions);
        metric(&mut s, "mxpipe_mta_sts_fetches_total", "counter", "MTA-STS policy fetches started.", e.mta_sts_fetches);
        metric(&mut s, "mxpipe_mta_sts_fetch_failures_total", "counter", "MTA-STS policy fetches that failed.", e.mta_sts_fetch_failures);
        metric(&mut s, "mxpipe_dane_tlsa_lookups_total", "counter", "TLSA lookups sent for DANE.", e.tlsa_lookups);
        metric(&mut s, "mxpipe_dane_tlsa_failures_total", "counter", "TLSA lookups that failed or were DNSSEC-bogus.", e.tlsa_failures);
        metric(
            &mut s,
            "mxpipe_mta_sts_testing_failures_total",
            "counter",
            "Connections that an MTA-STS policy in testing mode would have refused.",
            e.mta_sts_testing_failures,
        );
        if let Some(read) = &g.injection {
            let i = read();
            let tls = i.starttls.handshakes_full + i.starttls.handshakes_resumed;
            metric(&mut s, "mxpipe_injection_connections_total", "counter", "SMTP injection connections accepted.", i.starttls.connections);
            metric(&mut s, "mxpipe_injection_sessions", "gauge", "SMTP injection sessions open now.", i.sessions_active);
            metric(&mut s, "mxpipe_injection_tls_handshakes_total", "counter", "STARTTLS handshakes on the injection listener.", tls);
            metric(
                &mut s,
                "mxpipe_injection_messages_total",
                "counter",
                "Messages accepted over SMTP injection (acknowledged after the spool commit).",
                i.messages,
            );
            metric(
                &mut s,
                "mxpipe_injection_requiretls_messages_total",
                "counter",
                "Of those, messages sent with MAIL FROM REQUIRETLS (RFC 8689).",
                i.requiretls_messages,
            );
            metric(
                &mut s,
                "mxpipe_injection_refused_total",
                "counter",
                "Messages SMTP injection answered with a temporary failure because the spool refused them.",
                i.store_errors,
            );
            metric(
                &mut s,
                "mxpipe_injection_rejected_clients_total",
                "counter",
                "Injection connections refused: client outside allowed_networks (no AUTH configured).",
                i.rejected_clients,
            );
            metric(&mut s, "mxpipe_injection_auth_ok_total", "counter", "AUTH PLAIN that succeeded.", i.auth_ok);
            metric(
                &mut s,
                "mxpipe_injection_auth_failed_total",
                "counter",
                "AUTH PLAIN that failed (wrong credentials, or the checks were busy).",
                i.auth_failed,
            );
            metric(
                &mut s,
                "mxpipe_injection_bad_commands_total",
                "counter",
                "Injection commands refused as bad syntax or out of sequence.",
                i.bad_commands,
            );
            metric(&mut s, "mxpipe_injection_timeouts_total", "counter", "Injection sessions closed for idling.", i.timeouts);
        }
        s.push_str(
            "# HELP mxpipe_outcomes_total Recipient outcomes by status and by the MX-prefix policy class of the host (none: no host reached).\n\
             # TYPE mxpipe_outcomes_total counter\n",
        );
        for (class, c) in &t.by_class {
            for (status, n) in [("delivered", c.delivered), ("deferred", c.deferred), ("bounced", c.bounced)] {
                s.push_str(&format!("mxpipe_outcomes_total{{status=\"{status}\",class=\"{class}\"}} {n}\n"));
            }
        }
        s
    }
}
