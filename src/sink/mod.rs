//! The sink: the SMTP server core ([`crate::smtp_server`]) with the presets of a receiving
//! server for tests and capacity benchmarks. STARTTLS on one port (25 by default) and implicit
//! TLS on another (26); it counts what it receives and discards it, or writes it to a mail
//! directory ([`MailDir`], `mxpipe sink --mail-dir`), and it can inject faults
//! ([`Faults`]). Listening, limits, TLS and the dialogue are the core's; nothing here is on
//! the daemon's path.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use mxpipe::{sink, tls};
//! let pki = tls::certs::generate(&["localhost".into()])?;
//! let server_tls = tls::server_config(pki.identity.clone(), tls::ServerResumption::default())?;
//! let mut cfg = sink::SinkConfig::new(server_tls);
//! cfg.starttls_port = Some(0); // ephemeral, for tests
//! cfg.implicit_port = Some(0);
//! sink::MailDir::install(&mut cfg, "/tmp/mail");
//! let sink = sink::Sink::start(cfg).await?;
//! println!("STARTTLS on {:?}", sink.addr(sink::PortKind::StartTls));
//! let report = sink.shutdown(std::time::Duration::from_secs(5)).await;
//! println!("{}", report.stats.to_table());
//! # Ok(()) }
//! ```

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub use crate::smtp_server::{
    Acceptor, AcceptorRef, Error as SinkError, FaultStats, Faults, ListenerInfo, MailParams, PortKind, PortStats, Refused, ShutdownReport,
    StatsSnapshot, IDLE_TIMEOUT, MAX_COMMAND_LINE,
};

/// A sink's settings: the server core's, with the sink's defaults (ports 25 and 26, no
/// per-client cap, faults off until set).
pub type SinkConfig = crate::smtp_server::Config;
/// A running sink.
pub type Sink = crate::smtp_server::Server;

/// Write each accepted message to a directory as `<id>.eml`, the envelope first as
/// `X-Mxpipe-Mail-From:` / `X-Mxpipe-Rcpt-To:` header lines, then, for a message sent with
/// `MAIL FROM:<..> REQUIRETLS` (RFC 8689), `X-Mxpipe-Requiretls: yes`, and for one sent with
/// `MAIL FROM:<..> SMTPUTF8` (RFC 6531), `X-Mxpipe-Smtputf8: yes` (each absent otherwise, so
/// files of other messages are as they always were). Written to a temporary name and
/// renamed, so a reader never sees half a message; a failed write answers 451 4.3.0 and the
/// client keeps the message.
#[derive(Debug)]
pub struct MailDir {
    dir: PathBuf,
    seq: AtomicU64,
}

impl MailDir {
    /// Make `cfg` store what it accepts in `dir`.
    pub fn install(cfg: &mut SinkConfig, dir: impl Into<PathBuf>) {
        cfg.acceptor = Some(AcceptorRef(Arc::new(MailDir { dir: dir.into(), seq: AtomicU64::new(1) })));
    }

    async fn store(&self, from: &[u8], rcpts: &[Vec<u8>], content: &[u8], params: MailParams) -> std::io::Result<u64> {
        let id = self.seq.fetch_add(1, Ordering::Relaxed);
        let mut out = Vec::with_capacity(content.len() + 128);
        out.extend_from_slice(b"X-Mxpipe-Mail-From: <");
        out.extend_from_slice(from);
        out.extend_from_slice(b">\r\n");
        for r in rcpts {
            out.extend_from_slice(b"X-Mxpipe-Rcpt-To: <");
            out.extend_from_slice(r);
            out.extend_from_slice(b">\r\n");
        }
        if params.requiretls {
            out.extend_from_slice(b"X-Mxpipe-Requiretls: yes\r\n");
        }
        if params.smtputf8 {
            out.extend_from_slice(b"X-Mxpipe-Smtputf8: yes\r\n");
        }
        // The trace field a real MTA adds (RFC 5321 §4.4): who delivered it, from which address.
        let helo: String = params.helo.as_deref().unwrap_or("unknown").chars().filter(|c| c.is_ascii_graphic()).take(255).collect();
        let ip = params.peer.map_or_else(|| "unknown".to_string(), |ip| ip.to_string());
        let with = match (params.smtputf8, params.tls) {
            (true, true) => "UTF8SMTPS",
            (true, false) => "UTF8SMTP",
            (false, true) => "ESMTPS",
            (false, false) => "ESMTP",
        };
        out.extend_from_slice(
            format!(
                "Received: from {helo} ([{ip}]) by mxpipe-sink with {with} id {id:X}; {}\r\n",
                crate::dsn::rfc5322_date(std::time::SystemTime::now())
            )
            .as_bytes(),
        );
        out.extend_from_slice(content);
        let tmp = self.dir.join(format!(".{id:016X}.{}.tmp", std::process::id()));
        let fin = self.dir.join(format!("{id:016X}.eml"));
        write_then_rename(&tmp, &fin, out).await?;
        Ok(id)
    }
}

async fn write_then_rename(tmp: &Path, fin: &Path, out: Vec<u8>) -> std::io::Result<()> {
    tokio::fs::write(tmp, out).await?;
    tokio::fs::rename(tmp, fin).await
}

impl Acceptor for MailDir {
    fn accept(
        &self,
        from: Vec<u8>,
        rcpts: Vec<Vec<u8>>,
        data: Vec<u8>,
        requiretls: bool,
    ) -> Pin<Box<dyn Future<Output = Result<String, Refused>> + Send + '_>> {
        self.accept_with(from, rcpts, data, MailParams { requiretls, ..MailParams::default() })
    }

    fn accept_with(
        &self,
        from: Vec<u8>,
        rcpts: Vec<Vec<u8>>,
        data: Vec<u8>,
        params: MailParams,
    ) -> Pin<Box<dyn Future<Output = Result<String, Refused>> + Send + '_>> {
        Box::pin(async move {
            match self.store(&from, &rcpts, &data, params).await {
                Ok(id) => Ok(format!("{id:X}")),
                Err(e) => Err(Refused { code: "451 4.3.0", text: format!("Cannot store message: {e}") }),
            }
        })
    }
}
