//! The TLS policy: for each MX host of a destination, the connection attempts and the TLS each
//! one requires, composed from every source that applies (spec: `mx-prefix-policy.md` in the
//! shared docs). The strictest requirement wins, and each plan says which sources applied and
//! which one decided.
//!
//! - [`prefix`]: the MX-prefix rules (`starttls-…`, `smtps-…`), a pure function of one host name.
//! - [`learned`]: what earlier deliveries learned per host (a per-shard cache; forgetting is safe).
//! - [`compose`](mod@compose): every source's facts into one plan per MX host, the strictest winning.
//! - [`mta_sts`]: RFC 8461 records and policies (pure) and their HTTPS fetch ([`mta_sts::fetch`]).
//! - [`state`]: what must outlive a restart (pins, MTA-STS policies), kept beside the spool.
//!
//! Nothing here opens sockets or reads the clock: callers pass `now`, so every rule is unit tested.

pub mod compose;
pub mod learned;
pub mod mta_sts;
pub mod prefix;
pub mod state;

pub use compose::{compose, strictest_prefix, Dane, DomainFacts, HostFacts, Scope, Sts};
pub use learned::{Learned, PolicyCache};
pub use prefix::*;
