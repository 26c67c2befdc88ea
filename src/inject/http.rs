//! The daemon's HTTP API: injection (`POST /v1/messages`), observation
//! (`GET /v1/messages/{id}`, `GET /v1/queues`, `GET /metrics`) and the operator's commands on
//! a destination (`POST /v1/queues/{domain}/suspend|resume|bounce`, used by `mxpipe queue`).
//!
//! A message may ask for REQUIRETLS (RFC 8689) with `"requiretls": true` ([`NewMessage`]); a
//! `TLS-Required: No` header field in its data is read as on the SMTP listener
//! ([`crate::requiretls`]).
//!
//! A message is answered 202 only once the spool has it on disk; a full disk answers 507 and
//! another spool error 503, so the client retries and nothing is half-accepted. Bodies are
//! JSON; errors are `{"error": "..."}` with a status a client can act on.
//!
//! In front of the handlers, in this order:
//! - the connection: at most `max_conns` at once (more get 503 and are closed), TLS if
//!   configured, headers within `header_timeout` (also the longest keep-alive idle time; a
//!   slow client is closed), at most `max_requests_per_conn` requests (the last is answered
//!   with `Connection: close`). Connections are served here with hyper, not `axum::serve`,
//!   which has none of these limits.
//! - `Host` must name this listener (421 otherwise): the DNS-rebinding defence.
//! - a bearer token of the route's [`Scope`] when a tokens file is configured (401, 403).
//! - a `POST` must be `Content-Type: application/json` (415): a web page can send a
//!   cross-origin form or `text/plain` POST without asking, but not JSON.
//! - the body is read within `body_timeout` (408) and [`MAX_BODY`] (413).

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use crate::policy::state::PolicyState;
use tokio::io::{AsyncRead, AsyncWrite};

use super::tokens::{Scope, Tokens};
use super::Intake;
use crate::config::HttpInjectSection;
use crate::queue::manager::{Control, ControlReply};
use crate::queue::spool::Incoming;

/// Largest request body (a batch of messages).
pub const MAX_BODY: usize = 64 * 1024 * 1024;
/// Messages in one request at most.
pub const MAX_BATCH: usize = 10_000;

#[derive(Clone)]
struct Api {
    intake: Intake,
    control: crossbeam_channel::Sender<Control>,
    /// The engine's policy memory (pins, MTA-STS policies), for `mxpipe policy show|forget`.
    policy: Arc<PolicyState>,
    /// TLS-RPT counters, for `mxpipe tlsrpt show`.
    tlsrpt: Option<Arc<crate::tlsrpt::TlsRpt>>,
    /// Cluster mode's client, for `GET /v1/cluster` and its metrics.
    cluster: Option<Arc<crate::cluster::Cluster>>,
}

/// One message to inject: the envelope and the RFC 5322 content.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewMessage {
    /// Envelope sender; `""` for the null sender.
    pub from: String,
    /// Envelope recipients, at least one.
    pub to: Vec<String>,
    /// The message (RFC 5322 text), at most [`MAX_MESSAGE`] bytes, without NUL bytes. A
    /// `TLS-Required: No` header field in it (RFC 8689 §3) asks that receivers' TLS policies
    /// be ignored for it, unless `requiretls` is set.
    pub data: String,
    /// REQUIRETLS (RFC 8689), as `MAIL FROM:<..> REQUIRETLS` on the SMTP listener: deliver
    /// only over verified TLS to next hops that advertise REQUIRETLS, else bounce (5.7.30).
    /// Default false.
    #[serde(default)]
    pub requiretls: bool,
    /// The egress pool to send from (`[[egress.pool]]` name); default: the rules by sender
    /// domain, then the default pool. Same as an `X-Mxpipe-Pool:` header field, which it
    /// overrides.
    #[serde(default)]
    pub pool: Option<String>,
    /// The DKIM keys to sign with, each a `[[dkim]]` entry's `name` or signing domain;
    /// default: the keys aligned with the From domain. The `always` keys sign as well. Same as
    /// an `X-Mxpipe-Dkim:` header field, which it overrides.
    #[serde(default)]
    pub dkim: Option<Vec<String>>,
}

/// A batch: `{"messages": [...]}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Batch {
    /// 1 to [`MAX_BATCH`] messages, accepted all or none.
    pub messages: Vec<NewMessage>,
}

/// Largest message content, as on the SMTP listener (its SIZE).
pub const MAX_MESSAGE: usize = 50 * 1024 * 1024;

/// A request body: one message, or `{"messages": [...]}`. Parsed as the one its shape says,
/// so a mistake is reported against that type ("missing field `to`"), not as "matches
/// neither". Public for the `http_body` fuzz target.
pub fn parse_inject(body: &[u8]) -> Result<Vec<NewMessage>, String> {
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| format!("invalid JSON: {e}"))?;
    if !v.is_object() {
        return Err("expected a JSON object: a message, or {\"messages\": [...]}".into());
    }
    // The error names where it is: `messages[3].to[0]: invalid type: ...`.
    let at = |e: serde_path_to_error::Error<serde_json::Error>| match e.path().to_string().as_str() {
        "." => e.inner().to_string(),
        path => format!("{path}: {}", e.inner()),
    };
    if v.get("messages").is_some() {
        serde_path_to_error::deserialize::<_, Batch>(v).map(|b| b.messages).map_err(|e| format!("invalid batch: {}", at(e)))
    } else {
        serde_path_to_error::deserialize::<_, NewMessage>(v).map(|m| vec![m]).map_err(|e| format!("invalid message: {}", at(e)))
    }
}

fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": msg.into() }))).into_response()
}

/// The address checked and normalised by [`crate::address`] (the same verdict as the SMTP
/// listener and every other entry point), or why it cannot be put in an envelope.
fn check_address(a: &str, sender: bool) -> Result<String, String> {
    let parsed = if sender {
        crate::address::ReversePath::parse(a).map(|r| r.to_string())
    } else {
        crate::address::Mailbox::parse(a).map(|m| m.to_string())
    };
    parsed.map_err(|e| e.to_string())
}

async fn inject(State(api): State<Api>, body: axum::body::Bytes) -> Response {
    let msgs = match parse_inject(&body) {
        Ok(m) => m,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    if msgs.is_empty() || msgs.len() > MAX_BATCH {
        return error(StatusCode::BAD_REQUEST, format!("give 1 to {MAX_BATCH} messages"));
    }
    let mut batch = Vec::with_capacity(msgs.len());
    for (i, m) in msgs.into_iter().enumerate() {
        if m.to.is_empty() {
            return error(StatusCode::BAD_REQUEST, format!("message {i}: no recipients"));
        }
        let checked = check_address(&m.from, true)
            .and_then(|from| Ok((from, m.to.iter().map(|t| check_address(t, false)).collect::<Result<Vec<_>, _>>()?)));
        let (from, to) = match checked {
            Ok(addrs) => addrs,
            Err(e) => return error(StatusCode::BAD_REQUEST, format!("message {i}: {e}")),
        };
        if m.data.len() > MAX_MESSAGE {
            return error(StatusCode::PAYLOAD_TOO_LARGE, format!("message {i}: larger than {MAX_MESSAGE} bytes"));
        }
        if m.data.contains('\0') {
            return error(StatusCode::BAD_REQUEST, format!("message {i}: NUL bytes in data"));
        }
        let tls = crate::requiretls::message_tls(m.requiretls, m.data.as_bytes());
        batch.push((Incoming { from, rcpts: to, data: Arc::<[u8]>::from(m.data.into_bytes()), tls, pool: m.pool }, m.dkim));
    }
    // All or nothing: one spool frame, one fsync.
    let ids = match api.intake.accept_chosen(batch).await {
        Ok(ids) => ids,
        Err(super::IntakeError::Refused(e)) => return error(StatusCode::BAD_REQUEST, e),
        Err(super::IntakeError::Unavailable(e)) => return error(StatusCode::SERVICE_UNAVAILABLE, format!("{e}: retry later")),
        Err(e) if e.is_disk_full() => return error(StatusCode::INSUFFICIENT_STORAGE, "spool disk full: retry later"),
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, format!("spool error: {e}: retry later")),
    };
    let ids: Vec<String> = ids.iter().map(|id| format!("{id:X}")).collect();
    (StatusCode::ACCEPTED, Json(serde_json::json!({ "ids": ids }))).into_response()
}

async fn message(State(api): State<Api>, Path(id): Path<String>) -> Response {
    let Ok(n) = u64::from_str_radix(&id, 16) else {
        return error(StatusCode::BAD_REQUEST, format!("{id:?} is not a message id"));
    };
    match api.intake.board().message(n) {
        Some(m) => Json(m).into_response(),
        None => error(StatusCode::NOT_FOUND, format!("no message {id} (unknown, or finished long ago)")),
    }
}

async fn queues(State(api): State<Api>) -> Response {
    let board = api.intake.board();
    Json(serde_json::json!({ "queues": board.queues(), "egress": board.egress() })).into_response()
}

/// Body of `POST /v1/queues/{domain}/suspend`: for how long (`"30m"`, `"2h"`; default 1h,
/// at most a day).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SuspendBody {
    #[serde(rename = "for")]
    duration: Option<String>,
}

async fn queue_command(State(api): State<Api>, Path((domain, action)): Path<(String, String)>, body: axum::body::Bytes) -> Response {
    let name = if action == "resume" {
        crate::queue::ctl::resume_segment(&domain)
    } else {
        crate::queue::ctl::path_segment(&domain).map(|d| d.to_string())
    };
    let domain = match name {
        Ok(name) => name,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let (reply, answer) = tokio::sync::oneshot::channel::<ControlReply>();
    let cmd = match action.as_str() {
        "suspend" => {
            let b: SuspendBody = if body.iter().all(u8::is_ascii_whitespace) {
                SuspendBody::default()
            } else {
                match serde_json::from_slice(&body) {
                    Ok(b) => b,
                    Err(e) => return error(StatusCode::BAD_REQUEST, format!("invalid JSON: {e}")),
                }
            };
            let duration = match b.duration.as_deref().map(crate::config::parse_duration) {
                None => std::time::Duration::from_secs(3600),
                Some(Ok(d)) if !d.is_zero() && d <= crate::schedule::MAX_SUSPENSION => d,
                Some(Ok(_)) => return error(StatusCode::BAD_REQUEST, "\"for\" must be more than 0 and at most 24h"),
                Some(Err(e)) => return error(StatusCode::BAD_REQUEST, format!("\"for\": {e}")),
            };
            Control::Suspend { domain, duration, reply }
        }
        "resume" => Control::Resume { domain, reply },
        "bounce" => Control::Bounce { domain, reply },
        other => return error(StatusCode::NOT_FOUND, format!("no queue command {other:?} (suspend, resume, bounce)")),
    };
    if api.control.send(cmd).is_err() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "the queue manager is stopping");
    }
    match answer.await {
        Ok(r) => Json(r).into_response(),
        Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "the queue manager is stopping"),
    }
}

/// `GET /v1/policy/{domain}`: what the TLS policy remembers of a domain (its pin and cached
/// MTA-STS policy).
async fn policy_show(State(api): State<Api>, Path(domain): Path<String>) -> Response {
    match crate::queue::ctl::path_segment(&domain) {
        Ok(name) => Json(api.policy.view(name.as_str(), crate::policy::state::unix_now())).into_response(),
        Err(e) => error(StatusCode::BAD_REQUEST, e),
    }
}

/// `DELETE /v1/policy/{domain}`: forget it (its pin and cached MTA-STS policy; the next
/// sighting of a prefixed MX pins it again, the next delivery fetches a policy again). Saved
/// at the next flush of the state.
async fn policy_forget(State(api): State<Api>, Path(domain): Path<String>) -> Response {
    match crate::queue::ctl::path_segment(&domain) {
        Ok(name) => {
            let forgotten = api.policy.forget(name.as_str());
            Json(serde_json::json!({ "domain": name.as_str(), "forgotten": forgotten })).into_response()
        }
        Err(e) => error(StatusCode::BAD_REQUEST, e),
    }
}

/// `GET /v1/tlsrpt/{domain}`: the TLS-RPT counts of a domain not yet reported, one entry per
/// UTC day, as the reports will hold them.
async fn tlsrpt_show(State(api): State<Api>, Path(domain): Path<String>) -> Response {
    let Some(tlsrpt) = &api.tlsrpt else { return error(StatusCode::NOT_FOUND, "TLS-RPT is off ([tlsrpt] enabled = false)") };
    match crate::queue::ctl::path_segment(&domain) {
        Ok(name) => Json(serde_json::json!({ "domain": name.as_str(), "days": tlsrpt.pending(name.as_str()) })).into_response(),
        Err(e) => error(StatusCode::BAD_REQUEST, e),
    }
}

/// `GET /v1/cluster`: this node's view (fallback or not, Redis calls, suspensions) and every
/// live node with the queue summary it published.
async fn cluster_show(State(api): State<Api>) -> Response {
    let Some(c) = &api.cluster else { return error(StatusCode::NOT_FOUND, "cluster mode is off (no [cluster] section)") };
    let st = c.stats();
    let now = std::time::Instant::now();
    let susp: Vec<serde_json::Value> = c
        .suspensions()
        .into_iter()
        .map(
            |s| serde_json::json!({ "name": s.name, "seconds_left": s.until.saturating_duration_since(now).as_secs(), "reason": s.reason }),
        )
        .collect();
    let nodes = match c.nodes().await {
        Ok(n) => serde_json::to_value(n).unwrap_or_default(),
        Err(e) => serde_json::Value::String(e.to_string()),
    };
    Json(serde_json::json!({
        "node": c.node_id(),
        "fallback": st.fallback,
        "live_nodes": st.live_nodes,
        "redis_calls": st.redis_calls,
        "redis_failures": st.redis_failures,
        "suspensions": susp,
        "nodes": nodes,
    }))
    .into_response()
}

async fn metrics(State(api): State<Api>) -> Response {
    let mut text = api.intake.board().metrics();
    if let Some(c) = &api.cluster {
        text.push_str(&crate::cluster::metrics(&c.stats()));
    }
    if let Some(s) = api.intake.dkim_stats() {
        text.push_str(&crate::dkim::metrics(&s));
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// How long [`ApiServer::shutdown`] lets requests in progress finish before it cuts them.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Connections being told 503 at once; past it, more are closed without an answer (a flood
/// must not make the refusals themselves unbounded work).
const MAX_REFUSING: usize = 64;

/// The API's settings, with the files they name loaded: built before the daemon starts
/// anything, so a bad tokens file or certificate stops it, naming the file.
pub struct ApiConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// `None`: no token is asked for (allowed on loopback only; the config checks that).
    pub tokens: Option<Arc<Tokens>>,
    /// `None`: plain HTTP.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Names besides the listener's own address (and `localhost` on loopback) that `Host` may give.
    pub allowed_hosts: Vec<AllowedHost>,
    /// Longest wait for a request's headers (and the TLS handshake), and longest keep-alive idle time.
    pub header_timeout: Duration,
    /// Longest wait for a request's body (then 408).
    pub body_timeout: Duration,
    /// Connections served at once, at least 1; more get 503 and are closed.
    pub max_conns: usize,
    /// Requests on one connection, at least 1; the last is answered with `Connection: close`.
    pub max_requests_per_conn: u32,
    /// The TLS-RPT counters shown by `GET /v1/tlsrpt/{domain}`; `None` (as [`ApiConfig::load`]
    /// leaves it): TLS-RPT is off, the route answers 404.
    pub tlsrpt: Option<Arc<crate::tlsrpt::TlsRpt>>,
    /// Cluster mode: `GET /v1/cluster` shows the whole cluster and `/metrics` has the
    /// `mxpipe_cluster_*` series; `None` (as [`ApiConfig::load`] gives): no cluster.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
}

impl ApiConfig {
    /// Load `[inject.http]`'s tokens file and certificate.
    pub fn load(c: &HttpInjectSection) -> Result<ApiConfig, String> {
        let tokens = match &c.tokens_file {
            Some(p) => Some(Arc::new(Tokens::load(p).map_err(|e| format!("inject.http.tokens_file: {e}"))?)),
            None => None,
        };
        let tls = match (&c.tls.cert, &c.tls.key) {
            (Some(cert), Some(key)) => {
                let id = crate::tls::certs::load_identity(cert, key).map_err(|e| format!("inject.http.tls: {e}"))?;
                let cfg =
                    crate::tls::server_config(id, crate::tls::ServerResumption::default()).map_err(|e| format!("inject.http.tls: {e}"))?;
                let mut cfg = Arc::unwrap_or_clone(cfg);
                // HTTP/1.1 only: a client that can speak nothing else fails the handshake
                // instead of sending HTTP/2 to a server that does not parse it.
                cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
                Some(Arc::new(cfg))
            }
            _ => None,
        };
        let allowed_hosts = c.allowed_hosts.iter().map(|h| AllowedHost::parse(h)).collect::<Result<_, _>>()?;
        Ok(ApiConfig {
            listen: c.listen,
            tokens,
            tls,
            allowed_hosts,
            header_timeout: c.header_timeout,
            body_timeout: c.body_timeout,
            max_conns: c.max_conns.max(1),
            max_requests_per_conn: c.max_requests_per_conn.max(1),
            tlsrpt: None,
            cluster: None,
        })
    }
}

/// A name from `allowed_hosts`: any port, or one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedHost {
    name: String,
    port: Option<u16>,
}

impl AllowedHost {
    fn parse(s: &str) -> Result<AllowedHost, String> {
        match split_authority(s) {
            Some((name, port)) if name.parse::<IpAddr>().is_err() => Ok(AllowedHost { name, port }),
            _ => Err(format!("inject.http.allowed_hosts: {s:?} is not a host name or name:port")),
        }
    }
}

/// `host[:port]` (or `[v6][:port]`) as a lower-case host without brackets or a trailing dot,
/// and the port; `None` if it is not that shape.
fn split_authority(s: &str) -> Option<(String, Option<u16>)> {
    if s.is_empty() || s.len() > 300 {
        return None;
    }
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, after) = rest.split_once(']')?;
        h.parse::<std::net::Ipv6Addr>().ok()?;
        match after {
            "" => (h, None),
            p => (h, Some(p.strip_prefix(':')?)),
        }
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    if host.is_empty() || (host.contains(':') && !s.starts_with('[')) {
        return None;
    }
    let port = match port {
        Some(p) => Some(p.parse::<u16>().ok()?),
        None => None,
    };
    Some((host.trim_end_matches('.').to_ascii_lowercase(), port))
}

/// What the API knows of the connection a request came on.
#[derive(Debug, Clone, Copy)]
struct ConnInfo {
    /// The address the client connected to (the listener's, or the interface's when it
    /// listens on 0.0.0.0 or [::]).
    local: SocketAddr,
    tls: bool,
}

/// The checks in front of the handlers: Host, token, content type, body limits.
#[derive(Clone)]
struct Guard {
    tokens: Option<Arc<Tokens>>,
    allowed_hosts: Arc<[AllowedHost]>,
    body_timeout: Duration,
}

impl Guard {
    /// Whether `authority` (a `Host` value) names this listener for a client on `conn`.
    fn host_allowed(&self, authority: &str, conn: ConnInfo) -> bool {
        let Some((host, port)) = split_authority(authority) else { return false };
        let default_port = if conn.tls { 443 } else { 80 };
        let port_is_ours = port.unwrap_or(default_port) == conn.local.port();
        let local = conn.local.ip().to_canonical();
        match host.parse::<IpAddr>() {
            Ok(ip) => port_is_ours && ip.to_canonical() == local,
            Err(_) if host == "localhost" => port_is_ours && local.is_loopback(),
            Err(_) => self.allowed_hosts.iter().any(|a| a.name == host && a.port.is_none_or(|p| Some(p) == port)),
        }
    }
}

fn close(mut r: Response) -> Response {
    r.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

/// 421 for a `Host` (or absolute request URI) that does not name this listener.
async fn check_host(State(g): State<Guard>, req: Request, next: Next) -> Response {
    let Some(conn) = req.extensions().get::<ConnInfo>().copied() else {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "no connection information");
    };
    let Some(host) = req.headers().get(header::HOST) else {
        return error(StatusCode::BAD_REQUEST, "a Host header is required");
    };
    let allowed =
        host.to_str().is_ok_and(|h| g.host_allowed(h, conn)) && req.uri().authority().is_none_or(|a| g.host_allowed(a.as_str(), conn));
    if !allowed {
        let shown = String::from_utf8_lossy(host.as_bytes());
        return error(
            StatusCode::MISDIRECTED_REQUEST,
            format!("Host {shown:?} does not name this API (add it to [inject.http] allowed_hosts if it should)"),
        );
    }
    next.run(req).await
}

/// The token of `Authorization: Bearer <token>`, if there is one.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// 401 without a valid token, 403 with one that lacks the route's scope.
async fn check_token(State((g, need)): State<(Guard, Scope)>, req: Request, next: Next) -> Response {
    if let Some(tokens) = &g.tokens {
        let given = bearer(req.headers());
        match given.and_then(|t| tokens.check(t)) {
            Some(b) if b.scope.allows(need) => {}
            Some(b) => {
                return error(StatusCode::FORBIDDEN, format!("token {:?} has scope {}; this needs {need} (or admin)", b.name, b.scope));
            }
            None => {
                let (challenge, msg) = match given {
                    None => ("Bearer realm=\"mxpipe\"", "an API token is required: Authorization: Bearer <token>"),
                    Some(_) => ("Bearer realm=\"mxpipe\", error=\"invalid_token\"", "the API token is not valid"),
                };
                let mut r = error(StatusCode::UNAUTHORIZED, msg);
                r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
                return r;
            }
        }
    }
    next.run(req).await
}

/// Whether a `Content-Type` value is JSON (`application/json`, parameters allowed).
fn is_json(v: Option<&HeaderValue>) -> bool {
    v.and_then(|v| v.to_str().ok()).is_some_and(|v| v.split(';').next().unwrap_or("").trim().eq_ignore_ascii_case("application/json"))
}

/// 415 for a POST that is not JSON; then the whole body within `body_timeout` (408) and
/// [`MAX_BODY`] (413), so a handler never waits on a slow client.
async fn read_body(State(g): State<Guard>, req: Request, next: Next) -> Response {
    if req.method() != Method::GET && req.method() != Method::HEAD && !is_json(req.headers().get(header::CONTENT_TYPE)) {
        return close(error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "the body must be JSON: Content-Type: application/json"));
    }
    let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return close(error(StatusCode::PAYLOAD_TOO_LARGE, format!("the body is larger than {MAX_BODY} bytes")));
    }
    let (parts, body) = req.into_parts();
    let bytes = match tokio::time::timeout(g.body_timeout, axum::body::to_bytes(body, MAX_BODY)).await {
        Ok(Ok(b)) => b,
        Err(_) => return close(error(StatusCode::REQUEST_TIMEOUT, format!("the body did not arrive within {:?}", g.body_timeout))),
        Ok(Err(e)) => {
            let too_large = std::iter::successors(std::error::Error::source(&e), |e| e.source())
                .any(|e| e.downcast_ref::<http_body_util::LengthLimitError>().is_some());
            return close(if too_large {
                error(StatusCode::PAYLOAD_TOO_LARGE, format!("the body is larger than {MAX_BODY} bytes"))
            } else {
                error(StatusCode::BAD_REQUEST, format!("cannot read the body: {e}"))
            });
        }
    };
    next.run(Request::from_parts(parts, Body::from(bytes))).await
}

/// The routes, each group behind its scope's token check.
fn router(api: Api, g: Guard) -> Router {
    let scoped = |r: Router<Api>, need: Scope| {
        r.route_layer(middleware::from_fn_with_state(g.clone(), read_body))
            .route_layer(middleware::from_fn_with_state((g.clone(), need), check_token))
    };
    let inject = Router::new().route("/v1/messages", post(inject)).route("/v1/messages/{id}", get(message));
    let admin = Router::new()
        .route("/v1/queues", get(queues))
        .route("/v1/queues/{domain}/{action}", post(queue_command))
        .route("/v1/policy/{domain}", get(policy_show).delete(policy_forget))
        .route("/v1/tlsrpt/{domain}", get(tlsrpt_show))
        .route("/v1/cluster", get(cluster_show));
    let metrics = Router::new().route("/metrics", get(metrics));
    Router::new()
        .merge(scoped(inject, Scope::Inject))
        .merge(scoped(admin, Scope::Admin))
        .merge(scoped(metrics, Scope::Metrics))
        .layer(middleware::from_fn_with_state(g, check_host))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(api)
}

/// Limits of one connection.
#[derive(Clone, Copy)]
struct ConnLimits {
    header_timeout: Duration,
    max_requests: u32,
}

/// Serve one connection (after TLS) until the client is done, a limit is hit, or `stop`:
/// then the request in progress finishes and the connection closes. `app: None` answers
/// every request 503 and closes (the connection cap).
async fn serve_conn<S>(io: S, info: ConnInfo, app: Option<Router>, limits: ConnLimits, mut stop: tokio::sync::watch::Receiver<bool>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    use hyper::service::Service as _;
    let count = AtomicU32::new(0);
    let app = app.map(hyper_util::service::TowerToHyperService::new);
    let busy = app.is_none();
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        let n = count.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        req.extensions_mut().insert(info);
        let fut = app.as_ref().map(|a| a.call(req));
        async move {
            let resp = match fut {
                Some(f) => f.await?,
                None => error(StatusCode::SERVICE_UNAVAILABLE, "too many connections to the API: retry later"),
            };
            Ok::<_, Infallible>(if n >= limits.max_requests { close(resp) } else { resp })
        }
    });
    let mut b = hyper::server::conn::http1::Builder::new();
    b.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(limits.header_timeout).keep_alive(!busy);
    let conn = b.serve_connection(hyper_util::rt::TokioIo::new(io), svc);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = stop.wait_for(|s| *s) => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}

/// A running API listener.
pub struct ApiServer {
    /// The address it listens on (with the port the system chose, if `listen` gave 0).
    pub addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl ApiServer {
    /// Stop accepting connections and let the requests in progress finish (idle keep-alive
    /// connections are closed), for [`SHUTDOWN_GRACE`] at most.
    pub async fn shutdown(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// Start the API as `cfg` says; `policy` is the engine's policy memory, shown and edited by
/// the `/v1/policy` routes.
pub async fn start(
    cfg: ApiConfig,
    intake: Intake,
    control: crossbeam_channel::Sender<Control>,
    policy: Arc<PolicyState>,
) -> std::io::Result<ApiServer> {
    let guard = Guard { tokens: cfg.tokens.clone(), allowed_hosts: cfg.allowed_hosts.clone().into(), body_timeout: cfg.body_timeout };
    let app = router(Api { intake, control, policy, tlsrpt: cfg.tlsrpt.clone(), cluster: cfg.cluster.clone() }, guard);
    let listener = tokio::net::TcpListener::bind(cfg.listen).await?;
    let addr = listener.local_addr()?;
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let limits = ConnLimits { header_timeout: cfg.header_timeout, max_requests: cfg.max_requests_per_conn };
    let tls = cfg.tls.clone().map(tokio_rustls::TlsAcceptor::from);
    let conns = Arc::new(tokio::sync::Semaphore::new(cfg.max_conns));
    let refusing = Arc::new(tokio::sync::Semaphore::new(MAX_REFUSING));
    let task = tokio::spawn(async move {
        let (closing, closed) = tokio::sync::watch::channel(false);
        let tracker = tokio_util::task::TaskTracker::new();
        loop {
            let (tcp, _peer) = tokio::select! {
                _ = &mut stopped => break,
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(_) => {
                        // Out of file descriptors or a connection reset before accept:
                        // pause rather than spin, and go on.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                },
            };
            let Ok(local) = tcp.local_addr() else { continue };
            let _ = tcp.set_nodelay(true);
            let (permit, app) = match conns.clone().try_acquire_owned() {
                Ok(p) => (p, Some(app.clone())),
                Err(_) => match refusing.clone().try_acquire_owned() {
                    Ok(p) => (p, None),
                    Err(_) => continue, // dropped: closed without an answer
                },
            };
            let (tls, closed) = (tls.clone(), closed.clone());
            tracker.spawn(async move {
                let _permit = permit;
                let info = ConnInfo { local, tls: tls.is_some() };
                match tls {
                    None => serve_conn(tcp, info, app, limits, closed).await,
                    Some(acceptor) => {
                        // The handshake counts as part of the headers' time.
                        if let Ok(Ok(s)) = tokio::time::timeout(limits.header_timeout, acceptor.accept(tcp)).await {
                            serve_conn(s, info, app, limits, closed).await;
                        }
                    }
                }
            });
        }
        drop(listener);
        let _ = closing.send(true);
        tracker.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait()).await.is_err() {
            eprintln!("mxpipe serve: HTTP API: {} connections still busy after {SHUTDOWN_GRACE:?}; they are cut at exit", tracker.len());
        }
    });
    Ok(ApiServer { addr, stop, task })
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_this_listener_or_an_allowed_name() {
        let g = Guard {
            tokens: None,
            allowed_hosts: vec![AllowedHost::parse("api.example.com").unwrap(), AllowedHost::parse("Other.example.com:8443").unwrap()]
                .into(),
            body_timeout: Duration::from_secs(1),
        };
        let v4 = ConnInfo { local: "127.0.0.1:8025".parse().unwrap(), tls: false };
        let v6 = ConnInfo { local: "[::1]:8025".parse().unwrap(), tls: false };
        let any = ConnInfo { local: "[::ffff:192.0.2.7]:443".parse().unwrap(), tls: true };
        for (h, c) in [
            ("127.0.0.1:8025", v4),
            ("localhost:8025", v4),
            ("LocalHost.:8025", v6),
            ("[::1]:8025", v6),
            ("192.0.2.7", any),
            ("192.0.2.7:443", any),
            ("api.example.com", v4),
            ("api.example.com:1", any),
            ("other.example.com:8443", v4),
        ] {
            assert!(g.host_allowed(h, c), "{h} on {c:?}");
        }
        for (h, c) in [
            ("127.0.0.1", v4),
            ("127.0.0.1:8026", v4),
            ("127.0.0.2:8025", v4),
            ("[::1]:8025", v4),
            ("localhost", any),
            ("localhost:443", any),
            ("evil.example", v4),
            ("other.example.com", v4),
            ("other.example.com:8025", v4),
            ("::1:8025", v6),
            ("[::1", v6),
            ("", v4),
            ("a:b:c", v4),
        ] {
            assert!(!g.host_allowed(h, c), "{h} on {c:?}");
        }
        assert!(AllowedHost::parse("192.0.2.1").is_err());
    }

    #[test]
    fn errors_name_what_is_wrong() {
        let e = parse_inject(br#"{"from": 1, "to": ["a@b.test"], "data": "x"}"#).unwrap_err();
        assert!(e.starts_with("invalid message: from: invalid type: integer"), "{e}");
        let e = parse_inject(br#"{"messages": [{"from": "", "to": ["a@b.test"], "data": "x"}, {"from": "", "to": [7], "data": "x"}]}"#)
            .unwrap_err();
        assert!(e.starts_with("invalid batch: messages[1].to[0]: invalid type: integer"), "{e}");
        let e = parse_inject(br#"{"from": "a@b.test", "data": "x"}"#).unwrap_err();
        assert!(e.contains("missing field `to`"), "{e}");
        let e = parse_inject(br#"{"messages": [{"from": "a@b.test", "to": "c@d.test", "data": "x"}]}"#).unwrap_err();
        assert!(e.starts_with("invalid batch") && e.contains("expected a sequence"), "{e}");
        let e = parse_inject(br#"{"messages": [], "extra": 1}"#).unwrap_err();
        assert!(e.contains("unknown field `extra`"), "{e}");
        assert!(parse_inject(b"[1]").unwrap_err().contains("expected a JSON object"));
        assert!(parse_inject(b"{nope").unwrap_err().starts_with("invalid JSON"));
        assert_eq!(parse_inject(br#"{"from": "", "to": ["a@b.test"], "data": "x"}"#).unwrap().len(), 1);
        assert_eq!(parse_inject(br#"{"messages": [{"from": "", "to": ["a@b.test"], "data": "x"}]}"#).unwrap().len(), 1);
    }
}
