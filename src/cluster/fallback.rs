//! A node's share of a limit while Redis is down: the limit divided by the last known number
//! of live nodes, at least 1, so the cluster as a whole stays near the limit and never goes
//! without one.

/// This node's share of a count limit (connections, a warm-up cap) among `live` nodes.
pub fn share(limit: u64, live: usize) -> u64 {
    (limit / (live.max(1) as u64)).max(1)
}

/// This node's share of a rate (messages per second) among `live` nodes.
pub fn share_rate(per_s: f64, live: usize) -> f64 {
    per_s / live.max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares() {
        assert_eq!(share(4, 3), 1);
        assert_eq!(share(20, 3), 6);
        assert_eq!(share(1, 5), 1, "never below one");
        assert_eq!(share(10, 0), 10, "no count yet: one node");
        assert!((share_rate(50.0, 3) - 16.666).abs() < 0.01);
    }
}
