//! Three `mxpipe serve` processes, each with its own spool, sharing their limits through one
//! real redis-server: a destination limited to 4 connections cluster-wide never sees more
//! than 4 at once at its sink and does see 4; a rate of 50 messages/s cluster-wide holds
//! within 5 % over 10 s (counted at the sink). Without redis-server: a SKIPPED banner (a
//! failure with MXPIPE_REQUIRE_PEERS).

mod common;
#[path = "common/redis.rs"]
mod redis_peer;

use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::daemon::*;
use mxpipe::dnsserver::{DnsServer, ZoneBuilder};
use redis_peer::Redis;

/// The `[cluster]` section of node `id`, and a `[[domain]]` limit on `c.t.test`.
fn tail(r: &Redis, id: &str, limit: &str) -> String {
    format!(
        "[cluster]\nredis = [\"{}\"]\nnode_id = \"{id}\"\nlease_ttl = \"2s\"\nheartbeat = \"200ms\"\npoll = \"100ms\"\n\n\
         [[domain]]\nname = \"c.t.test\"\n{limit}\n",
        r.url()
    )
}

/// Three nodes, each in its own directory with its own spool.
fn start_nodes(tag: &str, r: &Redis, dns: std::net::SocketAddr, port: u16, limit: &str) -> Vec<(Daemon, std::path::PathBuf)> {
    start_nodes_http(tag, r, dns, port, limit).into_iter().map(|(d, dir, _)| (d, dir)).collect()
}

/// As [`start_nodes`], with each node's HTTP API address.
fn start_nodes_http(
    tag: &str,
    r: &Redis,
    dns: std::net::SocketAddr,
    port: u16,
    limit: &str,
) -> Vec<(Daemon, std::path::PathBuf, std::net::SocketAddr)> {
    (0..3)
        .map(|i| {
            let dir = tmpdir(&format!("{tag}-{i}"));
            let setup = Setup { tail: tail(r, &format!("node{i}"), limit), ..Setup::new(&dir, dns, port) };
            let config = setup.write(&dir);
            (start_daemon(&config, setup.inject), dir, setup.http)
        })
        .collect()
}

/// One destination for a test: `c.t.test`, whose MX is on 127.9.12.`n` at its sink (saving
/// to `mail`, with `adjust`ed faults), and our DNS server for it, in a fresh directory.
struct World {
    dir: std::path::PathBuf,
    mail: std::path::PathBuf,
    port: u16,
    sink: Arc<mxpipe::sink::Sink>,
    dns: DnsServer,
}

impl World {
    async fn start(tag: &str, n: u8, adjust: impl FnOnce(&mut mxpipe::sink::SinkConfig)) -> World {
        let dir = tmpdir(tag);
        let mail = dir.join("received");
        std::fs::create_dir_all(&mail).unwrap();
        let ip = Ipv4Addr::new(127, 9, 12, n);
        let port = free_port(&ip.to_string());
        let sink = Arc::new(sink_on(ip, port, &mail, adjust).await);
        let mut z = ZoneBuilder::new("t.test.");
        z.mx("c.t.test", 10, "mx-c.t.test").a("mx-c.t.test", ip);
        let dns = DnsServer::start(vec![z], "127.0.0.1:0".parse().unwrap()).await.unwrap();
        World { dir, mail, port, sink, dns }
    }

    /// Stop the sink and the DNS server, and remove the directory.
    async fn finish(self) {
        if let Ok(sink) = Arc::try_unwrap(self.sink) {
            sink.shutdown(Duration::from_secs(1)).await;
        }
        self.dns.shutdown().await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn inject_n(d: &Daemon, node: usize, n: usize) {
    for k in 0..n {
        assert!(inject(d.inject, "app@src.test", "u@c.t.test", &format!("n{node}-{k}")).await, "injection refused");
    }
}

fn delivered(mail: &Path) -> usize {
    std::fs::read_dir(mail).map_or(0, |d| d.count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_limit_of_4_holds_across_three_nodes_and_is_reached() {
    let Some(r) = Redis::start("a_connection_limit_of_4_holds_across_three_nodes_and_is_reached") else { return };
    // 20 ms per message: a backlog builds up on every node.
    let w = World::start("cluster-conns", 1, |c| c.faults.delay = Duration::from_millis(20)).await;
    let (mail, port, sink, dns) = (&w.mail, w.port, &w.sink, &w.dns);
    let nodes = start_nodes("cluster-conns", &r, dns.addr(), port, "max_conns = 4");
    // The sink's open sessions, sampled every 2 ms (a connection lives far longer: it is
    // reused, then idles a second in its node's pool).
    let peak = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (sink, peak, done) = (sink.clone(), peak.clone(), done.clone());
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(sink.stats().sessions_active, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    // A backlog on all three at once.
    let per_node = 80;
    tokio::join!(inject_n(&nodes[0].0, 0, per_node), inject_n(&nodes[1].0, 1, per_node), inject_n(&nodes[2].0, 2, per_node));
    wait_for("every message delivered", Duration::from_secs(40), || delivered(mail) >= 3 * per_node).await;
    done.store(true, Ordering::Relaxed);
    sampler.await.unwrap();
    let peak = peak.load(Ordering::Relaxed);
    assert_eq!(delivered(mail), 3 * per_node);
    assert!(peak <= 4, "{peak} connections at once under a cluster-wide limit of 4");
    assert_eq!(peak, 4, "the limit of 4 was never reached");
    for (d, dir) in nodes {
        assert!(terminate(d));
        let _ = std::fs::remove_dir_all(dir);
    }
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_of_50_per_second_holds_across_three_nodes() {
    let Some(r) = Redis::start("a_rate_of_50_per_second_holds_across_three_nodes") else { return };
    let w = World::start("cluster-rate", 2, |_| {}).await;
    let (mail, port, sink, dns) = (&w.mail, w.port, &w.sink, &w.dns);
    let nodes = start_nodes_http("cluster-rate", &r, dns.addr(), port, "msgs_per_s = 50");
    // 900 messages, 300 a node: 18 s of the shared rate, a backlog on each node throughout
    // the 10 s counted (from 2 s after the first delivery).
    let per_node = 300;
    tokio::join!(inject_n(&nodes[0].0, 0, per_node), inject_n(&nodes[1].0, 1, per_node), inject_n(&nodes[2].0, 2, per_node));
    wait_for("a first delivery", Duration::from_secs(20), || sink.stats().messages > 0).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (t1, n1) = (Instant::now(), sink.stats().messages);
    // A backlog on every node as the window opens: the whole cluster's view has each node's recipients for
    // c.t.test and those its engine holds (in flight: behind the shared rate).
    let (code, body) = http(nodes[0].2, "GET", "/v1/cluster", "");
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let listed = v["nodes"].as_array().unwrap_or_else(|| panic!("{body}"));
    assert_eq!(listed.len(), 3, "{body}");
    for n in listed {
        let q = n["summary"]["queues"]
            .as_array()
            .and_then(|q| q.iter().find(|q| q["domain"] == "c.t.test"))
            .unwrap_or_else(|| panic!("{body}"));
        let (waiting, in_flight) = (q["recipients"].as_u64().unwrap(), q["in_flight"].as_u64().unwrap_or(0));
        assert!(waiting > 0 && in_flight > 0 && in_flight <= waiting, "node {}: {q}", n["id"]);
    }
    let left = Duration::from_secs(10).saturating_sub(t1.elapsed());
    tokio::time::sleep(left).await;
    let (t2, n2) = (Instant::now(), sink.stats().messages);
    let secs = (t2 - t1).as_secs_f64();
    let rate = (n2 - n1) as f64 / secs;
    assert!((47.5..=52.5).contains(&rate), "{} messages in {secs:.2} s: {rate:.1}/s, not 50/s ± 5 %", n2 - n1);
    assert!(n2 < 3 * per_node as u64, "the backlog ran dry inside the window: the count says nothing");
    wait_for("every message delivered", Duration::from_secs(30), || delivered(mail) >= 3 * per_node).await;
    // A measurement, not a check: Redis calls per delivered message over the whole run
    // (heartbeats every 200 ms and polls every 100 ms included, at only 50 messages/s).
    let calls: u64 = nodes
        .iter()
        .map(|(_, _, api)| {
            let (_, body) = http(*api, "GET", "/metrics", "");
            body.lines().find_map(|l| l.strip_prefix("mxpipe_cluster_redis_calls_total ")).and_then(|n| n.parse::<u64>().ok()).unwrap_or(0)
        })
        .sum();
    eprintln!("cluster rate: {calls} Redis calls for {} messages ({:.3} per message)", 3 * per_node, calls as f64 / (3 * per_node) as f64);
    for (d, dir, _) in nodes {
        assert!(terminate(d));
        let _ = std::fs::remove_dir_all(dir);
    }
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_421_at_one_node_suspends_the_destination_on_all_three() {
    let Some(r) = Redis::start("a_421_at_one_node_suspends_the_destination_on_all_three") else { return };
    // Every session is refused with a 421 greeting.
    let w = World::start("cluster-421", 3, |c| c.faults.refuse_rate = 1.0).await;
    let (port, dns) = (w.port, &w.dns);
    let nodes = start_nodes_http("cluster-421", &r, dns.addr(), port, "max_conns = 10");
    // Only node 0 has mail for the destination: its 421 suspends it on the other two.
    assert!(inject(nodes[0].0.inject, "app@src.test", "u@c.t.test", "first").await);
    for (i, (_, _, api)) in nodes.iter().enumerate().skip(1) {
        let api = *api;
        wait_for(&format!("node {i} sees the suspension"), Duration::from_secs(15), || {
            let (code, body) = http(api, "GET", "/v1/cluster", "");
            code == 200 && body.contains("\"name\":\"c.t.test\"")
        })
        .await;
    }
    // Mail injected at node 2 now waits: node 2 makes no attempt at all.
    assert!(inject(nodes[2].0.inject, "app@src.test", "v@c.t.test", "second").await);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let log2 = std::fs::read_to_string(nodes[2].1.join("delivery.jsonl")).unwrap_or_default();
    assert!(!log2.contains("v@c.t.test"), "node 2 tried a suspended destination: {log2}");
    let (_, body) = http(nodes[2].2, "GET", "/v1/cluster", "");
    assert!(body.contains("\"live_nodes\":3") && body.contains("\"fallback\":false"), "{body}");
    for (d, dir, _) in nodes {
        assert!(terminate(d));
        let _ = std::fs::remove_dir_all(dir);
    }
    w.finish().await;
}

/// Subjects delivered, each once: (distinct, total).
fn distinct(mail: &Path) -> (usize, usize) {
    let all = subjects(mail);
    let set: std::collections::HashSet<&String> = all.iter().collect();
    (set.len(), all.len())
}

/// Sample the sink's open sessions every 2 ms into `peak` until `done`.
fn sample(sink: &Arc<mxpipe::sink::Sink>, peak: &Arc<AtomicU64>, done: &Arc<AtomicBool>) -> tokio::task::JoinHandle<()> {
    let (sink, peak, done) = (sink.clone(), peak.clone(), done.clone());
    tokio::spawn(async move {
        while !done.load(Ordering::Relaxed) {
            peak.fetch_max(sink.stats().sessions_active, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_mid_run_each_node_keeps_its_share_and_nothing_is_lost() {
    let Some(mut r) = Redis::start("redis_stopped_mid_run_each_node_keeps_its_share_and_nothing_is_lost") else { return };
    let w = World::start("cluster-redis-down", 4, |c| c.faults.delay = Duration::from_millis(20)).await;
    let (mail, port, sink, dns) = (&w.mail, w.port, &w.sink, &w.dns);
    // 6 connections cluster-wide: 2 per node while Redis is down.
    let nodes = start_nodes_http("cluster-redis-down", &r, dns.addr(), port, "max_conns = 6");
    let (n0, n12) = (400, 100);
    // Node 0 alone first: it takes all 6 shared connections, three times its share.
    inject_n(&nodes[0].0, 0, n0).await;
    wait_for("node 0 on all 6 connections", Duration::from_secs(20), || sink.stats().sessions_active == 6).await;
    tokio::join!(inject_n(&nodes[1].0, 1, n12), inject_n(&nodes[2].0, 2, n12));
    r.kill();
    // Each node now holds at most its share of 2: node 0 closes 4 of its connections between
    // messages, the two others open 2 each (6 + 2 + 2 = 10 if node 0 kept its own).
    let (peak, done) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let before = delivered(mail);
    let sampler = sample(sink, &peak, &done);
    tokio::time::sleep(Duration::from_secs(2)).await;
    done.store(true, Ordering::Relaxed);
    sampler.await.unwrap();
    let during = delivered(mail) - before;
    assert!(during > 0, "delivery stopped with Redis down");
    assert!(peak.load(Ordering::Relaxed) <= 6, "{} connections on per-node shares of 6", peak.load(Ordering::Relaxed));
    let (_, body) = http(nodes[0].2, "GET", "/metrics", "");
    assert!(body.contains("mxpipe_cluster_fallback 1"), "node 0 does not say it runs on its share");
    let yielded = body.lines().find_map(|l| l.strip_prefix("mxpipe_cluster_leases_yielded_total ")).and_then(|n| n.parse::<u64>().ok());
    assert!(yielded.is_some_and(|n| n >= 4), "node 0 held 6 connections on a share of 2 and closed {yielded:?}");
    r.restart();
    wait_for("the shared limits resume", Duration::from_secs(10), || {
        let (_, body) = http(nodes[1].2, "GET", "/metrics", "");
        body.contains("mxpipe_cluster_fallback 0")
    })
    .await;
    wait_for("every message delivered", Duration::from_secs(40), || delivered(mail) >= n0 + 2 * n12).await;
    let (uniq, total) = distinct(mail);
    assert_eq!(uniq, n0 + 2 * n12, "a message was lost");
    assert_eq!(total, n0 + 2 * n12, "duplicates without a node dying");
    for (d, dir, _) in nodes {
        assert!(terminate(d));
        let _ = std::fs::remove_dir_all(dir);
    }
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_burst_frees_its_leases_and_delivers_all_after_restart() {
    let Some(r) = Redis::start("a_node_killed_mid_burst_frees_its_leases_and_delivers_all_after_restart") else { return };
    let w = World::start("cluster-kill", 5, |c| c.faults.delay = Duration::from_millis(20)).await;
    let (mail, port, sink, dns) = (&w.mail, w.port, &w.sink, &w.dns);
    let mut nodes = start_nodes_http("cluster-kill", &r, dns.addr(), port, "max_conns = 4");
    let (n0, n12) = (80, 150);
    tokio::join!(inject_n(&nodes[0].0, 0, n0), inject_n(&nodes[1].0, 1, n12), inject_n(&nodes[2].0, 2, n12));
    wait_for("deliveries under way", Duration::from_secs(20), || delivered(mail) >= 20).await;
    let (d0, dir0, _) = nodes.remove(0);
    let inject0 = d0.inject;
    d0.kill9();
    // Its leases (lease_ttl 2 s) expire; the two others then use all 4.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (peak, done) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)));
    let sampler = sample(sink, &peak, &done);
    tokio::time::sleep(Duration::from_secs(2)).await;
    done.store(true, Ordering::Relaxed);
    sampler.await.unwrap();
    assert_eq!(peak.load(Ordering::Relaxed), 4, "the dead node's leases were not freed for the others");
    // Restarted on its spool: everything it had is delivered.
    let d0 = start_daemon(&dir0.join("mxpipe.toml"), inject0);
    wait_for("every message delivered", Duration::from_secs(40), || distinct(mail).0 >= n0 + 2 * n12).await;
    let (uniq, total) = distinct(mail);
    assert_eq!(uniq, n0 + 2 * n12, "a message was lost");
    // Duplicates only of what node 0 had in flight when it died: at most one per connection.
    assert!(total - uniq <= 4, "{} duplicates", total - uniq);
    assert!(terminate(d0));
    let _ = std::fs::remove_dir_all(dir0);
    for (d, dir, _) in nodes {
        assert!(terminate(d));
        let _ = std::fs::remove_dir_all(dir);
    }
    w.finish().await;
}

/// One egress source `w` (127.0.0.8) for all mail, under a warm-up plan of 10 messages on day 1.
const WARMUP: &str = "max_conns = 10\n\n\
    [egress]\ndefault_pool = \"p\"\n\
    [[egress.source]]\nname = \"w\"\naddress = \"127.0.0.8\"\nehlo = \"w.out.test\"\nwarmup = \"new\"\n\
    [[egress.pool]]\nname = \"p\"\nsources = [{ source = \"w\" }]\n\
    [[egress.warmup]]\nname = \"new\"\ncaps = [10, 1000]\nday = \"1h\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sources_warmup_cap_holds_across_three_nodes() {
    let Some(r) = Redis::start("a_sources_warmup_cap_holds_across_three_nodes") else { return };
    let w = World::start("cluster-warm", 6, |_| {}).await;
    let (mail, port, dns) = (&w.mail, w.port, &w.dns);
    let nodes = start_nodes_http("cluster-warm", &r, dns.addr(), port, WARMUP);
    // 12 messages a node: alone, each node would send 10 of them (its own count of day 1).
    let per_node = 12;
    tokio::join!(inject_n(&nodes[0].0, 0, per_node), inject_n(&nodes[1].0, 1, per_node), inject_n(&nodes[2].0, 2, per_node));
    wait_for("the day's cap delivered", Duration::from_secs(20), || delivered(mail) >= 10).await;
    // Long enough for every node to have tried its whole backlog several times over.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(delivered(mail), 10, "the source's day-1 cap of 10 is for the whole cluster");
    // The rest waits, not bounced: every node still holds its undelivered recipients.
    let mut waiting = 0;
    for (_, _, api) in &nodes {
        let (_, body) = http(*api, "GET", "/v1/queues", "");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        waiting += v["queues"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|q| q["domain"] == "c.t.test")
            .map(|q| q["recipients"].as_u64().unwrap())
            .sum::<u64>();
    }
    assert_eq!(waiting, 3 * per_node as u64 - 10, "undelivered mail waits for the next day");
    for (d, dir, _) in nodes {
        assert!(terminate(d));
        let _ = std::fs::remove_dir_all(dir);
    }
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_done_with_its_mail_soon_frees_the_shared_connections_for_the_others() {
    let Some(r) = Redis::start("a_node_done_with_its_mail_soon_frees_the_shared_connections_for_the_others") else { return };
    // 20 ms per message: node 0's backlog makes it open all four connections.
    let w = World::start("cluster-idle", 7, |c| c.faults.delay = Duration::from_millis(20)).await;
    let (mail, port, sink, dns) = (&w.mail, w.port, &w.sink, &w.dns);
    // Idle connections would be kept 30 s: node 0's four would hold every lease that long.
    let nodes: Vec<(Daemon, std::path::PathBuf)> = (0..2)
        .map(|i| {
            let dir = tmpdir(&format!("cluster-idle-{i}"));
            let setup = Setup { tail: tail(&r, &format!("node{i}"), "max_conns = 4"), ..Setup::new(&dir, dns.addr(), port) };
            let config = setup.write(&dir);
            let text = std::fs::read_to_string(&config).unwrap().replace("idle_timeout = \"1s\"", "idle_timeout = \"30s\"");
            std::fs::write(&config, text).unwrap();
            (start_daemon(&config, setup.inject), dir)
        })
        .collect();
    // Node 0 opens the four connections the cluster may have, and finishes its mail.
    let (peak, done) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)));
    let sampler = sample(sink, &peak, &done);
    inject_n(&nodes[0].0, 0, 80).await;
    wait_for("node 0's mail delivered", Duration::from_secs(20), || delivered(mail) >= 80).await;
    let open = sink.stats().sessions_active;
    done.store(true, Ordering::Relaxed);
    sampler.await.unwrap();
    assert_eq!(open, 4, "node 0 holds the cluster's four connections, idle now");
    // Node 1's mail goes out once node 0's idle connections give their leases back (1 s),
    // not after node 0's idle_timeout of 30 s.
    let t = Instant::now();
    inject_n(&nodes[1].0, 1, 5).await;
    wait_for("node 1's mail delivered", Duration::from_secs(12), || delivered(mail) >= 85).await;
    eprintln!("node 1 waited {:?} for a connection", t.elapsed());
    for (d, dir) in nodes {
        assert!(terminate(d));
        let _ = std::fs::remove_dir_all(dir);
    }
    w.finish().await;
}
