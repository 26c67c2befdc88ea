//! mxpipe-loadgen: measures TLS-handshake throughput (and, optionally, SMTP transaction
//! throughput) against an SMTP server on a STARTTLS port (25-style) and an implicit-TLS port
//! (26/465-style), with full against resumed handshakes and latency percentiles.
//!
//! The library does all the work; the `mxpipe-loadgen` binary only parses flags into a
//! [`Config`], calls [`run`] and prints the [`Report`]. Modules:
//! - [`config`]: what to measure and how hard ([`Config`], [`Mode`]), and its validation.
//! - [`cli`]: what the binary's entry points share (runtime, printing a report, `--ca`).
//! - [`class`]: the error classes every failed attempt is counted under, and how an I/O or
//!   TLS error is mapped to one.
//! - [`message`]: the RFC 5322 test message and SMTP dot-stuffing (pure, unit-tested).
//! - [`conn`]: one connection's SMTP and TLS steps, with per-step timeouts.
//! - [`wire`]: bytes in and out of an SMTP connection (bounded reply reader, EHLO, the wait
//!   for the server's close), for both the handshake and the injection loads.
//! - [`phase`]: one port's measurement: closed-loop workers or an open-loop schedule.
//! - [`report`]: histograms and counters, merged into a [`Report`] (table or JSON).
//! - [`chart`]: the sweep's PNG chart (plotters, bitmap backend, a bundled font).
//! - [`sweep`]: `mxpipe-loadgen sweep`, one run per step of load, stopping at the knee.
//! - [`progress`]: the live one-line display on a terminal's stderr.
//! - [`embedded`]: mxpipe's own sink started in-process (`--embedded-sink`), on its own runtime.
//! - [`cpu`]: CPU time of a group of threads (the embedded sink's, kept out of the client's).
//! - [`timed`]: a TCP stream that notes the server's first byte (the `ttfb` row).
//! - [`verify_once`]: `--verify-once`, a chain verified once, every signature still checked.
//! - [`inject`]: the injection load (`--mode inject`, `--mode http`), with its own report.
//!
//! Accounting invariant, per port: every attempt (a TCP connect that was started) ends as
//! exactly one success or exactly one error class, so `attempts == successes + errors`.
//! `handshakes` counts completed TLS handshakes, independently of how the attempt ended: a
//! connection whose handshake succeeded but whose QUIT failed counts one handshake *and*
//! one error. `handshakes == full + resumed`. In open loop, connections due but never started
//! (every slot busy) are `missed`: `scheduled == attempts + missed`. Warm-up attempts are
//! counted apart (`warmup_attempts`), never in the figures.

pub mod chart;
pub mod class;
pub mod cli;
pub mod config;
pub mod conn;
pub mod cpu;
pub mod embedded;
pub mod inject;
pub mod message;
pub mod phase;
pub mod progress;
pub mod report;
pub mod sweep;
mod table;
pub mod timed;
pub mod verify_once;
pub mod wire;

pub use class::{ErrorClass, ErrorCounts};
pub use config::{Config, LoadgenError, Mode, PortOrder};
pub use report::{Breakdown, Percentiles, PortReport, Report};

use std::net::SocketAddr;

/// Which TLS flavour a port speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsKind {
    /// Plaintext SMTP, then `STARTTLS` (RFC 3207), as on port 25.
    StartTls,
    /// TLS from the first byte (RFC 8314), as on port 465 or this project's port 26.
    Implicit,
}

impl TlsKind {
    /// The name used in reports: `"starttls"` or `"implicit"`.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsKind::StartTls => "starttls",
            TlsKind::Implicit => "implicit",
        }
    }
}

/// Measure every configured port, one after the other (in [`Config::order`]), so the phases
/// do not disturb each other. Runs on the caller's tokio runtime (a
/// multi-thread runtime gives the client more than one core). Always ends by itself: each
/// phase is bounded by [`Config::duration`] and/or [`Config::count`], capped at
/// [`config::MAX_DURATION`], plus one [`Config::timeout`] for connections in flight.
///
/// Errors are for a run that cannot start (bad configuration, unresolvable host, TLS
/// configuration rejected); failed connections are counted in the report, not returned.
pub async fn run(cfg: &Config) -> Result<Report, LoadgenError> {
    cfg.validate()?;
    let mut targets: Vec<(TlsKind, u16)> = Vec::new();
    if let Some(p) = cfg.starttls_port {
        targets.push((TlsKind::StartTls, p));
    }
    if let Some(p) = cfg.implicit_port {
        targets.push((TlsKind::Implicit, p));
    }
    if cfg.order == PortOrder::ImplicitFirst {
        targets.reverse();
    }
    let ip = config::resolve(&cfg.host).await?;
    cfg.validate_source_spread(ip)?;

    let cpu0 = cpu::Split::now(cfg.sink_threads.as_deref());
    let t0 = std::time::Instant::now();
    let mut ports = Vec::with_capacity(targets.len());
    for (kind, port) in targets {
        let addr = SocketAddr::new(ip, port);
        ports.push(phase::run_phase(cfg, kind, addr).await?);
    }
    let (client_cpu_s, sink_cpu_s) = cpu0.since(cfg.sink_threads.as_deref());
    let duration_s = t0.elapsed().as_secs_f64();
    let mut warnings = Vec::new();
    if cpu::saturated(client_cpu_s, duration_s, cpu::cores()) {
        warnings.push(report::saturation_warning(client_cpu_s, duration_s));
    }
    Ok(Report {
        ports,
        client_cpu_s,
        sink_cpu_s: cfg.sink_threads.as_ref().map(|_| sink_cpu_s),
        embedded_sink: None,
        duration_s,
        cores: cpu::cores(),
        warnings,
        settings: report::Settings::of(cfg),
    })
}
