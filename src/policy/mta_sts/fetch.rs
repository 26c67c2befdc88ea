//! Fetching an MTA-STS policy over HTTPS (RFC 8461 §3.3).
//!
//! This module owns one exchange: `GET /.well-known/mta-sts.txt` from `mta-sts.<domain>` on
//! addresses the caller resolved, with the certificate checked for that name, bounded in time
//! and in size, and the body parsed by [`super::parse_policy`]. It does not resolve names (the
//! caller passes addresses, from [`crate::resolve::MxResolver::host_addrs`]), does not cache,
//! and does not decide what a failure means for delivery; [`FetchError::kind`] gives the
//! TLS-RPT (RFC 8460) result type so that the caller can report it.
//!
//! The same bounded exchange also carries TLS-RPT's report upload ([`post`], RFC 8460 §5.4):
//! one POST to a host name the caller resolved, verified the same way, so that the engine has
//! one HTTPS client, not two. Errors then name the report host instead of `mta-sts.<domain>`.
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
    #[error("HTTPS host {host} has no address to connect to")]
    NoAddress {
        /// `mta-sts.<domain>`.
        host: String,
    },
    /// TCP connect failed (refused, unreachable, reset).
    #[error("HTTPS host {host} at {addr}: cannot connect: {source}")]
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
    #[error("HTTPS host {host} at {addr}: TLS handshake failed: {reason}")]
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
    #[error("HTTPS host {host} at {addr}: HTTP error: {reason}")]
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
        "HTTPS host {host} at {addr}: answered {status} redirect to {location:?}; redirects are not followed (RFC 8461 §3.3, RFC 8460 §5.4)"
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
    #[error("HTTPS host {host} at {addr}: answered HTTP {status}, not 200 (a policy) or 2xx (a report)")]
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
    #[error("HTTPS host {host} at {addr}: Content-Type is {content_type:?}, not text/plain")]
    ContentType {
        /// `mta-sts.<domain>`.
        host: String,
        /// The address and port tried.
        addr: SocketAddr,
        /// The header as sent, or `None` when absent.
        content_type: Option<String>,
    },
    /// The body is longer than [`FetchConfig::max_bytes`]; reading stopped there.
    #[error("HTTPS host {host} at {addr}: policy is larger than the limit of {limit} bytes")]
    TooLarge {
        /// `mta-sts.<domain>`.
        host: String,
        /// The address and port tried.
        addr: SocketAddr,
        /// The limit.
        limit: usize,
    },
    /// [`FetchConfig::timeout`] ran out.
    #[error("HTTPS host {host}: no answer within {after:?}{}", match .addr { Some(a) => format!(" (waiting for {a})"), None => String::new() })]
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
    over_addrs(&host, addrs, cfg.port, cfg.timeout, |addr| fetch_from(&host, &server_name, addr, cfg)).await
}

/// Try `one` on each of `addrs` (on `port`) in order until one answers, all within `timeout`:
/// a failure to connect, to complete TLS or to get an HTTP response moves on to the next
/// address, and the last such failure is returned; any other result ends the loop.
async fn over_addrs<T, F, Fut>(host: &str, addrs: &[IpAddr], port: u16, timeout: Duration, mut one: F) -> Result<T, FetchError>
where
    F: FnMut(SocketAddr) -> Fut,
    Fut: Future<Output = Result<T, FetchError>>,
{
    if addrs.is_empty() {
        return Err(FetchError::NoAddress { host: host.to_owned() });
    }
    let mut current = None;
    let attempts = async {
        let mut last = None;
        for &ip in addrs {
            let addr = SocketAddr::new(ip, port);
            current = Some(addr);
            match one(addr).await {
                Ok(v) => return Ok(v),
                Err(e) if e.try_next_address() => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        // addrs is not empty, so the loop ran and set `last`.
        Err(last.unwrap_or_else(|| FetchError::NoAddress { host: host.to_owned() }))
    };
    match tokio::time::timeout(timeout, attempts).await {
        Ok(result) => result,
        Err(_) => Err(FetchError::Timeout { host: host.to_owned(), addr: current, after: timeout }),
    }
}

/// One POST of TLS-RPT (RFC 8460 §5.4): `body` to `https://host[:port]path`.
#[derive(Debug, Clone)]
pub struct Post<'a> {
    /// The host name, also the certificate's name, SNI and `Host`.
    pub host: &'a str,
    /// The URL's explicit port; without one, [`FetchConfig::port`] (443, or the test's).
    pub port: Option<u16>,
    /// Path and query, starting with `/`.
    pub path: &'a str,
    /// `Content-Type` of the body, e.g. `application/tlsrpt+gzip`.
    pub content_type: &'a str,
    /// The body.
    pub body: hyper::body::Bytes,
}

/// POST `req` to the first of `addrs` that answers, bounded by [`FetchConfig::timeout`] as
/// [`fetch_policy`] is, with the certificate checked for `req.host`; redirects are not
/// followed (RFC 8460 §5.4). The status on a 2xx answer; any other is [`FetchError::Status`]
/// (or [`FetchError::Redirect`]). The answer's body is not read.
pub async fn post(req: &Post<'_>, addrs: &[IpAddr], cfg: &FetchConfig) -> Result<u16, FetchError> {
    let invalid = |reason: String| FetchError::InvalidDomain { domain: req.host.to_owned(), reason };
    let server_name = ServerName::try_from(req.host.to_owned()).map_err(|e| invalid(e.to_string()))?;
    if !matches!(server_name, ServerName::DnsName(_)) {
        return Err(invalid("an address is not a host name".into()));
    }
    let port = req.port.unwrap_or(cfg.port);
    let server_name = &server_name;
    over_addrs(req.host, addrs, port, cfg.timeout, |addr| async move {
        let request = Request::builder()
            .method(Method::POST)
            .uri(req.path)
            .header(CONTENT_TYPE, req.content_type)
            .body(http_body_util::Full::new(req.body.clone()))
            .map_err(|e| FetchError::Http { host: req.host.to_owned(), addr, reason: e.to_string() })?;
        let (response, _conn) = send(req.host, server_name, addr, cfg, request).await?;
        if response.status().is_success() {
            return Ok(response.status().as_u16());
        }
        Err(not_ok(req.host, addr, &response))
    })
    .await
}

/// The error for an answer that is not the one wanted: a redirect, or another status.
fn not_ok<B>(host: &str, addr: SocketAddr, response: &hyper::Response<B>) -> FetchError {
    let status = response.status();
    if status.is_redirection() {
        let location = response.headers().get(LOCATION).and_then(|v| v.to_str().ok()).map(str::to_owned);
        return FetchError::Redirect { host: host.to_owned(), addr, status: status.as_u16(), location };
    }
    FetchError::Status { host: host.to_owned(), addr, status: status.as_u16() }
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
    let request = Request::builder()
        .method(Method::GET)
        .uri(WELL_KNOWN_PATH)
        .body(http_body_util::Empty::<hyper::body::Bytes>::new())
        .map_err(|e| FetchError::Http { host: host_s(), addr, reason: e.to_string() })?;
    let (response, _conn) = send(host, server_name, addr, cfg, request).await?;
    let http = |e: hyper::Error| FetchError::Http { host: host_s(), addr, reason: e.to_string() };

    if response.status() != StatusCode::OK {
        return Err(not_ok(host, addr, &response));
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

/// Connect to `addr`, verify the certificate for `server_name`, send `request` (with `Host`,
/// `User-Agent` and `Connection: close` set) and return the response head, with the guard of
/// the task driving the connection: keep it while reading the body.
async fn send<B>(
    host: &str,
    server_name: &ServerName<'static>,
    addr: SocketAddr,
    cfg: &FetchConfig,
    mut request: Request<B>,
) -> Result<(hyper::Response<hyper::body::Incoming>, AbortOnDrop<Result<(), hyper::Error>>), FetchError>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
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
    // The connection is driven by its own task, which must not outlive this exchange (a
    // timeout drops the caller's future): the guard aborts it.
    let conn = AbortOnDrop(tokio::spawn(conn));

    let host_header = HeaderValue::from_str(host).map_err(|e| FetchError::InvalidDomain { domain: host_s(), reason: e.to_string() })?;
    let headers = request.headers_mut();
    headers.insert(HOST, host_header);
    headers.insert(USER_AGENT, HeaderValue::from_static(concat!("mxpipe/", env!("CARGO_PKG_VERSION"))));
    headers.insert(CONNECTION, HeaderValue::from_static("close"));
    let response = sender.send_request(request).await.map_err(http)?;
    Ok((response, conn))
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
