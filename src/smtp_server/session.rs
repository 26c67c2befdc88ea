//! One session of the SMTP server core, over a plain or TLS stream.
//!
//! Replies are buffered and written only when the session would otherwise wait for input, so
//! a pipelined command group (RFC 2920) is answered in one write, in order. Input is read into
//! one bounded buffer: command lines longer than [`MAX_COMMAND_LINE`] are refused, message
//! bodies are scanned as they stream through and are kept in memory only when they are to be
//! written out (`--mail-dir`), up to the size limit. Nothing a client sends can make the
//! session grow without bound, wait forever, or panic.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::command::{self, Command, Syntax};
use super::stats::inc;
use super::{Ctx, PortKind};

/// Longest command line accepted (RFC 5321 §4.5.3.1.4 says 512; we allow room for
/// extension parameters).
pub const MAX_COMMAND_LINE: usize = 4096;
/// Bad commands in one session before the server gives up on the client (Postfix's
/// smtpd_hard_error_limit). A new EHLO does not reset the count.
const MAX_BAD_COMMANDS: u32 = 20;
/// Bytes of a partial body line held before they are consumed without waiting for the LF.
const PARTIAL_LINE_FLUSH: usize = 8192;
const READ_CHUNK: usize = 16 * 1024;

/// How a session (or one half of it, before and after STARTTLS) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Exit {
    /// The client sent QUIT and got 221.
    Quit,
    /// STARTTLS was accepted (220 sent): the caller upgrades the stream.
    StartTls,
    /// The client closed the connection.
    Closed,
    /// The client was idle too long; 421 sent.
    Timeout,
    /// The session's time limit (or, before AUTH, its time to authenticate) ran out; 421 sent.
    Deadline,
    /// The server is shutting down; 421 sent.
    Shutdown,
    /// The shutdown grace period ran out mid-session.
    Aborted,
    /// A `--drop-rate` fault closed the connection mid-transaction.
    Dropped,
    /// A `--refuse-rate` fault answered the greeting with 421.
    Refused,
    /// Too many bad commands or an unrecoverable protocol error; 421 or 5xx sent.
    Protocol,
    /// Reading or writing failed.
    Io,
}

/// What a connection must do about AUTH, carried from the clear half of a session to the TLS
/// half.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct ConnState {
    /// The client's address, always (for the per-peer record, the acceptor and faults aimed at one client).
    pub client: Option<std::net::IpAddr>,
    /// A client outside the allowed networks: MAIL gets 530 until it has authenticated.
    pub required: bool,
    /// Failed AUTH attempts on this connection so far.
    pub failures: u32,
    /// The client's address when it must AUTH: its failures count against it across
    /// connections.
    pub peer: Option<std::net::IpAddr>,
    /// Commands that carried no mail so far (NOOP, VRFY, RSET, HELP, unknown verbs), against
    /// `max_idle_commands`.
    pub idle_commands: u32,
    /// The whole connection ends here, whatever it is doing (`session_timeout`).
    pub deadline: Option<tokio::time::Instant>,
    /// A client that must AUTH and has not yet: it is cut off here (`auth_timeout`).
    pub auth_deadline: Option<tokio::time::Instant>,
}

/// Message ids unique within the process, for "queued as" replies and file names.
static MESSAGE_SEQ: AtomicU64 = AtomicU64::new(1);

struct Txn {
    from: Vec<u8>,
    rcpts: Vec<Vec<u8>>,
    /// Chosen at MAIL: this transaction ends with the connection dropped (a fault).
    drop: bool,
    /// `MAIL FROM:<..> REQUIRETLS` (RFC 8689), taken only over TLS where it is offered.
    requiretls: bool,
    /// `MAIL FROM:<..> SMTPUTF8` (RFC 6531), taken where it is offered: UTF-8 addresses allowed.
    smtputf8: bool,
    /// BDAT chunks received so far (a transaction uses DATA or BDAT, not both).
    bdat: Option<Body>,
    /// The `SIZE=` the client declared, if any: how much room the body starts with.
    size: Option<u64>,
}

/// A message body being received.
struct Body {
    bytes: u64,
    too_big: bool,
    /// A NUL byte was seen: not mail text (RFC 5322 §2.1, RFC 6152; BINARYMIME is not offered).
    nul: bool,
    content: Option<Vec<u8>>,
}

/// Room a stored body starts with when the client declared no `SIZE=`: most mail fits, so
/// it is not copied while it grows.
const BODY_START: usize = 8 * 1024;
/// Most room reserved from a declared `SIZE=` before the bytes arrive (a client may declare
/// the limit and send nothing).
const BODY_START_MAX: u64 = 1 << 20;

impl Body {
    /// A body, stored if `keep`, with room for `declared` bytes (bounded by `max` and
    /// [`BODY_START_MAX`]).
    fn new(keep: bool, declared: Option<u64>, max: u64) -> Body {
        let room = declared.map_or(BODY_START as u64, |d| d.saturating_add(2)).min(max).min(BODY_START_MAX) as usize;
        Body { bytes: 0, too_big: false, nul: false, content: keep.then(|| Vec::with_capacity(room)) }
    }

    fn add(&mut self, data: &[u8], max: u64) {
        self.bytes += data.len() as u64;
        self.nul = self.nul || memchr::memchr(0, data).is_some();
        if self.bytes > max {
            self.too_big = true;
            self.content = None;
        } else if let Some(c) = &mut self.content {
            c.extend_from_slice(data);
        }
    }
}

pub(super) struct Session<'a, S> {
    io: &'a mut S,
    ctx: &'a Ctx,
    tls: bool,
    rbuf: Vec<u8>,
    rpos: usize,
    wbuf: Vec<u8>,
    /// Skipping the rest of an overlong command line.
    discarding: bool,
    helo: bool,
    /// The name of the last EHLO/HELO (bounded by the command line length).
    helo_name: Option<String>,
    txn: Option<Txn>,
    bad: u32,
    rng: fastrand::Rng,
    gate: ConnState,
    /// AUTH succeeded in this session.
    authenticated: bool,
}

enum Line {
    Command(usize, usize),
    TooLong,
    Incomplete,
}

impl<'a, S: AsyncRead + AsyncWrite + Unpin> Session<'a, S> {
    pub fn new(io: &'a mut S, ctx: &'a Ctx, tls: bool, gate: ConnState) -> Self {
        Session {
            io,
            ctx,
            tls,
            rbuf: Vec::with_capacity(READ_CHUNK),
            rpos: 0,
            wbuf: Vec::with_capacity(1024),
            discarding: false,
            helo: false,
            helo_name: None,
            txn: None,
            bad: 0,
            rng: fastrand::Rng::new(),
            gate,
            authenticated: false,
        }
    }

    /// What the next session on this connection (after STARTTLS) must know about AUTH.
    pub fn conn_state(&self) -> ConnState {
        self.gate
    }

    /// Run the session until it ends. `banner`: send the 220 greeting first (not after
    /// STARTTLS, where the client speaks first with EHLO).
    pub async fn run(&mut self, banner: bool) -> Exit {
        if banner && self.roll(self.ctx.cfg.faults.refuse_rate) {
            let text = format!("421 4.7.0 {} Try again later, closing connection\r\n", self.ctx.cfg.hostname);
            self.wbuf.extend_from_slice(text.as_bytes());
            return self.finish(Exit::Refused).await;
        }
        if banner {
            let text = format!("220 {} ESMTP mxpipe\r\n", self.ctx.cfg.hostname);
            self.reply(&text).await;
        }
        loop {
            let mut batch = 0u64;
            loop {
                match self.take_line() {
                    Line::Command(start, end) => {
                        batch += 1;
                        let line = self.rbuf[start..end].to_vec();
                        if let Some(exit) = self.command(&line).await {
                            self.count_batch(batch);
                            return self.finish(exit).await;
                        }
                    }
                    Line::TooLong => {
                        if let Some(exit) = self.bad_command("500 5.5.2 Line too long\r\n").await {
                            return self.finish(exit).await;
                        }
                    }
                    Line::Incomplete => break,
                }
            }
            self.count_batch(batch);
            if let Err(exit) = self.fill(true).await {
                return self.finish(exit).await;
            }
        }
    }

    fn count_batch(&self, commands: u64) {
        if commands > 0 {
            self.ctx.stats.commands.fetch_add(commands, Ordering::Relaxed);
            inc(&self.ctx.stats.command_batches);
        }
    }

    /// Send what must be said on the way out, and flush.
    async fn finish(&mut self, exit: Exit) -> Exit {
        let host = &self.ctx.cfg.hostname;
        let last = match exit {
            Exit::Timeout => {
                inc(&self.ctx.stats.timeouts);
                Some(format!("421 4.4.2 {host} Error: timeout exceeded\r\n"))
            }
            Exit::Shutdown => Some(format!("421 4.3.2 {host} Service shutting down\r\n")),
            Exit::Deadline => {
                inc(&self.ctx.stats.timeouts);
                Some(format!("421 4.4.2 {host} Error: session time limit reached, closing connection\r\n"))
            }
            _ => None,
        };
        if let Some(l) = last {
            self.wbuf.extend_from_slice(l.as_bytes());
        }
        if matches!(exit, Exit::Dropped | Exit::Aborted | Exit::Io | Exit::Closed) {
            return exit;
        }
        if self.flush().await.is_err() {
            return Exit::Io;
        }
        exit
    }

    /// Find the next complete command line in the buffer.
    fn take_line(&mut self) -> Line {
        loop {
            let buf = &self.rbuf[self.rpos..];
            match memchr::memchr(b'\n', buf) {
                Some(i) => {
                    let start = self.rpos;
                    self.rpos += i + 1;
                    if self.discarding {
                        self.discarding = false;
                        return Line::TooLong;
                    }
                    if i > MAX_COMMAND_LINE {
                        return Line::TooLong;
                    }
                    let mut end = start + i;
                    if end > start && self.rbuf[end - 1] == b'\r' {
                        end -= 1;
                    }
                    return Line::Command(start, end);
                }
                None if buf.len() > MAX_COMMAND_LINE => {
                    // Drop what we have and keep dropping until the line ends.
                    self.discarding = true;
                    self.rpos = self.rbuf.len();
                    continue;
                }
                None => return Line::Incomplete,
            }
        }
    }

    /// Flush replies, then read more input. `interruptible`: a shutdown may end the wait
    /// (between commands, not inside a message body).
    async fn fill(&mut self, interruptible: bool) -> Result<(), Exit> {
        self.flush().await?;
        if self.rpos == self.rbuf.len() {
            self.rbuf.clear();
            self.rpos = 0;
        } else if self.rpos > READ_CHUNK {
            self.rbuf.drain(..self.rpos);
            self.rpos = 0;
        }
        self.rbuf.reserve(READ_CHUNK);
        // Every read is bounded by the idle timeout and by the connection's own deadlines, so
        // a client trickling a byte at a time cannot hold a session past them.
        let idle_at = tokio::time::Instant::now() + self.ctx.cfg.idle_timeout;
        let limit_at = match (self.gate.deadline, self.gate.auth_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let until = limit_at.map_or(idle_at, |l| l.min(idle_at));
        let read = tokio::time::timeout_at(until, self.io.read_buf(&mut self.rbuf));
        tokio::select! {
            biased;
            _ = self.ctx.abort.cancelled() => Err(Exit::Aborted),
            _ = self.ctx.shutdown.cancelled(), if interruptible => Err(Exit::Shutdown),
            r = read => match r {
                Err(_) if limit_at.is_some_and(|l| l <= idle_at) => Err(Exit::Deadline),
                Err(_) => Err(Exit::Timeout),
                Ok(Ok(0)) => Err(Exit::Closed),
                Ok(Ok(_)) => Ok(()),
                Ok(Err(_)) => Err(Exit::Io),
            },
        }
    }

    async fn flush(&mut self) -> Result<(), Exit> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        let r = tokio::time::timeout(self.ctx.cfg.idle_timeout, async {
            self.io.write_all(&self.wbuf).await?;
            self.io.flush().await
        })
        .await;
        self.wbuf.clear();
        match r {
            Ok(Ok(())) => Ok(()),
            _ => Err(Exit::Io),
        }
    }

    /// Queue a reply (after the configured delay, a fault for slow-server drills).
    async fn reply(&mut self, text: &str) {
        if !self.ctx.cfg.faults.delay.is_zero() {
            tokio::time::sleep(self.ctx.cfg.faults.delay).await;
        }
        self.wbuf.extend_from_slice(text.as_bytes());
    }

    async fn bad_command(&mut self, text: &str) -> Option<Exit> {
        inc(&self.ctx.stats.bad_commands);
        self.bad += 1;
        if self.bad >= MAX_BAD_COMMANDS {
            let host = self.ctx.cfg.hostname.clone();
            self.reply(&format!("421 4.7.0 {host} Too many errors, closing connection\r\n")).await;
            return Some(Exit::Protocol);
        }
        self.reply(text).await;
        None
    }

    /// Handle one command line (without its line ending).
    async fn command(&mut self, line: &[u8]) -> Option<Exit> {
        let cmd = command::parse(line);
        let before_tls = !self.tls && self.ctx.port == PortKind::StartTls;
        if before_tls
            && self.ctx.cfg.require_tls
            && !matches!(cmd, Command::Ehlo(_) | Command::Helo(_) | Command::StartTls | Command::Quit | Command::Noop | Command::Rset)
        {
            return self.bad_command("530 5.7.0 Must issue a STARTTLS command first\r\n").await;
        }
        if cmd.carries_no_mail() {
            self.gate.idle_commands += 1;
            if self.gate.idle_commands > self.ctx.cfg.max_idle_commands {
                inc(&self.ctx.stats.bad_commands);
                let host = self.ctx.cfg.hostname.clone();
                self.reply(&format!("421 4.7.0 {host} Too many commands that send no mail, closing connection\r\n")).await;
                return Some(Exit::Protocol);
            }
        }
        match cmd {
            Command::Invalid(Syntax::Bdat) => {
                // Without a size we cannot find the next command in the stream: give up on it.
                inc(&self.ctx.stats.bad_commands);
                self.reply(Syntax::Bdat.reply()).await;
                return Some(Exit::Protocol);
            }
            Command::Invalid(syntax) => return self.bad_command(syntax.reply()).await,
            Command::Ehlo(name) | Command::Helo(name) => {
                // A fresh greeting resets the transaction, not the error count: EHLO between
                // bad commands must not buy a client endless tries.
                self.helo = true;
                self.helo_name = Some(String::from_utf8_lossy(name).into_owned());
                self.txn = None;
                let text = if matches!(cmd, Command::Helo(_)) {
                    format!("250 {}\r\n", self.ctx.cfg.hostname)
                } else {
                    self.ehlo_reply(before_tls)
                };
                self.reply(&text).await;
            }
            Command::StartTls => {
                if self.tls {
                    return self.bad_command("503 5.5.1 TLS already active\r\n").await;
                }
                if !before_tls || !self.ctx.cfg.starttls {
                    return self.bad_command("502 5.5.1 STARTTLS not available\r\n").await;
                }
                self.reply("220 2.0.0 Ready to start TLS\r\n").await;
                // Anything the client pipelined after STARTTLS is dropped, never carried into
                // the TLS session (the STARTTLS command-injection attack, CVE-2011-0411).
                self.rbuf.clear();
                self.rpos = 0;
                return Some(Exit::StartTls);
            }
            Command::Mail { path, size, requiretls, smtputf8 } => return self.mail(path, size, requiretls, smtputf8).await,
            Command::Rcpt { path } => return self.rcpt(path).await,
            Command::Data => return self.data().await,
            Command::Bdat { size, last } => return self.bdat(size, last).await,
            Command::Rset => {
                self.txn = None;
                self.reply("250 2.0.0 Ok\r\n").await;
            }
            Command::Noop => self.reply("250 2.0.0 Ok\r\n").await,
            Command::Quit => {
                self.reply("221 2.0.0 Bye\r\n").await;
                return Some(Exit::Quit);
            }
            Command::Auth { mechanism, initial } if self.ctx.cfg.auth.is_some() => return self.auth(mechanism, initial).await,
            Command::Vrfy => self.reply("252 2.5.0 Cannot VRFY user, but will accept message\r\n").await,
            Command::Help => self.reply("214 2.0.0 mxpipe: see RFC 5321\r\n").await,
            Command::Auth { .. } | Command::Unknown => return self.bad_command("500 5.5.1 Command unrecognized\r\n").await,
        }
        None
    }

    fn ehlo_reply(&self, before_tls: bool) -> String {
        let cfg = &self.ctx.cfg;
        let mut lines = vec![
            format!("{} greets you", cfg.hostname),
            "PIPELINING".to_string(),
            format!("SIZE {}", cfg.max_message_size),
            "8BITMIME".to_string(),
            "ENHANCEDSTATUSCODES".to_string(),
            "CHUNKING".to_string(),
        ];
        if before_tls && cfg.starttls {
            lines.push("STARTTLS".to_string());
        }
        if cfg.auth.as_ref().is_some_and(|a| self.tls || !a.require_tls) {
            lines.push("AUTH PLAIN".to_string());
        }
        // RFC 8689 §2: only where the session is protected by TLS.
        if cfg.requiretls && self.tls {
            lines.push("REQUIRETLS".to_string());
        }
        if cfg.smtputf8 {
            lines.push("SMTPUTF8".to_string());
        }
        let mut s = String::with_capacity(160);
        for (i, l) in lines.iter().enumerate() {
            let sep = if i + 1 == lines.len() { ' ' } else { '-' };
            s.push_str("250");
            s.push(sep);
            s.push_str(l);
            s.push_str("\r\n");
        }
        s
    }

    async fn mail(&mut self, path: &[u8], size: Option<u64>, requiretls: bool, smtputf8: bool) -> Option<Exit> {
        if !self.helo {
            return self.bad_command("503 5.5.1 Send EHLO or HELO first\r\n").await;
        }
        if self.txn.is_some() {
            return self.bad_command("503 5.5.1 Nested MAIL command\r\n").await;
        }
        if self.gate.required && !self.authenticated {
            return self.bad_command("530 5.7.0 Authentication required\r\n").await;
        }
        if requiretls && !self.ctx.cfg.requiretls {
            // Not an extension of this listener (RFC 5321 §4.1.1.11: 555 for a parameter not
            // recognised or not implemented).
            return self.bad_command("555 5.5.4 MAIL parameter REQUIRETLS not implemented\r\n").await;
        }
        if requiretls && !self.tls {
            // Not advertised in clear (RFC 8689 §2); 530 as for commands that need STARTTLS
            // first (RFC 3207 §4), 5.7.10 Encryption Needed (RFC 5248's registry).
            return self.bad_command("530 5.7.10 REQUIRETLS requires TLS: issue STARTTLS first\r\n").await;
        }
        if smtputf8 && !self.ctx.cfg.smtputf8 {
            return self.bad_command("555 5.5.4 MAIL parameter SMTPUTF8 not implemented\r\n").await;
        }
        let from = match mailbox(path, true, smtputf8) {
            Ok(from) => from,
            Err(BadPath::Syntax(e)) => {
                return self.bad_command(&format!("501 5.1.7 Bad sender address syntax: {}\r\n", one_line(&e))).await
            }
            Err(BadPath::NeedsSmtputf8) => return self.bad_command(NEEDS_SMTPUTF8).await,
        };
        if size.is_some_and(|n| n > self.ctx.cfg.max_message_size) {
            self.reply("552 5.3.4 Message size exceeds fixed limit\r\n").await;
            return None;
        }
        let drop = self.roll(self.ctx.cfg.faults.drop_rate);
        self.txn = Some(Txn { from, rcpts: Vec::new(), drop, requiretls, smtputf8, bdat: None, size });
        self.reply("250 2.1.0 Ok\r\n").await;
        None
    }

    /// AUTH PLAIN (RFC 4954, RFC 4616), with an initial response or after a `334`.
    async fn auth(&mut self, mechanism: &[u8], initial: Option<&[u8]>) -> Option<Exit> {
        let auth = self.ctx.cfg.auth.clone()?;
        if !self.helo {
            return self.bad_command("503 5.5.1 Send EHLO first\r\n").await;
        }
        if self.authenticated {
            return self.bad_command("503 5.5.1 Already authenticated\r\n").await;
        }
        if self.txn.is_some() {
            return self.bad_command("503 5.5.1 AUTH not allowed during a mail transaction\r\n").await;
        }
        if !self.tls && auth.require_tls {
            return self.bad_command("538 5.7.11 Encryption required for requested authentication mechanism\r\n").await;
        }
        if !mechanism.eq_ignore_ascii_case(b"PLAIN") {
            return self.bad_command("504 5.5.4 Unrecognized authentication type\r\n").await;
        }
        let response = match initial {
            Some(r) => r.to_vec(),
            None => {
                self.reply("334 \r\n").await;
                match self.auth_response().await {
                    Ok(Some(r)) if r == b"*" => {
                        self.reply("501 5.7.0 Authentication cancelled\r\n").await;
                        return None;
                    }
                    Ok(Some(r)) => r,
                    Ok(None) => return None,
                    Err(exit) => return Some(exit),
                }
            }
        };
        let creds = match crate::auth::decode_plain(&response) {
            Ok(c) => c,
            Err(crate::auth::PlainError::Base64) => {
                return self.bad_command("501 5.5.2 Cannot decode response\r\n").await;
            }
            Err(crate::auth::PlainError::Malformed) => {
                return self.bad_command("501 5.5.2 Malformed PLAIN response\r\n").await;
            }
        };
        if self.gate.peer.is_some_and(|ip| auth.by_ip.blocked(ip, std::time::Instant::now())) {
            // This address has failed too often lately: no password check at all.
            return self.auth_refused(&auth, "Too many failed authentications from your address").await;
        }
        let ok = match creds.user() {
            Some(user) => auth.users.check(user.to_string(), creds.password).await,
            None => Some(false),
        };
        let Some(ok) = ok else {
            // Too many checks under way (a flood): not a wrong password, but it counts.
            return self.auth_refused(&auth, "Temporary authentication failure").await;
        };
        if ok {
            self.authenticated = true;
            self.gate.auth_deadline = None;
            inc(&self.ctx.stats.auth_ok);
            self.bad = 0;
            self.reply("235 2.7.0 Authentication successful\r\n").await;
            return None;
        }
        self.gate.failures += 1;
        inc(&self.ctx.stats.auth_failed);
        if let Some(ip) = self.gate.peer {
            auth.by_ip.record(ip, std::time::Instant::now());
        }
        // Only this session waits: other sessions and the runtime carry on.
        tokio::time::sleep(auth.failure_delay).await;
        if self.gate.failures >= auth.max_failures {
            let host = &self.ctx.cfg.hostname;
            let text = format!("421 4.7.0 {host} Too many failed authentication attempts, closing connection\r\n");
            self.reply(&text).await;
            return Some(Exit::Protocol);
        }
        self.reply("535 5.7.8 Authentication credentials invalid\r\n").await;
        None
    }

    /// AUTH not checked (`why`): 454 4.7.0, counted as a failure of this connection, and its
    /// last one closes it with 421.
    async fn auth_refused(&mut self, auth: &super::Auth, why: &str) -> Option<Exit> {
        self.gate.failures += 1;
        inc(&self.ctx.stats.auth_failed);
        if self.gate.failures >= auth.max_failures {
            self.reply(&format!("421 4.7.0 {why}, closing connection\r\n")).await;
            return Some(Exit::Protocol);
        }
        self.reply(&format!("454 4.7.0 {why}, try again later\r\n")).await;
        None
    }

    /// The client's line after a `334`. `Ok(None)`: it was refused (reply queued).
    async fn auth_response(&mut self) -> Result<Option<Vec<u8>>, Exit> {
        loop {
            match self.take_line() {
                Line::Command(start, end) => return Ok(Some(self.rbuf[start..end].to_vec())),
                Line::TooLong => {
                    return match self.bad_command("500 5.5.6 Authentication exchange line is too long\r\n").await {
                        Some(exit) => Err(exit),
                        None => Ok(None),
                    };
                }
                Line::Incomplete => self.fill(true).await?,
            }
        }
    }

    async fn rcpt(&mut self, path: &[u8]) -> Option<Exit> {
        if self.txn.is_none() {
            return self.bad_command("503 5.5.1 Need MAIL command\r\n").await;
        }
        let smtputf8 = self.txn.as_ref().is_some_and(|t| t.smtputf8);
        let path = match mailbox(path, false, smtputf8) {
            Ok(path) => path,
            Err(BadPath::Syntax(e)) => {
                return self.bad_command(&format!("501 5.1.3 Bad recipient address syntax: {}\r\n", one_line(&e))).await
            }
            Err(BadPath::NeedsSmtputf8) => return self.bad_command(NEEDS_SMTPUTF8).await,
        };
        let n = self.txn.as_ref().map_or(0, |t| t.rcpts.len());
        if n >= self.ctx.cfg.max_rcpts {
            self.reply("452 4.5.3 Too many recipients\r\n").await;
            return None;
        }
        let faults = self.ctx.cfg.faults;
        if self.roll(faults.temp_fail_rate) {
            inc(&self.ctx.stats.fault_temp);
            self.reply("451 4.3.0 Temporary failure (injected by mxpipe sink)\r\n").await;
        } else if self.roll(faults.rate_limit_rate) {
            inc(&self.ctx.stats.fault_rate_limit);
            self.reply("451 4.7.28 Our system has detected an unusual rate of mail; try again later (injected by mxpipe sink)\r\n").await;
        } else if self.roll(faults.perm_fail_rate) {
            inc(&self.ctx.stats.fault_perm);
            self.reply("550 5.1.1 Mailbox unavailable (injected by mxpipe sink)\r\n").await;
        } else {
            if let Some(t) = &mut self.txn {
                t.rcpts.push(path);
            }
            self.reply("250 2.1.5 Ok\r\n").await;
        }
        None
    }

    async fn data(&mut self) -> Option<Exit> {
        match &self.txn {
            None => return self.bad_command("503 5.5.1 Need MAIL command\r\n").await,
            Some(t) if t.bdat.is_some() => return self.bad_command("503 5.5.1 DATA not allowed after BDAT\r\n").await,
            Some(t) if t.rcpts.is_empty() => return self.bad_command("554 5.5.1 No valid recipients\r\n").await,
            Some(_) => {}
        }
        self.reply("354 End data with <CR><LF>.<CR><LF>\r\n").await;
        let body = match self.receive_data().await {
            Ok(b) => b,
            Err(exit) => return Some(exit),
        };
        let txn = self.txn.take()?;
        self.complete(txn, body).await
    }

    /// Read a dot-terminated body, unstuffing dots, without holding more than one partial
    /// line unless the body is to be stored.
    ///
    /// Only <CR><LF>.<CR><LF> ends the data (RFC 5321 §2.3.8, §4.1.1.4). Other lines ending in
    /// a bare LF are taken as they are (the engine sends every line ending as CRLF), but a dot
    /// line with a bare LF before or after it is refused and the connection closed: it is an
    /// LF-only client's terminator, which would otherwise leave it waiting until the idle
    /// timeout, or SMTP smuggling, where what follows must not be read as commands.
    async fn receive_data(&mut self) -> Result<Body, Exit> {
        let max = self.ctx.cfg.max_message_size;
        let declared = self.txn.as_ref().and_then(|t| t.size);
        let mut body = Body::new(self.keeps_content(), declared, max);
        let mut at_line_start = true;
        // The previous line ended in CRLF (the DATA command's line counts as one).
        let mut after_crlf = true;
        // The part of a long line already taken ended in CR (its LF may come next).
        let mut taken_cr = false;
        loop {
            let buf = &self.rbuf[self.rpos..];
            match memchr::memchr(b'\n', buf) {
                Some(i) => {
                    let line = &buf[..=i];
                    let crlf = if i > 0 { buf[i - 1] == b'\r' } else { taken_cr };
                    if at_line_start && (line == b".\r\n" || line == b".\n") {
                        if after_crlf && crlf {
                            self.rpos += i + 1;
                            return Ok(body);
                        }
                        self.rpos = self.rbuf.len();
                        inc(&self.ctx.stats.bad_commands);
                        self.reply("554 5.5.2 Bare <LF> next to the final dot: end data with <CR><LF>.<CR><LF>; closing connection\r\n")
                            .await;
                        return Err(Exit::Protocol);
                    }
                    let payload = if at_line_start && line[0] == b'.' { &line[1..] } else { line };
                    body.add(payload, max);
                    self.rpos += i + 1;
                    at_line_start = true;
                    after_crlf = crlf;
                    taken_cr = false;
                }
                None if buf.len() >= PARTIAL_LINE_FLUSH => {
                    // A very long line: take what we have so the buffer stays bounded.
                    let payload = if at_line_start && buf[0] == b'.' { &buf[1..] } else { buf };
                    body.add(payload, max);
                    taken_cr = buf.last() == Some(&b'\r');
                    self.rpos = self.rbuf.len();
                    at_line_start = false;
                }
                None => self.fill(false).await?,
            }
        }
    }

    async fn bdat(&mut self, size: u64, last: bool) -> Option<Exit> {
        let usable = self.txn.as_ref().is_some_and(|t| !t.rcpts.is_empty());
        let max = self.ctx.cfg.max_message_size;
        let keep = self.keeps_content();
        let mut body = match self.txn.as_mut().and_then(|t| t.bdat.take()) {
            Some(b) => b,
            None => Body::new(keep && usable, self.txn.as_ref().and_then(|t| t.size), max),
        };
        let mut remaining = size;
        while remaining > 0 {
            if self.rpos == self.rbuf.len() {
                if let Err(exit) = self.fill(false).await {
                    return Some(exit);
                }
            }
            let avail = (self.rbuf.len() - self.rpos) as u64;
            let take = avail.min(remaining) as usize;
            if usable {
                body.add(&self.rbuf[self.rpos..self.rpos + take], max);
            }
            self.rpos += take;
            remaining -= take as u64;
        }
        if !usable {
            let text = if self.txn.is_none() { "503 5.5.1 Need MAIL command\r\n" } else { "554 5.5.1 No valid recipients\r\n" };
            return self.bad_command(text).await;
        }
        if !last {
            if let Some(t) = &mut self.txn {
                t.bdat = Some(body);
            }
            self.reply(&format!("250 2.0.0 {size} octets received\r\n")).await;
            return None;
        }
        let txn = self.txn.take()?;
        self.complete(txn, body).await
    }

    /// The end of a message: drop (fault), refuse (size, storage), or accept and count.
    async fn complete(&mut self, txn: Txn, body: Body) -> Option<Exit> {
        if txn.drop {
            inc(&self.ctx.stats.fault_drop);
            return Some(Exit::Dropped);
        }
        if body.too_big {
            self.reply("552 5.3.4 Message size exceeds fixed limit\r\n").await;
            return None;
        }
        if body.nul {
            self.reply("554 5.6.0 Message contains NUL characters\r\n").await;
            return None;
        }
        if let Some(acceptor) = self.ctx.cfg.acceptor.clone() {
            let bytes = body.bytes;
            let nrcpts = txn.rcpts.len() as u64;
            let content = body.content.unwrap_or_default();
            let params = super::MailParams {
                requiretls: txn.requiretls,
                smtputf8: txn.smtputf8,
                peer: self.gate.client,
                helo: self.helo_name.clone(),
                tls: self.tls,
            };
            return match acceptor.0.accept_with(txn.from, txn.rcpts, content, params).await {
                Ok(id) => {
                    let stats = &self.ctx.stats;
                    inc(&stats.messages);
                    stats.peer_message(self.gate.client, self.helo_name.as_deref());
                    if txn.requiretls {
                        inc(&stats.requiretls_messages);
                    }
                    if txn.smtputf8 {
                        inc(&stats.smtputf8_messages);
                    }
                    stats.recipients.fetch_add(nrcpts, Ordering::Relaxed);
                    stats.bytes.fetch_add(bytes, Ordering::Relaxed);
                    self.reply(&format!("250 2.0.0 Ok: queued as {}\r\n", one_line(&id))).await;
                    None
                }
                Err(refused) => {
                    inc(&self.ctx.stats.store_errors);
                    self.reply(&format!("{} {}\r\n", refused.code, one_line(&refused.text))).await;
                    None
                }
            };
        }
        // No acceptor: counted and discarded (a capacity sink).
        let id = MESSAGE_SEQ.fetch_add(1, Ordering::Relaxed);
        let stats = &self.ctx.stats;
        inc(&stats.messages);
        stats.peer_message(self.gate.client, self.helo_name.as_deref());
        if txn.requiretls {
            inc(&stats.requiretls_messages);
        }
        if txn.smtputf8 {
            inc(&stats.smtputf8_messages);
        }
        stats.recipients.fetch_add(txn.rcpts.len() as u64, Ordering::Relaxed);
        stats.bytes.fetch_add(body.bytes, Ordering::Relaxed);
        self.reply(&format!("250 2.0.0 Ok: queued as {id:X}\r\n")).await;
        None
    }

    /// Message content is kept in memory only when something will read it.
    fn keeps_content(&self) -> bool {
        self.ctx.cfg.acceptor.is_some()
    }

    fn roll(&mut self, p: f64) -> bool {
        let aimed_here = self.ctx.cfg.faults.only_from.is_none_or(|ip| self.gate.client == Some(ip));
        p > 0.0 && aimed_here && self.rng.f64() < p
    }
}

/// RFC 6531 §3.4: a UTF-8 address in a transaction opened without `SMTPUTF8`.
const NEEDS_SMTPUTF8: &str = "553 5.6.7 The address is not ASCII: give MAIL FROM:<..> SMTPUTF8 to send to or from it\r\n";

/// Why a MAIL or RCPT path was refused.
#[derive(Debug, PartialEq, Eq)]
enum BadPath {
    /// Not an address (501), with [`crate::address`]'s reason.
    Syntax(String),
    /// A UTF-8 local part without `MAIL FROM:<..> SMTPUTF8` (553 5.6.7).
    NeedsSmtputf8,
}

/// The address of a MAIL or RCPT path, checked and normalised by [`crate::address`] (the
/// same verdict as every other entry point), as the bytes to keep: its normal form (an ASCII
/// local part with the domain in A-labels, a UTF-8 one with U-labels). A sender's empty path
/// is the null sender. Bytes that are not UTF-8 are refused like any other bad address; a
/// UTF-8 local part needs `smtputf8`, the transaction's `SMTPUTF8` parameter.
fn mailbox(path: &[u8], sender: bool, smtputf8: bool) -> Result<Vec<u8>, BadPath> {
    let text = std::str::from_utf8(path).map_err(|_| BadPath::Syntax("not UTF-8".to_string()))?;
    let parsed = if sender {
        crate::address::ReversePath::parse(text).map(|r| r.mailbox().cloned())
    } else {
        crate::address::Mailbox::parse(text).map(Some)
    };
    match parsed {
        Err(e) => Err(BadPath::Syntax(e.to_string())),
        Ok(Some(m)) if m.needs_smtputf8() && !smtputf8 => Err(BadPath::NeedsSmtputf8),
        Ok(m) => Ok(m.map(|m| m.to_string().into_bytes()).unwrap_or_default()),
    }
}

fn one_line(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_reserves_what_was_declared_within_bounds() {
        let room = |b: Body| b.content.map_or(0, |c| c.capacity());
        assert!(room(Body::new(true, Some(100_000), 50 << 20)) >= 100_000, "room for the declared size");
        assert!(room(Body::new(true, None, 50 << 20)) >= BODY_START);
        // A client declaring the limit, or more, gets no more than BODY_START_MAX up front.
        assert!(room(Body::new(true, Some(u64::MAX), u64::MAX)) <= 2 * BODY_START_MAX as usize);
        assert!(room(Body::new(true, Some(40 << 20), 50 << 20)) <= 2 * BODY_START_MAX as usize);
        assert!(room(Body::new(true, Some(5_000), 1_000)) <= 2_000, "never more than the size limit");
        assert_eq!(room(Body::new(false, Some(5_000), 50 << 20)), 0, "a body not kept holds nothing");
    }

    #[test]
    fn mailboxes() {
        for (ok, normal) in [
            (&b"a@b.test"[..], &b"a@b.test"[..]),
            (b"first.last+tag@Example.TEST", b"first.last+tag@example.test"),
            (b"\"q\"@x.test", b"\"q\"@x.test"),
            ("a@BÜCHER.example".as_bytes(), b"a@xn--bcher-kva.example"),
        ] {
            assert_eq!(mailbox(ok, false, false).as_deref(), Ok(normal), "{ok:?}");
        }
        assert_eq!(mailbox(b"", true, false).as_deref(), Ok(&b""[..]), "the null sender");
        for bad in [&b""[..], b"nodomain", b"@x", b"a@", b"@", b"\xff@x", b"a@[192.0.2.1]"] {
            assert!(matches!(mailbox(bad, false, true), Err(BadPath::Syntax(_))), "{bad:?}");
        }
        // A UTF-8 local part only with SMTPUTF8, kept with U-labels.
        let utf8 = "jörg@BÜCHER.example".as_bytes();
        assert_eq!(mailbox(utf8, false, false), Err(BadPath::NeedsSmtputf8));
        assert_eq!(mailbox(utf8, true, false), Err(BadPath::NeedsSmtputf8));
        assert_eq!(mailbox(utf8, false, true).as_deref(), Ok("jörg@bücher.example".as_bytes()));
        assert_eq!(mailbox(b"\xc3\xbc@x", true, true).as_deref(), Ok("ü@x".as_bytes()));
    }
}
