//! The node registry: each node says it is alive every `heartbeat` and publishes its queue
//! summary (JSON) with it; nodes silent for three heartbeats are not counted. The number of
//! live nodes is what each limit is divided by while Redis is down.

use std::sync::atomic::Ordering;

use super::{lock, Cluster, ClusterError};

/// Largest summary a node publishes; a larger one is replaced by a note saying so.
const MAX_SUMMARY: usize = 256 * 1024;
/// Most nodes listed.
const MAX_NODES: usize = 1000;

/// One live node as the registry has it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NodeInfo {
    /// The node's id.
    pub id: String,
    /// Milliseconds since its last heartbeat.
    pub last_seen_ms: u64,
    /// Its queue summary as it published it (`null` if none).
    pub summary: serde_json::Value,
}

impl Cluster {
    /// The queue summary published with the next heartbeats (bounded in size).
    pub fn set_summary(&self, summary: &serde_json::Value) {
        let mut s = summary.to_string();
        if s.len() > MAX_SUMMARY {
            s = serde_json::json!({ "truncated": true, "bytes": s.len() }).to_string();
        }
        *lock(&self.summary) = s;
    }

    /// How long a node stays counted without a heartbeat.
    fn node_ttl_ms(&self) -> u64 {
        (self.cfg.heartbeat.as_millis() as u64).saturating_mul(3)
    }

    /// Say this node is alive, publish its summary, and count the live nodes.
    pub(super) async fn heartbeat(&self) {
        let (index, summaries) = self.keys.nodes();
        let summary = lock(&self.summary).clone();
        let mut inv = self.scripts.heartbeat.key(&index);
        inv.key(&summaries).arg(&self.cfg.node_id).arg(self.node_ttl_ms()).arg(summary);
        if let Some(n) = self.call::<usize>(&inv).await {
            self.live.store(n.max(1), Ordering::Relaxed);
        }
    }

    /// The live nodes with their summaries, from Redis.
    pub async fn nodes(&self) -> Result<Vec<NodeInfo>, ClusterError> {
        let (index, summaries) = self.keys.nodes();
        let mut inv = self.scripts.nodes.key(&index);
        inv.key(&summaries).arg(self.node_ttl_ms()).arg(MAX_NODES);
        if self.is_down() {
            return Err(ClusterError::Unavailable("this node runs on its local shares".into()));
        }
        let flat: Vec<String> = self.call(&inv).await.ok_or_else(|| ClusterError::Unavailable("no answer".into()))?;
        let mut v: Vec<NodeInfo> = flat
            .chunks_exact(3)
            .map(|c| NodeInfo {
                id: c[0].clone(),
                last_seen_ms: c[1].parse().unwrap_or(0),
                summary: serde_json::from_str(&c[2]).unwrap_or(serde_json::Value::Null),
            })
            .collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(v)
    }
}
