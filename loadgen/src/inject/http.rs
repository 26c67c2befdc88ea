//! One keep-alive HTTP/1.1 connection to mxpipe's injection API: `POST /v1/messages` with
//! `{"messages": [...]}` batches (the format of `mxpipe::inject::http::Batch`: `from`, `to`,
//! `data` per message), `Content-Type: application/json`, `Host` naming the listener (the API
//! refuses others, its DNS-rebinding defence) and `Authorization: Bearer` when a token is given.
//!
//! The client is hyper's (the same crate the API serves with, so nothing new is built). A 202
//! must carry one id per message, else the connection fails: the count is then unknown. A batch
//! is accepted or refused whole: a 4xx refuses it permanently, a 5xx (503 spool error, 507 disk
//! full) for a retry. The latency is from the request's first byte to the response's last.
//! With `tls` the connection is HTTPS (the API's `[inject.http.tls]`): the TLS handshake comes
//! first, under the step timeout, and is counted as the connection's, not a batch's, time.

use std::net::SocketAddr;
use std::time::Instant;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::{header, Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;

use super::{Door, InjectConfig, Recorder, Tickets};
use crate::class::{ConnError, ErrorClass};
use crate::wire::{within, Transport};

/// Largest response body read (a 10,000-message batch's ids are about 200 KB).
const MAX_RESPONSE: usize = 4 * 1024 * 1024;
/// The API's injection route.
pub const PATH: &str = "/v1/messages";

#[derive(Serialize)]
struct Msg<'a> {
    from: &'a str,
    to: Vec<String>,
    data: &'a str,
}

#[derive(Serialize)]
struct BatchBody<'a> {
    messages: Vec<Msg<'a>>,
}

#[derive(serde::Deserialize)]
struct Accepted {
    ids: Vec<String>,
}

fn io_err(what: &str, e: impl std::fmt::Display) -> ConnError {
    ConnError::new(ErrorClass::Io, format!("{what}: {e}"))
}

/// Run one connection to `addr`, counting into `rec`. `Ok` when it ended cleanly (no message
/// left, or the server asked to close).
pub async fn connection(cfg: &InjectConfig, addr: SocketAddr, tickets: &Tickets, rec: &mut Recorder) -> Result<(), ConnError> {
    let Door::Http { batch, token, tls } = &cfg.door else {
        return Err(ConnError::new(ErrorClass::Connect, "not an HTTP door"));
    };
    let tcp = within(cfg.timeout, "connect", async {
        let s =
            tokio::net::TcpStream::connect(addr).await.map_err(|e| ConnError::io(&format!("connect {addr}"), &e, ErrorClass::Connect))?;
        s.set_nodelay(true).map_err(|e| ConnError::io("TCP_NODELAY", &e, ErrorClass::Connect))?;
        Ok(s)
    })
    .await?;
    let io: Box<dyn Transport> = match tls {
        Some(t) => Box::new(
            within(cfg.timeout, "TLS handshake", async {
                t.connector.connect(t.server_name.clone(), tcp).await.map_err(|e| ConnError::io("TLS handshake", &e, ErrorClass::Tls))
            })
            .await?,
        ),
        None => Box::new(tcp),
    };
    let (mut sender, conn) = within(cfg.timeout, "HTTP/1.1 handshake", async {
        hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(io)).await.map_err(|e| io_err("HTTP/1.1 handshake", e))
    })
    .await?;
    // The connection's I/O runs beside us; aborted when this connection ends.
    let driver = tokio::spawn(conn);
    let _abort = AbortOnDrop(driver);
    let host = addr.to_string();
    let auth = token.as_ref().map(|t| format!("Bearer {t}"));
    let plan = &cfg.plan;
    let mut sent = 0u64;
    loop {
        let want = match cfg.messages_per_conn {
            Some(m) if sent >= m => break,
            Some(m) => (*batch as u64).min(m - sent),
            None => *batch as u64,
        };
        let Some(range) = tickets.take(want) else { break };
        let n = range.end - range.start;
        sent += n;
        rec.attempted += n;
        let datas: Vec<String> = range
            .clone()
            .map(|seq| {
                let mut raw = Vec::with_capacity(plan.size(seq));
                plan.raw(seq, &mut raw);
                // The plan writes ASCII only.
                String::from_utf8_lossy(&raw).into_owned()
            })
            .collect();
        let body = BatchBody {
            messages: range
                .clone()
                .zip(&datas)
                .map(|(seq, data)| Msg { from: plan.from(), to: (0..plan.rcpts_per_message()).map(|k| plan.rcpt(seq, k)).collect(), data })
                .collect(),
        };
        let json = serde_json::to_vec(&body).map_err(|e| io_err("encoding the batch", e))?;
        let mut req =
            Request::builder().method(Method::POST).uri(PATH).header(header::HOST, &host).header(header::CONTENT_TYPE, "application/json");
        if let Some(a) = &auth {
            req = req.header(header::AUTHORIZATION, a);
        }
        let req = req.body(Full::new(Bytes::from(json))).map_err(|e| io_err("building the request", e))?;
        let t0 = Instant::now();
        let r = within(cfg.timeout, "POST /v1/messages", async {
            sender.ready().await.map_err(|e| io_err("connection", e))?;
            let resp = sender.send_request(req).await.map_err(|e| io_err("POST /v1/messages", e))?;
            let status = resp.status();
            let close = resp.headers().get(header::CONNECTION).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
            let body = Limited::new(resp.into_body(), MAX_RESPONSE).collect().await.map_err(|e| io_err("reading the response", e))?;
            Ok((status, close, body.to_bytes()))
        })
        .await;
        let (status, close, body) = match r {
            Ok(x) => x,
            Err(e) => {
                rec.lost += n;
                return Err(e);
            }
        };
        rec.requests += 1;
        let now = Instant::now();
        if status == StatusCode::ACCEPTED {
            let ids = serde_json::from_slice::<Accepted>(&body).map(|a| a.ids.len()).unwrap_or(0);
            if ids as u64 != n {
                rec.lost += n;
                return Err(ConnError::new(ErrorClass::SmtpReply, format!("202 with {ids} ids for {n} messages")));
            }
            let bytes: u64 = range.clone().map(|s| plan.size(s) as u64).sum();
            rec.acked(n, n * plan.rcpts_per_message() as u64, bytes, now - t0, now - tickets.t0);
        } else {
            rec.refused_reply("http", status.as_u16());
            if status.is_server_error() {
                rec.refused_temp += n;
            } else {
                rec.refused_perm += n;
            }
            let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
            rec.error_examples.entry(format!("http_{}", status.as_u16())).or_insert(text);
        }
        if close {
            break;
        }
    }
    Ok(())
}

struct AbortOnDrop(tokio::task::JoinHandle<Result<(), hyper::Error>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
