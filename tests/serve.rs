//! `mxpipe serve` as a process: SMTP injection into the spool, delivery through the engine to
//! sinks found through our DNS server, restart after `kill -9` without losing an acknowledged
//! message, client networks, and DSNs for permanent failures.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use common::daemon::*;
use common::Client;
use mxpipe::dnsserver::{DnsServer, ZoneBuilder};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_mail_is_delivered_and_survives_kill_9() {
    let dir = tmpdir("kill");
    let mail = dir.join("received");
    std::fs::create_dir_all(&mail).unwrap();
    let port = free_port("127.4.0.1");
    // A slow destination (20 ms before every reply), so deliveries are in flight at the kill.
    let sink = sink_on(Ipv4Addr::new(127, 4, 0, 1), port, &mail, |c| c.faults.delay = Duration::from_millis(20)).await;
    let mut z = ZoneBuilder::new("t.test.");
    z.mx("d.t.test", 10, "mx.t.test").a("mx.t.test", Ipv4Addr::new(127, 4, 0, 1));
    let dns = DnsServer::start(vec![z], "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let inject_addr: SocketAddr = format!("127.0.0.1:{}", free_port("127.0.0.1")).parse().unwrap();
    let setup = Setup { allowed: r#""127.0.0.0/8""#.into(), inject: inject_addr, ..Setup::new(&dir, dns.addr(), port) };
    let config = setup.write(&dir);

    let d = start_daemon(&config, inject_addr);
    let mut acked = Vec::new();
    for i in 0..40 {
        let subject = format!("serve-{i}");
        if inject(d.inject, "app@src.test", "u@d.t.test", &subject).await {
            acked.push(subject);
        }
    }
    assert_eq!(acked.len(), 40, "every injected message acknowledged");
    // Kill -9 as soon as some (not all) have arrived.
    wait_for("first deliveries", Duration::from_secs(30), || subjects(&mail).len() >= 5).await;
    d.kill9();
    let before = subjects(&mail).len();
    assert!(before < 40, "the kill came after everything was delivered; the test proves nothing");

    // Restart on the same spool: everything acknowledged arrives at least once.
    let d = start_daemon(&config, inject_addr);
    wait_for("all deliveries after restart", Duration::from_secs(60), || {
        let got = subjects(&mail);
        acked.iter().all(|s| got.contains(s))
    })
    .await;
    assert!(terminate(d));
    let got = subjects(&mail);
    let duplicates = got.len() - acked.len();
    // Only transactions in flight at the kill can arrive twice.
    assert!(duplicates <= 8, "{duplicates} duplicates");
    eprintln!("kill -9 after {before} of 40 deliveries: all 40 delivered after restart, {duplicates} duplicates");
    sink.shutdown(Duration::from_secs(1)).await;
    dns.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_outside_allowed_networks_get_5_7_1() {
    let dir = tmpdir("relay");
    let dns = DnsServer::start(vec![ZoneBuilder::new("t.test.")], "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let inject_addr: SocketAddr = format!("127.0.0.1:{}", free_port("127.0.0.1")).parse().unwrap();
    let setup = Setup { allowed: r#""10.0.0.0/8""#.into(), inject: inject_addr, ..Setup::new(&dir, dns.addr(), 25) };
    let config = setup.write(&dir);
    let d = start_daemon(&config, inject_addr);
    let mut c = Client::connect(inject_addr).await;
    let r = c.reply().await;
    assert_eq!((r.code, r.enhanced.map(|e| e.to_string())), (554, Some("5.7.1".to_string())));
    assert!(terminate(d));
    dns.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// `[log] format = "json"`: the daemon's own log on stderr is one JSON object a line, with
/// the level, the message and structured fields, from start to stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_format_json_writes_json_lines() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let dir = tmpdir("logjson");
    let dns = DnsServer::start(vec![ZoneBuilder::new("t.test.")], "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let setup = Setup { log: "format = \"json\"\nlevel = \"info\"\n".into(), ..Setup::new(&dir, dns.addr(), 25) };
    let config = setup.write(&dir);
    let mut child = Command::new(env!("CARGO_BIN_EXE_mxpipe"))
        .args(["serve", "--config"])
        .arg(&config)
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = stdout.next().expect("serve prints its listener").unwrap();
    assert!(first.contains("injection SMTP on"), "the stdout announcement stays text: {first}");
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = tokio::task::spawn_blocking(move || child.wait_with_output()).await.unwrap().unwrap();
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8(out.stderr).unwrap();
    let events: Vec<serde_json::Value> =
        stderr.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l:?}\n{stderr}"))).collect();
    let event = |msg: &str| {
        events.iter().find(|e| e["fields"]["message"] == msg).unwrap_or_else(|| panic!("no {msg:?} event in\n{stderr}")).clone()
    };
    let serving = event("serving");
    assert_eq!(serving["level"], "INFO", "{serving}");
    assert_eq!(serving["fields"]["inject"], setup.inject.to_string(), "{serving}");
    assert_eq!(serving["fields"]["recovered"], 0, "{serving}");
    assert!(serving["timestamp"].is_string() && serving["target"].as_str().is_some_and(|t| t.starts_with("mxpipe")), "{serving}");
    assert_eq!(event("stopping: no new messages; finishing those in flight")["level"], "INFO");
    dns.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_failure_sends_a_dsn_to_the_sender() {
    let dir = tmpdir("dsn");
    let (bad_mail, src_mail) = (dir.join("bad"), dir.join("src"));
    std::fs::create_dir_all(&bad_mail).unwrap();
    std::fs::create_dir_all(&src_mail).unwrap();
    let port = free_port("127.4.0.2");
    let bad = sink_on(Ipv4Addr::new(127, 4, 0, 2), port, &bad_mail, |c| c.faults.perm_fail_rate = 1.0).await;
    let src = sink_on(Ipv4Addr::new(127, 4, 0, 3), port, &src_mail, |_| {}).await;
    let mut z = ZoneBuilder::new("t.test.");
    z.mx("bad.t.test", 10, "mx-bad.t.test").a("mx-bad.t.test", Ipv4Addr::new(127, 4, 0, 2));
    z.mx("src.t.test", 10, "mx-src.t.test").a("mx-src.t.test", Ipv4Addr::new(127, 4, 0, 3));
    let dns = DnsServer::start(vec![z], "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let inject_addr: SocketAddr = format!("127.0.0.1:{}", free_port("127.0.0.1")).parse().unwrap();
    let setup = Setup { allowed: r#""127.0.0.0/8""#.into(), inject: inject_addr, ..Setup::new(&dir, dns.addr(), port) };
    let config = setup.write(&dir);
    let d = start_daemon(&config, inject_addr);
    assert!(inject(d.inject, "app@src.t.test", "nobody@bad.t.test", "will bounce").await);
    wait_for("the DSN", Duration::from_secs(30), || std::fs::read_dir(&src_mail).unwrap().count() >= 1).await;
    assert!(terminate(d));
    let file = std::fs::read_dir(&src_mail).unwrap().next().unwrap().unwrap().path();
    let dsn = std::fs::read_to_string(file).unwrap();
    assert!(dsn.starts_with("X-Mxpipe-Mail-From: <>\r\nX-Mxpipe-Rcpt-To: <app@src.t.test>"), "{dsn}");
    assert!(dsn.contains("multipart/report; report-type=delivery-status"), "{dsn}");
    assert!(dsn.contains("Final-Recipient: rfc822; nobody@bad.t.test"), "{dsn}");
    assert!(dsn.contains("Status: 5.1.1"), "{dsn}");
    assert!(dsn.contains("Subject: will bounce"), "the original headers are returned: {dsn}");
    // The delivery log has the bounce and the DSN's delivery, with their facts.
    let log: Vec<serde_json::Value> =
        std::fs::read_to_string(dir.join("delivery.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let bounce = log.iter().find(|r| r["rcpt"] == "nobody@bad.t.test").expect("bounce logged");
    assert_eq!(
        (bounce["status"].as_str(), bounce["mx"].as_str(), bounce["attempt"].as_u64()),
        (Some("bounced"), Some("mx-bad.t.test"), Some(1))
    );
    assert!(bounce["ts"].as_f64().unwrap() > 1.7e9 && bounce["tls"].is_string());
    assert!(log.iter().any(|r| r["rcpt"] == "app@src.t.test" && r["status"] == "delivered"));
    assert_eq!(std::fs::read_dir(&bad_mail).unwrap().count(), 0);
    bad.shutdown(Duration::from_secs(1)).await;
    src.shutdown(Duration::from_secs(1)).await;
    dns.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_api_injects_and_shows_messages_queues_and_metrics() {
    let dir = tmpdir("http");
    let mail = dir.join("received");
    std::fs::create_dir_all(&mail).unwrap();
    let port = free_port("127.4.0.5");
    let sink = sink_on(Ipv4Addr::new(127, 4, 0, 5), port, &mail, |_| {}).await;
    let mut z = ZoneBuilder::new("t.test.");
    z.mx("h.t.test", 10, "mx-h.t.test").a("mx-h.t.test", Ipv4Addr::new(127, 4, 0, 5));
    let dns = DnsServer::start(vec![z], "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let inject_addr: SocketAddr = format!("127.0.0.1:{}", free_port("127.0.0.1")).parse().unwrap();
    let api: SocketAddr = format!("127.0.0.1:{}", free_port("127.0.0.1")).parse().unwrap();
    let setup = Setup { allowed: r#""127.0.0.0/8""#.into(), inject: inject_addr, http: api, ..Setup::new(&dir, dns.addr(), port) };
    let config = setup.write(&dir);
    let d = start_daemon(&config, inject_addr);

    let body = r#"{"messages":[{"from":"app@src.test","to":["a@h.t.test","b@h.t.test"],"data":"Subject: via api\r\n\r\nhi\r\n"}]}"#;
    let (code, resp) = tokio::task::spawn_blocking(move || http(api, "POST", "/v1/messages", body)).await.unwrap();
    assert_eq!(code, 202, "{resp}");
    let v: serde_json::Value = serde_json::from_str(&resp).unwrap();
    let id = v["ids"][0].as_str().unwrap().to_string();

    let path = format!("/v1/messages/{id}");
    let t0 = Instant::now();
    let view = loop {
        let p = path.clone();
        let (code, resp) = tokio::task::spawn_blocking(move || http(api, "GET", &p, "")).await.unwrap();
        assert_eq!(code, 200, "{resp}");
        let v: serde_json::Value = serde_json::from_str(&resp).unwrap();
        if v["finished"] == true {
            break v;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "not delivered: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for r in view["rcpts"].as_array().unwrap() {
        assert_eq!(r["state"], "delivered", "{view}");
        assert!(r["attempts"][0]["reply"].as_str().unwrap().starts_with("250"), "{view}");
    }
    assert_eq!(subjects(&mail), vec!["via api".to_string()]);

    let (code, resp) = tokio::task::spawn_blocking(move || http(api, "GET", "/v1/queues", "")).await.unwrap();
    assert_eq!((code, serde_json::from_str::<serde_json::Value>(&resp).unwrap()["queues"].as_array().map(Vec::len)), (200, Some(0)));
    let t0 = Instant::now();
    loop {
        let (code, m) = tokio::task::spawn_blocking(move || http(api, "GET", "/metrics", "")).await.unwrap();
        assert_eq!(code, 200);
        assert!(m.contains("# TYPE mxpipe_recipients_delivered_total counter"), "{m}");
        if m.contains("mxpipe_recipients_delivered_total 2") && m.contains("mxpipe_messages_accepted_total 1") {
            // By policy class (the sink's host has no prefix), nothing left with the engine,
            // and the engine's counters (published at most once a second).
            if m.contains("mxpipe_outcomes_total{status=\"delivered\",class=\"opportunistic\"} 2")
                && m.contains("mxpipe_recipients_in_flight 0")
                && m.contains("mxpipe_tls_handshakes_full_total 1")
                && m.contains("mxpipe_dns_lookups_total 1")
            {
                break;
            }
        }
        assert!(t0.elapsed() < Duration::from_secs(5), "{m}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Bad input: a clear 4xx, nothing accepted.
    for (body, want) in [
        ("{not json", 400),
        (r#"{"from":"a@b.test","to":[],"data":"x"}"#, 400),
        (r#"{"from":"a@b.test","to":["no-at-sign"],"data":"x"}"#, 400),
        (r#"{"from":"a@b.test","to":["x@y.test"],"data":"x","surprise":1}"#, 400),
    ] {
        let (code, resp) = tokio::task::spawn_blocking(move || http(api, "POST", "/v1/messages", body)).await.unwrap();
        assert_eq!(code, want, "{body}: {resp}");
        assert!(resp.contains("error"), "{resp}");
    }
    let (code, _) = tokio::task::spawn_blocking(move || http(api, "GET", "/v1/messages/zz", "")).await.unwrap();
    assert_eq!(code, 400);
    let (code, _) = tokio::task::spawn_blocking(move || http(api, "GET", "/v1/messages/FFFFFFF", "")).await.unwrap();
    assert_eq!(code, 404);

    assert!(terminate(d));
    sink.shutdown(Duration::from_secs(1)).await;
    dns.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_reply_suspends_the_destination() {
    let dir = tmpdir("suspend");
    let mail = dir.join("received");
    std::fs::create_dir_all(&mail).unwrap();
    let port = free_port("127.4.0.6");
    // Every RCPT gets "451 4.7.28 ... unusual rate" (Gmail's rate limit).
    let sink = sink_on(Ipv4Addr::new(127, 4, 0, 6), port, &mail, |c| c.faults.rate_limit_rate = 1.0).await;
    let mut z = ZoneBuilder::new("t.test.");
    z.mx("busy.t.test", 10, "mx-busy.t.test").a("mx-busy.t.test", Ipv4Addr::new(127, 4, 0, 6));
    let dns = DnsServer::start(vec![z], "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let inject_addr: SocketAddr = format!("127.0.0.1:{}", free_port("127.0.0.1")).parse().unwrap();
    let api: SocketAddr = format!("127.0.0.1:{}", free_port("127.0.0.1")).parse().unwrap();
    // Retries every second: without the suspension the destination would be hammered.
    let setup = Setup { allowed: r#""127.0.0.0/8""#.into(), inject: inject_addr, http: api, ..Setup::new(&dir, dns.addr(), port) };
    let config = setup.write(&dir);
    let d = start_daemon(&config, inject_addr);
    assert!(inject(d.inject, "app@src.test", "a@busy.t.test", "first").await);
    wait_for("the rate-limit reply", Duration::from_secs(20), || sink.stats().faults.rate_limited >= 1).await;
    assert!(inject(d.inject, "app@src.test", "b@busy.t.test", "second").await);
    // Retry interval is 1-2 s; the first suspension step is 60 s: nothing more is tried.
    tokio::time::sleep(Duration::from_millis(3000)).await;
    assert_eq!(sink.stats().faults.rate_limited, 1, "the suspended destination was tried again");
    let (code, resp) = tokio::task::spawn_blocking(move || http(api, "GET", "/v1/queues", "")).await.unwrap();
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&resp).unwrap();
    let q = v["queues"].as_array().unwrap().iter().find(|q| q["domain"] == "busy.t.test").expect("busy.t.test listed");
    assert_eq!(q["recipients"], 2, "{v}");
    let until = q["suspended_until"].as_f64().expect("suspended");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    assert!(until > now + 50.0 && until < now + 65.0, "suspended for about a minute: {until} vs {now}");
    let (_, m) = tokio::task::spawn_blocking(move || http(api, "GET", "/metrics", "")).await.unwrap();
    assert!(m.contains("mxpipe_destinations_suspended 1"), "{m}");
    assert!(terminate(d));
    sink.shutdown(Duration::from_secs(1)).await;
    dns.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// `serve` turns transparent huge pages off for itself (the kernel's per-process flag, read
/// back from /proc), unless `MIMALLOC_ALLOW_THP` is set, which keeps them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_turns_transparent_huge_pages_off_unless_told_to_keep_them() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let thp = |pid: u32| {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status.lines().find_map(|l| l.strip_prefix("THP_enabled:").map(|v| v.trim().to_string()))
    };
    let dir = tmpdir("thp");
    let dns = DnsServer::start(vec![ZoneBuilder::new("t.test.")], "127.0.0.1:0".parse().unwrap()).await.unwrap();
    for (keep, expect) in [(false, "0"), (true, "1")] {
        let setup = Setup { inject: format!("127.0.0.1:{}", free_port("127.0.0.1")).parse().unwrap(), ..Setup::new(&dir, dns.addr(), 25) };
        let config = setup.write(&dir);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_mxpipe"));
        cmd.args(["serve", "--config"]).arg(&config).env_remove("MIMALLOC_ALLOW_THP").stdout(Stdio::piped()).stderr(Stdio::null());
        if keep {
            cmd.env("MIMALLOC_ALLOW_THP", "1");
        }
        let mut child = cmd.spawn().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = stdout.next().expect("serve prints its listener").unwrap();
        assert!(first.contains("injection SMTP on"), "{first}");
        let seen = thp(child.id());
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let status = tokio::task::spawn_blocking(move || child.wait()).await.unwrap().unwrap();
        assert!(status.success(), "{status:?}");
        match seen {
            Some(v) => assert_eq!(v, expect, "THP_enabled of serve with MIMALLOC_ALLOW_THP {}", if keep { "=1" } else { "unset" }),
            None => {
                eprintln!("SKIPPED: this kernel's /proc/PID/status has no THP_enabled line (Linux < 5.0)");
                break;
            }
        }
    }
    dns.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
