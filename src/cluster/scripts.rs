//! The Lua scripts every shared limit is, and the names of their keys.
//!
//! Each script runs atomically in Redis and reads the clock with `TIME` there, so the nodes'
//! clocks never have to agree. Every key carries a hash tag (`{conn:example.com}`) and a
//! script touches only keys of one tag, so a Redis Cluster can hold them. Every key expires
//! by itself: nothing is left behind when nodes go away. Times in Redis are microseconds
//! (rates) or milliseconds (leases, suspensions, nodes), written with `%.0f` so that Lua's
//! default 14 significant digits never round them.

use redis::Script;

/// Connection leases: `KEYS[1]` is a sorted set of lease id → expiry (ms). `ARGV`: limit,
/// ttl ms, then the ids wanted. Drops expired leases, adds as many of the ids as fit under
/// the limit; returns how many (the first ones).
const LEASE_TAKE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local limit = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
local room = limit - redis.call('ZCARD', KEYS[1])
local n = 0
local exp = string.format('%.0f', now + ttl)
for i = 3, #ARGV do
  if n >= room then break end
  redis.call('ZADD', KEYS[1], exp, ARGV[i])
  n = n + 1
end
redis.call('PEXPIRE', KEYS[1], ttl * 2)
return n
"#;

/// Renew leases: `ARGV`: ttl ms, then the ids held. Every id gets a new expiry, also one
/// that had expired (the connection is still open: the count must say so). Returns the
/// number of leases in the set now.
const LEASE_RENEW: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local ttl = tonumber(ARGV[1])
local exp = string.format('%.0f', now + ttl)
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], exp, ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], ttl * 2)
return redis.call('ZCARD', KEYS[1])
"#;

/// Release leases: `ARGV`: the ids. Returns how many were there.
const LEASE_RELEASE: &str = r#"
local n = 0
for i = 1, #ARGV do
  n = n + redis.call('ZREM', KEYS[1], ARGV[i])
end
return n
"#;

/// A message rate as a GCRA with reservations: `KEYS[1]` holds the theoretical arrival time
/// (µs). `ARGV`: interval µs, count. Reserves `count` consecutive send times one interval
/// apart from max(TAT, now) and returns how far from now the first is (µs).
const RATE_TAKE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
if tat < now then tat = now end
local new = tat + interval * n
redis.call('SET', KEYS[1], string.format('%.0f', new), 'PX', math.floor((new - now) / 1000) + 1000)
return string.format('%.0f', tat - now)
"#;

/// Give back `ARGV[2]` unused send times of interval `ARGV[1]` µs: the TAT moves back, never
/// before now. Returns nothing useful.
const RATE_RETURN: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
if tat <= now then return 0 end
local new = tat - tonumber(ARGV[1]) * tonumber(ARGV[2])
if new < now then new = now end
redis.call('SET', KEYS[1], string.format('%.0f', new), 'PX', math.floor((new - now) / 1000) + 1000)
return 1
"#;

/// A capped counter (warm-up sends per source, class and day): `ARGV`: cap, count wanted,
/// ttl ms. Takes as many as fit under the cap; returns how many.
const COUNT_TAKE: &str = r#"
local cap = tonumber(ARGV[1])
local cur = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
local n = math.min(tonumber(ARGV[2]), cap - cur)
if n < 0 then n = 0 end
if n > 0 then redis.call('INCRBY', KEYS[1], n) end
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
return n
"#;

/// Give back `ARGV[1]` unused counts (never below zero).
const COUNT_RETURN: &str = r#"
local cur = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
local n = math.min(tonumber(ARGV[1]), cur)
if n > 0 then redis.call('DECRBY', KEYS[1], n) end
return n
"#;

/// The earliest of the values the nodes proposed (a source's warm-up day 1, ms): `ARGV`:
/// this node's value, ttl ms. Keeps the smaller of the stored and the proposed value and
/// returns it; every call renews the key.
const EARLIEST: &str = r#"
local cur = tonumber(redis.call('GET', KEYS[1]) or '')
local mine = tonumber(ARGV[1])
if cur == nil or mine < cur then
  cur = mine
end
redis.call('SET', KEYS[1], string.format('%.0f', cur), 'PX', tonumber(ARGV[2]))
return string.format('%.0f', cur)
"#;

/// Suspend: `KEYS[1]` the index (name → until, ms), `KEYS[2]` the reasons. `ARGV`: name,
/// duration ms, reason. A longer suspension already there stays.
const SUSPEND: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local untl = now + tonumber(ARGV[2])
local old = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[1]) or '0') or 0
if old < untl then
  redis.call('ZADD', KEYS[1], string.format('%.0f', untl), ARGV[1])
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
end
return 1
"#;

/// End a suspension: `ARGV[1]` the name.
const UNSUSPEND: &str = r#"
redis.call('HDEL', KEYS[2], ARGV[1])
return redis.call('ZREM', KEYS[1], ARGV[1])
"#;

/// The suspensions in force: drops ended ones; returns name, ms left, reason, ... (at most
/// `ARGV[1]` of them).
const SUSPENSIONS: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
for _, g in ipairs(gone) do redis.call('HDEL', KEYS[2], g) end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local all = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1, 'WITHSCORES')
local out = {}
for i = 1, #all, 2 do
  out[#out + 1] = all[i]
  out[#out + 1] = string.format('%.0f', tonumber(all[i + 1]) - now)
  out[#out + 1] = redis.call('HGET', KEYS[2], all[i]) or ''
end
return out
"#;

/// Heartbeat: `KEYS[1]` the node index (id → last seen, ms), `KEYS[2]` the summaries (id →
/// JSON). `ARGV`: node id, node ttl ms, summary JSON. Drops nodes silent for the ttl (and
/// their summaries); returns the number of live nodes.
const HEARTBEAT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], string.format('%.0f', now), ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - ttl)
for _, g in ipairs(gone) do redis.call('HDEL', KEYS[2], g) end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - ttl)
redis.call('PEXPIRE', KEYS[1], ttl * 10)
redis.call('PEXPIRE', KEYS[2], ttl * 10)
return redis.call('ZCARD', KEYS[1])
"#;

/// The live nodes: `KEYS` as [`HEARTBEAT`], `ARGV`: node ttl ms, most nodes. Returns id, ms
/// since last seen, summary JSON ('' if none), ...
const NODES: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local all = redis.call('ZRANGEBYSCORE', KEYS[1], now - tonumber(ARGV[1]), '+inf', 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for i = 1, #all, 2 do
  out[#out + 1] = all[i]
  out[#out + 1] = string.format('%.0f', now - tonumber(all[i + 1]))
  out[#out + 1] = redis.call('HGET', KEYS[2], all[i]) or ''
end
return out
"#;

/// The scripts, loaded once per node (EVALSHA, with EVAL when Redis has not seen one yet).
pub(crate) struct Scripts {
    pub lease_take: Script,
    pub lease_renew: Script,
    pub lease_release: Script,
    pub rate_take: Script,
    pub rate_return: Script,
    pub count_take: Script,
    pub count_return: Script,
    pub earliest: Script,
    pub suspend: Script,
    pub unsuspend: Script,
    pub suspensions: Script,
    pub heartbeat: Script,
    pub nodes: Script,
}

impl Scripts {
    pub fn new() -> Scripts {
        Scripts {
            lease_take: Script::new(LEASE_TAKE),
            lease_renew: Script::new(LEASE_RENEW),
            lease_release: Script::new(LEASE_RELEASE),
            rate_take: Script::new(RATE_TAKE),
            rate_return: Script::new(RATE_RETURN),
            count_take: Script::new(COUNT_TAKE),
            count_return: Script::new(COUNT_RETURN),
            earliest: Script::new(EARLIEST),
            suspend: Script::new(SUSPEND),
            unsuspend: Script::new(UNSUSPEND),
            suspensions: Script::new(SUSPENSIONS),
            heartbeat: Script::new(HEARTBEAT),
            nodes: Script::new(NODES),
        }
    }
}

/// The key names of one cluster (one prefix).
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    prefix: String,
}

/// A name made safe inside a hash tag: braces would end the tag early.
fn tagged(kind: &str, name: &str) -> String {
    let clean: String = name.chars().map(|c| if c == '{' || c == '}' { '_' } else { c }).collect();
    format!("{{{kind}:{clean}}}")
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        Keys { prefix: prefix.to_string() }
    }
    /// The leases of connection limit `name`.
    pub fn conn(&self, name: &str) -> String {
        format!("{}:{}", self.prefix, tagged("conn", name))
    }
    /// The TAT of rate `name`.
    pub fn rate(&self, name: &str) -> String {
        format!("{}:{}", self.prefix, tagged("rate", name))
    }
    /// Capped counter `name`.
    pub fn count(&self, name: &str) -> String {
        format!("{}:{}", self.prefix, tagged("count", name))
    }
    /// Shared earliest value `name`.
    pub fn earliest(&self, name: &str) -> String {
        format!("{}:{}", self.prefix, tagged("first", name))
    }
    /// The suspension index and the reasons (one tag).
    pub fn suspensions(&self) -> (String, String) {
        (format!("{}:{{susp}}", self.prefix), format!("{}:{{susp}}:why", self.prefix))
    }
    /// The node index and the nodes' summaries (one tag).
    pub fn nodes(&self) -> (String, String) {
        (format!("{}:{{nodes}}", self.prefix), format!("{}:{{nodes}}:summary", self.prefix))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_carry_one_hash_tag() {
        let k = Keys::new("mxpipe");
        assert_eq!(k.conn("example.com"), "mxpipe:{conn:example.com}");
        assert_eq!(k.rate("mx:*.google.com"), "mxpipe:{rate:mx:*.google.com}");
        assert_eq!(k.conn("a{b}c"), "mxpipe:{conn:a_b_c}");
        let (i, w) = k.suspensions();
        assert!(i.contains("{susp}") && w.contains("{susp}"));
        let (n, s) = k.nodes();
        assert!(n.contains("{nodes}") && s.contains("{nodes}"));
    }
}
