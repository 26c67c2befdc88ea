//! The SMTP client session as a sans-I/O state machine (RFC 5321, with RFC 2920 PIPELINING,
//! RFC 3030 CHUNKING, RFC 1870 SIZE, RFC 6152 8BITMIME, RFC 3207 STARTTLS, RFC 8689
//! REQUIRETLS and RFC 6531 SMTPUTF8).
//!
//! SMTPUTF8: a message needs it when its envelope has an address with a UTF-8 local part
//! ([`Mailbox::needs_smtputf8`]), the sender's or any recipient's. To a server that advertises
//! it, `MAIL FROM:<..> SMTPUTF8` and the addresses in their normal form. To one that does not,
//! an address with an ASCII local part goes in its all-ASCII form (domain in A-labels); a
//! recipient with a UTF-8 local part is bounced locally with 5.6.7, and a sender with one
//! bounces every recipient of the message with 5.6.7 (there is no ASCII form to give). UTF-8
//! only in the header section (RFC 6532) does not make a message need SMTPUTF8: it is sent as
//! it is, like other 8-bit content (the MAIL parameter is about the envelope, and a refusal
//! would bounce mail most servers take).
//!
//! No sockets, no async, no clock: the driver feeds the bytes it read to
//! [`ClientSession::receive`], drains [`ClientSession::poll_event`] and acts on each event
//! (write bytes, upgrade to TLS, hand the next message, close). The driver also applies
//! [`ClientSession::timeout`] to each wait. Keeping the protocol pure means every exchange can
//! be tested with byte fixtures and fuzzed, like rustls does for TLS.
//!
//! The module owns the protocol only: it must not do I/O, read time, or decide routing or
//! retry policy. A connection-level failure hands every message that was not finished back
//! through [`ClientSession::unfinished`] so the caller can retry it elsewhere; nothing is lost.
//!
//! States are an enum whose variants carry what that state needs (the transaction exists only
//! inside `State::Txn`, the "RSET owed" flag only inside `State::Ready`), so a reply can
//! only be applied to the state that is waiting for it.

mod body;
#[cfg(test)]
mod tests;

pub use body::{encode_data, normalise_into, normalised_len};

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use crate::address::{Mailbox, ReversePath};
use crate::reply::{parse_reply, Capabilities, Reply, MAX_REPLY_LINE, MAX_REPLY_LINES};

/// Waits from RFC 5321 §4.5.3.2, which the driver applies to each wait the session is in.
pub mod timeouts {
    use std::time::Duration;

    /// Waiting for the 220 banner.
    pub const GREETING: Duration = Duration::from_secs(5 * 60);
    /// Reply to MAIL.
    pub const MAIL: Duration = Duration::from_secs(5 * 60);
    /// Reply to RCPT.
    pub const RCPT: Duration = Duration::from_secs(5 * 60);
    /// The 354 reply to DATA.
    pub const DATA_INIT: Duration = Duration::from_secs(2 * 60);
    /// Each write of message data (for the driver's write timeout on a body `Send`).
    pub const DATA_BLOCK: Duration = Duration::from_secs(3 * 60);
    /// The final reply after the data (the `.` of DATA, or BDAT LAST).
    pub const DATA_END: Duration = Duration::from_secs(10 * 60);
    /// EHLO, HELO, STARTTLS, RSET, QUIT (RFC 5321 gives no figure; 5 minutes like MAIL).
    pub const COMMAND: Duration = Duration::from_secs(5 * 60);
}

/// Longest envelope path sent, brackets included (RFC 5321 §4.5.3.1.3); every [`Mailbox`]
/// fits ([`crate::address::MAX_MAILBOX`] and the two brackets).
pub const MAX_PATH: usize = 256;
/// Reply bytes held while waiting for the end of a reply: a complete reply is at most
/// this long, so more means the server is not speaking SMTP.
const MAX_PENDING_INPUT: usize = MAX_REPLY_LINES * (MAX_REPLY_LINE + 2);
/// Send buffers larger than this are not kept for reuse, so one huge message does not pin
/// its buffer for the life of the connection.
const MAX_RECYCLED: usize = 1 << 20;

/// How one connection is configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionConfig {
    /// The name sent in EHLO/HELO.
    pub ehlo_name: String,
    /// How TLS is started on this connection.
    pub tls: TlsMode,
    /// Use CHUNKING/BDAT when the server offers it (no dot-stuffing, no scan for the end).
    pub prefer_bdat: bool,
    /// Use PIPELINING when the server offers it (one round trip per message).
    pub pipelining: bool,
}

impl SessionConfig {
    /// Opportunistic STARTTLS, BDAT and pipelining when offered: what an MTA does by default.
    pub fn new(ehlo_name: impl Into<String>) -> Self {
        SessionConfig { ehlo_name: ehlo_name.into(), tls: TlsMode::Starttls { required: false }, prefer_bdat: true, pipelining: true }
    }
}

/// How TLS is started on a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// Never STARTTLS.
    None,
    /// The driver has already done TLS before the banner (port 465 style).
    Implicit,
    /// STARTTLS when offered. With `required`, a server that does not offer it, or refuses it
    /// with 4xx/5xx, fails the connection with [`SessionError::StartTlsUnavailable`] (a policy
    /// failure: the messages come back unsent); otherwise the session goes on in clear.
    Starttls {
        /// Fail the connection instead of continuing in clear.
        required: bool,
    },
}

/// One message to deliver on this connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The caller's id, echoed in [`MessageOutcome`].
    pub id: u64,
    /// The envelope sender without brackets; "" is the null sender (bounces).
    pub from: String,
    /// The envelope recipients without brackets.
    pub rcpts: Vec<String>,
    /// The RFC 5322 message, with any line endings (they are sent as CRLF).
    pub data: Arc<[u8]>,
    /// Send `MAIL FROM:<..> REQUIRETLS` (RFC 8689 §4.2.1). The session never sends such a
    /// message without it: over a connection in clear, or to a server that did not advertise
    /// REQUIRETLS, every recipient is bounced locally with 5.7.30 instead. Whether this next
    /// hop was acceptable at all (verified TLS, an MX found securely) is the caller's decision.
    pub requiretls: bool,
}

/// What became of one recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RcptStatus {
    /// The server took responsibility for it (2xx after the data).
    Delivered,
    /// A temporary failure (4xx): try again later.
    Deferred,
    /// A permanent failure (5xx, or refused locally): do not retry; bounce.
    Bounced,
}

/// The outcome for one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RcptOutcome {
    /// The recipient address as given in [`Message::rcpts`].
    pub rcpt: String,
    /// Delivered, deferred or bounced.
    pub status: RcptStatus,
    /// The deciding reply on one line (`250 2.0.0 Ok: queued as X`), or, when the session
    /// decided without asking the server, a reason starting `local:`.
    pub reply: String,
    /// The RFC 3463 code of that reply (`5.1.1`), when there is one.
    pub enhanced: Option<String>,
}

/// The outcome of one message: one entry per input recipient, in input order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageOutcome {
    /// The caller's id from [`Message::id`].
    pub id: u64,
    /// One outcome per recipient of the message, in its order.
    pub rcpts: Vec<RcptOutcome>,
}

/// What the driver must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Write these bytes: whole commands; a pipelined group is one `Send`. Hand the buffer
    /// back with [`ClientSession::recycle`] once written, to save an allocation per message.
    Send(Vec<u8>),
    /// The server said 220 to STARTTLS: upgrade the stream now, then call
    /// [`ClientSession::tls_ready`].
    StartTls,
    /// Idle: call [`ClientSession::send_message`] or [`ClientSession::quit`]. A `Ready`
    /// followed in the same batch by `Failed` or `Closed` (a server that answers and then says
    /// 421 in one read) is stale: `send_message` then gives the message back.
    Ready,
    /// A message finished: every recipient has a status.
    Done(MessageOutcome),
    /// The conversation is over (QUIT answered, EOF after QUIT, or 221 while idle): close.
    Closed,
    /// A connection-level failure: close the connection; [`ClientSession::unfinished`] has
    /// the messages to retry elsewhere.
    Failed(SessionError),
}

/// Why a connection failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// Malformed reply bytes, or a reply code that makes no sense where it came.
    #[error("SMTP protocol error: {0}")]
    Protocol(String),
    /// The banner was not 220.
    #[error("server refused the connection in its greeting: {0}")]
    Greeting(Reply),
    /// Both EHLO and HELO were refused (or EHLO with 4xx).
    #[error("server refused EHLO/HELO: {0}")]
    Ehlo(Reply),
    /// STARTTLS is required but the server did not offer it or refused it.
    #[error("STARTTLS required but unavailable: {0}")]
    StartTlsUnavailable(String),
    /// The server said 421: it is closing the connection.
    #[error("server is closing the connection: {0}")]
    ServiceClosing(Reply),
    /// The server closed the connection while a reply was due.
    #[error("connection closed by the server while {0}")]
    UnexpectedEof(&'static str),
}

/// Counters for one session.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// SMTP commands sent (the body and its `.` line are not commands).
    pub commands: u64,
    /// Writes after which the session waits for replies: one per `Send`.
    pub round_trips: u64,
    /// Messages finished (`Done`), including those refused locally.
    pub messages: u64,
    /// Bytes handed to the driver to write.
    pub bytes_sent: u64,
    /// Bytes received from the server.
    pub bytes_received: u64,
}

/// Per-recipient progress within a transaction.
#[derive(Debug)]
enum Slot {
    /// Sent (or to be sent), no reply yet.
    Open,
    /// 2xx to RCPT: waits for the reply to the data.
    Accepted,
    /// Decided.
    Settled(RcptOutcome),
}

/// Which reply a transaction waits for next. Replies come in command order, pipelined or
/// not, so one position is enough.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Rset,
    Mail,
    /// The reply to the k-th RCPT sent (`Txn::sent[k]`).
    Rcpt(usize),
    /// The 354 (or refusal) for DATA.
    Data,
    /// The final reply after the body and `.`.
    DataEnd,
    /// A 354 came although no recipient was accepted: a lone `.` was sent; its reply is
    /// read and ignored.
    DotOnly,
    /// The reply to `BDAT n LAST` and its chunk.
    BdatLast,
}

/// One mail transaction in progress.
#[derive(Debug)]
struct Txn {
    msg: Message,
    /// The sender as sent ([`crate::address::ReversePath`]'s normal form).
    from_path: String,
    /// Per recipient, the address as sent (its normal form); empty for one refused locally.
    paths: Vec<String>,
    slots: Vec<Slot>,
    /// Indices into `slots` of the recipients put on the wire, in order.
    sent: Vec<usize>,
    phase: Phase,
    pipelined: bool,
    bdat: bool,
    /// Send `MAIL FROM:<..> SMTPUTF8`: an envelope address needs it and the server offers it.
    smtputf8: bool,
    mail_ok: bool,
    accepted: usize,
    /// The body's length on the wire without dot-stuffing ([`normalised_len`]): counted once,
    /// for `SIZE=`, the `BDAT` chunk size and the size check.
    size: usize,
}

impl Txn {
    /// The data's final reply is for accepted recipients only when there are some.
    fn counts(&self) -> bool {
        self.mail_ok && self.accepted > 0
    }

    /// Settle every recipient still waiting (open or accepted) with `reply`.
    fn settle_waiting(&mut self, reply: &Reply, only_accepted: bool) {
        for (i, slot) in self.slots.iter_mut().enumerate() {
            let waiting = match slot {
                Slot::Accepted => true,
                Slot::Open => !only_accepted,
                Slot::Settled(_) => false,
            };
            if waiting {
                *slot = Slot::Settled(from_reply(&self.msg.rcpts[i], reply));
            }
        }
    }
}

/// The protocol state. Each variant carries exactly what that state needs.
#[derive(Debug)]
enum State {
    /// Connected, waiting for the 220 banner.
    Greeting,
    /// EHLO sent.
    Ehlo,
    /// EHLO refused with 5xx; HELO sent.
    Helo,
    /// STARTTLS sent, waiting for 220.
    StartTls,
    /// 220 to STARTTLS received: the driver is doing the handshake.
    TlsHandshake,
    /// Idle. `rset`: the last transaction was left open at the server, so the next one starts
    /// with RSET.
    Ready { rset: bool },
    /// A mail transaction.
    Txn(Box<Txn>),
    /// QUIT sent.
    Quit,
    /// Over; the driver closes.
    Closed,
    /// Failed; the driver closes.
    Failed,
}

impl State {
    fn name(&self) -> &'static str {
        match self {
            State::Greeting => "waiting for the greeting",
            State::Ehlo => "waiting for the EHLO reply",
            State::Helo => "waiting for the HELO reply",
            State::StartTls => "waiting for the STARTTLS reply",
            State::TlsHandshake => "doing the TLS handshake",
            State::Ready { .. } => "idle",
            State::Txn(t) => match t.phase {
                Phase::Rset => "waiting for the RSET reply",
                Phase::Mail => "waiting for the MAIL reply",
                Phase::Rcpt(_) => "waiting for a RCPT reply",
                Phase::Data => "waiting for the DATA reply",
                Phase::DataEnd | Phase::DotOnly => "waiting for the end-of-data reply",
                Phase::BdatLast => "waiting for the BDAT reply",
            },
            State::Quit => "waiting for the QUIT reply",
            State::Closed => "closed",
            State::Failed => "failed",
        }
    }

    /// Before the first Ready: a message handed now waits in `ClientSession::queued`.
    fn is_opening(&self) -> bool {
        matches!(self, State::Greeting | State::Ehlo | State::Helo | State::StartTls | State::TlsHandshake)
    }
}

/// The client side of one SMTP connection, as a pure state machine.
#[derive(Debug)]
pub struct ClientSession {
    cfg: SessionConfig,
    state: State,
    tls_active: bool,
    caps: Option<Capabilities>,
    /// Reply bytes not yet parsed.
    rbuf: Vec<u8>,
    events: VecDeque<Event>,
    /// A message handed before the session was ready; sent as soon as it is.
    queued: Option<Message>,
    quit_requested: bool,
    unfinished: Vec<Message>,
    /// A written `Send` buffer handed back for reuse.
    spare: Option<Vec<u8>>,
    stats: SessionStats,
}

impl ClientSession {
    /// A session on a connection just opened (with TLS already up for [`TlsMode::Implicit`]);
    /// it waits for the banner.
    pub fn new(cfg: SessionConfig) -> Self {
        ClientSession {
            tls_active: cfg.tls == TlsMode::Implicit,
            cfg,
            state: State::Greeting,
            caps: None,
            rbuf: Vec::with_capacity(512),
            events: VecDeque::with_capacity(4),
            queued: None,
            quit_requested: false,
            unfinished: Vec::new(),
            spare: None,
            stats: SessionStats::default(),
        }
    }

    /// Bytes read from the server. Any bytes are safe: malformed input fails the session.
    pub fn receive(&mut self, bytes: &[u8]) {
        if bytes.is_empty() || matches!(self.state, State::Closed | State::Failed) {
            return;
        }
        self.stats.bytes_received += bytes.len() as u64;
        if matches!(self.state, State::TlsHandshake) {
            // Plaintext after the 220 would be read as if it came over TLS (the STARTTLS
            // injection of CVE-2011-0411); the driver must not feed bytes until tls_ready().
            return self.fail(SessionError::Protocol("bytes received during the TLS handshake".into()), None);
        }
        self.rbuf.extend_from_slice(bytes);
        // A reply can only complete on a line end; skipping the parse otherwise keeps
        // byte-at-a-time input linear. Long partial lines are still parsed, to be refused.
        if memchr::memchr(b'\n', bytes).is_none() && self.rbuf.len() <= MAX_REPLY_LINE {
            return;
        }
        let mut pos = 0;
        loop {
            match parse_reply(&self.rbuf[pos..]) {
                Ok(Some((reply, n))) => {
                    pos += n;
                    if matches!(self.state, State::StartTls) && reply.code == 220 && pos < self.rbuf.len() {
                        return self.fail(SessionError::Protocol("data pipelined after the 220 to STARTTLS".into()), None);
                    }
                    self.on_reply(reply);
                    if matches!(self.state, State::Closed | State::Failed | State::TlsHandshake) {
                        self.rbuf.clear();
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => return self.fail(SessionError::Protocol(e.to_string()), None),
            }
        }
        self.rbuf.drain(..pos);
        if self.rbuf.len() > MAX_PENDING_INPUT {
            self.fail(SessionError::Protocol("reply too long".into()), None);
        }
    }

    /// The server closed the connection (read returned 0).
    pub fn receive_eof(&mut self) {
        match self.state {
            State::Closed | State::Failed => {}
            State::Quit => self.close(),
            _ => {
                let doing = self.state.name();
                self.fail(SessionError::UnexpectedEof(doing), None)
            }
        }
    }

    /// The next thing to do; call until `None` after every call into the session.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Deliver `msg` on this connection. Accepted when idle, or before the first `Ready`
    /// (it is then sent as soon as the greeting, EHLO and STARTTLS are done, without a
    /// `Ready` in between). Otherwise the message is given back.
    pub fn send_message(&mut self, msg: Message) -> Result<(), Message> {
        if self.quit_requested {
            return Err(msg);
        }
        match self.state {
            State::Ready { rset } => {
                self.state = self.start(msg, rset);
                Ok(())
            }
            ref s if s.is_opening() && self.queued.is_none() => {
                self.queued = Some(msg);
                Ok(())
            }
            _ => Err(msg),
        }
    }

    /// End the session: QUIT now when idle, otherwise as soon as the session would be idle
    /// (a queued message not yet started is then returned by `unfinished`).
    pub fn quit(&mut self) {
        match self.state {
            State::Ready { .. } => self.state = self.send_quit(),
            State::Quit | State::Closed | State::Failed => {}
            _ => self.quit_requested = true,
        }
    }

    /// The driver finished the TLS handshake after [`Event::StartTls`]: the session forgets
    /// what it learnt in clear and says EHLO again (RFC 3207 §4.2). Ignored in other states.
    pub fn tls_ready(&mut self) {
        if matches!(self.state, State::TlsHandshake) {
            self.tls_active = true;
            self.caps = None;
            self.rbuf.clear();
            self.state = self.send_ehlo();
        }
    }

    /// How long to wait for the server in the current state (RFC 5321 §4.5.3.2); zero once
    /// closed or failed. While idle it is the command timeout; how long to keep an idle
    /// connection open is the driver's policy.
    pub fn timeout(&self) -> Duration {
        match &self.state {
            State::Greeting => timeouts::GREETING,
            State::Txn(t) => match t.phase {
                Phase::Rset => timeouts::COMMAND,
                Phase::Mail => timeouts::MAIL,
                Phase::Rcpt(_) => timeouts::RCPT,
                Phase::Data => timeouts::DATA_INIT,
                Phase::DataEnd | Phase::DotOnly | Phase::BdatLast => timeouts::DATA_END,
            },
            State::Closed | State::Failed => Duration::ZERO,
            _ => timeouts::COMMAND,
        }
    }

    /// What the server announced in its last EHLO (all off after a HELO fallback); `None`
    /// before EHLO has been answered, and again between STARTTLS and the new EHLO.
    pub fn capabilities(&self) -> Option<&Capabilities> {
        self.caps.as_ref()
    }

    /// Whether the server's last EHLO advertised REQUIRETLS (RFC 8689 §2). Read again from the
    /// EHLO after STARTTLS, so a keyword seen only in clear does not count; false before any
    /// EHLO reply and after a HELO fallback.
    pub fn server_requiretls(&self) -> bool {
        self.caps.as_ref().is_some_and(|c| c.requiretls)
    }

    /// Whether the stream is (now) encrypted: implicit TLS, or after `tls_ready()`.
    pub fn is_tls(&self) -> bool {
        self.tls_active
    }

    /// Messages handed to the session that did not reach `Done`, taken out. Non-empty only
    /// after `Failed` (or `Closed` with a message queued behind a quit).
    pub fn unfinished(&mut self) -> Vec<Message> {
        std::mem::take(&mut self.unfinished)
    }

    /// Counters so far.
    pub fn stats(&self) -> SessionStats {
        self.stats
    }

    /// Give back a written `Send` buffer so the next message's commands and body are built
    /// in it instead of a new allocation.
    pub fn recycle(&mut self, mut buf: Vec<u8>) {
        let bigger = match &self.spare {
            Some(s) => s.capacity() < buf.capacity(),
            None => true,
        };
        if bigger && buf.capacity() <= MAX_RECYCLED {
            buf.clear();
            self.spare = Some(buf);
        }
    }

    // ----- replies -----

    fn on_reply(&mut self, reply: Reply) {
        if reply.code == 421 && !matches!(self.state, State::Quit) {
            return self.fail(SessionError::ServiceClosing(reply), None);
        }
        let state = std::mem::replace(&mut self.state, State::Failed);
        self.state = match state {
            State::Greeting if reply.code == 220 => self.send_ehlo(),
            State::Greeting => self.failed(SessionError::Greeting(reply), None),
            State::Ehlo if reply.is_positive() => self.hello_done(Capabilities::from_ehlo(&reply)),
            State::Ehlo if reply.is_permanent() => {
                let mut out = self.take_buf();
                push_cmd(&mut out, &[b"HELO ", self.cfg.ehlo_name.as_bytes()]);
                self.send(out, 1);
                State::Helo
            }
            State::Helo if reply.is_positive() => self.hello_done(Capabilities::default()),
            State::Ehlo | State::Helo => self.failed(SessionError::Ehlo(reply), None),
            State::StartTls => self.starttls_reply(reply),
            State::Ready { .. } if reply.code == 221 => self.closed(),
            State::Txn(txn) => self.txn_reply(txn, reply),
            State::Quit => self.closed(),
            State::Closed | State::Failed => state,
            s @ (State::TlsHandshake | State::Ready { .. }) => {
                let msg = format!("unexpected reply while {}: {}", s.name(), reply.one_line());
                self.failed(SessionError::Protocol(msg), None)
            }
        };
    }

    /// EHLO or HELO answered: STARTTLS if the policy says so, else ready.
    fn hello_done(&mut self, caps: Capabilities) -> State {
        let offered = caps.starttls;
        self.caps = Some(caps);
        match self.cfg.tls {
            TlsMode::Starttls { required } if !self.tls_active => {
                if offered {
                    let mut out = self.take_buf();
                    out.extend_from_slice(b"STARTTLS\r\n");
                    self.send(out, 1);
                    State::StartTls
                } else if required {
                    let why = "the server did not offer STARTTLS".to_string();
                    self.failed(SessionError::StartTlsUnavailable(why), None)
                } else {
                    self.become_ready(false)
                }
            }
            _ => self.become_ready(false),
        }
    }

    fn starttls_reply(&mut self, reply: Reply) -> State {
        match reply.code {
            220 => {
                self.events.push_back(Event::StartTls);
                State::TlsHandshake
            }
            400..=599 => match self.cfg.tls {
                TlsMode::Starttls { required: true } => {
                    let why = format!("STARTTLS refused: {}", reply.one_line());
                    self.failed(SessionError::StartTlsUnavailable(why), None)
                }
                // Opportunistic: go on in clear with what the clear EHLO announced.
                _ => self.become_ready(false),
            },
            _ => {
                let msg = format!("unexpected reply to STARTTLS: {}", reply.one_line());
                self.failed(SessionError::Protocol(msg), None)
            }
        }
    }

    fn txn_reply(&mut self, mut txn: Box<Txn>, reply: Reply) -> State {
        let unexpected = |what: &str, r: &Reply| SessionError::Protocol(format!("unexpected reply to {what}: {}", r.one_line()));
        match txn.phase {
            Phase::Rset => {
                if !reply.is_positive() {
                    // The old transaction may still be open; MAIL would be refused as nested.
                    return self.failed(unexpected("RSET", &reply), Some(txn.msg));
                }
                txn.phase = Phase::Mail;
                if !txn.pipelined {
                    let mut out = self.take_buf();
                    self.push_mail(&mut out, &txn);
                    self.send(out, 1);
                }
                State::Txn(txn)
            }
            Phase::Mail => {
                if reply.is_positive() {
                    txn.mail_ok = true;
                } else if reply.is_transient() || reply.is_permanent() {
                    txn.settle_waiting(&reply, false);
                } else {
                    return self.failed(unexpected("MAIL", &reply), Some(txn.msg));
                }
                if !txn.pipelined && !txn.mail_ok {
                    return self.finish(*txn, true);
                }
                self.after_rcpt(txn, None)
            }
            Phase::Rcpt(k) => {
                let i = txn.sent[k];
                if matches!(txn.slots[i], Slot::Open) {
                    txn.slots[i] = if reply.is_positive() {
                        txn.accepted += 1;
                        Slot::Accepted
                    } else if reply.is_transient() || reply.is_permanent() {
                        Slot::Settled(from_reply(&txn.msg.rcpts[i], &reply))
                    } else {
                        return self.failed(unexpected("RCPT", &reply), Some(txn.msg));
                    };
                }
                self.after_rcpt(txn, Some(k))
            }
            Phase::Data => {
                if reply.code == 354 {
                    let mut out = self.take_buf();
                    if txn.counts() {
                        encode_data(&txn.msg.data, &mut out);
                        txn.phase = Phase::DataEnd;
                    } else {
                        // RFC 2920 §3.1: the server took DATA with nobody to deliver to; end
                        // the (empty) message and ignore what it says about it.
                        out.extend_from_slice(b".\r\n");
                        txn.phase = Phase::DotOnly;
                    }
                    self.send(out, 0);
                    return State::Txn(txn);
                }
                if !txn.counts() {
                    // The expected 503/554: recipients keep their RCPT (or MAIL) statuses.
                    return self.finish(*txn, true);
                }
                if !(reply.is_transient() || reply.is_permanent()) {
                    return self.failed(unexpected("DATA", &reply), Some(txn.msg));
                }
                txn.settle_waiting(&reply, true);
                self.finish(*txn, true)
            }
            Phase::DotOnly => self.finish(*txn, true),
            Phase::DataEnd | Phase::BdatLast => {
                if !txn.counts() {
                    // BDAT after a refused envelope: the chunk is consumed, the reply ignored.
                    return self.finish(*txn, true);
                }
                if !(reply.is_positive() || reply.is_transient() || reply.is_permanent()) {
                    return self.failed(unexpected("the end of data", &reply), Some(txn.msg));
                }
                txn.settle_waiting(&reply, true);
                self.finish(*txn, false)
            }
        }
    }

    /// After the MAIL reply (`done == None`) or the reply to RCPT number `done`: the next
    /// RCPT, or the data step. Without pipelining this is where the next command is sent.
    fn after_rcpt(&mut self, mut txn: Box<Txn>, done: Option<usize>) -> State {
        let next = done.map_or(0, |k| k + 1);
        if next < txn.sent.len() {
            txn.phase = Phase::Rcpt(next);
            if !txn.pipelined {
                let rcpt = &txn.paths[txn.sent[next]];
                let mut out = self.take_buf();
                push_cmd(&mut out, &[b"RCPT TO:<", rcpt.as_bytes(), b">"]);
                self.send(out, 1);
            }
            return State::Txn(txn);
        }
        if txn.pipelined {
            txn.phase = if txn.bdat { Phase::BdatLast } else { Phase::Data };
            return State::Txn(txn);
        }
        if !txn.counts() {
            return self.finish(*txn, true);
        }
        let mut out = self.take_buf();
        if txn.bdat {
            push_bdat(&mut out, &txn.msg.data, txn.size);
            txn.phase = Phase::BdatLast;
        } else {
            out.extend_from_slice(b"DATA\r\n");
            txn.phase = Phase::Data;
        }
        self.send(out, 1);
        State::Txn(txn)
    }

    // ----- transactions -----

    /// Begin a transaction for `msg`: refuse locally what cannot be sent, then send MAIL
    /// (with pipelining: the whole envelope and DATA/BDAT) in one write.
    fn start(&mut self, msg: Message, rset: bool) -> State {
        let caps = self.caps.clone().unwrap_or_default();
        // The one address check (the injection doors use it too); what it accepts cannot
        // change the command it is put in, and is sent in its normal form (an ASCII local part
        // with A-labels, a UTF-8 one with U-labels and only under SMTPUTF8).
        let rcpts: Vec<_> = msg.rcpts.iter().map(|r| Mailbox::parse(r)).collect();
        let from = ReversePath::parse(&msg.from);
        let utf8_from = from.as_ref().ok().and_then(ReversePath::mailbox).is_some_and(Mailbox::needs_smtputf8);
        let wants_utf8 = utf8_from || rcpts.iter().any(|r| r.as_ref().is_ok_and(Mailbox::needs_smtputf8));
        let smtputf8 = wants_utf8 && caps.smtputf8;
        let mut paths = Vec::with_capacity(msg.rcpts.len());
        let mut slots: Vec<Slot> = rcpts
            .into_iter()
            .zip(&msg.rcpts)
            .map(|(parsed, r)| match parsed {
                Ok(m) if m.needs_smtputf8() && !smtputf8 => {
                    paths.push(String::new());
                    Slot::Settled(local(r, "5.6.7", NO_SMTPUTF8_RCPT))
                }
                Ok(m) => {
                    paths.push(m.to_string());
                    Slot::Open
                }
                Err(e) => {
                    paths.push(String::new());
                    Slot::Settled(local(r, "5.1.3", &format!("invalid recipient address, not sent: {}", e.kind)))
                }
            })
            .collect();
        let size = normalised_len(&msg.data);
        let refuse = if let Err(e) = &from {
            Some(("5.1.7", format!("invalid sender address, not sent: {}", e.kind)))
        } else if utf8_from && !smtputf8 {
            Some(("5.6.7", NO_SMTPUTF8_SENDER.to_string()))
        } else if msg.requiretls && !self.tls_active {
            Some(("5.7.30", "REQUIRETLS message and the connection is not encrypted, not sent".to_string()))
        } else if msg.requiretls && !caps.requiretls {
            Some(("5.7.30", "next hop does not advertise REQUIRETLS, not sent".to_string()))
        } else if matches!(caps.size, Some(limit) if limit > 0 && size as u64 > limit) {
            let limit = caps.size.unwrap_or(0);
            Some(("5.3.4", format!("message size {size} exceeds the server's limit of {limit}, not sent")))
        } else {
            None
        };
        if let Some((code, why)) = refuse {
            for (i, s) in slots.iter_mut().enumerate() {
                if matches!(s, Slot::Open) {
                    *s = Slot::Settled(local(&msg.rcpts[i], code, &why));
                }
            }
        }
        let sent: Vec<usize> = (0..slots.len()).filter(|&i| matches!(slots[i], Slot::Open)).collect();
        let txn = Box::new(Txn {
            msg,
            from_path: from.map(|f| f.to_string()).unwrap_or_default(),
            paths,
            slots,
            sent,
            phase: if rset { Phase::Rset } else { Phase::Mail },
            pipelined: self.cfg.pipelining && caps.pipelining,
            bdat: self.cfg.prefer_bdat && caps.chunking,
            smtputf8,
            mail_ok: false,
            accepted: 0,
            size,
        });
        if txn.sent.is_empty() {
            // Nothing to put on the wire; an owed RSET stays owed.
            return self.finish(*txn, rset);
        }
        let mut out = self.take_buf();
        let mut commands = 1;
        if rset {
            out.extend_from_slice(b"RSET\r\n");
            if !txn.pipelined {
                self.send(out, 1);
                return State::Txn(txn);
            }
            commands += 1;
        }
        self.push_mail(&mut out, &txn);
        if txn.pipelined {
            for &i in &txn.sent {
                push_cmd(&mut out, &[b"RCPT TO:<", txn.paths[i].as_bytes(), b">"]);
            }
            if txn.bdat {
                push_bdat(&mut out, &txn.msg.data, txn.size);
            } else {
                out.extend_from_slice(b"DATA\r\n");
            }
            commands += txn.sent.len() as u64 + 1;
        }
        self.send(out, commands);
        State::Txn(txn)
    }

    fn push_mail(&self, out: &mut Vec<u8>, txn: &Txn) {
        let caps = self.caps.as_ref();
        out.extend_from_slice(b"MAIL FROM:<");
        out.extend_from_slice(txn.from_path.as_bytes());
        out.push(b'>');
        if caps.is_some_and(|c| c.size.is_some()) {
            out.extend_from_slice(b" SIZE=");
            push_num(out, txn.size as u64);
        }
        // Without 8BITMIME, 8-bit data is sent as it is: refusing it locally would bounce
        // mail most servers take anyway.
        if caps.is_some_and(|c| c.eightbitmime) && !txn.msg.data.is_ascii() {
            out.extend_from_slice(b" BODY=8BITMIME");
        }
        // `start` refused the message unless the server advertised REQUIRETLS over TLS.
        if txn.msg.requiretls {
            out.extend_from_slice(b" REQUIRETLS");
        }
        // `start` set it only where the server advertised SMTPUTF8 and an address needs it.
        if txn.smtputf8 {
            out.extend_from_slice(b" SMTPUTF8");
        }
        out.extend_from_slice(b"\r\n");
    }

    /// Emit `Done` and move on. `rset`: the server may still hold the transaction open.
    fn finish(&mut self, txn: Txn, rset: bool) -> State {
        let Txn { msg, slots, .. } = txn;
        let rcpts = slots
            .into_iter()
            .zip(&msg.rcpts)
            .map(|(slot, rcpt)| match slot {
                Slot::Settled(o) => o,
                // Unreachable by construction; reported as a retryable outcome, not a panic.
                Slot::Open | Slot::Accepted => local(rcpt, "4.4.0", "no final reply").deferred(),
            })
            .collect();
        self.stats.messages += 1;
        self.events.push_back(Event::Done(MessageOutcome { id: msg.id, rcpts }));
        self.become_ready(rset)
    }

    /// Idle: QUIT if asked, else the queued message, else tell the driver.
    fn become_ready(&mut self, rset: bool) -> State {
        if self.quit_requested {
            return self.send_quit();
        }
        if let Some(msg) = self.queued.take() {
            return self.start(msg, rset);
        }
        self.events.push_back(Event::Ready);
        State::Ready { rset }
    }

    // ----- output -----

    fn send_ehlo(&mut self) -> State {
        let mut out = self.take_buf();
        push_cmd(&mut out, &[b"EHLO ", self.cfg.ehlo_name.as_bytes()]);
        self.send(out, 1);
        State::Ehlo
    }

    fn send_quit(&mut self) -> State {
        let mut out = self.take_buf();
        out.extend_from_slice(b"QUIT\r\n");
        self.send(out, 1);
        State::Quit
    }

    fn take_buf(&mut self) -> Vec<u8> {
        self.spare.take().unwrap_or_default()
    }

    fn send(&mut self, out: Vec<u8>, commands: u64) {
        self.stats.commands += commands;
        self.stats.round_trips += 1;
        self.stats.bytes_sent += out.len() as u64;
        self.events.push_back(Event::Send(out));
    }

    // ----- endings -----

    fn closed(&mut self) -> State {
        self.events.push_back(Event::Closed);
        self.unfinished.extend(self.queued.take());
        State::Closed
    }

    fn close(&mut self) {
        self.state = self.closed();
    }

    /// Record a failure: the in-flight message (if any) and the queued one go to `unfinished`.
    fn failed(&mut self, err: SessionError, msg: Option<Message>) -> State {
        self.events.push_back(Event::Failed(err));
        self.unfinished.extend(msg);
        self.unfinished.extend(self.queued.take());
        self.rbuf.clear();
        State::Failed
    }

    fn fail(&mut self, err: SessionError, msg: Option<Message>) {
        let msg = match std::mem::replace(&mut self.state, State::Failed) {
            State::Txn(t) => Some(t.msg),
            _ => msg,
        };
        self.state = self.failed(err, msg);
    }
}

impl RcptOutcome {
    fn deferred(mut self) -> Self {
        self.status = RcptStatus::Deferred;
        self
    }
}

/// Why a recipient with a UTF-8 local part is bounced (5.6.7, RFC 6531 §3.5).
const NO_SMTPUTF8_RCPT: &str =
    "the recipient's local part is not ASCII and the receiving server does not offer SMTPUTF8 (RFC 6531); there is no ASCII form of the address, not sent";
/// Why every recipient is bounced when the sender has a UTF-8 local part (5.6.7).
const NO_SMTPUTF8_SENDER: &str =
    "the sender's local part is not ASCII and the receiving server does not offer SMTPUTF8 (RFC 6531); there is no ASCII form of the sender, not sent";

/// The outcome a server reply gives a recipient (only 4xx and 5xx reach here before data).
fn from_reply(rcpt: &str, reply: &Reply) -> RcptOutcome {
    let status = if reply.is_positive() {
        RcptStatus::Delivered
    } else if reply.is_transient() {
        RcptStatus::Deferred
    } else {
        RcptStatus::Bounced
    };
    RcptOutcome { rcpt: rcpt.to_string(), status, reply: reply.one_line(), enhanced: reply.enhanced.map(|e| e.to_string()) }
}

/// A permanent refusal decided here, never sent.
fn local(rcpt: &str, enhanced: &str, why: &str) -> RcptOutcome {
    RcptOutcome {
        rcpt: rcpt.to_string(),
        status: RcptStatus::Bounced,
        reply: format!("local: {why}"),
        enhanced: Some(enhanced.to_string()),
    }
}

fn push_cmd(out: &mut Vec<u8>, parts: &[&[u8]]) {
    for p in parts {
        out.extend_from_slice(p);
    }
    out.extend_from_slice(b"\r\n");
}

/// `BDAT n LAST` and the chunk, normalised straight into the command buffer; `size` is
/// [`normalised_len`]`(data)`. When it equals the data's own length, the data has no bare CR
/// or LF and ends in CRLF (normalising only ever adds bytes), so it goes out as it is: one
/// copy instead of a second scan over the line ends.
fn push_bdat(out: &mut Vec<u8>, data: &[u8], size: usize) {
    debug_assert_eq!(size, normalised_len(data));
    out.extend_from_slice(b"BDAT ");
    push_num(out, size as u64);
    out.extend_from_slice(b" LAST\r\n");
    if size == data.len() {
        out.extend_from_slice(data);
    } else {
        normalise_into(data, false, out);
    }
}

fn push_num(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}
