//! A client-side TLS session store built for an MTA.
//!
//! rustls' default `ClientSessionMemoryCache::new(n)` remembers n/8 servers with at most eight
//! single-use TLS 1.3 tickets each, all behind one mutex. An MTA keeps tens of connections
//! open to one destination and talks to tens of thousands of destinations, so with the default
//! most handshakes to a busy host find the ticket pool empty and go full. This store:
//! - keeps a ticket pool per server name whose depth is set by the caller (at least the
//!   connection limit per destination, so every concurrent connection can resume);
//! - is split into independently locked shards, so threads rarely meet on a lock;
//! - bounds the number of servers, evicting the least recently inserted ones;
//! - counts hits and misses, so a report can say how often resumption was possible.
//!
//! Tickets are keyed by `ServerName` only (that is how rustls asks): ports 25 and 26 of one
//! host, and every address of one MX name, share one pool. That is deliberate: the TLS
//! session belongs to the server identity that was verified, which is the name.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use rustls::client::{ClientSessionStore, Tls12ClientSessionValue, Tls13ClientSessionValue};
use rustls::NamedGroup;
use rustls_pki_types::ServerName;

#[derive(Default)]
struct ServerEntry {
    kx_hint: Option<NamedGroup>,
    tls12: Option<Tls12ClientSessionValue>,
    tls13: VecDeque<Tls13ClientSessionValue>,
    /// Insertion order stamp, for eviction.
    stamp: u64,
}

struct Shard {
    servers: HashMap<ServerName<'static>, ServerEntry>,
    clock: u64,
}

/// Counters kept by a [`TicketStore`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct StoreStats {
    /// A TLS 1.3 ticket was asked for and one was there.
    pub tls13_hits: u64,
    /// A TLS 1.3 ticket was asked for and the pool was empty.
    pub tls13_misses: u64,
    /// A TLS 1.2 session was asked for and one was there.
    pub tls12_hits: u64,
    /// A TLS 1.2 session was asked for and none was there.
    pub tls12_misses: u64,
    /// Tickets received from servers.
    pub tickets_received: u64,
    /// Tickets dropped because a server's pool was full.
    pub tickets_dropped: u64,
}

/// A sharded, bounded session store with a deep ticket pool per server name.
pub struct TicketStore {
    shards: Box<[Mutex<Shard>]>,
    hasher: std::collections::hash_map::RandomState,
    max_servers_per_shard: usize,
    tickets_per_server: usize,
    tls13_hits: AtomicU64,
    tls13_misses: AtomicU64,
    tls12_hits: AtomicU64,
    tls12_misses: AtomicU64,
    tickets_received: AtomicU64,
    tickets_dropped: AtomicU64,
}

impl fmt::Debug for TicketStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Session secrets are never printed.
        f.debug_struct("TicketStore")
            .field("shards", &self.shards.len())
            .field("tickets_per_server", &self.tickets_per_server)
            .field("stats", &self.stats())
            .finish()
    }
}

impl TicketStore {
    /// A store for up to `max_servers` server names, keeping up to `tickets_per_server`
    /// TLS 1.3 tickets for each, split into `shards` locks (rounded up to at least 1).
    pub fn new(max_servers: usize, tickets_per_server: usize, shards: usize) -> TicketStore {
        let shards = shards.max(1);
        TicketStore {
            shards: (0..shards).map(|_| Mutex::new(Shard { servers: HashMap::new(), clock: 0 })).collect(),
            hasher: Default::default(),
            max_servers_per_shard: max_servers.div_ceil(shards).max(1),
            tickets_per_server: tickets_per_server.max(1),
            tls13_hits: AtomicU64::new(0),
            tls13_misses: AtomicU64::new(0),
            tls12_hits: AtomicU64::new(0),
            tls12_misses: AtomicU64::new(0),
            tickets_received: AtomicU64::new(0),
            tickets_dropped: AtomicU64::new(0),
        }
    }

    /// Current counters.
    pub fn stats(&self) -> StoreStats {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StoreStats {
            tls13_hits: l(&self.tls13_hits),
            tls13_misses: l(&self.tls13_misses),
            tls12_hits: l(&self.tls12_hits),
            tls12_misses: l(&self.tls12_misses),
            tickets_received: l(&self.tickets_received),
            tickets_dropped: l(&self.tickets_dropped),
        }
    }

    /// How many TLS 1.3 tickets are pooled for `name` right now.
    pub fn tickets_for(&self, name: &ServerName<'_>) -> usize {
        self.with_shard(name, |s| s.servers.get(name).map_or(0, |e| e.tls13.len()))
    }

    fn shard_of(&self, name: &ServerName<'_>) -> &Mutex<Shard> {
        &self.shards[(self.hasher.hash_one(name) as usize) % self.shards.len()]
    }

    fn with_shard<R>(&self, name: &ServerName<'_>, f: impl FnOnce(&mut Shard) -> R) -> R {
        // A poisoned lock only means another thread panicked mid-update of a cache; the data
        // is still a valid cache, so keep using it rather than spreading the panic.
        let mut guard = self.shard_of(name).lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }

    fn with_entry<R>(&self, name: ServerName<'static>, f: impl FnOnce(&mut ServerEntry) -> R) -> R {
        let max = self.max_servers_per_shard;
        self.with_shard(&name.clone(), |shard| {
            shard.clock += 1;
            let stamp = shard.clock;
            if !shard.servers.contains_key(&name) && shard.servers.len() >= max {
                // Evict the entry inserted longest ago. O(n) in the shard, but only on insert
                // of a new server into a full shard, which a steady workload rarely does.
                if let Some(old) = shard.servers.iter().min_by_key(|(_, e)| e.stamp).map(|(k, _)| k.clone()) {
                    shard.servers.remove(&old);
                }
            }
            let entry = shard.servers.entry(name).or_default();
            entry.stamp = stamp;
            f(entry)
        })
    }
}

impl ClientSessionStore for TicketStore {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        self.with_entry(server_name, |e| e.kx_hint = Some(group));
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        self.with_shard(server_name, |s| s.servers.get(server_name).and_then(|e| e.kx_hint))
    }

    fn set_tls12_session(&self, server_name: ServerName<'static>, value: Tls12ClientSessionValue) {
        self.with_entry(server_name, |e| e.tls12 = Some(value));
    }

    fn tls12_session(&self, server_name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        let v = self.with_shard(server_name, |s| s.servers.get(server_name).and_then(|e| e.tls12.clone()));
        let c = if v.is_some() { &self.tls12_hits } else { &self.tls12_misses };
        c.fetch_add(1, Ordering::Relaxed);
        v
    }

    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        self.with_shard(server_name, |s| {
            if let Some(e) = s.servers.get_mut(server_name) {
                e.tls12 = None;
            }
        });
    }

    fn insert_tls13_ticket(&self, server_name: ServerName<'static>, value: Tls13ClientSessionValue) {
        let depth = self.tickets_per_server;
        let dropped = self.with_entry(server_name, |e| {
            let dropped = e.tls13.len() >= depth;
            if dropped {
                // Keep the newest tickets: older ones expire first.
                e.tls13.pop_front();
            }
            e.tls13.push_back(value);
            dropped
        });
        self.tickets_received.fetch_add(1, Ordering::Relaxed);
        if dropped {
            self.tickets_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn take_tls13_ticket(&self, server_name: &ServerName<'static>) -> Option<Tls13ClientSessionValue> {
        // Newest first: it has the longest life left.
        let v = self.with_shard(server_name, |s| s.servers.get_mut(server_name).and_then(|e| e.tls13.pop_back()));
        let c = if v.is_some() { &self.tls13_hits } else { &self.tls13_misses };
        c.fetch_add(1, Ordering::Relaxed);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_bound_evicts_oldest_and_keeps_counting() {
        let store = TicketStore::new(2, 4, 1);
        let a = ServerName::try_from("a.example").unwrap();
        let b = ServerName::try_from("b.example").unwrap();
        let c = ServerName::try_from("c.example").unwrap();
        store.set_kx_hint(a.clone(), NamedGroup::X25519);
        store.set_kx_hint(b.clone(), NamedGroup::X25519);
        store.set_kx_hint(c.clone(), NamedGroup::secp256r1);
        assert_eq!(store.kx_hint(&a), None, "oldest server evicted");
        assert_eq!(store.kx_hint(&c), Some(NamedGroup::secp256r1));
        assert!(store.take_tls13_ticket(&b).is_none());
        assert_eq!(store.stats().tls13_misses, 1);
    }
}
