//! AUTH PLAIN on `mxpipe serve`'s SMTP injection listener, against the real binary over real
//! sockets and real TLS: offered only after STARTTLS, both forms of the response, wrong and
//! borrowed identities, the three-failure limit, clients from the allowed networks, a bad
//! users file, and `mxpipe passwd` making the file.
//!
//! The test client connects from 127.0.0.1, outside `allowed_networks = ["10.0.0.0/8"]`, so it
//! is an outsider that must AUTH. Destination sinks are on 127.6.x.x.

mod common;

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use common::daemon::*;
use common::{client_tls_unverified, Client};
use mxpipe::dnsserver::{DnsServer, ZoneBuilder};
use mxpipe::reply::Reply;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

const PASSWORD: &str = "correct horse battery";

/// Run `mxpipe passwd USER --iterations 10000` with `stdin` (the lowest count, to keep the
/// tests fast; the default is 600,000).
fn passwd(user: &str, stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mxpipe"))
        .args(["passwd", user, "--iterations", "10000"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

/// A users file with alice (password [`PASSWORD`]) and bob, made by `mxpipe passwd`.
fn users_file(dir: &Path) -> PathBuf {
    let mut text = String::from("# injection users\n\n");
    for (user, pw) in [("alice", PASSWORD), ("bob", "bobs password")] {
        let out = passwd(user, &format!("{pw}\n"));
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        text.push_str(&String::from_utf8(out.stdout).unwrap());
    }
    let path = dir.join("users");
    std::fs::write(&path, text).unwrap();
    path
}

/// The base64 SASL PLAIN response.
fn plain(authzid: &str, authcid: &str, password: &str) -> String {
    B64.encode(format!("{authzid}\0{authcid}\0{password}"))
}

fn enhanced(r: &Reply) -> String {
    r.enhanced.map(|e| e.to_string()).unwrap_or_default()
}

/// Send a command, return the whole reply.
async fn ask<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(c: &mut Client<S>, line: &str) -> Reply {
    c.send(format!("{line}\r\n")).await;
    c.reply().await
}

fn offers_auth(ehlo: &Reply) -> bool {
    ehlo.lines.iter().any(|l| l.eq_ignore_ascii_case("AUTH PLAIN"))
}

/// A running daemon with a users file, and what to clean up.
struct Running {
    daemon: Daemon,
    dns: DnsServer,
    dir: PathBuf,
    http: SocketAddr,
}

impl Running {
    fn addr(&self) -> SocketAddr {
        self.daemon.inject
    }

    async fn stop(self) {
        assert!(terminate(self.daemon));
        self.dns.shutdown().await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Start `mxpipe serve` with `allowed_networks = [allowed]`, alice and bob in its users file,
/// `auth_extra` lines in `[inject.smtp.auth]`, and destinations from `zone` on `smtp_port`.
async fn start(tag: &str, allowed: &str, auth_extra: &str, zone: ZoneBuilder, smtp_port: u16) -> Running {
    let dir = tmpdir(&format!("auth-{tag}"));
    let users = users_file(&dir);
    let dns = DnsServer::start(vec![zone], "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let mut setup = Setup::new(&dir, dns.addr(), smtp_port);
    setup.allowed = format!("\"{allowed}\"");
    setup.tail = format!("[inject.smtp.auth]\nusers_file = \"{}\"\n{auth_extra}\n", users.display());
    let config = setup.write(&dir);
    let daemon = start_daemon(&config, setup.inject);
    Running { daemon, dns, dir, http: setup.http }
}

async fn start_plain(tag: &str) -> Running {
    start(tag, "10.0.0.0/8", "", ZoneBuilder::new("t.test."), 25).await
}

/// Connect, EHLO and STARTTLS (checking AUTH is not offered in clear), EHLO again over TLS
/// (checking it is).
async fn starttls(addr: SocketAddr) -> Client<TlsStream<TcpStream>> {
    let mut c = Client::connect(addr).await;
    assert_eq!(c.reply().await.code, 220);
    let ehlo = ask(&mut c, "EHLO app.test").await;
    assert_eq!(ehlo.code, 250);
    assert!(!offers_auth(&ehlo), "AUTH offered before STARTTLS: {ehlo:?}");
    assert_eq!(c.cmd("STARTTLS").await, 220);
    let mut c = c.tls(client_tls_unverified()).await;
    let ehlo = ask(&mut c, "EHLO app.test").await;
    assert_eq!(ehlo.code, 250);
    assert!(offers_auth(&ehlo), "AUTH PLAIN not offered after STARTTLS: {ehlo:?}");
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_is_refused_in_clear_and_offered_after_starttls() {
    let d = start_plain("clear").await;
    let mut c = Client::connect(d.addr()).await;
    assert_eq!(c.reply().await.code, 220, "an outsider may connect when AUTH is configured");
    let ehlo = ask(&mut c, "EHLO app.test").await;
    assert!(!offers_auth(&ehlo), "{ehlo:?}");
    assert!(ehlo.lines.iter().any(|l| l == "STARTTLS"), "{ehlo:?}");
    // Correct credentials, but in clear: refused without being checked.
    let r = ask(&mut c, &format!("AUTH PLAIN {}", plain("", "alice", PASSWORD))).await;
    assert_eq!((r.code, enhanced(&r)), (538, "5.7.11".into()), "{r:?}");
    let r = ask(&mut c, "AUTH PLAIN").await;
    assert_eq!((r.code, enhanced(&r)), (538, "5.7.11".into()), "no 334 in clear: {r:?}");
    let r = ask(&mut c, "MAIL FROM:<app@src.test>").await;
    assert_eq!((r.code, enhanced(&r)), (530, "5.7.0".into()), "{r:?}");
    assert_eq!(c.cmd("STARTTLS").await, 220);
    let mut c = c.tls(client_tls_unverified()).await;
    let ehlo = ask(&mut c, "EHLO app.test").await;
    assert!(offers_auth(&ehlo), "{ehlo:?}");
    // Still nothing without AUTH, even over TLS.
    let r = ask(&mut c, "MAIL FROM:<app@src.test>").await;
    assert_eq!((r.code, enhanced(&r)), (530, "5.7.0".into()), "{r:?}");
    let r = ask(&mut c, &format!("AUTH PLAIN {}", plain("", "alice", PASSWORD))).await;
    assert_eq!((r.code, enhanced(&r)), (235, "2.7.0".into()), "{r:?}");
    assert_eq!(c.cmd("QUIT").await, 221);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authenticated_mail_is_accepted_and_delivered() {
    let dir = tmpdir("auth-deliver-sink");
    let port = free_port("127.6.0.1");
    let sink = sink_on(Ipv4Addr::new(127, 6, 0, 1), port, &dir, |_| {}).await;
    let mut z = ZoneBuilder::new("t.test.");
    z.mx("d.t.test", 10, "mx.t.test").a("mx.t.test", Ipv4Addr::new(127, 6, 0, 1));
    let d = start("deliver", "10.0.0.0/8", "", z, port).await;

    let mut c = starttls(d.addr()).await;
    let r = ask(&mut c, &format!("AUTH PLAIN {}", plain("", "alice", PASSWORD))).await;
    assert_eq!((r.code, enhanced(&r)), (235, "2.7.0".into()), "{r:?}");
    let r = ask(&mut c, &format!("AUTH PLAIN {}", plain("", "alice", PASSWORD))).await;
    assert_eq!((r.code, enhanced(&r)), (503, "5.5.1".into()), "AUTH twice: {r:?}");
    assert_eq!(c.cmd("MAIL FROM:<app@src.test>").await, 250);
    assert_eq!(c.cmd("RCPT TO:<u@d.t.test>").await, 250);
    assert_eq!(c.cmd("DATA").await, 354);
    c.send("Subject: authenticated\r\n\r\nhello\r\n.\r\n").await;
    let r = c.reply().await;
    assert_eq!(r.code, 250, "{r:?}");
    assert_eq!(c.cmd("QUIT").await, 221);
    wait_for("delivery to the sink", Duration::from_secs(30), || subjects(&dir).contains(&"authenticated".to_string())).await;
    d.stop().await;
    sink.shutdown(Duration::from_secs(1)).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuation_form_cancel_and_bad_base64() {
    let d = start_plain("continue").await;
    let mut c = starttls(d.addr()).await;
    let r = ask(&mut c, "AUTH PLAIN").await;
    assert_eq!(r.code, 334, "{r:?}");
    let r = ask(&mut c, "*").await;
    assert_eq!((r.code, enhanced(&r)), (501, "5.7.0".into()), "cancelled: {r:?}");
    assert_eq!(c.cmd("AUTH PLAIN").await, 334);
    let r = ask(&mut c, "not base64!").await;
    assert_eq!((r.code, enhanced(&r)), (501, "5.5.2".into()), "{r:?}");
    let r = ask(&mut c, "AUTH PLAIN %%%").await;
    assert_eq!((r.code, enhanced(&r)), (501, "5.5.2".into()), "bad initial response: {r:?}");
    let r = ask(&mut c, "AUTH LOGIN").await;
    assert_eq!(r.code, 504, "only PLAIN: {r:?}");
    // Neither a cancel nor undecodable input counts as a failed password: a fourth attempt
    // still gets in, in the continuation form.
    assert_eq!(c.cmd("AUTH plain").await, 334);
    let r = ask(&mut c, &plain("", "alice", PASSWORD)).await;
    assert_eq!((r.code, enhanced(&r)), (235, "2.7.0".into()), "{r:?}");
    assert_eq!(c.cmd("MAIL FROM:<app@src.test>").await, 250);
    assert_eq!(c.cmd("QUIT").await, 221);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_gets_535_slowly_and_mail_stays_refused() {
    let d = start_plain("wrong").await;
    let mut c = starttls(d.addr()).await;
    let t0 = Instant::now();
    let r = ask(&mut c, &format!("AUTH PLAIN {}", plain("", "alice", "wrong password"))).await;
    assert_eq!((r.code, enhanced(&r)), (535, "5.7.8".into()), "{r:?}");
    assert!(t0.elapsed() >= Duration::from_millis(900), "a failure is answered after a pause, took {:?}", t0.elapsed());
    let r = ask(&mut c, "MAIL FROM:<app@src.test>").await;
    assert_eq!((r.code, enhanced(&r)), (530, "5.7.0".into()), "{r:?}");
    // Bob's password is not alice's, and an unknown user fails the same way.
    let r = ask(&mut c, &format!("AUTH PLAIN {}", plain("", "alice", "bobs password"))).await;
    assert_eq!(r.code, 535, "{r:?}");
    // Two failures are not yet the limit: the right password still works.
    let r = ask(&mut c, &format!("AUTH PLAIN {}", plain("", "alice", PASSWORD))).await;
    assert_eq!(r.code, 235, "{r:?}");
    assert_eq!(c.cmd("MAIL FROM:<app@src.test>").await, 250);

    // Another session is not held up by one waiting out its failure pause.
    let mut slow = starttls(d.addr()).await;
    slow.send(format!("AUTH PLAIN {}\r\n", plain("", "nobody", "x"))).await;
    let t0 = Instant::now();
    let mut fast = starttls(d.addr()).await;
    assert_eq!(fast.cmd(&format!("AUTH PLAIN {}", plain("", "bob", "bobs password"))).await, 235);
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert_eq!(slow.reply().await.code, 535, "an unknown user fails like a wrong password");
    // The metrics count them: alice's and bob's successes, three failures.
    let (code, m) = http_async(d.http, "GET", "/metrics".into(), String::new()).await;
    assert_eq!(code, 200);
    assert!(m.contains("mxpipe_injection_auth_ok_total 2\n") && m.contains("mxpipe_injection_auth_failed_total 3\n"), "{m}");
    assert!(m.contains("mxpipe_injection_connections_total 3\n") && m.contains("mxpipe_injection_tls_handshakes_total 3\n"), "{m}");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_failures_close_the_connection() {
    let d = start_plain("three").await;
    let mut c = starttls(d.addr()).await;
    for attempt in 1..=2 {
        let r = ask(&mut c, &format!("AUTH PLAIN {}", plain("", "alice", &format!("guess {attempt}")))).await;
        assert_eq!((r.code, enhanced(&r)), (535, "5.7.8".into()), "attempt {attempt}: {r:?}");
    }
    // The third failure, even with a borrowed identity, ends the connection.
    let r = ask(&mut c, &format!("AUTH PLAIN {}", plain("bob", "alice", PASSWORD))).await;
    assert_eq!((r.code, enhanced(&r)), (421, "4.7.0".into()), "{r:?}");
    let rest = c.expect_close().await;
    assert!(rest.is_empty(), "nothing after the 421: {:?}", String::from_utf8_lossy(&rest));
    // The limit is per connection: a new one may try again.
    let mut c = starttls(d.addr()).await;
    assert_eq!(c.cmd(&format!("AUTH PLAIN {}", plain("", "alice", PASSWORD))).await, 235);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authzid_must_be_empty_or_the_user() {
    let d = start_plain("authzid").await;
    let mut c = starttls(d.addr()).await;
    // Alice's own password, asking to act as bob.
    let r = ask(&mut c, &format!("AUTH PLAIN {}", plain("bob", "alice", PASSWORD))).await;
    assert_eq!((r.code, enhanced(&r)), (535, "5.7.8".into()), "{r:?}");
    let r = ask(&mut c, "MAIL FROM:<app@src.test>").await;
    assert_eq!(r.code, 530, "{r:?}");
    let r = ask(&mut c, &format!("AUTH PLAIN {}", plain("alice", "alice", PASSWORD))).await;
    assert_eq!((r.code, enhanced(&r)), (235, "2.7.0".into()), "authzid equal to authcid: {r:?}");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_network_client_sends_without_auth() {
    let d = start("allowed", "127.6.1.0/24", "", ZoneBuilder::new("t.test."), 25).await;
    let inside: IpAddr = "127.6.1.1".parse().unwrap();
    let mut c = Client::connect_from(d.addr(), inside).await;
    assert_eq!(c.reply().await.code, 220);
    assert_eq!(c.cmd("EHLO app.test").await, 250);
    assert_eq!(c.cmd("MAIL FROM:<app@src.test>").await, 250);
    let r = ask(&mut c, &format!("AUTH PLAIN {}", plain("", "alice", PASSWORD))).await;
    assert_eq!((r.code, enhanced(&r)), (503, "5.5.1".into()), "AUTH inside a transaction: {r:?}");
    assert_eq!(c.cmd("RCPT TO:<u@d.t.test>").await, 250);
    assert_eq!(c.cmd("DATA").await, 354);
    c.send("Subject: trusted\r\n\r\nhello\r\n.\r\n").await;
    assert_eq!(c.reply().await.code, 250);
    assert_eq!(c.cmd("QUIT").await, 221);
    // The same daemon, a client from outside that network: it must AUTH.
    let mut c = Client::connect_from(d.addr(), "127.0.0.1".parse().unwrap()).await;
    assert_eq!(c.reply().await.code, 220);
    assert_eq!(c.cmd("EHLO app.test").await, 250);
    let r = ask(&mut c, "MAIL FROM:<app@src.test>").await;
    assert_eq!((r.code, enhanced(&r)), (530, "5.7.0".into()), "{r:?}");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_starttls_false_offers_auth_in_clear_on_loopback() {
    let d = start("cleartext", "10.0.0.0/8", "require_starttls = false", ZoneBuilder::new("t.test."), 25).await;
    let mut c = Client::connect(d.addr()).await;
    assert_eq!(c.reply().await.code, 220);
    let ehlo = ask(&mut c, "EHLO app.test").await;
    assert!(offers_auth(&ehlo), "{ehlo:?}");
    assert_eq!(c.cmd(&format!("AUTH PLAIN {}", plain("", "alice", PASSWORD))).await, 235);
    assert_eq!(c.cmd("MAIL FROM:<app@src.test>").await, 250);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_users_file_stops_serve_naming_the_line() {
    let dir = tmpdir("auth-badfile");
    let good = String::from_utf8(passwd("alice", "pw\n").stdout).unwrap();
    let users = dir.join("users");
    std::fs::write(&users, format!("# users\n{good}bob:pbkdf2-sha256:12:AAAA:BBBB\n")).unwrap();
    let mut setup = Setup::new(&dir, "127.0.0.1:53".parse().unwrap(), 25);
    setup.allowed = "\"10.0.0.0/8\"".into();
    setup.tail = format!("[inject.smtp.auth]\nusers_file = \"{}\"\n", users.display());
    let config = setup.write(&dir);
    let out = serve_expecting_exit(&config, Duration::from_secs(20));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains(&format!("users file {}, line 3: ", users.display())), "{err}");
    assert!(err.contains("iterations \"12\""), "{err}");
    assert!(std::net::TcpStream::connect(setup.inject).is_err(), "nothing listens");

    // A missing file is as clear.
    std::fs::remove_file(&users).unwrap();
    let out = serve_expecting_exit(&config, Duration::from_secs(20));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains(&format!("cannot read the users file {}", users.display())), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn passwd_prints_a_line_that_verifies() {
    let out = passwd("carol", "s3cret pass\n");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let line = String::from_utf8(out.stdout).unwrap();
    assert!(line.starts_with("carol:pbkdf2-sha256:10000:") && line.ends_with('\n'), "{line:?}");
    assert!(!line.contains("s3cret"));
    let users = mxpipe::auth::Users::parse(&line, Path::new("users")).unwrap();
    assert!(users.verify("carol", b"s3cret pass"));
    assert!(!users.verify("carol", b"s3cret pass\n"), "the line ending is not part of the password");
    assert!(!users.verify("carol", b"s3cret"));

    let out = passwd("carol", "");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no password"), "{out:?}");
    let out = passwd("ca:rol", "pw\n");
    assert!(!out.status.success() && out.stdout.is_empty(), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_that_keeps_failing_gets_no_more_password_checks() {
    let d = start_plain("byip").await;
    // Four connections, three wrong passwords each (closed after the third): twelve failures
    // from 127.0.0.1, past the ten allowed per address.
    let guessers: Vec<_> = (0..4)
        .map(|i| {
            let addr = d.addr();
            tokio::spawn(async move {
                let mut c = starttls(addr).await;
                for n in 0..3 {
                    let r = ask(&mut c, &format!("AUTH PLAIN {}", plain("", "alice", &format!("guess {i}.{n}")))).await;
                    assert!(r.code == 535 || r.code == 421 || r.code == 454, "{r:?}");
                    if r.code == 421 {
                        break;
                    }
                }
            })
        })
        .collect();
    for g in guessers {
        g.await.unwrap();
    }
    // Now even the right password from that address is not checked.
    let mut c = starttls(d.addr()).await;
    let t0 = Instant::now();
    let r = ask(&mut c, &format!("AUTH PLAIN {}", plain("", "alice", PASSWORD))).await;
    assert_eq!((r.code, enhanced(&r)), (454, "4.7.0".into()), "{r:?}");
    assert!(r.lines[0].contains("from your address"), "{r:?}");
    assert!(t0.elapsed() < Duration::from_millis(900), "refused without the failure pause or a check");
    let r = ask(&mut c, "MAIL FROM:<app@src.test>").await;
    assert_eq!(r.code, 530, "{r:?}");
    d.stop().await;
}

/// An outsider that must AUTH has `auth_timeout` to do it: one that keeps the connection busy
/// with NOOPs (so the idle timeout never fires) and never authenticates is cut off with
/// 421 4.4.2; one that authenticates in time is no longer bound by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outsider_that_does_not_authenticate_is_cut_off() {
    let dir = tmpdir("auth-deadline");
    let users = users_file(&dir);
    let dns = DnsServer::start(vec![ZoneBuilder::new("t.test.")], "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let mut setup = Setup::new(&dir, dns.addr(), 25);
    setup.allowed = "\"10.0.0.0/8\"".into();
    setup.inject_smtp = "auth_timeout = \"2s\"\n".into();
    setup.tail = format!("[inject.smtp.auth]\nusers_file = \"{}\"\n", users.display());
    let config = setup.write(&dir);
    let daemon = start_daemon(&config, setup.inject);

    let t0 = Instant::now();
    let mut c = starttls(setup.inject).await;
    let mut last = None;
    while t0.elapsed() < Duration::from_secs(10) {
        c.send("NOOP\r\n").await;
        match c.try_reply().await {
            Some(r) if r.code == 250 => tokio::time::sleep(Duration::from_millis(200)).await,
            other => {
                last = other;
                break;
            }
        }
    }
    let r = last.expect("the server closed without a reply");
    assert_eq!((r.code, enhanced(&r)), (421, "4.4.2".into()), "{r:?}");
    assert!(t0.elapsed() >= Duration::from_millis(1500) && t0.elapsed() < Duration::from_secs(8), "cut after {:?}", t0.elapsed());

    // Authenticated within the time: still there after it.
    let mut c = starttls(setup.inject).await;
    let r = ask(&mut c, &format!("AUTH PLAIN {}", plain("", "alice", PASSWORD))).await;
    assert_eq!(r.code, 235, "{r:?}");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(c.cmd("NOOP").await, 250, "cut off although authenticated");

    assert!(terminate(daemon));
    dns.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
