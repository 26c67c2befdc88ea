//! `mxpipe queue`: the operator's view of and commands on a running daemon's queues, through
//! its HTTP API (`GET /v1/queues`, `POST /v1/queues/{domain}/{suspend|resume|bounce}`).
//!
//! A blocking HTTP/1.1 client of a few lines is enough here: one request per run, to our own
//! server, on an address the operator gives. It sends what the API asks of every client: a
//! `Host` naming the address it connects to, `Content-Type: application/json`, the bearer
//! token if it has one, and TLS (verified) when the API has it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::address::Domain;

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueCmd {
    /// Show every destination with recipients waiting or a suspension (`GET /v1/queues`).
    List,
    /// Every node of the cluster with its waiting recipients per destination (`GET /v1/cluster`).
    ClusterList,
    /// Hold a destination's recipients for a while (those with the engine finish their attempt).
    Suspend {
        /// The destination domain, as typed (checked by [`path_segment`]).
        domain: String,
        /// For how long, a duration such as `"30m"`; `None`: the API's default, 1h.
        duration: Option<String>,
    },
    /// Lift a destination's suspension and try its recipients now.
    Resume {
        /// The destination domain or site pattern, as typed (checked by [`resume_segment`]).
        domain: String,
    },
    /// Give up on a destination's waiting recipients: bounced, with a DSN to each sender.
    Bounce {
        /// The destination domain, as typed (checked by [`path_segment`]).
        domain: String,
    },
}

/// Longest wait for the daemon's answer.
const TIMEOUT: Duration = Duration::from_secs(30);
/// Largest answer read (a queue list of many destinations is well under this).
const MAX_ANSWER: u64 = 16 * 1024 * 1024;

/// Where the API is and how to speak to it.
#[derive(Clone)]
pub struct Target {
    /// What the client connects to, as given (`127.0.0.1:8025`, `mxpipe.example.com:8443`):
    /// the `Host` header, and the name the TLS certificate is checked against.
    pub host: String,
    /// The address connected to: `host` looked up, or loopback for an unspecified address.
    pub addr: SocketAddr,
    /// Sent as `Authorization: Bearer`.
    pub token: Option<String>,
    /// HTTPS, with these roots.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token.
        write!(f, "Target({}, {}, token: {}, tls: {})", self.host, self.addr, self.token.is_some(), self.tls.is_some())
    }
}

impl Target {
    /// Plain HTTP to `addr`, no token. An unspecified address (a daemon listening on
    /// `0.0.0.0`) is reached on loopback.
    pub fn new(addr: SocketAddr) -> Target {
        let mut addr = addr;
        if addr.ip().is_unspecified() {
            addr.set_ip(if addr.is_ipv4() { std::net::Ipv4Addr::LOCALHOST.into() } else { std::net::Ipv6Addr::LOCALHOST.into() });
        }
        Target { host: addr.to_string(), addr, token: None, tls: None }
    }

    /// `HOST:PORT`, an address or a name (looked up now).
    pub fn parse(api: &str) -> Result<Target, String> {
        if let Ok(a) = api.parse::<SocketAddr>() {
            return Ok(Target::new(a));
        }
        let addr = api
            .to_socket_addrs()
            .map_err(|e| format!("--api {api:?}: not ADDR:PORT or HOST:PORT that resolves: {e}"))?
            .next()
            .ok_or_else(|| format!("--api {api:?}: the name has no address"))?;
        Ok(Target { host: api.to_string(), ..Target::new(addr) })
    }

    /// Speak TLS, verifying the server against `roots` and the name in `host`.
    pub fn with_tls(mut self, roots: rustls::RootCertStore) -> Result<Target, String> {
        use crate::tls::{ClientOptions, ClientResumption, Kx, Verify};
        let opts =
            ClientOptions { verify: Verify::Roots(Arc::new(roots)), kx: Kx::Default, resumption: ClientResumption::Off, tls12_only: false };
        let cfg = crate::tls::client_config(&opts, None).map_err(|e| e.to_string())?;
        let mut cfg = Arc::unwrap_or_clone(cfg);
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        self.tls = Some(Arc::new(cfg));
        Ok(self)
    }

    /// The host part of `host`, without the port or brackets: the TLS server name.
    fn server_name(&self) -> &str {
        let h = self.host.rsplit_once(':').filter(|(_, p)| p.parse::<u16>().is_ok()).map_or(self.host.as_str(), |(h, _)| h);
        h.trim_start_matches('[').trim_end_matches(']')
    }
}

/// One request; `(status, body)`.
pub fn request(t: &Target, method: &str, path: &str, body: &str) -> Result<(u16, String), String> {
    let addr = t.addr;
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("cannot reach the daemon's HTTP API at {addr}: {e} (is `mxpipe serve` running? see --api/--config)"))?;
    s.set_read_timeout(Some(TIMEOUT)).map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(TIMEOUT)).map_err(|e| e.to_string())?;
    let auth = t.token.as_ref().map_or(String::new(), |tok| format!("Authorization: Bearer {tok}\r\n"));
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        t.host,
        body.len()
    );
    let out = match &t.tls {
        None => exchange(s, req.as_bytes()),
        Some(cfg) => {
            let name = rustls_pki_types::ServerName::try_from(t.server_name().to_string())
                .map_err(|e| format!("{}: not a TLS server name: {e}", t.host))?;
            let conn = rustls::ClientConnection::new(cfg.clone(), name).map_err(|e| format!("{addr}: TLS: {e}"))?;
            exchange(rustls::StreamOwned::new(conn, s), req.as_bytes())
        }
    }
    .map_err(|e| format!("{addr}: no answer: {e}"))?;
    let text = String::from_utf8_lossy(&out);
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| format!("{addr}: not an HTTP answer"))?;
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("{addr}: not an HTTP answer: {:?}", head.lines().next().unwrap_or("")))?;
    // The API answers with a length, never chunked; a chunked body would be someone else's server.
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        return Err(format!("{addr}: unexpected chunked answer (is this mxpipe's API?)"));
    }
    Ok((code, body.to_string()))
}

/// Write `req`, read the answer until the server closes (at most [`MAX_ANSWER`] bytes).
fn exchange(mut s: impl Read + Write, req: &[u8]) -> std::io::Result<Vec<u8>> {
    s.write_all(req)?;
    s.flush()?;
    let mut out = Vec::new();
    match s.take(MAX_ANSWER).read_to_end(&mut out) {
        Ok(_) => Ok(out),
        // A TLS server that closes without close_notify, after its whole answer: the answer
        // is still complete (it carries its length).
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !out.is_empty() => Ok(out),
        Err(e) => Err(e),
    }
}

/// What to tell the operator for a 401 or 403.
fn refused(code: u16, has_token: bool, msg: &str) -> String {
    match (code, has_token) {
        (401, false) => format!(
            "the daemon's API requires a token (HTTP 401: {msg}): give --token-file FILE, set MXPIPE_API_TOKEN, or set \
             [inject.http] client_token_file in --config; make one with `mxpipe token NAME --scope admin`"
        ),
        (401, true) => format!("the daemon refused the API token (HTTP 401: {msg}): is it in its [inject.http] tokens_file?"),
        (403, _) => format!("the API token may not do this (HTTP 403: {msg}): the queue commands need an admin token"),
        _ => format!("the daemon refused: HTTP {code}: {msg}"),
    }
}

/// Run `cmd` against the API at `addr`: the text to print (JSON as the API gave it, or a
/// table / one line for people).
pub fn run(t: &Target, cmd: &QueueCmd, json: bool) -> Result<String, String> {
    let addr = t.addr;
    let (method, path, body) = match cmd {
        QueueCmd::List => ("GET", "/v1/queues".to_string(), String::new()),
        QueueCmd::ClusterList => ("GET", "/v1/cluster".to_string(), String::new()),
        QueueCmd::Suspend { domain, duration } => {
            let body = duration.as_ref().map_or(String::new(), |d| serde_json::json!({ "for": d }).to_string());
            ("POST", format!("/v1/queues/{}/suspend", path_segment(domain)?), body)
        }
        QueueCmd::Resume { domain } => ("POST", format!("/v1/queues/{}/resume", resume_segment(domain)?), String::new()),
        QueueCmd::Bounce { domain } => ("POST", format!("/v1/queues/{}/bounce", path_segment(domain)?), String::new()),
    };
    let (code, body) = request(t, method, &path, &body)?;
    let v: serde_json::Value =
        serde_json::from_str(&body).map_err(|_| format!("{addr}: HTTP {code} with a body that is not JSON: {body:.200}"))?;
    if code != 200 {
        return Err(refused(code, t.token.is_some(), v["error"].as_str().unwrap_or(&body)));
    }
    if json {
        return Ok(v.to_string());
    }
    Ok(match cmd {
        QueueCmd::List => table(&v),
        QueueCmd::ClusterList => cluster_table(&v),
        QueueCmd::Suspend { .. } => format!(
            "{}: suspended until {}; {} recipients wait ({} with the engine finish their attempt)",
            v["domain"].as_str().unwrap_or("?"),
            when(v["suspended_until"].as_f64()),
            v["recipients"],
            v["in_flight"]
        ),
        QueueCmd::Resume { .. } => format!("{}: resumed; {} recipients go now", v["domain"].as_str().unwrap_or("?"), v["recipients"]),
        QueueCmd::Bounce { .. } => format!(
            "{}: {} recipients bounced, with DSNs to their senders ({} with the engine are bounced unless that attempt delivers them)",
            v["domain"].as_str().unwrap_or("?"),
            v["recipients"],
            v["in_flight"]
        ),
    })
}

/// `mxpipe policy show|forget DOMAIN` against a running daemon (`GET`/`DELETE
/// /v1/policy/{domain}`): the text to print, or the API's JSON.
pub fn policy(t: &Target, domain: &str, forget: bool, json: bool) -> Result<String, String> {
    let path = format!("/v1/policy/{}", path_segment(domain)?);
    let (code, body) = request(t, if forget { "DELETE" } else { "GET" }, &path, "")?;
    let v: serde_json::Value =
        serde_json::from_str(&body).map_err(|_| format!("{}: HTTP {code} with a body that is not JSON: {body:.200}", t.addr))?;
    if code != 200 {
        return Err(refused(code, t.token.is_some(), v["error"].as_str().unwrap_or(&body)));
    }
    if json {
        return Ok(v.to_string());
    }
    if forget {
        return Ok(forgotten(v["domain"].as_str().unwrap_or(domain), v["forgotten"].as_bool().unwrap_or(false)));
    }
    let view: crate::policy::state::DomainView = serde_json::from_value(v).map_err(|e| format!("{}: unexpected answer: {e}", t.addr))?;
    Ok(describe_policy(&view))
}

/// One line for `mxpipe policy forget`.
pub fn forgotten(domain: &str, had: bool) -> String {
    if had {
        format!("{domain}: forgotten: its pin and any cached MTA-STS policy (a prefixed MX seen again pins it again; a policy is fetched again)")
    } else {
        format!("{domain}: nothing to forget")
    }
}

/// What `mxpipe policy show` prints for a domain: its pin, then its cached MTA-STS policy.
pub fn describe_policy(v: &crate::policy::state::DomainView) -> String {
    let pin = describe_pin(v);
    match &v.mta_sts {
        Some(c) => format!(
            "{pin}\n{}: MTA-STS policy mode {} (mx {}; id {}) cached until {}",
            v.domain,
            c.policy.mode,
            if c.policy.mx.is_empty() { "-".to_string() } else { c.policy.mx.join(", ") },
            c.id,
            crate::policy::state::format_unix(c.expires)
        ),
        None => format!("{pin}\n{}: no MTA-STS policy cached", v.domain),
    }
}

fn describe_pin(v: &crate::policy::state::DomainView) -> String {
    let Some(p) = &v.pin else {
        return format!("{}: no pin (its MX answers have shown no starttls-/smtps- prefix within the pin TTL)", v.domain);
    };
    let hosts = if p.hosts.is_empty() { "-".to_string() } else { p.hosts.join(", ") };
    if v.pinned {
        format!(
            "{}: pinned ({} prefix, seen on {hosts}) until {} (expires {}): every MX host needs verified TLS",
            v.domain,
            p.prefix,
            crate::policy::state::format_unix(p.expires),
            when(Some(p.expires as f64))
        )
    } else {
        format!("{}: pin expired at {} ({} prefix, seen on {hosts})", v.domain, crate::policy::state::format_unix(p.expires), p.prefix)
    }
}

/// A domain as one URL path segment: the [`Domain`] form the queues are keyed by (A-labels,
/// lowercase, no trailing dot), which only has letters, digits, `-` and dots. The API checks
/// what it is given with this too.
pub fn path_segment(domain: &str) -> Result<Domain, String> {
    Domain::parse(domain).map_err(|e| format!("not a domain name: {e}"))
}

/// What `resume` takes: a destination domain ([`path_segment`]), or an MX host pattern
/// (`*.google.com`, a `[[domain]] mx_pattern`) to lift egress sources' suspensions toward
/// that site.
pub fn resume_segment(scope: &str) -> Result<String, String> {
    if scope.starts_with("*.") {
        let p: crate::value::mx_pattern::MxPattern = scope.parse().map_err(|e| format!("not an MX host pattern: {e}"))?;
        return Ok(p.as_str().to_string());
    }
    Ok(path_segment(scope)?.to_string())
}

/// A Unix time as "in 4m12s" (or "-").
fn when(t: Option<f64>) -> String {
    let Some(t) = t else { return "-".into() };
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs_f64();
    let d = (t - now).max(0.0) as u64;
    match d {
        0 => "now".into(),
        d if d < 60 => format!("in {d}s"),
        d if d < 3600 => format!("in {}m{:02}s", d / 60, d % 60),
        d => format!("in {}h{:02}m", d / 3600, (d % 3600) / 60),
    }
}

fn table(v: &serde_json::Value) -> String {
    let rows = v["queues"].as_array().cloned().unwrap_or_default();
    if rows.is_empty() {
        return "no recipients waiting and no destination suspended".into();
    }
    let width = rows.iter().filter_map(|r| r["domain"].as_str()).map(str::len).max().unwrap_or(6).max(6);
    let mut out = format!(
        "{:<width$}  {:>10}  {:>9}  {:>8}  {:<13}  {}\n",
        "DOMAIN", "RECIPIENTS", "IN FLIGHT", "DEFERRED", "NEXT ATTEMPT", "SUSPENDED"
    );
    for r in &rows {
        out += &format!(
            "{:<width$}  {:>10}  {:>9}  {:>8}  {:<13}  {}\n",
            r["domain"].as_str().unwrap_or(""),
            r["recipients"].as_u64().unwrap_or(0),
            r["in_flight"].as_u64().unwrap_or(0),
            r["deferred"].as_u64().unwrap_or(0),
            when(r["next_attempt"].as_f64()),
            r["suspended_until"].as_f64().map_or("-".to_string(), |t| format!("until {}", when(Some(t)))),
        );
    }
    out.pop();
    out
}

/// The `queue list --cluster` table: which node answered and whether it runs on its local
/// shares, then every live node's waiting recipients per destination, and how many of them
/// its engine has now.
fn cluster_table(v: &serde_json::Value) -> String {
    let mut out = format!(
        "node {} ({}), {} live nodes\n",
        v["node"].as_str().unwrap_or("?"),
        if v["fallback"].as_bool().unwrap_or(false) { "Redis unavailable: local shares" } else { "shared limits" },
        v["live_nodes"]
    );
    let Some(nodes) = v["nodes"].as_array() else {
        out += &format!("nodes: {}", v["nodes"].as_str().unwrap_or("unknown"));
        return out;
    };
    out += &format!("{:<20}  {:<30}  {:>10}  {:>9}  {:>8}\n", "NODE", "DOMAIN", "RECIPIENTS", "IN FLIGHT", "DEFERRED");
    for n in nodes {
        let id = n["id"].as_str().unwrap_or("?");
        let queues = n["summary"]["queues"].as_array().cloned().unwrap_or_default();
        if queues.is_empty() {
            out += &format!("{id:<20}  {:<30}  {:>10}  {:>9}  {:>8}\n", "-", 0, 0, 0);
        }
        for q in &queues {
            out += &format!(
                "{id:<20}  {:<30}  {:>10}  {:>9}  {:>8}\n",
                q["domain"].as_str().unwrap_or(""),
                q["recipients"].as_u64().unwrap_or(0),
                q["in_flight"].as_u64().unwrap_or(0),
                q["deferred"].as_u64().unwrap_or(0)
            );
        }
    }
    out.pop();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_are_checked_before_they_reach_a_url() {
        assert_eq!(path_segment("Example.COM.").map(|d| d.to_string()), Ok("example.com".into()));
        assert_eq!(path_segment("bücher.example").map(|d| d.to_string()), Ok("xn--bcher-kva.example".into()));
        assert!(path_segment("a/b").is_err());
        assert!(path_segment("a b").is_err());
        assert!(path_segment("").is_err());
        assert!(path_segment("..%2f").is_err());
    }

    #[test]
    fn cluster_table_lists_every_node() {
        let v = serde_json::json!({
            "node": "n1", "fallback": false, "live_nodes": 2,
            "nodes": [
                { "id": "n1", "last_seen_ms": 10, "summary": { "queues": [{ "domain": "a.test", "recipients": 3, "in_flight": 2, "deferred": 1 }] } },
                { "id": "n2", "last_seen_ms": 20, "summary": { "queues": [] } }
            ]
        });
        let t = cluster_table(&v);
        assert!(t.starts_with("node n1 (shared limits), 2 live nodes"), "{t}");
        let rows: Vec<&str> = t.lines().skip(2).collect();
        assert_eq!(rows.len(), 2, "{t}");
        assert!(rows[0].starts_with("n1") && rows[0].contains("a.test") && rows[0].trim_end().ends_with("3          2         1"), "{t}");
        assert!(rows[1].starts_with("n2") && rows[1].contains(" - "), "{t}");
        let down = serde_json::json!({ "node": "n1", "fallback": true, "live_nodes": 2, "nodes": "Redis unavailable: x" });
        assert!(cluster_table(&down).contains("local shares") && cluster_table(&down).contains("Redis unavailable: x"));
    }

    #[test]
    fn table_lists_queues() {
        let v = serde_json::json!({"queues": [
            {"domain": "a.test", "recipients": 3, "in_flight": 2, "deferred": 1, "next_attempt": null, "suspended_until": null},
            {"domain": "longer.example", "recipients": 0, "deferred": 0, "next_attempt": null, "suspended_until": 4.0e9},
        ]});
        let t = table(&v);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3, "{t}");
        assert!(lines[0].starts_with("DOMAIN") && lines[1].starts_with("a.test ") && lines[1].contains(" 3          2         1 "), "{t}");
        assert!(lines[2].contains("until in "), "{t}");
        assert_eq!(table(&serde_json::json!({"queues": []})), "no recipients waiting and no destination suspended");
    }

    #[test]
    fn a_dead_api_is_a_clear_error() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        // Bound and dropped: nothing listens there now.
        let e = run(&Target::new(port), &QueueCmd::List, false).unwrap_err();
        assert!(e.contains("cannot reach the daemon's HTTP API") && e.contains("mxpipe serve"), "{e}");
    }
}
