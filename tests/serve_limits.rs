//! `[[domain]]` limits in the running daemon: a domain's message rate and connection limit,
//! a connection budget shared by all MX hosts matching a pattern (across shards), and a
//! shutdown that gives rate-limited messages back to the spool untried.

mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use common::daemon::*;
use mxpipe::dnsserver::{DnsServer, ZoneBuilder};
use mxpipe::sink::Sink;

/// POST `n` messages to each of `rcpts` in one batch; panics unless 202.
async fn post_batch(setup: &Setup, rcpts: &[String], n: usize) {
    let mut msgs = Vec::new();
    for r in rcpts {
        for i in 0..n {
            msgs.push(serde_json::json!({"from": "app@src.test", "to": [r], "data": format!("Subject: {r} {i}\r\n\r\nhi\r\n")}));
        }
    }
    let body = serde_json::json!({ "messages": msgs }).to_string();
    let (code, resp) = http_async(setup.http, "POST", "/v1/messages".into(), body).await;
    assert_eq!(code, 202, "{resp}");
}

/// The delivery log's records.
fn log(dir: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("delivery.jsonl")).unwrap_or_default().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// Wait (60 s at most) until the sink has written `n` messages, sampling its open sessions
/// every 5 ms; the most seen at once.
async fn peak_sessions_until(sink: &Sink, mail: &std::path::Path, n: usize) -> u64 {
    let t0 = std::time::Instant::now();
    let mut peak = 0;
    for i in 0u64.. {
        peak = peak.max(sink.stats().sessions_active);
        if i % 10 == 0 && subjects(mail).len() >= n {
            return peak;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "timed out waiting for {n} deliveries");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    unreachable!()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_domain_message_rate_spaces_deliveries_without_deferring() {
    let dir = tmpdir("rate");
    let mail = dir.join("received");
    std::fs::create_dir_all(&mail).unwrap();
    let port = free_port("127.8.0.1");
    let sink = sink_on(Ipv4Addr::new(127, 8, 0, 1), port, &mail, |_| {}).await;
    let mut z = ZoneBuilder::new("t.test.");
    z.mx("slow.t.test", 10, "mx-slow.t.test").a("mx-slow.t.test", Ipv4Addr::new(127, 8, 0, 1));
    z.mx("fast.t.test", 10, "mx-fast.t.test").a("mx-fast.t.test", Ipv4Addr::new(127, 8, 0, 1));
    let dns = DnsServer::start(vec![z], "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let mut setup = Setup::new(&dir, dns.addr(), port);
    setup.tail = "[[domain]]\nname = \"slow.t.test\"\nmsgs_per_s = 5.0\n".into();
    let d = start_daemon(&setup.write(&dir), setup.inject);

    post_batch(&setup, &["u@slow.t.test".into(), "u@fast.t.test".into()], 11).await;
    wait_for("22 deliveries", Duration::from_secs(30), || subjects(&mail).len() >= 22).await;
    assert!(terminate(d));
    let log = log(&dir);
    let times = |domain: &str| -> Vec<f64> {
        let mut t: Vec<f64> = log
            .iter()
            .filter(|r| r["rcpt"].as_str().unwrap().ends_with(domain))
            .map(|r| {
                assert_eq!((r["status"].as_str(), r["attempt"].as_u64()), (Some("delivered"), Some(1)), "{r}");
                r["ts"].as_f64().unwrap()
            })
            .collect();
        t.sort_by(f64::total_cmp);
        t
    };
    let (slow, fast) = (times("@slow.t.test"), times("@fast.t.test"));
    assert_eq!((slow.len(), fast.len()), (11, 11));
    // Eleven messages at 5/s: ten gaps of 200 ms at least (a little slack for the clock).
    let span = slow[10] - slow[0];
    let min_gap = slow.windows(2).map(|w| w[1] - w[0]).fold(f64::MAX, f64::min);
    assert!(span >= 1.9 && min_gap >= 0.15, "rate not applied: span {span:.3}s, smallest gap {min_gap:.3}s");
    eprintln!("slow.t.test: 11 messages over {span:.2}s (smallest gap {min_gap:.3}s); fast.t.test over {:.3}s", fast[10] - fast[0]);
    sink.shutdown(Duration::from_secs(1)).await;
    dns.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mx_pattern_budget_caps_connections_across_domains_and_shards() {
    let dir = tmpdir("mxbudget");
    let mail = dir.join("received");
    std::fs::create_dir_all(&mail).unwrap();
    let port = free_port("127.8.0.2");
    // Slow replies keep each connection busy, so without the budget many would be open.
    let sink = sink_on(Ipv4Addr::new(127, 8, 0, 2), port, &mail, |c| c.faults.delay = Duration::from_millis(15)).await;
    let mut z = ZoneBuilder::new("t.test.");
    let mut rcpts = Vec::new();
    for i in 0..12 {
        z.mx(&format!("d{i}.t.test"), 10, &format!("mx{i}.big.t.test")).a(&format!("mx{i}.big.t.test"), Ipv4Addr::new(127, 8, 0, 2));
        rcpts.push(format!("u@d{i}.t.test"));
    }
    let dns = DnsServer::start(vec![z], "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let mut setup = Setup::new(&dir, dns.addr(), port);
    setup.engine = "shards = 2\n".into();
    setup.tail = "[[domain]]\nmx_pattern = \"*.big.t.test\"\nmax_conns = 2\n".into();
    let d = start_daemon(&setup.write(&dir), setup.inject);

    post_batch(&setup, &rcpts, 5).await;
    let peak = peak_sessions_until(&sink, &mail, 60).await;
    assert!(terminate(d));
    assert!(peak <= 2, "{peak} connections open at once under a budget of 2");
    assert_eq!(peak, 2, "the budget was never used up: the test shows nothing");
    assert!(log(&dir).iter().all(|r| r["status"] == "delivered"), "something was deferred");
    eprintln!("12 domains under *.big.t.test: at most {peak} connections at once, 60 delivered");
    sink.shutdown(Duration::from_secs(1)).await;
    dns.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_domain_connection_limit_holds_under_a_backlog() {
    let dir = tmpdir("domconns");
    let mail = dir.join("received");
    std::fs::create_dir_all(&mail).unwrap();
    let port = free_port("127.8.0.3");
    let sink = sink_on(Ipv4Addr::new(127, 8, 0, 3), port, &mail, |c| c.faults.delay = Duration::from_millis(5)).await;
    let mut z = ZoneBuilder::new("t.test.");
    z.mx("one.t.test", 10, "mx-one.t.test").a("mx-one.t.test", Ipv4Addr::new(127, 8, 0, 3));
    let dns = DnsServer::start(vec![z], "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let mut setup = Setup::new(&dir, dns.addr(), port);
    // Without the entry, a backlog of 150 would open up to 8 connections (16 parts each).
    setup.tail = "[[domain]]\nname = \"one.t.test\"\nmax_conns = 1\n".into();
    let d = start_daemon(&setup.write(&dir), setup.inject);
    post_batch(&setup, &["u@one.t.test".into()], 150).await;
    let peak = peak_sessions_until(&sink, &mail, 150).await;
    assert!(terminate(d));
    assert_eq!(peak, 1, "connections at once to a domain limited to 1");
    sink.shutdown(Duration::from_secs(1)).await;
    dns.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_gives_rate_limited_messages_back_untried() {
    let dir = tmpdir("ratestop");
    let mail = dir.join("received");
    std::fs::create_dir_all(&mail).unwrap();
    let port = free_port("127.8.0.4");
    let sink = sink_on(Ipv4Addr::new(127, 8, 0, 4), port, &mail, |_| {}).await;
    let mut z = ZoneBuilder::new("t.test.");
    z.mx("trickle.t.test", 10, "mx-trickle.t.test").a("mx-trickle.t.test", Ipv4Addr::new(127, 8, 0, 4));
    let dns = DnsServer::start(vec![z], "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let mut setup = Setup::new(&dir, dns.addr(), port);
    // One message every 30 s: after the first, the rest wait past the shutdown grace.
    setup.tail = "[[domain]]\nname = \"trickle.t.test\"\nmsgs_per_s = 0.0333\n".into();
    let config = setup.write(&dir);
    let d = start_daemon(&config, setup.inject);
    post_batch(&setup, &["u@trickle.t.test".into()], 3).await;
    wait_for("the first delivery", Duration::from_secs(20), || !subjects(&mail).is_empty()).await;
    let t0 = std::time::Instant::now();
    assert!(terminate(d), "serve exits cleanly with messages waiting for their rate");
    let stop_took = t0.elapsed();
    assert_eq!(subjects(&mail).len(), 1);
    // Untried parts are no attempts: nothing deferred in the log.
    assert!(log(&dir).iter().all(|r| r["status"] == "delivered"), "{:?}", log(&dir));

    // After a restart (without the limit) the two waiting messages go.
    setup.tail.clear();
    let d = start_daemon(&setup.write(&dir), setup.inject);
    wait_for("the two messages left", Duration::from_secs(20), || subjects(&mail).len() >= 3).await;
    assert!(terminate(d));
    let attempts: Vec<u64> = log(&dir).iter().map(|r| r["attempt"].as_u64().unwrap()).collect();
    assert_eq!(attempts, vec![1, 1, 1], "each message delivered on its first attempt");
    eprintln!("stopped in {stop_took:?} with 2 messages waiting for the rate; delivered after the restart");
    sink.shutdown(Duration::from_secs(1)).await;
    dns.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
