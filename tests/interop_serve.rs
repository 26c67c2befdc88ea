//! `mxpipe serve` fed by a real Postfix (started by `scripts/test-all.sh`, skipped loudly
//! without it): Postfix relays into the daemon's injection listener over STARTTLS, and
//! Postfix's `smtp-source` injects a burst; every message reaches the destination sink, intact
//! and exactly once.

mod common;
#[path = "common/peers.rs"]
mod peers;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::daemon::*;
use common::Client;
use mxpipe::dnsserver::{DnsServer, ZoneBuilder};
use peers::RELAY_DOMAIN;

/// `ip:<a port free there a moment ago>`.
fn free_on(ip: Ipv4Addr) -> SocketAddr {
    SocketAddr::from((ip, free_port(&ip.to_string())))
}

/// The messages a sink wrote to `dir`: (envelope recipients, the message after the
/// sink's `X-Mxpipe-*` envelope lines).
fn received(dir: &Path) -> Vec<(Vec<String>, String)> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_none_or(|x| x != "eml") {
            continue;
        }
        let text = String::from_utf8(std::fs::read(&p).unwrap()).expect("a received message is not UTF-8");
        let mut rcpts = Vec::new();
        let mut rest = text.as_str();
        while let Some((line, tail)) = rest.split_once("\r\n") {
            if let Some(r) = line.strip_prefix("X-Mxpipe-Rcpt-To: <") {
                rcpts.push(r.trim_end_matches('>').to_string());
            } else if !line.starts_with("X-Mxpipe-") {
                break;
            }
            rest = tail;
        }
        v.push((rcpts, rest.to_string()));
    }
    v
}

/// One message as submitted to Postfix: a dot-leading line, an 8-bit line, a long line.
fn original(tag: &str, i: usize) -> (String, String) {
    let headers = format!(
        "From: App <app@src.mxpipe.test>\r\nTo: <a{i}@{RELAY_DOMAIN}>\r\nDate: Mon, 23 Nov 2026 12:00:00 +0000\r\n\
         Message-ID: <{tag}.{i}@src.mxpipe.test>\r\nSubject: {tag} {i}\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n"
    );
    let body = format!(
        "hello through Postfix and mxpipe, message {i}\r\n.a line that starts with a dot\r\n..two dots\r\n\
         8-bit: naïve café, Grüße, 日本語\r\n{}\r\n\r\nlast line\r\n",
        "x".repeat(900)
    );
    (headers, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postfix_relays_into_the_daemon_over_starttls() {
    let Some((_pf, relay)) = peers::postfix_relay("postfix_relays_into_the_daemon_over_starttls") else { return };
    let dir = tmpdir("pf-relay");
    let mail = dir.join("received");
    std::fs::create_dir_all(&mail).unwrap();
    let sink_ip = Ipv4Addr::new(127, 7, 1, 1);
    let port = free_port("127.7.1.1");
    let sink = sink_on(sink_ip, port, &mail, |_| {}).await;
    let mut z = ZoneBuilder::new("mxpipe.test.");
    z.mx(RELAY_DOMAIN, 10, "mx.relay.mxpipe.test").a("mx.relay.mxpipe.test", sink_ip);
    let dns = DnsServer::start(vec![z], "127.7.1.1:0".parse().unwrap()).await.unwrap();
    // The peer relays to a fixed address: the daemon listens there.
    let setup = Setup { inject: relay.to, http: free_on(sink_ip), ..Setup::new(&dir, dns.addr(), port) };
    let d = start_daemon(&setup.write(&dir), relay.to);

    // Submit to Postfix: 5 messages of 3 recipients each (Postfix pipelines MAIL, RCPTs, DATA).
    let tag = format!("relay-{}-{}", std::process::id(), SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos());
    let log_start = std::fs::metadata(&relay.log).map_or(0, |m| m.len());
    if let Err(e) = tokio::net::TcpStream::connect(relay.submit).await {
        panic!("the Postfix peer's relay port {} refuses ({e}): (re)start it with this tree's tests/peers/postfix-peer.sh", relay.submit);
    }
    let mut c = Client::connect(relay.submit).await;
    assert_eq!(c.reply().await.code, 220);
    assert_eq!(c.cmd("EHLO app.mxpipe.test").await, 250);
    let mut queue_ids = Vec::new();
    for i in 0..5 {
        assert_eq!(c.cmd("MAIL FROM:<app@src.mxpipe.test> BODY=8BITMIME").await, 250);
        for r in ["a", "b", "c"] {
            assert_eq!(c.cmd(&format!("RCPT TO:<{r}{i}@{RELAY_DOMAIN}>")).await, 250);
        }
        assert_eq!(c.cmd("DATA").await, 354);
        let (h, b) = original(&tag, i);
        // Dot-stuffed on the wire; Postfix must hand the original on.
        let message = format!("{h}\r\n{b}");
        let stuffed: String =
            message.split_inclusive("\r\n").map(|l| if l.starts_with('.') { format!(".{l}") } else { l.into() }).collect();
        c.send(format!("{stuffed}.\r\n")).await;
        let r = c.reply().await;
        assert_eq!(r.code, 250, "{r:?}");
        let text = r.lines.join(" ");
        queue_ids.push(text.rsplit(' ').next().unwrap().to_string());
    }
    let _ = c.cmd("QUIT").await;

    let count = || received(&mail).iter().filter(|(_, m)| m.contains(&tag)).map(|(r, _)| r.len()).sum::<usize>();
    wait_for("15 recipients relayed by Postfix and delivered by the daemon", Duration::from_secs(60), || count() >= 15).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(terminate(d), "serve exits cleanly");
    sink.shutdown(Duration::from_secs(1)).await;
    dns.shutdown().await;

    // Each recipient exactly once; each message intact after the headers Postfix prepended.
    let got: Vec<_> = received(&mail).into_iter().filter(|(_, m)| m.contains(&tag)).collect();
    let mut rcpts: Vec<String> = got.iter().flat_map(|(r, _)| r.clone()).collect();
    rcpts.sort();
    let mut want: Vec<String> = (0..5).flat_map(|i| ["a", "b", "c"].map(|r| format!("{r}{i}@{RELAY_DOMAIN}"))).collect();
    want.sort();
    assert_eq!(rcpts, want, "every recipient delivered exactly once");
    for (_, m) in &got {
        let i: usize = m.split(&format!("Subject: {tag} ")).nth(1).and_then(|s| s.split("\r\n").next()).unwrap().parse().unwrap();
        let (h, b) = original(&tag, i);
        let (head, body) = m.split_once("\r\n\r\n").unwrap();
        assert_eq!(body, b, "message {i}: body changed on the way");
        let added = head.strip_suffix(h.trim_end_matches("\r\n")).unwrap_or_else(|| panic!("message {i}: headers changed: {head}"));
        assert!(added.starts_with("Received: ") && added.contains("by peer.example.test (Postfix)"), "{added}");
        assert!(added.lines().all(|l| l.starts_with("Received: ") || l.starts_with([' ', '\t'])), "only Received: added: {added}");
    }

    // Postfix's relay delivered over TLS (its transport requires it, and logs the handshake):
    // every queue id was sent by a process that established TLS to the daemon.
    let relay_to = format!("{ip}[{ip}]:{port}", ip = relay.to.ip(), port = relay.to.port());
    let t0 = Instant::now();
    loop {
        let log = std::fs::read(&relay.log).unwrap();
        let log = String::from_utf8_lossy(&log[log_start.min(log.len() as u64) as usize..]).into_owned();
        // "postfix/mxrelay/smtp[PID]: ..." (the transport's syslog_name, then the program).
        let pid_of = |l: &str| {
            let rest = l.split("postfix/mxrelay/").nth(1)?.split_once('[')?.1;
            Some(rest.split(']').next()?.to_string())
        };
        let tls_pids: HashMap<String, &str> = log
            .lines()
            .filter(|l| l.contains(&format!("TLS connection established to {relay_to}:")))
            .filter_map(|l| Some((pid_of(l)?, l)))
            .collect();
        let ours = |l: &&str| queue_ids.iter().any(|q| l.contains(&format!(": {q}: to=")));
        let sent: Vec<&str> = log.lines().filter(|l| l.contains("status=sent")).filter(ours).collect();
        if sent.len() >= 15 {
            for l in &sent {
                assert!(l.contains(&format!("relay={relay_to}")), "{l}");
                let pid = pid_of(l).expect("sent by the mxrelay transport");
                let tls = tls_pids.get(&pid).unwrap_or_else(|| panic!("no TLS handshake logged by postfix/mxrelay process {pid}: {l}"));
                assert!(tls.contains("TLSv1.3") || tls.contains("TLSv1.2"), "{tls}");
            }
            eprintln!("Postfix relayed {} recipients over STARTTLS: {}", sent.len(), tls_pids.values().next().unwrap());
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(15), "Postfix logged {} of 15 status=sent lines for {queue_ids:?}", sent.len());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_source_burst_is_acknowledged_and_delivered_exactly_once() {
    const N: usize = 2000;
    let Some(_pf) = peers::postfix("smtp_source_burst_is_acknowledged_and_delivered_exactly_once") else { return };
    let smtp_source = peers::smtp_source();
    let dir = tmpdir("smtp-source");
    let mail = dir.join("received");
    std::fs::create_dir_all(&mail).unwrap();
    let sink_ip = Ipv4Addr::new(127, 7, 1, 2);
    let port = free_port("127.7.1.2");
    let sink = sink_on(sink_ip, port, &mail, |_| {}).await;
    let mut z = ZoneBuilder::new("mxpipe.test.");
    z.mx("burst.mxpipe.test", 10, "mx.burst.mxpipe.test").a("mx.burst.mxpipe.test", sink_ip);
    let dns = DnsServer::start(vec![z], "127.7.1.2:0".parse().unwrap()).await.unwrap();
    let inject = free_on(sink_ip);
    let setup = Setup { inject, http: free_on(sink_ip), ..Setup::new(&dir, dns.addr(), port) };
    let d = start_daemon(&setup.write(&dir), inject);

    // 8 sessions, each sending message after message on its connection; -N numbers the
    // recipients 1..=N. smtp-source exits non-zero at the first reply that is not a success.
    // (It does not pipeline; Postfix's relay in the test above does.)
    let mut cmd = Command::new(&smtp_source);
    cmd.args(["-d", "-s", "8", "-m", &N.to_string(), "-N", "-l", "2048", "-S", "smtp-source burst"])
        .args(["-M", "src.mxpipe.test", "-f", "app@src.mxpipe.test", "-t", "u@burst.mxpipe.test"])
        .arg(inject.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let t0 = Instant::now();
    let out = tokio::task::spawn_blocking(move || {
        let mut child = cmd.spawn().expect("run smtp-source");
        let deadline = Instant::now() + Duration::from_secs(120);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    let injected_in = t0.elapsed();
    assert!(out.status.success(), "smtp-source: {:?}\n{}", out.status, String::from_utf8_lossy(&out.stderr));

    wait_for("every message at the sink", Duration::from_secs(120), || sink.stats().messages >= N as u64).await;
    let delivered_in = t0.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(terminate(d), "serve exits cleanly");
    let stats = sink.shutdown(Duration::from_secs(1)).await.stats;
    dns.shutdown().await;
    assert_eq!(stats.messages, N as u64, "exactly {N} messages at the sink");

    let got = received(&mail);
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (rcpts, m) in &got {
        assert!(m.contains("Subject: smtp-source burst\r\n") && m.contains("\r\n\r\n1XXXX"), "{m:.300}");
        for r in rcpts {
            *seen.entry(r.clone()).or_default() += 1;
        }
    }
    let want: Vec<String> = (1..=N).map(|k| format!("{k}u@burst.mxpipe.test")).collect();
    let missing: Vec<&String> = want.iter().filter(|r| !seen.contains_key(*r)).collect();
    let twice: Vec<_> = seen.iter().filter(|(_, &n)| n > 1).collect();
    assert!(missing.is_empty() && twice.is_empty(), "missing {missing:?}, more than once {twice:?}");
    assert_eq!(seen.len(), N);
    eprintln!("smtp-source: {N} messages acknowledged in {injected_in:?}, all delivered {delivered_in:?} after the first injection");
    let _ = std::fs::remove_dir_all(&dir);
}
