//! Suspensions shared by every node: a 421 or a rate-limit reply seen by one node suspends
//! the destination for all. Each suspension is a name (a destination, or a destination and
//! source) with an end, in one sorted set in Redis; every node reads the set each `poll` and
//! answers [`Cluster::suspended`] from its copy, without a call. Suspensions set while Redis
//! is down are kept locally and written when it returns.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{lock, Cluster};

/// Most suspensions read per poll.
const MAX_SUSPENSIONS: usize = 10_000;
/// Longest reason kept.
const MAX_REASON: usize = 200;

/// A suspension in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suspension {
    /// What is suspended (as the caller named it).
    pub name: String,
    /// Until when.
    pub until: Instant,
    /// Why (the reply that caused it), shortened.
    pub reason: String,
}

/// The node's copy of the suspensions, what is waiting to be written, and a counter that
/// moves whenever the copy changes.
#[derive(Debug)]
pub(crate) struct SuspState {
    map: Mutex<HashMap<String, (Instant, String)>>,
    /// Set or cleared while Redis was down: (name, until or None to clear, reason).
    pending: Mutex<Vec<(String, Option<Instant>, String)>>,
    changes: tokio::sync::watch::Sender<u64>,
}

impl Default for SuspState {
    fn default() -> SuspState {
        SuspState { map: Mutex::default(), pending: Mutex::default(), changes: tokio::sync::watch::Sender::new(0) }
    }
}

impl SuspState {
    fn changed(&self) {
        self.changes.send_modify(|n| *n += 1);
    }
}

fn short(reason: &str) -> String {
    let mut end = reason.len().min(MAX_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_string()
}

impl Cluster {
    /// Suspend `name` for `dur` on every node (a longer suspension already set stays).
    pub async fn suspend(&self, name: &str, dur: Duration, reason: &str) {
        let until = Instant::now() + dur;
        let reason = short(reason);
        {
            let mut m = lock(&self.susp.map);
            let e = m.entry(name.to_string()).or_insert((until, reason.clone()));
            if e.0 < until {
                *e = (until, reason.clone());
            }
        }
        self.susp.changed();
        if !self.write_suspension(name, Some(dur), &reason).await {
            lock(&self.susp.pending).push((name.to_string(), Some(until), reason));
        }
    }

    /// [`Cluster::suspend`] from a thread without a runtime (the queue manager): this node's
    /// copy at once, Redis from the cluster's runtime.
    pub fn suspend_soon(self: &std::sync::Arc<Self>, name: &str, dur: Duration, reason: &str) {
        let (c, name, reason) = (self.clone(), name.to_string(), reason.to_string());
        {
            let until = Instant::now() + dur;
            let mut m = lock(&self.susp.map);
            let e = m.entry(name.clone()).or_insert((until, short(&reason)));
            if e.0 < until {
                *e = (until, short(&reason));
            }
        }
        self.runtime.spawn(async move { c.suspend(&name, dur, &reason).await });
    }

    /// [`Cluster::unsuspend`] from a thread without a runtime.
    pub fn unsuspend_soon(self: &std::sync::Arc<Self>, name: &str) {
        lock(&self.susp.map).remove(name);
        let (c, name) = (self.clone(), name.to_string());
        self.runtime.spawn(async move { c.unsuspend(&name).await });
    }

    /// End the suspension of `name` on every node.
    pub async fn unsuspend(&self, name: &str) {
        lock(&self.susp.map).remove(name);
        self.susp.changed();
        if !self.write_suspension(name, None, "").await {
            lock(&self.susp.pending).push((name.to_string(), None, String::new()));
        }
    }

    async fn write_suspension(&self, name: &str, dur: Option<Duration>, reason: &str) -> bool {
        let (index, why) = self.keys.suspensions();
        let inv = match dur {
            Some(d) => {
                let mut i = self.scripts.suspend.key(&index);
                i.key(&why).arg(name).arg(d.as_millis().max(1) as u64).arg(reason);
                i
            }
            None => {
                let mut i = self.scripts.unsuspend.key(&index);
                i.key(&why).arg(name);
                i
            }
        };
        self.call::<i64>(&inv).await.is_some()
    }

    /// Until when `name` is suspended, if it is now (from this node's copy: no call).
    pub fn suspended(&self, name: &str) -> Option<Instant> {
        let m = lock(&self.susp.map);
        m.get(name).map(|e| e.0).filter(|&u| u > Instant::now())
    }

    /// Every suspension in force, as this node knows them.
    pub fn suspensions(&self) -> Vec<Suspension> {
        let now = Instant::now();
        let m = lock(&self.susp.map);
        let mut v: Vec<Suspension> =
            m.iter().filter(|(_, e)| e.0 > now).map(|(n, e)| Suspension { name: n.clone(), until: e.0, reason: e.1.clone() }).collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// A receiver that sees a new number whenever this node's copy of the suspensions
    /// changed (set here, or read from Redis).
    pub fn suspension_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.susp.changes.subscribe()
    }

    /// Read the suspensions from Redis into this node's copy.
    pub(super) async fn poll_suspensions(&self) {
        let (index, why) = self.keys.suspensions();
        let mut inv = self.scripts.suspensions.key(&index);
        inv.key(&why).arg(MAX_SUSPENSIONS);
        let Some(flat) = self.call::<Vec<String>>(&inv).await else { return };
        let now = Instant::now();
        let fresh: HashMap<String, (Instant, String)> = flat
            .chunks_exact(3)
            .filter_map(|c| {
                let ms: u64 = c[1].parse().ok()?;
                Some((c[0].clone(), (now + Duration::from_millis(ms), c[2].clone())))
            })
            .collect();
        let mut m = lock(&self.susp.map);
        // Changed: a name came or went (an end moved by a few ms of polling is no change).
        let same = m.len() == fresh.len() && fresh.keys().all(|k| m.contains_key(k));
        *m = fresh;
        drop(m);
        if !same {
            self.susp.changed();
        }
    }

    /// Write what was set or cleared while Redis was down (suspensions still in force).
    pub(super) async fn push_pending_suspensions(&self) {
        let pending = std::mem::take(&mut *lock(&self.susp.pending));
        let now = Instant::now();
        for (name, until, reason) in pending {
            match until {
                Some(u) if u > now => {
                    self.write_suspension(&name, Some(u - now), &reason).await;
                }
                Some(_) => {}
                None => {
                    self.write_suspension(&name, None, "").await;
                }
            }
        }
    }
}
