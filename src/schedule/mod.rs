//! Scheduling state for the daemon: when to retry a deferred message, what a reply means for
//! its destination, which destinations are suspended, and when to wake up next.
//!
//! Everything here is pure and deterministic: no tokio, no threads, no I/O, no clock reads and
//! no random numbers of its own. The caller passes `now: Instant` (and, for jitter, a random
//! `u64`) into every decision, so each rule is unit tested here with exact values, and the
//! daemon's queue manager owns the state and borrows it `&mut` without locks. This module does
//! not know about messages, the spool or connections; it only answers "when" and "not yet".
//! Connection and message-rate limits are not here: the engine enforces them
//! (`engine::limits`, from the `[[domain]]` entries of the configuration), holding messages
//! over a limit in its own queues.
//!
//! - [`RetryPolicy`]: exponential backoff with jitter and a cap, and expiry at a maximum age
//!   (then the daemon bounces with a DSN).
//! - [`classify`]: a final SMTP reply as [`ReplyClass`]: delivered, temporary or permanent
//!   failure, or a rate limit / 421 that should suspend the whole destination.
//! - [`Destinations`]: per-destination suspension with escalation, in a bounded map that
//!   forgets idle destinations.
//! - [`Timers`]: a min-heap of deadlines with cancellation, so the runner sleeps exactly until
//!   the next retry or suspension end instead of polling.
//!
//! # How the daemon uses it
//!
//! The queue manager (`queue::manager`) submits messages to the engine, which applies the
//! connection and rate limits; this module decides what happens around each attempt:
//!
//! ```text
//! loop {
//!     for id in timers.pop_due(now) { /* a message's next round is due */ }
//!     // for each pending recipient of a due message, by its domain d:
//!     //   destinations.is_suspended(d, now) -> Some(until): held back, untried (if all are,
//!     //                                        timers.insert(earliest until, id))
//!     //   None                              -> submitted to the engine
//!     // for each outcome from the engine:
//!     //   destinations.record(d, classify(code, enh, text), now) -> Some(until): d suspended
//!     // when a round ends with recipients deferred:
//!     //   retry.next_attempt(n, first, now, rng.u64(..)) -> RetryAt(t): timers.insert(t, id)
//!     //   (not before the suspensions holding them end) | Expire: bounce with a DSN
//!     // operator commands: destinations.suspend(d, until, now), destinations.resume(d, now)
//!     sleep_until(timers.next_deadline())   // or until an outcome or new work arrives
//! }
//! ```

mod classify;
mod destinations;
mod retry;
mod timers;

pub use classify::{classify, ReplyClass, MAX_CLASSIFIED_TEXT};
pub use destinations::{DestinationOptions, Destinations, MAX_SUSPENSION};
pub use retry::{Decision, RetryPolicy};
pub use timers::{TimerId, Timers};

/// A scheduling setting that cannot work, found by a `validate` method: `setting` names the
/// field (as the config file spells it), `problem` says what is wrong with the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{setting}: {problem}")]
pub struct SettingError {
    /// The setting's name as the config file spells it.
    pub setting: &'static str,
    /// What is wrong with the value, and what would work.
    pub problem: String,
}

impl SettingError {
    fn new(setting: &'static str, problem: impl Into<String>) -> SettingError {
        SettingError { setting, problem: problem.into() }
    }
}

/// A destination name as the maps see it: lowercase, no trailing dot; the same rule as the
/// policy cache's, so one name is one entry everywhere. Borrows when already in that form.
fn normalize(name: &str) -> std::borrow::Cow<'_, str> {
    crate::policy::normalize(name)
}
