//! Fetching an MTA-STS policy over HTTPS (RFC 8461 §3.3).
//!
//! This module owns one exchange: `GET /.well-known/mta-sts.txt` from `mta-sts.<domain>` on
//! addresses the caller resolved, with the certificate checked for that name, bounded in time
//! and in size, and the body parsed by [`super::parse_policy`]. It does not resolve names (the
//! caller passes addresses, from [`crate::resolve::MxResolver::host_addrs`]), does not cache,
//! and does not decide what a failure means for delivery; [`FetchError::kind`] gives the
//! TLS-RPT (RFC 8460) result type so that the caller can report it.
//!
//! Why hyper's connection-level client rather than a full HTTP client: the RFC wants exactly
//! one request to exactly one name with no redirects, no proxies and no connection reuse, so
//! the pieces a full client adds would all have to be turned off again.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::header::{HeaderValue, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, HOST, LOCATION, USER_AGENT};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;

use super::{parse_policy, StsError, StsPolicy};

/// The path every policy lives at (RFC 8461 §3.2).
pub const WELL_KNOWN_PATH: &str = "/.well-known/mta-sts.txt";

/// Default for [`FetchConfig::timeout`]: the whole fetch, all addresses included.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20);

/// Default for [`FetchConfig::max_bytes`]: RFC 8461 §3.3 suggests senders limit the body to
/// 64 KiB.
pub const DEFAULT_MAX_BYTES: usize = 64 * 1024;

/// Largest response head (status line and headers) accepted: hyper's smallest read buffer.
/// A policy server has no reason to send more than a few hundred bytes of headers.
const MAX_HEAD_BYTES: usize = 8192;

/// How a policy is fetched. Tests map the port and shorten the timeout; production keeps the
/// defaults of [`FetchConfig::new`].
#[derive(Debug, Clone)]
pub struct FetchConfig {
    /// TCP port of the policy host: 443, except in tests.
    pub port: u16,
    /// Bound on the whole fetch: every address tried, connect, TLS, request and body.
    pub timeout: Duration,
    /// Largest body accepted, enforced while reading.
    pub max_bytes: usize,
    /// Client configuration with the roots the certificate must chain to (the WebPKI roots and
    /// any the operator adds, e.g. from [`crate::tls::Verify::webpki_plus`]). It must verify:
    /// a policy fetched without authentication is worth nothing.
    pub tls: Arc<rustls::ClientConfig>,
}

impl FetchConfig {
    /// Port 443, a 20 s timeout and a 64 KiB body limit, with `tls` to verify the server.
    pub fn new(tls: Arc<rustls::ClientConfig>) -> FetchConfig {
        FetchConfig { port: 443, timeout: DEFAULT_TIMEOUT, max_bytes: DEFAULT_MAX_BYTES, tls }
    }
}

/// Why no policy came back. Every variant names the policy host, and the address when one
/// was being talked to; [`FetchError::kind`] maps it to a TLS-RPT result type.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The domain cannot be turned into a policy host name.
    #[error("cannot fetch an MTA-STS policy for {domain:?}: {reason}")]
    InvalidDomain {
        /// The domain as given.
        domain: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No address to connect to (the policy host has no A/AAAA records).
    #[error("MTA-STS policy host {host} has no address to connect to")]
    NoAddress {
        /// `mta-sts.<domain>`.
        host: String,
    },
    /// TCP connect failed (refused, unreachable, reset).
    #[error("MTA-STS policy host {host} at {addr}: cannot connect: {source}")]
    Connect {
        /// `mta-sts.<domain>`.
        host: String,
        /// The address and port tried.
        addr: SocketAddr,
        /// The socket error.
        source: std::io::Error,
    },
    /// The TLS handshake failed. `certificate` says whether the server's certificate was the
    /// reason (untrusted, expired, wrong name), which TLS-RPT reports differently.
    #[error("MTA-STS policy host {host} at {addr}: TLS handshake failed: {reason}")]
    Tls {
        /// `mta-sts.<domain>`.
        host: String,
        /// The address and port tried.
        addr: SocketAddr,
        /// What rustls reported.
        reason: String,
        /// The certificate did not verify for `host`.
        certificate: bool,
    },
    /// The HTTP exchange broke (malformed response, connection closed early, headers too long).
    #[error("MTA-STS policy host {host} at {addr}: HTTP error: {reason}")]
    Http {
        /// `mta-sts.<domain>`.
        host: String,
        /// The address and port tried.
        addr: SocketAddr,
        /// What hyper reported.
        reason: String,
    },
    /// The server answered with a redirect, which RFC 8461 §3.3 forbids following.
    #[error(
        "MTA-STS policy host {host} at {addr}: answered {status} redirect to {location:?}; redirects are not followed (RFC 8461 §3.3)"
    )]
    Redirect {
        /// `mta-sts.<domain>`.
        host: String,
        /// The address and port tried.
        addr: SocketAddr,
        /// The 3xx status.
        status: u16,
        /// The `Location` header, if any and if printable.
        location: Option<String>,
    },
    /// Any status but 200 and the 3xx above.
    #[error("MTA-STS policy host {host} at {addr}: answered HTTP {status} for {WELL_KNOWN_PATH}, not 200")]
    Status {
        /// `mta-sts.<domain>`.
        host: String,
        /// The address and port tried.
        addr: SocketAddr,
        /// The status code.
        status: u16,
    },
    /// The body is not served as `text/plain` (RFC 8461 §3.2), which guards against hosts that
    /// let users put arbitrary files at arbitrary paths.
    #[error("MTA-STS policy host {host} at {addr}: Content-Type is {content_type:?}, not text/plain")]
    ContentType {
        /// `mta-sts.<domain>`.
        host: String,
        /// The address and port tried.
        addr: SocketAddr,
        /// The header as sent, or `None` when absent.
        content_type: Option<String>,
    },
    /// The body is longer than [`FetchConfig::max_bytes`]; reading stopped there.
    #[error("MTA-STS policy host {host} at {addr}: policy is larger than the limit of {limit} bytes")]
    TooLarge {
        /// `mta-sts.<domain>`.
        host: String,
        /// The address and port tried.
        addr: SocketAddr,
        /// The limit.
        limit: usize,
    },
    /// [`FetchConfig::timeout`] ran out.
    #[error("MTA-STS policy host {host}: no policy within {after:?}{}", match .addr { Some(a) => format!(" (waiting for {a})"), None => String::new() })]
    Timeout {
        /// `mta-sts.<domain>`.
        host: String,
        /// The address being tried when time ran out.
        addr: Option<SocketAddr>,
        /// The timeout.
        after: Duration,
    },
    /// The body was fetched but is not a valid policy.
    #[error("MTA-STS policy from {host} at {addr} is invalid: {source}")]
    Invalid {
        /// `mta-sts.<domain>`.
        host: String,
        /// The address and port it came from.
        addr: SocketAddr,
        /// What is wrong with it.
        source: StsError,
    },
}

impl FetchError {
    /// The TLS-RPT (RFC 8460 §4.3.2) result type: `sts-webpki-invalid` when the certificate
    /// failed to verify, `sts-policy-invalid` when the body is not a valid policy, and
    /// `sts-policy-fetch-error` for everything else (no address, connection, HTTP, status,
    /// Content-Type, size, timeout).
    pub fn kind(&self) -> &'static str {
        match self {
            FetchError::Tls { certificate: true, .. } => "sts-webpki-invalid",
            FetchError::Invalid { .. } => "sts-policy-invalid",
            _ => "sts-policy-fetch-error",
        }
    }

    /// Whether trying the next address of the policy host could help: the failure was in
    /// reaching this one. Once a server has answered over verified TLS, its answer stands.
    fn try_next_address(&self) -> bool {
        matches!(self, FetchError::Connect { .. } | FetchError::Tls { .. } | FetchError::Http { .. })
    }
}

/// Fetch and parse the policy of `domain` from `https://mta-sts.<domain>/.well-known/mta-sts.txt`,
/// connecting to `addrs` in order on [`FetchConfig::port`].
///
/// The certificate must be valid for `mta-sts.<domain>` (SNI and `Host` carry that name); only
/// 200 with `Content-Type: text/plain` is accepted; redirects are refused. A failure to connect,
/// to complete TLS or to get an HTTP response moves on to the next address, and the last such
/// failure is returned; an HTTP answer (a bad status, type, size or policy) ends the fetch.
/// [`FetchConfig::timeout`] bounds everything, so a slow first address can use up the time.
pub async fn fetch_policy(domain: &str, addrs: &[IpAddr], cfg: &FetchConfig) -> Result<StsPolicy, FetchError> {
    let host = policy_host(domain)?;
    let server_name =
        ServerName::try_from(host.clone()).map_err(|e| FetchError::InvalidDomain { domain: domain.to_owned(), reason: e.to_string() })?;
    if !matches!(server_name, ServerName::DnsName(_)) {
        return Err(FetchError::InvalidDomain { domain: domain.to_owned(), reason: "an address is not a domain".into() });
    }
    if addrs.is_empty() {
        return Err(FetchError::NoAddress { host });
    }

    let mut current = None;
    let attempts = async {
        let mut last = None;
        for &ip in addrs {
            let addr = SocketAddr::new(ip, cfg.port);
            current = Some(addr);
            match fetch_from(&host, &server_name, addr, cfg).await {
                Ok(policy) => return Ok(policy),
                Err(e) if e.try_next_address() => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        // addrs is not empty, so the loop ran and set `last`.
        Err(last.unwrap_or_else(|| FetchError::NoAddress { host: host.clone() }))
    };
    match tokio::time::timeout(cfg.timeout, attempts).await {
        Ok(result) => result,
        Err(_) => Err(FetchError::Timeout { host: host.clone(), addr: current, after: cfg.timeout }),
    }
}

/// `mta-sts.` and the domain, lowercased, without a trailing dot.
fn policy_host(domain: &str) -> Result<String, FetchError> {
    let invalid = |reason: &str| FetchError::InvalidDomain { domain: domain.to_owned(), reason: reason.to_owned() };
    let bare = domain.strip_suffix('.').unwrap_or(domain);
    if bare.is_empty() {
        return Err(invalid("empty"));
    }
    if !bare.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.') {
        return Err(invalid("not an ASCII host name (pass IDNs as A-labels)"));
    }
    let host = format!("mta-sts.{}", bare.to_ascii_lowercase());
    if host.len() > 253 {
        return Err(invalid("the policy host name would be longer than 253 characters"));
    }
    Ok(host)
}

/// One address: connect, verify, request, check the answer, read the body within the limit.
async fn fetch_from(host: &str, server_name: &ServerName<'static>, addr: SocketAddr, cfg: &FetchConfig) -> Result<StsPolicy, FetchError> {
    let host_s = || host.to_owned();
    let tcp = TcpStream::connect(addr).await.map_err(|source| FetchError::Connect { host: host_s(), addr, source })?;
    // One small request and response: do not let Nagle hold the request back.
    let _ = tcp.set_nodelay(true);
    let tls = tokio_rustls::TlsConnector::from(cfg.tls.clone()).connect(server_name.clone(), tcp).await.map_err(|e| {
        let certificate = matches!(crate::tls::rustls_error(&e), Some(rustls::Error::InvalidCertificate(_)));
        FetchError::Tls { host: host_s(), addr, reason: e.to_string(), certificate }
    })?;

    let http = |e: hyper::Error| FetchError::Http { host: host_s(), addr, reason: e.to_string() };
    let mut builder = hyper::client::conn::http1::Builder::new();
    builder.max_buf_size(MAX_HEAD_BYTES);
    let (mut sender, conn) = builder.handshake(TokioIo::new(tls)).await.map_err(http)?;
    // The connection is driven by its own task, which must not outlive this fetch (a timeout
    // drops this future): the guard aborts it.
    let _conn = AbortOnDrop(tokio::spawn(conn));

    let host_header = HeaderValue::from_str(host).map_err(|e| FetchError::InvalidDomain { domain: host_s(), reason: e.to_string() })?;
    let request = Request::builder()
        .method(Method::GET)
        .uri(WELL_KNOWN_PATH)
        .header(HOST, host_header)
        .header(USER_AGENT, concat!("mxpipe/", env!("CARGO_PKG_VERSION")))
        .header(CONNECTION, "close")
        .body(http_body_util::Empty::<hyper::body::Bytes>::new())
        .map_err(|e| FetchError::Http { host: host_s(), addr, reason: e.to_string() })?;
    let response = sender.send_request(request).await.map_err(http)?;

    let status = response.status();
    if status.is_redirection() {
        let location = response.headers().get(LOCATION).and_then(|v| v.to_str().ok()).map(str::to_owned);
        return Err(FetchError::Redirect { host: host_s(), addr, status: status.as_u16(), location });
    }
    if status != StatusCode::OK {
        return Err(FetchError::Status { host: host_s(), addr, status: status.as_u16() });
    }
    let content_type = response.headers().get(CONTENT_TYPE);
    if !content_type.is_some_and(is_text_plain) {
        let content_type = content_type.map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        return Err(FetchError::ContentType { host: host_s(), addr, content_type });
    }
    let too_large = || FetchError::TooLarge { host: host_s(), addr, limit: cfg.max_bytes };
    // A declared length over the limit fails before reading anything.
    let declared = response.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > cfg.max_bytes as u64) {
        return Err(too_large());
    }

    // Frame by frame, so that a body without a length (chunked, or until close) that never
    // ends stops at the limit rather than at the timeout or at memory exhaustion.
    let mut body = response.into_body();
    let mut buf = Vec::with_capacity(declared.map_or(4096, |n| n as usize).min(cfg.max_bytes));
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(http)?;
        if let Some(data) = frame.data_ref() {
            if buf.len() + data.len() > cfg.max_bytes {
                return Err(too_large());
            }
            buf.extend_from_slice(data);
        }
    }
    parse_policy(&buf).map_err(|source| FetchError::Invalid { host: host_s(), addr, source })
}

/// `text/plain`, in any case, with or without parameters (RFC 8461 §3.2: "Additional
/// Content-Type parameters are ignored").
fn is_text_plain(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    let essence = bytes.split(|&b| b == b';').next().unwrap_or_default();
    essence.trim_ascii().eq_ignore_ascii_case(b"text/plain")
}

/// Aborts a spawned task when dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<T> Future for AbortOnDrop<T> {
    type Output = Result<T, tokio::task::JoinError>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_type_rule() {
        for ok in ["text/plain", "TEXT/Plain", "text/plain; charset=utf-8", " text/plain ;charset=us-ascii"] {
            assert!(is_text_plain(&HeaderValue::from_str(ok).unwrap()), "{ok}");
        }
        for bad in ["text/html", "text/plain2", "text/plainx; a=b", "text", "", "application/octet-stream"] {
            assert!(!is_text_plain(&HeaderValue::from_str(bad).unwrap()), "{bad}");
        }
    }

    #[test]
    fn policy_host_names() {
        assert_eq!(policy_host("Example.COM.").unwrap(), "mta-sts.example.com");
        for bad in ["", ".", "a/b", "a b", "é.test", "a:443"] {
            assert!(matches!(policy_host(bad), Err(FetchError::InvalidDomain { .. })), "{bad:?}");
        }
    }

    #[test]
    fn config_defaults() {
        let opts = crate::tls::ClientOptions {
            verify: crate::tls::Verify::webpki_plus(&[]).unwrap(),
            kx: crate::tls::Kx::Default,
            resumption: crate::tls::ClientResumption::Off,
            tls12_only: false,
        };
        let cfg = FetchConfig::new(crate::tls::client_config(&opts, None).unwrap());
        assert_eq!((cfg.port, cfg.timeout, cfg.max_bytes), (443, Duration::from_secs(20), 65_536));
    }

    #[test]
    fn kinds_map_to_tls_rpt() {
        let addr = SocketAddr::from(([127, 0, 0, 1], 443));
        let host = String::from("mta-sts.example.com");
        let tls = |certificate| FetchError::Tls { host: host.clone(), addr, reason: "x".into(), certificate };
        assert_eq!(tls(true).kind(), "sts-webpki-invalid");
        assert_eq!(tls(false).kind(), "sts-policy-fetch-error");
        let invalid = FetchError::Invalid { host: host.clone(), addr, source: StsError::TooManyLines };
        assert_eq!(invalid.kind(), "sts-policy-invalid");
        let status = FetchError::Status { host: host.clone(), addr, status: 404 };
        assert_eq!(status.kind(), "sts-policy-fetch-error");
        let msg = status.to_string();
        assert!(msg.contains("mta-sts.example.com") && msg.contains("127.0.0.1:443") && msg.contains("404"), "{msg}");
        let timeout = FetchError::Timeout { host, addr: Some(addr), after: Duration::from_secs(1) };
        assert!(timeout.to_string().contains("waiting for 127.0.0.1:443"), "{timeout}");
    }
}
