//! The `[cluster]` section: where Redis is, who this node is, and how the shared limits are
//! batched. Without the section the daemon runs alone and needs no Redis.

use std::time::Duration;

use serde::Deserialize;

/// Longest node id.
const MAX_NODE_ID: usize = 64;
/// Most Redis URLs (the first that answers is used; the next ones on failure).
const MAX_URLS: usize = 8;

/// `[cluster]`: several nodes share their limits through one Redis.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Redis URLs, `redis://host:port/db` (or `redis+unix:///path`), tried in order: the node
    /// uses the first that answers and moves to the next when it stops answering (a standby
    /// promoted by the operator). No TLS (`rediss://`): Redis is on a private network.
    pub redis: Vec<String>,
    /// This node's id, unique in the cluster: letters, digits, `.`, `_`, `-` (at most 64).
    pub node_id: String,
    /// How long a connection lease lives without renewal: a node that dies frees its
    /// connections after this long (default `"15s"`; renewed every third of it).
    #[serde(default = "default_lease_ttl", deserialize_with = "crate::value::duration::deserialize")]
    pub lease_ttl: Duration,
    /// Longest wait for one Redis call before the node falls back to its share of each limit
    /// (default `"200ms"`).
    #[serde(default = "default_timeout", deserialize_with = "crate::value::duration::deserialize")]
    pub timeout: Duration,
    /// Most rate tokens (send times) taken in one call (default 64). A node takes about half a
    /// second of the rate at once, at most this many and no more than it has mail for or used
    /// in the last half second, and gives back what it did not use.
    #[serde(default = "default_rate_batch")]
    pub rate_batch: u32,
    /// Most connection leases taken in one call (default 2): the one needed and a spare for
    /// the next connection, given back when unused.
    #[serde(default = "default_lease_batch")]
    pub lease_batch: u32,
    /// Most warm-up counts taken in one call (default 8).
    #[serde(default = "default_count_batch")]
    pub count_batch: u32,
    /// How long unused spares (leases, tokens, counts) are kept before they go back to Redis
    /// (default `"250ms"`).
    #[serde(default = "default_spare_hold", deserialize_with = "crate::value::duration::deserialize")]
    pub spare_hold: Duration,
    /// How often the node says it is alive and publishes its queue summary (default `"2s"`);
    /// a node silent for three of these is not counted as live.
    #[serde(default = "default_heartbeat", deserialize_with = "crate::value::duration::deserialize")]
    pub heartbeat: Duration,
    /// How often the node reads the cluster's suspensions (default `"500ms"`).
    #[serde(default = "default_poll", deserialize_with = "crate::value::duration::deserialize")]
    pub poll: Duration,
    /// Prefix of every key (default `"mxpipe"`), so several clusters can share one Redis.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// Nodes assumed live when Redis is down from the start (default 1): each limit's share
    /// is the limit divided by this until a heartbeat has counted them.
    #[serde(default = "default_nodes")]
    pub expected_nodes: usize,
}

fn default_lease_ttl() -> Duration {
    Duration::from_secs(15)
}
fn default_timeout() -> Duration {
    Duration::from_millis(200)
}
fn default_rate_batch() -> u32 {
    64
}
fn default_lease_batch() -> u32 {
    2
}
fn default_count_batch() -> u32 {
    8
}
fn default_spare_hold() -> Duration {
    Duration::from_millis(250)
}
fn default_heartbeat() -> Duration {
    Duration::from_secs(2)
}
fn default_poll() -> Duration {
    Duration::from_millis(500)
}
fn default_prefix() -> String {
    "mxpipe".into()
}
fn default_nodes() -> usize {
    1
}

impl ClusterConfig {
    /// A config with the defaults for Redis at `url` and node `node_id`.
    pub fn new(url: impl Into<String>, node_id: impl Into<String>) -> ClusterConfig {
        ClusterConfig {
            redis: vec![url.into()],
            node_id: node_id.into(),
            lease_ttl: default_lease_ttl(),
            timeout: default_timeout(),
            rate_batch: default_rate_batch(),
            lease_batch: default_lease_batch(),
            count_batch: default_count_batch(),
            spare_hold: default_spare_hold(),
            heartbeat: default_heartbeat(),
            poll: default_poll(),
            prefix: default_prefix(),
            expected_nodes: default_nodes(),
        }
    }

    /// Check the values; the error names the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.redis.is_empty() || self.redis.len() > MAX_URLS {
            return Err(format!("cluster.redis: give 1 to {MAX_URLS} Redis URLs"));
        }
        for u in &self.redis {
            if !(u.starts_with("redis://") || u.starts_with("redis+unix://") || u.starts_with("unix://")) {
                return Err(format!("cluster.redis: {u:?} is not a redis:// or redis+unix:// URL (no TLS: rediss:// is not supported)"));
            }
            redis::Client::open(u.as_str()).map_err(|e| format!("cluster.redis: {u:?}: {e}"))?;
        }
        let id_ok =
            |s: &str| !s.is_empty() && s.len() <= MAX_NODE_ID && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !id_ok(&self.node_id) {
            return Err(format!("cluster.node_id: {:?} must be 1 to {MAX_NODE_ID} letters, digits, '.', '_' or '-'", self.node_id));
        }
        if !id_ok(&self.prefix) {
            return Err(format!("cluster.prefix: {:?} must be 1 to {MAX_NODE_ID} letters, digits, '.', '_' or '-'", self.prefix));
        }
        let within = |name: &str, d: Duration, lo: Duration, hi: Duration| {
            if d < lo || d > hi {
                Err(format!("cluster.{name}: {d:?} is outside {lo:?} to {hi:?}"))
            } else {
                Ok(())
            }
        };
        let ms = Duration::from_millis;
        within("lease_ttl", self.lease_ttl, ms(500), ms(600_000))?;
        within("timeout", self.timeout, ms(10), ms(10_000))?;
        within("spare_hold", self.spare_hold, ms(10), ms(10_000))?;
        within("heartbeat", self.heartbeat, ms(100), ms(60_000))?;
        within("poll", self.poll, ms(50), ms(60_000))?;
        for (name, n) in [("rate_batch", self.rate_batch), ("lease_batch", self.lease_batch), ("count_batch", self.count_batch)] {
            if !(1..=1000).contains(&n) {
                return Err(format!("cluster.{name}: {n} is outside 1 to 1000"));
            }
        }
        if !(1..=10_000).contains(&self.expected_nodes) {
            return Err(format!("cluster.expected_nodes: {} is outside 1 to 10000", self.expected_nodes));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<ClusterConfig, String> {
        let c: ClusterConfig = toml::from_str(s).map_err(|e| e.to_string())?;
        c.validate()?;
        Ok(c)
    }

    #[test]
    fn defaults_and_checks() {
        let c = parse("redis = [\"redis://127.0.0.1:6379\"]\nnode_id = \"n1\"\n").unwrap();
        assert_eq!(c.lease_ttl, Duration::from_secs(15));
        assert_eq!(c.timeout, Duration::from_millis(200));
        assert!(parse("redis = [\"redis://127.0.0.1\"]\nnode_id = \"n1\"\nlease_ttl = \"2s\"\n").is_ok());
        for bad in [
            "redis = []\nnode_id = \"n1\"\n",
            "redis = [\"rediss://127.0.0.1\"]\nnode_id = \"n1\"\n",
            "redis = [\"http://x\"]\nnode_id = \"n1\"\n",
            "redis = [\"redis://127.0.0.1\"]\nnode_id = \"a b\"\n",
            "redis = [\"redis://127.0.0.1\"]\nnode_id = \"{x}\"\n",
            "redis = [\"redis://127.0.0.1\"]\nnode_id = \"n\"\nlease_ttl = \"1ms\"\n",
            "redis = [\"redis://127.0.0.1\"]\nnode_id = \"n\"\nrate_batch = 0\n",
            "redis = [\"redis://127.0.0.1\"]\nnode_id = \"n\"\nunknown = 1\n",
            "redis = [\"redis://127.0.0.1\"]\nnode_id = \"n\"\ntimeout = 5\n",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
