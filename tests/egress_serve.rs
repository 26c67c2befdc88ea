//! Egress pools in `mxpipe serve`: the pool a message named is kept in the spool and used
//! after a restart, the delivery log names the source and pool of each attempt, and an
//! absent source address stops the daemon at start naming the source.

mod common;

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use common::daemon::*;
use mxpipe::dnsserver::{DnsServer, ZoneBuilder};
use mxpipe::engine::MessageTls;
use mxpipe::queue::spool::{Incoming, Spool, SpoolConfig};

/// Pool `p` (the default) sends from 127.0.0.8, pool `q` from 127.0.0.9.
const EGRESS: &str = r#"
[egress]
default_pool = "p"
[[egress.source]]
name = "eight"
address = "127.0.0.8"
ehlo = "eight.out.test"
[[egress.source]]
name = "nine"
address = "127.0.0.9"
ehlo = "nine.out.test"
[[egress.pool]]
name = "p"
sources = [{ source = "eight" }]
[[egress.pool]]
name = "q"
sources = [{ source = "nine" }]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_a_message_named_is_kept_across_a_restart() {
    let dir = tmpdir("egress-restart");
    let mail = dir.join("received");
    std::fs::create_dir_all(&mail).unwrap();
    let port = free_port("127.9.1.1");
    // Only pool q's address may deliver here: a message that lost its pool would go through
    // the default pool p (127.0.0.8) and be refused.
    let sink = sink_on(Ipv4Addr::new(127, 9, 1, 1), port, &mail, |c| {
        c.allowed_clients = Some(vec!["127.0.0.9/32".parse().unwrap()]);
    })
    .await;
    let mut z = ZoneBuilder::new("t.test.");
    z.mx("e.t.test", 10, "mx-e.t.test").a("mx-e.t.test", Ipv4Addr::new(127, 9, 1, 1));
    let dns = DnsServer::start(vec![z], "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let setup = Setup { tail: EGRESS.into(), ..Setup::new(&dir, dns.addr(), port) };
    // Spooled by an earlier run (as intake stores a message that named pool q), not yet sent.
    let spool_dir = setup.spool.clone();
    tokio::task::spawn_blocking(move || {
        let (spool, old) = Spool::open(SpoolConfig::new(&spool_dir)).unwrap();
        assert!(old.is_empty());
        let data: Arc<[u8]> = b"Subject: pooled\r\n\r\nhello\r\n"[..].into();
        let m = Incoming {
            from: "app@src.test".into(),
            rcpts: vec!["u@e.t.test".into()],
            data,
            tls: MessageTls::Default,
            pool: Some("q".into()),
        };
        spool.accept_many(vec![m]).unwrap();
        spool.close().unwrap();
    })
    .await
    .unwrap();
    let config = setup.write(&dir);
    let d = start_daemon(&config, setup.inject);
    assert_eq!(d.recovered(), 1, "{}", d.banner);
    wait_for("the recovered message delivered", Duration::from_secs(30), || subjects(&mail).contains(&"pooled".to_string())).await;
    assert!(terminate(d));
    let log = std::fs::read_to_string(dir.join("delivery.jsonl")).unwrap();
    let line = log.lines().find(|l| l.contains("\"delivered\"")).unwrap_or_else(|| panic!("{log}"));
    assert!(line.contains("\"source\":\"nine\"") && line.contains("\"pool\":\"q\""), "{line}");
    sink.shutdown(Duration::from_secs(1)).await;
    dns.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_to_start_with_a_source_address_the_host_lacks() {
    let dir = tmpdir("egress-absent");
    let setup = Setup { tail: EGRESS.replace("127.0.0.9", "192.0.2.1"), ..Setup::new(&dir, "127.0.0.1:53".parse().unwrap(), 2525) };
    let config = setup.write(&dir);
    let out = serve_expecting_exit(&config, Duration::from_secs(20));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("\"nine\"") && err.contains("192.0.2.1"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_to_one_source_suspends_that_source_not_the_pool() {
    let dir = tmpdir("egress-suspend");
    let mail = dir.join("received");
    std::fs::create_dir_all(&mail).unwrap();
    let port = free_port("127.9.2.1");
    // The destination rate-limits every recipient sent from 127.0.0.8, and only those.
    let sink = sink_on(Ipv4Addr::new(127, 9, 2, 1), port, &mail, |c| {
        c.faults.rate_limit_rate = 1.0;
        c.faults.only_from = Some("127.0.0.8".parse().unwrap());
    })
    .await;
    let mut z = ZoneBuilder::new("t.test.");
    z.mx("s.t.test", 10, "mx-s.t.test").a("mx-s.t.test", Ipv4Addr::new(127, 9, 2, 1));
    let dns = DnsServer::start(vec![z], "127.0.0.1:0".parse().unwrap()).await.unwrap();
    // One pool of both sources, weighted towards the one that is throttled.
    let egress =
        EGRESS.replace("sources = [{ source = \"eight\" }]", "sources = [{ source = \"eight\", weight = 5 }, { source = \"nine\" }]");
    // One message per connection: each is a new choice of source, so the throttled one is
    // certainly tried (a reused connection would keep whichever came first).
    let setup = Setup { tail: egress, engine: "max_msgs_per_conn = 1".into(), ..Setup::new(&dir, dns.addr(), port) };
    let config = setup.write(&dir);
    let d = start_daemon(&config, setup.inject);
    let n = 20;
    for i in 0..n {
        assert!(inject(d.inject, "app@src.test", "u@s.t.test", &format!("s-{i}")).await);
    }
    // A suspension of the whole destination would hold everything for a minute (the first
    // step); the other source carries the mail at once instead.
    wait_for("every message delivered from the other source", Duration::from_secs(30), || subjects(&mail).len() >= n).await;
    let (status, body) = http(setup.http, "GET", "/v1/queues", "");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("s.t.test/eight"), "the source's suspension toward the domain is shown: {body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let eight = v["egress"].as_array().and_then(|a| a.iter().find(|s| s["name"] == "eight")).unwrap_or_else(|| panic!("{body}"));
    assert!(eight["suspended"]["s.t.test"].is_number() && eight["address"] == "127.0.0.8", "{eight}");
    let (_, metrics) = http(setup.http, "GET", "/metrics", "");
    let line = |source: &str, status: &str| format!("mxpipe_egress_attempts_total{{source=\"{source}\",pool=\"p\",status=\"{status}\"}} ");
    assert!(metrics.contains(&format!("{}{n}\n", line("nine", "delivered"))), "{metrics}");
    assert!(metrics.contains(&line("eight", "deferred")) && !metrics.contains(&line("eight", "delivered")), "{metrics}");
    // The operator resumes the destination: its per-source suspensions end as well.
    let (status, body) = http(setup.http, "POST", "/v1/queues/s.t.test/resume", "{}");
    assert_eq!(status, 200, "{body}");
    let (_, body) = http(setup.http, "GET", "/v1/queues", "");
    assert!(!body.contains("s.t.test/eight"), "still suspended after resume: {body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let eight = v["egress"].as_array().and_then(|a| a.iter().find(|s| s["name"] == "eight")).unwrap_or_else(|| panic!("{body}"));
    assert!(eight["suspended"].get("s.t.test").is_none(), "{eight}");
    assert!(terminate(d));
    let log = std::fs::read_to_string(dir.join("delivery.jsonl")).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    let delivered: Vec<&&str> = lines.iter().filter(|l| l.contains("\"delivered\"")).collect();
    assert_eq!(delivered.len(), n, "{log}");
    assert!(delivered.iter().all(|l| l.contains("\"source\":\"nine\"")), "{log}");
    assert!(
        lines.iter().any(|l| l.contains("\"deferred\"") && l.contains("\"source\":\"eight\"")),
        "the throttled source was tried: {log}"
    );
    assert!(!lines.iter().any(|l| l.contains("\"bounced\"")), "{log}");
    sink.shutdown(Duration::from_secs(1)).await;
    dns.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_with_egress_binds_the_pool_an_input_line_names() {
    let dir = tmpdir("egress-send");
    let mail = dir.join("received");
    std::fs::create_dir_all(&mail).unwrap();
    let port = free_port("127.9.3.1");
    // Only pool q's address (127.0.0.9) may deliver here.
    let sink = sink_on(Ipv4Addr::new(127, 9, 3, 1), port, &mail, |c| {
        c.allowed_clients = Some(vec!["127.0.0.9/32".parse().unwrap()]);
    })
    .await;
    let mut z = ZoneBuilder::new("t.test.");
    z.mx("c.t.test", 10, "mx-c.t.test").a("mx-c.t.test", Ipv4Addr::new(127, 9, 3, 1));
    let dns = DnsServer::start(vec![z], "127.0.0.1:0".parse().unwrap()).await.unwrap();
    std::fs::write(dir.join("egress.toml"), EGRESS).unwrap();
    let input = [
        r#"{"id":"q1","from":"s@x.test","to":["a@c.t.test"],"data":"Subject: q1\r\n\r\nhi\r\n","pool":"q"}"#,
        r#"{"id":"p1","from":"s@x.test","to":["b@c.t.test"],"data":"Subject: p1\r\n\r\nhi\r\n"}"#,
    ]
    .join("\n");
    std::fs::write(dir.join("in.jsonl"), input).unwrap();
    let out = tokio::task::spawn_blocking({
        let (dir, dns) = (dir.clone(), dns.addr().to_string());
        move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_mxpipe"))
                .args(["send", "--json", "--input"])
                .arg(dir.join("in.jsonl"))
                .arg("--outcomes")
                .arg(dir.join("out.jsonl"))
                .args(["--dns", &dns, "--port-map", &format!("25={port},26={port}"), "--egress"])
                .arg(dir.join("egress.toml"))
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{out:?}"));
    assert_eq!(summary["outcomes"]["by_egress_source"]["nine"], 1, "{summary}");
    let lines: Vec<serde_json::Value> =
        std::fs::read_to_string(dir.join("out.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let q1 = lines.iter().find(|o| o["id"] == "q1").unwrap();
    assert_eq!((q1["status"].as_str(), q1["source"].as_str(), q1["pool"].as_str()), (Some("delivered"), Some("nine"), Some("q")), "{q1}");
    let p1 = lines.iter().find(|o| o["id"] == "p1").unwrap();
    assert_eq!(
        (p1["status"].as_str(), p1["pool"].as_str()),
        (Some("deferred"), Some("p")),
        "the default pool's 127.0.0.8 is refused: {p1}"
    );
    // An absent address: an error naming the source, before anything is sent.
    std::fs::write(dir.join("bad.toml"), EGRESS.replace("127.0.0.8", "192.0.2.1")).unwrap();
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_mxpipe"))
        .args(["send", "--input"])
        .arg(dir.join("in.jsonl"))
        .arg("--egress")
        .arg(dir.join("bad.toml"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success() && err.contains("\"eight\"") && err.contains("192.0.2.1"), "{err}");
    sink.shutdown(Duration::from_secs(1)).await;
    dns.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// The pool chosen at the door: the HTTP API's `"pool"` and the SMTP header field
/// `X-Mxpipe-Pool:` (taken out before delivery) pick pool q, whose source is the only one the
/// destination accepts; a pool that is not configured is refused on both (400, 550 5.7.0).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_is_chosen_by_the_api_field_or_the_header_and_an_unknown_one_is_refused() {
    let dir = tmpdir("egress-intake");
    let mail = dir.join("received");
    std::fs::create_dir_all(&mail).unwrap();
    let port = free_port("127.9.3.1");
    let sink = sink_on(Ipv4Addr::new(127, 9, 3, 1), port, &mail, |c| {
        c.allowed_clients = Some(vec!["127.0.0.9/32".parse().unwrap()]);
    })
    .await;
    let mut z = ZoneBuilder::new("t.test.");
    z.mx("e.t.test", 10, "mx-e.t.test").a("mx-e.t.test", Ipv4Addr::new(127, 9, 3, 1));
    let dns = DnsServer::start(vec![z], "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let setup = Setup { tail: EGRESS.into(), ..Setup::new(&dir, dns.addr(), port) };
    let d = start_daemon(&setup.write(&dir), setup.inject);

    let body = serde_json::json!({"from": "app@src.test", "to": ["u@e.t.test"], "pool": "q", "data": "Subject: by-api\r\n\r\nx\r\n"});
    let (code, text) = http_async(setup.http, "POST", "/v1/messages".into(), body.to_string()).await;
    assert_eq!(code, 202, "{text}");
    let bad = serde_json::json!({"from": "app@src.test", "to": ["u@e.t.test"], "pool": "nope", "data": "Subject: x\r\n\r\nx\r\n"});
    let (code, text) = http_async(setup.http, "POST", "/v1/messages".into(), bad.to_string()).await;
    assert_eq!(code, 400, "{text}");
    assert!(text.contains("nope"), "{text}");

    let smtp = |subject: &'static str, pool: &'static str| async move {
        let mut c = common::Client::connect(setup.inject).await;
        assert_eq!(c.reply().await.code, 220);
        assert_eq!(c.cmd("EHLO app.test").await, 250);
        assert_eq!(c.cmd("MAIL FROM:<app@src.test>").await, 250);
        assert_eq!(c.cmd("RCPT TO:<u@e.t.test>").await, 250);
        assert_eq!(c.cmd("DATA").await, 354);
        c.send(format!("Subject: {subject}\r\nX-Mxpipe-Pool: {pool}\r\n\r\nx\r\n.\r\n")).await;
        let code = c.reply().await.code;
        let _ = c.cmd("QUIT").await;
        code
    };
    assert_eq!(smtp("by-header", "q").await, 250);
    assert_eq!(smtp("unknown", "nope").await, 550);

    wait_for("both delivered from pool q", Duration::from_secs(30), || subjects(&mail).len() >= 2).await;
    let mut got = subjects(&mail);
    got.sort();
    assert_eq!(got, ["by-api", "by-header"]);
    for e in std::fs::read_dir(&mail).unwrap() {
        let text = std::fs::read_to_string(e.unwrap().path()).unwrap();
        assert!(!text.to_ascii_lowercase().contains("x-mxpipe-pool"), "the directive was delivered: {text}");
        assert!(text.contains("Received: from nine.out.test ([127.0.0.9])"), "{text}");
    }
    assert!(terminate(d));
    sink.shutdown(Duration::from_secs(1)).await;
    dns.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Pool `p` sends from both sources (mostly 127.0.0.8), pool `solo` from 127.0.0.8 only; the
/// MX hosts under `*.site.t.test` are one site.
const SITE: &str = r#"
[egress]
default_pool = "p"
[[egress.source]]
name = "eight"
address = "127.0.0.8"
ehlo = "eight.out.test"
[[egress.source]]
name = "nine"
address = "127.0.0.9"
ehlo = "nine.out.test"
[[egress.pool]]
name = "p"
sources = [{ source = "eight", weight = 5 }, { source = "nine" }]
[[egress.pool]]
name = "solo"
sources = [{ source = "eight" }]

[[domain]]
mx_pattern = "*.site.t.test"
"#;

/// CPU time (user + system) process `pid` has used, from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces) start at state (field 3).
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks / 100.0
}

/// Delivery-log lines of attempts to `domain` from source `source`.
fn attempts(log: &str, domain: &str, source: &str) -> usize {
    let (to, from) = (format!("@{domain}\""), format!("\"source\":\"{source}\""));
    log.lines().filter(|l| l.contains(&to) && l.contains(&from)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_from_one_mx_host_suspends_the_source_toward_its_whole_site() {
    let dir = tmpdir("egress-site");
    let mail = dir.join("received");
    std::fs::create_dir_all(&mail).unwrap();
    let port = free_port("127.9.4.1");
    let sink = sink_on(Ipv4Addr::new(127, 9, 4, 1), port, &mail, |c| {
        c.faults.rate_limit_rate = 1.0;
        c.faults.only_from = Some("127.0.0.8".parse().unwrap());
    })
    .await;
    // Three domains hosted at one provider (two MX host names under one pattern).
    let mut z = ZoneBuilder::new("t.test.");
    z.mx("a.t.test", 10, "mx1.site.t.test")
        .mx("b.t.test", 10, "mx2.site.t.test")
        .mx("c.t.test", 10, "mx1.site.t.test")
        .a("mx1.site.t.test", Ipv4Addr::new(127, 9, 4, 1))
        .a("mx2.site.t.test", Ipv4Addr::new(127, 9, 4, 1));
    let dns = DnsServer::start(vec![z], "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let setup = Setup { tail: SITE.into(), engine: "max_msgs_per_conn = 1".into(), ..Setup::new(&dir, dns.addr(), port) };
    let d = start_daemon(&setup.write(&dir), setup.inject);
    let log_path = dir.join("delivery.jsonl");
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();

    // 1. The site rate-limits source eight for a.t.test: eight is suspended toward the site.
    for i in 0..10 {
        assert!(inject(d.inject, "app@src.test", "u@a.t.test", &format!("a-{i}")).await);
    }
    wait_for("a.t.test's mail delivered from nine", Duration::from_secs(30), || subjects(&mail).len() >= 10).await;
    assert!(attempts(&log(), "a.t.test", "eight") >= 1, "eight was tried: {}", log());
    let (_, body) = http(setup.http, "GET", "/v1/queues", "");
    assert!(body.contains("*.site.t.test/eight"), "the source's suspension toward the site is shown: {body}");
    assert!(!body.contains("a.t.test/eight"), "suspended toward the site, not the one domain: {body}");

    // 2. Another domain of the same site: eight is not even tried (without the site it would
    //    be, five times in six).
    for i in 0..20 {
        assert!(inject(d.inject, "app@src.test", "u@b.t.test", &format!("b-{i}")).await);
    }
    wait_for("b.t.test's mail delivered", Duration::from_secs(30), || subjects(&mail).len() >= 30).await;
    assert_eq!(attempts(&log(), "b.t.test", "eight"), 0, "{}", log());
    assert_eq!(attempts(&log(), "b.t.test", "nine"), 20, "{}", log());

    // 3. A pool of eight alone: its mail to the site waits, untried, with no busy loop.
    let body = serde_json::json!({"from": "app@src.test", "to": ["u@c.t.test"], "pool": "solo", "data": "Subject: c-0\r\n\r\nx\r\n"});
    let (code, text) = http_async(setup.http, "POST", "/v1/messages".into(), body.to_string()).await;
    assert_eq!(code, 202, "{text}");
    let cpu_before = cpu_seconds(d.child.id());
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(attempts(&log(), "c.t.test", "eight"), 0, "held while its only source is suspended: {}", log());
    // Held in the queue, not handed to the engine and given back over and over (that would
    // keep a core busy).
    let cpu = cpu_seconds(d.child.id()) - cpu_before;
    assert!(cpu < 1.0, "the held message went back and forth: {cpu:.2} s of CPU in 3 s");
    // The operator lifts the site's suspension: it goes now (and is throttled again).
    let (status, text) = http(setup.http, "POST", "/v1/queues/*.site.t.test/resume", "");
    assert_eq!(status, 200, "{text}");
    wait_for("c.t.test attempted from eight after the resume", Duration::from_secs(20), || attempts(&log(), "c.t.test", "eight") >= 1)
        .await;
    let (_, body) = http(setup.http, "GET", "/v1/queues", "");
    assert!(body.contains("*.site.t.test/eight"), "throttled again, suspended again: {body}");
    assert!(terminate(d));
    assert!(!log().lines().any(|l| l.contains("\"bounced\"")), "{}", log());
    sink.shutdown(Duration::from_secs(1)).await;
    dns.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_421_greeting_to_one_source_suspends_that_source_and_the_other_carries_the_mail() {
    let dir = tmpdir("egress-greeting");
    let mail = dir.join("received");
    std::fs::create_dir_all(&mail).unwrap();
    let port = free_port("127.9.5.1");
    // Every connection from 127.0.0.8 is refused at the greeting, as receivers throttle an
    // address before any command.
    let sink = sink_on(Ipv4Addr::new(127, 9, 5, 1), port, &mail, |c| {
        c.faults.refuse_rate = 1.0;
        c.faults.only_from = Some("127.0.0.8".parse().unwrap());
    })
    .await;
    let mut z = ZoneBuilder::new("t.test.");
    z.mx("g.t.test", 10, "mx.g.t.test").a("mx.g.t.test", Ipv4Addr::new(127, 9, 5, 1));
    let dns = DnsServer::start(vec![z], "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let tail = SITE.replace("[[domain]]\nmx_pattern = \"*.site.t.test\"\n", "");
    let setup = Setup { tail, engine: "max_msgs_per_conn = 1".into(), ..Setup::new(&dir, dns.addr(), port) };
    let d = start_daemon(&setup.write(&dir), setup.inject);
    let n = 12;
    for i in 0..n {
        assert!(inject(d.inject, "app@src.test", "u@g.t.test", &format!("g-{i}")).await);
    }
    wait_for("every message delivered", Duration::from_secs(40), || subjects(&mail).len() >= n).await;
    let (_, body) = http(setup.http, "GET", "/v1/queues", "");
    assert!(body.contains("g.t.test/eight"), "the refused source is suspended toward the domain: {body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let queues = v["queues"].as_array().unwrap();
    assert!(queues.iter().all(|q| q["domain"] != "g.t.test"), "the destination itself is not suspended: {body}");
    assert!(terminate(d));
    let log = std::fs::read_to_string(dir.join("delivery.jsonl")).unwrap();
    let refused: Vec<&str> = log.lines().filter(|l| l.contains("\"deferred\"") && l.contains("\"source\":\"eight\"")).collect();
    assert!(!refused.is_empty(), "eight was tried: {log}");
    assert!(refused.iter().all(|l| l.contains("\"reply\":\"421 4.7.0") && l.contains("\"mx\":\"mx.g.t.test\"")), "{log}");
    assert_eq!(log.lines().filter(|l| l.contains("\"delivered\"") && l.contains("\"source\":\"nine\"")).count(), n, "{log}");
    sink.shutdown(Duration::from_secs(1)).await;
    dns.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
