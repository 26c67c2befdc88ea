//! One connection: TCP connect, the SMTP steps around TLS, the TLS handshake, optional
//! messages, QUIT, and the wait for the server to close first.
//!
//! This module only moves bytes, applies a timeout to every step and classifies failures;
//! the bytes go through [`crate::wire`] (shared with the injection load), reply parsing is
//! `mxpipe::reply`, the message is [`crate::message`], and what to do with the
//! result (counting, histograms) belongs to [`crate::phase`]. What it learns as it goes is
//! written into an [`Attempt`] passed by `&mut`, so a caller that cuts an attempt short (the
//! run's hard stop) still knows whether its handshake had completed.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mxpipe::reply::Reply;
use mxpipe::tls::TlsFacts;
use rustls_pki_types::ServerName;
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::class::{ConnError, ErrorClass};
use crate::message::MessageTemplate;
use crate::timed::TimedTcp;
use crate::wire::{expect, truncate, within, Wire};
use crate::TlsKind;

/// Everything about the target that is the same for every connection of a phase.
#[derive(Clone)]
pub struct Target {
    pub kind: TlsKind,
    pub addr: SocketAddr,
    pub server_name: ServerName<'static>,
    pub connector: TlsConnector,
    /// Limit for each step.
    pub timeout: Duration,
    pub linger0: bool,
    pub ehlo_name: String,
    pub mail_from: String,
    pub rcpt_to: String,
    /// Transaction mode; `None` for handshake mode.
    pub transaction: Option<Transaction>,
    /// The measured window, `[start, end)`: messages accepted inside it are counted apart.
    pub window: (Instant, Instant),
    /// Test hook: panic in the attempt numbered so, right after its TLS handshake, to check
    /// that a panicking attempt loses no counts. Never set by the binary.
    pub panic_at: Option<u64>,
}

/// What transaction mode sends on each connection.
#[derive(Debug, Clone)]
pub struct Transaction {
    pub messages_per_conn: u32,
    pub template: Arc<MessageTemplate>,
}

/// What one attempt achieved, filled in step by step.
#[derive(Debug, Clone, Default)]
pub struct Attempt {
    /// TCP connect time, once connected.
    pub connect: Option<Duration>,
    /// From the start of the connect to the first byte from the server (the banner on a
    /// STARTTLS port, the ServerHello on an implicit-TLS port), once it came.
    pub ttfb: Option<Duration>,
    /// STARTTLS port: banner, EHLO, STARTTLS and its 220, once done.
    pub starttls: Option<Duration>,
    /// The TLS handshake, once complete.
    pub handshake: Option<Duration>,
    /// When the handshake completed.
    pub handshake_at: Option<Instant>,
    /// What the handshake negotiated, once complete.
    pub tls: Option<TlsFacts>,
    /// The server answered the ClientHello with a HelloRetryRequest (it wanted a key share
    /// for another group: an extra round trip and key generation).
    pub hello_retry: bool,
    /// Messages the server accepted (250 after the end of data).
    pub messages: u64,
    /// Of those, accepted inside [`Target::window`].
    pub messages_in_window: u64,
}

/// Run one connection to `t`, binding to `source` if given. `seq` numbers the attempt (it
/// makes Message-IDs unique). Returns the first failure; `a` says how far it got.
pub async fn run(t: &Target, source: Option<IpAddr>, seq: u64, a: &mut Attempt) -> Result<(), ConnError> {
    let t0 = Instant::now();
    let tcp = TimedTcp::new(within(t.timeout, "connect", connect(t, source)).await?);
    a.connect = Some(t0.elapsed());
    match t.kind {
        TlsKind::StartTls => {
            let mut wire = open_wire(tcp, t);
            let t1 = Instant::now();
            let r = starttls_dialogue(&mut wire, t).await;
            a.ttfb = wire.get_ref().first_byte().map(|at| at.saturating_duration_since(t0));
            if let Err(e) = r {
                if e.class == ErrorClass::NoStarttls {
                    // Say goodbye so the server closes first and no client port is stuck in
                    // TIME_WAIT; the attempt has failed already, whatever happens here.
                    wire.quit_quietly().await;
                }
                return Err(e);
            }
            a.starttls = Some(t1.elapsed());
            let tcp = wire.into_inner()?;
            let tls = handshake(t, tcp, seq, a).await?;
            let mut wire = open_wire(tls, t);
            after_tls(&mut wire, t, seq, a).await
        }
        TlsKind::Implicit => {
            let r = handshake(t, tcp, seq, a).await;
            a.ttfb = match &r {
                Ok(tls) => tls.get_ref().0.first_byte(),
                Err(_) => None,
            }
            .map(|at| at.saturating_duration_since(t0));
            let tls = r?;
            let mut wire = open_wire(tls, t);
            expect(wire.reply("banner", ErrorClass::Banner).await?, 220, "banner", ErrorClass::Banner)?;
            after_tls(&mut wire, t, seq, a).await
        }
    }
}

/// The handshake load's wire: a close where a reply was due is `closed`.
fn open_wire<S: crate::wire::Transport>(io: S, t: &Target) -> Wire<S> {
    Wire::new(io, t.timeout).closes_as(ErrorClass::Closed)
}

/// Open the TCP connection: no Nagle (SMTP is request/response), optional SO_LINGER 0 and
/// source address.
async fn connect(t: &Target, source: Option<IpAddr>) -> Result<TcpStream, ConnError> {
    let err = |what: &str, e: io::Error| ConnError::io(what, &e, ErrorClass::Connect);
    let sock = match t.addr {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(|e| err("socket", e))?;
    sock.set_nodelay(true).map_err(|e| err("TCP_NODELAY", e))?;
    if t.linger0 {
        sock.set_zero_linger().map_err(|e| err("SO_LINGER", e))?;
    }
    if let Some(ip) = source {
        bind_address_no_port(&sock);
        sock.bind(SocketAddr::new(ip, 0)).map_err(|e| err(&format!("bind {ip}"), e))?;
    }
    sock.connect(t.addr).await.map_err(|e| err(&format!("connect {}", t.addr), e))
}

/// With a source address bound before connect, let the kernel choose the port at connect
/// time (Linux IP_BIND_ADDRESS_NO_PORT), so ports are unique per 4-tuple rather than per
/// source address. Best effort: without it, bind still works, with fewer ports.
fn bind_address_no_port(sock: &TcpSocket) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let one: libc::c_int = 1;
        // SAFETY: setsockopt reads `one` (an int, with its size passed) on a socket we own.
        unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = sock;
}

/// Banner, EHLO, STARTTLS, 220: everything in plaintext before the handshake.
async fn starttls_dialogue(wire: &mut Wire<TimedTcp>, t: &Target) -> Result<(), ConnError> {
    expect(wire.reply("banner", ErrorClass::Banner).await?, 220, "banner", ErrorClass::Banner)?;
    let caps = wire.ehlo(&t.ehlo_name).await?;
    if !caps.starttls {
        return Err(ConnError::new(ErrorClass::NoStarttls, "EHLO reply does not advertise STARTTLS"));
    }
    wire.send(b"STARTTLS\r\n", "STARTTLS").await?;
    expect(wire.reply("STARTTLS", ErrorClass::Io).await?, 220, "STARTTLS", ErrorClass::SmtpReply)?;
    Ok(())
}

/// The TLS handshake, timed, with the negotiated facts recorded. A close by the server
/// without an alert is `closed`, not `tls` (see [`crate::class::classify_io`]).
async fn handshake(t: &Target, tcp: TimedTcp, seq: u64, a: &mut Attempt) -> Result<TlsStream<TimedTcp>, ConnError> {
    let t0 = Instant::now();
    let tls = within(t.timeout, "TLS handshake", async {
        t.connector.connect(t.server_name.clone(), tcp).await.map_err(|e| ConnError::io("TLS handshake", &e, ErrorClass::Tls))
    })
    .await?;
    let now = Instant::now();
    a.handshake = Some(now.saturating_duration_since(t0));
    a.handshake_at = Some(now);
    let state = tls.get_ref().1;
    a.tls = Some(TlsFacts::of(state));
    a.hello_retry = state.handshake_kind() == Some(rustls::HandshakeKind::FullWithHelloRetryRequest);
    if t.panic_at == Some(seq) {
        panic!("test hook: panic after the handshake of attempt {seq}");
    }
    Ok(tls)
}

/// Everything after the handshake (and, on the implicit port, after the banner): messages in
/// transaction mode, then QUIT and the close.
async fn after_tls(wire: &mut Wire<TlsStream<TimedTcp>>, t: &Target, seq: u64, a: &mut Attempt) -> Result<(), ConnError> {
    if let Some(tx) = &t.transaction {
        let r = messages(wire, t, tx, seq, a).await;
        if let Err(e) = r {
            if e.class == ErrorClass::SmtpReply {
                wire.quit_quietly().await;
            }
            return Err(e);
        }
    }
    // Reading the 221 over TLS also processes the TLS 1.3 tickets the server sent after the
    // handshake, which is what makes the next connection's resumption possible.
    wire.send(b"QUIT\r\n", "QUIT").await?;
    expect(wire.reply("QUIT", ErrorClass::Io).await?, 221, "QUIT", ErrorClass::SmtpReply)?;
    if t.linger0 {
        // SO_LINGER 0: dropping the socket sends RST and leaves no TIME_WAIT behind.
        return Ok(());
    }
    wire.await_close().await
}

/// EHLO (on the STARTTLS port a second one, as RFC 3207 §4.2 requires, since the first
/// one's answers are void after TLS), then `messages_per_conn` transactions; MAIL, RCPT and
/// DATA go in one write when the server offers PIPELINING (RFC 2920).
async fn messages(wire: &mut Wire<TlsStream<TimedTcp>>, t: &Target, tx: &Transaction, seq: u64, a: &mut Attempt) -> Result<(), ConnError> {
    let caps = wire.ehlo(&t.ehlo_name).await?;
    let size = if caps.size.is_some() { format!(" SIZE={}", tx.template.size()) } else { String::new() };
    let mail = format!("MAIL FROM:<{}>{size}\r\n", t.mail_from);
    let rcpt = format!("RCPT TO:<{}>\r\n", t.rcpt_to);
    for i in 0..u64::from(tx.messages_per_conn) {
        if caps.pipelining {
            wire.send(format!("{mail}{rcpt}DATA\r\n").as_bytes(), "MAIL/RCPT/DATA").await?;
            // Read all three replies before judging, so the session stays in step for QUIT.
            let m = wire.reply("MAIL", ErrorClass::Io).await?;
            let r = wire.reply("RCPT", ErrorClass::Io).await?;
            let d = wire.reply("DATA", ErrorClass::Io).await?;
            positive(m, "MAIL")?;
            positive(r, "RCPT")?;
            expect(d, 354, "DATA", ErrorClass::SmtpReply)?;
        } else {
            wire.send(mail.as_bytes(), "MAIL").await?;
            positive(wire.reply("MAIL", ErrorClass::Io).await?, "MAIL")?;
            wire.send(rcpt.as_bytes(), "RCPT").await?;
            positive(wire.reply("RCPT", ErrorClass::Io).await?, "RCPT")?;
            wire.send(b"DATA\r\n", "DATA").await?;
            expect(wire.reply("DATA", ErrorClass::Io).await?, 354, "DATA", ErrorClass::SmtpReply)?;
        }
        let msg_seq = seq.wrapping_mul(u64::from(tx.messages_per_conn)).wrapping_add(i);
        wire.send(&tx.template.data(msg_seq), "message data").await?;
        positive(wire.reply("end of data", ErrorClass::Io).await?, "end of data")?;
        a.messages += 1;
        let now = Instant::now();
        if now >= t.window.0 && now < t.window.1 {
            a.messages_in_window += 1;
        }
    }
    Ok(())
}

/// The reply must be 2xx, else the attempt fails as `smtp_reply`.
fn positive(r: Reply, what: &str) -> Result<Reply, ConnError> {
    if r.is_positive() {
        Ok(r)
    } else {
        Err(ConnError::new(ErrorClass::SmtpReply, format!("{what}: \"{}\"", truncate(&r.one_line()))))
    }
}
