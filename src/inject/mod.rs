//! Injection: how messages enter the daemon. Both doors end in one [`Intake`]: a message is
//! acknowledged only once it is in the spool on disk and on the board, and is then handed to
//! the queue manager.
//!
//! - [`smtp`]: the SMTP injection listener (the SMTP server core with the spool as its
//!   acceptor, allowed networks, AUTH, per-client and per-session limits).
//! - [`http`]: the HTTP API (inject, message state, queues, metrics, the operator's commands),
//!   with bearer tokens, request limits and checks that keep browsers out.
//! - [`directives`]: the `X-Mxpipe-Pool` / `X-Mxpipe-Dkim` header fields, taken out at intake.
//!
//! The intake also signs ([`crate::dkim`]) before it stores: what the spool holds is what was
//! signed, and a retry never signs again.

pub mod directives;
pub mod http;
pub mod smtp;
pub mod tokens;

use std::sync::Arc;
use std::time::SystemTime;

use crate::queue::board::Board;
use crate::queue::manager::Accepted;
use crate::queue::spool::{Incoming, MsgId, Spool, SpoolError};

/// Where injection (SMTP and HTTP alike) hands messages in.
#[derive(Clone)]
pub struct Intake {
    spool: Arc<Spool>,
    to_manager: crossbeam_channel::Sender<Accepted>,
    board: Board,
    signer: Option<Signer>,
    pools: Option<PoolCheck>,
}

/// Whether an egress pool of that name is configured.
pub type PoolCheck = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// The DKIM keys and the threads that sign with them.
#[derive(Clone, Debug)]
pub struct Signer {
    /// The keys (reloadable).
    pub dkim: Arc<crate::dkim::Dkim>,
    /// Where the signing runs.
    pub workers: crate::dkim::workers::Workers,
}

/// Why messages were not accepted.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    /// The spool could not store them (a full disk among the causes).
    #[error("{0}")]
    Spool(#[from] SpoolError),
    /// The client asked for something that cannot be (an unknown DKIM key or pool, a malformed
    /// directive): a permanent refusal.
    #[error("{0}")]
    Refused(String),
    /// Signing failed or its threads are gone: try again later.
    #[error("{0}")]
    Unavailable(String),
}

impl IntakeError {
    /// Whether the spool's disk is full.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, IntakeError::Spool(e) if e.is_disk_full())
    }
}

impl Intake {
    /// An intake storing into `spool`, announcing on `board` and handing each message to the manager over `to_manager`.
    pub fn new(spool: Arc<Spool>, to_manager: crossbeam_channel::Sender<Accepted>, board: Board) -> Intake {
        Intake { spool, to_manager, board, signer: None, pools: None }
    }

    /// The same intake, signing every message it accepts with `signer`'s keys.
    pub fn with_signer(mut self, signer: Signer) -> Intake {
        self.signer = Some(signer);
        self
    }

    /// The same intake, taking a message's egress pool only when `check` knows it (without
    /// this, a message naming a pool is refused: none is configured).
    pub fn with_pools(mut self, check: PoolCheck) -> Intake {
        self.pools = Some(check);
        self
    }

    /// [`Intake::accept_chosen`] without an explicit choice of DKIM keys (those aligned with
    /// each message's From domain sign it, and the `always` keys).
    pub async fn accept(&self, msgs: Vec<Incoming>) -> Result<Vec<MsgId>, IntakeError> {
        self.accept_chosen(msgs.into_iter().map(|m| (m, None)).collect()).await
    }

    /// Store `msgs` (sender, recipients, content, TLS requirement, egress pool; each with the
    /// DKIM keys asked for, if any) in one spool commit, all or nothing, and return their ids
    /// once they are durable: the caller acknowledges only then. First the `X-Mxpipe-*`
    /// directive fields are taken out of each message, then it is signed (on the signing
    /// threads). They are on the board before this returns, so a lookup right after the
    /// acknowledgement finds them, and handed to the manager (if it is gone, the spool delivers
    /// them after a restart).
    pub async fn accept_chosen(&self, msgs: Vec<(Incoming, Option<Vec<String>>)>) -> Result<Vec<MsgId>, IntakeError> {
        let mut prepared = Vec::with_capacity(msgs.len());
        for (i, (mut m, mut choice)) in msgs.into_iter().enumerate() {
            let at = |e: String| if i == 0 { e } else { format!("message {i}: {e}") };
            let (d, stripped) = directives::take(&m.data).map_err(|e| IntakeError::Refused(at(e)))?;
            if let Some(data) = stripped {
                m.data = data.into();
            }
            if m.pool.is_none() {
                m.pool = d.pool;
            }
            if choice.is_none() {
                choice = d.dkim;
            }
            if let Some(pool) = &m.pool {
                if !self.pools.as_ref().is_some_and(|known| known(pool)) {
                    return Err(IntakeError::Refused(at(format!("no egress pool is named {pool:?}"))));
                }
            }
            match (&self.signer, &choice) {
                (Some(s), Some(c)) => s.dkim.check_choice(c).map_err(|e| IntakeError::Refused(at(e.to_string())))?,
                (None, Some(c)) if !c.is_empty() => {
                    return Err(IntakeError::Refused(at("DKIM keys asked for, but none is configured".into())))
                }
                _ => {}
            }
            prepared.push((m, choice));
        }
        let msgs = match &self.signer {
            Some(s) if !s.dkim.is_empty() => sign_all(s, prepared).await?,
            _ => prepared.into_iter().map(|(m, _)| m).collect(),
        };
        let ids = self.spool.accept_many_async(msgs.clone()).await?;
        for (&id, m) in ids.iter().zip(msgs) {
            self.board.queued(id, &m.from, &m.rcpts, SystemTime::now());
            let _ = self.to_manager.send(Accepted { id, from: m.from, rcpts: m.rcpts, data: m.data, tls: m.tls, pool: m.pool });
        }
        Ok(ids)
    }

    /// The DKIM signer's counters, if it signs.
    pub fn dkim_stats(&self) -> Option<crate::dkim::DkimStats> {
        // Shown once there are keys, or once a reload has happened (which may have removed them).
        self.signer.as_ref().map(|s| s.dkim.stats()).filter(|st| !st.per_key.is_empty() || st.reloads > 0)
    }

    /// The board, for observers.
    pub fn board(&self) -> &Board {
        &self.board
    }
}

/// Signs `msgs` on the signing threads, a share of them on each thread, keeping their order.
async fn sign_all(s: &Signer, msgs: Vec<(Incoming, Option<Vec<String>>)>) -> Result<Vec<Incoming>, IntakeError> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per_job = msgs.len().div_ceil(threads).max(1);
    let mut jobs = Vec::new();
    let mut msgs = msgs.into_iter().peekable();
    while msgs.peek().is_some() {
        let chunk: Vec<_> = msgs.by_ref().take(per_job).collect();
        let dkim = s.dkim.clone();
        jobs.push(s.workers.run(move || sign_chunk(&dkim, chunk)));
    }
    let mut out = Vec::new();
    for job in jobs {
        out.extend(job.await.map_err(IntakeError::Unavailable)??);
    }
    Ok(out)
}

fn sign_chunk(dkim: &crate::dkim::Dkim, chunk: Vec<(Incoming, Option<Vec<String>>)>) -> Result<Vec<Incoming>, IntakeError> {
    use crate::dkim::{SignError, Signed};
    let mut out = Vec::with_capacity(chunk.len());
    for (mut m, choice) in chunk {
        let data = crate::dkim::normalise(&m.data);
        match dkim.sign(&data, choice.as_deref()) {
            Ok(Signed::Yes(signed, _)) => m.data = signed.into(),
            Ok(Signed::No) => {
                if let std::borrow::Cow::Owned(d) = data {
                    m.data = d.into();
                }
            }
            Err(e @ (SignError::UnknownKey(_) | SignError::BadChoice(_))) => return Err(IntakeError::Refused(e.to_string())),
            Err(e) => return Err(IntakeError::Unavailable(e.to_string())),
        }
        out.push(m);
    }
    Ok(out)
}
