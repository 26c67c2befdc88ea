//! `mxpipe-loadgen sweep`: its flags (the single run's, plus the steps), and its output.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use mxpipe::tls::ClientResumption;
use mxpipe_loadgen::sweep::{sweep, Steps, SweepConfig};

use crate::Args;

/// Measure one operating point per step of load and stop at the knee: steps of concurrency
/// (closed loop) or, with --open-loop, of offered rate (at most -c in flight). Each step runs
/// every port with its --warmup and --duration, once per --series resumption mode (off: full
/// handshakes; tickets: resumed). A series stops at the first step where a port has errors,
/// missed connections, or a p99 (failures and missed connections included) above
/// --p99-bound-ms; that step is reported as the knee. Output: a table, or --json.
///
/// Exit status: 0 when the sweep ran (a knee is a result, not a failure); 2 on bad flags or a
/// target that cannot be used.
#[derive(Debug, Parser)]
#[command(name = "mxpipe-loadgen sweep", version, long_about, max_term_width = 100)]
pub struct SweepArgs {
    #[command(flatten)]
    common: Args,

    /// Comma-separated steps: concurrencies (e.g. 1,2,4,8,16,32,64), or with --open-loop,
    /// rates in connections per second (e.g. 100,200,400,800). At most 64.
    #[arg(long, value_name = "LIST")]
    steps: String,

    /// The steps are offered rates (open loop), not concurrencies.
    #[arg(long)]
    open_loop: bool,

    /// A step whose p99 passes this many milliseconds is the knee [default: only errors and
    /// missed connections are].
    #[arg(long, value_name = "MS")]
    p99_bound_ms: Option<f64>,

    /// Resumption modes to sweep, one series each: any of off, tickets, session-id.
    #[arg(long, value_name = "LIST", default_value = "off,tickets")]
    series: String,

    /// Write a PNG chart of the sweep (rate against p50 and p99, per port and series).
    #[arg(long, value_name = "FILE")]
    chart: Option<PathBuf>,
}

fn parse_steps(s: &str, open_loop: bool) -> Result<Steps, String> {
    let parts: Vec<&str> = s.split(',').map(str::trim).filter(|p| !p.is_empty()).collect();
    if parts.is_empty() || parts.len() > mxpipe_loadgen::sweep::MAX_STEPS {
        return Err(format!("--steps {s:?}: give from 1 to 64 comma-separated values"));
    }
    if open_loop {
        let v: Result<Vec<f64>, _> = parts.iter().map(|p| p.parse::<f64>()).collect();
        v.map(Steps::Rate).map_err(|_| format!("--steps {s:?}: rates must be numbers"))
    } else {
        let v: Result<Vec<usize>, _> = parts.iter().map(|p| p.parse::<usize>()).collect();
        v.map(Steps::Concurrency).map_err(|_| format!("--steps {s:?}: concurrencies must be whole numbers"))
    }
}

fn parse_series(s: &str) -> Result<Vec<ClientResumption>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| p.parse::<ClientResumption>().map_err(|e| format!("--series: {e}")))
        .collect()
}

/// Run `mxpipe-loadgen sweep` with `argv` (the program name first, without `sweep`).
pub fn main(argv: Vec<std::ffi::OsString>) -> ExitCode {
    let a = SweepArgs::parse_from(argv);
    let fail = |e: String| {
        eprintln!("mxpipe-loadgen sweep: {e}");
        ExitCode::from(2)
    };
    let steps = match parse_steps(&a.steps, a.open_loop) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let series = match parse_series(&a.series) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    if a.common.rate.is_some() {
        return fail("--rate is for a single run; give the rates as --steps with --open-loop".into());
    }
    let p99_bound = match a.p99_bound_ms {
        Some(ms) if ms.is_finite() && ms > 0.0 => Some(Duration::from_secs_f64(ms / 1000.0)),
        Some(_) => return fail("--p99-bound-ms must be above 0".into()),
        None => None,
    };
    let chart = a.chart.clone();
    let (mut base, json, embedded) = match crate::config(a.common) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    base.progress = false;
    let runtime = match mxpipe_loadgen::cli::runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let report = runtime.block_on(async {
        let sink = if embedded { Some(mxpipe_loadgen::embedded::EmbeddedSink::start(&mut base).await?) } else { None };
        let sc = SweepConfig { base: base.clone(), steps, p99_bound, series };
        let r = sweep(&sc, |series, step| {
            let line: Vec<String> =
                step.ports.iter().map(|p| format!("{} {:.1}/s p99 {} us", p.tls, p.handshakes_per_s, p.p99_us)).collect();
            eprintln!("mxpipe-loadgen sweep: resume {series}, step {}: {}", step.load, line.join(", "));
        })
        .await;
        if let Some(sink) = sink {
            sink.stop().await;
        }
        r
    });
    let report = match report {
        Ok(r) => r,
        Err(e) => return fail(e.to_string()),
    };
    if let Some(path) = &chart {
        if let Err(e) = mxpipe_loadgen::chart::draw(&report, path) {
            return fail(format!("--chart {}: {e}", path.display()));
        }
    }
    match mxpipe_loadgen::cli::print(&report, json) {
        Ok(()) => ExitCode::SUCCESS,
        Err(code) => code,
    }
}
