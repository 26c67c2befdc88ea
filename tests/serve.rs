//! `mxpipe serve` as a process: SMTP injection into the spool, delivery through the engine to
//! sinks found through our DNS server, restart after `kill -9` without losing an acknowledged
//! message, client networks, and DSNs for permanent failures.

mod common;

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::Client;
use mxpipe::dnsserver::{DnsServer, ZoneBuilder};
use mxpipe::sink::{Sink, SinkConfig};
use mxpipe::tls::{self, ServerResumption};

fn free_port(ip: &str) -> u16 {
    std::net::TcpListener::bind((ip, 0)).unwrap().local_addr().unwrap().port()
}

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mxpipe-serve-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A destination sink on `ip`, writing what it accepts to `dir`.
async fn sink_on(ip: Ipv4Addr, port: u16, dir: &Path, adjust: impl FnOnce(&mut SinkConfig)) -> Sink {
    let pki = tls::certs::generate(&["localhost".into()]).unwrap();
    let mut c = SinkConfig::new(tls::server_config(pki.identity, ServerResumption::default()).unwrap());
    c.listen = vec![IpAddr::V4(ip)];
    c.starttls_port = Some(port);
    c.implicit_port = None;
    c.mail_dir = Some(dir.to_path_buf());
    adjust(&mut c);
    Sink::start(c).await.unwrap()
}

struct Daemon {
    child: Child,
    inject: SocketAddr,
}

/// A failing test must not leave the daemon running (it would also hold the output open).
impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write_config(dir: &Path, dns: SocketAddr, smtp_port: u16, inject: SocketAddr, allowed: &str) -> PathBuf {
    let http: SocketAddr = format!("127.0.0.1:{}", free_port("127.0.0.1")).parse().unwrap();
    write_config_http(dir, dns, smtp_port, inject, http, allowed)
}

fn write_config_http(dir: &Path, dns: SocketAddr, smtp_port: u16, inject: SocketAddr, http: SocketAddr, allowed: &str) -> PathBuf {
    let cfg = format!(
        r#"
[engine]
ehlo_name = "serve.test"
connect_timeout = "2s"
command_timeout = "10s"
idle_timeout = "1s"

[dns]
nameserver = "{dns}"

[ports]
smtp = {smtp_port}
smtps = {smtp_port}

[spool]
dir = "{spool}"

[retry]
initial = "1s"
max_interval = "2s"
max_age = "1h"

[inject.smtp]
listen = "{inject}"
allowed_networks = [{allowed}]

[inject.http]
listen = "{http}"

[log]
delivery_log = "{log}"
"#,
        spool = dir.join("spool").display(),
        log = dir.join("delivery.jsonl").display()
    );
    let path = dir.join("mxpipe.toml");
    std::fs::write(&path, cfg).unwrap();
    path
}

fn start_daemon(config: &Path, inject: SocketAddr) -> Daemon {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mxpipe"))
        .args(["serve", "--config"])
        .arg(config)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().expect("serve prints its listener").unwrap();
    assert!(first.contains("injection SMTP on"), "{first}");
    std::thread::spawn(move || for _ in lines {});
    Daemon { child, inject }
}

fn terminate(mut d: Daemon) -> bool {
    unsafe { libc::kill(d.child.id() as i32, libc::SIGTERM) };
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(30) {
        if let Some(s) = d.child.try_wait().unwrap() {
            return s.success();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    d.child.kill().unwrap();
    panic!("serve did not stop within 30 s of SIGTERM");
}

/// Inject one message over SMTP; true if the daemon acknowledged it (250 after the data).
async fn inject(addr: SocketAddr, from: &str, to: &str, subject: &str) -> bool {
    let mut c = Client::connect(addr).await;
    assert_eq!(c.reply().await.code, 220);
    assert_eq!(c.cmd("EHLO app.test").await, 250);
    assert_eq!(c.cmd(&format!("MAIL FROM:<{from}>")).await, 250);
    assert_eq!(c.cmd(&format!("RCPT TO:<{to}>")).await, 250);
    assert_eq!(c.cmd("DATA").await, 354);
    c.send(format!("Subject: {subject}\r\n\r\nhello\r\n.\r\n")).await;
    let ok = c.reply().await.code == 250;
    let _ = c.cmd("QUIT").await;
    ok
}

/// Subjects of the messages a sink wrote to `dir`.
fn subjects(dir: &Path) -> Vec<String> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "eml") {
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            if let Some(l) = text.lines().find(|l| l.starts_with("Subject: ")) {
                v.push(l["Subject: ".len()..].to_string());
            }
        }
    }
    v
}

async fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

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
    let config = write_config(&dir, dns.addr(), port, inject_addr, r#""127.0.0.0/8""#);

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
    let mut d = d;
    d.child.kill().unwrap();
    d.child.wait().unwrap();
    drop(d);
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
    let config = write_config(&dir, dns.addr(), 25, inject_addr, r#""10.0.0.0/8""#);
    let d = start_daemon(&config, inject_addr);
    let mut c = Client::connect(inject_addr).await;
    let r = c.reply().await;
    assert_eq!((r.code, r.enhanced.map(|e| e.to_string())), (554, Some("5.7.1".to_string())));
    assert!(terminate(d));
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
    let config = write_config(&dir, dns.addr(), port, inject_addr, r#""127.0.0.0/8""#);
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
    let log: Vec<serde_json::Value> = std::fs::read_to_string(dir.join("delivery.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let bounce = log.iter().find(|r| r["rcpt"] == "nobody@bad.t.test").expect("bounce logged");
    assert_eq!((bounce["status"].as_str(), bounce["mx"].as_str(), bounce["attempt"].as_u64()), (Some("bounced"), Some("mx-bad.t.test"), Some(1)));
    assert!(bounce["ts"].as_f64().unwrap() > 1.7e9 && bounce["tls"].is_string());
    assert!(log.iter().any(|r| r["rcpt"] == "app@src.t.test" && r["status"] == "delivered"));
    assert_eq!(std::fs::read_dir(&bad_mail).unwrap().count(), 0);
    bad.shutdown(Duration::from_secs(1)).await;
    src.shutdown(Duration::from_secs(1)).await;
    dns.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// One HTTP/1.1 request over a fresh connection: (status, body).
fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: mxpipe\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let code = out.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map_or(String::new(), |(_, b)| b.to_string());
    (code, body)
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
    let config = write_config_http(&dir, dns.addr(), port, inject_addr, api, r#""127.0.0.0/8""#);
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
            break;
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
    let config = write_config_http(&dir, dns.addr(), port, inject_addr, api, r#""127.0.0.0/8""#);
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
