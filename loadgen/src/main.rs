//! `mxpipe-loadgen`: flags in, [`mxpipe_loadgen::run`], report out. Nothing the load generator
//! does lives only here; this file turns flags into a `Config`, loads the `--ca` file, and
//! chooses the exit status.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use mxpipe::tls::{ClientResumption, Kx};
use mxpipe_loadgen::{Config, Mode, PortOrder};

mod sweep_cli;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ModeArg {
    /// Connect, TLS handshake, QUIT: measures handshakes only.
    Handshake,
    /// After TLS: EHLO and --messages-per-conn messages of --size bytes, then QUIT.
    Transaction,
    /// Pipelining SMTP injection into --port (no TLS unless --starttls): many messages a
    /// connection; acknowledged messages/s and end-of-data→250 latency.
    Inject,
    /// The same messages posted to mxpipe's HTTP API on --port in batches of --batch
    /// (HTTPS with --https).
    Http,
}

/// Measure TLS handshake throughput of an SMTP server on a STARTTLS port (plaintext, then
/// STARTTLS, as on port 25) and an implicit-TLS port (TLS from the first byte, as on port
/// 465/26): handshakes/s, full against resumed, latency percentiles and client CPU.
///
/// The ports are measured one after the other (--order), each for its own --warmup and then
/// --duration/--count. The client reads to EOF after QUIT so the server closes first (no
/// client TIME_WAIT).
///
/// handshakes/s counts the handshakes completed inside the measured window, over its length;
/// attempts still running after it are the tail, reported apart (and cut, as `cut`, one
/// --timeout after it). Latency rows, in microseconds: connect = the TCP connect; ttfb = from
/// the start of the connect to the server's first byte (the banner on the STARTTLS port, the
/// ServerHello on the implicit port: the server's accept wait is in it on both); starttls =
/// banner, EHLO, STARTTLS and its 220 (the accept wait falls here on that port); handshake =
/// the TLS handshake alone (on the implicit port it includes the accept wait); queue = open
/// loop, intended start to actual start; ok = a whole successful connection; failed = a failed
/// attempt, start to failure (a step timeout at about --timeout); missed = open loop,
/// connections never started, at a lower bound (end of window - intended start); all = ok,
/// failed and missed together, the headline figure. With --rate, every row counts from the
/// intended start.
///
/// Error classes tell apart a step timeout (timeout) from an attempt cut at the end of the
/// phase (cut), and a server that closed without a word (closed) from a TLS failure (tls,
/// tls_alert, certificate). The report warns when the client itself was saturated (its CPU
/// near the core count), when connections were missed and when handshakes needed a
/// HelloRetryRequest.
///
/// `mxpipe-loadgen sweep --steps 1,2,4,...` measures one point per step of load and stops at
/// the knee (see `mxpipe-loadgen sweep --help`).
///
/// Exit status: 0 when the run completed (errors are counted and printed); 1 when every
/// attempt failed; 2 on bad flags or a target that cannot be used; 3 when the open loop
/// (--rate) missed connections: some were due but never started because --concurrency were
/// in flight, so the target did not sustain the rate.
#[derive(Debug, Parser)]
#[command(name = "mxpipe-loadgen", version, about, long_about, max_term_width = 100)]
pub(crate) struct Args {
    /// Server address or DNS name.
    #[arg(long, value_name = "HOST", required_unless_present = "embedded_sink")]
    host: Option<String>,

    /// Start mxpipe's own sink in this process on ephemeral loopback ports, with a generated
    /// CA, and measure it (client and server then share the cores: for trying the tool, not
    /// for capacity figures).
    #[arg(long, conflicts_with_all = ["host", "starttls_port", "implicit_port", "server_name", "ca", "source_spread"])]
    embedded_sink: bool,

    /// Port speaking plaintext SMTP then STARTTLS (measured first unless --order says).
    #[arg(long, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    starttls_port: Option<u16>,

    /// Port speaking TLS from the first byte (measured second unless --order says).
    #[arg(long, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    implicit_port: Option<u16>,

    /// Name for SNI and certificate verification [default: HOST if it is a DNS name, else
    /// localhost].
    #[arg(long, value_name = "NAME")]
    server_name: Option<String>,

    /// PEM file of extra trust anchors, added to the built-in webpki roots.
    #[arg(long, value_name = "FILE", conflicts_with = "insecure")]
    ca: Option<PathBuf>,

    /// Do not verify the server certificate, and do not check the handshake signature either
    /// (opportunistic TLS; much cheaper for the client, but it proves nothing about the
    /// server's key, and the server's signing is then all that is measured of the public-key
    /// work).
    #[arg(long)]
    insecure: bool,

    /// Verify each certificate chain once (trust anchors, name, validity), then trust that
    /// exact certificate for the name for the rest of the run, still checking every full
    /// handshake's signature: a cheaper client for measuring a server's own capacity.
    #[arg(long, conflicts_with = "insecure")]
    verify_once: bool,

    /// What each connection does once TLS is up.
    #[arg(long, value_enum, default_value_t = ModeArg::Handshake)]
    mode: ModeArg,

    /// Transaction mode: messages sent on each connection [default: 1; inject and http: no
    /// limit, a connection lasts the whole run].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    messages_per_conn: Option<u32>,

    /// Transaction mode: size of each generated message in bytes, headers included.
    #[arg(long, value_name = "BYTES", default_value_t = 1024)]
    size: usize,

    /// TLS resumption: off (every handshake full), tickets (TLS 1.3 tickets; TLS 1.2 tickets
    /// or session IDs) or session-id (TLS 1.2 only, resuming by session ID). Each port gets a
    /// fresh ticket store.
    #[arg(long, value_name = "MODE", default_value = "tickets", value_parser = parse_resume)]
    resume: ClientResumption,

    /// Key exchange group offered: default (X25519MLKEM768, X25519, P-256...), x25519,
    /// x25519mlkem768 or p256.
    #[arg(long, value_name = "GROUP", default_value = "default", value_parser = parse_kx)]
    kx: Kx,

    /// Closed loop: connections kept going at once. With --rate: the most in flight.
    #[arg(long, short = 'c', value_name = "N", default_value_t = 1, value_parser = parse_concurrency)]
    concurrency: usize,

    /// Seconds to measure each port [default: 10, or up to 600 when --count is given].
    #[arg(long, short = 'd', value_name = "SECS", value_parser = parse_secs)]
    duration: Option<Duration>,

    /// Seconds to load each port before measuring it (the same load as the measurement);
    /// what happens then is counted apart and kept out of every figure [default: 0].
    #[arg(long, value_name = "SECS", value_parser = parse_warmup)]
    warmup: Option<Duration>,

    /// Which port to measure first: starttls,implicit or implicit,starttls. The first one
    /// absorbs the cold start of both sides unless --warmup is given.
    #[arg(long, value_name = "ORDER", default_value = "starttls,implicit", value_parser = parse_order)]
    order: PortOrder,

    /// Measured connections per port at most (the run still stops after --duration, or 600 s).
    #[arg(long, short = 'n', value_name = "N")]
    count: Option<u64>,

    /// Open loop: start R connections per second on schedule, whatever the server's pace;
    /// latency counts from the scheduled start, so queueing shows in the total. Connections
    /// never started (every slot busy to the end) are reported as missed, and exit status 3.
    #[arg(long, value_name = "R", value_parser = parse_rate)]
    rate: Option<f64>,

    /// Seconds allowed for each step (connect, each reply, TLS handshake, server close).
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_secs)]
    timeout: Duration,

    /// Close with SO_LINGER 0 (RST) right after the 221 instead of waiting for the server
    /// to close.
    #[arg(long)]
    linger0: bool,

    /// Bind client sockets round-robin to 127.0.0.2 .. 127.0.0.(N+1), N at most 254 (more
    /// ephemeral ports; loopback targets only).
    #[arg(long, value_name = "N", default_value_t = 0, value_parser = clap::value_parser!(u16).range(0..=254))]
    source_spread: u16,

    /// Name sent in EHLO.
    #[arg(long, value_name = "NAME", default_value = "loadgen.mxpipe.test")]
    ehlo_name: String,

    /// Envelope sender (transaction mode).
    #[arg(long, value_name = "ADDR", default_value = "loadgen@mxpipe.test")]
    mail_from: String,

    /// Envelope recipient (transaction mode).
    #[arg(long, value_name = "ADDR", default_value = "sink@example.test")]
    rcpt_to: String,

    /// Print the report as JSON on stdout (and nothing else there).
    #[arg(long)]
    json: bool,

    /// No live progress line on stderr (it is shown only on a terminal anyway).
    #[arg(long)]
    no_progress: bool,

    #[command(flatten)]
    inject: mxpipe_loadgen::inject::cli::InjectArgs,
}

fn parse_resume(s: &str) -> Result<ClientResumption, String> {
    s.parse()
}

fn parse_kx(s: &str) -> Result<Kx, String> {
    s.parse()
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    let v: f64 = s.parse().map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !(v.is_finite() && v > 0.0 && v <= 86_400.0) {
        return Err(format!("{s:?}: give a number of seconds above 0 and at most 86400"));
    }
    Ok(Duration::from_secs_f64(v))
}

fn parse_warmup(s: &str) -> Result<Duration, String> {
    let v: f64 = s.parse().map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !(v.is_finite() && (0.0..=600.0).contains(&v)) {
        return Err(format!("{s:?}: give a number of seconds from 0 to 600"));
    }
    Ok(Duration::from_secs_f64(v))
}

fn parse_order(s: &str) -> Result<PortOrder, String> {
    s.parse()
}

fn parse_rate(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("{s:?} is not a number of connections per second"))?;
    if !(v.is_finite() && v > 0.0) {
        return Err(format!("{s:?}: the rate must be above 0"));
    }
    Ok(v)
}

fn parse_concurrency(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=100_000).contains(&n) => Ok(n),
        _ => Err(format!("{s:?}: give a whole number from 1 to 100000")),
    }
}

/// Flags to config; the `--ca` file is read here so its error names the file.
/// Returns the config, `--json` and `--embedded-sink`.
fn config(args: Args) -> Result<(Config, bool, bool), String> {
    let mut cfg = Config::new(args.host.unwrap_or_else(|| "127.0.0.1".into()));
    if let Some(name) = args.server_name {
        cfg.server_name = name;
    }
    cfg.starttls_port = args.starttls_port;
    cfg.implicit_port = args.implicit_port;
    cfg.verify = mxpipe_loadgen::cli::verify(args.insecure, args.ca.as_deref())?;
    cfg.verify_once = args.verify_once;
    cfg.kx = args.kx;
    cfg.resume = args.resume;
    cfg.mode = match args.mode {
        ModeArg::Handshake => Mode::Handshake,
        ModeArg::Transaction => Mode::Transaction { messages_per_conn: args.messages_per_conn.unwrap_or(1), size: args.size },
        ModeArg::Inject | ModeArg::Http => unreachable!("dispatched to inject::cli::main before"),
    };
    cfg.concurrency = args.concurrency;
    cfg.duration = args.duration;
    cfg.warmup = args.warmup.unwrap_or_default();
    cfg.order = args.order;
    cfg.count = args.count;
    cfg.rate = args.rate;
    cfg.timeout = args.timeout;
    cfg.linger0 = args.linger0;
    cfg.source_spread = usize::from(args.source_spread);
    cfg.ehlo_name = args.ehlo_name;
    cfg.mail_from = args.mail_from;
    cfg.rcpt_to = args.rcpt_to;
    cfg.progress = !args.no_progress && std::io::stderr().is_terminal();
    Ok((cfg, args.json, args.embedded_sink))
}

fn main() -> ExitCode {
    let mut argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if argv.get(1).is_some_and(|a| a == "sweep") {
        argv.remove(1);
        return sweep_cli::main(argv);
    }
    let args = Args::parse_from(argv);
    if let kind @ (ModeArg::Inject | ModeArg::Http) = args.mode {
        use mxpipe_loadgen::inject::cli::{self, Kind};
        let kind = if matches!(kind, ModeArg::Inject) { Kind::Smtp } else { Kind::Http };
        let shared = cli::Shared {
            host: args.host,
            server_name: args.server_name,
            ca: args.ca,
            insecure: args.insecure,
            kx: args.kx,
            concurrency: args.concurrency,
            duration: args.duration,
            count: args.count,
            rate: args.rate,
            timeout: args.timeout,
            ehlo_name: args.ehlo_name,
            mail_from: args.mail_from,
            rcpt_to: args.rcpt_to,
            size: args.size,
            messages_per_conn: args.messages_per_conn,
            json: args.json,
        };
        return cli::main(kind, args.inject, shared);
    }
    let (mut cfg, json, embedded) = match config(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("mxpipe-loadgen: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match mxpipe_loadgen::cli::runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let report = match runtime.block_on(async {
        let sink = if embedded { Some(mxpipe_loadgen::embedded::EmbeddedSink::start(&mut cfg).await?) } else { None };
        let report = mxpipe_loadgen::run(&cfg).await;
        match (sink, report) {
            (Some(sink), Ok(mut r)) => {
                r.embedded_sink = Some(sink.stop().await);
                Ok(r)
            }
            (Some(sink), Err(e)) => {
                sink.stop().await;
                Err(e)
            }
            (None, r) => r,
        }
    }) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("mxpipe-loadgen: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(code) = mxpipe_loadgen::cli::print(&report, json) {
        return code;
    }
    match report.exit_status() {
        0 => ExitCode::SUCCESS,
        1 => {
            eprintln!("mxpipe-loadgen: every attempt failed (see the errors above)");
            ExitCode::from(1)
        }
        n => {
            eprintln!(
                "mxpipe-loadgen: {} scheduled connections were never started: the target did not sustain --rate at --concurrency",
                report.missed()
            );
            ExitCode::from(n)
        }
    }
}
