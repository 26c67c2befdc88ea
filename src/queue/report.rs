//! What the queue manager counts, published to the board and returned at shutdown. Its own
//! leaf so that the board (which shows it) and the manager (which fills it) do not depend on
//! each other.

use crate::engine::EngineStats;

/// Outcomes of one policy class.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ClassCounts {
    /// Recipients delivered.
    pub delivered: u64,
    /// Recipient attempts deferred (one recipient may count several times).
    pub deferred: u64,
    /// Recipients bounced.
    pub bounced: u64,
}

/// Counters at the end of a run.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ManagerReport {
    /// Messages found in the spool at start and queued again.
    pub recovered: u64,
    /// Messages accepted from injection during this run.
    pub accepted: u64,
    /// Recipients delivered.
    pub delivered: u64,
    /// Deferred attempts (a recipient deferred three times counts three).
    pub deferred_attempts: u64,
    /// Recipients bounced by a server, the engine or the operator (expiry counts in `expired` only).
    pub bounced: u64,
    /// Recipients bounced (4.4.7) because the retry policy gave up on them: too old to try again.
    pub expired: u64,
    /// Recipients bounced by an operator's `bounce` command.
    pub bounced_by_operator: u64,
    /// Recipients with the engine now (submitted, no outcome yet).
    pub in_flight: u64,
    /// Outcomes by the policy class of the MX host they came from (`starttls-prefix`,
    /// `smtps-prefix`, `opportunistic`, `override`; `none` when no host was reached).
    pub by_class: std::collections::BTreeMap<String, ClassCounts>,
    /// DSNs (bounce messages) generated and queued.
    pub dsns: u64,
    /// Messages still unfinished at shutdown (they stay in the spool for the next start).
    pub unfinished: u64,
    /// Spool writes that failed (attempt records, DSNs); the in-memory state went on regardless.
    pub spool_errors: u64,
    /// Delivery-log lines that could not be written.
    pub log_errors: u64,
    /// The engine's own counters at shutdown.
    pub engine: EngineStats,
}
