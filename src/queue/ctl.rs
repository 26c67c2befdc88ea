//! `mxpipe queue`: the operator's view of and commands on a running daemon's queues, through
//! its HTTP API (`GET /v1/queues`, `POST /v1/queues/{domain}/{suspend|resume|bounce}`).
//!
//! A blocking HTTP/1.1 client of a few lines is enough here: one request per run, to our own
//! server, on an address the operator gives.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, SystemTime};

use crate::address::Domain;

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueCmd {
    List,
    Suspend { domain: String, duration: Option<String> },
    Resume { domain: String },
    Bounce { domain: String },
}

/// Longest wait for the daemon's answer.
const TIMEOUT: Duration = Duration::from_secs(30);

/// One request; `(status, body)`.
pub fn request(addr: SocketAddr, method: &str, path: &str, body: &str) -> Result<(u16, String), String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("cannot reach the daemon's HTTP API at {addr}: {e} (is `mxpipe serve` running? see --api/--config)"))?;
    s.set_read_timeout(Some(TIMEOUT)).map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(TIMEOUT)).map_err(|e| e.to_string())?;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).map_err(|e| format!("{addr}: {e}"))?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).map_err(|e| format!("{addr}: no answer: {e}"))?;
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

/// Run `cmd` against the API at `addr`: the text to print (JSON as the API gave it, or a
/// table / one line for people).
pub fn run(addr: SocketAddr, cmd: &QueueCmd, json: bool) -> Result<String, String> {
    let (method, path, body) = match cmd {
        QueueCmd::List => ("GET", "/v1/queues".to_string(), String::new()),
        QueueCmd::Suspend { domain, duration } => {
            let body = duration.as_ref().map_or(String::new(), |d| serde_json::json!({ "for": d }).to_string());
            ("POST", format!("/v1/queues/{}/suspend", path_segment(domain)?), body)
        }
        QueueCmd::Resume { domain } => ("POST", format!("/v1/queues/{}/resume", path_segment(domain)?), String::new()),
        QueueCmd::Bounce { domain } => ("POST", format!("/v1/queues/{}/bounce", path_segment(domain)?), String::new()),
    };
    let (code, body) = request(addr, method, &path, &body)?;
    let v: serde_json::Value =
        serde_json::from_str(&body).map_err(|_| format!("{addr}: HTTP {code} with a body that is not JSON: {body:.200}"))?;
    if code != 200 {
        return Err(format!("the daemon refused: HTTP {code}: {}", v["error"].as_str().unwrap_or(&body)));
    }
    if json {
        return Ok(v.to_string());
    }
    Ok(match cmd {
        QueueCmd::List => table(&v),
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

/// A domain as one URL path segment: the [`Domain`] form the queues are keyed by (A-labels,
/// lowercase, no trailing dot), which only has letters, digits, `-` and dots. The API checks
/// what it is given with this too.
pub fn path_segment(domain: &str) -> Result<Domain, String> {
    Domain::parse(domain).map_err(|e| format!("not a domain name: {e}"))
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
    let mut out = format!("{:<width$}  {:>10}  {:>8}  {:<13}  {}\n", "DOMAIN", "RECIPIENTS", "DEFERRED", "NEXT ATTEMPT", "SUSPENDED");
    for r in &rows {
        out += &format!(
            "{:<width$}  {:>10}  {:>8}  {:<13}  {}\n",
            r["domain"].as_str().unwrap_or(""),
            r["recipients"].as_u64().unwrap_or(0),
            r["deferred"].as_u64().unwrap_or(0),
            when(r["next_attempt"].as_f64()),
            r["suspended_until"].as_f64().map_or("-".to_string(), |t| format!("until {}", when(Some(t)))),
        );
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
    fn table_lists_queues() {
        let v = serde_json::json!({"queues": [
            {"domain": "a.test", "recipients": 3, "deferred": 1, "next_attempt": null, "suspended_until": null},
            {"domain": "longer.example", "recipients": 0, "deferred": 0, "next_attempt": null, "suspended_until": 4.0e9},
        ]});
        let t = table(&v);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3, "{t}");
        assert!(lines[0].starts_with("DOMAIN") && lines[1].starts_with("a.test ") && lines[1].contains(" 3 "), "{t}");
        assert!(lines[2].contains("until in "), "{t}");
        assert_eq!(table(&serde_json::json!({"queues": []})), "no recipients waiting and no destination suspended");
    }

    #[test]
    fn a_dead_api_is_a_clear_error() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        // Bound and dropped: nothing listens there now.
        let e = run(port, &QueueCmd::List, false).unwrap_err();
        assert!(e.contains("cannot reach the daemon's HTTP API") && e.contains("mxpipe serve"), "{e}");
    }
}
