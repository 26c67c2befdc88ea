//! The SMTP server core: the receiving side of SMTP that both the daemon's injection
//! listener ([`crate::inject::smtp`]) and the test and benchmark sink ([`crate::sink`]) run.
//!
//! It owns listening on a STARTTLS port and an implicit-TLS port, the connection limits, the
//! TLS upgrade, graceful shutdown and the session itself (its `session` module: DATA and BDAT, SIZE,
//! PIPELINING, STARTTLS, REQUIRETLS, SMTPUTF8, AUTH PLAIN, allowed networks, per-session limits), whose command
//! lines are parsed by a pure function ([`command`]). Where an accepted message goes is the
//! [`Acceptor`]'s business (the spool, a mail directory); without one, messages are counted
//! and discarded. [`Faults`] are off unless a preset (the sink) turns them on. It knows
//! nothing of delivery.
//!
//! Use from a tokio runtime (multi-threaded, to use every core):
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use mxpipe::{smtp_server, tls};
//! let pki = tls::certs::generate(&["localhost".into()])?;
//! let server_tls = tls::server_config(pki.identity.clone(), tls::ServerResumption::default())?;
//! let mut cfg = smtp_server::Config::new(server_tls);
//! cfg.starttls_port = Some(0); // ephemeral, for tests
//! cfg.implicit_port = Some(0);
//! let server = smtp_server::Server::start(cfg).await?;
//! println!("STARTTLS on {:?}", server.addr(smtp_server::PortKind::StartTls));
//! let report = server.shutdown(std::time::Duration::from_secs(5)).await;
//! println!("{}", report.stats.to_table());
//! # Ok(()) }
//! ```

pub mod command;
mod per_client;
mod session;
mod stats;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use session::MAX_COMMAND_LINE;
pub use stats::MAX_PEERS;
pub use stats::{FaultStats, PeerStat, PeerTable, PortStats, StatsSnapshot};

use session::{ConnState, Exit, Session};
use stats::{inc, Stats};

/// Which kind of port a listener is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PortKind {
    /// Plain SMTP with STARTTLS (port 25).
    StartTls = 0,
    /// TLS from the first byte (port 26 in the MX-prefix proposal, like 465 for submission).
    Implicit = 1,
}

impl fmt::Display for PortKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PortKind::StartTls => "starttls",
            PortKind::Implicit => "implicit",
        })
    }
}

/// Faults to inject, for tests and capacity drills (the sink's presets; the daemon leaves them off). Rates are probabilities in [0, 1].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Faults {
    /// Answer a RCPT with 451 4.3.0.
    pub temp_fail_rate: f64,
    /// Answer a RCPT with 550 5.1.1.
    pub perm_fail_rate: f64,
    /// Answer a RCPT with `451 4.7.28` and a rate-limit text, as large receivers throttle.
    pub rate_limit_rate: f64,
    /// Close the connection at the end of a message's data, before the final reply: the
    /// client cannot know whether the message was taken. Decided per transaction, at MAIL.
    pub drop_rate: f64,
    /// Answer the greeting with `421 4.7.0 Try again later, closing connection` and close,
    /// as receivers throttle a sending address before any command. Decided per connection.
    pub refuse_rate: f64,
    /// Wait this long before every reply.
    pub delay: Duration,
    /// Roll the rate faults only on connections from this client address (one egress source
    /// of a sender, say); `None`: on every connection.
    pub only_from: Option<IpAddr>,
}

/// Where an accepted message goes instead of being counted and discarded: the daemon's
/// injection listener hands it to the spool, the sink's `--mail-dir` to a directory. `Ok`
/// carries the queue id for the 250 reply, given only once the message is safe; `Err` the
/// reply to give instead (the client retries a 4xx).
pub trait Acceptor: Send + Sync + 'static {
    /// Take one message: envelope as received (already checked), content (unstuffed), and
    /// whether the client gave `MAIL FROM:<..> REQUIRETLS` (RFC 8689; only possible over TLS
    /// on a listener with [`Config::requiretls`]): the acceptor must keep that with the message.
    fn accept(
        &self,
        from: Vec<u8>,
        rcpts: Vec<Vec<u8>>,
        data: Vec<u8>,
        requiretls: bool,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<String, Refused>> + Send + '_>>;

    /// [`Acceptor::accept`] with every MAIL parameter the session took; what the session
    /// calls. The default passes REQUIRETLS on and drops SMTPUTF8, which an acceptor needs
    /// only to record (the envelope's UTF-8 addresses say themselves that they need it): the
    /// sink's `--mail-dir` overrides it to mark such messages.
    fn accept_with(
        &self,
        from: Vec<u8>,
        rcpts: Vec<Vec<u8>>,
        data: Vec<u8>,
        params: MailParams,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<String, Refused>> + Send + '_>> {
        self.accept(from, rcpts, data, params.requiretls)
    }
}

/// The MAIL parameters a transaction was opened with, for an [`Acceptor`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MailParams {
    /// `REQUIRETLS` (RFC 8689; only over TLS on a listener with [`Config::requiretls`]).
    pub requiretls: bool,
    /// `SMTPUTF8` (RFC 6531; only on a listener with [`Config::smtputf8`]).
    pub smtputf8: bool,
    /// The client's address.
    pub peer: Option<IpAddr>,
    /// The name the client gave in its last EHLO or HELO (at most a command line long).
    pub helo: Option<String>,
    /// Whether the session is over TLS.
    pub tls: bool,
}

/// An [`Acceptor`]'s refusal: the reply code with its enhanced status, and a text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// `"452 4.3.1"`, `"451 4.3.0"`: a temporary failure, so the client keeps the message.
    pub code: &'static str,
    /// Why, for the client (one line; control characters are replaced).
    pub text: String,
}

/// A shared [`Acceptor`] in a config (Debug without printing the acceptor).
#[derive(Clone)]
pub struct AcceptorRef(pub Arc<dyn Acceptor>);

impl fmt::Debug for AcceptorRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Acceptor")
    }
}

/// Everything a server needs to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Addresses to listen on; each gets both port kinds that are enabled.
    pub listen: Vec<IpAddr>,
    /// STARTTLS port (`None`: off; `Some(0)`: an ephemeral port).
    pub starttls_port: Option<u16>,
    /// Implicit-TLS port (`None`: off; `Some(0)`: an ephemeral port).
    pub implicit_port: Option<u16>,
    /// Shared by both port kinds, so sessions resume across them.
    pub tls: Arc<ServerConfig>,
    /// Name in the banner and EHLO reply.
    pub hostname: String,
    /// Advertise and accept STARTTLS on the STARTTLS port (`--no-starttls` turns it off).
    pub starttls: bool,
    /// Refuse mail commands in clear on the STARTTLS port with 530.
    pub require_tls: bool,
    /// Offer REQUIRETLS (RFC 8689): advertise it in the EHLO reply once TLS is active
    /// (after STARTTLS, or on the implicit-TLS port) and take `MAIL FROM:<..> REQUIRETLS`
    /// there. Off: the parameter gets 555 5.5.4 like any unknown one.
    pub requiretls: bool,
    /// Offer SMTPUTF8 (RFC 6531): advertise it in the EHLO reply and take
    /// `MAIL FROM:<..> SMTPUTF8` and then UTF-8 addresses; without the parameter such an
    /// address gets 553 5.6.7. Off: the parameter gets 555 5.5.4. Default on.
    pub smtputf8: bool,
    /// Failures to inject on purpose (all off by default).
    pub faults: Faults,
    /// Advertised SIZE; larger messages get 552.
    pub max_message_size: u64,
    /// Recipients per transaction; the next RCPT gets 452 4.5.3.
    pub max_rcpts: usize,
    /// Connections served at once; more get 421 and are closed.
    pub max_conns: usize,
    /// Connections served at once from one client (an IPv4 address, or an IPv6 /64); more get
    /// 421 and are closed. 0: no per-client cap (a benchmark sink, where one load generator
    /// opens every connection).
    pub max_conns_per_ip: usize,
    /// How long one connection may last in all, busy or not (then 421 4.4.2).
    pub session_timeout: Duration,
    /// Where AUTH is required (a client outside `allowed_clients`): how long it has to
    /// authenticate before it is cut off.
    pub auth_timeout: Duration,
    /// Commands that carry no mail (NOOP, VRFY, RSET, HELP, unknown verbs) allowed per
    /// connection; the next one gets 421 and the connection is closed.
    pub max_idle_commands: u32,
    /// How long a client may stay silent between commands or inside a message.
    pub idle_timeout: Duration,
    /// How long a TLS handshake may take.
    pub handshake_timeout: Duration,
    /// Listen backlog.
    pub backlog: u32,
    /// Hand accepted messages to this instead of counting and discarding them.
    pub acceptor: Option<AcceptorRef>,
    /// Only clients from these networks may send without AUTH. Others get 554 5.7.1 and are
    /// closed, or, with `auth` set, must AUTH before MAIL. `None`: everyone (a test sink).
    pub allowed_clients: Option<Vec<crate::config::Cidr>>,
    /// AUTH PLAIN (the daemon's injection listener). `None`: no AUTH, and nothing on the
    /// session's hot path looks further than this.
    pub auth: Option<Auth>,
}

/// AUTH PLAIN on a listener (RFC 4954, RFC 4616).
#[derive(Debug, Clone)]
pub struct Auth {
    /// The accounts AUTH PLAIN checks passwords against.
    pub users: Arc<crate::auth::Users>,
    /// Offer and accept AUTH only over TLS; before STARTTLS, AUTH gets 538 5.7.11.
    pub require_tls: bool,
    /// Wait before answering a failed AUTH, to slow password guessing (the session waits,
    /// nothing else does).
    pub failure_delay: Duration,
    /// Failed AUTHs on one connection before it is closed with 421 4.7.0.
    pub max_failures: u32,
    /// Failed AUTHs per client address (IPv6: per /64; 10 in 10 minutes): past them, AUTH from it
    /// gets 454 4.7.0 without a password check.
    pub by_ip: Arc<crate::auth::FailureLog>,
}

impl Auth {
    /// One second before each failure reply, three failures per connection.
    pub fn new(users: Arc<crate::auth::Users>) -> Auth {
        Auth {
            users,
            require_tls: true,
            failure_delay: Duration::from_secs(1),
            max_failures: 3,
            by_ip: Arc::new(crate::auth::FailureLog::new(10, Duration::from_secs(600))),
        }
    }
}

/// How long a client may stay silent by default, on the test sink and the daemon's injection
/// listener alike (RFC 5321 §4.5.3.2.7: a server should wait at least 5 minutes).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// How long one connection may last in all, by default (sink and injection alike).
pub const SESSION_TIMEOUT: Duration = Duration::from_secs(3600);
/// How long a client that must AUTH has to do it, by default.
pub const AUTH_TIMEOUT: Duration = Duration::from_secs(30);
/// Commands that carry no mail allowed per connection, by default (Postfix's
/// smtpd_junk_command_limit).
pub const MAX_IDLE_COMMANDS: u32 = 100;

impl Config {
    /// Defaults: 127.0.0.1, ports 25 and 26, STARTTLS offered, no faults, 50 MB messages,
    /// 20,000 connections and no per-client cap (the sink's presets; injection sets its own),
    /// 300 s idle timeout (RFC 5321 §4.5.3.2.7), a one-hour session limit, 30 s to AUTH where
    /// it is required, 100 commands that carry no mail.
    pub fn new(tls: Arc<ServerConfig>) -> Config {
        Config {
            listen: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
            starttls_port: Some(25),
            implicit_port: Some(26),
            tls,
            hostname: "mxpipe-sink.localhost".into(),
            starttls: true,
            require_tls: false,
            requiretls: false,
            smtputf8: true,
            faults: Faults::default(),
            max_message_size: 50 * 1024 * 1024,
            max_rcpts: 1000,
            max_conns: 20_000,
            max_conns_per_ip: 0,
            session_timeout: SESSION_TIMEOUT,
            auth_timeout: AUTH_TIMEOUT,
            max_idle_commands: MAX_IDLE_COMMANDS,
            idle_timeout: IDLE_TIMEOUT,
            handshake_timeout: Duration::from_secs(10),
            backlog: 4096,
            acceptor: None,
            allowed_clients: None,
            auth: None,
        }
    }
}

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A listening socket could not be bound (address in use, not local, or no permission).
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address and port asked for.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// Neither port is on, or no listen address was given.
    #[error("no listener: both the STARTTLS and the implicit-TLS port are off, or no --listen address")]
    NoListener,
    /// A setting is out of range (a fault rate outside [0, 1], `max_conns` of 0).
    #[error("invalid setting: {0}")]
    Invalid(String),
}

/// One bound listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerInfo {
    /// The address and port bound (the real port when 0 was asked for).
    pub addr: SocketAddr,
    /// STARTTLS or implicit TLS.
    pub kind: PortKind,
}

/// What shutdown found.
#[derive(Debug, Clone, Copy)]
pub struct ShutdownReport {
    /// Counters after every session ended.
    pub stats: StatsSnapshot,
    /// Sessions still open when shutdown began.
    pub open_at_stop: u64,
}

/// State every session of one server shares.
pub(crate) struct Ctx {
    pub cfg: Arc<Config>,
    pub stats: Arc<Stats>,
    pub port: PortKind,
    /// Stop taking commands: idle sessions say 421 and close.
    pub shutdown: CancellationToken,
    /// The grace period is over: every session closes now.
    pub abort: CancellationToken,
    /// Connections open per client, shared by every listener of the server.
    pub per_client: Arc<per_client::PerClient>,
}

/// A running server. Dropping it without [`Server::shutdown`] leaves its tasks running until the
/// runtime ends.
pub struct Server {
    listeners: Vec<ListenerInfo>,
    stats: Arc<Stats>,
    shutdown: CancellationToken,
    abort: CancellationToken,
    tracker: TaskTracker,
    accept_tasks: Vec<JoinHandle<()>>,
}

impl Server {
    /// Bind every listener, then start accepting. Fails before accepting anything if any
    /// address cannot be bound.
    pub async fn start(cfg: Config) -> Result<Server, Error> {
        for (name, rate) in [
            ("temp-fail-rate", cfg.faults.temp_fail_rate),
            ("perm-fail-rate", cfg.faults.perm_fail_rate),
            ("rate-limit-rate", cfg.faults.rate_limit_rate),
            ("drop-rate", cfg.faults.drop_rate),
            ("refuse-rate", cfg.faults.refuse_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(Error::Invalid(format!("{name} must be between 0 and 1, got {rate}")));
            }
        }
        if cfg.max_conns == 0 {
            return Err(Error::Invalid("max-conns must be at least 1".into()));
        }
        let mut bound = Vec::new();
        for &ip in &cfg.listen {
            for (kind, port) in [(PortKind::StartTls, cfg.starttls_port), (PortKind::Implicit, cfg.implicit_port)] {
                let Some(port) = port else { continue };
                let addr = SocketAddr::new(ip, port);
                let listener = bind(addr, cfg.backlog).map_err(|source| Error::Bind { addr, source })?;
                let addr = listener.local_addr().map_err(|source| Error::Bind { addr, source })?;
                bound.push((ListenerInfo { addr, kind }, listener));
            }
        }
        if bound.is_empty() {
            return Err(Error::NoListener);
        }
        let cfg = Arc::new(cfg);
        let stats = Arc::new(Stats::default());
        let shutdown = CancellationToken::new();
        let abort = CancellationToken::new();
        let tracker = TaskTracker::new();
        let limit = Arc::new(Semaphore::new(cfg.max_conns));
        let mut listeners = Vec::new();
        let mut accept_tasks = Vec::new();
        let per_client = Arc::new(per_client::PerClient::default());
        for (info, listener) in bound {
            listeners.push(info);
            let ctx = Arc::new(Ctx {
                cfg: cfg.clone(),
                stats: stats.clone(),
                port: info.kind,
                shutdown: shutdown.clone(),
                abort: abort.clone(),
                per_client: per_client.clone(),
            });
            accept_tasks.push(tokio::spawn(accept_loop(listener, ctx, tracker.clone(), limit.clone())));
        }
        Ok(Server { listeners, stats, shutdown, abort, tracker, accept_tasks })
    }

    /// Every bound listener, with its real port (useful after asking for port 0).
    pub fn listeners(&self) -> &[ListenerInfo] {
        &self.listeners
    }

    /// The first listener of a kind.
    pub fn addr(&self, kind: PortKind) -> Option<SocketAddr> {
        self.listeners.iter().find(|l| l.kind == kind).map(|l| l.addr)
    }

    /// The counters now.
    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    /// Messages accepted per client address and EHLO name, busiest first (at most
    /// [`MAX_PEERS`] pairs; messages of further pairs are counted in [`PeerTable::overflow`]).
    pub fn peers(&self) -> PeerTable {
        self.stats.peers()
    }

    /// A reader of the counters that outlives borrowing the sink (for metrics).
    pub fn stats_reader(&self) -> impl Fn() -> StatsSnapshot + Send + Sync + 'static {
        let stats = self.stats.clone();
        move || stats.snapshot()
    }

    /// Stop accepting, let open sessions finish for up to `grace` (idle ones are told 421 at
    /// once, ones inside a message may complete it), then close whatever is left.
    pub async fn shutdown(self, grace: Duration) -> ShutdownReport {
        let open_at_stop = self.stats.snapshot().sessions_active;
        for t in &self.accept_tasks {
            t.abort();
        }
        self.shutdown.cancel();
        self.tracker.close();
        if tokio::time::timeout(grace, self.tracker.wait()).await.is_err() {
            self.abort.cancel();
            // Sessions stop at their next await point; this bound is only a backstop.
            let _ = tokio::time::timeout(Duration::from_secs(5), self.tracker.wait()).await;
        }
        for t in self.accept_tasks {
            let _ = t.await;
        }
        ShutdownReport { stats: self.stats.snapshot(), open_at_stop }
    }
}

fn bind(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let sock = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    sock.set_reuseaddr(true)?;
    sock.bind(addr)?;
    sock.listen(backlog)
}

async fn accept_loop(listener: TcpListener, ctx: Arc<Ctx>, tracker: TaskTracker, limit: Arc<Semaphore>) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors or a connection reset before accept: not fatal.
                // Back off briefly so a full fd table does not spin the loop.
                if !matches!(e.kind(), std::io::ErrorKind::ConnectionAborted | std::io::ErrorKind::ConnectionReset) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                continue;
            }
        };
        inc(&ctx.stats.port(ctx.port).connections);
        let ctx = ctx.clone();
        // An outsider may stay only to AUTH (never an open relay).
        let mut must_auth = false;
        if let Some(allowed) = &ctx.cfg.allowed_clients {
            if !allowed.iter().any(|n| n.contains(peer.ip())) {
                if ctx.cfg.auth.is_none() {
                    inc(&ctx.stats.rejected_clients);
                    tracker.spawn(refuse_client(tcp, ctx));
                    continue;
                }
                must_auth = true;
            }
        }
        let slot = if ctx.cfg.max_conns_per_ip > 0 {
            match ctx.per_client.try_take(peer.ip(), ctx.cfg.max_conns_per_ip) {
                Some(slot) => Some(slot),
                None => {
                    inc(&ctx.stats.rejected_per_ip);
                    tracker.spawn(refuse_busy(tcp, ctx, "Too many connections from your address"));
                    continue;
                }
            }
        } else {
            None
        };
        match limit.clone().try_acquire_owned() {
            Ok(permit) => {
                tracker.spawn(async move {
                    let _slot = slot;
                    ctx.stats.sessions_active.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    serve(tcp, &ctx, must_auth.then_some(peer.ip())).await;
                    ctx.stats.sessions_active.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                    drop(permit);
                });
            }
            Err(_) => {
                inc(&ctx.stats.rejected_busy);
                tracker.spawn(refuse_busy(tcp, ctx, "Too many connections"));
            }
        }
    }
}

/// Over the connection limit: say so (in clear on the STARTTLS port; on the implicit port
/// there is no cheap way to speak, so just close) and hang up.
async fn refuse_busy(mut tcp: TcpStream, ctx: Arc<Ctx>, why: &str) {
    if ctx.port == PortKind::StartTls {
        let msg = format!("421 4.7.0 {} {why}, try again later\r\n", ctx.cfg.hostname);
        let _ = tokio::time::timeout(Duration::from_secs(2), tcp.write_all(msg.as_bytes())).await;
    }
}

/// A client outside the allowed networks: never an open relay.
async fn refuse_client(mut tcp: TcpStream, ctx: Arc<Ctx>) {
    if ctx.port == PortKind::StartTls {
        let msg = format!("554 5.7.1 {} Access denied: your address may not send mail here\r\n", ctx.cfg.hostname);
        let _ = tokio::time::timeout(Duration::from_secs(2), tcp.write_all(msg.as_bytes())).await;
    }
}

/// Serve one connection to its end. `must_auth`: the address of a client outside
/// `allowed_clients`, which must AUTH before MAIL.
async fn serve(tcp: TcpStream, ctx: &Ctx, must_auth: Option<IpAddr>) {
    let _ = tcp.set_nodelay(true);
    let now = tokio::time::Instant::now();
    let gate = ConnState {
        client: tcp.peer_addr().ok().map(|a| a.ip()),
        required: must_auth.is_some(),
        failures: 0,
        peer: must_auth,
        idle_commands: 0,
        deadline: Some(now + ctx.cfg.session_timeout),
        auth_deadline: must_auth.map(|_| now + ctx.cfg.auth_timeout),
    };
    let exit = match ctx.port {
        PortKind::Implicit => match handshake(tcp, ctx).await {
            Some(mut tls) => {
                let exit = Session::new(&mut tls, ctx, true, gate).run(true).await;
                close(&mut tls, exit).await;
                exit
            }
            None => return,
        },
        PortKind::StartTls => {
            let mut tcp = tcp;
            let (exit, gate) = {
                let mut s = Session::new(&mut tcp, ctx, false, gate);
                (s.run(true).await, s.conn_state())
            };
            if exit != Exit::StartTls {
                close(&mut tcp, exit).await;
                exit
            } else {
                match handshake(tcp, ctx).await {
                    Some(mut tls) => {
                        // A fresh session (RFC 3207: forget what the client said in clear), but
                        // failed AUTHs count for the whole connection.
                        let exit = Session::new(&mut tls, ctx, true, gate).run(false).await;
                        close(&mut tls, exit).await;
                        exit
                    }
                    None => return,
                }
            }
        }
    };
    if exit == Exit::Aborted {
        inc(&ctx.stats.sessions_aborted);
    }
}

/// Close our side first after a clean ending, so TIME_WAIT lands on the sink, not on the
/// client's ephemeral ports (the sink's listening port needs no fresh ports).
async fn close<S: tokio::io::AsyncWrite + Unpin>(io: &mut S, exit: Exit) {
    if matches!(exit, Exit::Quit | Exit::Timeout | Exit::Deadline | Exit::Shutdown | Exit::Protocol | Exit::Refused) {
        let _ = tokio::time::timeout(Duration::from_secs(2), io.shutdown()).await;
    }
}

async fn handshake(tcp: TcpStream, ctx: &Ctx) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    let acceptor = TlsAcceptor::from(ctx.cfg.tls.clone());
    let counters = ctx.stats.port(ctx.port);
    let res = tokio::select! {
        _ = ctx.abort.cancelled() => None,
        r = tokio::time::timeout(ctx.cfg.handshake_timeout, acceptor.accept(tcp)) => Some(r),
    };
    match res {
        Some(Ok(Ok(tls))) => {
            if tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
                inc(&counters.handshakes_resumed);
            } else {
                inc(&counters.handshakes_full);
            }
            Some(tls)
        }
        Some(_) => {
            inc(&counters.handshake_failures);
            None
        }
        None => {
            inc(&ctx.stats.sessions_aborted);
            None
        }
    }
}
