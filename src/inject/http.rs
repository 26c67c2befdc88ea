//! The daemon's HTTP API: injection (`POST /v1/messages`), observation
//! (`GET /v1/messages/{id}`, `GET /v1/queues`, `GET /metrics`) and the operator's commands on
//! a destination (`POST /v1/queues/{domain}/suspend|resume|bounce`, used by `mxpipe queue`).
//!
//! A message is answered 202 only once the spool has it on disk; a full disk answers 507 and
//! another spool error 503, so the client retries and nothing is half-accepted. Bodies are
//! JSON; errors are `{"error": "..."}` with a status a client can act on.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use super::Intake;
use crate::queue::manager::{Control, ControlReply};

/// Largest request body (a batch of messages).
pub const MAX_BODY: usize = 64 * 1024 * 1024;
/// Messages in one request at most.
pub const MAX_BATCH: usize = 10_000;

#[derive(Clone)]
struct Api {
    intake: Intake,
    control: crossbeam_channel::Sender<Control>,
}

/// One message to inject: the envelope and the RFC 5322 content.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewMessage {
    pub from: String,
    pub to: Vec<String>,
    pub data: String,
}

/// A batch: `{"messages": [...]}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Batch {
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
        batch.push((from, to, Arc::<[u8]>::from(m.data.into_bytes())));
    }
    // All or nothing: one spool frame, one fsync.
    let ids = match api.intake.accept(batch).await {
        Ok(ids) => ids,
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
    Json(serde_json::json!({ "queues": api.intake.board().queues() })).into_response()
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
    let name = match crate::queue::ctl::path_segment(&domain) {
        Ok(name) => name,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let (reply, answer) = tokio::sync::oneshot::channel::<ControlReply>();
    let domain = name.to_string();
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

async fn metrics(State(api): State<Api>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], api.intake.board().metrics()).into_response()
}

/// A running API listener.
pub struct ApiServer {
    pub addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl ApiServer {
    /// Stop accepting requests and let those in progress finish.
    pub async fn shutdown(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// Start the API on `listen`.
pub async fn start(listen: SocketAddr, intake: Intake, control: crossbeam_channel::Sender<Control>) -> std::io::Result<ApiServer> {
    let app = Router::new()
        .route("/v1/messages", post(inject))
        .route("/v1/messages/{id}", get(message))
        .route("/v1/queues", get(queues))
        .route("/v1/queues/{domain}/{action}", post(queue_command))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(Api { intake, control });
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await;
    });
    Ok(ApiServer { addr, stop, task })
}

#[cfg(test)]
mod tests {
    use super::*;

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
