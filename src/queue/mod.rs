//! The daemon's queue: what has been accepted and not yet finished.
//!
//! - [`spool`]: the durable store. Messages are acknowledged only once they are on disk, and a
//!   restart gives back every unfinished message with its attempt history.
//! - [`board`]: what the manager shows observers (HTTP API, metrics).
//! - [`manager`]: between acceptance and the last final outcome: submission to the engine,
//!   attempts recorded, retries on a timer, expiry, bounces (DSNs), operator commands.
//! - [`report`]: the manager's counters (shown by the board, returned at shutdown).
//! - [`ctl`]: `mxpipe queue`, the operator's client of those commands.

pub mod board;
pub mod ctl;
pub mod manager;
pub mod report;
pub mod spool;
