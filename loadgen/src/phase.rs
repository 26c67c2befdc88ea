//! One port's measurement: build the TLS client (with a fresh ticket store, so one port's
//! tickets do not flatter the other's figures), run connections closed-loop or open-loop
//! until the count or the time is up, and merge what the workers recorded.
//!
//! Bounds: no connection starts after the phase limit; connections still in flight one
//! timeout later are cut and counted as `timeout`, so a phase ends by itself whatever the
//! server does.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mxpipe::sys::CpuTime;
use mxpipe::tls::{client_config, ClientOptions, ClientResumption, TicketStore};
use rustls_pki_types::ServerName;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::{sleep_until, Instant};

use crate::class::{ConnError, ErrorClass};
use crate::config::{Config, LoadgenError, Mode};
use crate::conn::{self, Attempt, Target, Transaction};
use crate::message::MessageTemplate;
use crate::progress::{Display, Live};
use crate::report::{PortReport, Recorder};
use crate::TlsKind;

/// The limits of one phase, shared by its workers.
#[derive(Debug, Clone, Copy)]
struct Bounds {
    /// No attempt starts at or after this.
    stop_at: Instant,
    /// Attempts still running now are cut.
    hard_stop: Instant,
    /// At most this many attempts.
    count: Option<u64>,
    /// Bind to 127.0.0.2 ..= 127.0.0.(N+1), round-robin; 0 = no bind.
    source_spread: usize,
}

impl Bounds {
    fn source(&self, seq: u64) -> Option<IpAddr> {
        (self.source_spread > 0).then(|| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (seq % self.source_spread as u64) as u8)))
    }
}

/// Measure one port and report it.
pub async fn run_phase(cfg: &Config, kind: TlsKind, addr: SocketAddr) -> Result<PortReport, LoadgenError> {
    // Deep enough that every concurrent connection can find a ticket (servers send two per
    // handshake; pool more than the concurrency so none is dropped while others are in use).
    let store = (cfg.resume != ClientResumption::Off).then(|| Arc::new(TicketStore::new(16, (cfg.concurrency * 2).max(16), 8)));
    let opts = ClientOptions { verify: cfg.verify.clone(), kx: cfg.kx, resumption: cfg.resume, tls12_only: false };
    let client = client_config(&opts, store.clone())?;
    let server_name = ServerName::try_from(cfg.server_name.clone()).map_err(|_| LoadgenError::ServerName(cfg.server_name.clone()))?;
    let transaction = match cfg.mode {
        Mode::Handshake => None,
        Mode::Transaction { messages_per_conn, size } => {
            Some(Transaction { messages_per_conn, template: Arc::new(MessageTemplate::new(size, &cfg.mail_from, &cfg.rcpt_to)) })
        }
    };
    let target = Arc::new(Target {
        kind,
        addr,
        server_name,
        connector: tokio_rustls::TlsConnector::from(client),
        timeout: cfg.timeout,
        linger0: cfg.linger0,
        ehlo_name: cfg.ehlo_name.clone(),
        mail_from: cfg.mail_from.clone(),
        rcpt_to: cfg.rcpt_to.clone(),
        transaction,
    });

    let live = Arc::new(Live::default());
    let display = Display::start(cfg.progress, format!("{addr} {}", kind.as_str()), live.clone());
    let cpu0 = CpuTime::now();
    let start = Instant::now();
    let limit = cfg.phase_limit();
    let bounds =
        Bounds { stop_at: start + limit, hard_stop: start + limit + cfg.timeout, count: cfg.count, source_spread: cfg.source_spread };
    let recorder = match cfg.rate {
        None => closed_loop(target, bounds, cfg.concurrency, live).await,
        Some(rate) => open_loop(target, bounds, cfg.concurrency, rate, start, limit, live).await,
    };
    let duration = start.elapsed();
    let cpu = CpuTime::now().since(&cpu0).total_secs();
    display.finish();
    Ok(recorder.into_port_report(addr, kind.as_str(), duration, cpu, store.map(|s| s.stats())))
}

/// One attempt, cut at the hard stop. The attempt is passed by `&mut` so a cut attempt still
/// says whether its handshake had completed.
async fn bounded_attempt(t: &Target, b: &Bounds, seq: u64, a: &mut Attempt) -> Result<(), ConnError> {
    tokio::select! {
        r = conn::run(t, b.source(seq), seq, a) => r,
        _ = sleep_until(b.hard_stop) => {
            Err(ConnError::new(ErrorClass::Timeout, "still running one timeout after the end of the phase"))
        }
    }
}

fn bump(live: &Live, a: &Attempt, r: &Result<(), ConnError>) {
    live.bump(a.tls.is_some(), a.tls.as_ref().is_some_and(|f| f.resumed), r.is_err(), a.messages);
}

/// Closed loop: `concurrency` workers, each starting its next connection when the previous
/// one ends. Attempts are numbered from one shared counter, which also enforces `count`.
async fn closed_loop(target: Arc<Target>, b: Bounds, concurrency: usize, live: Arc<Live>) -> Recorder {
    let next = Arc::new(AtomicU64::new(0));
    let mut workers = JoinSet::new();
    for _ in 0..concurrency {
        let (target, next, live) = (target.clone(), next.clone(), live.clone());
        workers.spawn(async move {
            let mut rec = Recorder::new();
            while Instant::now() < b.stop_at {
                let seq = next.fetch_add(1, Ordering::Relaxed);
                if b.count.is_some_and(|c| seq >= c) {
                    break;
                }
                let t0 = Instant::now();
                let mut a = Attempt::default();
                let r = bounded_attempt(&target, &b, seq, &mut a).await;
                rec.record(&a, &r, t0.elapsed(), None);
                bump(&live, &a, &r);
            }
            rec
        });
    }
    let mut total = Recorder::new();
    while let Some(joined) = workers.join_next().await {
        match joined {
            Ok(rec) => total.merge(&rec),
            // A worker cannot panic on server input; if one did, say so rather than hide it.
            Err(e) => eprintln!("mxpipe-loadgen: a worker failed: {e}"),
        }
    }
    total
}

/// What an open-loop connection task hands back.
type Finished = (Attempt, Result<(), ConnError>, Duration, Duration);

/// Open loop: connection i is due at `start + i/rate`, whatever the server's pace; at most
/// `concurrency` are in flight. Latency counts from the due time, so time spent waiting for a
/// free slot shows in the total (no coordinated omission). Connections still waiting for a
/// slot at the end are reported as `missed`.
async fn open_loop(
    target: Arc<Target>,
    b: Bounds,
    concurrency: usize,
    rate: f64,
    start: Instant,
    limit: Duration,
    live: Arc<Live>,
) -> Recorder {
    let slots = Arc::new(Semaphore::new(concurrency));
    let mut running: JoinSet<Finished> = JoinSet::new();
    let mut rec = Recorder::new();
    let record = |rec: &mut Recorder, joined: Result<Finished, tokio::task::JoinError>| match joined {
        Ok((a, r, total, queue)) => rec.record(&a, &r, total, Some(queue)),
        Err(e) => eprintln!("mxpipe-loadgen: a connection task failed: {e}"),
    };
    // Everything due before the limit, within the count.
    let due_total = {
        let n = (limit.as_secs_f64() * rate).ceil();
        let n = if n.is_finite() && n >= 0.0 { n.min(u64::MAX as f64) as u64 } else { u64::MAX };
        b.count.map_or(n, |c| c.min(n))
    };
    let mut started = 0u64;
    let mut missed = 0u64;
    'schedule: while started < due_total {
        let due = start + Duration::from_secs_f64(started as f64 / rate);
        if due >= b.stop_at {
            break;
        }
        // Wait for the due time, counting connections that finish meanwhile.
        loop {
            tokio::select! {
                Some(j) = running.join_next() => record(&mut rec, j),
                _ = sleep_until(due) => break,
            }
        }
        let permit = loop {
            tokio::select! {
                p = slots.clone().acquire_owned() => break p,
                Some(j) = running.join_next() => record(&mut rec, j),
                _ = sleep_until(b.stop_at) => {
                    missed = due_total - started;
                    break 'schedule;
                }
            }
        };
        let Ok(permit) = permit else { break };
        let (target, live, seq) = (target.clone(), live.clone(), started);
        running.spawn(async move {
            let queue = Instant::now().saturating_duration_since(due);
            let mut a = Attempt::default();
            let r = bounded_attempt(&target, &b, seq, &mut a).await;
            drop(permit);
            bump(&live, &a, &r);
            (a, r, Instant::now().saturating_duration_since(due), queue)
        });
        started += 1;
    }
    while let Some(j) = running.join_next().await {
        record(&mut rec, j);
    }
    rec.missed = missed;
    rec
}
