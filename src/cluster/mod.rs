//! Cluster mode: several mxpipe nodes, each with its own spool, share what receivers enforce
//! (connections, message rates, suspensions after a 421, warm-up caps) through one Redis.
//!
//! Every shared limit is one Lua script (in `scripts.rs`), atomic in Redis and keyed with a hash
//! tag so a Redis Cluster can hold it. A node asks Redis in small batches: connection leases
//! ([`lease`]), rate tokens as reserved send times ([`rate`]) and warm-up counts ([`count`])
//! come a few at a time and what is not used goes back; suspensions ([`suspend`]) and the
//! node registry ([`registry`]) are read by polling. One background task per node renews,
//! returns, polls and sends the heartbeat.
//!
//! Redis down or slow (a call not answered within `timeout`): the node falls back to its
//! share of each limit, the limit divided by the last known number of live nodes and at
//! least 1 ([`fallback`]), says so in its log and in [`ClusterStats`], and probes Redis until
//! it answers again; then the shared limits resume. Never "no limit".
//!
//! This module must not know the engine: it deals in limit names and numbers only.

mod config;
pub mod count;
pub mod fallback;
pub mod lease;
pub mod rate;
pub mod registry;
mod scripts;
pub mod suspend;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::FromRedisValue;

pub use config::ClusterConfig;
pub use lease::Lease;
pub use registry::NodeInfo;

use scripts::{Keys, Scripts};

/// How often the background task looks at its spares, renewals and timers.
const TICK: Duration = Duration::from_millis(50);
/// How often Redis is probed while it is down.
const PROBE_EVERY: Duration = Duration::from_millis(500);

/// Why the cluster could not start, or a call on the whole cluster failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The `[cluster]` section is not valid.
    #[error("{0}")]
    Config(String),
    /// Redis did not answer (within the timeout) or answered with an error.
    #[error("Redis unavailable: {0}")]
    Unavailable(String),
}

/// What the cluster client did, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClusterStats {
    /// Calls sent to Redis (script invocations and probes).
    pub redis_calls: u64,
    /// Calls that failed or timed out.
    pub redis_failures: u64,
    /// Times the node fell back to its local shares.
    pub fallbacks: u64,
    /// The node runs on its local shares now (Redis down or slow).
    pub fallback: bool,
    /// Live nodes as last counted (this one included).
    pub live_nodes: usize,
    /// Connections closed while Redis was down because the node held more than its share.
    pub leases_yielded: u64,
}

/// The `mxpipe_cluster_*` series (Prometheus text) from `s`.
pub fn metrics(s: &ClusterStats) -> String {
    format!(
        "# HELP mxpipe_cluster_redis_calls_total Calls this node sent to Redis.\n\
         # TYPE mxpipe_cluster_redis_calls_total counter\nmxpipe_cluster_redis_calls_total {}\n\
         # HELP mxpipe_cluster_redis_failures_total Redis calls that failed or timed out.\n\
         # TYPE mxpipe_cluster_redis_failures_total counter\nmxpipe_cluster_redis_failures_total {}\n\
         # HELP mxpipe_cluster_fallbacks_total Times this node fell back to its local shares.\n\
         # TYPE mxpipe_cluster_fallbacks_total counter\nmxpipe_cluster_fallbacks_total {}\n\
         # HELP mxpipe_cluster_fallback 1 while this node runs on its local shares (Redis down or slow).\n\
         # TYPE mxpipe_cluster_fallback gauge\nmxpipe_cluster_fallback {}\n\
         # HELP mxpipe_cluster_live_nodes Live nodes as last counted.\n\
         # TYPE mxpipe_cluster_live_nodes gauge\nmxpipe_cluster_live_nodes {}\n\
         # HELP mxpipe_cluster_leases_yielded_total Connections closed while Redis was down because this node held more than its share.\n\
         # TYPE mxpipe_cluster_leases_yielded_total counter\nmxpipe_cluster_leases_yielded_total {}\n",
        s.redis_calls,
        s.redis_failures,
        s.fallbacks,
        u8::from(s.fallback),
        s.live_nodes,
        s.leases_yielded
    )
}

/// One node's client of the shared limits. Build it with [`Cluster::start`]; share the `Arc`.
pub struct Cluster {
    cfg: ClusterConfig,
    keys: Keys,
    scripts: Scripts,
    /// The URL in use (index into `cfg.redis`) and its connection.
    conn: Mutex<(usize, ConnectionManager)>,
    down: AtomicBool,
    live: AtomicUsize,
    calls: AtomicU64,
    failures: AtomicU64,
    fallbacks: AtomicU64,
    leases_yielded: AtomicU64,
    next_id: AtomicU64,
    leases: Mutex<HashMap<String, lease::LeaseState>>,
    rates: Mutex<HashMap<String, Arc<rate::RateEntry>>>,
    counts: Mutex<HashMap<String, count::CountState>>,
    /// Shared earliest values as last read: name → (value, when read).
    earliest: Mutex<HashMap<String, (u64, Instant)>>,
    susp: suspend::SuspState,
    summary: Mutex<String>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The runtime it started on: calls from threads without one (the queue manager) run there.
    runtime: tokio::runtime::Handle,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("node_id", &self.cfg.node_id).field("stats", &self.stats()).finish()
    }
}

/// Lock a mutex, also one a panicking thread left poisoned (the state stays usable: every
/// critical section leaves it consistent).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn manager(cfg: &ClusterConfig, url: &str) -> Result<ConnectionManager, ClusterError> {
    let client = redis::Client::open(url).map_err(|e| ClusterError::Config(format!("cluster.redis: {url:?}: {e}")))?;
    let mc = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(cfg.timeout))
        .set_response_timeout(Some(cfg.timeout))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500));
    ConnectionManager::new_lazy_with_config(client, mc).map_err(|e| ClusterError::Config(format!("cluster.redis: {url:?}: {e}")))
}

impl Cluster {
    /// Check `cfg`, set up the connection (lazily: Redis may be down at start, the node then
    /// starts on its local shares) and start the background task on the current runtime.
    pub async fn start(cfg: ClusterConfig) -> Result<Arc<Cluster>, ClusterError> {
        cfg.validate().map_err(ClusterError::Config)?;
        let conn = manager(&cfg, &cfg.redis[0])?;
        let c = Arc::new(Cluster {
            keys: Keys::new(&cfg.prefix),
            scripts: Scripts::new(),
            conn: Mutex::new((0, conn)),
            down: AtomicBool::new(false),
            live: AtomicUsize::new(cfg.expected_nodes.max(1)),
            calls: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            fallbacks: AtomicU64::new(0),
            leases_yielded: AtomicU64::new(0),
            next_id: AtomicU64::new(1),
            leases: Mutex::new(HashMap::new()),
            rates: Mutex::new(HashMap::new()),
            counts: Mutex::new(HashMap::new()),
            earliest: Mutex::new(HashMap::new()),
            susp: suspend::SuspState::default(),
            summary: Mutex::new("{}".into()),
            task: Mutex::new(None),
            runtime: tokio::runtime::Handle::current(),
            cfg,
        });
        // The first heartbeat now: it counts the live nodes before any limit is shared out,
        // and tells at once whether Redis is there.
        c.heartbeat().await;
        if !c.is_down() {
            c.poll_suspensions().await;
        }
        let task = tokio::spawn(maintain(Arc::downgrade(&c)));
        *lock(&c.task) = Some(task);
        Ok(c)
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &ClusterConfig {
        &self.cfg
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.cfg.node_id
    }

    /// Whether the node runs on its local shares now (Redis down or slow).
    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::Relaxed)
    }

    /// Live nodes as last counted (at least 1).
    pub fn live_nodes(&self) -> usize {
        self.live.load(Ordering::Relaxed).max(1)
    }

    /// The counters, for metrics.
    pub fn stats(&self) -> ClusterStats {
        ClusterStats {
            redis_calls: self.calls.load(Ordering::Relaxed),
            redis_failures: self.failures.load(Ordering::Relaxed),
            fallbacks: self.fallbacks.load(Ordering::Relaxed),
            fallback: self.is_down(),
            live_nodes: self.live_nodes(),
            leases_yielded: self.leases_yielded.load(Ordering::Relaxed),
        }
    }

    /// A fresh lease id, unique in the cluster (node id and a counter).
    fn new_id(&self) -> String {
        format!("{}:{}", self.cfg.node_id, self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    fn connection(&self) -> ConnectionManager {
        lock(&self.conn).1.clone()
    }

    /// Run one script; `None` when Redis failed or did not answer within the timeout (the
    /// node is then in fallback).
    async fn call<T: FromRedisValue>(&self, inv: &redis::ScriptInvocation<'_>) -> Option<T> {
        if self.is_down() {
            return None;
        }
        let mut con = self.connection();
        self.calls.fetch_add(1, Ordering::Relaxed);
        match tokio::time::timeout(self.cfg.timeout, inv.invoke_async::<T>(&mut con)).await {
            Ok(Ok(v)) => Some(v),
            Ok(Err(e)) => {
                self.went_down(&e.to_string());
                None
            }
            Err(_) => {
                self.went_down(&format!("no answer within {:?}", self.cfg.timeout));
                None
            }
        }
    }

    /// Run one plain command, as [`Cluster::call`].
    async fn command<T: FromRedisValue>(&self, cmd: &redis::Cmd) -> Option<T> {
        let mut con = self.connection();
        self.calls.fetch_add(1, Ordering::Relaxed);
        match tokio::time::timeout(self.cfg.timeout, cmd.query_async::<T>(&mut con)).await {
            Ok(Ok(v)) => Some(v),
            Ok(Err(e)) => {
                self.went_down(&e.to_string());
                None
            }
            Err(_) => {
                self.went_down(&format!("no answer within {:?}", self.cfg.timeout));
                None
            }
        }
    }

    fn went_down(&self, why: &str) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        if !self.down.swap(true, Ordering::Relaxed) {
            self.fallbacks.fetch_add(1, Ordering::Relaxed);
            let url = &self.cfg.redis[lock(&self.conn).0];
            tracing::warn!(
                node = %self.cfg.node_id,
                redis = %url,
                live_nodes = self.live_nodes(),
                error = why,
                "cluster: Redis unavailable; each limit falls back to this node's share (limit / live nodes)"
            );
            // Spare leases, tokens and counts are Redis's: they expire there by themselves.
            self.forget_spares();
        }
    }

    /// Probe Redis (PING) while down; on an answer the shared limits resume. With several
    /// URLs, a failed probe moves on to the next one.
    async fn probe(&self) {
        let mut con = self.connection();
        self.calls.fetch_add(1, Ordering::Relaxed);
        let ok = matches!(tokio::time::timeout(self.cfg.timeout, redis::cmd("PING").query_async::<String>(&mut con)).await, Ok(Ok(_)));
        if !ok {
            self.failures.fetch_add(1, Ordering::Relaxed);
            if self.cfg.redis.len() > 1 {
                let mut g = lock(&self.conn);
                let next = (g.0 + 1) % self.cfg.redis.len();
                if let Ok(m) = manager(&self.cfg, &self.cfg.redis[next]) {
                    *g = (next, m);
                }
            }
            return;
        }
        self.down.store(false, Ordering::Relaxed);
        let url = &self.cfg.redis[lock(&self.conn).0];
        tracing::info!(node = %self.cfg.node_id, redis = %url, "cluster: Redis answers again; shared limits resume");
        // What happened meanwhile, told to Redis: the connections opened on local shares
        // (so the shared count is true again) and the suspensions seen.
        self.adopt_local_leases();
        self.renew_leases().await;
        self.push_pending_suspensions().await;
        self.heartbeat().await;
        self.poll_suspensions().await;
    }

    fn forget_spares(&self) {
        for st in lock(&self.leases).values_mut() {
            st.spare.clear();
        }
        for e in lock(&self.rates).values() {
            lock(&e.st).slots.clear();
        }
        for st in lock(&self.counts).values_mut() {
            st.spare = 0;
        }
    }

    /// Stop the background task and give back everything held: leases (their connections
    /// are closing), unused tokens and counts; leave the node registry.
    pub async fn shutdown(&self) {
        if let Some(t) = lock(&self.task).take() {
            t.abort();
        }
        if self.is_down() {
            return;
        }
        let all: Vec<(String, Vec<String>)> = lock(&self.leases)
            .iter_mut()
            .map(|(k, st)| {
                let mut ids: Vec<String> = st.held.drain().collect();
                ids.extend(st.spare.drain(..).map(|(id, _)| id));
                ids.append(&mut st.adopted);
                (k.clone(), ids)
            })
            .collect();
        for (name, ids) in all {
            self.release_ids(&name, &ids).await;
        }
        self.return_rates(true).await;
        self.return_counts(true).await;
        let (index, summaries) = self.keys.nodes();
        let _: Option<i64> = self.command(redis::cmd("ZREM").arg(&index).arg(&self.cfg.node_id)).await;
        let _: Option<i64> = self.command(redis::cmd("HDEL").arg(&summaries).arg(&self.cfg.node_id)).await;
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(t) = lock(&self.task).take() {
            t.abort();
        }
    }
}

/// The node's background task: renews leases, gives back spares, polls suspensions, sends
/// the heartbeat, and probes Redis while it is down. Ends when the cluster is dropped.
async fn maintain(c: Weak<Cluster>) {
    let (renew_every, beat_every, poll_every) = match c.upgrade() {
        Some(c) => (c.cfg.lease_ttl / 3, c.cfg.heartbeat, c.cfg.poll),
        None => return,
    };
    let now = Instant::now();
    let (mut renewed, mut beat, mut polled, mut probed) = (now, now, now, now);
    loop {
        tokio::time::sleep(TICK).await;
        let Some(c) = c.upgrade() else { return };
        let now = Instant::now();
        if c.is_down() {
            if now.duration_since(probed) >= PROBE_EVERY {
                probed = now;
                c.probe().await;
                if !c.is_down() {
                    (renewed, beat, polled) = (now, now, now);
                }
            }
            continue;
        }
        c.release_spare_leases(now).await;
        c.return_rates(false).await;
        c.return_counts(false).await;
        if now.duration_since(renewed) >= renew_every {
            renewed = now;
            c.renew_leases().await;
        }
        if now.duration_since(beat) >= beat_every {
            beat = now;
            c.heartbeat().await;
        }
        if now.duration_since(polled) >= poll_every {
            polled = now;
            c.poll_suspensions().await;
        }
    }
}
