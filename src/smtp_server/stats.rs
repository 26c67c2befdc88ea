//! The SMTP server's counters: plain relaxed atomics, one set per server, bumped once per event. They
//! are read only for reports, so no ordering between them is promised; a snapshot taken
//! after shutdown is exact.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde::Serialize;

use super::PortKind;

#[derive(Debug, Default)]
pub(crate) struct PortCounters {
    pub connections: AtomicU64,
    pub handshakes_full: AtomicU64,
    pub handshakes_resumed: AtomicU64,
    pub handshake_failures: AtomicU64,
}

/// Live counters, shared by every session of one sink.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub ports: [PortCounters; 2],
    pub messages: AtomicU64,
    pub requiretls_messages: AtomicU64,
    pub smtputf8_messages: AtomicU64,
    pub recipients: AtomicU64,
    pub bytes: AtomicU64,
    pub fault_temp: AtomicU64,
    pub fault_perm: AtomicU64,
    pub fault_rate_limit: AtomicU64,
    pub fault_drop: AtomicU64,
    pub rejected_busy: AtomicU64,
    pub rejected_per_ip: AtomicU64,
    pub rejected_clients: AtomicU64,
    pub timeouts: AtomicU64,
    pub bad_commands: AtomicU64,
    pub store_errors: AtomicU64,
    pub sessions_active: AtomicU64,
    pub sessions_aborted: AtomicU64,
    pub commands: AtomicU64,
    pub command_batches: AtomicU64,
    pub auth_ok: AtomicU64,
    pub auth_failed: AtomicU64,
    /// Messages per (client address, EHLO name): which source delivered what, for the tests
    /// of egress sources. One uncontended lock per message.
    /// By address, then (EHLO name, messages): a hit allocates nothing.
    pub peers: Mutex<PeerCounts>,
    pub peers_len: AtomicU64,
    pub peers_overflow: AtomicU64,
}

/// Messages by client address, then by EHLO name.
pub(crate) type PeerCounts = HashMap<Option<IpAddr>, Vec<(String, u64)>>;

/// Distinct (client address, EHLO name) pairs recorded; messages of more are only counted.
pub const MAX_PEERS: usize = 1024;

/// Messages accepted from one client address under one EHLO name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PeerStat {
    /// The client's address (`None` when the socket could not tell).
    pub ip: Option<IpAddr>,
    /// The EHLO (or HELO) name it gave; empty if none.
    pub helo: String,
    /// Messages accepted.
    pub messages: u64,
}

/// [`PeerStat`]s, busiest first, and the messages of pairs beyond [`MAX_PEERS`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PeerTable {
    /// One entry per pair.
    pub peers: Vec<PeerStat>,
    /// Messages from pairs that did not fit in the table.
    pub overflow: u64,
}

impl PeerTable {
    /// Messages from `ip` (any EHLO name).
    pub fn messages_from(&self, ip: IpAddr) -> u64 {
        self.peers.iter().filter(|p| p.ip == Some(ip)).map(|p| p.messages).sum()
    }
}

impl Stats {
    pub fn peer_message(&self, ip: Option<IpAddr>, helo: Option<&str>) {
        let helo = helo.unwrap_or("");
        let mut t = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = t.get_mut(&ip).and_then(|v| v.iter_mut().find(|(h, _)| h == helo)) {
            n.1 += 1;
        } else if self.peers_len.load(Ordering::Relaxed) < MAX_PEERS as u64 {
            self.peers_len.fetch_add(1, Ordering::Relaxed);
            t.entry(ip).or_default().push((helo.to_string(), 1));
        } else {
            self.peers_overflow.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn peers(&self) -> PeerTable {
        let t = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        let mut peers: Vec<PeerStat> =
            t.iter().flat_map(|(ip, v)| v.iter().map(|(helo, n)| PeerStat { ip: *ip, helo: helo.clone(), messages: *n })).collect();
        peers.sort_by(|a, b| b.messages.cmp(&a.messages).then_with(|| a.ip.cmp(&b.ip)).then_with(|| a.helo.cmp(&b.helo)));
        PeerTable { peers, overflow: self.peers_overflow.load(Ordering::Relaxed) }
    }

    pub fn port(&self, kind: PortKind) -> &PortCounters {
        &self.ports[kind as usize]
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let port = |p: &PortCounters| PortStats {
            connections: l(&p.connections),
            handshakes_full: l(&p.handshakes_full),
            handshakes_resumed: l(&p.handshakes_resumed),
            handshake_failures: l(&p.handshake_failures),
        };
        StatsSnapshot {
            starttls: port(&self.ports[PortKind::StartTls as usize]),
            implicit: port(&self.ports[PortKind::Implicit as usize]),
            messages: l(&self.messages),
            requiretls_messages: l(&self.requiretls_messages),
            smtputf8_messages: l(&self.smtputf8_messages),
            recipients: l(&self.recipients),
            bytes: l(&self.bytes),
            faults: FaultStats {
                temp_fail: l(&self.fault_temp),
                perm_fail: l(&self.fault_perm),
                rate_limited: l(&self.fault_rate_limit),
                dropped: l(&self.fault_drop),
            },
            rejected_busy: l(&self.rejected_busy),
            rejected_per_ip: l(&self.rejected_per_ip),
            rejected_clients: l(&self.rejected_clients),
            timeouts: l(&self.timeouts),
            bad_commands: l(&self.bad_commands),
            store_errors: l(&self.store_errors),
            sessions_active: l(&self.sessions_active),
            sessions_aborted: l(&self.sessions_aborted),
            commands: l(&self.commands),
            command_batches: l(&self.command_batches),
            auth_ok: l(&self.auth_ok),
            auth_failed: l(&self.auth_failed),
        }
    }
}

pub(crate) fn inc(a: &AtomicU64) {
    a.fetch_add(1, Ordering::Relaxed);
}

/// Counters of one port kind (all listeners of that kind together).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PortStats {
    /// TCP connections accepted (including those refused for the connection limit).
    pub connections: u64,
    /// TLS handshakes completed without resuming a session.
    pub handshakes_full: u64,
    /// TLS handshakes that resumed a session (ticket or session id).
    pub handshakes_resumed: u64,
    /// TLS handshakes that failed or timed out.
    pub handshake_failures: u64,
}

impl PortStats {
    /// Completed handshakes, full and resumed.
    pub fn handshakes(&self) -> u64 {
        self.handshakes_full + self.handshakes_resumed
    }
}

/// Injected faults, as the client saw them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct FaultStats {
    /// RCPT answered 451 by `--temp-fail-rate`.
    pub temp_fail: u64,
    /// RCPT answered 550 by `--perm-fail-rate`.
    pub perm_fail: u64,
    /// RCPT answered 451 4.7.28 by `--rate-limit-rate`.
    pub rate_limited: u64,
    /// Connections closed at end of data, without a reply, by `--drop-rate`.
    pub dropped: u64,
}

/// A point-in-time copy of the server's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StatsSnapshot {
    /// Counters of the STARTTLS port(s).
    pub starttls: PortStats,
    /// Counters of the implicit-TLS port(s).
    pub implicit: PortStats,
    /// Messages accepted (final 250 after DATA or BDAT LAST).
    pub messages: u64,
    /// Of those, messages sent with `MAIL FROM:<..> REQUIRETLS` (RFC 8689).
    pub requiretls_messages: u64,
    /// Of those, messages sent with `MAIL FROM:<..> SMTPUTF8` (RFC 6531).
    pub smtputf8_messages: u64,
    /// Recipients of accepted messages.
    pub recipients: u64,
    /// Message bytes accepted (after dot-unstuffing).
    pub bytes: u64,
    /// How many of each injected fault the clients got.
    pub faults: FaultStats,
    /// Connections refused with 421 because the connection limit was reached.
    pub rejected_busy: u64,
    /// Connections refused with 421 because their client (IPv4 address, IPv6 /64) had
    /// `max_conns_per_ip` open.
    pub rejected_per_ip: u64,
    /// Connections refused with 554 5.7.1 because the client is not in an allowed network.
    pub rejected_clients: u64,
    /// Sessions closed with 421 because the client was idle too long, or the session's time
    /// limit (or its time to AUTH) ran out.
    pub timeouts: u64,
    /// Commands answered 5xx as unrecognised, malformed, overlong or out of sequence.
    pub bad_commands: u64,
    /// Messages the acceptor refused (the spool, or writing them to `--mail-dir`, failed).
    pub store_errors: u64,
    /// Sessions open when the snapshot was taken.
    pub sessions_active: u64,
    /// Sessions cut off at the end of the shutdown grace period.
    pub sessions_aborted: u64,
    /// SMTP commands received.
    pub commands: u64,
    /// Reads that brought at least one command: `commands / command_batches` above 1 shows
    /// the clients pipelining.
    pub command_batches: u64,
    /// AUTH that succeeded, and that failed (wrong credentials, or no check slot in time).
    pub auth_ok: u64,
    /// AUTH attempts that failed: wrong credentials, or no check slot in time.
    pub auth_failed: u64,
}

impl StatsSnapshot {
    /// The counters of one port kind.
    pub fn port(&self, kind: PortKind) -> &PortStats {
        match kind {
            PortKind::StartTls => &self.starttls,
            PortKind::Implicit => &self.implicit,
        }
    }

    /// A human-readable summary, one fact per line.
    pub fn to_table(&self) -> String {
        let mut s = String::new();
        s.push_str("port      connections  full  resumed  tls-failures\n");
        for (name, p) in [("starttls", &self.starttls), ("implicit", &self.implicit)] {
            s.push_str(&format!(
                "{name:<9} {:>11} {:>5} {:>8} {:>13}\n",
                p.connections, p.handshakes_full, p.handshakes_resumed, p.handshake_failures
            ));
        }
        s.push_str(&format!(
            "messages {}  requiretls {}  smtputf8 {}  recipients {}  bytes {}\n\
             faults: temp-fail {}  perm-fail {}  dropped {}\n\
             refused-busy {}  refused-per-client {}  timeouts {}  bad-commands {}  store-errors {}  aborted-sessions {}\n",
            self.messages,
            self.requiretls_messages,
            self.smtputf8_messages,
            self.recipients,
            self.bytes,
            self.faults.temp_fail,
            self.faults.perm_fail,
            self.faults.dropped,
            self.rejected_busy,
            self.rejected_per_ip,
            self.timeouts,
            self.bad_commands,
            self.store_errors,
            self.sessions_aborted
        ));
        s
    }
}
