//! The `mxpipe` command: argument parsing and reporting only; the work is in the library.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use mxpipe::sink::{Faults, Sink, SinkConfig};
use mxpipe::tls;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "mxpipe", version, about = "High-throughput outbound SMTP: delivery engine, receiving sink, benchmarks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a receiving SMTP server (STARTTLS and implicit TLS) that counts or stores mail and
    /// can inject faults: the peer for tests and capacity benchmarks.
    Sink(SinkArgs),
}

/// A port number, or `off` (a newtype: clap reads a bare `Option` as "flag may be absent").
#[derive(Clone, Copy, Debug)]
struct PortOrOff(Option<u16>);

fn port_or_off(s: &str) -> Result<PortOrOff, String> {
    match s {
        "off" | "none" => Ok(PortOrOff(None)),
        _ => s
            .parse::<u16>()
            .map(|p| PortOrOff(Some(p)))
            .map_err(|_| format!("{s:?} is not a port number (0-65535) or 'off'")),
    }
}

fn rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(p) if (0.0..=1.0).contains(&p) => Ok(p),
        _ => Err(format!("{s:?} is not a probability between 0 and 1")),
    }
}

#[derive(Args)]
struct SinkArgs {
    /// Address to listen on (repeatable). Each address gets both ports.
    #[arg(long = "listen", value_name = "ADDR", default_value = "127.0.0.1")]
    listen: Vec<IpAddr>,
    /// Port for SMTP with STARTTLS, or 'off'. 0 picks a free port.
    #[arg(long, value_name = "PORT|off", default_value = "25", value_parser = port_or_off)]
    starttls_port: PortOrOff,
    /// Port for SMTP over implicit TLS, or 'off'. 0 picks a free port.
    #[arg(long, value_name = "PORT|off", default_value = "26", value_parser = port_or_off)]
    implicit_port: PortOrOff,
    /// Certificate chain (PEM) to serve; with --key. Without it a CA and a certificate are generated.
    #[arg(long, value_name = "FILE", requires = "key")]
    cert: Option<PathBuf>,
    /// Private key (PEM) of --cert.
    #[arg(long, value_name = "FILE", requires = "cert")]
    key: Option<PathBuf>,
    /// Names (DNS names or IPs) of the generated certificate, comma-separated.
    #[arg(long, value_name = "NAMES", default_value = "localhost", value_delimiter = ',', conflicts_with = "cert")]
    cert_names: Vec<String>,
    /// Write the generated CA certificate here (PEM), for clients to trust with --ca.
    #[arg(long, value_name = "FILE", conflicts_with = "cert")]
    ca_out: Option<PathBuf>,
    /// Serve a certificate for another name (wrong-name.invalid), signed by the same CA: a
    /// verifying client must reject it.
    #[arg(long, conflicts_with = "cert")]
    wrong_name: bool,
    /// Issue no session tickets (TLS 1.3 and TLS 1.2).
    #[arg(long)]
    no_tickets: bool,
    /// Keep no server-side session cache (TLS 1.2 session IDs; TLS 1.3 stateful resumption).
    #[arg(long)]
    no_session_cache: bool,
    /// Entries in the server-side session cache.
    #[arg(long, value_name = "N", default_value_t = 65_536)]
    session_cache_size: usize,
    /// Do not offer STARTTLS (a fault: a downgraded or misconfigured server).
    #[arg(long)]
    no_starttls: bool,
    /// On the STARTTLS port, refuse mail commands before TLS with 530.
    #[arg(long)]
    require_tls: bool,
    /// Probability of answering a RCPT with 451 4.3.0.
    #[arg(long, value_name = "P", default_value_t = 0.0, value_parser = rate)]
    temp_fail_rate: f64,
    /// Probability of answering a RCPT with 550 5.1.1.
    #[arg(long, value_name = "P", default_value_t = 0.0, value_parser = rate)]
    perm_fail_rate: f64,
    /// Probability of closing the connection at the end of a message's data, before replying.
    #[arg(long, value_name = "P", default_value_t = 0.0, value_parser = rate)]
    drop_rate: f64,
    /// Wait this many milliseconds before every reply.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    delay: u64,
    /// Write accepted messages to this directory (one .eml file each); default: discard.
    #[arg(long, value_name = "DIR")]
    mail_dir: Option<PathBuf>,
    /// Largest message accepted, advertised as SIZE.
    #[arg(long, value_name = "BYTES", default_value_t = 50 * 1024 * 1024)]
    max_message_size: u64,
    /// Connections served at once; more are told 421 and closed.
    #[arg(long, value_name = "N", default_value_t = 20_000)]
    max_conns: usize,
    /// Seconds a client may stay silent before the sink says 421 and closes.
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    idle_timeout: u64,
    /// Name in the banner and EHLO reply.
    #[arg(long, value_name = "NAME", default_value = "mxpipe-sink.localhost")]
    hostname: String,
    /// Stop by itself after this many seconds (default: run until SIGINT/SIGTERM).
    #[arg(long, value_name = "SECS")]
    duration: Option<u64>,
    /// Seconds open sessions get to finish at shutdown.
    #[arg(long, value_name = "SECS", default_value_t = 5)]
    grace: u64,
    /// Write the final counters to this file as JSON.
    #[arg(long, value_name = "FILE")]
    stats_json: Option<PathBuf>,
    /// Worker threads (default: one per core).
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Sink(args) => run_sink(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("mxpipe: error: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn runtime(threads: Option<usize>) -> Result<tokio::runtime::Runtime, String> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = threads {
        b.worker_threads(n.max(1));
    }
    b.enable_all().build().map_err(|e| format!("cannot start the async runtime: {e}"))
}

fn run_sink(a: SinkArgs) -> Result<(), String> {
    if let Err(e) = mxpipe::sys::raise_nofile_limit() {
        eprintln!("mxpipe: warning: cannot raise the open-file limit: {e}");
    }
    let identity = match (&a.cert, &a.key) {
        (Some(cert), Some(key)) => tls::certs::load_identity(cert, key).map_err(|e| e.to_string())?,
        _ => {
            let names = if a.wrong_name { vec!["wrong-name.invalid".to_string()] } else { a.cert_names.clone() };
            let pki = tls::certs::generate(&names).map_err(|e| e.to_string())?;
            if let Some(path) = &a.ca_out {
                std::fs::write(path, &pki.ca_pem)
                    .map_err(|e| format!("cannot write the CA certificate to {}: {e}", path.display()))?;
            }
            pki.identity
        }
    };
    let resumption = tls::ServerResumption {
        tickets: !a.no_tickets,
        session_cache: if a.no_session_cache { 0 } else { a.session_cache_size },
    };
    let server_tls = tls::server_config(identity, resumption).map_err(|e| e.to_string())?;
    if let Some(dir) = &a.mail_dir {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create --mail-dir {}: {e}", dir.display()))?;
    }
    let mut cfg = SinkConfig::new(server_tls);
    cfg.listen = a.listen.clone();
    cfg.starttls_port = a.starttls_port.0;
    cfg.implicit_port = a.implicit_port.0;
    cfg.hostname = a.hostname.clone();
    cfg.starttls = !a.no_starttls;
    cfg.require_tls = a.require_tls;
    cfg.faults = Faults {
        temp_fail_rate: a.temp_fail_rate,
        perm_fail_rate: a.perm_fail_rate,
        drop_rate: a.drop_rate,
        delay: Duration::from_millis(a.delay),
    };
    cfg.mail_dir = a.mail_dir.clone();
    cfg.max_message_size = a.max_message_size;
    cfg.max_conns = a.max_conns;
    cfg.idle_timeout = Duration::from_secs(a.idle_timeout.max(1));

    let rt = runtime(a.threads)?;
    let report = rt.block_on(async {
        let sink = Sink::start(cfg).await.map_err(|e| {
            let hint = if matches!(&e, mxpipe::sink::SinkError::Bind { source, .. } if source.kind() == std::io::ErrorKind::PermissionDenied) {
                " (ports below 1024 need root; use --starttls-port 2525 --implicit-port 2526)"
            } else {
                ""
            };
            format!("{e}{hint}")
        })?;
        for l in sink.listeners() {
            println!("mxpipe sink: {} on {}", l.kind, l.addr);
        }
        if let Some(p) = &a.ca_out {
            println!("mxpipe sink: CA certificate written to {}", p.display());
        }
        wait_for_stop(a.duration).await;
        eprintln!("mxpipe sink: stopping (grace {} s)", a.grace);
        Ok::<_, String>(sink.shutdown(Duration::from_secs(a.grace)).await)
    })?;
    print!("{}", report.stats.to_table());
    if let Some(path) = &a.stats_json {
        let json = serde_json::to_string_pretty(&report.stats).map_err(|e| e.to_string())?;
        std::fs::write(path, json + "\n").map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(())
}

/// Wait for SIGINT, SIGTERM, or the end of `duration`.
async fn wait_for_stop(duration: Option<u64>) {
    let limit = async {
        match duration {
            Some(s) => tokio::time::sleep(Duration::from_secs(s)).await,
            None => std::future::pending().await,
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
        _ = limit => {}
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
