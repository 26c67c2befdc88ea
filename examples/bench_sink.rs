//! `bench_sink`: the receiving sink of `mxpipe sink` (the same `mxpipe::sink::Sink`, STARTTLS
//! only, the same TLS settings and defaults) with a live progress file, for `perf/daemon.sh`:
//! an end-to-end benchmark needs to know *when* the last message arrived, which the `mxpipe
//! sink` command reports only as totals at exit.
//!
//! ```sh
//! cargo run --release --example bench_sink -- --listen 127.7.0.1 --listen 127.7.0.2 \
//!   --starttls-port 3725 --cert-names '*.bench.test' --ca-out ca.pem --progress progress.json
//! ```
//!
//! Prints `sink ready` once every listener is bound. Samples the message counter every
//! millisecond: `first_ns`/`last_ns` are the wall-clock times (Unix nanoseconds, ±1 ms) at
//! which the first and the latest message were counted. `--progress FILE` is rewritten (by
//! rename) every 100 ms with `{"messages","first_ns","last_ns"}`; at SIGTERM/SIGINT or
//! `--max-secs` the sink stops and `--stats-json FILE` gets its final counters and the same
//! two times.

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser;
use mxpipe::sink::{Sink, SinkConfig};
use mxpipe::tls::{self, ServerResumption};

#[derive(Parser, Debug)]
#[command(about = "mxpipe's sink with a live progress file, for perf/daemon.sh")]
struct Args {
    /// Address to listen on (repeatable).
    #[arg(long = "listen", required = true)]
    listen: Vec<IpAddr>,
    /// Port for SMTP with STARTTLS on every address.
    #[arg(long)]
    starttls_port: u16,
    /// Names of the generated certificate, comma-separated.
    #[arg(long, default_value = "localhost", value_delimiter = ',')]
    cert_names: Vec<String>,
    /// Write the generated CA certificate here (PEM).
    #[arg(long)]
    ca_out: Option<PathBuf>,
    /// Name in the banner and EHLO reply.
    #[arg(long, default_value = "mxpipe-sink.localhost")]
    hostname: String,
    /// Worker threads of the sink's runtime.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Rewritten every 100 ms with the message count and the first and latest message times.
    #[arg(long)]
    progress: Option<PathBuf>,
    /// Final counters and times, written at the end.
    #[arg(long)]
    stats_json: Option<PathBuf>,
    /// Stop by itself after this many seconds.
    #[arg(long, default_value_t = 3600)]
    max_secs: u64,
}

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// Write `value` to `path` through a temporary file and a rename, so a reader never sees half.
fn write_json(path: &Path, value: &serde_json::Value) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(value.to_string().as_bytes())?;
    std::fs::rename(tmp, path)
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("bench_sink: {e}");
        std::process::exit(1);
    }
}

fn run(a: Args) -> Result<(), String> {
    let _ = mxpipe::sys::raise_nofile_limit();
    let pki = tls::certs::generate(&a.cert_names).map_err(|e| e.to_string())?;
    if let Some(p) = &a.ca_out {
        std::fs::write(p, &pki.ca_pem).map_err(|e| format!("cannot write {}: {e}", p.display()))?;
    }
    let mut cfg = SinkConfig::new(tls::server_config(pki.identity, ServerResumption::default()).map_err(|e| e.to_string())?);
    cfg.listen = a.listen.clone();
    cfg.starttls_port = Some(a.starttls_port);
    cfg.implicit_port = None;
    cfg.hostname = a.hostname.clone();

    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(a.threads.max(1)).enable_all().build().map_err(|e| e.to_string())?;
    rt.block_on(async move {
        let sink = Sink::start(cfg).await.map_err(|e| e.to_string())?;
        println!("sink ready: {} listeners", sink.listeners().len());
        let _ = std::io::stdout().flush();
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).map_err(|e| e.to_string())?;
        let stop = tokio::time::sleep(Duration::from_secs(a.max_secs));
        tokio::pin!(stop);
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let (mut seen, mut first_ns, mut last_ns, mut ticks) = (0u64, 0u64, 0u64, 0u64);
        let progress = |n: u64, f: u64, l: u64| serde_json::json!({ "messages": n, "first_ns": f, "last_ns": l });
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = tokio::signal::ctrl_c() => break,
                _ = &mut stop => { eprintln!("bench_sink: --max-secs reached"); break; }
                _ = tick.tick() => {
                    let n = sink.stats().messages;
                    if n != seen {
                        last_ns = now_ns();
                        if seen == 0 {
                            first_ns = last_ns;
                        }
                        seen = n;
                    }
                    ticks += 1;
                    if ticks % 100 == 0 {
                        if let Some(p) = &a.progress {
                            write_json(p, &progress(seen, first_ns, last_ns)).map_err(|e| format!("cannot write {}: {e}", p.display()))?;
                        }
                    }
                }
            }
        }
        let report = sink.shutdown(Duration::from_secs(5)).await;
        if report.stats.messages != seen {
            last_ns = now_ns(); // counted during shutdown
        }
        let mut out = serde_json::to_value(report.stats).map_err(|e| e.to_string())?;
        out["first_ns"] = first_ns.into();
        out["last_ns"] = last_ns.into();
        if let Some(p) = &a.progress {
            write_json(p, &progress(report.stats.messages, first_ns, last_ns)).map_err(|e| e.to_string())?;
        }
        if let Some(p) = &a.stats_json {
            write_json(p, &out).map_err(|e| format!("cannot write {}: {e}", p.display()))?;
        }
        eprintln!("bench_sink: {} messages, {} connections", report.stats.messages, report.stats.starttls.connections);
        Ok(())
    })
}
