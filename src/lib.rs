//! mxpipe: a high-throughput outbound SMTP delivery engine, with the receiving sink and the
//! TLS load generator it is tested and benchmarked against.
//!
//! The crate is a library first; the `mxpipe` binary (`src/main.rs`) and the
//! `mxpipe-loadgen` binary (`loadgen/`) only parse arguments and call into it.
//!
//! Modules:
//! - [`address`]: envelope addresses and domains, parsed and normalised once for every entry point.
//! - [`resolve`]: MX resolution over hickory with our own TTL-bound, single-flight cache.
//! - [`inject`]: (daemon) how messages enter: the SMTP listener, the HTTP API, one intake.
//! - [`auth`]: (daemon) SMTP AUTH on injection: the users file (PBKDF2), SASL PLAIN.
//! - [`cluster`]: (daemon) several nodes sharing their limits through Redis.
//! - [`daemon`]: `mxpipe serve`: injection, spool, queue manager and engine together.
//! - [`config`]: the daemon's TOML configuration (`mxpipe.example.toml` documents it).
//! - [`logging`]: the daemon's own log (`tracing` events; text or JSON on stderr).
//! - [`egress`]: egress sources and pools; [`egress::warmup`] caps new sources' daily sends.
//! - [`dsn`]: RFC 3464 delivery status notifications (bounces) for the daemon.
//! - [`dnsserver`]: an in-process authoritative DNS server (tests and `mxpipe demo`).
//! - [`queue`]: (daemon) the durable spool: a segment log with group commit and crash recovery.
//! - [`schedule`]: retry backoff, reply classification, destination suspension, timers.
//! - [`policy`]: the MX-prefix TLS policy, a pure function of resolved facts, and what was learned.
//! - [`requiretls`]: what a message asks of TLS (RFC 8689: REQUIRETLS, `TLS-Required: No`).
//! - [`reply`]: SMTP reply and EHLO-capability parsing (pure, shared by every client).
//! - [`tls`]: rustls configuration, certificates, the client session store.
//! - [`tlsrpt`]: SMTP TLS Reporting (RFC 8460): session counters, daily reports, their delivery.
//! - [`smtp_server`]: the SMTP server core (listener, limits, STARTTLS, AUTH, DATA/BDAT).
//! - [`sink`]: the server core's presets for tests and capacity benchmarks (faults, mail dir).
//! - [`sys`]: small operating-system helpers (file-descriptor limit, CPU time).
//! - [`value`]: the configuration's value types (durations, CIDRs, MX patterns), leaf modules.

#![warn(missing_docs)]

pub mod address;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod dkim;
pub mod dnssec;
pub mod dnsserver;
pub mod dsn;
pub mod egress;
pub mod engine;
pub mod header;
pub mod inject;
pub mod logging;
pub mod outcome;
pub mod policy;
pub mod pool;
pub mod queue;
pub mod reply;
pub mod requiretls;
pub mod resolve;
pub mod schedule;
pub mod session;
pub mod sink;
pub mod smtp_server;
pub mod sys;
pub mod tls;
pub mod tlsrpt;
pub mod value;
