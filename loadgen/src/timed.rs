//! A TCP stream that notes when the server's first byte arrived, for the time-to-first-byte
//! row: on a STARTTLS port that byte is the banner's, on an implicit-TLS port the ServerHello's,
//! so the row spans the server's accept wait on both kinds alike (which the handshake row does
//! on one kind only). It only watches reads; it changes nothing on the wire.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A [`TcpStream`] and the instant its first byte was read.
#[derive(Debug)]
pub struct TimedTcp {
    inner: TcpStream,
    first_byte: Option<Instant>,
}

impl TimedTcp {
    /// Watch `inner` from now on.
    pub fn new(inner: TcpStream) -> TimedTcp {
        TimedTcp { inner, first_byte: None }
    }

    /// When the first byte from the server was read, if one has been.
    pub fn first_byte(&self) -> Option<Instant> {
        self.first_byte
    }
}

impl AsyncRead for TimedTcp {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if self.first_byte.is_none() && matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.first_byte = Some(Instant::now());
        }
        r
    }
}

impl AsyncWrite for TimedTcp {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
