//! `mxpipe queue` against a running `mxpipe serve`: list, suspend, resume and bounce a
//! destination, through the real binary and the daemon's HTTP API.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::Duration;

use common::daemon::*;
use mxpipe::dnsserver::{DnsServer, ZoneBuilder};

/// Run `mxpipe queue --api API args...`: (success, stdout, stderr).
fn queue(api: SocketAddr, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mxpipe")).arg("queue").arg("--api").arg(api.to_string()).args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

async fn queue_async(api: SocketAddr, args: &'static [&'static str]) -> (bool, String, String) {
    tokio::task::spawn_blocking(move || queue(api, args)).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_suspend_resume_and_bounce_a_destination() {
    let dir = tmpdir("queuecmd");
    let (held_mail, src_mail) = (dir.join("held"), dir.join("src"));
    std::fs::create_dir_all(&held_mail).unwrap();
    std::fs::create_dir_all(&src_mail).unwrap();
    let port = free_port("127.8.1.1");
    // Every message to held.t.test is deferred (451), so its recipients stay queued.
    let held = sink_on(Ipv4Addr::new(127, 8, 1, 1), port, &held_mail, |c| c.faults.temp_fail_rate = 1.0).await;
    let src = sink_on(Ipv4Addr::new(127, 8, 1, 2), port, &src_mail, |_| {}).await;
    let mut z = ZoneBuilder::new("t.test.");
    z.mx("held.t.test", 10, "mx-held.t.test").a("mx-held.t.test", Ipv4Addr::new(127, 8, 1, 1));
    z.mx("src.t.test", 10, "mx-src.t.test").a("mx-src.t.test", Ipv4Addr::new(127, 8, 1, 2));
    let dns = DnsServer::start(vec![z], "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let setup = Setup::new(&dir, dns.addr(), port);
    let d = start_daemon(&setup.write(&dir), setup.inject);
    let api = setup.http;

    for (i, to) in ["a@held.t.test", "b@held.t.test", "c@Held.T.test"].iter().enumerate() {
        assert!(inject(d.inject, "app@src.t.test", to, &format!("held {i}")).await);
    }
    wait_for("three deferrals", Duration::from_secs(20), || held.stats().faults.temp_fail >= 3).await;

    // list: the destination with its three recipients, as a table and as JSON.
    let (ok, out, err) = queue_async(api, &["list"]).await;
    assert!(ok, "{err}");
    let row = out.lines().find(|l| l.starts_with("held.t.test ")).unwrap_or_else(|| panic!("no row for held.t.test:\n{out}"));
    assert_eq!(row.split_whitespace().nth(1), Some("3"), "{out}");
    let (ok, out, _) = queue_async(api, &["--json", "list"]).await;
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["queues"][0]["domain"], "held.t.test", "{v}");

    // suspend: nothing more is tried (retries come every 1-2 s otherwise).
    let (ok, out, err) = queue_async(api, &["suspend", "HELD.t.test.", "--for", "10m"]).await;
    assert!(ok, "{err}");
    assert!(out.starts_with("held.t.test: suspended until in 9m") && out.contains("3 recipients wait"), "{out}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let tried = held.stats().faults.temp_fail;
    tokio::time::sleep(Duration::from_millis(3000)).await;
    assert_eq!(held.stats().faults.temp_fail, tried, "a suspended destination was tried");
    let (_, out, _) = queue_async(api, &["list"]).await;
    assert!(out.lines().any(|l| l.starts_with("held.t.test ") && l.contains("until in 9m")), "{out}");

    // resume: tried again at once.
    let (ok, out, err) = queue_async(api, &["resume", "held.t.test"]).await;
    assert!(ok && out.contains("resumed; 3 recipients go now"), "{out}{err}");
    wait_for("attempts after resume", Duration::from_secs(5), || held.stats().faults.temp_fail >= tried + 3).await;

    // bounce: every recipient bounced, one DSN per message to the sender, queue empty.
    let (ok, out, err) = queue_async(api, &["bounce", "held.t.test"]).await;
    assert!(ok && out.starts_with("held.t.test: 3 recipients bounced"), "{out}{err}");
    wait_for("three DSNs", Duration::from_secs(20), || std::fs::read_dir(&src_mail).unwrap().count() >= 3).await;
    let dsn = std::fs::read_to_string(std::fs::read_dir(&src_mail).unwrap().next().unwrap().unwrap().path()).unwrap();
    assert!(dsn.contains("Action: failed") && dsn.contains("bounced by the operator"), "{dsn}");
    // A deferred recipient keeps its last reply until its final outcome: the DSN quotes it.
    assert!(dsn.split_whitespace().collect::<Vec<_>>().join(" ").contains("last attempt: 451 4.3.0 Temporary failure"), "{dsn}");
    wait_for("an empty queue", Duration::from_secs(10), || {
        let (_, out, _) = queue(api, &["--json", "list"]);
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["queues"].as_array().unwrap().is_empty()
    })
    .await;
    assert_eq!(std::fs::read_dir(&held_mail).unwrap().count(), 0);

    // Bad input: clear errors, non-zero exit.
    let (ok, _, err) = queue_async(api, &["suspend", "a/b.test"]).await;
    assert!(!ok && err.contains("not a domain name"), "{err}");
    let (ok, _, err) = queue_async(api, &["suspend", "x.test", "--for", "3 weeks"]).await;
    assert!(!ok && err.contains("--for"), "{err}");
    let (ok, _, err) = queue_async(api, &["suspend", "x.test", "--for", "2d"]).await;
    assert!(!ok && err.contains("at most 24h"), "{err}");
    assert!(terminate(d));
    let (ok, _, err) = queue_async(api, &["list"]).await;
    assert!(!ok && err.contains("cannot reach the daemon's HTTP API"), "{err}");

    // After the restart the bounced recipients are gone for good.
    let d = start_daemon(&setup.write(&dir), setup.inject);
    let (ok, out, _) = queue_async(api, &["list"]).await;
    assert!(ok && out.contains("no recipients waiting"), "{out}");
    assert!(terminate(d));
    held.shutdown(Duration::from_secs(1)).await;
    src.shutdown(Duration::from_secs(1)).await;
    dns.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_the_retry_schedule() {
    let dir = tmpdir("reschedule");
    let mail = dir.join("received");
    std::fs::create_dir_all(&mail).unwrap();
    let port = free_port("127.8.1.3");
    let sink = sink_on(Ipv4Addr::new(127, 8, 1, 3), port, &mail, |c| c.faults.temp_fail_rate = 1.0).await;
    let mut z = ZoneBuilder::new("t.test.");
    z.mx("later.t.test", 10, "mx-later.t.test").a("mx-later.t.test", Ipv4Addr::new(127, 8, 1, 3));
    let dns = DnsServer::start(vec![z], "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let mut setup = Setup::new(&dir, dns.addr(), port);
    setup.retry = "initial = \"20s\"\nmax_interval = \"1h\"\nmax_age = \"1h\"\njitter = 0.0\n".into();
    let config = setup.write(&dir);
    let d = start_daemon(&config, setup.inject);
    let body = r#"{"from":"app@src.test","to":["u@later.t.test"],"data":"Subject: later\r\n\r\nhi\r\n"}"#.to_string();
    let (code, resp) = http_async(setup.http, "POST", "/v1/messages".into(), body).await;
    assert_eq!(code, 202, "{resp}");
    let id = serde_json::from_str::<serde_json::Value>(&resp).unwrap()["ids"][0].as_str().unwrap().to_string();
    wait_for("the first (deferred) attempt", Duration::from_secs(20), || sink.stats().faults.temp_fail >= 1).await;
    let now = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    let deferred_at = now();
    d.kill9();

    // Restarted: the message is not tried again at once, but 20 s after its attempt.
    let d = start_daemon(&config, setup.inject);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(sink.stats().faults.temp_fail, 1, "retried at once after the restart instead of on its schedule");
    let (code, resp) = http_async(setup.http, "GET", format!("/v1/messages/{id}"), String::new()).await;
    assert_eq!(code, 200, "{resp}");
    let v: serde_json::Value = serde_json::from_str(&resp).unwrap();
    let next = v["next_attempt"].as_f64().unwrap_or_else(|| panic!("no next attempt: {v}"));
    assert!((next - (deferred_at + 20.0)).abs() < 3.0, "next attempt {:.1}s after the deferral, not 20s", next - deferred_at);
    assert!(terminate(d));
    sink.shutdown(Duration::from_secs(1)).await;
    dns.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A backlog waiting in the engine behind a rate limit is given back when its destination is
/// suspended or bounced: it waits (untried, no attempt logged) or is bounced with DSNs, and
/// is not delivered meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspend_and_bounce_reach_a_backlog_held_by_a_rate_limit() {
    let dir = tmpdir("withdraw");
    let (slow_mail, src_mail) = (dir.join("slow"), dir.join("src"));
    std::fs::create_dir_all(&slow_mail).unwrap();
    std::fs::create_dir_all(&src_mail).unwrap();
    let port = free_port("127.8.1.4");
    let slow = sink_on(Ipv4Addr::new(127, 8, 1, 4), port, &slow_mail, |_| {}).await;
    let src = sink_on(Ipv4Addr::new(127, 8, 1, 5), port, &src_mail, |_| {}).await;
    let mut z = ZoneBuilder::new("t.test.");
    for d in ["slow", "slow2"] {
        z.mx(&format!("{d}.t.test"), 10, &format!("mx-{d}.t.test")).a(&format!("mx-{d}.t.test"), Ipv4Addr::new(127, 8, 1, 4));
    }
    z.mx("src.t.test", 10, "mx-src.t.test").a("mx-src.t.test", Ipv4Addr::new(127, 8, 1, 5));
    let dns = DnsServer::start(vec![z], "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let mut setup = Setup::new(&dir, dns.addr(), port);
    // One message every 4 s: after the first, the others wait in the engine.
    setup.tail = "[[domain]]\nname = \"slow.t.test\"\nmsgs_per_s = 0.25\n[[domain]]\nname = \"slow2.t.test\"\nmsgs_per_s = 0.25\n".into();
    let d = start_daemon(&setup.write(&dir), setup.inject);
    let api = setup.http;
    for i in 0..4 {
        assert!(inject(d.inject, "app@src.t.test", "u@slow.t.test", &format!("slow {i}")).await);
    }
    wait_for("the first delivery", Duration::from_secs(10), || subjects(&slow_mail).len() == 1).await;

    // Suspend: the three waiting come back to the queue, untried.
    let (ok, out, err) = queue_async(api, &["suspend", "slow.t.test", "--for", "1h"]).await;
    assert!(ok, "{out}{err}");
    wait_for("three recipients back in the queue", Duration::from_secs(5), || {
        let (_, out, _) = queue(api, &["--json", "list"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["queues"].as_array().unwrap().iter().any(|q| q["domain"] == "slow.t.test" && q["recipients"] == 3)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(subjects(&slow_mail).len(), 1, "a suspended destination's backlog was still delivered");

    // Bounce: the three are bounced with DSNs, never delivered.
    let (ok, out, err) = queue_async(api, &["bounce", "slow.t.test"]).await;
    assert!(ok && out.starts_with("slow.t.test: 3 recipients bounced"), "{out}{err}");
    wait_for("three DSNs", Duration::from_secs(10), || std::fs::read_dir(&src_mail).unwrap().count() >= 3).await;

    // Bounce without a suspension, while the backlog is with the engine.
    for i in 0..3 {
        assert!(inject(d.inject, "app@src.t.test", "u@slow2.t.test", &format!("slow2 {i}")).await);
    }
    wait_for("slow2's first delivery", Duration::from_secs(10), || subjects(&slow_mail).len() == 2).await;
    let (ok, out, err) = queue_async(api, &["bounce", "slow2.t.test"]).await;
    assert!(ok && out.contains("2 recipients bounced") && out.contains("2 with the engine"), "{out}{err}");
    wait_for("two more DSNs", Duration::from_secs(10), || std::fs::read_dir(&src_mail).unwrap().count() >= 5).await;
    assert!(terminate(d));
    assert_eq!(subjects(&slow_mail).len(), 2, "bounced recipients were delivered");
    let log: Vec<serde_json::Value> =
        std::fs::read_to_string(dir.join("delivery.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(log.iter().all(|r| r["status"] != "deferred"), "a withdrawn part was logged as an attempt");
    let bounced =
        log.iter().filter(|r| r["status"] == "bounced" && r["reply"].as_str().unwrap().contains("bounced by the operator")).count();
    assert_eq!(bounced, 5);
    slow.shutdown(Duration::from_secs(1)).await;
    src.shutdown(Duration::from_secs(1)).await;
    dns.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suspension_outlasts_a_restart_and_a_resume_too() {
    let dir = tmpdir("keepsusp");
    let dns = DnsServer::start(vec![ZoneBuilder::new("t.test.")], "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let setup = Setup::new(&dir, dns.addr(), 25);
    let config = setup.write(&dir);
    let api = setup.http;
    let d = start_daemon(&config, setup.inject);
    assert!(queue_async(api, &["suspend", "paused.t.test", "--for", "2h"]).await.0);
    assert!(queue_async(api, &["suspend", "brief.t.test", "--for", "1s"]).await.0);
    assert!(terminate(d));
    tokio::time::sleep(Duration::from_millis(1200)).await;

    let d = start_daemon(&config, setup.inject);
    let (ok, out, err) = queue_async(api, &["list"]).await;
    assert!(ok, "{err}");
    assert!(out.lines().any(|l| l.starts_with("paused.t.test ") && l.contains("until in 1h59m")), "lost at restart:\n{out}");
    assert!(!out.contains("brief.t.test"), "an expired suspension came back:\n{out}");
    assert!(queue_async(api, &["resume", "paused.t.test"]).await.0);
    d.kill9();

    let d = start_daemon(&config, setup.inject);
    let (_, out, _) = queue_async(api, &["list"]).await;
    assert!(out.contains("no recipients waiting and no destination suspended"), "the resume was lost:\n{out}");
    assert!(terminate(d));
    dns.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Run `mxpipe policy --api API args...`: (success, stdout, stderr).
fn policy(api: SocketAddr, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mxpipe")).arg("policy").arg("--api").arg(api.to_string()).args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pin_is_shown_survives_a_restart_and_can_be_forgotten() {
    let dir = tmpdir("policycmd");
    let mail = dir.join("mail");
    std::fs::create_dir_all(&mail).unwrap();
    let port = free_port("127.8.2.1");
    // The sink's certificate is not trusted for the prefixed name: the message is deferred,
    // but the resolution alone pins the domain.
    let _sink = sink_on(Ipv4Addr::new(127, 8, 2, 1), port, &mail, |_| {}).await;
    let mut z = ZoneBuilder::new("t.test.");
    z.mx("pinned.t.test", 10, "starttls-mx.pinned.t.test").a("starttls-mx.pinned.t.test", Ipv4Addr::new(127, 8, 2, 1));
    let dns = DnsServer::start(vec![z], "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let setup = Setup::new(&dir, dns.addr(), port);
    let config = setup.write(&dir);
    let d = start_daemon(&config, setup.inject);
    let api = setup.http;
    let (ok, out, err) = tokio::task::spawn_blocking(move || policy(api, &["show", "pinned.t.test"])).await.unwrap();
    assert!(ok && out.contains("no pin"), "before any delivery: {out}{err}");
    assert!(inject(d.inject, "app@src.t.test", "a@pinned.t.test", "pin me").await);
    wait_for("the pin", Duration::from_secs(20), || policy(api, &["show", "pinned.t.test"]).1.contains("pinned (starttls prefix")).await;
    let (ok, out, _) = policy(api, &["--json", "show", "PINNED.t.test."]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(ok && v["pinned"] == true && v["pin"]["hosts"][0] == "starttls-mx.pinned.t.test", "{v}");
    assert!(std::fs::read_dir(&mail).unwrap().next().is_none(), "nothing delivered to an unverified certificate");

    // A restart keeps it (saved at shutdown beside the spool, mode 0600).
    assert!(terminate(d));
    let file = setup.spool.join(mxpipe::policy::state::FILE_NAME);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    let d = start_daemon(&config, setup.inject);
    let (ok, out, err) = policy(api, &["show", "pinned.t.test"]);
    assert!(ok && out.contains("pinned (starttls prefix, seen on starttls-mx.pinned.t.test)"), "after the restart: {out}{err}");

    // forget, then nothing is left; bad input is a clear error.
    let (ok, out, _) = policy(api, &["forget", "pinned.t.test"]);
    assert!(ok && out.contains("forgotten: its pin"), "{out}");
    let (ok, out, _) = policy(api, &["show", "pinned.t.test"]);
    assert!(ok && out.contains("no pin"), "{out}");
    let (ok, _, err) = policy(api, &["show", "bad..name"]);
    assert!(!ok && err.contains("not a domain name"), "{err}");
    assert!(terminate(d));
    dns.shutdown().await;
}
