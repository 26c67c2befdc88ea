//! `mxpipe-loadgen sweep`: one measurement per step of load, to find the knee of the curve
//! rather than read one operating point. Steps are concurrencies (closed loop) or offered
//! rates (open loop, coordinated-omission corrected as in a single run); each step is a whole
//! [`crate::run`] (both ports, each with its warm-up and window), once per resumption series
//! (`off` gives full handshakes, `tickets` resumed ones). A series stops at the knee: the first
//! step where a port's p99 (the `all` row: failures and missed connections included) passes
//! the bound, or errors or missed connections appear; that step is reported and marked.

use std::fmt::Write as _;
use std::time::Duration;

use mxpipe::tls::ClientResumption;
use serde::Serialize;

use crate::config::{Config, LoadgenError};
use crate::report::{PortReport, Report};

/// Most steps one sweep may have, so it always ends in bounded time.
pub const MAX_STEPS: usize = 64;

/// What varies from step to step.
#[derive(Debug, Clone, PartialEq)]
pub enum Steps {
    /// Closed loop at each concurrency.
    Concurrency(Vec<usize>),
    /// Open loop at each rate (connections per second), at most [`Config::concurrency`] in
    /// flight.
    Rate(Vec<f64>),
}

impl Steps {
    fn len(&self) -> usize {
        match self {
            Steps::Concurrency(v) => v.len(),
            Steps::Rate(v) => v.len(),
        }
    }
}

/// A sweep: the base configuration, the steps, the knee's bound and the series.
#[derive(Debug, Clone)]
pub struct SweepConfig {
    /// Everything but the step's variable and the resumption mode.
    pub base: Config,
    pub steps: Steps,
    /// A step whose p99 passes this is the knee.
    pub p99_bound: Option<Duration>,
    /// One series per resumption mode.
    pub series: Vec<ClientResumption>,
}

/// One port at one step.
#[derive(Debug, Clone, Serialize)]
pub struct StepPort {
    pub tls: String,
    /// Connections started in the window (the warm-up's apart, in `warmup_attempts`).
    pub attempts: u64,
    pub warmup_attempts: u64,
    /// Attempts that went through every step (`attempts == successes + errors`).
    pub successes: u64,
    /// Handshakes completed inside the window, over its length.
    pub handshakes_per_s: f64,
    /// Handshakes completed inside the window, and that window's length.
    pub handshakes_in_window: u64,
    pub window_s: f64,
    pub handshakes: u64,
    pub full: u64,
    pub resumed: u64,
    pub errors: u64,
    pub missed: u64,
    /// The `all` latency row: every scheduled connection.
    pub p50_us: u64,
    pub p99_us: u64,
    pub client_cpu_s: f64,
}

impl StepPort {
    fn of(p: &PortReport) -> StepPort {
        StepPort {
            tls: p.tls.clone(),
            attempts: p.attempts,
            warmup_attempts: p.warmup.attempts,
            successes: p.successes,
            handshakes_per_s: p.handshakes_per_s,
            handshakes_in_window: p.handshakes_in_window,
            window_s: p.window_s,
            handshakes: p.handshakes,
            full: p.full,
            resumed: p.resumed,
            errors: p.errors,
            missed: p.missed,
            p50_us: p.latency_us.p50,
            p99_us: p.latency_us.p99,
            client_cpu_s: p.client_cpu_s,
        }
    }
}

/// One step of one series.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// The concurrency or the offered rate.
    pub load: f64,
    pub ports: Vec<StepPort>,
    /// Why this step is the knee, if it is.
    pub knee: Option<String>,
    /// The run's warnings (client saturated...).
    pub warnings: Vec<String>,
}

/// The steps measured with one resumption mode.
#[derive(Debug, Clone, Serialize)]
pub struct Series {
    pub resume: String,
    pub steps: Vec<Step>,
}

/// A whole sweep.
#[derive(Debug, Clone, Serialize)]
pub struct SweepReport {
    /// `concurrency` or `rate`.
    pub load: &'static str,
    pub p99_bound_us: Option<u64>,
    pub series: Vec<Series>,
    pub settings: crate::report::Settings,
}

impl SweepConfig {
    /// Check the steps and the series, and the base configuration.
    pub fn validate(&self) -> Result<(), LoadgenError> {
        let bad = |s: &str| Err(LoadgenError::Invalid(s.to_string()));
        if self.steps.len() == 0 || self.steps.len() > MAX_STEPS {
            return bad("a sweep needs from 1 to 64 steps");
        }
        if self.series.is_empty() {
            return bad("a sweep needs at least one resumption series");
        }
        match &self.steps {
            Steps::Concurrency(v) if v.iter().any(|&c| c == 0 || c > 100_000) => bad("concurrency steps must be from 1 to 100000"),
            Steps::Rate(v) if v.iter().any(|r| !(r.is_finite() && *r > 0.0)) => bad("rate steps must be above 0"),
            _ => self.base.validate(),
        }
    }

    fn step_config(&self, resume: ClientResumption, i: usize) -> (Config, f64) {
        let mut c = self.base.clone();
        c.resume = resume;
        let load = match &self.steps {
            Steps::Concurrency(v) => {
                c.concurrency = v[i];
                c.rate = None;
                v[i] as f64
            }
            Steps::Rate(v) => {
                c.rate = Some(v[i]);
                v[i]
            }
        };
        (c, load)
    }
}

/// Why `r` is the knee, if it is.
fn knee(r: &Report, bound: Option<Duration>) -> Option<String> {
    for p in &r.ports {
        if p.errors > 0 {
            return Some(format!("{}: {} errors", p.tls, p.errors));
        }
        if p.missed > 0 {
            return Some(format!("{}: {} missed", p.tls, p.missed));
        }
        if let Some(b) = bound {
            if p.latency_us.p99 as u128 > b.as_micros() {
                return Some(format!("{}: p99 {} us above {} us", p.tls, p.latency_us.p99, b.as_micros()));
            }
        }
    }
    None
}

/// Run the sweep; `on_step` sees each step as it is measured (for progress).
pub async fn sweep(sc: &SweepConfig, mut on_step: impl FnMut(&str, &Step)) -> Result<SweepReport, LoadgenError> {
    sc.validate()?;
    let mut series = Vec::with_capacity(sc.series.len());
    for &resume in &sc.series {
        let mut steps = Vec::new();
        for i in 0..sc.steps.len() {
            let (cfg, load) = sc.step_config(resume, i);
            let r = crate::run(&cfg).await?;
            let mut warnings = r.warnings.clone();
            warnings.extend(r.ports.iter().flat_map(|p| p.warnings.iter().map(move |w| format!("{}: {w}", p.tls))));
            let step = Step { load, ports: r.ports.iter().map(StepPort::of).collect(), knee: knee(&r, sc.p99_bound), warnings };
            on_step(&resume.to_string(), &step);
            let stop = step.knee.is_some();
            steps.push(step);
            if stop {
                break;
            }
        }
        series.push(Series { resume: resume.to_string(), steps });
    }
    Ok(SweepReport {
        load: if matches!(sc.steps, Steps::Concurrency(_)) { "concurrency" } else { "rate" },
        p99_bound_us: sc.p99_bound.map(|b| b.as_micros() as u64),
        series,
        settings: crate::report::Settings::of(&sc.base),
    })
}

impl SweepReport {
    /// Machine-readable report (one JSON document).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// A table for people: one line per step and port.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "mxpipe-loadgen sweep over {}; {:.1} s per step and port after {:.1} s of warm-up; knee at errors, missed{}",
            self.load,
            self.settings.duration_s,
            self.settings.warmup_s,
            self.p99_bound_us.map(|b| format!(" or p99 above {b} us")).unwrap_or_default()
        );
        for s in &self.series {
            let _ = writeln!(out, "\n== resume {} ==", s.resume);
            let _ = writeln!(
                out,
                "  {:>10} {:<9} {:>12} {:>8} {:>8} {:>8} {:>10} {:>10}",
                self.load, "port", "handshakes/s", "resumed", "errors", "missed", "p50 us", "p99 us"
            );
            for st in &s.steps {
                for p in &st.ports {
                    let _ = writeln!(
                        out,
                        "  {:>10} {:<9} {:>12.1} {:>8} {:>8} {:>8} {:>10} {:>10}",
                        st.load, p.tls, p.handshakes_per_s, p.resumed, p.errors, p.missed, p.p50_us, p.p99_us
                    );
                }
                if let Some(k) = &st.knee {
                    let _ = writeln!(out, "  knee at {} {}: {k}", self.load, st.load);
                }
                for w in &st.warnings {
                    let _ = writeln!(out, "  warning at {} {}: {w}", self.load, st.load);
                }
            }
        }
        out
    }
}
