//! `mxpipe serve` under faults, crashes and bad input, as a process over real sockets and a
//! real disk: `kill -9` at four points (mid-burst, acknowledged but not yet delivered,
//! mid-delivery, waiting for a retry), a flaky destination, a full spool disk (a tmpfs), and
//! malformed SMTP and HTTP injection. Destination sinks listen on 127.5.x.x only.
//!
//! The crash tests count what arrived twice and bound it by what could have been in flight
//! at the kill; run with `--nocapture` to see the counts.

mod common;

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::daemon::*;
use common::tmpfs::Tmpfs;
use mxpipe::dnsserver::{DnsServer, ZoneBuilder};
use mxpipe::reply::{parse_reply, Reply};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Connections per destination the crash tests allow the engine (`[engine]` lines).
const CONNS: usize = 2;
/// A sink waits this long before each reply, so that a transaction takes several of them
/// (far longer than a group commit) and deliveries are in flight when the daemon is killed.
const SINK_DELAY: Duration = Duration::from_millis(20);
/// At most what can arrive twice after a kill, per destination: on each connection one
/// transaction the sink had stored but whose 250 the daemon never read, and one whose
/// "delivered" record was in the spool frame not yet synced.
const IN_FLIGHT_BOUND: usize = 2 * CONNS;

fn engine_conns() -> String {
    format!("max_conns_per_dest = {CONNS}\n")
}

/// A DNS server where each `(domain, ip)` gets an MX `mx-<domain>` with that address.
async fn dns_for(dests: &[(&str, Ipv4Addr)]) -> DnsServer {
    let mut z = ZoneBuilder::new("t.test.");
    for (domain, ip) in dests {
        let mx = format!("mx-{domain}");
        z.mx(domain, 10, &mx).a(&mx, *ip);
    }
    DnsServer::start(vec![z], "127.0.0.1:0".parse().unwrap()).await.unwrap()
}

fn subdir(dir: &Path, name: &str) -> PathBuf {
    let d = dir.join(name);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// How many times each subject arrived at a sink.
fn tally(mail: &Path) -> HashMap<String, usize> {
    let mut t = HashMap::new();
    for s in subjects(mail) {
        *t.entry(s).or_insert(0) += 1;
    }
    t
}

/// Deliveries beyond the first, summed over subjects.
fn duplicates(t: &HashMap<String, usize>) -> usize {
    t.values().map(|n| n - 1).sum()
}

/// The files a sink wrote, whole.
fn sink_files(mail: &Path) -> Vec<String> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(mail).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "eml") {
            v.push(std::fs::read_to_string(&p).unwrap());
        }
    }
    v
}

/// The delivery log, one JSON value per line.
fn delivery_log(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("delivery.jsonl")).unwrap_or_default().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// `"250 2.0.0"`: a reply's code and enhanced code, for assertions.
fn status(r: &Reply) -> String {
    match &r.enhanced {
        Some(e) => format!("{} {e}", r.code),
        None => r.code.to_string(),
    }
}

/// The spool id in "250 2.0.0 Ok: queued as 1F".
fn queued_id(r: &Reply) -> u64 {
    let word = r.lines[0].rsplit(' ').next().unwrap();
    u64::from_str_radix(word, 16).unwrap_or_else(|_| panic!("no id in {:?}", r.lines))
}

/// An SMTP client that reports a dead or closing server as an error instead of panicking:
/// the daemon is killed in the middle of some of these conversations.
struct Smtp {
    io: TcpStream,
    buf: Vec<u8>,
}

type Io<T> = Result<T, String>;

impl Smtp {
    /// Connect and read the greeting.
    async fn connect(addr: SocketAddr) -> Io<Smtp> {
        let io = TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
        let mut c = Smtp { io, buf: Vec::new() };
        let r = c.reply().await?;
        if r.code != 220 {
            return Err(format!("greeting {}", status(&r)));
        }
        Ok(c)
    }

    /// Connect, greet with EHLO; panics on failure (for tests where the daemon stays up).
    async fn ready(addr: SocketAddr) -> Smtp {
        let mut c = Smtp::connect(addr).await.unwrap();
        assert_eq!(c.cmd("EHLO app.test").await.unwrap().code, 250);
        c
    }

    async fn send(&mut self, b: impl AsRef<[u8]>) -> Io<()> {
        self.io.write_all(b.as_ref()).await.map_err(|e| format!("write: {e}"))
    }

    async fn reply(&mut self) -> Io<Reply> {
        loop {
            match parse_reply(&self.buf) {
                Ok(Some((r, n))) => {
                    self.buf.drain(..n);
                    return Ok(r);
                }
                Ok(None) => {}
                Err(e) => return Err(format!("malformed reply: {e:?}")),
            }
            let mut chunk = [0u8; 16384];
            let n = tokio::time::timeout(Duration::from_secs(15), self.io.read(&mut chunk))
                .await
                .map_err(|_| "no reply within 15 s".to_string())?
                .map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err("connection closed".into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    async fn cmd(&mut self, line: &str) -> Io<Reply> {
        self.send(format!("{line}\r\n")).await?;
        self.reply().await
    }

    /// One transaction; `content` is sent as is and must end with the terminating dot line.
    /// Returns the first reply that is not a 250/354 on the way, else the final reply.
    async fn transaction(&mut self, from: &str, to: &[&str], content: &[u8]) -> Io<Reply> {
        let r = self.cmd(&format!("MAIL FROM:<{from}>")).await?;
        if r.code != 250 {
            return Ok(r);
        }
        for t in to {
            let r = self.cmd(&format!("RCPT TO:<{t}>")).await?;
            if r.code != 250 {
                return Ok(r);
            }
        }
        let r = self.cmd("DATA").await?;
        if r.code != 354 {
            return Ok(r);
        }
        self.send(content).await?;
        self.reply().await
    }

    /// A well-formed message with this subject.
    async fn message(&mut self, from: &str, to: &[&str], subject: &str) -> Io<Reply> {
        self.transaction(from, to, format!("Subject: {subject}\r\n\r\nhello\r\n.\r\n").as_bytes()).await
    }

    /// True if the server closes the connection within 10 s (sending nothing more).
    async fn closes(&mut self) -> bool {
        let mut rest = Vec::new();
        matches!(tokio::time::timeout(Duration::from_secs(10), self.io.read_to_end(&mut rest)).await, Ok(Ok(_)) if rest.is_empty())
    }
}

/// `GET path` on the API as JSON.
async fn get_json(api: SocketAddr, path: String) -> serde_json::Value {
    let (code, body) = http_async(api, "GET", path.clone(), String::new()).await;
    assert_eq!(code, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// A counter from `GET /metrics`.
async fn metric(api: SocketAddr, name: &str) -> u64 {
    let (code, m) = http_async(api, "GET", "/metrics".into(), String::new()).await;
    assert_eq!(code, 200);
    let line = m.lines().find(|l| l.split(' ').next() == Some(name)).unwrap_or_else(|| panic!("no {name} in {m}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

/// Wait (5 s at most) for a counter to reach `want`, then check that it stays there a moment.
async fn settled_metric(api: SocketAddr, name: &str, want: u64) {
    let t0 = Instant::now();
    while metric(api, name).await < want && t0.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(metric(api, name).await, want, "{name}");
}

/// A POST to `/v1/messages` with any bytes as the body and this `Content-Length`, for bodies
/// that are not valid UTF-8 or longer than the server takes. The body is written from another
/// thread while the answer is read, because the server may answer before reading all of it.
fn post_raw(api: SocketAddr, body: Vec<u8>) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(api).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        s,
        "POST /v1/messages HTTP/1.1\r\nHost: {api}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let _ = w.write_all(&body);
    });
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let _ = s.shutdown(std::net::Shutdown::Both);
    writer.join().unwrap();
    let out = String::from_utf8_lossy(&out).into_owned();
    let code = out.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, out.split_once("\r\n\r\n").map_or(String::new(), |(_, b)| b.to_string()))
}

// ---------------------------------------------------------------------------------------------
// Crash safety: kill -9 at four points, restart on the same spool.

/// One injecting application: sends messages on one connection until the daemon dies (or
/// `limit`), recording each subject once it got its 250. Returns why it stopped.
async fn burst_client(addr: SocketAddr, client: usize, to: &'static str, acked: Arc<Mutex<Vec<String>>>, limit: usize) -> String {
    let mut c = match Smtp::connect(addr).await {
        Ok(c) => c,
        Err(e) => return e,
    };
    if let Err(e) = c.cmd("EHLO app.test").await {
        return e;
    }
    for n in 0..limit {
        let subject = format!("burst-{client}-{n}");
        match c.message("app@src.t.test", &[to], &subject).await {
            Ok(r) if r.code == 250 => acked.lock().unwrap().push(subject),
            Ok(r) => return format!("refused: {}", status(&r)),
            Err(e) => return e,
        }
    }
    "limit reached".into()
}

/// (a) Four applications inject concurrently; the daemon is killed in the middle of their
/// burst. Every message that got its 250 is delivered after the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_mid_burst_from_concurrent_clients_loses_no_acknowledged_message() {
    let dir = tmpdir("f-burst");
    let mail = subdir(&dir, "received");
    let ip = Ipv4Addr::new(127, 5, 1, 1);
    let port = free_port("127.5.1.1");
    let sink = sink_on(ip, port, &mail, |c| c.faults.delay = SINK_DELAY).await;
    let dns = dns_for(&[("b.t.test", ip)]).await;
    let setup = Setup { engine: engine_conns(), ..Setup::new(&dir, dns.addr(), port) };
    let config = setup.write(&dir);
    let d = start_daemon(&config, setup.inject);

    let acked = Arc::new(Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..4).map(|c| tokio::spawn(burst_client(setup.inject, c, "u@b.t.test", acked.clone(), 1000))).collect();
    wait_for("40 acknowledged messages", Duration::from_secs(20), || acked.lock().unwrap().len() >= 40).await;
    d.kill9();
    let mut stops = Vec::new();
    for c in clients {
        stops.push(c.await.unwrap());
    }
    assert!(stops.iter().all(|s| s != "limit reached"), "a client finished before the kill: {stops:?}");
    // A message the sink had fully received is stored even though its sender died.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let at_kill = tally(&mail);
    let acked: Vec<String> = acked.lock().unwrap().clone();
    let undelivered: Vec<&String> = acked.iter().filter(|s| !at_kill.contains_key(*s)).collect();
    assert!(!undelivered.is_empty(), "everything was delivered before the kill; the test proves nothing");

    let d = start_daemon(&config, setup.inject);
    assert!(d.recovered() >= undelivered.len(), "{} recovered, {} acknowledged and not delivered", d.recovered(), undelivered.len());
    let recovered = d.recovered();
    wait_for("every acknowledged message", Duration::from_secs(30), || {
        let got = tally(&mail);
        acked.iter().all(|s| got.contains_key(s))
    })
    .await;
    assert!(terminate(d));
    let got = tally(&mail);
    let dups = duplicates(&got);
    let unacked = got.keys().filter(|s| !acked.contains(s)).count();
    eprintln!(
        "kill -9 mid-burst: {} acknowledged, {} delivered before the kill, {recovered} recovered, \
         all delivered after restart; {dups} duplicates; {unacked} delivered without a 250 (killed between fsync and reply)",
        acked.len(),
        at_kill.len()
    );
    assert!(dups <= IN_FLIGHT_BOUND.min(at_kill.len()), "{dups} duplicates: more than could be in flight");
    assert!(unacked <= 4, "at most one unanswered message per client: {unacked}");
    sink.shutdown(Duration::from_secs(1)).await;
    dns.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// (b) Killed right after the acknowledgments, with the destination down so nothing could
/// be delivered yet: everything is recovered, delivered once, with no duplicate at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_right_after_acks_with_destination_down_delivers_each_once() {
    let dir = tmpdir("f-acked");
    let mail = subdir(&dir, "received");
    let ip = Ipv4Addr::new(127, 5, 2, 1);
    let port = free_port("127.5.2.1");
    let dns = dns_for(&[("down.t.test", ip)]).await;
    let setup = Setup::new(&dir, dns.addr(), port);
    let config = setup.write(&dir);
    let d = start_daemon(&config, setup.inject);
    let mut c = Smtp::ready(setup.inject).await;
    let acked: Vec<String> = (0..30).map(|i| format!("acked-{i}")).collect();
    for s in &acked {
        assert_eq!(status(&c.message("app@src.t.test", &["u@down.t.test"], s).await.unwrap()), "250 2.0.0");
    }
    d.kill9();

    let sink = sink_on(ip, port, &mail, |_| {}).await;
    let d = start_daemon(&config, setup.inject);
    assert_eq!(d.recovered(), 30, "{}", d.banner);
    wait_for("every acknowledged message", Duration::from_secs(20), || tally(&mail).len() == 30).await;
    assert!(terminate(d));
    let got = tally(&mail);
    eprintln!("kill -9 after 30 acknowledgments, destination down: 30 recovered, {} delivered, {} duplicates", got.len(), duplicates(&got));
    assert_eq!(got.keys().collect::<HashSet<_>>(), acked.iter().collect::<HashSet<_>>());
    assert_eq!(duplicates(&got), 0, "nothing was in flight, so nothing may arrive twice");
    sink.shutdown(Duration::from_secs(1)).await;
    dns.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// (c) Killed while deliveries to two slow destinations are in flight, each message having a
/// recipient at both: every recipient of every message gets it after the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_mid_delivery_delivers_every_recipient_with_bounded_duplicates() {
    let dir = tmpdir("f-midway");
    let (mail1, mail2) = (subdir(&dir, "one"), subdir(&dir, "two"));
    let (ip1, ip2) = (Ipv4Addr::new(127, 5, 3, 1), Ipv4Addr::new(127, 5, 3, 2));
    let port = free_port("127.5.3.1");
    let sink1 = sink_on(ip1, port, &mail1, |c| c.faults.delay = SINK_DELAY).await;
    let sink2 = sink_on(ip2, port, &mail2, |c| c.faults.delay = SINK_DELAY * 2).await;
    let dns = dns_for(&[("one.t.test", ip1), ("two.t.test", ip2)]).await;
    let setup = Setup { engine: engine_conns(), ..Setup::new(&dir, dns.addr(), port) };
    let config = setup.write(&dir);
    let d = start_daemon(&config, setup.inject);
    let mut c = Smtp::ready(setup.inject).await;
    let n = 40;
    let acked: Vec<String> = (0..n).map(|i| format!("midway-{i}")).collect();
    for s in &acked {
        assert_eq!(c.message("app@src.t.test", &["a@one.t.test", "b@two.t.test"], s).await.unwrap().code, 250);
    }
    wait_for("the first deliveries", Duration::from_secs(20), || subjects(&mail2).len() >= 5).await;
    d.kill9();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (at_kill1, at_kill2) = (tally(&mail1), tally(&mail2));
    assert!(at_kill2.len() < n, "everything was delivered before the kill; the test proves nothing");
    let unfinished = acked.iter().filter(|s| !(at_kill1.contains_key(*s) && at_kill2.contains_key(*s))).count();

    let d = start_daemon(&config, setup.inject);
    assert!(d.recovered() >= unfinished, "{} recovered, {unfinished} not at both sinks", d.recovered());
    let recovered = d.recovered();
    wait_for("every recipient of every message", Duration::from_secs(30), || {
        let (g1, g2) = (tally(&mail1), tally(&mail2));
        acked.iter().all(|s| g1.contains_key(s) && g2.contains_key(s))
    })
    .await;
    assert!(terminate(d));
    let (got1, got2) = (tally(&mail1), tally(&mail2));
    let (dups1, dups2) = (duplicates(&got1), duplicates(&got2));
    eprintln!(
        "kill -9 mid-delivery: {n} messages x 2 destinations; at the kill {} and {} delivered; {recovered} recovered; \
         after restart all delivered, duplicates {dups1} and {dups2}",
        at_kill1.len(),
        at_kill2.len()
    );
    assert!(dups1 <= IN_FLIGHT_BOUND.min(at_kill1.len()), "{dups1} duplicates at one.t.test");
    assert!(dups2 <= IN_FLIGHT_BOUND.min(at_kill2.len()), "{dups2} duplicates at two.t.test");
    assert_eq!(got1.len() + got2.len(), 2 * n, "nothing but what was injected");
    sink1.shutdown(Duration::from_secs(1)).await;
    sink2.shutdown(Duration::from_secs(1)).await;
    dns.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// (d) Killed while every message waits for its retry after a 451: after the restart they
/// are all delivered, once, and their attempt history survived (the delivery is attempt 2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_while_waiting_for_retry_keeps_messages_and_history() {
    let dir = tmpdir("f-retry");
    let mail = subdir(&dir, "received");
    let ip = Ipv4Addr::new(127, 5, 4, 1);
    let port = free_port("127.5.4.1");
    let failing = sink_on(ip, port, &mail, |c| c.faults.temp_fail_rate = 1.0).await;
    let dns = dns_for(&[("later.t.test", ip)]).await;
    // The retry is 2.4-3.6 s away: the kill lands while every message waits for it.
    let setup = Setup { retry: "initial = \"3s\"\nmax_interval = \"3s\"\nmax_age = \"1h\"\n".into(), ..Setup::new(&dir, dns.addr(), port) };
    let config = setup.write(&dir);
    let d = start_daemon(&config, setup.inject);
    let mut c = Smtp::ready(setup.inject).await;
    let mut ids = HashMap::new();
    for i in 0..20 {
        let subject = format!("retry-{i}");
        let r = c.message("app@src.t.test", &["u@later.t.test"], &subject).await.unwrap();
        assert_eq!(r.code, 250);
        ids.insert(queued_id(&r), subject);
    }
    wait_for("a 451 for every message", Duration::from_secs(20), || {
        let deferred: HashSet<u64> =
            delivery_log(&dir).iter().filter(|l| l["status"] == "deferred").filter_map(|l| l["spool_id"].as_u64()).collect();
        ids.keys().all(|id| deferred.contains(id))
    })
    .await;
    // Let the deferred attempts reach the disk (one group commit), well before the retry.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let any = *ids.keys().next().unwrap();
    let view = get_json(setup.http, format!("/v1/messages/{any:X}")).await;
    assert_eq!(view["rcpts"][0]["state"], "deferred", "{view}");
    assert!(view["next_attempt"].is_f64(), "waiting for a retry: {view}");
    d.kill9();
    assert!(subjects(&mail).is_empty());
    failing.shutdown(Duration::from_secs(1)).await;

    let sink = sink_on(ip, port, &mail, |_| {}).await;
    let t0 = Instant::now();
    let d = start_daemon(&config, setup.inject);
    assert_eq!(d.recovered(), 20, "{}", d.banner);
    wait_for("every message", Duration::from_secs(20), || tally(&mail).len() == 20).await;
    let after = t0.elapsed();
    assert!(terminate(d));
    let got = tally(&mail);
    assert_eq!(got.keys().collect::<HashSet<_>>(), ids.values().collect::<HashSet<_>>());
    assert_eq!(duplicates(&got), 0);
    let log = delivery_log(&dir);
    for id in ids.keys() {
        let l = log.iter().find(|l| l["spool_id"] == *id && l["status"] == "delivered").expect("delivery logged");
        assert!(l["attempt"].as_u64().unwrap() >= 2, "the deferred attempt before the crash was forgotten: {l}");
    }
    eprintln!("kill -9 while 20 messages waited for a retry: 20 recovered, delivered {after:?} after the restart, 0 duplicates");
    sink.shutdown(Duration::from_secs(1)).await;
    dns.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------------------
// Faults at the destination.

/// A destination that fails 20% of recipients with 451 and drops 10% of connections at the
/// end of the data, one that always answers 451, and a short `max_age`: every recipient ends
/// delivered (exactly once) or bounced with a DSN to the sender; nothing is left pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flaky_destination_every_recipient_ends_delivered_or_bounced_with_dsn() {
    let dir = tmpdir("f-flaky");
    let (flaky_mail, never_mail, src_mail) = (subdir(&dir, "flaky"), subdir(&dir, "never"), subdir(&dir, "src"));
    let (ip_f, ip_n, ip_s) = (Ipv4Addr::new(127, 5, 5, 1), Ipv4Addr::new(127, 5, 5, 2), Ipv4Addr::new(127, 5, 5, 3));
    let port = free_port("127.5.5.1");
    let flaky = sink_on(ip_f, port, &flaky_mail, |c| {
        c.faults.temp_fail_rate = 0.2;
        c.faults.drop_rate = 0.1;
    })
    .await;
    let never = sink_on(ip_n, port, &never_mail, |c| c.faults.temp_fail_rate = 1.0).await;
    let src = sink_on(ip_s, port, &src_mail, |_| {}).await;
    let dns = dns_for(&[("flaky.t.test", ip_f), ("never.t.test", ip_n), ("src.t.test", ip_s)]).await;
    let setup = Setup { retry: "initial = \"1s\"\nmax_interval = \"1s\"\nmax_age = \"4s\"\n".into(), ..Setup::new(&dir, dns.addr(), port) };
    let config = setup.write(&dir);
    let d = start_daemon(&config, setup.inject);

    // 30 messages to the flaky destination, 5 to the dead one, 5 to both.
    let rcpts = |i: usize| -> Vec<String> {
        match i {
            0..=29 => vec![format!("f{i}@flaky.t.test")],
            30..=34 => vec![format!("n{i}@never.t.test")],
            _ => vec![format!("f{i}@flaky.t.test"), format!("n{i}@never.t.test")],
        }
    };
    let msgs: Vec<serde_json::Value> = (0..40)
        .map(|i| serde_json::json!({"from": "app@src.t.test", "to": rcpts(i), "data": format!("Subject: flaky-{i}\r\n\r\nhi\r\n")}))
        .collect();
    let (code, resp) = http_async(setup.http, "POST", "/v1/messages".into(), serde_json::json!({ "messages": msgs }).to_string()).await;
    assert_eq!(code, 202, "{resp}");
    let ids: Vec<String> = serde_json::from_str::<serde_json::Value>(&resp).unwrap()["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 40);

    // Wait for every message's final outcome.
    let t0 = Instant::now();
    let mut views = Vec::new();
    for id in &ids {
        loop {
            let v = get_json(setup.http, format!("/v1/messages/{id}")).await;
            if v["finished"] == true {
                views.push(v);
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(25), "no final outcome: {v}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // And for the DSNs of the bounced ones.
    let bounced_msgs: Vec<usize> =
        (0..40).filter(|&i| views[i]["rcpts"].as_array().unwrap().iter().any(|r| r["state"] == "bounced")).collect();
    wait_for("the DSNs", Duration::from_secs(15), || sink_files(&src_mail).len() >= bounced_msgs.len()).await;
    // Let the log catch up with the DSN deliveries before stopping.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let queues = get_json(setup.http, "/v1/queues".into()).await;
    assert!(terminate(d));

    let flaky_got = tally(&flaky_mail);
    let dsns = sink_files(&src_mail);
    let log = delivery_log(&dir);
    let (mut delivered, mut bounced) = (0, 0);
    for (i, v) in views.iter().enumerate() {
        let spool_id = u64::from_str_radix(&ids[i], 16).unwrap();
        for r in v["rcpts"].as_array().unwrap() {
            let rcpt = r["rcpt"].as_str().unwrap();
            let state = r["state"].as_str().unwrap();
            let subject = format!("flaky-{i}");
            let at_flaky = flaky_got.get(&subject).copied().unwrap_or(0);
            let final_logged = log.iter().filter(|l| l["spool_id"] == spool_id && l["rcpt"] == rcpt && l["status"] != "deferred").count();
            assert_eq!(final_logged, 1, "{rcpt} of message {i}: one final line in the delivery log ({state})");
            let dsn_for = dsns.iter().filter(|d| d.contains(&format!("Final-Recipient: rfc822; {rcpt}\r\n"))).count();
            match state {
                "delivered" => {
                    delivered += 1;
                    assert!(rcpt.ends_with("@flaky.t.test"), "{v}");
                    assert_eq!(at_flaky, 1, "{rcpt}: delivered exactly once");
                    assert_eq!(dsn_for, 0, "{rcpt}: delivered, yet a DSN");
                }
                "bounced" => {
                    bounced += 1;
                    if rcpt.ends_with("@flaky.t.test") {
                        assert_eq!(at_flaky, 0, "{rcpt}: bounced, yet delivered");
                    }
                    assert_eq!(dsn_for, 1, "{rcpt}: bounced: one DSN to the sender");
                }
                other => panic!("{rcpt} of message {i} ended {other}: {v}"),
            }
        }
    }
    for dsn in &dsns {
        assert!(dsn.starts_with("X-Mxpipe-Mail-From: <>\r\nX-Mxpipe-Rcpt-To: <app@src.t.test>"), "{dsn}");
        assert!(dsn.contains("Action: failed") && dsn.contains("Status: 4.4.7"), "{dsn}");
    }
    assert_eq!(dsns.len(), bounced_msgs.len(), "one DSN per message with a bounced recipient");
    assert!(subjects(&never_mail).is_empty());
    assert_eq!(queues["queues"].as_array().map(Vec::len), Some(0), "nothing left queued: {queues}");
    let fs = flaky.stats().faults;
    eprintln!(
        "flaky destination: {delivered} recipients delivered, {bounced} bounced ({} messages, one DSN each); \
         sink faults: {} x 451, {} dropped connections",
        bounced_msgs.len(),
        fs.temp_fail,
        fs.dropped
    );
    assert!(fs.temp_fail + fs.dropped > 0, "no fault was injected");
    assert!(bounced >= 10, "the 10 recipients at never.t.test bounce");
    flaky.shutdown(Duration::from_secs(1)).await;
    never.shutdown(Duration::from_secs(1)).await;
    src.shutdown(Duration::from_secs(1)).await;
    dns.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------------------
// A full spool disk.

/// The spool on a 3 MiB tmpfs with 1 MiB of ballast, the destination down: injection fills
/// it until SMTP answers 452 4.3.1 and HTTP 507 (never 250/202 for what is not on disk);
/// freeing space makes injection work again; after a `kill -9` and a restart exactly the
/// acknowledged messages are recovered and delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_spool_disk_refuses_with_452_and_507_and_recovers() {
    let test = "full_spool_disk_refuses_with_452_and_507_and_recovers";
    let Some(fs) = Tmpfs::mount(test, "f-fullfs", "3m") else { return };
    let dir = tmpdir("f-full");
    let mail = subdir(&dir, "received");
    let ip = Ipv4Addr::new(127, 5, 6, 1);
    let port = free_port("127.5.6.1");
    let dns = dns_for(&[("full.t.test", ip)]).await;
    let ballast = fs.0.join("ballast");
    std::fs::write(&ballast, vec![0u8; 1 << 20]).unwrap();
    let setup = Setup { spool: fs.0.join("spool"), ..Setup::new(&dir, dns.addr(), port) };
    let config = setup.write(&dir);
    let d = start_daemon(&config, setup.inject);

    let body = format!("{}\r\n", "x".repeat(76)).repeat(1300); // about 100 KiB
    let mut acked = Vec::new();
    let mut c = Smtp::ready(setup.inject).await;
    let refusal = loop {
        let subject = format!("full-{}", acked.len());
        let r =
            c.transaction("app@src.t.test", &["u@full.t.test"], format!("Subject: {subject}\r\n\r\n{body}.\r\n").as_bytes()).await.unwrap();
        if r.code != 250 {
            break r;
        }
        acked.push(subject);
        assert!(acked.len() < 100, "the disk never filled");
    };
    assert_eq!(status(&refusal), "452 4.3.1", "{:?}", refusal.lines);
    assert!(refusal.lines[0].contains("disk full"), "{:?}", refusal.lines);
    assert!(acked.len() >= 5, "only {} messages fitted", acked.len());
    // Still refusing, still answering, on the same session.
    let again = format!("Subject: refused\r\n\r\n{body}.\r\n");
    assert_eq!(status(&c.transaction("app@src.t.test", &["u@full.t.test"], again.as_bytes()).await.unwrap()), "452 4.3.1");
    let one = |subject: &str| {
        serde_json::json!({"from": "app@src.t.test", "to": ["u@full.t.test"], "data": format!("Subject: {subject}\r\n\r\n{body}")})
            .to_string()
    };
    let (code, resp) = http_async(setup.http, "POST", "/v1/messages".into(), one("refused-http")).await;
    assert_eq!(code, 507, "{resp}");
    assert!(resp.contains("disk full"), "{resp}");

    // Space comes back: both kinds of injection work again, without a restart.
    std::fs::remove_file(&ballast).unwrap();
    let r = c.message("app@src.t.test", &["u@full.t.test"], "full-after-smtp").await.unwrap();
    assert_eq!(status(&r), "250 2.0.0");
    acked.push("full-after-smtp".into());
    let (code, resp) = http_async(setup.http, "POST", "/v1/messages".into(), one("full-after-http")).await;
    assert_eq!(code, 202, "{resp}");
    acked.push("full-after-http".into());
    d.kill9();

    let sink = sink_on(ip, port, &mail, |_| {}).await;
    let d = start_daemon(&config, setup.inject);
    assert_eq!(d.recovered(), acked.len(), "exactly the acknowledged messages are in the spool: {}", d.banner);
    wait_for("every acknowledged message", Duration::from_secs(20), || tally(&mail).len() >= acked.len()).await;
    assert!(terminate(d));
    let got = tally(&mail);
    eprintln!(
        "full disk: {} acknowledged (SMTP 452 4.3.1, HTTP 507 when full), all delivered after kill -9 and restart, {} duplicates",
        acked.len(),
        duplicates(&got)
    );
    assert_eq!(got.keys().collect::<HashSet<_>>(), acked.iter().collect::<HashSet<_>>(), "nothing refused was delivered");
    assert_eq!(duplicates(&got), 0);
    sink.shutdown(Duration::from_secs(1)).await;
    dns.shutdown().await;
    drop(fs);
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------------------
// Bad input at SMTP injection.

/// Malformed envelope addresses get a 501 each (the transaction goes on); the message goes to
/// the valid recipient only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_malformed_addresses_get_501_and_the_message_goes_to_valid_ones_only() {
    let dir = tmpdir("f-addr");
    let mail = subdir(&dir, "received");
    let ip = Ipv4Addr::new(127, 5, 7, 1);
    let port = free_port("127.5.7.1");
    let sink = sink_on(ip, port, &mail, |_| {}).await;
    let dns = dns_for(&[("addr.t.test", ip)]).await;
    let setup = Setup::new(&dir, dns.addr(), port);
    let config = setup.write(&dir);
    let d = start_daemon(&config, setup.inject);

    let mut c = Smtp::ready(setup.inject).await;
    for bad in
        ["app@src.t.test", "<app src@t.test>", "<app\u{1}@src.t.test>", "<appsrc.t.test>", "<app@>", "<@src.t.test>", "<app@src.t.test"]
    {
        let r = c.cmd(&format!("MAIL FROM:{bad}")).await.unwrap();
        assert_eq!(r.code, 501, "MAIL FROM:{bad:?} got {:?}", r.lines);
    }
    assert_eq!(c.cmd("EHLO app.test").await.unwrap().code, 250);
    assert_eq!(c.cmd("MAIL FROM:<app@src.t.test>").await.unwrap().code, 250);
    for bad in ["u@addr.t.test", "<u x@addr.t.test>", "<u\u{7f}@addr.t.test>", "<nodomain>", "<>", "<u@>", "<@addr.t.test>"] {
        let r = c.cmd(&format!("RCPT TO:{bad}")).await.unwrap();
        assert_eq!(r.code, 501, "RCPT TO:{bad:?} got {:?}", r.lines);
    }
    // Not UTF-8, and not ASCII without SMTPUTF8: refused at once, not 452 at the end of the data
    // (which a client retries for ever).
    c.send(b"RCPT TO:<\xff@addr.t.test>\r\n").await.unwrap();
    let r = c.reply().await.unwrap();
    assert_eq!(r.code, 501, "8-bit address got {:?}", r.lines);
    assert_eq!(c.cmd("RCPT TO:<good@addr.t.test>").await.unwrap().code, 250);
    assert_eq!(c.cmd("DATA").await.unwrap().code, 354);
    c.send("Subject: addr\r\n\r\nhi\r\n.\r\n").await.unwrap();
    let r = c.reply().await.unwrap();
    assert_eq!(status(&r), "250 2.0.0", "{:?}", r.lines);
    let id = queued_id(&r);
    let view = get_json(setup.http, format!("/v1/messages/{id:X}")).await;
    let rcpts: Vec<&str> = view["rcpts"].as_array().unwrap().iter().map(|r| r["rcpt"].as_str().unwrap()).collect();
    assert_eq!(rcpts, ["good@addr.t.test"], "{view}");
    wait_for("the delivery", Duration::from_secs(15), || !subjects(&mail).is_empty()).await;
    assert!(terminate(d));
    let files = sink_files(&mail);
    assert_eq!(files.len(), 1);
    assert!(
        // (the sink's Received: trace line, between the envelope and the message, left out)
        files[0]
            .split_inclusive("\r\n")
            .filter(|l| !l.starts_with("Received: from "))
            .collect::<String>()
            .starts_with("X-Mxpipe-Mail-From: <app@src.t.test>\r\nX-Mxpipe-Rcpt-To: <good@addr.t.test>\r\nSubject: addr\r\n"),
        "{}",
        files[0]
    );
    sink.shutdown(Duration::from_secs(1)).await;
    dns.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Bare LF and NUL in the content. Lines ending in a bare LF are accepted and go out as CRLF
/// (what Postfix >= 3.9 does by default); only CRLF.CRLF ends the data (RFC 5321 §2.3.8 and
/// §4.1.1.4), and a dot line next to a bare LF, an LF-only client's or a smuggling attempt's
/// terminator, is refused with 554 5.5.2 and the connection closed, so nothing after it is
/// read as commands (SMTP smuggling). NUL bytes get 554 5.6.0, and the session goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_bare_lf_is_normalised_never_ends_data_and_nul_is_refused() {
    let dir = tmpdir("f-lf");
    let mail = subdir(&dir, "received");
    let ip = Ipv4Addr::new(127, 5, 7, 2);
    let port = free_port("127.5.7.2");
    let sink = sink_on(ip, port, &mail, |_| {}).await;
    let dns = dns_for(&[("lf.t.test", ip)]).await;
    let setup = Setup::new(&dir, dns.addr(), port);
    let config = setup.write(&dir);
    let d = start_daemon(&config, setup.inject);
    let to = ["u@lf.t.test"];

    // Bare LF inside, CRLF.CRLF at the end: accepted.
    let mut c = Smtp::ready(setup.inject).await;
    let r = c.transaction("app@src.t.test", &to, b"Subject: lf-mixed\nX-Note: bare\n\nline 1\nline 2\r\n.\r\n").await.unwrap();
    assert_eq!(status(&r), "250 2.0.0", "{:?}", r.lines);
    // NUL in DATA, then in BDAT: refused; the session goes on.
    let r = c.transaction("app@src.t.test", &to, b"Subject: nul\r\n\r\na\0b\r\n.\r\n").await.unwrap();
    assert_eq!(status(&r), "554 5.6.0", "{:?}", r.lines);
    assert_eq!(c.cmd("MAIL FROM:<app@src.t.test>").await.unwrap().code, 250);
    assert_eq!(c.cmd("RCPT TO:<u@lf.t.test>").await.unwrap().code, 250);
    let chunk = b"Subject: nul-bdat\r\n\r\n\0\r\n";
    c.send(format!("BDAT {} LAST\r\n", chunk.len())).await.unwrap();
    c.send(chunk).await.unwrap();
    assert_eq!(status(&c.reply().await.unwrap()), "554 5.6.0");
    let r = c.message("app@src.t.test", &to, "after-nul").await.unwrap();
    assert_eq!(status(&r), "250 2.0.0");

    // A client that only knows LF: a clear error, not a five-minute wait.
    let mut c = Smtp::connect(setup.inject).await.unwrap();
    for (cmd, want) in [("EHLO app.test\n", 250), ("MAIL FROM:<app@src.t.test>\n", 250), ("RCPT TO:<u@lf.t.test>\n", 250), ("DATA\n", 354)]
    {
        c.send(cmd).await.unwrap();
        assert_eq!(c.reply().await.unwrap().code, want, "{cmd:?}");
    }
    c.send("Subject: lf-only\n\nhello\n.\n").await.unwrap();
    let r = c.reply().await.unwrap();
    assert_eq!(status(&r), "554 5.5.2", "{:?}", r.lines);
    assert!(c.closes().await, "the connection is closed after a bare-LF terminator");

    // SMTP smuggling: <LF>.<CR><LF> and <CR><LF>.<LF>, followed by a second transaction.
    for (n, end) in ["\n.\r\n", "\r\n.\n"].iter().enumerate() {
        let mut c = Smtp::ready(setup.inject).await;
        let content = format!(
            "Subject: carrier-{n}\r\n\r\nhello{end}MAIL FROM:<ceo@bank.t.test>\r\nRCPT TO:<u@lf.t.test>\r\nDATA\r\nSubject: smuggled-{n}\r\n\r\nx\r\n.\r\n"
        );
        let r = c.transaction("app@src.t.test", &to, content.as_bytes()).await.unwrap();
        assert_eq!(status(&r), "554 5.5.2", "{end:?}: {:?}", r.lines);
        assert!(c.closes().await, "{end:?}: what follows the refused terminator is not read as commands");
    }

    wait_for("the two good messages", Duration::from_secs(15), || subjects(&mail).len() >= 2).await;
    settled_metric(setup.http, "mxpipe_messages_accepted_total", 2).await;
    assert!(terminate(d));
    let mut got = subjects(&mail);
    got.sort();
    assert_eq!(got, ["after-nul", "lf-mixed"]);
    let mixed = sink_files(&mail).into_iter().find(|f| f.contains("lf-mixed")).unwrap();
    assert!(mixed.ends_with("Subject: lf-mixed\r\nX-Note: bare\r\n\r\nline 1\r\nline 2\r\n"), "{mixed:?}");
    assert!(!mixed.replace("\r\n", "").contains('\n'), "a bare LF went out: {mixed:?}");
    sink.shutdown(Duration::from_secs(1)).await;
    dns.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// The listener advertises SIZE (50 MiB); a larger declared SIZE and a larger body both get
/// 552 5.3.4 and nothing is queued; the session stays usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_oversized_message_gets_552_and_nothing_is_queued() {
    let dir = tmpdir("f-size");
    let dns = dns_for(&[]).await;
    let setup = Setup::new(&dir, dns.addr(), 25);
    let config = setup.write(&dir);
    let d = start_daemon(&config, setup.inject);
    let mut c = Smtp::connect(setup.inject).await.unwrap();
    let ehlo = c.cmd("EHLO app.test").await.unwrap();
    let limit: usize = ehlo.lines.iter().find_map(|l| l.strip_prefix("SIZE ")).expect("SIZE advertised").parse().unwrap();
    assert_eq!(limit, 50 << 20);
    let r = c.cmd(&format!("MAIL FROM:<app@src.t.test> SIZE={}", limit + 1)).await.unwrap();
    assert_eq!(status(&r), "552 5.3.4");
    // Undeclared, and one line over the limit.
    let line = format!("{}\r\n", "y".repeat(1022));
    let mut body = String::with_capacity(limit + 2048);
    body.push_str("Subject: big\r\n\r\n");
    while body.len() <= limit {
        body.push_str(&line);
    }
    body.push_str(".\r\n");
    let t0 = Instant::now();
    let r = c.transaction("app@src.t.test", &["u@big.t.test"], body.as_bytes()).await.unwrap();
    assert_eq!(status(&r), "552 5.3.4", "{:?}", r.lines);
    let took = t0.elapsed();
    let r = c.message("app@src.t.test", &["u@big.t.test"], "small").await.unwrap();
    assert_eq!(status(&r), "250 2.0.0");
    settled_metric(setup.http, "mxpipe_messages_accepted_total", 1).await;
    eprintln!("oversized: {} bytes refused with 552 5.3.4 in {took:?}", body.len());
    assert!(terminate(d));
    dns.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// 10,000 RCPTs in one transaction (pipelined): the first 1,000 are accepted (RFC 5321
/// §4.5.3.1.8 requires at least 100), the rest get 452 4.5.3, and the message goes to
/// exactly the accepted ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_10000_rcpts_accepts_1000_then_452_4_5_3() {
    let dir = tmpdir("f-rcpts");
    let mail = subdir(&dir, "received");
    let ip = Ipv4Addr::new(127, 5, 8, 1);
    let port = free_port("127.5.8.1");
    let sink = sink_on(ip, port, &mail, |_| {}).await;
    let dns = dns_for(&[("many.t.test", ip)]).await;
    let setup = Setup::new(&dir, dns.addr(), port);
    let config = setup.write(&dir);
    let d = start_daemon(&config, setup.inject);
    let mut c = Smtp::ready(setup.inject).await;
    assert_eq!(c.cmd("MAIL FROM:<app@src.t.test>").await.unwrap().code, 250);
    let mut codes: HashMap<String, usize> = HashMap::new();
    let mut accepted = Vec::new();
    for batch in 0..20 {
        let cmds: String = (batch * 500..(batch + 1) * 500).map(|i| format!("RCPT TO:<r{i}@many.t.test>\r\n")).collect();
        c.send(cmds).await.unwrap();
        for i in batch * 500..(batch + 1) * 500 {
            let r = c.reply().await.unwrap();
            if r.code == 250 {
                accepted.push(format!("r{i}@many.t.test"));
            }
            *codes.entry(status(&r)).or_default() += 1;
        }
    }
    assert_eq!(codes, HashMap::from([("250 2.1.5".to_string(), 1000), ("452 4.5.3".to_string(), 9000)]));
    assert_eq!(accepted, (0..1000).map(|i| format!("r{i}@many.t.test")).collect::<Vec<_>>());
    assert_eq!(c.cmd("DATA").await.unwrap().code, 354);
    c.send("Subject: many\r\n\r\nhi\r\n.\r\n").await.unwrap();
    let r = c.reply().await.unwrap();
    assert_eq!(status(&r), "250 2.0.0");
    let view = get_json(setup.http, format!("/v1/messages/{:X}", queued_id(&r))).await;
    assert_eq!(view["rcpts"].as_array().unwrap().len(), 1000);

    let received = || -> Vec<String> {
        sink_files(&mail)
            .iter()
            .flat_map(|f| {
                f.lines()
                    .filter_map(|l| l.strip_prefix("X-Mxpipe-Rcpt-To: <"))
                    .map(|l| l.trim_end_matches('>').to_string())
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    wait_for("1000 recipients delivered", Duration::from_secs(25), || received().len() >= 1000).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(terminate(d));
    let mut got = received();
    got.sort();
    let mut want = accepted.clone();
    want.sort();
    assert_eq!(got, want, "exactly the accepted recipients, once each");
    eprintln!("10,000 RCPTs: 1000 x 250, 9000 x 452 4.5.3; delivered to the 1000 in {} transactions", sink_files(&mail).len());
    sink.shutdown(Duration::from_secs(1)).await;
    dns.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A client that stalls in the middle of its data gets 421 4.4.2 after
/// `inject.smtp.idle_timeout` and its half message is gone; another, stalled when the daemon
/// is killed, leaves nothing either: the restart recovers only the one acknowledged message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_client_stalling_mid_data_times_out_and_leaves_nothing() {
    let dir = tmpdir("f-stall");
    let ip = Ipv4Addr::new(127, 5, 9, 1);
    // The destination is down: the acknowledged message stays in the spool.
    let dns = dns_for(&[("stall.t.test", ip)]).await;
    let setup = Setup { inject_smtp: "idle_timeout = \"2s\"\n".into(), ..Setup::new(&dir, dns.addr(), free_port("127.5.9.1")) };
    let config = setup.write(&dir);
    let d = start_daemon(&config, setup.inject);
    let mut c = Smtp::ready(setup.inject).await;
    assert_eq!(c.message("app@src.t.test", &["u@stall.t.test"], "complete").await.unwrap().code, 250);

    let half = b"Subject: stalled\r\n\r\nthe first half of a line";
    let t0 = Instant::now();
    let r = c.transaction("app@src.t.test", &["u@stall.t.test"], half).await.unwrap();
    let waited = t0.elapsed();
    assert_eq!(status(&r), "421 4.4.2", "{:?}", r.lines);
    assert!(waited >= Duration::from_millis(1500) && waited < Duration::from_secs(8), "421 after {waited:?}");
    assert!(c.closes().await);

    // Stalled again, and the daemon dies meanwhile.
    let mut c = Smtp::ready(setup.inject).await;
    assert_eq!(c.cmd("MAIL FROM:<app@src.t.test>").await.unwrap().code, 250);
    assert_eq!(c.cmd("RCPT TO:<u@stall.t.test>").await.unwrap().code, 250);
    assert_eq!(c.cmd("DATA").await.unwrap().code, 354);
    c.send("Subject: killed\r\n\r\nhalf").await.unwrap();
    settled_metric(setup.http, "mxpipe_messages_accepted_total", 1).await;
    d.kill9();
    let d = start_daemon(&config, setup.inject);
    assert_eq!(d.recovered(), 1, "only the acknowledged message: {}", d.banner);
    eprintln!("stall mid-DATA: 421 4.4.2 after {waited:?}; after kill -9 mid-DATA, {} recovered", d.recovered());
    assert!(terminate(d));
    dns.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------------------
// Bad input at the HTTP API.

/// Garbage to `POST /v1/messages`: each gets a 4xx with a JSON error, and nothing is accepted,
/// not even the good messages of a batch with one bad message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_garbage_gets_4xx_and_nothing_is_half_accepted() {
    let dir = tmpdir("f-http");
    let dns = dns_for(&[]).await;
    let setup = Setup::new(&dir, dns.addr(), 25);
    let config = setup.write(&dir);
    let d = start_daemon(&config, setup.inject);
    let api = setup.http;
    let good = r#"{"from":"app@src.t.test","to":["u@h.t.test"],"data":"Subject: ok\r\n\r\nhi\r\n"}"#;
    let batch = |n: usize| format!(r#"{{"messages":[{}]}}"#, vec![good; n].join(","));
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("not JSON", b"hello".to_vec(), 400),
        ("empty body", Vec::new(), 400),
        ("truncated JSON", good.as_bytes()[..30].to_vec(), 400),
        ("from is a number", br#"{"from":1,"to":["u@h.t.test"],"data":"x"}"#.to_vec(), 400),
        ("to is a string", br#"{"from":"app@src.t.test","to":"u@h.t.test","data":"x"}"#.to_vec(), 400),
        ("data is a list", br#"{"from":"app@src.t.test","to":["u@h.t.test"],"data":["x"]}"#.to_vec(), 400),
        ("data missing", br#"{"from":"app@src.t.test","to":["u@h.t.test"]}"#.to_vec(), 400),
        ("a JSON array", format!("[{good}]").into_bytes(), 400),
        ("invalid UTF-8", b"{\"from\":\"app@src.t.test\",\"to\":[\"u@h.t.test\"],\"data\":\"\xff\xfe\"}".to_vec(), 400),
        ("NUL in data", br#"{"from":"app@src.t.test","to":["u@h.t.test"],"data":"a\u0000b"}"#.to_vec(), 400),
        ("CR LF in an address", br#"{"from":"app@src.t.test","to":["u@h.t.test\r\nRCPT TO:<x@y.test>"],"data":"x"}"#.to_vec(), 400),
        ("empty batch", br#"{"messages":[]}"#.to_vec(), 400),
        (
            "batch with one bad message",
            format!(r#"{{"messages":[{good},{good},{{"from":"app@src.t.test","to":["nodomain"],"data":"x"}}]}}"#).into_bytes(),
            400,
        ),
        ("too large a batch", batch(10_001).into_bytes(), 400),
    ];
    for (what, body, want) in cases {
        let (code, resp) = tokio::task::spawn_blocking(move || post_raw(api, body)).await.unwrap();
        assert_eq!(code, want, "{what}: {resp}");
        let v: serde_json::Value = serde_json::from_str(&resp).unwrap_or_else(|_| panic!("{what}: not a JSON error: {resp}"));
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{what}: {resp}");
    }
    // A body over the 64 MiB limit: 413, whether or not the server reads it all.
    let (code, resp) = tokio::task::spawn_blocking(move || post_raw(api, vec![b' '; (64 << 20) + 1])).await.unwrap();
    assert_eq!(code, 413, "{resp}");

    settled_metric(api, "mxpipe_messages_accepted_total", 0).await;
    let queues = get_json(api, "/v1/queues".into()).await;
    assert_eq!(queues["queues"].as_array().map(Vec::len), Some(0), "{queues}");
    // Still serving.
    let (code, resp) = http_async(api, "POST", "/v1/messages".into(), batch(2)).await;
    assert_eq!(code, 202, "{resp}");
    assert_eq!(serde_json::from_str::<serde_json::Value>(&resp).unwrap()["ids"].as_array().map(Vec::len), Some(2));
    d.kill9();
    dns.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
