//! Bytes in and out of one SMTP injection connection, every step within the step timeout:
//! whole writes (a pipelined group goes out in one), replies taken one at a time from a buffer
//! (pipelined replies arrive together), and the wait for the server to close after QUIT.
//! Reply parsing is `mxpipe::reply` (bounded in line length and count).
//!
//! This is the same job as the private `Wire` of [`crate::conn`]; it lives apart so the
//! injection load does not reach into the handshake load's connection code.

use std::future::Future;
use std::io;
use std::time::Duration;

use mxpipe::reply::{parse_reply, Reply};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::class::{ConnError, ErrorClass};

/// A byte stream SMTP runs over (plain TCP, or TLS after STARTTLS), boxed so one session
/// type serves both.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// Run `fut` within `limit`; past it, the step fails as `timeout`.
pub async fn within<T>(limit: Duration, what: &str, fut: impl Future<Output = Result<T, ConnError>>) -> Result<T, ConnError> {
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => r,
        Err(_) => Err(ConnError::new(ErrorClass::Timeout, format!("{what}: no progress in {limit:?}"))),
    }
}

/// A stream with a reply buffer.
pub struct Wire<S> {
    io: S,
    buf: Vec<u8>,
    timeout: Duration,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Wire<S> {
    /// Wrap `io`; every read and write is bounded by `timeout`.
    pub fn new(io: S, timeout: Duration) -> Wire<S> {
        Wire { io, buf: Vec::with_capacity(4096), timeout }
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

    /// Read one complete reply. A close or read error is `class` (`banner` for the greeting,
    /// else `io`); a malformed reply is `banner` for the greeting, else `smtp_reply`.
    pub async fn reply(&mut self, what: &str, class: ErrorClass) -> Result<Reply, ConnError> {
        let malformed = if class == ErrorClass::Banner { ErrorClass::Banner } else { ErrorClass::SmtpReply };
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
                    Ok(0) => return Err(ConnError::new(class, format!("{what} reply: connection closed by the server"))),
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    Err(e) => return Err(ConnError::io(&format!("{what} reply"), &e, class)),
                }
            }
        })
        .await
    }

    /// The stream back, for the TLS upgrade. Bytes after the STARTTLS 220 would be plaintext
    /// injected before the handshake (CVE-2011-0411 style): refuse them.
    pub fn into_inner(self) -> Result<S, ConnError> {
        if !self.buf.is_empty() {
            return Err(ConnError::new(ErrorClass::SmtpReply, "data after the STARTTLS reply, before TLS"));
        }
        Ok(self.io)
    }

    /// Read until the server closes (so the server keeps the TIME_WAIT, not the client). A
    /// reset or a TLS close without close_notify also mean it has closed.
    pub async fn await_close(&mut self) -> Result<(), ConnError> {
        let io = &mut self.io;
        within(self.timeout, "server close after QUIT", async {
            let mut chunk = [0u8; 1024];
            loop {
                match io.read(&mut chunk).await {
                    Ok(0) => return Ok(()),
                    Ok(_) => {}
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted
                        ) =>
                    {
                        return Ok(())
                    }
                    Err(e) => return Err(ConnError::io("waiting for the server to close", &e, ErrorClass::Io)),
                }
            }
        })
        .await
    }
}
