//! What a run measures and how hard it pushes: the [`Config`] the binary builds from flags
//! (and the integration tests build by hand), its validation, and the address resolution.
//!
//! Validation lives here rather than in the binary so a library caller gets the same clear
//! errors as a person at the command line.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::cpu::ThreadCpu;

use mxpipe::tls::{ClientResumption, Kx, TlsError, Verify};

/// Duration of a phase when neither `duration` nor `count` is given.
pub const DEFAULT_DURATION: Duration = Duration::from_secs(10);
/// Longest a phase may run, whatever `count` says, so a run always ends by itself.
pub const MAX_DURATION: Duration = Duration::from_secs(600);
/// `--source-spread` uses 127.0.0.2 ..= 127.0.0.(N+1), so N can be at most 254.
pub const MAX_SOURCE_SPREAD: usize = 254;

/// What happens on each connection once TLS is up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// TLS handshake, then QUIT: measures handshakes and nothing else.
    Handshake,
    /// TLS handshake, EHLO, then `messages_per_conn` messages of about `size` bytes each
    /// (MAIL/RCPT/DATA pipelined when the server offers PIPELINING), then QUIT.
    Transaction { messages_per_conn: u32, size: usize },
}

/// Which port is measured first. The first one absorbs the cold start of both sides (page
/// faults, allocator growth, the server's caches), which `warmup` takes out of the figures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PortOrder {
    /// The STARTTLS port, then the implicit-TLS port.
    #[default]
    StartTlsFirst,
    /// The implicit-TLS port, then the STARTTLS port.
    ImplicitFirst,
}

impl std::str::FromStr for PortOrder {
    type Err = String;
    fn from_str(s: &str) -> Result<PortOrder, String> {
        match s {
            "starttls,implicit" => Ok(PortOrder::StartTlsFirst),
            "implicit,starttls" => Ok(PortOrder::ImplicitFirst),
            _ => Err(format!("{s:?}: give starttls,implicit or implicit,starttls")),
        }
    }
}

/// Everything one run needs. Build it with [`Config::new`] and change the fields.
#[derive(Debug, Clone)]
pub struct Config {
    /// Server address or DNS name (resolved once with the system resolver).
    pub host: String,
    /// Port speaking plaintext SMTP then STARTTLS; measured first.
    pub starttls_port: Option<u16>,
    /// Port speaking TLS from the first byte; measured second.
    pub implicit_port: Option<u16>,
    /// Name sent as SNI and checked against the certificate (an IP address sends no SNI).
    pub server_name: String,
    /// How the server certificate is checked.
    pub verify: Verify,
    /// With [`Verify::Roots`]: verify each certificate chain once, then trust that exact
    /// certificate for the name, still checking every handshake's signature
    /// ([`crate::verify_once`]).
    pub verify_once: bool,
    /// Key exchange group offered.
    pub kx: Kx,
    /// Resumption mechanism; with it on, each port gets its own fresh ticket store.
    pub resume: ClientResumption,
    pub mode: Mode,
    /// Closed loop: the number of workers, each running one connection after another.
    /// Open loop (`rate` set): the most connections in flight at once.
    pub concurrency: usize,
    /// How long each port is measured (no new connection starts after it).
    pub duration: Option<Duration>,
    /// Load each port this long before its measured window; what happens then is counted
    /// apart (`warmup_*`) and kept out of every figure.
    pub warmup: Duration,
    /// Which port goes first.
    pub order: PortOrder,
    /// How many connections each port gets at most.
    pub count: Option<u64>,
    /// Open loop: start connection i at t0 + i/rate, whatever the server's pace, and measure
    /// its latency from that intended start (so queueing shows in the total).
    pub rate: Option<f64>,
    /// Limit for each step of a connection (connect, each reply, the TLS handshake, the wait
    /// for the server to close).
    pub timeout: Duration,
    /// Close with SO_LINGER 0 (RST) right after the 221 instead of waiting for the server to
    /// close first. Either way the client keeps no TIME_WAIT sockets.
    pub linger0: bool,
    /// Bind client sockets round-robin to 127.0.0.2 ..= 127.0.0.(N+1); 0 = let the kernel
    /// choose. Only for a loopback target.
    pub source_spread: usize,
    pub ehlo_name: String,
    pub mail_from: String,
    pub rcpt_to: String,
    /// Show a live one-line progress display on stderr (only if stderr is a terminal).
    pub progress: bool,
    /// Threads of a server in this process (the embedded sink): their CPU is reported as the
    /// sink's and taken out of the client's.
    pub sink_threads: Option<Arc<ThreadCpu>>,
    /// Test hook: the attempt with this number panics after its handshake.
    #[doc(hidden)]
    pub panic_at: Option<u64>,
}

impl Config {
    /// Defaults for `host`: no port yet, handshake mode, one worker, 10 s per port, no
    /// certificate verification (a library caller states its trust explicitly; the binary
    /// defaults to the webpki roots), default key exchange, ticket resumption, 10 s timeout.
    /// The server name is `host` when it is a DNS name, else `localhost`.
    pub fn new(host: impl Into<String>) -> Config {
        let host = host.into();
        Config {
            server_name: default_server_name(&host),
            host,
            starttls_port: None,
            implicit_port: None,
            verify: Verify::None,
            verify_once: false,
            kx: Kx::Default,
            resume: ClientResumption::default(),
            mode: Mode::Handshake,
            concurrency: 1,
            duration: None,
            warmup: Duration::ZERO,
            order: PortOrder::StartTlsFirst,
            count: None,
            rate: None,
            timeout: Duration::from_secs(10),
            linger0: false,
            source_spread: 0,
            ehlo_name: "loadgen.mxpipe.test".into(),
            mail_from: "loadgen@mxpipe.test".into(),
            rcpt_to: "sink@example.test".into(),
            progress: false,
            sink_threads: None,
            panic_at: None,
        }
    }

    /// When a phase must stop starting connections: `duration`, else 10 s when no `count`
    /// either, and never more than [`MAX_DURATION`].
    pub fn phase_limit(&self) -> Duration {
        match (self.duration, self.count) {
            (Some(d), _) => d.min(MAX_DURATION),
            (None, Some(_)) => MAX_DURATION,
            (None, None) => DEFAULT_DURATION,
        }
    }

    /// Check everything that does not need the network.
    pub fn validate(&self) -> Result<(), LoadgenError> {
        let bad = |s: &str| Err(LoadgenError::Invalid(s.to_string()));
        if self.starttls_port.is_none() && self.implicit_port.is_none() {
            return Err(LoadgenError::NoPort);
        }
        if self.starttls_port == Some(0) || self.implicit_port == Some(0) {
            return bad("port 0 cannot be connected to");
        }
        if self.host.trim().is_empty() {
            return bad("the host is empty");
        }
        if self.concurrency == 0 {
            return bad("concurrency must be at least 1");
        }
        if let Some(r) = self.rate {
            if !(r.is_finite() && r > 0.0) {
                return bad("rate must be a positive number of connections per second");
            }
        }
        if self.duration == Some(Duration::ZERO) {
            return bad("duration must be more than 0 seconds");
        }
        if self.warmup > MAX_DURATION {
            return bad("warmup can be at most 600 seconds");
        }
        if self.verify_once && matches!(self.verify, Verify::None) {
            return bad("verify-once needs certificate verification (it cannot go with insecure)");
        }
        if self.timeout.is_zero() {
            return bad("timeout must be more than 0 seconds");
        }
        if self.source_spread > MAX_SOURCE_SPREAD {
            return bad("source-spread can be at most 254 (127.0.0.2 ..= 127.0.0.255)");
        }
        if let Mode::Transaction { messages_per_conn, .. } = self.mode {
            if messages_per_conn == 0 {
                return bad("messages-per-conn must be at least 1 in transaction mode");
            }
        }
        for (what, v) in [("ehlo name", &self.ehlo_name), ("mail from", &self.mail_from), ("rcpt to", &self.rcpt_to)] {
            if v.bytes().any(|b| b == b'\r' || b == b'\n' || b == b'<' || b == b'>') || v.is_empty() {
                return Err(LoadgenError::Invalid(format!("{what} {v:?} must be non-empty, without CR, LF, < or >")));
            }
        }
        rustls_pki_types::ServerName::try_from(self.server_name.as_str())
            .map_err(|_| LoadgenError::ServerName(self.server_name.clone()))?;
        Ok(())
    }

    /// `source_spread` binds to 127.0.0.x, which can only reach a loopback target.
    pub fn validate_source_spread(&self, target: IpAddr) -> Result<(), LoadgenError> {
        if self.source_spread > 0 && !matches!(target, IpAddr::V4(v4) if v4.is_loopback()) {
            return Err(LoadgenError::SourceSpreadNotLoopback { target });
        }
        Ok(())
    }
}

/// `host` when it is a DNS name; for an IP address, `localhost` (the name test certificates
/// carry; an IP would send no SNI).
pub fn default_server_name(host: &str) -> String {
    if host.parse::<IpAddr>().is_ok() || host.trim_matches(['[', ']']).parse::<IpAddr>().is_ok() {
        "localhost".into()
    } else {
        host.to_string()
    }
}

/// Resolve `host` to one address with the system resolver. An IP address (IPv6 possibly in
/// brackets) is used as is.
pub async fn resolve(host: &str) -> Result<IpAddr, LoadgenError> {
    let bare = host.trim_matches(['[', ']']);
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(ip);
    }
    let err = |reason: String| LoadgenError::Resolve { host: host.to_string(), reason };
    let mut addrs = tokio::net::lookup_host((bare, 0)).await.map_err(|e| err(e.to_string()))?;
    addrs.next().map(|a| a.ip()).ok_or_else(|| err("no address found".into()))
}

/// Why a run could not start. Failed connections are not errors of the run: they are counted
/// in the report.
#[derive(Debug, thiserror::Error)]
pub enum LoadgenError {
    #[error("no port to measure: give --starttls-port and/or --implicit-port")]
    NoPort,
    #[error("cannot resolve host {host:?}: {reason}")]
    Resolve { host: String, reason: String },
    #[error("{0:?} is not a valid TLS server name (DNS name or IP address); set --server-name")]
    ServerName(String),
    #[error("--source-spread binds to 127.0.0.x and needs a loopback IPv4 target, but the host is {target}")]
    SourceSpreadNotLoopback { target: IpAddr },
    #[error("invalid configuration: {0}")]
    Invalid(String),
    #[error("cannot start the embedded sink: {0}")]
    EmbeddedSink(String),
    #[error("TLS configuration: {0}")]
    Tls(#[from] TlsError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_limits() {
        let mut c = Config::new("127.0.0.1");
        assert_eq!(c.server_name, "localhost");
        assert!(matches!(c.validate(), Err(LoadgenError::NoPort)));
        c.starttls_port = Some(2525);
        c.validate().unwrap();
        assert_eq!(c.phase_limit(), DEFAULT_DURATION);
        c.count = Some(5);
        assert_eq!(c.phase_limit(), MAX_DURATION);
        c.duration = Some(Duration::from_secs(3));
        assert_eq!(c.phase_limit(), Duration::from_secs(3));
        c.concurrency = 0;
        assert!(c.validate().is_err());
        assert_eq!(Config::new("mx.example.test").server_name, "mx.example.test");
        assert_eq!(Config::new("::1").server_name, "localhost");
    }

    #[test]
    fn source_spread_needs_loopback() {
        let mut c = Config::new("127.0.0.1");
        c.source_spread = 4;
        c.validate_source_spread("127.0.0.1".parse().unwrap()).unwrap();
        assert!(c.validate_source_spread("10.0.0.1".parse().unwrap()).is_err());
        assert!(c.validate_source_spread("::1".parse().unwrap()).is_err());
        c.source_spread = 0;
        c.validate_source_spread("10.0.0.1".parse().unwrap()).unwrap();
    }

    #[test]
    fn envelope_injection_rejected() {
        let mut c = Config::new("127.0.0.1");
        c.implicit_port = Some(26);
        c.rcpt_to = "a@b\r\nRSET".into();
        assert!(matches!(c.validate(), Err(LoadgenError::Invalid(_))));
    }
}
