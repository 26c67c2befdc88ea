//! The cluster client against a real redis-server (started per test on a free loopback
//! port): several `Cluster` instances in one process act as nodes. Limits hold across them,
//! leases of a node that stops renewing expire after the TTL, the shared rate hands out
//! send times at the rate (counted, not timed), a suspension set by one node is seen by the
//! others, and with Redis killed each node falls back to its share until Redis returns.
//! Without redis-server these tests print a SKIPPED banner (fail with MXPIPE_REQUIRE_PEERS).

#[path = "common/redis.rs"]
mod redis_peer;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mxpipe::cluster::{Cluster, ClusterConfig};
use redis_peer::Redis;

fn cfg(r: &Redis, id: &str) -> ClusterConfig {
    let mut c = ClusterConfig::new(r.url(), id);
    c.lease_ttl = Duration::from_secs(1);
    c.heartbeat = Duration::from_millis(200);
    c.poll = Duration::from_millis(100);
    c.spare_hold = Duration::from_millis(100);
    c
}

async fn nodes(r: &Redis, ids: &[&str]) -> Vec<Arc<Cluster>> {
    let mut v = Vec::new();
    for id in ids {
        v.push(Cluster::start(cfg(r, id)).await.unwrap());
    }
    // Until every node has counted all of them (a heartbeat each).
    wait_for("every node counts all", || v.iter().all(|c| c.live_nodes() >= ids.len())).await;
    v
}

async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < Duration::from_secs(10), "{what}: not within 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Members of the lease set of limit `name` in Redis, straight from the server.
async fn zcard(r: &Redis, key: &str) -> usize {
    let client = redis::Client::open(r.url()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("ZCARD").arg(key).query_async(&mut con).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_limit_holds_across_nodes_and_is_reached() {
    let Some(r) = Redis::start("a_connection_limit_holds_across_nodes_and_is_reached") else { return };
    let ns = nodes(&r, &["a", "b", "c"]).await;
    // Each node's workers take a lease, hold it a moment, drop it, for 1.5 s: never more than
    // 4 held at once in the whole cluster, and 4 reached.
    let now_held = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let got = Arc::new(AtomicUsize::new(0));
    let end = Instant::now() + Duration::from_millis(1500);
    let mut tasks = Vec::new();
    for n in &ns {
        for _ in 0..4 {
            let (n, now_held, most, got) = (n.clone(), now_held.clone(), most.clone(), got.clone());
            tasks.push(tokio::spawn(async move {
                while Instant::now() < end {
                    match n.try_lease("dest:a.test", 4).await {
                        Some(l) => {
                            let h = now_held.fetch_add(1, Ordering::SeqCst) + 1;
                            most.fetch_max(h, Ordering::SeqCst);
                            got.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(30)).await;
                            now_held.fetch_sub(1, Ordering::SeqCst);
                            drop(l);
                        }
                        None => tokio::time::sleep(Duration::from_millis(10)).await,
                    }
                }
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(most.load(Ordering::SeqCst), 4, "the limit is reached and never passed");
    assert!(got.load(Ordering::SeqCst) > 12, "leases went round: {}", got.load(Ordering::SeqCst));
    assert!(ns.iter().all(|n| !n.stats().fallback));
    // Taken all at once, round-robin: exactly 4, and Redis holds exactly those.
    let mut held = Vec::new();
    for _ in 0..5 {
        for n in &ns {
            if let Some(l) = n.try_lease("dest:b.test", 4).await {
                held.push(l);
            }
        }
    }
    assert_eq!(held.len(), 4);
    assert_eq!(zcard(&r, "mxpipe:{conn:dest:b.test}").await, 4);
    // Two dropped: unused, they go back to Redis and node b can take them.
    drop(held.remove(0));
    drop(held.remove(0));
    let mut more = Vec::new();
    let t = Instant::now();
    while more.len() < 2 {
        assert!(t.elapsed() < Duration::from_secs(5), "freed leases not given back");
        if let Some(l) = ns[1].try_lease("dest:b.test", 4).await {
            more.push(l);
        } else {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert!(ns[2].try_lease("dest:b.test", 4).await.is_none(), "still 4 in all");
    drop(held);
    drop(more);
    for n in &ns {
        n.shutdown().await;
    }
    assert_eq!(zcard(&r, "mxpipe:{conn:dest:b.test}").await, 0, "shutdown gives everything back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_of_a_node_that_stops_renewing_expire_after_the_ttl() {
    let Some(r) = Redis::start("leases_of_a_node_that_stops_renewing_expire_after_the_ttl") else { return };
    // The "dead" node runs on a runtime of its own, then the runtime goes away with its
    // background task: its 4 leases stay in Redis, unrenewed.
    let c = cfg(&r, "dead");
    let taken = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let n = rt.block_on(async {
            let node = Cluster::start(c).await.unwrap();
            let mut ls = Vec::new();
            for _ in 0..10 {
                if let Some(l) = node.try_lease("dest:d.test", 4).await {
                    ls.push(l);
                }
            }
            let n = ls.len();
            std::mem::forget(ls);
            n
        });
        drop(rt);
        n
    })
    .join()
    .unwrap();
    assert_eq!(taken, 4);
    let died = Instant::now();
    let ns = nodes(&r, &["alive"]).await;
    let alive = &ns[0];
    assert!(alive.try_lease("dest:d.test", 4).await.is_none(), "the dead node's leases still count");
    let mut mine = Vec::new();
    while mine.len() < 4 {
        assert!(died.elapsed() < Duration::from_secs(5), "dead leases did not expire");
        match alive.try_lease("dest:d.test", 4).await {
            Some(l) => mine.push(l),
            None => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    assert!(died.elapsed() >= Duration::from_millis(800), "expired before the 1 s TTL: {:?}", died.elapsed());
    // The live node renews: after three TTLs its 4 leases still keep a newcomer out.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let other = Cluster::start(cfg(&r, "other")).await.unwrap();
    assert!(other.try_lease("dest:d.test", 4).await.is_none(), "renewed leases expired");
    assert_eq!(zcard(&r, "mxpipe:{conn:dest:d.test}").await, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_rate_hands_out_send_times_at_the_rate() {
    let Some(r) = Redis::start("a_shared_rate_hands_out_send_times_at_the_rate") else { return };
    let ns = nodes(&r, &["a", "b", "c"]).await;
    // 20 messages/s over 2 s, all three nodes asking as fast as they can: the send times
    // falling in the window are 20 × 2 (+1, the first at once), whoever holds them.
    let t0 = Instant::now();
    let horizon = t0 + Duration::from_secs(2);
    let calls0: u64 = ns.iter().map(|n| n.stats().redis_calls).sum();
    let mut tasks = Vec::new();
    for n in &ns {
        let n = n.clone();
        tasks.push(tokio::spawn(async move {
            let mut times = Vec::new();
            loop {
                let d = n.rate_reserve("rate:r.test", 20.0, 8).await;
                let at = Instant::now() + d;
                if at > horizon {
                    return times;
                }
                times.push(at);
            }
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let calls: u64 = ns.iter().map(|n| n.stats().redis_calls).sum::<u64>() - calls0;
    assert!((39..=42).contains(&all.len()), "{} send times in 2 s at 20/s", all.len());
    // Taken in batches: far fewer calls than send times.
    assert!((calls as f64) / (all.len() as f64) < 0.35, "{calls} calls for {} send times", all.len());
    // Spaced: no 200 ms window holds more than 4 + 1.
    all.sort();
    for (i, &t) in all.iter().enumerate() {
        let n = all[i..].iter().take_while(|&&u| u < t + Duration::from_millis(200)).count();
        assert!(n <= 5, "{n} send times within 200 ms");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unused_send_times_go_back() {
    let Some(r) = Redis::start("unused_send_times_go_back") else { return };
    let mut keep = cfg(&r, "keeps");
    keep.spare_hold = Duration::from_secs(10);
    let keeper = Cluster::start(keep).await.unwrap();
    let ns = nodes(&r, &["a", "b"]).await;
    // 60/s: one call reserves half a second (30 send times). A node that used one and keeps
    // the rest (long spare_hold) makes the next node wait most of that half second...
    assert_eq!(keeper.rate_reserve("rate:k", 60.0, 100).await, Duration::ZERO);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let d = ns[1].rate_reserve("rate:k", 60.0, 100).await;
    assert!(d > Duration::from_millis(200), "kept send times were not kept: waited {d:?}");
    // ... one that gives them back (spare_hold 100 ms) does not.
    assert_eq!(ns[0].rate_reserve("rate:g", 60.0, 100).await, Duration::ZERO);
    tokio::time::sleep(Duration::from_millis(250)).await;
    let d = ns[1].rate_reserve("rate:g", 60.0, 100).await;
    assert!(d < Duration::from_millis(100), "unused send times were not given back: waited {d:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suspension_set_by_one_node_is_seen_by_the_others() {
    let Some(r) = Redis::start("a_suspension_set_by_one_node_is_seen_by_the_others") else { return };
    let ns = nodes(&r, &["a", "b", "c"]).await;
    let mut changes = ns[2].suspension_changes();
    changes.borrow_and_update();
    ns[0].suspend("s.test", Duration::from_secs(30), "421 4.7.0 try again later").await;
    assert!(ns[0].suspended("s.test").is_some());
    wait_for("b and c see the suspension", || ns[1].suspended("s.test").is_some() && ns[2].suspended("s.test").is_some()).await;
    assert!(changes.has_changed().unwrap(), "c was told");
    let s = ns[1].suspensions();
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].reason, "421 4.7.0 try again later");
    let left = s[0].until.saturating_duration_since(Instant::now());
    assert!(left > Duration::from_secs(25) && left <= Duration::from_secs(30), "{left:?}");
    assert!(ns[1].suspended("other.test").is_none());
    // A shorter one does not cut the longer short; clearing ends it everywhere.
    ns[2].suspend("s.test", Duration::from_secs(1), "short").await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert!(ns[0].suspended("s.test").is_some(), "the shorter suspension replaced the longer");
    ns[1].unsuspend("s.test").await;
    wait_for("the end seen by all", || ns.iter().all(|n| n.suspended("s.test").is_none())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warmup_cap_is_shared() {
    let Some(r) = Redis::start("a_warmup_cap_is_shared") else { return };
    let ns = nodes(&r, &["a", "b", "c"]).await;
    let name = mxpipe::cluster::count::warmup_name("src1", "gmail", 3);
    let ttl = Duration::from_secs(60);
    // Round-robin until every node is refused: exactly the cap, taken in batches.
    let mut sent = 0;
    let mut refused = [false; 3];
    while !refused.iter().all(|&x| x) {
        for (i, n) in ns.iter().enumerate() {
            if n.count_take(&name, 25, ttl).await {
                sent += 1;
            } else {
                refused[i] = true;
            }
        }
        assert!(sent <= 25, "over the cap");
    }
    assert_eq!(sent, 25);
    // A node that took a batch and stopped gives the rest back for the others.
    let other = mxpipe::cluster::count::warmup_name("src1", "gmail", 4);
    assert!(ns[0].count_take(&other, 10, ttl).await);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let mut b = 0;
    while ns[1].count_take(&other, 10, ttl).await {
        b += 1;
        assert!(b <= 9);
    }
    assert_eq!(b, 9, "spares given back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_agree_on_the_earliest_warmup_start_and_a_give_back_returns_a_count() {
    let Some(r) = Redis::start("nodes_agree_on_the_earliest_warmup_start_and_a_give_back_returns_a_count") else { return };
    let ns = nodes(&r, &["a", "b", "c"]).await;
    let ttl = Duration::from_secs(60);
    // Each node proposes the day 1 it saw; the earliest wins, also for one that comes later.
    assert_eq!(ns[0].earliest("warmstart:s1", 2_000, ttl).await, 2_000);
    assert_eq!(ns[1].earliest("warmstart:s1", 1_000, ttl).await, 1_000);
    assert_eq!(ns[2].earliest("warmstart:s1", 3_000, ttl).await, 1_000);
    // A node that knows a later value than it now proposes asks again (it restarted with an
    // older state file, say): the earlier one wins.
    assert_eq!(ns[2].earliest("warmstart:s1", 500, ttl).await, 500);
    assert_eq!(ns[1].earliest("warmstart:s2", 7_000, ttl).await, 7_000, "names are apart");
    // A count taken and given back (the message was not sent) goes to another node.
    let name = mxpipe::cluster::count::warmup_name("s1", "other", 0);
    assert!(ns[0].count_take(&name, 1, ttl).await);
    assert!(!ns[1].count_take(&name, 1, ttl).await, "the cap of 1 is used");
    ns[0].count_give_back(&name);
    assert_eq!(ns[0].count_used(&name), 0);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(ns[1].count_take(&name, 1, ttl).await, "the count given back is free again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_each_node_keeps_its_share_and_redis_back_resumes_sharing() {
    let Some(mut r) = Redis::start("with_redis_down_each_node_keeps_its_share_and_redis_back_resumes_sharing") else { return };
    let ns = nodes(&r, &["a", "b"]).await;
    for n in &ns {
        n.set_summary(&serde_json::json!({ "queued": 1 }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let list = ns[0].nodes().await.unwrap();
    assert_eq!(list.iter().map(|n| n.id.as_str()).collect::<Vec<_>>(), ["a", "b"]);
    assert_eq!(list[1].summary["queued"], 1);

    r.kill();
    let t = Instant::now();
    let first = ns[0].try_lease("dest:f.test", 4).await;
    assert!(t.elapsed() < Duration::from_secs(2), "a call to a dead Redis took {:?}", t.elapsed());
    assert!(ns[0].is_down() && ns[0].stats().fallback && ns[0].stats().fallbacks == 1);
    // Limit 4 over 2 live nodes: 2 each, never "no limit".
    let mut held: Vec<_> = first.into_iter().collect();
    for _ in 0..5 {
        for n in &ns {
            if let Some(l) = n.try_lease("dest:f.test", 4).await {
                held.push(l);
            }
        }
    }
    assert!(ns[1].is_down());
    assert_eq!(held.len(), 4);
    assert_eq!(ns[0].leases_held("dest:f.test"), 2);
    assert!(held.iter().all(|l| !l.is_shared()));
    // The rate: 20/s over 2 nodes is 10/s each, spaced by the local gate.
    let waits: Vec<Duration> = {
        let mut v = Vec::new();
        for _ in 0..5 {
            v.push(ns[0].rate_reserve("rate:f.test", 20.0, 10).await);
        }
        v
    };
    assert!(waits[4] >= Duration::from_millis(350) && waits[4] <= Duration::from_millis(450), "{waits:?}");
    // Warm-up: a cap of 9 over 2 nodes is 4 for this one.
    let name = mxpipe::cluster::count::warmup_name("s", "other", 1);
    let mut n = 0;
    while ns[0].count_take(&name, 9, Duration::from_secs(60)).await {
        n += 1;
        assert!(n <= 4);
    }
    assert_eq!(n, 4);
    // A suspension seen meanwhile is kept, and written when Redis returns.
    ns[0].suspend("f.test", Duration::from_secs(30), "421 busy").await;
    assert!(ns[0].nodes().await.is_err());

    r.restart();
    wait_for("both nodes leave the fallback", || ns.iter().all(|n| !n.is_down())).await;
    wait_for("b sees the suspension set while Redis was down", || ns[1].suspended("f.test").is_some()).await;
    // The 4 connections opened on local shares are registered: the shared limit is full.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(zcard(&r, "mxpipe:{conn:dest:f.test}").await, 4);
    assert!(ns[0].try_lease("dest:f.test", 4).await.is_none());
    assert!(!ns[0].is_down(), "a refusal at the limit is not a failure");
    drop(held);
    let mut shared = Vec::new();
    let t = Instant::now();
    while shared.len() < 4 {
        assert!(t.elapsed() < Duration::from_secs(5), "freed leases not given back after recovery");
        match ns[1].try_lease("dest:f.test", 4).await {
            Some(l) => shared.push(l),
            None => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    assert!(shared.iter().all(|l| l.is_shared()));
    assert_eq!(ns[0].stats().fallbacks, 1);
    assert_eq!(ns[0].nodes().await.unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_starts_with_redis_down_on_its_share_and_joins_when_it_comes() {
    let Some(mut r) = Redis::start("a_node_starts_with_redis_down_on_its_share_and_joins_when_it_comes") else { return };
    r.kill();
    let mut c = cfg(&r, "early");
    c.expected_nodes = 2;
    let t = Instant::now();
    let n = Cluster::start(c).await.unwrap();
    assert!(t.elapsed() < Duration::from_secs(2), "start waited {:?} for a dead Redis", t.elapsed());
    assert!(n.is_down());
    // Limit 6, 2 nodes expected: 3 here.
    let mut held = Vec::new();
    for _ in 0..10 {
        if let Some(l) = n.try_lease("dest:e.test", 6).await {
            held.push(l);
        }
    }
    assert_eq!(held.len(), 3);
    r.restart();
    wait_for("the node joins when Redis comes", || !n.is_down() && n.live_nodes() == 1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(zcard(&r, "mxpipe:{conn:dest:e.test}").await, 3, "the connections opened meanwhile are registered");
    // Shared again: the rest of the limit (alone now, so all of it).
    for _ in 0..10 {
        if let Some(l) = n.try_lease("dest:e.test", 6).await {
            held.push(l);
        }
    }
    assert_eq!(held.len(), 6);
}
