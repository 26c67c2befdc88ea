//! What the queue manager counts, published to the board and returned at shutdown. Its own
//! leaf so that the board (which shows it) and the manager (which fills it) do not depend on
//! each other.

use crate::engine::EngineStats;

/// Outcomes of one policy class.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ClassCounts {
    pub delivered: u64,
    pub deferred: u64,
    pub bounced: u64,
}

/// Counters at the end of a run.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ManagerReport {
    pub recovered: u64,
    pub accepted: u64,
    pub delivered: u64,
    pub deferred_attempts: u64,
    pub bounced: u64,
    pub expired: u64,
    /// Recipients bounced by an operator's `bounce` command.
    pub bounced_by_operator: u64,
    /// Recipients with the engine now (submitted, no outcome yet).
    pub in_flight: u64,
    /// Outcomes by the policy class of the MX host they came from (`starttls-prefix`,
    /// `smtps-prefix`, `opportunistic`, `override`; `none` when no host was reached).
    pub by_class: std::collections::BTreeMap<String, ClassCounts>,
    pub dsns: u64,
    /// Messages still unfinished at shutdown (they stay in the spool for the next start).
    pub unfinished: u64,
    pub spool_errors: u64,
    /// Delivery-log lines that could not be written.
    pub log_errors: u64,
    pub engine: EngineStats,
}
