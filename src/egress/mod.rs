//! Egress sources and pools: the local addresses mail leaves from, and which of them a message uses.
//!
//! A *source* is a local address (IPv4 or IPv6) that connections bind to before connecting,
//! with the EHLO name that goes with it (receivers check that forward and reverse DNS of the
//! address match that name). A *pool* is a weighted set of sources; each message uses one pool,
//! chosen by its own `pool` field, else by rules on the sender's domain, else the default pool.
//! Each new connection picks one source of the pool, by weight, among those not excluded (by a
//! per-source limit or suspension); receivers throttle per sending address, so the engine keys
//! its idle connections, TLS sessions and limits by source too.
//!
//! This module owns the `[egress]` configuration and its checks, and the runtime [`Egress`] that
//! the engine shares between shards (read-only after start). It opens no connection and knows
//! nothing of destinations.

pub mod warmup;

use std::net::IpAddr;
use std::sync::Arc;

use serde::Deserialize;

/// At most this many sources: metric labels and per-source state are bounded by it.
pub const MAX_SOURCES: usize = 256;
/// At most this many pools.
pub const MAX_POOLS: usize = 64;
/// At most this many sender-domain rules.
pub const MAX_RULES: usize = 10_000;
/// Largest weight of one source in a pool.
pub const MAX_WEIGHT: u32 = 1000;
/// Longest source or pool name.
pub const MAX_NAME: usize = 64;

/// `[egress]`: the addresses mail leaves from. Without any `[[egress.source]]` connections
/// are made from whatever address the system picks, with `[engine] ehlo_name`.
///
/// ```toml
/// [egress]
/// default_pool = "bulk"
/// [[egress.source]]
/// name = "ip1"
/// address = "192.0.2.10"
/// ehlo = "mta1.example.com"
/// [[egress.pool]]
/// name = "bulk"
/// sources = [{ source = "ip1", weight = 3 }]
/// [[egress.rule]]
/// sender_domain = "example.com"
/// pool = "bulk"
/// ```
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EgressConfig {
    /// `[[egress.source]]`: the local addresses, each with a unique name.
    pub source: Vec<SourceConfig>,
    /// `[[egress.pool]]`: named weighted sets of sources.
    pub pool: Vec<PoolConfig>,
    /// `[[egress.rule]]`: which pool mail from a sender domain uses, when the message names none.
    pub rule: Vec<RuleConfig>,
    /// The pool of messages that name none and match no rule. Required when sources are
    /// configured and some message could match no rule; without it such messages are
    /// refused at the engine (deferred, naming the missing pool).
    pub default_pool: Option<String>,
    /// `[[egress.warmup]]`: warm-up plans ([`warmup::WarmupPlan`]) that sources name with
    /// `warmup = "plan"`: daily caps per destination class that grow day by day. A capped
    /// source leaves its pool's mail to the others; when all are capped the mail waits.
    pub warmup: Vec<warmup::WarmupPlan>,
}

/// One `[[egress.source]]`: a local address to send from.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Unique name (letters, digits, `.`, `_`, `-`; up to 64), used in pools, the delivery
    /// log, metrics and `GET /v1/queues`.
    pub name: String,
    /// The local IPv4 or IPv6 address connections bind to. It must be an address of this
    /// host: that is checked at start, and an absent one is an error naming the source.
    pub address: IpAddr,
    /// The EHLO name said on connections from this address; it should resolve to the
    /// address, and the address's reverse DNS to it.
    pub ehlo: String,
    /// A warm-up plan (`[[egress.warmup]]` by name) capping this source's daily messages.
    #[serde(default)]
    pub warmup: Option<String>,
}

/// One `[[egress.pool]]`: a named weighted set of sources.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// Unique name, as messages (the HTTP API's `pool`, the `X-Mxpipe-Pool:` header) and rules name it.
    pub name: String,
    /// The pool's sources; a new connection picks one with probability weight / total weight.
    pub sources: Vec<PoolMember>,
}

/// One source of a pool and its weight.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolMember {
    /// The source's name (`[[egress.source]]` `name`).
    pub source: String,
    /// Its share of the pool's new connections, from 0 to 1000 (default 1; 0 keeps it out
    /// of the choice while leaving it listed).
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}

/// One `[[egress.rule]]`: mail from a sender domain uses a pool.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// The sender's domain, or a parent of it (`example.com` also matches
    /// `news.example.com`); the most specific matching rule wins.
    pub sender_domain: String,
    /// The pool (`[[egress.pool]]` `name`) such mail uses.
    pub pool: String,
}

/// A configuration that cannot work, naming the entry at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{setting}: {message}")]
pub struct EgressError {
    /// The setting at fault (`egress.source "ip1"`, `egress.pool "bulk"`).
    pub setting: String,
    /// What is wrong with it.
    pub message: String,
}

fn err(setting: impl Into<String>, message: impl Into<String>) -> EgressError {
    EgressError { setting: setting.into(), message: message.into() }
}

fn check_name(kind: &str, name: &str) -> Result<(), EgressError> {
    let ok =
        !name.is_empty() && name.len() <= MAX_NAME && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(err(kind, format!("{name:?} is not a name (1 to {MAX_NAME} letters, digits, '.', '_', '-')")))
    }
}

impl EgressConfig {
    /// Whether any source is configured (else the engine connects as it always did).
    pub fn is_empty(&self) -> bool {
        self.source.is_empty() && self.pool.is_empty() && self.rule.is_empty() && self.default_pool.is_none() && self.warmup.is_empty()
    }

    /// Check the configuration without touching the network: names, references, weights, counts.
    pub fn check(&self) -> Result<(), EgressError> {
        if self.source.len() > MAX_SOURCES {
            return Err(err("egress.source", format!("at most {MAX_SOURCES} sources, not {}", self.source.len())));
        }
        if self.pool.len() > MAX_POOLS {
            return Err(err("egress.pool", format!("at most {MAX_POOLS} pools, not {}", self.pool.len())));
        }
        if self.rule.len() > MAX_RULES {
            return Err(err("egress.rule", format!("at most {MAX_RULES} rules, not {}", self.rule.len())));
        }
        if self.source.is_empty() && !self.is_empty() {
            return Err(err("egress", "pools, rules or a default pool without any [[egress.source]]"));
        }
        for (i, s) in self.source.iter().enumerate() {
            check_name("egress.source name", &s.name)?;
            let at = format!("egress.source {:?}", s.name);
            if self.source[..i].iter().any(|o| o.name == s.name) {
                return Err(err(at, "a second source of that name"));
            }
            let literal = s.ehlo.starts_with('[') && s.ehlo.ends_with(']');
            if !literal && !crate::value::host::is_host_name(&s.ehlo) {
                return Err(err(at, format!("ehlo {:?} is not a host name", s.ehlo)));
            }
            if s.address.is_unspecified() || s.address.is_multicast() {
                return Err(err(at, format!("address {} is not a unicast address of this host", s.address)));
            }
            if let Some(w) = &s.warmup {
                if !self.warmup.iter().any(|p| &p.name == w) {
                    return Err(err(at, format!("warmup {w:?} is not an [[egress.warmup]] plan")));
                }
            }
        }
        if !self.source.is_empty() && self.pool.is_empty() {
            return Err(err("egress.pool", "sources but no [[egress.pool]] to use them"));
        }
        for (i, p) in self.pool.iter().enumerate() {
            check_name("egress.pool name", &p.name)?;
            let at = format!("egress.pool {:?}", p.name);
            if self.pool[..i].iter().any(|o| o.name == p.name) {
                return Err(err(at, "a second pool of that name"));
            }
            if p.sources.len() > MAX_SOURCES {
                return Err(err(at, format!("at most {MAX_SOURCES} sources")));
            }
            for (j, m) in p.sources.iter().enumerate() {
                if !self.source.iter().any(|s| s.name == m.source) {
                    return Err(err(&at, format!("source {:?} is not an [[egress.source]]", m.source)));
                }
                if p.sources[..j].iter().any(|o| o.source == m.source) {
                    return Err(err(&at, format!("source {:?} listed twice", m.source)));
                }
                if m.weight > MAX_WEIGHT {
                    return Err(err(&at, format!("weight of {:?} is {}, at most {MAX_WEIGHT}", m.source, m.weight)));
                }
            }
            if p.sources.iter().map(|m| m.weight).sum::<u32>() == 0 {
                return Err(err(at, "total weight is 0: no source would ever be chosen"));
            }
        }
        let has_pool = |name: &str| self.pool.iter().any(|p| p.name == name);
        if let Some(d) = &self.default_pool {
            if !has_pool(d) {
                return Err(err("egress.default_pool", format!("{d:?} is not an [[egress.pool]]")));
            }
        }
        for r in &self.rule {
            let at = format!("egress.rule sender_domain {:?}", r.sender_domain);
            if !crate::value::host::is_host_name(r.sender_domain.trim_end_matches('.')) {
                return Err(err(at, "not a domain name"));
            }
            if !has_pool(&r.pool) {
                return Err(err(at, format!("pool {:?} is not an [[egress.pool]]", r.pool)));
            }
        }
        Ok(())
    }
}

/// One source at run time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// Its configured name.
    pub name: Arc<str>,
    /// The local address bound before connecting.
    pub addr: IpAddr,
    /// The EHLO name said from it.
    pub ehlo: String,
    /// The warm-up plan it follows, if any.
    pub warmup: Option<String>,
}

/// One pool at run time: its sources (by index into [`Egress::sources`]) with weights.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    /// Its configured name.
    pub name: Arc<str>,
    /// (source index, weight), weight > 0 only.
    pub members: Vec<(usize, u32)>,
}

/// The sources and pools of a running engine, shared by its shards and the intake.
#[derive(Debug)]
pub struct Egress {
    sources: Vec<Source>,
    pools: Vec<Pool>,
    /// (domain, pool index), most specific (longest) domain first.
    rules: Vec<(String, usize)>,
    default_pool: Option<usize>,
    warmup: Option<Arc<warmup::Warmup>>,
}

/// Which pool a message goes through, or why none can be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolChoice {
    /// No egress configuration: connect as the engine always did.
    Unbound,
    /// This pool (index into [`Egress::pools`]).
    Pool(usize),
    /// The message names a pool that is not configured (say, removed since it was spooled).
    Unknown(String),
    /// No pool named, no rule matched and no default pool is set.
    NoPool,
}

impl Egress {
    /// Build from a checked configuration, and check that every source address belongs to
    /// this host by binding a TCP socket to it (port 0). An absent address is an error
    /// naming the source.
    pub fn new(cfg: &EgressConfig) -> Result<Egress, EgressError> {
        Egress::with_warmup_state(cfg, None)
    }

    /// [`Egress::new`], keeping the warm-up counters in `state_file` across restarts (the
    /// daemon keeps it in the spool directory); `None`: in memory only.
    pub fn with_warmup_state(cfg: &EgressConfig, state_file: Option<std::path::PathBuf>) -> Result<Egress, EgressError> {
        cfg.check()?;
        for s in &cfg.source {
            if let Err(e) = std::net::TcpListener::bind((s.address, 0)) {
                return Err(err(
                    format!("egress.source {:?}", s.name),
                    format!("address {} cannot be bound on this host ({e}); is it configured on an interface?", s.address),
                ));
            }
        }
        let sources: Vec<Source> = cfg
            .source
            .iter()
            .map(|s| Source { name: s.name.as_str().into(), addr: s.address, ehlo: s.ehlo.clone(), warmup: s.warmup.clone() })
            .collect();
        let index = |name: &str| sources.iter().position(|s| &*s.name == name).unwrap_or(0);
        let pools: Vec<Pool> = cfg
            .pool
            .iter()
            .map(|p| Pool {
                name: p.name.as_str().into(),
                members: p.sources.iter().filter(|m| m.weight > 0).map(|m| (index(&m.source), m.weight)).collect(),
            })
            .collect();
        let pool_index = |name: &str| pools.iter().position(|p| &*p.name == name);
        let mut rules: Vec<(String, usize)> = cfg
            .rule
            .iter()
            .filter_map(|r| Some((r.sender_domain.trim_end_matches('.').to_ascii_lowercase(), pool_index(&r.pool)?)))
            .collect();
        // Stable: among equally long domains, file order.
        rules.sort_by_key(|(d, _)| std::cmp::Reverse(d.len()));
        let default_pool = cfg.default_pool.as_deref().and_then(pool_index);
        let planned: Vec<(String, String)> = cfg.source.iter().filter_map(|s| Some((s.name.clone(), s.warmup.clone()?))).collect();
        let warmup = if planned.is_empty() {
            None
        } else {
            let w = warmup::Warmup::new(&cfg.warmup, &planned, state_file).map_err(|e| err("egress.warmup", e))?;
            Some(Arc::new(w))
        };
        Ok(Egress { sources, pools, rules, default_pool, warmup })
    }

    /// The warm-up counters, when some source follows a plan.
    pub fn warmup(&self) -> Option<&Arc<warmup::Warmup>> {
        self.warmup.as_ref()
    }

    /// The sources, in configuration order (a source's index is its place here).
    pub fn sources(&self) -> &[Source] {
        &self.sources
    }

    /// The pools, in configuration order.
    pub fn pools(&self) -> &[Pool] {
        &self.pools
    }

    /// Whether `name` is a configured pool: the intake refuses a message naming another.
    pub fn has_pool(&self, name: &str) -> bool {
        self.pools.iter().any(|p| &*p.name == name)
    }

    /// The pool a message uses: its own `pool` if it names one, else the most specific rule
    /// matching the sender's domain, else the default pool.
    pub fn pool_for(&self, explicit: Option<&str>, sender: &str) -> PoolChoice {
        if let Some(name) = explicit {
            return match self.pools.iter().position(|p| &*p.name == name) {
                Some(i) => PoolChoice::Pool(i),
                None => PoolChoice::Unknown(name.to_string()),
            };
        }
        let domain = sender.rsplit_once('@').map(|(_, d)| d.trim_end_matches('.').to_ascii_lowercase());
        if let Some(domain) = domain {
            let hit = self.rules.iter().find(|(d, _)| {
                domain == *d
                    || (domain.len() > d.len() && domain.ends_with(d.as_str()) && domain.as_bytes()[domain.len() - d.len() - 1] == b'.')
            });
            if let Some(&(_, p)) = hit {
                return PoolChoice::Pool(p);
            }
        }
        self.default_pool.map_or(PoolChoice::NoPool, PoolChoice::Pool)
    }

    /// A source of pool `pool` chosen by weight among those `usable` accepts, from a uniform
    /// random `draw`; `None` when none is usable.
    pub fn choose(&self, pool: usize, draw: u64, mut usable: impl FnMut(usize) -> bool) -> Option<usize> {
        let members: Vec<(usize, u32)> = self.pools.get(pool)?.members.iter().copied().filter(|&(s, _)| usable(s)).collect();
        let total: u64 = members.iter().map(|&(_, w)| u64::from(w)).sum();
        if total == 0 {
            return None;
        }
        let mut at = draw % total;
        for (s, w) in members {
            if at < u64::from(w) {
                return Some(s);
            }
            at -= u64::from(w);
        }
        None
    }
}

/// The largest file [`load_file`] reads.
pub const MAX_FILE: u64 = 4 << 20;

/// The `[egress]` table of a TOML file (a whole `mxpipe serve` config will do: its other
/// tables are ignored), checked and with its addresses bound as [`Egress::with_warmup_state`]
/// does. Errors name the file.
pub fn load_file(path: &std::path::Path, warmup_state: Option<std::path::PathBuf>) -> Result<Egress, String> {
    use std::io::Read;
    let name = path.display();
    let mut text = String::new();
    std::fs::File::open(path).and_then(|f| f.take(MAX_FILE + 1).read_to_string(&mut text)).map_err(|e| format!("{name}: {e}"))?;
    if text.len() as u64 > MAX_FILE {
        return Err(format!("{name}: larger than {MAX_FILE} bytes"));
    }
    let mut table: toml::Table = toml::from_str(&text).map_err(|e| format!("{name}: {e}"))?;
    let egress = table.remove("egress").ok_or_else(|| format!("{name}: no [egress] table"))?;
    let cfg: EgressConfig = egress.try_into().map_err(|e| format!("{name}: [egress]: {e}"))?;
    Egress::with_warmup_state(&cfg, warmup_state).map_err(|e| format!("{name}: {e}"))
}

/// The demo's sources: four on 127.0.0.2–127.0.0.5 (EHLO `out1.demo.test` …), in two
/// pools: `bulk` (the first three, weights 3, 2, 1; the default) and `transactional` (the fourth).
pub fn demo_config() -> EgressConfig {
    let source = |i: usize| SourceConfig {
        name: format!("out{i}"),
        address: IpAddr::from([127, 0, 0, 1 + i as u8]),
        ehlo: format!("out{i}.demo.test"),
        warmup: None,
    };
    let member = |i: usize, weight: u32| PoolMember { source: format!("out{i}"), weight };
    EgressConfig {
        source: (1..=4).map(source).collect(),
        pool: vec![
            PoolConfig { name: "bulk".into(), sources: vec![member(1, 3), member(2, 2), member(3, 1)] },
            PoolConfig { name: "transactional".into(), sources: vec![member(4, 1)] },
        ],
        rule: Vec::new(),
        default_pool: Some("bulk".into()),
        warmup: Vec::new(),
    }
}

/// What the engine is given: `None` when no `[egress]` is configured.
pub type Shared = Option<Arc<Egress>>;

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> EgressConfig {
        toml::from_str(s).unwrap()
    }

    const BASE: &str = r#"
        default_pool = "p"
        [[source]]
        name = "a"
        address = "127.0.0.2"
        ehlo = "a.test"
        [[source]]
        name = "b"
        address = "127.0.0.3"
        ehlo = "b.test"
        [[pool]]
        name = "p"
        sources = [{ source = "a", weight = 3 }, { source = "b" }]
        [[pool]]
        name = "q"
        sources = [{ source = "b" }]
        [[rule]]
        sender_domain = "example.com"
        pool = "q"
        [[rule]]
        sender_domain = "news.example.com"
        pool = "p"
    "#;

    #[test]
    fn pools_by_message_rule_and_default() {
        let e = Egress::new(&parse(BASE)).unwrap();
        assert_eq!(e.pool_for(Some("q"), "x@other.test"), PoolChoice::Pool(1));
        assert_eq!(e.pool_for(Some("nope"), "x@other.test"), PoolChoice::Unknown("nope".into()));
        assert_eq!(e.pool_for(None, "x@Example.COM"), PoolChoice::Pool(1));
        assert_eq!(e.pool_for(None, "x@a.example.com"), PoolChoice::Pool(1), "a parent domain matches");
        assert_eq!(e.pool_for(None, "x@news.example.com"), PoolChoice::Pool(0), "the most specific rule wins");
        assert_eq!(e.pool_for(None, "x@badexample.com"), PoolChoice::Pool(0), "only whole labels match");
        assert_eq!(e.pool_for(None, ""), PoolChoice::Pool(0), "the null sender takes the default");
        assert!(e.has_pool("p") && !e.has_pool("r"));
    }

    #[test]
    fn weighted_choice_skips_the_unusable() {
        let e = Egress::new(&parse(BASE)).unwrap();
        let picks: Vec<usize> = (0..4).map(|d| e.choose(0, d, |_| true).unwrap()).collect();
        assert_eq!(picks, [0, 0, 0, 1], "weights 3 and 1");
        assert_eq!(e.choose(0, 0, |s| s != 0), Some(1));
        assert_eq!(e.choose(0, 0, |_| false), None);
    }

    #[test]
    fn bad_configs_name_the_entry() {
        let bad = |edit: &dyn Fn(&mut EgressConfig), want: &str| {
            let mut c = parse(BASE);
            edit(&mut c);
            let e = c.check().expect_err(want).to_string();
            assert!(e.contains(want), "{e:?} should contain {want:?}");
        };
        bad(&|c| c.pool[0].sources[0].source = "zz".into(), "source \"zz\" is not");
        bad(&|c| c.source[1].name = "a".into(), "egress.source \"a\": a second source");
        bad(&|c| c.pool[1].name = "p".into(), "a second pool");
        bad(&|c| c.pool[1].sources[0].weight = 0, "total weight is 0");
        bad(&|c| c.rule[0].pool = "zz".into(), "egress.rule sender_domain \"example.com\": pool \"zz\"");
        bad(&|c| c.default_pool = Some("zz".into()), "egress.default_pool");
        bad(&|c| c.source[0].ehlo = "bad name!".into(), "ehlo");
        bad(&|c| c.pool.clear(), "no [[egress.pool]]");
        bad(&|c| c.pool[0].sources[0].weight = 5000, "at most 1000");
        bad(
            &|c| {
                let s = c.source[0].clone();
                c.source = (0..=MAX_SOURCES).map(|i| SourceConfig { name: format!("s{i}"), ..s.clone() }).collect();
            },
            "at most 256 sources",
        );
        assert!(toml::from_str::<EgressConfig>("[[source]]\nname='a'\naddress='127.0.0.2'\nehlo='a.test'\nport=1").is_err());
    }

    #[test]
    fn an_absent_address_names_the_source() {
        let mut c = parse(BASE);
        c.source[1].address = "192.0.2.1".parse().unwrap();
        let e = Egress::new(&c).expect_err("192.0.2.1 is no address of this host").to_string();
        assert!(e.contains("egress.source \"b\"") && e.contains("192.0.2.1"), "{e}");
    }
}
