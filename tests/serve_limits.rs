//! `[[domain]]` limits in the running daemon: a domain's message rate and connection limit,
//! a connection budget shared by all MX hosts matching a pattern (across shards), and a
//! shutdown that gives rate-limited messages back to the spool untried; and the injection
//! listener's own limits (connections per client, the session deadline, commands without mail).

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

/// How one slow client's connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlowEnd {
    /// Told 421 at the greeting (the per-client cap) and closed.
    Refused,
    /// Admitted, then cut off by the server (after this long) while still trickling bytes.
    Cut(Duration),
    /// Still open when the test gave up on it.
    Survived,
}

/// A slowloris client: connects from `from`, then sends one byte every `every` and never ends
/// a line, until the server closes the connection or `give_up` passes.
async fn slow_client(to: std::net::SocketAddr, from: std::net::IpAddr, every: Duration, give_up: Duration) -> SlowEnd {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(std::net::SocketAddr::new(from, 0)).unwrap();
    let Ok(mut tcp) = sock.connect(to).await else { return SlowEnd::Refused };
    let t0 = std::time::Instant::now();
    let mut greeting = [0u8; 512];
    let n = match tokio::time::timeout(Duration::from_secs(30), tcp.read(&mut greeting)).await {
        Ok(Ok(n)) => n,
        _ => return SlowEnd::Survived,
    };
    if greeting[..n].starts_with(b"421") || n == 0 {
        return SlowEnd::Refused;
    }
    let mut buf = [0u8; 512];
    while t0.elapsed() < give_up {
        if tcp.write_all(b"N").await.is_err() {
            return SlowEnd::Cut(t0.elapsed());
        }
        match tokio::time::timeout(every, tcp.read(&mut buf)).await {
            Err(_) => {} // nothing said: trickle on
            Ok(Ok(0)) | Ok(Err(_)) => return SlowEnd::Cut(t0.elapsed()),
            Ok(Ok(_)) => {
                // The 421 4.4.2: read on until the close.
                let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut Vec::new())).await;
                return SlowEnd::Cut(t0.elapsed());
            }
        }
    }
    SlowEnd::Survived
}

/// Slowloris: 2,000 clients from one address trickle a byte every 2 s (under the idle
/// timeout) while a real injector sends from another address. The per-client cap refuses all
/// but 20 of the slow ones at once, the session deadline cuts those 20 off, and every one of
/// the injector's messages is accepted. Without the cap, the slow clients take all 300 slots
/// and the injector is turned away with 421.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_from_one_address_cannot_lock_out_an_injector() {
    let dir = tmpdir("slowloris");
    let mail = dir.join("mail");
    std::fs::create_dir_all(&mail).unwrap();
    let ip = Ipv4Addr::new(127, 7, 9, 1);
    let port = free_port("127.7.9.1");
    let sink = sink_on(ip, port, &mail, |_| {}).await;
    let mut z = ZoneBuilder::new("slow.test.");
    z.mx("slow.test", 10, "mx.slow.test").a("mx.slow.test", ip);
    let dns = DnsServer::start(vec![z], "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let mut setup = Setup::new(&dir, dns.addr(), port);
    setup.inject_smtp = "max_conns = 300\nmax_conns_per_ip = 20\nsession_timeout = \"6s\"\nidle_timeout = \"4s\"\n".into();
    let config = setup.write(&dir);
    let d = start_daemon(&config, setup.inject);

    let slow_from: std::net::IpAddr = "127.0.0.1".parse().unwrap();
    let mut slow = tokio::task::JoinSet::new();
    for _ in 0..2000 {
        slow.spawn(slow_client(setup.inject, slow_from, Duration::from_secs(2), Duration::from_secs(25)));
    }
    // Let them all connect and be greeted (or refused) before the injector comes.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let injector: std::net::IpAddr = "127.0.0.2".parse().unwrap();
    let mut accepted = 0;
    for conn in 0..5 {
        let mut c = common::Client::connect_from(setup.inject, injector).await;
        let greeting = c.reply().await;
        assert_eq!(greeting.code, 220, "the injector was turned away: {greeting:?}");
        assert_eq!(c.cmd("EHLO app.test").await, 250);
        for i in 0..20 {
            assert_eq!(c.cmd("MAIL FROM:<app@src.test>").await, 250);
            assert_eq!(c.cmd(&format!("RCPT TO:<u{conn}-{i}@slow.test>")).await, 250);
            assert_eq!(c.cmd("DATA").await, 354);
            c.send(format!("Subject: slow {conn}-{i}\r\n\r\nhi\r\n.\r\n")).await;
            if c.reply().await.code == 250 {
                accepted += 1;
            }
        }
        assert_eq!(c.cmd("QUIT").await, 221);
    }
    assert_eq!(accepted, 100, "every message of the injector is accepted");

    let (mut refused, mut cut, mut survived) = (0, Vec::new(), 0);
    while let Some(end) = slow.join_next().await {
        match end.unwrap() {
            SlowEnd::Refused => refused += 1,
            SlowEnd::Cut(after) => cut.push(after),
            SlowEnd::Survived => survived += 1,
        }
    }
    assert_eq!(survived, 0, "a slow client outlived the session deadline");
    assert!(cut.len() <= 20, "{} slow clients were admitted, more than the per-client cap of 20", cut.len());
    assert_eq!(refused + cut.len(), 2000);
    // Cut by the 6 s session deadline, not by chance: none before it, none long after.
    for after in &cut {
        assert!(*after >= Duration::from_secs(5) && *after < Duration::from_secs(15), "cut after {after:?}");
    }
    wait_for("the injected messages delivered", Duration::from_secs(60), || subjects(&mail).len() >= 100).await;
    assert!(terminate(d));
    sink.shutdown(Duration::from_secs(1)).await;
    dns.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Commands that carry no mail are limited per connection (NOOP, VRFY, RSET, HELP, unknown
/// verbs all count), and a new EHLO does not reset the count of bad commands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_without_mail_and_bad_commands_are_bounded_per_connection() {
    let dir = tmpdir("idle-cmds");
    let dns = DnsServer::start(vec![ZoneBuilder::new("t.test.")], "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let mut setup = Setup::new(&dir, dns.addr(), 25);
    setup.inject_smtp = "max_idle_commands = 12\n".into();
    let config = setup.write(&dir);
    let d = start_daemon(&config, setup.inject);

    let mut c = common::Client::connect(setup.inject).await;
    assert_eq!(c.reply().await.code, 220);
    assert_eq!(c.cmd("EHLO app.test").await, 250);
    for verb in ["NOOP", "VRFY bob", "RSET", "HELP"].iter().cycle().take(12) {
        assert_eq!(c.cmd(verb).await / 100, 2, "{verb}");
    }
    // A real transaction does not count against it...
    assert_eq!(c.cmd("MAIL FROM:<app@src.test>").await, 250);
    assert_eq!(c.cmd("RSET").await, 421, "the 13th command without mail");
    c.expect_close().await;

    // Bad commands: 20 per session, however many EHLOs come between them.
    let mut c = common::Client::connect(setup.inject).await;
    assert_eq!(c.reply().await.code, 220);
    let mut last = 0;
    for i in 0..20 {
        assert_eq!(c.cmd("EHLO app.test").await, 250, "EHLO {i}");
        last = c.cmd("MAIL FROM:<no-domain>").await;
        if last == 421 {
            break;
        }
        assert_eq!(last, 501);
    }
    assert_eq!(last, 421, "EHLO reset the bad-command count");
    c.expect_close().await;

    assert!(terminate(d));
    dns.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
