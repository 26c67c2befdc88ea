//! Connection leases: a connection limit shared by every node. Each open connection holds
//! a lease, an id in a sorted set in Redis with an expiry; the node renews its leases every
//! third of the TTL, so a node that dies frees its connections within the TTL.
//!
//! A node takes up to `lease_batch` leases in one call (the one it needs and spares for its
//! next connections) and gives back spares unused for `spare_hold`. While Redis is down it
//! holds at most its share: it opens no connection past it, and a connection that puts it
//! over its share (opened on shared leases before Redis went away) gives its place up before
//! its next message ([`Lease::yield_over_share`]). When Redis returns, the connections opened
//! meanwhile are registered ("adopted") so the shared count is true again.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use super::fallback::share;
use super::{lock, Cluster};

/// One node's view of one shared connection limit.
#[derive(Debug, Default)]
pub(crate) struct LeaseState {
    /// Leases of open connections.
    pub held: HashSet<String>,
    /// Leases taken but unused, since when.
    pub spare: Vec<(String, Instant)>,
    /// Connections opened on the local share while Redis was down.
    pub local: usize,
    /// Leases registered for those connections once Redis came back.
    pub adopted: Vec<String>,
}

/// One connection's place under a shared limit; dropping it frees the place (the lease
/// becomes a spare, given back to Redis soon unless this node reuses it).
#[derive(Debug)]
pub struct Lease {
    cluster: Arc<Cluster>,
    name: String,
    /// The limit it is taken under.
    limit: usize,
    /// The lease id in Redis; `None` for a place in the local share (Redis was down).
    id: Option<String>,
    /// Given up by [`Lease::yield_over_share`]: its place is no longer counted.
    yielded: bool,
}

impl Lease {
    /// Whether the lease is shared (in Redis), not a place in the local share.
    pub fn is_shared(&self) -> bool {
        self.id.is_some()
    }

    /// While Redis is down, whether this node holds more connections under the lease's limit
    /// than its share; if so the lease gives its place up at once (so that of several
    /// connections asking together only the excess goes) and its connection must close
    /// before its next message. A shared lease given up is forgotten: unrenewed, it expires
    /// in Redis within the TTL.
    pub fn yield_over_share(&mut self) -> bool {
        if self.yielded || !self.cluster.is_down() {
            return self.yielded;
        }
        let mut m = lock(&self.cluster.leases);
        let Some(st) = m.get_mut(&self.name) else { return false };
        if ((st.held.len() + st.local) as u64) <= share(self.limit as u64, self.cluster.live_nodes()) {
            return false;
        }
        match &self.id {
            Some(id) => {
                st.held.remove(id);
            }
            None => st.local = st.local.saturating_sub(1),
        }
        self.yielded = true;
        self.cluster.leases_yielded.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        true
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.yielded {
            return;
        }
        let mut m = lock(&self.cluster.leases);
        let Some(st) = m.get_mut(&self.name) else { return };
        let now = Instant::now();
        match self.id.take() {
            Some(id) => {
                st.held.remove(&id);
                st.spare.push((id, now));
            }
            None => {
                st.local = st.local.saturating_sub(1);
                if let Some(a) = st.adopted.pop() {
                    st.spare.push((a, now));
                }
            }
        }
    }
}

impl Cluster {
    /// A place under the shared connection limit `name` of `limit` connections, or `None`
    /// when the cluster is at the limit (the caller waits and tries again). Redis is asked
    /// only when this node has no spare lease.
    pub async fn try_lease(self: &Arc<Self>, name: &str, limit: usize) -> Option<Lease> {
        let limit = limit.max(1);
        let lease = |id| Lease { cluster: self.clone(), name: name.to_string(), limit, id, yielded: false };
        {
            let mut m = lock(&self.leases);
            let st = m.entry(name.to_string()).or_default();
            if !self.is_down() {
                if let Some((id, _)) = st.spare.pop() {
                    st.held.insert(id.clone());
                    return Some(lease(Some(id)));
                }
            }
        }
        if !self.is_down() {
            let live = self.live_nodes();
            // The one needed and spares, never more than this node's share of the limit.
            let want = (self.cfg.lease_batch as usize).min((limit / live).max(1)).max(1);
            let ids: Vec<String> = (0..want).map(|_| self.new_id()).collect();
            let key = self.keys.conn(name);
            let mut inv = self.scripts.lease_take.key(&key);
            inv.arg(limit).arg(self.cfg.lease_ttl.as_millis() as u64);
            for id in &ids {
                inv.arg(id);
            }
            if let Some(n) = self.call::<usize>(&inv).await {
                let mut m = lock(&self.leases);
                let st = m.entry(name.to_string()).or_default();
                let mut got = ids.into_iter().take(n);
                let first = got.next()?;
                let now = Instant::now();
                st.spare.extend(got.map(|id| (id, now)));
                st.held.insert(first.clone());
                return Some(lease(Some(first)));
            }
        }
        // Redis is down: this node's share, counting the shared leases it still holds.
        let mut m = lock(&self.leases);
        let st = m.entry(name.to_string()).or_default();
        if ((st.held.len() + st.local) as u64) < share(limit as u64, self.live_nodes()) {
            st.local += 1;
            return Some(lease(None));
        }
        None
    }

    /// Connections this node holds under limit `name` (shared leases and local places).
    pub fn leases_held(&self, name: &str) -> usize {
        lock(&self.leases).get(name).map_or(0, |st| st.held.len() + st.local)
    }

    /// Give back spare leases unused since `spare_hold`.
    pub(super) async fn release_spare_leases(&self, now: Instant) {
        let hold = self.cfg.spare_hold;
        let old: Vec<(String, Vec<String>)> = {
            let mut m = lock(&self.leases);
            let mut out = Vec::new();
            m.retain(|name, st| {
                let (gone, keep): (Vec<_>, Vec<_>) = st.spare.drain(..).partition(|(_, at)| now.duration_since(*at) >= hold);
                st.spare = keep;
                if !gone.is_empty() {
                    out.push((name.clone(), gone.into_iter().map(|(id, _)| id).collect()));
                }
                !(st.held.is_empty() && st.spare.is_empty() && st.local == 0 && st.adopted.is_empty())
            });
            out
        };
        for (name, ids) in old {
            self.release_ids(&name, &ids).await;
        }
    }

    pub(super) async fn release_ids(&self, name: &str, ids: &[String]) {
        if ids.is_empty() {
            return;
        }
        let key = self.keys.conn(name);
        let mut inv = self.scripts.lease_release.key(&key);
        for id in ids {
            inv.arg(id);
        }
        let _: Option<i64> = self.call(&inv).await;
    }

    /// Renew every lease this node holds (each limit one call).
    pub(super) async fn renew_leases(&self) {
        let all: Vec<(String, Vec<String>)> = lock(&self.leases)
            .iter()
            .map(|(name, st)| {
                let mut ids: Vec<String> = st.held.iter().cloned().collect();
                ids.extend(st.spare.iter().map(|(id, _)| id.clone()));
                ids.extend(st.adopted.iter().cloned());
                (name.clone(), ids)
            })
            .filter(|(_, ids)| !ids.is_empty())
            .collect();
        for (name, ids) in all {
            let key = self.keys.conn(&name);
            let mut inv = self.scripts.lease_renew.key(&key);
            inv.arg(self.cfg.lease_ttl.as_millis() as u64);
            for id in &ids {
                inv.arg(id);
            }
            if self.call::<i64>(&inv).await.is_none() {
                return;
            }
        }
    }

    /// Redis is back: give each connection opened on the local share a lease id, registered
    /// at the next renewal.
    pub(super) fn adopt_local_leases(&self) {
        let mut m = lock(&self.leases);
        for st in m.values_mut() {
            while st.adopted.len() < st.local {
                st.adopted.push(self.new_id());
            }
        }
    }
}
