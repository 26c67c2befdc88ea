//! Bytes in and out of one SMTP connection, for both loads (the handshake load's
//! [`crate::conn`] and the injection load's [`crate::inject`]): whole writes (a pipelined
//! group goes out in one), replies taken one at a time from a buffer (pipelined replies
//! arrive together), the wait for the server to close after QUIT, and EHLO; every step within
//! the step timeout, every failure classified.
//!
//! Reply parsing is `mxpipe::reply` (bounded in line length and count); this module only
//! moves bytes and must not count or time anything: that belongs to its callers.

use std::future::Future;
use std::io;
use std::time::Duration;

use mxpipe::reply::{parse_reply, Capabilities, Reply};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::class::{ConnError, ErrorClass};
use crate::timed::TimedTcp;

/// Run `fut` within `limit`; past it, the step fails as `timeout`.
pub async fn within<T>(limit: Duration, what: &str, fut: impl Future<Output = Result<T, ConnError>>) -> Result<T, ConnError> {
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => r,
        Err(_) => Err(ConnError::new(ErrorClass::Timeout, format!("{what}: no progress in {limit:?}"))),
    }
}

/// A byte stream SMTP runs over: plain TCP, or TLS over TCP (object-safe, so one boxed
/// session type can serve both).
pub trait Transport: AsyncRead + AsyncWrite + Unpin + Send {
    /// The TCP stream under a TLS layer, read to its end after the TLS close so the server's
    /// FIN, not only its close_notify, has come; `None` reads the stream itself only.
    fn tcp_below(&mut self) -> Option<&mut TimedTcp> {
        None
    }
}

impl Transport for TimedTcp {}

impl Transport for TlsStream<TimedTcp> {
    fn tcp_below(&mut self) -> Option<&mut TimedTcp> {
        Some(self.get_mut().0)
    }
}

impl Transport for TcpStream {}

/// The injection load's TLS stream: it has always waited for the end of the TLS stream only.
impl Transport for TlsStream<TcpStream> {}

impl Transport for Box<dyn Transport> {
    fn tcp_below(&mut self) -> Option<&mut TimedTcp> {
        (**self).tcp_below()
    }
}

/// A stream with a reply buffer: replies that arrive together (pipelining) are taken one at
/// a time, and every read and write is bounded by the step timeout.
pub struct Wire<S> {
    io: S,
    buf: Vec<u8>,
    timeout: Duration,
    /// The class of a close where a reply other than the greeting was due.
    close: ErrorClass,
}

impl<S: Transport> Wire<S> {
    /// Wrap `io`; every read and write is bounded by `timeout`. A close where a reply was
    /// due is counted under the class given to [`Wire::reply`], unless [`Wire::closes_as`]
    /// says otherwise.
    pub fn new(io: S, timeout: Duration) -> Wire<S> {
        Wire { io, buf: Vec::with_capacity(4096), timeout, close: ErrorClass::Io }
    }

    /// Count a close where a reply after the greeting was due as `class` (the handshake load
    /// says `closed`); a close before the greeting stays `banner`.
    pub fn closes_as(mut self, class: ErrorClass) -> Wire<S> {
        self.close = class;
        self
    }

    /// The stream itself (to look at it, not to read or write past the buffer).
    pub fn get_ref(&self) -> &S {
        &self.io
    }

    /// Write `bytes` completely, and flush.
    pub async fn send(&mut self, bytes: &[u8], what: &str) -> Result<(), ConnError> {
        let io = &mut self.io;
        within(self.timeout, what, async {
            io.write_all(bytes).await.map_err(|e| ConnError::io(&format!("sending {what}"), &e, ErrorClass::Io))?;
            io.flush().await.map_err(|e| ConnError::io(&format!("sending {what}"), &e, ErrorClass::Io))
        })
        .await
    }

    /// Read one complete reply. `class` is for the connection failing: `banner` for the
    /// greeting (a malformed greeting is `banner` too), else `io` (a malformed reply is then
    /// `smtp_reply`, and a close as [`Wire::closes_as`] says).
    pub async fn reply(&mut self, what: &str, class: ErrorClass) -> Result<Reply, ConnError> {
        let malformed = if class == ErrorClass::Banner { ErrorClass::Banner } else { ErrorClass::SmtpReply };
        let closed = if class == ErrorClass::Banner { class } else { self.close };
        let (io, buf) = (&mut self.io, &mut self.buf);
        within(self.timeout, &format!("{what} reply"), async {
            loop {
                match parse_reply(buf) {
                    Ok(Some((r, n))) => {
                        buf.drain(..n);
                        return Ok(r);
                    }
                    Ok(None) => {}
                    Err(e) => return Err(ConnError::new(malformed, format!("{what} reply: {e}"))),
                }
                let mut chunk = [0u8; 4096];
                match io.read(&mut chunk).await {
                    Ok(0) => return Err(ConnError::new(closed, format!("{what} reply: connection closed by the server"))),
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    Err(e) => return Err(ConnError::io(&format!("{what} reply"), &e, class)),
                }
            }
        })
        .await
    }

    /// Give back the stream for the TLS upgrade. Bytes after the STARTTLS 220 would be
    /// plaintext injected before the handshake (CVE-2011-0411 style): refuse them.
    pub fn into_inner(self) -> Result<S, ConnError> {
        if !self.buf.is_empty() {
            return Err(ConnError::new(ErrorClass::SmtpReply, "data after the STARTTLS reply, before TLS"));
        }
        Ok(self.io)
    }

    /// Read until the server closes, so the server, not the client, holds the TIME_WAIT
    /// (see field-notes: client-side TIME_WAIT exhausts ephemeral ports). Over TLS, a
    /// close_notify ends the TLS stream; the TCP FIN follows, so read the TCP stream too when
    /// [`Transport::tcp_below`] gives it.
    pub async fn await_close(&mut self) -> Result<(), ConnError> {
        let io = &mut self.io;
        within(self.timeout, "server close after QUIT", async {
            drain(io).await?;
            if let Some(tcp) = io.tcp_below() {
                drain(tcp).await?;
            }
            Ok(())
        })
        .await
    }

    /// After a failure that left the session in step: QUIT, 221, wait for the close; all
    /// best effort, since the attempt has failed already.
    pub async fn quit_quietly(&mut self) {
        if self.send(b"QUIT\r\n", "QUIT").await.is_ok() && self.reply("QUIT", ErrorClass::Io).await.is_ok() {
            let _ = self.await_close().await;
        }
    }

    /// EHLO `name` and the capabilities its 250 advertises.
    pub async fn ehlo(&mut self, name: &str) -> Result<Capabilities, ConnError> {
        self.send(format!("EHLO {name}\r\n").as_bytes(), "EHLO").await?;
        let r = self.reply("EHLO", ErrorClass::Io).await?;
        expect(r, 250, "EHLO", ErrorClass::SmtpReply).map(|r| Capabilities::from_ehlo(&r))
    }
}

/// Read and discard until end of stream. A reset or a TCP close without TLS close_notify
/// (`UnexpectedEof` from rustls) also mean the server has closed.
async fn drain<S: AsyncRead + Unpin + ?Sized>(s: &mut S) -> Result<(), ConnError> {
    let mut chunk = [0u8; 1024];
    loop {
        match s.read(&mut chunk).await {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e)
                if matches!(e.kind(), io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted) =>
            {
                return Ok(())
            }
            Err(e) => return Err(ConnError::io("waiting for the server to close", &e, ErrorClass::Io)),
        }
    }
}

/// The reply must have `code`, else the step fails with `class`.
pub fn expect(r: Reply, code: u16, what: &str, class: ErrorClass) -> Result<Reply, ConnError> {
    if r.code == code {
        Ok(r)
    } else {
        Err(ConnError::new(class, format!("{what}: expected {code}, got \"{}\"", truncate(&r.one_line()))))
    }
}

/// At most the first 120 characters of `s` (a reply quoted in an error).
pub fn truncate(s: &str) -> &str {
    match s.char_indices().nth(120) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}
