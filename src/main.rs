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
    /// Deliver messages from a JSONL file, one outcome per recipient to another JSONL file.
    Send(SendArgs),
    /// Deliver a generated burst to an in-process DNS server and sink on many loopback
    /// addresses: the whole engine, with nothing installed.
    Demo(DemoArgs),
    /// Run the delivery service: SMTP and HTTP injection into a durable spool, delivery with
    /// retries, limits and bounces, a delivery log and metrics.
    Serve(ServeArgs),
    /// Print a users-file line for `[inject.smtp.auth] users_file`: reads the password as one
    /// line from standard input (not echoed on a terminal), stores only a salted
    /// PBKDF2-SHA256 of it. Example: `mxpipe passwd alice >> /etc/mxpipe/users`.
    Passwd {
        /// The user name clients will AUTH as (no spaces or ':').
        user: String,
        /// PBKDF2 iterations: more is slower for an attacker and for every AUTH.
        #[arg(long, value_name = "N", default_value_t = mxpipe::auth::DEFAULT_ITERATIONS)]
        iterations: u32,
    },
    /// DKIM keys: `mxpipe dkim keygen --domain D --selector S [--algorithm ed25519|rsa]` writes a
    /// new private key and prints the DNS TXT record to publish and the `[[dkim]]` entry.
    Dkim {
        #[command(subcommand)]
        cmd: DkimSub,
    },
    /// Show and steer a running `serve`'s queues: list, suspend, resume, bounce a destination.
    Queue(QueueArgs),
    /// Show or forget what the TLS policy remembers of a domain (its pin and cached MTA-STS
    /// policy), in a running `serve` (through its API, admin token) or in a `send --state-dir`.
    Policy(PolicyArgs),
    /// Show the TLS-RPT (RFC 8460) counts of a domain not yet reported, per UTC day, from a
    /// running `serve` (through its API, admin token) or from its spool directory.
    Tlsrpt(TlsRptArgs),
    /// Make a bearer token for the HTTP API (`[inject.http] tokens_file`). The token is
    /// printed once, on standard output, for the client; it cannot be shown again (only a
    /// salted SHA-256 of it is kept). The tokens-file line is appended to --tokens-file
    /// (created readable by its owner only), or printed on standard error without it. The
    /// daemon reads the file at start: restart it to use the token. Example:
    /// `mxpipe token app1 --scope inject --tokens-file /etc/mxpipe/tokens > app1.token`
    Token {
        /// The token's name, shown in errors and logs (letters, digits, '-', '_', '.', '@').
        name: String,
        /// What it may do: inject (POST /v1/messages, GET /v1/messages/{id}), metrics
        /// (GET /metrics, e.g. for Prometheus), or admin (everything, `mxpipe queue` too).
        #[arg(long, value_name = "inject|metrics|admin")]
        scope: mxpipe::inject::tokens::Scope,
        /// Append the line to this tokens file instead of printing it on standard error.
        #[arg(long, value_name = "FILE")]
        tokens_file: Option<PathBuf>,
    },
}

/// How to reach a running daemon's HTTP API (`mxpipe queue`, `mxpipe policy`).
#[derive(Args)]
struct ApiArgs {
    /// The daemon's HTTP API, ADDR:PORT or NAME:PORT, also sent as the Host and checked
    /// against its TLS certificate (default: `inject.http.listen` of --config, else
    /// 127.0.0.1:8025).
    #[arg(long, value_name = "HOST:PORT", global = true)]
    api: Option<String>,
    /// The daemon's configuration, to find its HTTP API, whether it has TLS (then its
    /// `[inject.http.tls] cert` is trusted) and `[inject.http] client_token_file`.
    #[arg(long, value_name = "FILE", global = true)]
    config: Option<PathBuf>,
    /// A file whose first line is an admin API token (from `mxpipe token`). Without it: the
    /// environment variable MXPIPE_API_TOKEN, then `client_token_file` of --config.
    #[arg(long, value_name = "FILE", global = true)]
    token_file: Option<PathBuf>,
    /// Speak HTTPS, trusting the CA certificates (PEM) in this file only.
    #[arg(long, value_name = "FILE", global = true)]
    ca: Option<PathBuf>,
    /// Speak HTTPS, trusting the Mozilla roots (and the certificate of --config's
    /// `[inject.http.tls]`). Implied by --ca and by a --config with `[inject.http.tls]`.
    #[arg(long, global = true)]
    tls: bool,
    /// Print the API's JSON answer instead of text.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Args)]
struct QueueArgs {
    #[command(flatten)]
    api: ApiArgs,
    #[command(subcommand)]
    cmd: QueueSub,
}

#[derive(Subcommand)]
enum QueueSub {
    /// Recipients waiting per destination domain, next attempts, suspensions.
    List {
        /// Every node of the cluster (`[cluster]`), from `GET /v1/cluster`.
        #[arg(long)]
        cluster: bool,
    },
    /// Hold a destination's recipients (those already sending finish their attempt).
    Suspend {
        domain: String,
        /// How long: "30m", "2h" (at most 24h).
        #[arg(long = "for", value_name = "DURATION", default_value = "1h")]
        duration: String,
    },
    /// Lift a suspension (the operator's or the daemon's own after a 421) and try now. DOMAIN
    /// may also be an MX host pattern of the config (`*.google.com`): the egress sources'
    /// suspensions toward that site end.
    Resume { domain: String },
    /// Give up on every recipient waiting for a destination: bounced with a DSN to each sender.
    Bounce { domain: String },
}

#[derive(Args)]
struct PolicyArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// Read and edit the state directory of `mxpipe send --state-dir DIR` instead of asking a
    /// daemon (not while a `send` with that directory runs: it saves its own at the end).
    #[arg(long, value_name = "DIR", global = true)]
    state_dir: Option<PathBuf>,
    #[command(subcommand)]
    cmd: PolicySub,
}

#[derive(Subcommand)]
enum PolicySub {
    /// What the TLS policy remembers of a domain: its pin (a prefixed MX seen within the pin
    /// TTL, so every MX host needs verified TLS) and when it lapses, and its cached MTA-STS policy.
    Show { domain: String },
    /// Forget a domain's pin and cached MTA-STS policy (until seen or fetched again).
    Forget { domain: String },
}

#[derive(Args)]
struct TlsRptArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// Read the counters file (tlsrpt.json) in this directory (a `serve`'s spool directory)
    /// instead of asking the daemon; it shows what the daemon last saved (every 30 s).
    #[arg(long, value_name = "DIR", global = true)]
    state_dir: Option<PathBuf>,
    #[command(subcommand)]
    cmd: TlsRptSub,
}

#[derive(Subcommand)]
enum TlsRptSub {
    /// The pending counts of DOMAIN: per day and policy, successes, failures and their details.
    Show { domain: String },
}

#[derive(Subcommand)]
enum DkimSub {
    /// Make a new signing key: the private key goes to --out (default SELECTOR.DOMAIN.key,
    /// readable by its owner only, never overwritten); the TXT record to publish at
    /// SELECTOR._domainkey.DOMAIN and the `[[dkim]]` entry are printed.
    Keygen {
        /// The signing domain (d=), usually the From domain or its parent.
        #[arg(long)]
        domain: String,
        /// The selector (s=), e.g. a date: `2026-12`.
        #[arg(long)]
        selector: String,
        /// ed25519 (RFC 8463; small and fast) or rsa (RFC 6376; verified everywhere).
        #[arg(long, default_value = "ed25519")]
        algorithm: mxpipe::dkim::Algorithm,
        /// RSA modulus size: 2048, 3072, 4096 or 8192.
        #[arg(long, default_value_t = 2048)]
        bits: usize,
        /// Where to write the private key (PKCS#8 PEM).
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
}

#[derive(Args)]
struct ServeArgs {
    /// The TOML configuration (see mxpipe.example.toml).
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// DNSSEC trust anchor file (DNSKEY or DS lines), added to the configuration's
    /// `[dns] trust_anchors` (repeatable). Implies validation.
    #[arg(long, value_name = "FILE")]
    trust_anchors: Vec<PathBuf>,
}

/// Settings of the delivery engine shared by `send` and `demo`; their defaults are
/// [`mxpipe::engine::EngineConfig::default`]'s.
#[derive(Args, Clone)]
struct EngineArgs {
    /// Shard threads, each owning its destinations (default: one per core).
    #[arg(long, value_name = "N")]
    shards: Option<usize>,
    /// Connections at once per destination domain.
    #[arg(long, value_name = "N", default_value_t = engine_default().max_conns_per_dest)]
    max_conns: usize,
    /// Connections at once (busy or idle) per destination IP address and shard.
    #[arg(long, value_name = "N", default_value_t = engine_default().max_conns_per_ip)]
    max_conns_per_ip: usize,
    /// Messages per connection before it is replaced.
    #[arg(long, value_name = "N", default_value_t = engine_default().max_msgs_per_conn)]
    max_msgs_per_conn: u32,
    /// Seconds an idle connection is kept for reuse.
    #[arg(long, value_name = "SECS", default_value_t = engine_default().idle_timeout.as_secs())]
    idle_timeout: u64,
    /// Seconds for a TCP connect.
    #[arg(long, value_name = "SECS", default_value_t = engine_default().connect_timeout.as_secs())]
    connect_timeout: u64,
    /// Upper bound, in seconds, on any single SMTP wait (RFC 5321's are minutes).
    #[arg(long, value_name = "SECS", default_value_t = engine_default().command_timeout.as_secs())]
    command_timeout: u64,
    /// Key exchange offered: default, x25519, x25519mlkem768 or p256.
    #[arg(long, value_name = "KX", default_value_t = engine_default().kx)]
    kx: mxpipe::tls::Kx,
    /// Name sent in EHLO.
    #[arg(long, value_name = "NAME", default_value_t = engine_default().ehlo_name)]
    ehlo_name: String,
    /// Validate DNSSEC: a bogus MX answer defers, and each outcome records whether its MX
    /// answer was authenticated. (A prefix is honoured either way.)
    #[arg(long)]
    validate_dnssec: bool,
    /// DNSSEC trust anchors for private zones: a file of DNSKEY or DS lines
    /// (`zone. IN DNSKEY 257 3 13 <base64>`, `zone. IN DS <tag> <alg> 2 <hex>`), added to the
    /// root keys (repeatable). Implies --validate-dnssec.
    #[arg(long, value_name = "FILE")]
    trust_anchors: Vec<PathBuf>,
    /// How far an MX prefix reaches: domain (the strictest prefix among a domain's MX hosts
    /// applies to all of them) or host (each host alone; weaker: an unprefixed backup can be
    /// stripped of STARTTLS).
    #[arg(long, value_name = "SCOPE", default_value = "domain")]
    policy_scope: mxpipe::policy::Scope,
    /// Ignore receivers' MTA-STS policies (RFC 8461): no TXT lookups, no policy fetches.
    #[arg(long)]
    no_mta_sts: bool,
    /// Ignore receivers' DANE TLSA records (RFC 7672). DANE applies only with
    /// --validate-dnssec: without validation no TLSA record can be trusted.
    #[arg(long)]
    no_dane: bool,
    /// Minimum TLS for a destination domain, DOMAIN=encrypt|verify (repeatable); the
    /// strictest of this and the MX-prefix policy applies.
    #[arg(long, value_name = "DOMAIN=LEVEL", value_parser = mxpipe::engine::parse_floor)]
    tls_floor: Vec<(String, mxpipe::policy::Floor)>,
}

/// The engine's defaults, which the flags' defaults are (one definition, shared with the
/// configuration file's `[engine]` table).
fn engine_default() -> mxpipe::engine::EngineConfig {
    mxpipe::engine::EngineConfig::default()
}

impl EngineArgs {
    fn config(&self) -> mxpipe::engine::EngineConfig {
        let mut c = mxpipe::engine::EngineConfig::default();
        if let Some(n) = self.shards {
            c.shards = n.max(1);
        }
        c.max_conns_per_dest = self.max_conns.max(1);
        c.max_conns_per_ip = self.max_conns_per_ip.max(1);
        c.max_msgs_per_conn = self.max_msgs_per_conn.max(1);
        // Bounded, so deadlines computed from them cannot overflow.
        c.idle_timeout = Duration::from_secs(self.idle_timeout.min(86_400));
        c.connect_timeout = Duration::from_secs(self.connect_timeout.clamp(1, 3600));
        c.command_timeout = Duration::from_secs(self.command_timeout.clamp(1, 3600));
        c.kx = self.kx;
        c.ehlo_name = self.ehlo_name.clone();
        c.policy.scope = self.policy_scope;
        c.policy.mta_sts = !self.no_mta_sts;
        c.dane = !self.no_dane;
        c.resolver.validate_dnssec = self.validate_dnssec;
        c.floors = self.tls_floor.iter().cloned().collect();
        c.tickets_per_host = c.tickets_per_host.max(c.max_conns_per_dest);
        c
    }
}

#[derive(Args)]
struct SendArgs {
    /// Messages, one JSON object per line: {"id","from","to":[..],"data"} or "data_file".
    /// Addresses may have UTF-8 local parts: sent with SMTPUTF8 where the MX offers it, else
    /// bounced with 5.6.7.
    #[arg(long, value_name = "FILE.jsonl")]
    input: PathBuf,
    /// Where to write one outcome per recipient (JSON lines); default: discard.
    #[arg(long, value_name = "FILE.jsonl")]
    outcomes: Option<PathBuf>,
    /// DNS server to ask, ADDR:PORT (default: the system resolver).
    #[arg(long, value_name = "ADDR:PORT", value_parser = mxpipe::engine::parse_dns)]
    dns: Option<std::net::SocketAddr>,
    /// Ports to dial instead of 25 and 26, e.g. 25=2525,26=2526.
    #[arg(long, value_name = "MAP", default_value = "25=25,26=26")]
    port_map: mxpipe::engine::PortMap,
    /// Extra trust anchor (PEM) for verified TLS, beside the Mozilla roots (repeatable).
    #[arg(long, value_name = "FILE")]
    ca: Vec<PathBuf>,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
    /// Keep the TLS policy's memory (pins) in DIR across runs: created if missing, file
    /// policy-state.json, mode 0600. Without it, pins last only for this run.
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// How long a domain seen with a prefixed MX keeps needing verified TLS, e.g. 30d; 0s: no pins.
    #[arg(long, value_name = "DURATION", default_value = "30d", value_parser = mxpipe::value::duration::parse_duration)]
    pin_ttl: Duration,
    /// Send from the egress sources and pools of the `[egress]` table in FILE (a `mxpipe
    /// serve` config will do): each connection binds a source of the message's pool (input
    /// field "pool", else the rules by sender domain, else the default pool) and says its
    /// EHLO name. An address this host lacks is an error naming the source. Warm-up counters
    /// are kept in --state-dir (warmup-state.json) if given, else for this run only.
    #[arg(long, value_name = "FILE")]
    egress: Option<PathBuf>,
    #[command(flatten)]
    engine: EngineArgs,
}

#[derive(Args)]
struct DemoArgs {
    /// Destination domains generated.
    #[arg(long, value_name = "N", default_value_t = 300)]
    domains: usize,
    /// Messages in the burst.
    #[arg(long, value_name = "N", default_value_t = 3000)]
    messages: usize,
    /// Recipients per message (spread over the domains).
    #[arg(long, value_name = "N", default_value_t = 2)]
    rcpts_per_msg: usize,
    /// Bytes per message.
    #[arg(long, value_name = "BYTES", default_value_t = 2048)]
    size: usize,
    /// Loopback addresses (127.1.x.y) the MX hosts are spread over.
    #[arg(long, value_name = "N", default_value_t = 64)]
    addresses: usize,
    /// Send the burst this many times, each after the previous one is done (the later ones
    /// show a warm engine: cached DNS, idle connections reused).
    #[arg(long, value_name = "N", default_value_t = 2)]
    bursts: usize,
    /// Serve the generated zone unsigned, without TLSA records, and do not validate DNSSEC
    /// (the baseline that DANE's cost is measured against).
    #[arg(long)]
    unsigned: bool,
    /// DKIM-sign every message (before each burst's clock starts, as `serve` signs at intake)
    /// with a key made for the run: ed25519, rsa (2048 bits), or none.
    #[arg(long, value_name = "ALG", default_value = "ed25519", value_parser = dkim_choice)]
    dkim: DkimChoice,
    /// Send from the system's address only, instead of the demo's four egress sources on
    /// 127.0.0.2-127.0.0.5 in two pools (bulk: out1-out3 weighted 3:2:1; transactional: out4,
    /// every fifth message).
    #[arg(long)]
    no_egress: bool,
    /// Write one outcome per recipient here (JSON lines).
    #[arg(long, value_name = "FILE.jsonl")]
    outcomes: Option<PathBuf>,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    engine: EngineArgs,
}

/// `--dkim`: an algorithm or none (a newtype: clap reads a bare `Option` as "flag may be absent").
#[derive(Clone, Copy, Debug)]
struct DkimChoice(Option<mxpipe::dkim::Algorithm>);

fn dkim_choice(s: &str) -> Result<DkimChoice, String> {
    match s {
        "none" | "off" => Ok(DkimChoice(None)),
        alg => alg.parse().map(|a| DkimChoice(Some(a))),
    }
}

/// A port number, or `off` (a newtype: clap reads a bare `Option` as "flag may be absent").
#[derive(Clone, Copy, Debug)]
struct PortOrOff(Option<u16>);

fn port_or_off(s: &str) -> Result<PortOrOff, String> {
    match s {
        "off" | "none" => Ok(PortOrOff(None)),
        _ => s.parse::<u16>().map(|p| PortOrOff(Some(p))).map_err(|_| format!("{s:?} is not a port number (0-65535) or 'off'")),
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
    /// Offer REQUIRETLS (RFC 8689) once TLS is active and take MAIL FROM:<..> REQUIRETLS;
    /// such messages are counted, and marked `X-Mxpipe-Requiretls: yes` in --mail-dir files.
    #[arg(long)]
    requiretls: bool,
    /// Do not offer SMTPUTF8 (RFC 6531; offered by default, and such messages are counted and
    /// marked `X-Mxpipe-Smtputf8: yes` in --mail-dir files): a server that takes ASCII
    /// addresses only, to which UTF-8 local parts must bounce 5.6.7.
    #[arg(long)]
    no_smtputf8: bool,
    /// Probability of answering a RCPT with 451 4.3.0.
    #[arg(long, value_name = "P", default_value_t = 0.0, value_parser = rate)]
    temp_fail_rate: f64,
    /// Probability of answering a RCPT with 550 5.1.1.
    #[arg(long, value_name = "P", default_value_t = 0.0, value_parser = rate)]
    perm_fail_rate: f64,
    /// Probability of answering a RCPT with 451 4.7.28 (a receiver's rate limit).
    #[arg(long, value_name = "P", default_value_t = 0.0, value_parser = rate)]
    rate_limit_rate: f64,
    /// Probability of closing the connection at the end of a message's data, before replying.
    #[arg(long, value_name = "P", default_value_t = 0.0, value_parser = rate)]
    drop_rate: f64,
    /// Probability of answering a connection's greeting with 421 4.7.0 and closing it (a
    /// receiver throttling the sending address).
    #[arg(long, value_name = "P", default_value_t = 0.0, value_parser = rate)]
    refuse_rate: f64,
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
    // The library's events go to stderr as text; `serve` sets its log up from its
    // configuration instead, once it has read it.
    if !matches!(cli.cmd, Cmd::Serve(_)) {
        if let Err(msg) = mxpipe::logging::init(Default::default(), Default::default()) {
            eprintln!("mxpipe: error: {msg}");
            return ExitCode::FAILURE;
        }
    }
    let result = match cli.cmd {
        Cmd::Sink(args) => run_sink(args),
        Cmd::Send(args) => run_send(args),
        Cmd::Demo(args) => run_demo(args),
        Cmd::Serve(args) => run_serve(args),
        Cmd::Dkim { cmd: DkimSub::Keygen { domain, selector, algorithm, bits, out } } => {
            let out = out.unwrap_or_else(|| PathBuf::from(format!("{selector}.{domain}.key")));
            mxpipe::dkim::keys::keygen(&domain, &selector, algorithm, bits, &out).map(|text| print!("{text}"))
        }
        Cmd::Queue(args) => run_queue(args),
        Cmd::Policy(args) => run_policy(args),
        Cmd::Tlsrpt(args) => run_tlsrpt(args),
        Cmd::Token { name, scope, tokens_file } => run_token(&name, scope, tokens_file.as_deref()),
        Cmd::Passwd { user, iterations } => mxpipe::auth::passwd(&user, iterations, std::io::stdin().lock()).map(|line| println!("{line}")),
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
                std::fs::write(path, &pki.ca_pem).map_err(|e| format!("cannot write the CA certificate to {}: {e}", path.display()))?;
            }
            pki.identity
        }
    };
    let resumption =
        tls::ServerResumption { tickets: !a.no_tickets, session_cache: if a.no_session_cache { 0 } else { a.session_cache_size } };
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
    cfg.requiretls = a.requiretls;
    cfg.smtputf8 = !a.no_smtputf8;
    cfg.faults = Faults {
        temp_fail_rate: a.temp_fail_rate,
        perm_fail_rate: a.perm_fail_rate,
        rate_limit_rate: a.rate_limit_rate,
        drop_rate: a.drop_rate,
        refuse_rate: a.refuse_rate,
        delay: Duration::from_millis(a.delay),
        only_from: None,
    };
    if let Some(dir) = &a.mail_dir {
        mxpipe::sink::MailDir::install(&mut cfg, dir.clone());
    }
    cfg.max_message_size = a.max_message_size;
    cfg.max_conns = a.max_conns;
    cfg.idle_timeout = Duration::from_secs(a.idle_timeout.max(1));

    let rt = runtime(a.threads)?;
    let report = rt.block_on(async {
        let stop = stop_signal(a.duration)?;
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
        stop.await;
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

/// Open the outcome file (or nothing) for a writer thread.
fn outcome_writer(path: &Option<PathBuf>) -> Result<Option<std::io::BufWriter<std::fs::File>>, String> {
    match path {
        None => Ok(None),
        Some(p) => std::fs::File::create(p)
            .map(|f| Some(std::io::BufWriter::with_capacity(1 << 16, f)))
            .map_err(|e| format!("cannot create --outcomes {}: {e}", p.display())),
    }
}

fn write_outcome(w: &mut Option<std::io::BufWriter<std::fs::File>>, o: &mxpipe::outcome::Outcome, failed: &mut bool) {
    use std::io::Write;
    if let Some(f) = w {
        if !*failed && writeln!(f, "{}", o.to_json()).is_err() {
            *failed = true;
            eprintln!("mxpipe: error: writing outcomes failed; the summary still counts them");
        }
    }
}

fn print_summary(stats: &mxpipe::engine::EngineStats, tally: &mxpipe::outcome::Tally) {
    println!(
        "messages {}  recipients {}  delivered {}  deferred {}  bounced {}",
        stats.messages, stats.recipients, tally.delivered, tally.deferred, tally.bounced
    );
    println!("elapsed {:.2} s  {:.0} messages/s  engine CPU {:.2} s", stats.elapsed_s, stats.messages_per_s, stats.cpu_s);
    println!(
        "connections {} opened, {} reuses from the idle pool, {:.1} transactions per connection",
        stats.connections_opened, stats.connections_reused, stats.transactions_per_connection
    );
    println!("TLS handshakes {} full, {} resumed", stats.tls_full_handshakes, stats.tls_resumed_handshakes);
    println!(
        "DNS {} lookups, {} cache hits, {} coalesced, {} queries sent",
        stats.dns_lookups, stats.dns_cache_hits, stats.dns_coalesced, stats.dns_queries
    );
    let join = |m: &std::collections::BTreeMap<String, u64>| m.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ");
    println!("recipients by deciding policy: {}", join(&tally.by_policy));
    println!("recipients by policy source applied: {}", join(&tally.by_source));
    if tally.policy_reports > 0 || stats.mta_sts_fetches > 0 {
        println!(
            "MTA-STS: {} policy fetches ({} failed); {} recipients over connections a testing policy would refuse",
            stats.mta_sts_fetches, stats.mta_sts_fetch_failures, tally.policy_reports
        );
    }
    if stats.tlsa_lookups > 0 {
        println!(
            "DANE: {} TLSA lookups ({} failed or bogus), {} verifying configs built",
            stats.tlsa_lookups, stats.tlsa_failures, stats.dane_configs
        );
    }
    println!("recipients by TLS: {}; over resumed sessions {}", join(&tally.by_tls), tally.resumed);
    println!("recipients with a DNSSEC-authenticated MX answer: {}", tally.dnssec);
    if !tally.by_egress_source.is_empty() {
        println!("recipients by egress source: {}", join(&tally.by_egress_source));
        println!("messages delivered by egress source: {}", join(&tally.messages_by_egress_source));
    }
}

/// Recipients `send` lets wait for an outcome before it reads more input.
const MAX_PENDING_RECIPIENTS: u64 = 200_000;

/// `--trust-anchors` of `send`: read the files (a DS is resolved through the nameserver
/// already configured) before the engine starts; they switch validation on.
fn load_trust_anchors(cfg: &mut mxpipe::resolve::ResolverConfig, files: &[PathBuf]) -> Result<(), String> {
    if files.is_empty() {
        return Ok(());
    }
    let rt =
        tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| format!("cannot start the async runtime: {e}"))?;
    rt.block_on(mxpipe::dnssec::configure(cfg, files)).map_err(|e| format!("--trust-anchors: {e}"))
}

fn run_send(a: SendArgs) -> Result<(), String> {
    use std::io::BufRead;
    let _ = mxpipe::sys::raise_nofile_limit();
    let mut cfg = a.engine.config();
    if let Some(dns) = a.dns {
        cfg.resolver.nameserver = Some(dns);
    }
    cfg.port_map = a.port_map;
    load_trust_anchors(&mut cfg.resolver, &a.engine.trust_anchors)?;
    for p in &a.ca {
        cfg.extra_roots.extend(tls::certs::load_certs(p).map_err(|e| e.to_string())?);
    }
    if a.pin_ttl > mxpipe::policy::state::MAX_PIN_TTL {
        return Err("--pin-ttl: at most a year (365d)".into());
    }
    let state_opts = mxpipe::policy::state::StateOptions { pin_ttl: a.pin_ttl, ..Default::default() };
    let state = match &a.state_dir {
        Some(dir) => mxpipe::policy::state::PolicyState::open(dir, state_opts).map_err(|e| format!("--state-dir: {e}"))?,
        None => mxpipe::policy::state::PolicyState::in_memory(state_opts),
    };
    cfg.state = Some(std::sync::Arc::new(state));
    if let Some(file) = &a.egress {
        let warm = a.state_dir.as_ref().map(|d| d.join("warmup-state.json"));
        cfg.egress = Some(std::sync::Arc::new(mxpipe::egress::load_file(file, warm).map_err(|e| format!("--egress: {e}"))?));
    }
    let input = std::fs::File::open(&a.input).map_err(|e| format!("cannot open --input {}: {e}", a.input.display()))?;
    let mut out = outcome_writer(&a.outcomes)?;
    let (engine, outcomes) = mxpipe::engine::Engine::start(cfg).map_err(|e| e.to_string())?;
    let collector = std::thread::spawn(move || {
        let mut tally = mxpipe::outcome::Tally::default();
        let mut failed = false;
        for o in outcomes.iter() {
            tally.add(&o);
            write_outcome(&mut out, &o, &mut failed);
        }
        if let Some(mut f) = out {
            use std::io::Write;
            if f.flush().is_err() {
                failed = true;
            }
        }
        (tally, failed)
    });
    let mut rejected = 0u64;
    let mut reader = std::io::BufReader::new(input);
    let mut raw = Vec::new();
    let mut read_error = None;
    for n in 1.. {
        raw.clear();
        match reader.read_until(b'\n', &mut raw) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                // Stop reading, but still let everything submitted finish with its outcome.
                read_error = Some(format!("reading --input line {n}: {e}"));
                break;
            }
        }
        let Ok(line) = std::str::from_utf8(&raw) else {
            eprintln!("mxpipe: input line {n} rejected: not UTF-8");
            rejected += 1;
            continue;
        };
        if line.trim().is_empty() {
            continue;
        }
        // Back-pressure: keep the recipients in flight bounded, however large the input.
        while engine.pending() > MAX_PENDING_RECIPIENTS {
            std::thread::sleep(Duration::from_millis(1));
        }
        let mut parsed = match mxpipe::engine::input::parse_line(line) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("mxpipe: input line {n} rejected: {e}");
                rejected += 1;
                continue;
            }
        };
        let data = match (parsed.data.take(), parsed.data_file.take()) {
            (Some(d), None) => d.into_bytes(),
            (None, Some(f)) => match std::fs::read(&f) {
                Ok(d) => d,
                Err(e) => {
                    eprintln!("mxpipe: input line {n} rejected: cannot read data_file {}: {e}", f.display());
                    rejected += 1;
                    continue;
                }
            },
            _ => {
                eprintln!("mxpipe: input line {n} rejected: give exactly one of \"data\" and \"data_file\"");
                rejected += 1;
                continue;
            }
        };
        if let Err(e) = engine.submit(parsed.into_submission(data)) {
            eprintln!("mxpipe: input line {n} rejected: {e}");
            rejected += 1;
        }
    }
    let stats = engine.shutdown();
    let (tally, write_failed) = collector.join().map_err(|_| "outcome writer panicked".to_string())?;
    if let Some(e) = read_error {
        print_summary(&stats, &tally);
        return Err(e);
    }
    if a.json {
        let v = serde_json::json!({ "engine": stats, "outcomes": tally, "rejected_input_lines": rejected });
        println!("{}", serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?);
    } else {
        print_summary(&stats, &tally);
        if rejected > 0 {
            println!("input lines rejected: {rejected} (see the messages above)");
        }
    }
    if write_failed {
        return Err("not every outcome could be written to --outcomes".into());
    }
    if tally.total() != stats.recipients {
        return Err(format!("{} outcomes for {} recipients: the engine lost track of some", tally.total(), stats.recipients));
    }
    if rejected > 0 {
        return Err(format!("{rejected} input line(s) rejected"));
    }
    Ok(())
}

fn run_demo(a: DemoArgs) -> Result<(), String> {
    let _ = mxpipe::sys::raise_nofile_limit();
    let rt = runtime(None)?;
    let mut out = outcome_writer(&a.outcomes)?;
    let cfg = mxpipe::demo::DemoConfig {
        domains: a.domains,
        messages: a.messages,
        rcpts_per_msg: a.rcpts_per_msg,
        size: a.size,
        addresses: a.addresses,
        bursts: a.bursts,
        signed: !a.unsigned,
        dkim: a.dkim.0,
        engine: a.engine.config(),
        trust_anchor_files: a.engine.trust_anchors.clone(),
        egress: (!a.no_egress).then(mxpipe::egress::demo_config),
    };
    if !a.json {
        println!(
            "mxpipe demo: {} messages x {} recipients to {} domains (MX hosts: a third each starttls-, smtps-, plain; the plain ones under MTA-STS, half enforce, half testing; {}) on {} loopback addresses",
            cfg.messages,
            cfg.rcpts_per_msg,
            cfg.domains,
            if cfg.signed { "DNSSEC-signed, a third of all under DANE" } else { "unsigned, no DANE" },
            cfg.addresses.min(cfg.domains)
        );
    }
    let report = rt.block_on(mxpipe::demo::run(cfg, move |o| {
        let mut failed = false;
        write_outcome(&mut out, o, &mut failed);
    }))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?);
    } else {
        for (i, b) in report.bursts.iter().enumerate() {
            println!(
                "burst {}: {} messages in {:.2} s ({:.0}/s); connections {} new, {} reused; TLS {} full, {} resumed; {} DNS queries",
                i + 1,
                b.messages,
                b.seconds,
                b.messages_per_s,
                b.connections_opened,
                b.connections_reused,
                b.tls_full_handshakes,
                b.tls_resumed_handshakes,
                b.dns_queries
            );
        }
        print_summary(&report.engine, &report.outcomes);
        match &report.dkim {
            Some(d) => println!(
                "DKIM: {} messages signed ({}, key record at {}), {} unsigned; signing took {:.3} s on one thread ({:.0} us a message, before the bursts' clocks)",
                d.signed, d.algorithm, d.record, d.unsigned, d.seconds, d.us_per_message
            ),
            None => println!("DKIM: off (--dkim none)"),
        }
        let s = &report.sink;
        println!(
            "sink received {} messages for {} recipients; handshakes: STARTTLS {} full {} resumed, implicit {} full {} resumed",
            s.messages,
            s.recipients,
            s.starttls.handshakes_full,
            s.starttls.handshakes_resumed,
            s.implicit.handshakes_full,
            s.implicit.handshakes_resumed
        );
    }
    if report.outcomes.total() != report.engine.recipients {
        return Err(format!("{} outcomes for {} recipients", report.outcomes.total(), report.engine.recipients));
    }
    Ok(())
}

fn run_serve(a: ServeArgs) -> Result<(), String> {
    let _ = mxpipe::sys::raise_nofile_limit();
    mxpipe::sys::disable_transparent_huge_pages();
    let mut cfg = mxpipe::config::Config::load(&a.config).map_err(|e| e.to_string())?;
    cfg.dns.trust_anchors.extend(a.trust_anchors);
    mxpipe::logging::init(cfg.log.format, cfg.log.level)?;
    let rt = runtime(None)?;
    let report = rt.block_on(async { mxpipe::daemon::serve(cfg, stop_signal(None)?).await })?;
    let m = &report.manager;
    println!(
        "mxpipe serve: stopped. injected {}, recovered {}, delivered {}, bounced {} ({} expired), deferred attempts {}, DSNs {}, unfinished {}",
        report.injected_messages, m.recovered, m.delivered, m.bounced, m.expired, m.deferred_attempts, m.dsns, m.unfinished
    );
    if m.spool_errors > 0 {
        return Err(format!("{} spool errors (see above); unfinished messages stay in the spool", m.spool_errors));
    }
    Ok(())
}

fn run_token(name: &str, scope: mxpipe::inject::tokens::Scope, tokens_file: Option<&std::path::Path>) -> Result<(), String> {
    use mxpipe::inject::tokens;
    let (token, line) = tokens::generate(name, scope)?;
    match tokens_file {
        Some(path) => {
            tokens::append_line(path, name, &line)?;
            eprintln!("mxpipe token: {name} ({scope}) added to {}; restart serve to use it", path.display());
        }
        None => {
            eprintln!("mxpipe token: the line for [inject.http] tokens_file (the token itself is on standard output):");
            eprintln!("{line}");
        }
    }
    println!("{token}");
    Ok(())
}

fn run_queue(a: QueueArgs) -> Result<(), String> {
    use mxpipe::queue::ctl::{self, QueueCmd};
    let target = api_target(&a.api)?;
    let cmd = match a.cmd {
        QueueSub::List { cluster: false } => QueueCmd::List,
        QueueSub::List { cluster: true } => QueueCmd::ClusterList,
        QueueSub::Suspend { domain, duration } => {
            // Checked here too, so a typo is reported without asking the daemon.
            mxpipe::config::parse_duration(&duration).map_err(|e| format!("--for: {e}"))?;
            QueueCmd::Suspend { domain, duration: Some(duration) }
        }
        QueueSub::Resume { domain } => QueueCmd::Resume { domain },
        QueueSub::Bounce { domain } => QueueCmd::Bounce { domain },
    };
    println!("{}", ctl::run(&target, &cmd, a.api.json)?);
    Ok(())
}

fn run_policy(a: PolicyArgs) -> Result<(), String> {
    use mxpipe::policy::state::{unix_now, PolicyState, StateOptions};
    use mxpipe::queue::ctl;
    let (domain, forget) = match &a.cmd {
        PolicySub::Show { domain } => (domain, false),
        PolicySub::Forget { domain } => (domain, true),
    };
    let Some(dir) = &a.state_dir else {
        println!("{}", ctl::policy(&api_target(&a.api)?, domain, forget, a.api.json)?);
        return Ok(());
    };
    let name = ctl::path_segment(domain)?;
    if !dir.join(mxpipe::policy::state::FILE_NAME).exists() {
        return Err(format!("--state-dir {}: no {} there (was it a `send --state-dir`?)", dir.display(), mxpipe::policy::state::FILE_NAME));
    }
    let state = PolicyState::open(dir, StateOptions::default()).map_err(|e| format!("--state-dir: {e}"))?;
    if forget {
        let had = state.forget(name.as_str());
        state.flush().map_err(|e| format!("--state-dir: {e}"))?;
        if a.api.json {
            println!("{}", serde_json::json!({ "domain": name.as_str(), "forgotten": had }));
        } else {
            println!("{}", ctl::forgotten(name.as_str(), had));
        }
    } else {
        let view = state.view(name.as_str(), unix_now());
        if a.api.json {
            println!("{}", serde_json::to_string(&view).map_err(|e| e.to_string())?);
        } else {
            println!("{}", ctl::describe_policy(&view));
        }
    }
    Ok(())
}

fn run_tlsrpt(a: TlsRptArgs) -> Result<(), String> {
    use mxpipe::queue::ctl;
    use mxpipe::tlsrpt::{store::FILE_NAME, DayReport, Limits, TlsRpt};
    let TlsRptSub::Show { domain } = &a.cmd;
    let name = ctl::path_segment(domain)?;
    let days: Vec<DayReport> = match &a.state_dir {
        Some(dir) => {
            let path = dir.join(FILE_NAME);
            if !path.exists() {
                return Err(format!("--state-dir {}: no {FILE_NAME} there (is it a `serve` spool directory?)", dir.display()));
            }
            TlsRpt::open(Some(path), Limits::default())?.pending(name.as_str())
        }
        None => {
            let target = api_target(&a.api)?;
            let (code, body) = ctl::request(&target, "GET", &format!("/v1/tlsrpt/{name}"), "")?;
            let v: serde_json::Value = serde_json::from_str(&body)
                .map_err(|_| format!("{}: HTTP {code} with a body that is not JSON: {body:.200}", target.addr))?;
            if code != 200 {
                let msg = v["error"].as_str().unwrap_or(&body);
                let hint = if code == 401 || code == 403 { " (this needs an admin token: --token-file or MXPIPE_API_TOKEN)" } else { "" };
                return Err(format!("the daemon refused: HTTP {code}: {msg}{hint}"));
            }
            serde_json::from_value(v["days"].clone()).map_err(|e| format!("{}: unexpected answer: {e}", target.addr))?
        }
    };
    if a.api.json {
        println!("{}", serde_json::json!({ "domain": name.as_str(), "days": days }));
    } else {
        println!("{}", mxpipe::tlsrpt::report::describe_pending(name.as_str(), &days));
    }
    Ok(())
}

/// The daemon's API as the flags (and the daemon's configuration) say.
fn api_target(a: &ApiArgs) -> Result<mxpipe::queue::ctl::Target, String> {
    use mxpipe::queue::ctl::Target;
    let cfg = a.config.as_ref().map(|p| mxpipe::config::Config::load(p).map_err(|e| e.to_string())).transpose()?;
    let http = cfg.map(|c| c.inject.http).unwrap_or_default();
    let mut target = match &a.api {
        Some(api) => Target::parse(api)?,
        None => Target::new(http.listen),
    };
    target.token = match (&a.token_file, std::env::var("MXPIPE_API_TOKEN")) {
        (Some(p), _) => Some(mxpipe::inject::tokens::read_token_file(p).map_err(|e| format!("--token-file: {e}"))?),
        (None, Ok(t)) if !t.trim().is_empty() => Some(t.trim().to_string()),
        _ => match &http.client_token_file {
            Some(p) => Some(mxpipe::inject::tokens::read_token_file(p).map_err(|e| format!("inject.http.client_token_file: {e}"))?),
            None => None,
        },
    };
    if let Some(ca) = &a.ca {
        let mut roots = rustls::RootCertStore::empty();
        tls::certs::add_roots_from_file(&mut roots, ca).map_err(|e| format!("--ca: {e}"))?;
        target = target.with_tls(roots)?;
    } else if a.tls || http.tls.enabled() {
        let mut roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
        if let Some(cert) = &http.tls.cert {
            tls::certs::add_roots_from_file(&mut roots, cert).map_err(|e| format!("inject.http.tls.cert: {e}"))?;
        }
        target = target.with_tls(roots)?;
    }
    Ok(target)
}

/// A future that completes on SIGINT, SIGTERM, or the end of `duration`. The signal handlers
/// are installed now (inside the runtime), before the caller announces it is ready, so a
/// signal sent right after that announcement is never lost to the default action.
fn stop_signal(duration: Option<u64>) -> Result<impl std::future::Future<Output = ()>, String> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(|e| format!("cannot handle SIGTERM: {e}"))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| format!("cannot handle SIGINT: {e}"))?;
    Ok(async move {
        let limit = async {
            match duration {
                Some(s) => tokio::time::sleep(Duration::from_secs(s)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
            _ = limit => {}
        }
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
