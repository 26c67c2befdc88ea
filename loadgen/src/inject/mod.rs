//! The injection load (`--mode inject`, `--mode http`): many messages a connection into an
//! MTA's relay or submission port, or into mxpipe's HTTP API, measuring acknowledged messages
//! per second and the time from the end of a message to its acknowledgement.
//!
//! - [`plan`]: what message number `seq` is (recipients spread over domains, a size from the
//!   distribution); pure.
//! - [`smtp`]: one SMTP connection: EHLO once, optional STARTTLS and AUTH PLAIN, then per
//!   message MAIL, RCPTs and DATA in one write (RFC 2920), or BDAT with the message.
//! - [`http`]: one keep-alive HTTP/1.1 connection posting batches to `/v1/messages`.
//! - [`report`]: per-worker counters merged into an [`InjectReport`].
//! - [`cli`]: the flags of these modes and their entry point from the binary.
//!
//! `concurrency` workers each run one connection after another (closed loop). Messages are
//! numbered from one shared counter, so `count` is exact over all workers and the recipient
//! spread is even. Bounded: no message starts after `duration` (or [`MAX_DURATION`]), every
//! step has the step timeout, and a worker whose connections fail [`MAX_FAILED_IN_A_ROW`]
//! times in a row without an acknowledgement stops.
//!
//! This module must not touch the handshake load's phases or report; it shares only the error
//! classes, the message helpers and the percentiles type.

pub mod cli;
pub mod http;
pub mod plan;
pub mod report;
pub mod smtp;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mxpipe::sys::CpuTime;
use rustls_pki_types::ServerName;
use tokio_rustls::TlsConnector;

pub use plan::{Domains, Plan, SizeDist};
pub use report::{InjectReport, InjectSettings, Recorder};

use crate::config::{LoadgenError, DEFAULT_DURATION, MAX_DURATION};

/// Failed connections in a row (none acknowledging a message) after which a worker stops.
pub const MAX_FAILED_IN_A_ROW: u32 = 10;
/// Pause after a failed connection, so a target that is down is not hammered.
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// A TLS client and the name it asks for: STARTTLS on the SMTP door, HTTPS on the HTTP one.
#[derive(Clone)]
pub struct StartTls {
    pub connector: TlsConnector,
    pub server_name: ServerName<'static>,
}

impl std::fmt::Debug for StartTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StartTls({:?})", self.server_name)
    }
}

/// Which door and its own settings.
#[derive(Debug, Clone)]
pub enum Door {
    /// An SMTP relay or submission port.
    Smtp {
        ehlo_name: String,
        /// Upgrade with STARTTLS before anything else (fails if not offered).
        starttls: Option<StartTls>,
        /// AUTH PLAIN with this user and password after EHLO (and after TLS).
        auth: Option<(String, String)>,
        /// Send each message with `BDAT n LAST` (fails if CHUNKING is not offered).
        bdat: bool,
    },
    /// mxpipe's HTTP API.
    Http {
        /// Messages per request (1 to the API's `MAX_BATCH`).
        batch: usize,
        /// Bearer token (the API's `inject` scope), when it requires one.
        token: Option<String>,
        /// HTTPS: TLS from the first byte (the API with `[inject.http.tls]`), one handshake
        /// a connection.
        tls: Option<StartTls>,
    },
}

/// Everything one injection run needs.
#[derive(Debug, Clone)]
pub struct InjectConfig {
    /// Server address or DNS name (resolved once).
    pub host: String,
    pub port: u16,
    pub door: Door,
    /// Connections at once (each a worker running one connection after another).
    pub concurrency: usize,
    /// Messages in all at most.
    pub count: Option<u64>,
    /// No message starts after this; default 10 s, or up to [`MAX_DURATION`] with `count`.
    pub duration: Option<Duration>,
    /// Messages per connection at most; `None`: a connection is kept for the whole run.
    pub messages_per_conn: Option<u64>,
    /// Limit for each step (connect, each reply, each write, the TLS handshake).
    pub timeout: Duration,
    /// What to send.
    pub plan: Arc<Plan>,
    /// For the report: the size distribution and the number of domains.
    pub sizes: SizeDist,
    pub domains: usize,
}

impl InjectConfig {
    fn limit(&self) -> Duration {
        match (self.duration, self.count) {
            (Some(d), _) => d.min(MAX_DURATION),
            (None, Some(_)) => MAX_DURATION,
            (None, None) => DEFAULT_DURATION,
        }
    }

    /// Check what does not need the network.
    pub fn validate(&self) -> Result<(), LoadgenError> {
        let bad = |s: &str| Err(LoadgenError::Invalid(s.to_string()));
        if self.port == 0 {
            return bad("give --port (the SMTP or HTTP port to inject into)");
        }
        if self.host.trim().is_empty() {
            return bad("the host is empty");
        }
        if self.concurrency == 0 || self.concurrency > 100_000 {
            return bad("concurrency must be 1 to 100000");
        }
        if self.timeout.is_zero() || self.duration == Some(Duration::ZERO) {
            return bad("timeout and duration must be more than 0 seconds");
        }
        if self.messages_per_conn == Some(0) {
            return bad("messages per connection must be at least 1");
        }
        match &self.door {
            Door::Smtp { ehlo_name, .. } if ehlo_name.is_empty() || ehlo_name.bytes().any(|b| b <= b' ' || b == 0x7f) => {
                bad("the EHLO name must be non-empty, without spaces or controls")
            }
            Door::Http { batch, .. } if *batch == 0 || *batch > mxpipe::inject::http::MAX_BATCH => {
                Err(LoadgenError::Invalid(format!("--batch: give 1 to {}", mxpipe::inject::http::MAX_BATCH)))
            }
            Door::Http { token: Some(t), .. } if t.is_empty() || t.bytes().any(|b| !b.is_ascii_graphic()) => {
                bad("the token must be printable ASCII without spaces")
            }
            _ => Ok(()),
        }
    }

    fn settings(&self) -> InjectSettings {
        let (door, starttls, auth, bdat, batch) = match &self.door {
            Door::Smtp { starttls, auth, bdat, .. } => ("smtp", starttls.is_some(), auth.is_some(), *bdat, 0),
            Door::Http { batch, tls, .. } => (if tls.is_some() { "https" } else { "http" }, false, false, false, *batch),
        };
        InjectSettings {
            door: door.into(),
            concurrency: self.concurrency,
            count: self.count,
            duration_s: self.duration.map(|d| d.as_secs_f64()),
            messages_per_conn: self.messages_per_conn,
            rcpts_per_message: self.plan.rcpts_per_message(),
            domains: self.domains,
            sizes: self.sizes.entries.clone(),
            starttls,
            auth,
            bdat,
            batch,
        }
    }
}

/// The message numbers, shared by every worker: `count` exact over all of them, none handed
/// out after the deadline.
#[derive(Debug)]
pub struct Tickets {
    next: AtomicU64,
    count: Option<u64>,
    deadline: Instant,
    /// When the run started, for the time of the last acknowledgement.
    pub t0: Instant,
}

impl Tickets {
    /// Numbers from 0, at most `count`, until `deadline`.
    pub fn new(count: Option<u64>, t0: Instant, deadline: Instant) -> Tickets {
        Tickets { next: AtomicU64::new(0), count, deadline, t0 }
    }

    /// Up to `n` consecutive numbers, or `None` when the run is over.
    pub fn take(&self, n: u64) -> Option<std::ops::Range<u64>> {
        if Instant::now() >= self.deadline {
            return None;
        }
        let start = self.next.fetch_add(n, Ordering::Relaxed);
        match self.count {
            Some(c) if start >= c => None,
            Some(c) => Some(start..(start + n).min(c)),
            None => Some(start..start + n),
        }
    }

    /// Whether numbers may still be handed out (a worker then opens a new connection).
    pub fn open(&self) -> bool {
        Instant::now() < self.deadline && self.count.is_none_or(|c| self.next.load(Ordering::Relaxed) < c)
    }
}

/// Run the load and report. Errors are for a run that cannot start (bad settings, a host
/// that does not resolve); failures of connections and messages are counted in the report.
pub async fn run(cfg: &InjectConfig) -> Result<InjectReport, LoadgenError> {
    cfg.validate()?;
    let ip = crate::config::resolve(&cfg.host).await?;
    let addr = SocketAddr::new(ip, cfg.port);
    let cpu0 = CpuTime::now();
    let t0 = Instant::now();
    let tickets = Arc::new(Tickets::new(cfg.count, t0, t0 + cfg.limit()));
    let cfg = Arc::new(cfg.clone());
    let mut tasks = Vec::with_capacity(cfg.concurrency);
    for _ in 0..cfg.concurrency {
        tasks.push(tokio::spawn(worker(cfg.clone(), addr, tickets.clone())));
    }
    let mut recs = Vec::with_capacity(tasks.len());
    let mut panicked = 0;
    for t in tasks {
        match t.await {
            Ok(r) => recs.push(r),
            Err(_) => panicked += 1,
        }
    }
    let cpu = CpuTime::now().since(&cpu0).total_secs();
    Ok(InjectReport::of(addr.to_string(), cfg.settings(), &recs, panicked, cpu, t0.elapsed()))
}

/// One worker: connections one after another until the tickets run out.
async fn worker(cfg: Arc<InjectConfig>, addr: SocketAddr, tickets: Arc<Tickets>) -> Recorder {
    let mut rec = Recorder::default();
    let mut failed_in_a_row = 0;
    while tickets.open() {
        rec.connections += 1;
        let acked_before = rec.acked;
        let r = match &cfg.door {
            Door::Smtp { .. } => smtp::connection(&cfg, addr, &tickets, &mut rec).await,
            Door::Http { .. } => http::connection(&cfg, addr, &tickets, &mut rec).await,
        };
        match r {
            Ok(()) => failed_in_a_row = 0,
            Err(e) => {
                rec.conn_error(&e);
                if rec.acked > acked_before {
                    failed_in_a_row = 0;
                } else {
                    failed_in_a_row += 1;
                    if failed_in_a_row >= MAX_FAILED_IN_A_ROW {
                        rec.gave_up = true;
                        break;
                    }
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            }
        }
    }
    rec
}
