//! Injection: how messages enter the daemon. Both doors end in one [`Intake`]: a message is
//! acknowledged only once it is in the spool on disk and on the board, and is then handed to
//! the queue manager.
//!
//! - [`smtp`]: the SMTP injection listener (the SMTP server core with the spool as its
//!   acceptor, allowed networks, AUTH, per-client and per-session limits).
//! - [`http`]: the HTTP API (inject, message state, queues, metrics, the operator's commands),
//!   with bearer tokens, request limits and checks that keep browsers out.

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
}

impl Intake {
    /// An intake storing into `spool`, announcing on `board` and handing each message to the manager over `to_manager`.
    pub fn new(spool: Arc<Spool>, to_manager: crossbeam_channel::Sender<Accepted>, board: Board) -> Intake {
        Intake { spool, to_manager, board }
    }

    /// Store `msgs` (sender, recipients, content, TLS requirement) in one spool commit, all or
    /// nothing, and return their ids once they are durable: the caller acknowledges only then.
    /// They are on the board before this returns, so a lookup right after the acknowledgement
    /// finds them, and handed to the manager (if it is gone, the spool delivers them after a
    /// restart).
    pub async fn accept(&self, msgs: Vec<Incoming>) -> Result<Vec<MsgId>, SpoolError> {
        let ids = self.spool.accept_many_async(msgs.clone()).await?;
        for (&id, m) in ids.iter().zip(msgs) {
            self.board.queued(id, &m.from, &m.rcpts, SystemTime::now());
            let _ = self.to_manager.send(Accepted { id, from: m.from, rcpts: m.rcpts, data: m.data, tls: m.tls, pool: m.pool });
        }
        Ok(ids)
    }

    /// The board, for observers.
    pub fn board(&self) -> &Board {
        &self.board
    }
}
