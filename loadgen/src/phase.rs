//! One port's measurement: build the TLS client (with a fresh ticket store, so one port's
//! tickets do not flatter the other's figures), warm up, then run connections closed-loop or
//! open-loop until the count or the window is up, and merge what the workers recorded.
//!
//! Timeline of a phase: `start`, the warm-up until `start + warmup` (counted apart, in no
//! figure), the measured window until `stop_at` (no attempt starts after it), and the tail:
//! attempts still running one timeout after `stop_at` are cut (`cut`), so a phase ends by
//! itself whatever the server does. The rate counts handshakes completed inside the window
//! over the window's length; the tail is reported apart.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use mxpipe::tls::{client_config, ClientOptions, ClientResumption, TicketStore, Verify};
use rustls_pki_types::ServerName;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::{sleep_until, Instant};

use crate::class::{ConnError, ErrorClass};
use crate::config::{Config, LoadgenError, Mode};
use crate::conn::{self, Attempt, Target, Transaction};
use crate::cpu::Split;
use crate::message::MessageTemplate;
use crate::progress::{Display, Live};
use crate::report::{PhaseFacts, PortReport, Recorder, Window};
use crate::verify_once::VerifyOnce;
use crate::TlsKind;

/// The limits of one phase, shared by its workers.
#[derive(Debug, Clone, Copy)]
struct Bounds {
    /// Attempts started before this are the warm-up's.
    warm_until: Instant,
    /// No attempt starts at or after this: the end of the measured window.
    stop_at: Instant,
    /// Attempts still running now are cut.
    hard_stop: Instant,
    /// At most this many measured attempts.
    count: Option<u64>,
    /// Bind to 127.0.0.2 ..= 127.0.0.(N+1), round-robin; 0 = no bind.
    source_spread: usize,
    window: Window,
}

impl Bounds {
    fn source(&self, seq: u64) -> Option<IpAddr> {
        (self.source_spread > 0).then(|| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (seq % self.source_spread as u64) as u8)))
    }
}

/// The measured attempts and the warm-up's, kept apart.
struct Recorded {
    measured: Recorder,
    warm: Recorder,
}

impl Recorded {
    fn new(window: Window) -> Recorded {
        Recorded { measured: Recorder::new(window), warm: Recorder::new(window) }
    }

    fn pick(&mut self, warming: bool) -> &mut Recorder {
        if warming {
            &mut self.warm
        } else {
            &mut self.measured
        }
    }

    fn merge(&mut self, o: &Recorded) {
        self.measured.merge(&o.measured);
        self.warm.merge(&o.warm);
    }
}

/// Measure one port and report it.
pub async fn run_phase(cfg: &Config, kind: TlsKind, addr: SocketAddr) -> Result<PortReport, LoadgenError> {
    // Deep enough that every concurrent connection can find a ticket (servers send two per
    // handshake; pool more than the concurrency so none is dropped while others are in use).
    let store = (cfg.resume != ClientResumption::Off).then(|| Arc::new(TicketStore::new(16, (cfg.concurrency * 2).max(16), 8)));
    let opts = ClientOptions { verify: cfg.verify.clone(), kx: cfg.kx, resumption: cfg.resume, tls12_only: false };
    let mut client = client_config(&opts, store.clone())?;
    let mut verifier = None;
    if let (true, Verify::Roots(roots)) = (cfg.verify_once, &cfg.verify) {
        let (c, v) = VerifyOnce::install(&client, roots.clone()).map_err(|e| LoadgenError::Invalid(format!("verify-once: {e}")))?;
        client = c;
        verifier = Some(v);
    }
    let server_name = ServerName::try_from(cfg.server_name.clone()).map_err(|_| LoadgenError::ServerName(cfg.server_name.clone()))?;
    let transaction = match cfg.mode {
        Mode::Handshake => None,
        Mode::Transaction { messages_per_conn, size } => {
            Some(Transaction { messages_per_conn, template: Arc::new(MessageTemplate::new(size, &cfg.mail_from, &cfg.rcpt_to)) })
        }
    };

    let live = Arc::new(Live::default());
    let display = Display::start(cfg.progress, format!("{addr} {}", kind.as_str()), live.clone());
    let cpu0 = Split::now(cfg.sink_threads.as_deref());
    let start = Instant::now();
    let warm_until = start + cfg.warmup;
    let stop_at = warm_until + cfg.phase_limit();
    let window = Window { start: warm_until.into_std(), end: stop_at.into_std() };
    let bounds =
        Bounds { warm_until, stop_at, hard_stop: stop_at + cfg.timeout, count: cfg.count, source_spread: cfg.source_spread, window };
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
        window: (window.start, window.end),
        panic_at: cfg.panic_at,
    });
    let recorded = match cfg.rate {
        None => closed_loop(target, bounds, cfg.concurrency, live).await,
        Some(rate) => open_loop(target, bounds, cfg.concurrency, rate, start, live).await,
    };
    let end = Instant::now();
    let (client_cpu_s, sink_cpu_s) = cpu0.since(cfg.sink_threads.as_deref());
    display.finish();
    let facts = PhaseFacts {
        // A count can end the window early: then it ends with the last attempt.
        window: end.min(stop_at).saturating_duration_since(warm_until),
        tail: end.saturating_duration_since(stop_at),
        warmup: cfg.warmup,
        wall_s: end.saturating_duration_since(start).as_secs_f64(),
        client_cpu_s,
        sink_cpu_s: cfg.sink_threads.as_ref().map(|_| sink_cpu_s),
        concurrency: cfg.concurrency,
        ticket_store: store.map(|s| s.stats()),
        verify_once: verifier.map(|v| v.stats()),
    };
    Ok(recorded.measured.into_port_report(addr, kind.as_str(), &recorded.warm, facts))
}

/// One attempt, cut at the hard stop. The attempt is passed by `&mut` so a cut attempt still
/// says whether its handshake had completed. A panic inside the attempt (a bug of this tool)
/// is caught and counted as `panic`, with what the attempt had done, so it loses no counts.
async fn bounded_attempt(t: &Target, b: &Bounds, seq: u64, a: &mut Attempt) -> Result<(), ConnError> {
    let run = AssertUnwindSafe(conn::run(t, b.source(seq), seq, a)).catch_unwind();
    tokio::select! {
        r = run => match r {
            Ok(r) => r,
            Err(panic) => {
                let why = panic.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| panic.downcast_ref::<String>().cloned());
                Err(ConnError::new(ErrorClass::Panic, format!("the attempt panicked: {}", why.unwrap_or_else(|| "(no message)".into()))))
            }
        },
        _ = sleep_until(b.hard_stop) => {
            Err(ConnError::new(ErrorClass::Cut, "still running one timeout after the end of the window"))
        }
    }
}

fn bump(live: &Live, a: &Attempt, r: &Result<(), ConnError>) {
    live.bump(a.tls.is_some(), a.tls.as_ref().is_some_and(|f| f.resumed), r.is_err(), a.messages);
}

/// Closed loop: `concurrency` workers, each starting its next connection when the previous
/// one ends; those started before the end of the warm-up are the warm-up's. Attempts are
/// numbered from one shared counter; another enforces `count` on the measured ones.
async fn closed_loop(target: Arc<Target>, b: Bounds, concurrency: usize, live: Arc<Live>) -> Recorded {
    let next = Arc::new(AtomicU64::new(0));
    let measured = Arc::new(AtomicU64::new(0));
    let mut workers = JoinSet::new();
    for _ in 0..concurrency {
        let (target, next, measured, live) = (target.clone(), next.clone(), measured.clone(), live.clone());
        workers.spawn(async move {
            let mut rec = Recorded::new(b.window);
            loop {
                let t0 = Instant::now();
                if t0 >= b.stop_at {
                    break;
                }
                let warming = t0 < b.warm_until;
                if !warming && b.count.is_some_and(|c| measured.fetch_add(1, Ordering::Relaxed) >= c) {
                    break;
                }
                let seq = next.fetch_add(1, Ordering::Relaxed);
                let mut a = Attempt::default();
                let r = bounded_attempt(&target, &b, seq, &mut a).await;
                rec.pick(warming).record(&a, &r, t0.elapsed(), None);
                bump(&live, &a, &r);
            }
            rec
        });
    }
    let mut total = Recorded::new(b.window);
    while let Some(joined) = workers.join_next().await {
        match joined {
            Ok(rec) => total.merge(&rec),
            // Panics inside attempts are caught there; this would be one in the counting.
            Err(e) => eprintln!("mxpipe-loadgen: a worker failed: {e}"),
        }
    }
    total
}

/// What an open-loop connection task hands back: the attempt, its result, its latency from
/// the due time, its queueing, and whether it was the warm-up's.
type Finished = (Attempt, Result<(), ConnError>, Duration, Duration, bool);

/// Open loop: connection i is due at `start + i/rate`, whatever the server's pace; at most
/// `concurrency` are in flight. Latency counts from the due time, so time spent waiting for a
/// free slot shows in the total (no coordinated omission). Connections due before the end of
/// the window that are still waiting for a slot when it ends are `missed`, each counted at
/// the lower bound of its latency (the end of the window minus its due time).
async fn open_loop(target: Arc<Target>, b: Bounds, concurrency: usize, rate: f64, start: Instant, live: Arc<Live>) -> Recorded {
    let slots = Arc::new(Semaphore::new(concurrency));
    let mut running: JoinSet<Finished> = JoinSet::new();
    let mut rec = Recorded::new(b.window);
    let record = |rec: &mut Recorded, joined: Result<Finished, tokio::task::JoinError>| match joined {
        Ok((a, r, total, queue, warming)) => rec.pick(warming).record(&a, &r, total, Some(queue)),
        Err(e) => eprintln!("mxpipe-loadgen: a connection task failed: {e}"),
    };
    let due_of = |i: u64| start + Duration::from_secs_f64(i as f64 / rate);
    let mut i = 0u64;
    let mut measured = 0u64;
    'schedule: loop {
        let due = due_of(i);
        if due >= b.stop_at {
            break;
        }
        let warming = due < b.warm_until;
        if !warming && b.count.is_some_and(|c| measured >= c) {
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
                    count_missed(&mut rec, &b, i, measured, due_of);
                    break 'schedule;
                }
            }
        };
        let Ok(permit) = permit else { break };
        let (target, live, seq) = (target.clone(), live.clone(), i);
        running.spawn(async move {
            let queue = Instant::now().saturating_duration_since(due);
            let mut a = Attempt::default();
            let r = bounded_attempt(&target, &b, seq, &mut a).await;
            drop(permit);
            bump(&live, &a, &r);
            (a, r, Instant::now().saturating_duration_since(due), queue, warming)
        });
        i += 1;
        measured += u64::from(!warming);
    }
    while let Some(j) = running.join_next().await {
        record(&mut rec, j);
    }
    rec
}

/// Connections `first..` due before the end of the window (and within the count), none
/// started: each is missed, at latency `stop_at - due`. At a high rate these are many, so past
/// [`MISSED_EXACT`] of them they are recorded in runs of equal weight (the histogram keeps 3
/// significant digits anyway).
fn count_missed(rec: &mut Recorded, b: &Bounds, first: u64, measured: u64, due_of: impl Fn(u64) -> Instant) {
    let mut i = first;
    let mut measured = measured;
    let mut step = 1u64;
    let mut seen = 0u64;
    loop {
        let due = due_of(i);
        if due >= b.stop_at {
            break;
        }
        let warming = due < b.warm_until;
        let n = if warming {
            step
        } else {
            let left = b.count.map_or(u64::MAX, |c| c.saturating_sub(measured));
            step.min(left)
        };
        if n == 0 {
            break;
        }
        rec.pick(warming).record_missed(b.stop_at.saturating_duration_since(due), n);
        measured += if warming { 0 } else { n };
        i += n;
        seen += n;
        if seen >= MISSED_EXACT {
            step = (seen / MISSED_EXACT).max(1) * 16;
        }
    }
}

/// Missed connections recorded one by one before they are recorded in runs.
const MISSED_EXACT: u64 = 100_000;
