//! One SMTP injection connection: connect, banner, EHLO, optional STARTTLS (and EHLO again,
//! RFC 3207 §4.2) and AUTH PLAIN, then messages until the shared counter or the
//! per-connection limit runs out, then QUIT and the wait for the server to close first.
//!
//! Each message: MAIL, its RCPTs and DATA in one write when the server offers PIPELINING
//! (RFC 2920), the replies read, then the dot-stuffed content; or, with `bdat` and CHUNKING
//! (RFC 3030), MAIL, RCPTs, `BDAT n LAST` and the content itself in one write. The
//! acknowledgement latency runs from the last byte of the message written to its final reply.
//! Without PIPELINING every command waits for its reply, so any MTA can be measured.
//!
//! A refused message (MAIL, every RCPT, DATA or the end of data answered 4xx/5xx) is counted
//! and followed by RSET; the connection goes on. An I/O error, a timeout or a malformed reply
//! ends the connection, and the message in flight is counted `lost`.

use std::net::SocketAddr;
use std::time::Instant;

use base64::Engine as _;
use mxpipe::reply::{Capabilities, Reply};
use tokio::net::{TcpSocket, TcpStream};

use super::{Door, InjectConfig, Recorder, Tickets};
use crate::class::{ConnError, ErrorClass};
use crate::wire::{expect, truncate, within, Transport, Wire};

/// Run one connection to `addr`, counting into `rec`. `Ok` when it ended cleanly (no message
/// left to send, QUIT answered).
pub async fn connection(cfg: &InjectConfig, addr: SocketAddr, tickets: &Tickets, rec: &mut Recorder) -> Result<(), ConnError> {
    let Door::Smtp { ehlo_name, starttls, auth, bdat } = &cfg.door else {
        return Err(ConnError::new(ErrorClass::Connect, "not an SMTP door"));
    };
    let tcp = within(cfg.timeout, "connect", connect(addr)).await?;
    let mut plain = Wire::new(tcp, cfg.timeout);
    expect(plain.reply("banner", ErrorClass::Banner).await?, 220, "banner", ErrorClass::Banner)?;
    let mut caps = plain.ehlo(ehlo_name).await?;
    let mut wire: Wire<Box<dyn Transport>> = match starttls {
        Some(t) => {
            if !caps.starttls {
                plain.quit_quietly().await;
                return Err(ConnError::new(ErrorClass::NoStarttls, "EHLO reply does not advertise STARTTLS"));
            }
            plain.send(b"STARTTLS\r\n", "STARTTLS").await?;
            expect(plain.reply("STARTTLS", ErrorClass::Io).await?, 220, "STARTTLS", ErrorClass::SmtpReply)?;
            let tcp = plain.into_inner()?;
            let tls = within(cfg.timeout, "TLS handshake", async {
                t.connector.connect(t.server_name.clone(), tcp).await.map_err(|e| ConnError::io("TLS handshake", &e, ErrorClass::Tls))
            })
            .await?;
            let mut w = Wire::new(Box::new(tls) as Box<dyn Transport>, cfg.timeout);
            caps = w.ehlo(ehlo_name).await?;
            w
        }
        None => Wire::new(Box::new(plain.into_inner()?) as Box<dyn Transport>, cfg.timeout),
    };
    if let Some((user, pass)) = auth {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{pass}"));
        wire.send(format!("AUTH PLAIN {token}\r\n").as_bytes(), "AUTH").await?;
        let r = wire.reply("AUTH", ErrorClass::Io).await?;
        if r.code != 235 {
            wire.quit_quietly().await;
            return Err(ConnError::new(ErrorClass::SmtpReply, format!("AUTH PLAIN: \"{}\"", truncate(&r.one_line()))));
        }
    }
    if *bdat && !caps.chunking {
        wire.quit_quietly().await;
        return Err(ConnError::new(ErrorClass::SmtpReply, "--bdat: the EHLO reply does not advertise CHUNKING"));
    }
    if caps.pipelining {
        rec.pipelined_connections += 1;
    }
    let s = Session { cfg, caps, bdat: *bdat };
    let mut sent = 0u64;
    while cfg.messages_per_conn.is_none_or(|m| sent < m) {
        let Some(range) = tickets.take(1) else { break };
        sent += 1;
        rec.attempted += 1;
        let settled = rec.acked + rec.refused_temp + rec.refused_perm;
        if let Err(e) = s.message(&mut wire, range.start, tickets, rec).await {
            // Lost only if the failure came before its outcome (not in the RSET after a refusal).
            if rec.acked + rec.refused_temp + rec.refused_perm == settled {
                rec.lost += 1;
            }
            return Err(e);
        }
    }
    wire.send(b"QUIT\r\n", "QUIT").await?;
    expect(wire.reply("QUIT", ErrorClass::Io).await?, 221, "QUIT", ErrorClass::SmtpReply)?;
    wire.await_close().await
}

/// TCP with no Nagle: SMTP is request and reply.
async fn connect(addr: SocketAddr) -> Result<TcpStream, ConnError> {
    let err = |what: &str, e: std::io::Error| ConnError::io(what, &e, ErrorClass::Connect);
    let sock = if addr.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }.map_err(|e| err("socket", e))?;
    sock.set_nodelay(true).map_err(|e| err("TCP_NODELAY", e))?;
    sock.connect(addr).await.map_err(|e| err(&format!("connect {addr}"), e))
}

/// What a connection knows while it sends messages.
struct Session<'a> {
    cfg: &'a InjectConfig,
    caps: Capabilities,
    bdat: bool,
}

/// How the envelope's replies came out.
struct Envelope {
    mail: Reply,
    rcpts_ok: u64,
}

impl Session<'_> {
    /// Send message `seq` and count how it ended. `Err` only when the connection failed.
    async fn message(&self, wire: &mut Wire<Box<dyn Transport>>, seq: u64, tickets: &Tickets, rec: &mut Recorder) -> Result<(), ConnError> {
        let plan = &self.cfg.plan;
        let size = plan.size(seq);
        let mut group = String::with_capacity(64 + 48 * plan.rcpts_per_message());
        group.push_str("MAIL FROM:<");
        group.push_str(plan.from());
        group.push('>');
        if self.caps.size.is_some() {
            group.push_str(&format!(" SIZE={size}"));
        }
        group.push_str("\r\n");
        let rcpts: Vec<String> = (0..plan.rcpts_per_message()).map(|k| format!("RCPT TO:<{}>\r\n", plan.rcpt(seq, k))).collect();
        let mut content = Vec::with_capacity(size + size / 32 + 64);
        if self.bdat {
            plan.raw(seq, &mut content);
        } else {
            plan.data(seq, &mut content);
        }
        let t0 = Instant::now();
        let (env, final_reply, t_end) = if self.caps.pipelining {
            self.pipelined(wire, group, &rcpts, &content, rec).await?
        } else {
            self.lockstep(wire, group, &rcpts, &content, rec).await?
        };
        let Some((reply, step)) = final_reply else {
            // Refused before the content went: the envelope's refusal is counted already.
            return self.reset(wire, &env).await;
        };
        if !reply.is_positive() {
            // A final reply to the content ends the transaction either way (RFC 5321
            // §4.1.1.4; RFC 3030 for BDAT LAST): no RSET needed.
            rec.refused_reply(step, reply.code);
            rec.refused(reply.code, 1);
            return Ok(());
        }
        let now = Instant::now();
        rec.acked(1, env.rcpts_ok, size as u64, now - t_end, now - tickets.t0);
        let _ = rec.transaction.record((now - t0).as_micros().max(1) as u64);
        Ok(())
    }

    /// Everything up to the content in one write, then the replies, then the content (DATA);
    /// with BDAT the content goes in the same write. Returns the envelope, the final reply
    /// (`None` if the content was not sent) and when the content's last byte was written.
    async fn pipelined(
        &self,
        wire: &mut Wire<Box<dyn Transport>>,
        group: String,
        rcpts: &[String],
        content: &[u8],
        rec: &mut Recorder,
    ) -> Result<(Envelope, Option<(Reply, &'static str)>, Instant), ConnError> {
        let mut out = group.into_bytes();
        for r in rcpts {
            out.extend_from_slice(r.as_bytes());
        }
        if self.bdat {
            out.extend_from_slice(format!("BDAT {} LAST\r\n", content.len()).as_bytes());
            out.extend_from_slice(content);
            wire.send(&out, "MAIL/RCPT/BDAT").await?;
            let t_end = Instant::now();
            let env = self.envelope_replies(wire, rcpts.len(), rec).await?;
            // The server reads the chunk whatever it answers (RFC 3030 §2), so the session
            // stays in step; its reply is final only if the envelope was accepted.
            let r = wire.reply("BDAT", ErrorClass::Io).await?;
            let fin = (env.mail.is_positive() && env.rcpts_ok > 0).then_some((r, "bdat"));
            return Ok((env, fin, t_end));
        }
        out.extend_from_slice(b"DATA\r\n");
        wire.send(&out, "MAIL/RCPT/DATA").await?;
        let env = self.envelope_replies(wire, rcpts.len(), rec).await?;
        let data = wire.reply("DATA", ErrorClass::Io).await?;
        if !(env.mail.is_positive() && env.rcpts_ok > 0) {
            // A pipelined DATA after every RCPT was refused is an error to the server; too
            // many of them and it says 421 and closes.
            closing(&data, "DATA")?;
            return Ok((env, None, Instant::now()));
        }
        if data.code != 354 {
            rec.refused_reply("data", data.code);
            rec.refused(data.code, 1);
            return Ok((env, None, Instant::now()));
        }
        wire.send(content, "message data").await?;
        let t_end = Instant::now();
        let r = wire.reply("end of data", ErrorClass::Io).await?;
        Ok((env, Some((r, "end_of_data")), t_end))
    }

    /// The replies to MAIL and each RCPT, counted: MAIL refused refuses the message; RCPTs
    /// refused are counted each, and the message is refused when none is left.
    async fn envelope_replies(&self, wire: &mut Wire<Box<dyn Transport>>, n: usize, rec: &mut Recorder) -> Result<Envelope, ConnError> {
        let mail = wire.reply("MAIL", ErrorClass::Io).await?;
        let mut rcpts_ok = 0;
        let mut last_refusal = 0;
        for _ in 0..n {
            let r = wire.reply("RCPT", ErrorClass::Io).await?;
            if !mail.is_positive() {
                continue; // its refusal is the consequence of MAIL's
            }
            if r.is_positive() {
                rcpts_ok += 1;
            } else {
                rec.refused_reply("rcpt", r.code);
                rec.rcpts_refused += 1;
                last_refusal = r.code;
            }
        }
        if !mail.is_positive() {
            rec.refused_reply("mail", mail.code);
            rec.refused(mail.code, 1);
        } else if rcpts_ok == 0 {
            rec.refused(last_refusal, 1);
        }
        Ok(Envelope { mail, rcpts_ok })
    }

    /// Each command after the previous one's reply (a server without PIPELINING).
    async fn lockstep(
        &self,
        wire: &mut Wire<Box<dyn Transport>>,
        group: String,
        rcpts: &[String],
        content: &[u8],
        rec: &mut Recorder,
    ) -> Result<(Envelope, Option<(Reply, &'static str)>, Instant), ConnError> {
        wire.send(group.as_bytes(), "MAIL").await?;
        let mail = wire.reply("MAIL", ErrorClass::Io).await?;
        if !mail.is_positive() {
            rec.refused_reply("mail", mail.code);
            rec.refused(mail.code, 1);
            return Ok((Envelope { mail, rcpts_ok: 0 }, None, Instant::now()));
        }
        let mut rcpts_ok = 0;
        let mut last_refusal = 0;
        for r in rcpts {
            wire.send(r.as_bytes(), "RCPT").await?;
            let reply = wire.reply("RCPT", ErrorClass::Io).await?;
            if reply.is_positive() {
                rcpts_ok += 1;
            } else {
                rec.refused_reply("rcpt", reply.code);
                rec.rcpts_refused += 1;
                last_refusal = reply.code;
            }
        }
        let env = Envelope { mail, rcpts_ok };
        if rcpts_ok == 0 {
            rec.refused(last_refusal, 1);
            return Ok((env, None, Instant::now()));
        }
        if self.bdat {
            let mut out = format!("BDAT {} LAST\r\n", content.len()).into_bytes();
            out.extend_from_slice(content);
            wire.send(&out, "BDAT").await?;
            let t_end = Instant::now();
            return Ok((env, Some((wire.reply("BDAT", ErrorClass::Io).await?, "bdat")), t_end));
        }
        wire.send(b"DATA\r\n", "DATA").await?;
        let data = wire.reply("DATA", ErrorClass::Io).await?;
        if data.code != 354 {
            rec.refused_reply("data", data.code);
            rec.refused(data.code, 1);
            return Ok((env, None, Instant::now()));
        }
        wire.send(content, "message data").await?;
        let t_end = Instant::now();
        Ok((env, Some((wire.reply("end of data", ErrorClass::Io).await?, "end_of_data")), t_end))
    }

    /// After a message refused before its content: RSET, unless the transaction never opened
    /// (MAIL refused). Servers count RSET among the commands that carry no mail (Postfix's
    /// smtpd_junk_command_limit, the sink's max_idle_commands) and close a connection with too
    /// many: a load with many refusals needs a --messages-per-conn below that limit.
    async fn reset(&self, wire: &mut Wire<Box<dyn Transport>>, env: &Envelope) -> Result<(), ConnError> {
        if !env.mail.is_positive() {
            return Ok(());
        }
        wire.send(b"RSET\r\n", "RSET").await?;
        let r = wire.reply("RSET", ErrorClass::Io).await?;
        expect(r, 250, "RSET", ErrorClass::SmtpReply).map(|_| ())
    }
}

/// A 421 (RFC 5321 §3.8: the server is closing the connection) ends the connection.
fn closing(r: &Reply, what: &str) -> Result<(), ConnError> {
    if r.code == 421 {
        return Err(ConnError::new(ErrorClass::SmtpReply, format!("{what}: server closing: \"{}\"", truncate(&r.one_line()))));
    }
    Ok(())
}
