//! Connections to MX hosts: opening one according to a policy step (TCP, implicit TLS or
//! STARTTLS, certificate verification or not), driving the sans-I/O [`session`] over it, and
//! keeping idle ones for reuse.
//!
//! The pool knows nothing of DNS or of policy rules: it is handed an address, a port and a
//! [`Step`](crate::policy::Step) and reports what happened in terms the engine can act on ([`ConnectError`]).
//! One pool per shard, used from that shard's thread only, so it needs no lock.
//!
//! [`session`]: crate::session
//! [`Step`]: crate::policy::Step

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::outcome::TlsUse;
use crate::policy::{Security, TlsStart};
use crate::session::{ClientSession, Event, Message, MessageOutcome, SessionConfig, SessionError, TlsMode};
use crate::tls::TlsFacts;
use crate::tlsrpt::ResultType;

/// A plain or TLS stream. (`Gone` only exists for the instant of the STARTTLS upgrade.)
pub enum Stream {
    /// Clear-text TCP: before STARTTLS, or for the whole connection when policy allows clear text.
    Plain(TcpStream),
    /// TLS over TCP, after STARTTLS or from the first byte on the implicit-TLS port (boxed: it is large).
    Tls(Box<TlsStream<TcpStream>>),
    /// Placeholder while the plain stream is moved into the TLS handshake; reads and writes fail.
    Gone,
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Gone => Poll::Ready(Err(io::Error::from(io::ErrorKind::NotConnected))),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Gone => Poll::Ready(Err(io::Error::from(io::ErrorKind::NotConnected))),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Gone => Poll::Ready(Ok(())),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::Gone => Poll::Ready(Ok(())),
        }
    }
}

/// The TLS client configs of one shard: verifying (prefix policies, `Floor::Verified`) and
/// opportunistic (encrypt without authenticating). Each keeps its own session store, since
/// rustls will not resume a session made under a different verifier.
#[derive(Clone)]
pub struct TlsClients {
    /// For verified TLS: checks the chain against the roots and the name against [`Target::verify_name`].
    pub verifying: Arc<ClientConfig>,
    /// For opportunistic TLS: accepts any certificate, since encryption without authentication beats clear text.
    pub opportunistic: Arc<ClientConfig>,
}

/// Timeouts for opening connections; the SMTP dialogue's own come from the session.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Limit on the TCP connect.
    pub connect: Duration,
    /// Limit on the TLS handshake (implicit TLS or after STARTTLS).
    pub tls_handshake: Duration,
    /// Upper bound on any single SMTP wait (RFC 5321's are minutes; tests want seconds).
    pub max_command: Duration,
}

/// Where a connection goes and how it is secured: the pool's key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    /// The MX host name, for outcome records and error messages.
    pub host: String,
    /// The address and (mapped) port to dial.
    pub addr: SocketAddr,
    /// Whether TLS starts with STARTTLS or implicitly on connect.
    pub start: TlsStart,
    /// How strict TLS must be: clear, opportunistic or verified.
    pub security: Security,
    /// The name the certificate must match (the MX host as published).
    pub verify_name: String,
    /// The operator's MX budget the host falls under (its index), if any: connections are
    /// shared only within one budget, so reuse never escapes a budget's limits.
    pub budget: Option<usize>,
    /// The client config of a [`Security::RequireDane`] target: its verifier authenticates the
    /// server by the host's TLSA records, and its session store holds only sessions that
    /// verifier accepted. Required for, and used only by, `RequireDane`.
    pub dane: Option<DaneConfig>,
    /// The egress source the connection leaves from (bound before connecting), if any:
    /// receivers treat each sending address apart, so connections are never shared across sources.
    pub bind: Option<Bind>,
    /// The egress pool (its index) whose mail the connection carries: messages of different
    /// pools never share a connection, even from one source.
    pub pool: Option<usize>,
}

/// An egress source as a connection uses it: its index (in [`crate::egress::Egress::sources`])
/// and the local address bound, port 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Bind {
    /// The source's index.
    pub source: usize,
    /// Its local address.
    pub addr: IpAddr,
}

/// A DANE client config, compared and hashed by identity: one config stands for one set of
/// TLSA records, so an idle connection authenticated by records since replaced is not reused.
/// The second field, when set, gives each egress source its own copy ([`DaneConfig::for_source`]).
#[derive(Clone)]
pub struct DaneConfig(pub Arc<ClientConfig>, pub Option<Arc<DaneSources>>);

/// Per-source copies of one DANE client config: each shares the config's verifier (rustls
/// resumes a session only under the verifier that accepted it, so a session still resumes
/// only under the records it was verified with) and has a session store of its own, so a
/// session ticket one source got is never shown by another (receivers would link the two
/// addresses).
pub struct DaneSources {
    tickets: usize,
    configs: std::sync::Mutex<std::collections::HashMap<usize, Arc<ClientConfig>>>,
}

impl DaneSources {
    /// Copies whose stores keep `tickets` sessions each.
    pub fn new(tickets: usize) -> DaneSources {
        DaneSources { tickets: tickets.max(1), configs: Default::default() }
    }
}

impl DaneConfig {
    /// The config connections from egress source `source` use: its own copy (made once), or
    /// this one when no copies are kept.
    pub fn for_source(&self, source: usize) -> DaneConfig {
        let Some(by) = &self.1 else { return self.clone() };
        let mut configs = by.configs.lock().unwrap_or_else(|e| e.into_inner());
        let cfg = configs.entry(source).or_insert_with(|| {
            let mut c = (*self.0).clone();
            let store = Arc::new(crate::tls::TicketStore::new(1, by.tickets, 1));
            c.resumption = rustls::client::Resumption::store(store).tls12_resumption(rustls::client::Tls12Resumption::SessionIdOrTickets);
            Arc::new(c)
        });
        DaneConfig(cfg.clone(), None)
    }
}

impl PartialEq for DaneConfig {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for DaneConfig {}

impl std::hash::Hash for DaneConfig {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        std::ptr::hash(Arc::as_ptr(&self.0), state);
    }
}

impl std::fmt::Debug for DaneConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DaneConfig({:p})", Arc::as_ptr(&self.0))
    }
}

impl Target {
    /// The idle-pool key. A connection that verified a certificate is bound to the name it
    /// verified; an opportunistic or clear-text one is not bound to any name, so domains
    /// whose MX hosts share an address share its idle connections (as many hosted domains do).
    pub fn pool_key(&self) -> PoolKey {
        PoolKey {
            addr: self.addr,
            start: self.start,
            security: self.security,
            name: self.security.authenticates().then(|| self.verify_name.clone()),
            budget: self.budget,
            dane: self.dane.clone(),
            bind: self.bind,
            pool: self.pool,
        }
    }
}

/// See [`Target::pool_key`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    /// The address and port connected to.
    pub addr: SocketAddr,
    /// Whether TLS starts with STARTTLS or implicitly.
    pub start: TlsStart,
    /// The TLS strictness the connection was opened under.
    pub security: Security,
    /// The name the certificate was verified against; `None` for opportunistic and clear-text connections.
    pub name: Option<String>,
    /// The operator's MX budget index, if any: connections are not shared across budgets.
    pub budget: Option<usize>,
    /// The DANE config the connection was authenticated with, if any.
    pub dane: Option<DaneConfig>,
    /// The egress source it leaves from, if any.
    pub bind: Option<Bind>,
    /// The egress pool whose mail it carries, if any.
    pub pool: Option<usize>,
}

/// What we know of an open connection, for outcome records.
#[derive(Debug, Clone)]
pub struct ConnFacts {
    /// The MX host name as published.
    pub host: String,
    /// The address connected to.
    pub addr: IpAddr,
    /// The port actually dialled (after the port map).
    pub port: u16,
    /// How TLS was used: none, STARTTLS or implicit.
    pub tls: TlsUse,
    /// The negotiated TLS version, cipher and group, and whether it resumed; `None` in clear text.
    pub tls_facts: Option<TlsFacts>,
}

/// Why a connection could not be brought to the point of sending mail.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// TCP connect refused or timed out: the address (or port 26) is unreachable.
    #[error("connect to {addr} failed: {reason}")]
    Unreachable {
        /// The address and port dialled.
        addr: SocketAddr,
        /// The OS error, or that the connect timed out.
        reason: String,
    },
    /// TLS was required and could not be had: no STARTTLS, a bad certificate, a failed
    /// handshake. A policy failure: try the next MX host, never fall back to clear text.
    #[error("TLS policy failure at {host}: {reason}")]
    Policy {
        /// The MX host name.
        host: String,
        /// What failed: STARTTLS not offered, the certificate, or the handshake.
        reason: String,
        /// The failure as TLS-RPT names it (RFC 8460 §4.3).
        result: ResultType,
    },
    /// Opportunistic TLS failed in the handshake: the same host may be retried in clear.
    #[error("opportunistic TLS handshake with {host} failed: {reason}")]
    OpportunisticTls {
        /// The MX host name.
        host: String,
        /// The handshake error.
        reason: String,
    },
    /// Not tried: the engine is shutting down.
    #[error("{reason}")]
    Stopped {
        /// Why nothing was tried, for the outcome record.
        reason: String,
    },
    /// The server refused us at the greeting or EHLO, or broke the protocol.
    #[error("{host}: no SMTP session: {reason}")]
    Smtp {
        /// The MX host name.
        host: String,
        /// The server's reply or the protocol or I/O error.
        reason: String,
    },
}

/// An open SMTP connection whose session is ready for a message.
pub struct Conn {
    /// The socket, plain or TLS.
    pub stream: Stream,
    /// The SMTP client state machine driven over [`Conn::stream`].
    pub session: ClientSession,
    /// Where the connection goes, which is also its idle-pool key.
    pub target: Target,
    /// What is recorded about the connection in each outcome.
    pub facts: ConnFacts,
    /// Messages sent on this connection so far.
    pub messages: u32,
    /// Taken from the idle pool (so a failure on its first use may just mean it went stale).
    pub reused: bool,
    rbuf: Vec<u8>,
    max_command: Duration,
    /// Bytes received from the server when the current message was handed to the session.
    rx_at_send: u64,
    /// This connection's slot in the per-address connection limit; freed when it is dropped.
    pub slot: Option<tokio::sync::OwnedSemaphorePermit>,
    /// Its slot in the budget of its MX host's pattern, if the operator set one.
    pub mx_slot: Option<tokio::sync::OwnedSemaphorePermit>,
    /// Cluster mode: its leases under the limits shared with the other nodes; freed when it
    /// is dropped.
    pub leases: Vec<crate::cluster::Lease>,
}

/// How a message attempt on a connection ended (the caller still holds the message).
pub enum DeliverError {
    /// The session could not take the message (the server closed it in the meantime); nothing
    /// of it was sent, so it can go out on another connection.
    NotSent {
        /// Why the session refused the message.
        error: String,
    },
    /// The connection failed with the message in flight: whether it was taken is unknown.
    Broken {
        /// The session, TLS or I/O error that broke the connection.
        error: String,
    },
}

impl Conn {
    /// The server's certificate chain once TLS is up (on a resumed session, the chain of the
    /// session it resumed); `None` in clear text.
    pub fn peer_certificates(&self) -> Option<&[rustls_pki_types::CertificateDer<'static>]> {
        match &self.stream {
            Stream::Tls(s) => s.get_ref().1.peer_certificates(),
            _ => None,
        }
    }

    /// Open a connection to `target` and run the dialogue up to the first `Ready`.
    pub async fn open(target: Target, tls: &TlsClients, ehlo_name: &str, timeouts: Timeouts) -> Result<(Conn, bool), ConnectError> {
        let addr = target.addr;
        let tcp = match tokio::time::timeout(timeouts.connect, connect_from(target.bind, addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(ConnectError::Unreachable { addr, reason: e.to_string() }),
            Err(_) => return Err(ConnectError::Unreachable { addr, reason: "connect timed out".into() }),
        };
        let _ = tcp.set_nodelay(true);
        let mode = match (target.start, target.security) {
            (_, Security::Clear) => TlsMode::None,
            (TlsStart::Implicit, _) => TlsMode::Implicit,
            (TlsStart::Starttls, Security::Opportunistic) => TlsMode::Starttls { required: false },
            (TlsStart::Starttls, _) => TlsMode::Starttls { required: true },
        };
        let mut facts = ConnFacts { host: target.host.clone(), addr: addr.ip(), port: addr.port(), tls: TlsUse::None, tls_facts: None };
        let mut stream = Stream::Plain(tcp);
        let mut full_handshake = false;
        if mode == TlsMode::Implicit {
            let (s, f) = handshake(stream, &target, tls, timeouts).await?;
            stream = s;
            full_handshake = !f.resumed;
            facts.tls = TlsUse::Implicit;
            facts.tls_facts = Some(f);
        }
        let session =
            ClientSession::new(SessionConfig { ehlo_name: ehlo_name.to_string(), tls: mode, prefer_bdat: true, pipelining: true });
        let mut conn = Conn {
            stream,
            session,
            target,
            facts,
            messages: 0,
            reused: false,
            rbuf: Vec::with_capacity(4096),
            max_command: timeouts.max_command,
            rx_at_send: 0,
            slot: None,
            mx_slot: None,
            leases: Vec::new(),
        };
        // Drive the greeting, EHLO and (maybe) STARTTLS to Ready (`next_event` does the
        // writes and the TLS upgrade itself).
        match conn.next_event(tls, timeouts).await {
            Ok(Event::Ready) => {}
            Ok(other) => {
                return Err(ConnectError::Smtp {
                    host: conn.target.host.clone(),
                    reason: format!("unexpected event before ready: {}", event_name(&other)),
                })
            }
            Err(Failure::Session(e)) => return Err(session_error_to_connect(&conn.target, e)),
            Err(Failure::Tls(e)) => return Err(e),
            Err(Failure::Io(e)) => return Err(ConnectError::Smtp { host: conn.target.host.clone(), reason: e }),
        }
        if let Some(f) = &conn.facts.tls_facts {
            if conn.facts.tls == TlsUse::Starttls {
                full_handshake = !f.resumed;
            }
        }
        Ok((conn, full_handshake))
    }

    /// Send one message and wait for its outcome.
    pub async fn deliver(&mut self, msg: Message, tls: &TlsClients, timeouts: Timeouts) -> Result<MessageOutcome, DeliverError> {
        self.rx_at_send = self.session.stats().bytes_received;
        if self.session.send_message(msg).is_err() {
            return Err(DeliverError::NotSent { error: "the session was no longer ready".into() });
        }
        self.messages += 1;
        loop {
            match self.next_event(tls, timeouts).await {
                // The session queues a Ready after Done; the next use skips it (below).
                Ok(Event::Done(outcome)) => return Ok(outcome),
                Ok(Event::Ready) => continue,
                Ok(other) => return Err(DeliverError::Broken { error: format!("unexpected {}", event_name(&other)) }),
                Err(f) => {
                    let error = match f {
                        Failure::Session(e) => e.to_string(),
                        Failure::Tls(e) => e.to_string(),
                        Failure::Io(e) => e,
                    };
                    return Err(DeliverError::Broken { error });
                }
            }
        }
    }

    /// Whether the server has said anything since the current message was handed over. If
    /// it has not, it cannot have accepted the message.
    pub fn server_replied_to_message(&self) -> bool {
        self.session.stats().bytes_received > self.rx_at_send
    }

    /// Whether an idle connection still looks usable: a server that closed it, or said 421,
    /// in the meantime has made it readable. Costs one non-blocking poll.
    pub async fn probe_alive(&mut self) -> bool {
        let mut buf = [0u8; 64];
        // `timeout` polls the read once before looking at the (already passed) deadline.
        tokio::time::timeout(Duration::ZERO, self.stream.read(&mut buf)).await.is_err()
    }

    /// Say QUIT and read to the server's close, bounded; errors do not matter any more.
    pub async fn quit(mut self, tls: &TlsClients, timeouts: Timeouts) {
        self.session.quit();
        let bounded = Timeouts { max_command: Duration::from_secs(5).min(timeouts.max_command), ..timeouts };
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match self.next_event(tls, bounded).await {
                    Ok(Event::Closed) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            // Let the server close first when it will (TIME_WAIT then lands on its side).
            let mut buf = [0u8; 256];
            let _ = tokio::time::timeout(Duration::from_millis(500), self.stream.read(&mut buf)).await;
        })
        .await;
        let _ = self.stream.shutdown().await;
    }

    /// Move bytes until the session has an event for the caller. `Send` and `StartTls` are
    /// handled here.
    async fn next_event(&mut self, tls: &TlsClients, timeouts: Timeouts) -> Result<Event, Failure> {
        loop {
            while let Some(ev) = self.session.poll_event() {
                match ev {
                    Event::Send(bytes) => {
                        let wait = self.wait();
                        let w = async {
                            self.stream.write_all(&bytes).await?;
                            self.stream.flush().await
                        };
                        match tokio::time::timeout(wait, w).await {
                            Ok(Ok(())) => self.session.recycle(bytes),
                            Ok(Err(e)) => return Err(Failure::Io(format!("write failed: {e}"))),
                            Err(_) => return Err(Failure::Io("write timed out".into())),
                        }
                    }
                    Event::StartTls => {
                        let plain = std::mem::replace(&mut self.stream, Stream::Gone);
                        let (s, f) = handshake(plain, &self.target, tls, timeouts).await.map_err(Failure::Tls)?;
                        self.stream = s;
                        self.facts.tls = TlsUse::Starttls;
                        self.facts.tls_facts = Some(f);
                        self.session.tls_ready();
                    }
                    Event::Failed(e) => return Err(Failure::Session(e)),
                    other => return Ok(other),
                }
            }
            self.rbuf.clear();
            self.rbuf.reserve(4096);
            match tokio::time::timeout(self.wait(), self.stream.read_buf(&mut self.rbuf)).await {
                Ok(Ok(0)) => self.session.receive_eof(),
                Ok(Ok(_)) => self.session.receive(&self.rbuf),
                Ok(Err(e)) => return Err(Failure::Io(format!("read failed: {e}"))),
                Err(_) => return Err(Failure::Io(format!("timed out after {:?} waiting for the server", self.wait()))),
            }
        }
    }

    fn wait(&self) -> Duration {
        self.session.timeout().min(self.max_command)
    }
}

enum Failure {
    Session(SessionError),
    Tls(ConnectError),
    Io(String),
}

fn event_name(e: &Event) -> &'static str {
    match e {
        Event::Send(_) => "send",
        Event::StartTls => "starttls",
        Event::Ready => "ready",
        Event::Done(_) => "done",
        Event::Closed => "connection closed",
        Event::Failed(_) => "failure",
    }
}

fn session_error_to_connect(target: &Target, e: SessionError) -> ConnectError {
    let host = target.host.clone();
    match e {
        SessionError::StartTlsUnavailable(reason) => {
            ConnectError::Policy { host, reason: format!("STARTTLS required: {reason}"), result: ResultType::StarttlsNotSupported }
        }
        SessionError::Greeting(r) | SessionError::Ehlo(r) | SessionError::ServiceClosing(r) => {
            ConnectError::Smtp { host, reason: r.one_line() }
        }
        other => ConnectError::Smtp { host, reason: other.to_string() },
    }
}

/// TLS handshake over `stream` as the target's security asks.
async fn handshake(stream: Stream, target: &Target, tls: &TlsClients, timeouts: Timeouts) -> Result<(Stream, TlsFacts), ConnectError> {
    let Stream::Plain(tcp) = stream else {
        return Err(ConnectError::Policy {
            host: target.host.clone(),
            reason: "TLS requested twice".into(),
            result: ResultType::ValidationFailure,
        });
    };
    let fail_as = |reason: String, result: ResultType| match target.security {
        Security::Opportunistic => ConnectError::OpportunisticTls { host: target.host.clone(), reason },
        _ => ConnectError::Policy { host: target.host.clone(), reason, result },
    };
    let fail = |reason: String| fail_as(reason, ResultType::ValidationFailure);
    let (cfg, name) = match target.security {
        Security::RequireVerified => (tls.verifying.clone(), target.verify_name.as_str()),
        // SNI is the TLSA base domain, the MX host name (RFC 7672 §8.1).
        Security::RequireDane => match &target.dane {
            Some(cfg) => (cfg.0.clone(), target.verify_name.as_str()),
            None => return Err(fail("DANE required, but no TLSA verifier was given (internal error)".into())),
        },
        Security::Clear | Security::Opportunistic | Security::RequireEncrypted => (tls.opportunistic.clone(), target.host.as_str()),
    };
    let server_name = ServerName::try_from(name.to_string()).map_err(|e| fail(format!("bad server name {name:?}: {e}")))?;
    let connect = TlsConnector::from(cfg).connect(server_name, tcp);
    match tokio::time::timeout(timeouts.tls_handshake, connect).await {
        Ok(Ok(s)) => {
            let facts = TlsFacts::of(s.get_ref().1);
            Ok((Stream::Tls(Box::new(s)), facts))
        }
        Ok(Err(e)) => Err(fail_as(describe_tls_error(&e), tls_result_type(&e))),
        // On the implicit-TLS port a silent handshake means the port is not really served:
        // like a refused connect, the host's STARTTLS step on 25 is next (and mandatory).
        Err(_) if target.start == TlsStart::Implicit => {
            Err(ConnectError::Unreachable { addr: target.addr, reason: "TLS handshake on the implicit-TLS port timed out".into() })
        }
        Err(_) => Err(fail("TLS handshake timed out".into())),
    }
}

/// What TLS-RPT calls a failed handshake (RFC 8460 §4.3): the certificate's own faults by
/// name, a DANE verdict as the DANE verifier classified it, anything else a validation failure.
pub fn tls_result_type(e: &io::Error) -> ResultType {
    use rustls::CertificateError as C;
    let Some(err @ rustls::Error::InvalidCertificate(c)) = crate::tls::rustls_error(e) else { return ResultType::ValidationFailure };
    match c {
        C::NotValidForName | C::NotValidForNameContext { .. } => ResultType::CertificateHostMismatch,
        C::Expired | C::ExpiredContext { .. } => ResultType::CertificateExpired,
        C::UnknownIssuer => ResultType::CertificateNotTrusted,
        C::Other(_) => {
            crate::tls::dane::dane_error_of(err).and_then(|d| ResultType::parse(d.result_type())).unwrap_or(ResultType::ValidationFailure)
        }
        _ => ResultType::ValidationFailure,
    }
}

/// Say what went wrong in a handshake in words an operator can act on.
pub fn describe_tls_error(e: &io::Error) -> String {
    match crate::tls::rustls_error(e) {
        Some(rustls::Error::InvalidCertificate(c)) => format!("certificate rejected: {c:?}"),
        Some(rustls::Error::AlertReceived(a)) => format!("server sent TLS alert {a:?}"),
        Some(other) => format!("TLS error: {other}"),
        None => format!("TLS handshake failed: {e}"),
    }
}

/// Connect to `addr`, first binding the source's address (port 0) when there is one.
async fn connect_from(bind: Option<Bind>, addr: SocketAddr) -> io::Result<TcpStream> {
    let Some(b) = bind else { return TcpStream::connect(addr).await };
    let socket = if b.addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.bind(SocketAddr::new(b.addr, 0)).map_err(|e| io::Error::new(e.kind(), format!("cannot bind source address {}: {e}", b.addr)))?;
    socket.connect(addr).await
}

/// Idle connections of one shard, by [`PoolKey`], each with the time it may idle until.
#[derive(Default)]
pub struct Pool {
    idle: HashMap<PoolKey, Vec<(Conn, Instant)>>,
}

impl Pool {
    /// Park a connection for reuse until `until`.
    pub fn put(&mut self, conn: Conn, until: Instant) {
        self.idle.entry(conn.target.pool_key()).or_default().push((conn, until));
    }

    /// Take any idle connection to `addr` from source `bind` (to close it and free its slot for another key).
    pub fn take_any_at(&mut self, bind: Option<Bind>, addr: SocketAddr) -> Option<Conn> {
        let key = self.idle.iter().find(|(k, l)| k.addr == addr && k.bind == bind && !l.is_empty()).map(|(k, _)| k.clone())?;
        let list = self.idle.get_mut(&key)?;
        let conn = list.pop().map(|(c, _)| c);
        if list.is_empty() {
            self.idle.remove(&key);
        }
        conn
    }

    /// Take the most recently parked connection for `target`, if any is still within its time.
    pub fn take(&mut self, target: &Target, now: Instant) -> Option<Conn> {
        let list = self.idle.get_mut(&target.pool_key())?;
        while let Some((mut conn, until)) = list.pop() {
            if until > now {
                conn.reused = true;
                return Some(conn);
            }
            // Past its time: dropping it closes the socket; the reaper would have QUIT it.
        }
        None
    }

    /// Remove and return connections idle past their time.
    pub fn expired(&mut self, now: Instant) -> Vec<Conn> {
        let mut out = Vec::new();
        for list in self.idle.values_mut() {
            let mut i = 0;
            while i < list.len() {
                if list[i].1 <= now {
                    out.push(list.swap_remove(i).0);
                } else {
                    i += 1;
                }
            }
        }
        self.idle.retain(|_, l| !l.is_empty());
        out
    }

    /// Remove and return every idle connection whose target `f` holds for.
    pub fn take_hosts(&mut self, mut f: impl FnMut(&Target) -> bool) -> Vec<Conn> {
        let mut out = Vec::new();
        self.idle.retain(|_, list| {
            let mut i = 0;
            while i < list.len() {
                if f(&list[i].0.target) {
                    out.push(list.swap_remove(i).0);
                } else {
                    i += 1;
                }
            }
            !list.is_empty()
        });
        out
    }

    /// Remove and return every idle connection (at shutdown).
    pub fn drain(&mut self) -> Vec<Conn> {
        self.idle.drain().flat_map(|(_, l)| l.into_iter().map(|(c, _)| c)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(host: &str, security: Security, budget: Option<usize>) -> Target {
        Target {
            host: host.into(),
            addr: "127.0.0.1:25".parse().unwrap(),
            start: TlsStart::Starttls,
            security,
            verify_name: host.into(),
            budget,
            dane: None,
            bind: None,
            pool: None,
        }
    }

    #[test]
    fn unverified_connections_are_shared_by_address_but_never_across_budgets() {
        let a = target("mx.a.test", Security::Opportunistic, None);
        let b = target("mx.b.test", Security::Opportunistic, None);
        assert_eq!(a.pool_key(), b.pool_key(), "hosted domains share an address's connections");
        let limited = target("mx1.big.test", Security::Opportunistic, Some(0));
        assert_ne!(a.pool_key(), limited.pool_key(), "a connection outside a budget must not serve a host inside it");
        assert_ne!(limited.pool_key(), target("mx1.big.test", Security::Opportunistic, Some(1)).pool_key());
        let v1 = target("mx.a.test", Security::RequireVerified, None);
        let v2 = target("mx.b.test", Security::RequireVerified, None);
        assert_ne!(v1.pool_key(), v2.pool_key(), "verified connections are bound to their name");
        let from = |source: usize| Target { bind: Some(Bind { source, addr: "127.0.0.2".parse().unwrap() }), ..a.clone() };
        assert_ne!(a.pool_key(), from(0).pool_key(), "a bound connection is not an unbound one");
        assert_ne!(from(0).pool_key(), from(1).pool_key(), "connections are never shared across sources");
        assert_ne!(from(0).pool_key(), Target { pool: Some(1), ..from(0) }.pool_key(), "nor across pools");
    }
}
