//! REQUIRETLS (RFC 8689) on the way in, over real sockets: `mxpipe serve`'s SMTP listener
//! (advertised only after STARTTLS, refused in clear), the spool keeping a message's TLS
//! requirement across a restart, the HTTP API's `requiretls` field and the `TLS-Required: No`
//! header field, `mxpipe sink --requiretls` recording what it received, and the library's
//! client session sending REQUIRETLS over a real TLS socket only to a sink that offers it.
//!
//! The daemons here resolve through a DNS address where nothing answers, so every message
//! stays queued (deferred) whatever the engine would do with its requirement: what is checked
//! is what the spool holds once the daemon has stopped.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::daemon::*;
use common::{client_tls_unverified, Client};
use mxpipe::engine::MessageTls;
use mxpipe::queue::spool::{Spool, SpoolConfig, Stored};
use mxpipe::reply::Reply;

/// A UDP address where no DNS server listens: resolution fails, delivery is deferred.
fn dead_dns() -> SocketAddr {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap()
}

/// What the spool in `dir` holds, read with the daemon stopped (the spool blocks: not on a
/// runtime worker's own stack).
fn spooled(dir: &Path) -> Vec<Stored> {
    tokio::task::block_in_place(|| {
        let (spool, stored) = Spool::open(SpoolConfig::new(dir)).unwrap();
        spool.close().unwrap();
        stored
    })
}

fn has_keyword(ehlo: &Reply, kw: &str) -> bool {
    ehlo.lines.iter().skip(1).any(|l| l.eq_ignore_ascii_case(kw))
}

/// EHLO, STARTTLS and EHLO again: the session over TLS and its second EHLO reply.
async fn starttls(addr: SocketAddr) -> (Client<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>, Reply, Reply) {
    let mut c = Client::connect(addr).await;
    assert_eq!(c.reply().await.code, 220);
    c.send("EHLO app.test\r\n").await;
    let clear = c.reply().await;
    assert_eq!(clear.code, 250);
    assert_eq!(c.cmd("STARTTLS").await, 220);
    let mut c = c.tls(client_tls_unverified()).await;
    c.send("EHLO app.test\r\n").await;
    let tls = c.reply().await;
    assert_eq!(tls.code, 250);
    (c, clear, tls)
}

/// One message on an open session; the final reply after the data.
async fn mail<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    c: &mut Client<S>,
    mail_from: &str,
    to: &str,
    content: &str,
) -> Reply {
    c.send(format!("{mail_from}\r\n")).await;
    let r = c.reply().await;
    assert_eq!(r.code, 250, "{mail_from}: {}", r.one_line());
    assert_eq!(c.cmd(&format!("RCPT TO:<{to}>")).await, 250);
    assert_eq!(c.cmd("DATA").await, 354);
    c.send(format!("{content}\r\n.\r\n")).await;
    c.reply().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_injection_offers_requiretls_only_over_tls_and_the_spool_keeps_it_across_a_restart() {
    let dir = tmpdir("reqtls-smtp");
    let setup = Setup::new(&dir, dead_dns(), free_port("127.0.0.1"));
    let config = setup.write(&dir);
    let d = start_daemon(&config, setup.inject);

    // In clear: not advertised, and the parameter is refused with 530 5.7.10.
    let mut c = Client::connect(d.inject).await;
    assert_eq!(c.reply().await.code, 220);
    c.send("EHLO app.test\r\n").await;
    let clear = c.reply().await;
    assert!(has_keyword(&clear, "STARTTLS") && !has_keyword(&clear, "REQUIRETLS"), "{clear:?}");
    c.send("MAIL FROM:<app@src.t.test> REQUIRETLS\r\n").await;
    let r = c.reply().await;
    assert_eq!((r.code, r.enhanced.map(|e| e.to_string())), (530, Some("5.7.10".into())), "{}", r.one_line());
    // The refusal left no transaction: a plain MAIL is taken.
    assert_eq!(c.cmd("MAIL FROM:<app@src.t.test>").await, 250);
    drop(c);

    // After STARTTLS: advertised, and a REQUIRETLS message is taken.
    let (mut c, clear, tls) = starttls(d.inject).await;
    assert!(!has_keyword(&clear, "REQUIRETLS"), "{clear:?}");
    assert!(has_keyword(&tls, "REQUIRETLS"), "{tls:?}");
    let r = mail(&mut c, "MAIL FROM:<app@src.t.test> REQUIRETLS", "a@held.t.test", "Subject: required\r\n\r\nsecret").await;
    assert_eq!(r.code, 250, "{}", r.one_line());
    // The header field does not weaken a message sent with the parameter.
    let content = "TLS-Required: No\r\nSubject: both\r\n\r\nx";
    assert_eq!(mail(&mut c, "MAIL FROM:<app@src.t.test> REQUIRETLS", "b@held.t.test", content).await.code, 250);
    // Without the parameter, `TLS-Required: No` in the header makes it Optional ...
    let content = "Subject: optional\r\ntls-required:  no\r\n\r\nx";
    assert_eq!(mail(&mut c, "MAIL FROM:<app@src.t.test>", "c@held.t.test", content).await.code, 250);
    // ... but not in the body.
    let content = "Subject: plain\r\n\r\nTLS-Required: No\r\n";
    assert_eq!(mail(&mut c, "MAIL FROM:<app@src.t.test>", "d@held.t.test", content).await.code, 250);
    let _ = c.cmd("QUIT").await;
    let (code, metrics) = http_async(setup.http, "GET", "/metrics".into(), String::new()).await;
    assert_eq!(code, 200);
    let line = |name: &str| metrics.lines().find(|l| l.starts_with(&format!("{name} "))).map(str::to_string);
    assert_eq!(line("mxpipe_injection_messages_total").as_deref(), Some("mxpipe_injection_messages_total 4"), "{metrics}");
    assert_eq!(
        line("mxpipe_injection_requiretls_messages_total").as_deref(),
        Some("mxpipe_injection_requiretls_messages_total 2"),
        "{metrics}"
    );
    assert!(terminate(d), "serve did not stop cleanly");

    let expect = [
        ("a@held.t.test", MessageTls::RequireTls),
        ("b@held.t.test", MessageTls::RequireTls),
        ("c@held.t.test", MessageTls::Optional),
        ("d@held.t.test", MessageTls::Default),
    ];
    let check = |stored: &[Stored], when: &str| {
        assert_eq!(stored.len(), expect.len(), "{when}: {stored:?}");
        for (rcpt, tls) in expect {
            let m = stored.iter().find(|s| s.rcpts[0].rcpt == rcpt).unwrap_or_else(|| panic!("{when}: {rcpt} not spooled"));
            assert_eq!(m.tls, tls, "{when}: {rcpt}");
        }
    };
    check(&spooled(&setup.spool), "after the first run");

    // A restart recovers them (the manager hands them to the engine with their
    // requirement), and the spool still has it when the daemon stops again.
    let d = start_daemon(&config, setup.inject);
    assert_eq!(d.recovered(), 4, "{}", d.banner);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(terminate(d), "serve did not stop cleanly");
    check(&spooled(&setup.spool), "after a restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injection_listener_without_requiretls_refuses_the_parameter_with_555() {
    let dir = tmpdir("reqtls-off");
    let mut setup = Setup::new(&dir, dead_dns(), free_port("127.0.0.1"));
    setup.inject_smtp = "requiretls = false\n".into();
    let d = start_daemon(&setup.write(&dir), setup.inject);
    let (mut c, _, tls) = starttls(d.inject).await;
    assert!(!has_keyword(&tls, "REQUIRETLS"), "{tls:?}");
    c.send("MAIL FROM:<app@src.t.test> REQUIRETLS\r\n").await;
    let r = c.reply().await;
    assert_eq!((r.code, r.enhanced.map(|e| e.to_string())), (555, Some("5.5.4".into())), "{}", r.one_line());
    let _ = c.cmd("QUIT").await;
    assert!(terminate(d));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_api_requiretls_field_and_tls_required_header() {
    let dir = tmpdir("reqtls-http");
    let setup = Setup::new(&dir, dead_dns(), free_port("127.0.0.1"));
    let d = start_daemon(&setup.write(&dir), setup.inject);
    let post = |body: serde_json::Value| http_async(setup.http, "POST", "/v1/messages".into(), body.to_string());
    let msg = |to: &str, data: &str| serde_json::json!({"from": "app@src.t.test", "to": [to], "data": data});

    let mut required = msg("a@held.t.test", "Subject: a\r\n\r\nx");
    required["requiretls"] = true.into();
    let mut both = msg("b@held.t.test", "TLS-Required: No\r\nSubject: b\r\n\r\nx");
    both["requiretls"] = true.into();
    let optional = msg("c@held.t.test", "Subject: c\r\nTLS-REQUIRED: NO\r\n\r\nx");
    let mut plain = msg("d@held.t.test", "Subject: d\r\n\r\nTLS-Required: No\r\n");
    plain["requiretls"] = false.into();
    let batch = serde_json::json!({"messages": [required, both, optional, plain]});
    let (code, body) = post(batch).await;
    assert_eq!(code, 202, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let ids: Vec<u64> = v["ids"].as_array().unwrap().iter().map(|i| u64::from_str_radix(i.as_str().unwrap(), 16).unwrap()).collect();
    assert_eq!(ids.len(), 4);

    // Not a boolean: refused, naming the field.
    let mut bad = msg("e@held.t.test", "Subject: e\r\n\r\nx");
    bad["requiretls"] = "yes".into();
    let (code, body) = post(bad).await;
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("requiretls"), "{body}");

    assert!(terminate(d));
    let stored = spooled(&setup.spool);
    let tls_of = |id: u64| stored.iter().find(|s| s.id == id).map(|s| s.tls);
    let got: Vec<_> = ids.iter().map(|&id| tls_of(id)).collect();
    assert_eq!(got, [Some(MessageTls::RequireTls), Some(MessageTls::RequireTls), Some(MessageTls::Optional), Some(MessageTls::Default)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dsn_for_a_requiretls_message_is_spooled_with_requiretls() {
    let dir = tmpdir("reqtls-dsn");
    let setup = Setup::new(&dir, dead_dns(), free_port("127.0.0.1"));
    let d = start_daemon(&setup.write(&dir), setup.inject);
    let api = setup.http;
    // Both destinations held, so nothing is tried: the operator's bounce makes the DSNs, and
    // they wait in the spool.
    for domain in ["held.t.test", "src.t.test"] {
        let (code, body) = http_async(api, "POST", format!("/v1/queues/{domain}/suspend"), r#"{"for":"1h"}"#.into()).await;
        assert_eq!(code, 200, "{body}");
    }
    let msg = |to: &str, requiretls: bool| serde_json::json!({"from": "app@src.t.test", "to": [to], "data": "Subject: s\r\n\r\nsecret body", "requiretls": requiretls});
    let batch = serde_json::json!({"messages": [msg("a@held.t.test", true), msg("b@held.t.test", false)]});
    let (code, body) = http_async(api, "POST", "/v1/messages".into(), batch.to_string()).await;
    assert_eq!(code, 202, "{body}");
    let (code, body) = http_async(api, "POST", "/v1/queues/held.t.test/bounce".into(), String::new()).await;
    assert_eq!(code, 200, "{body}");
    wait_for("two DSNs queued", Duration::from_secs(10), || {
        let (_, out) = http(api, "GET", "/v1/queues", "");
        out.contains("src.t.test")
    })
    .await;
    assert!(terminate(d));

    let stored = spooled(&setup.spool);
    let dsns: Vec<&Stored> = stored.iter().filter(|s| s.from.is_empty()).collect();
    assert_eq!(dsns.len(), 2, "{stored:?}");
    let about =
        |rcpt: &str| dsns.iter().find(|s| String::from_utf8_lossy(&s.data).contains(rcpt)).unwrap_or_else(|| panic!("no DSN about {rcpt}"));
    // RFC 8689 §5: the report on a REQUIRETLS message goes with REQUIRETLS, and holds the
    // original's header only.
    let dsn = about("a@held.t.test");
    assert_eq!(dsn.tls, MessageTls::RequireTls);
    assert!(!String::from_utf8_lossy(&dsn.data).contains("secret body"));
    assert_eq!(about("b@held.t.test").tls, MessageTls::Default);
}

/// `mxpipe sink` with `args`, on ephemeral ports: the child and its STARTTLS and implicit-TLS
/// addresses.
fn spawn_sink(args: &[&str]) -> (std::process::Child, SocketAddr, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mxpipe"))
        .args(["sink", "--starttls-port", "0", "--implicit-port", "0", "--duration", "120"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut addr = |kind: &str| -> SocketAddr {
        let line = lines.next().expect("sink printed its listeners").unwrap();
        line.strip_prefix(&format!("mxpipe sink: {kind} on ")).unwrap_or_else(|| panic!("{line:?}")).parse().unwrap()
    };
    let (st, im) = (addr("starttls"), addr("implicit"));
    std::thread::spawn(move || for _ in lines {});
    (child, st, im)
}

fn stop_sink(mut child: std::process::Child) {
    // SAFETY: plain kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    for _ in 0..200 {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap();
    panic!("sink did not exit within 10 s of SIGTERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_with_requiretls_records_which_messages_carried_it() {
    let dir = tmpdir("reqtls-sink");
    let (mail_dir, stats) = (dir.join("mail"), dir.join("stats.json"));
    let (child, st, im) = spawn_sink(&["--requiretls", "--mail-dir", mail_dir.to_str().unwrap(), "--stats-json", stats.to_str().unwrap()]);

    // STARTTLS port: in clear not offered and refused; after STARTTLS offered and taken.
    let mut c = Client::connect(st).await;
    assert_eq!(c.reply().await.code, 220);
    assert_eq!(c.cmd("EHLO app.test").await, 250);
    assert_eq!(c.cmd("MAIL FROM:<a@x.test> REQUIRETLS").await, 530);
    drop(c);
    let (mut c, clear, tls) = starttls(st).await;
    assert!(!has_keyword(&clear, "REQUIRETLS") && has_keyword(&tls, "REQUIRETLS"), "{clear:?} {tls:?}");
    assert_eq!(mail(&mut c, "MAIL FROM:<a@x.test> REQUIRETLS", "r1@y.test", "Subject: one\r\n\r\nx").await.code, 250);
    assert_eq!(mail(&mut c, "MAIL FROM:<a@x.test>", "r2@y.test", "Subject: two\r\n\r\nx").await.code, 250);
    let _ = c.cmd("QUIT").await;

    // Implicit-TLS port: offered in the first EHLO.
    let mut c = Client::connect(im).await.tls(client_tls_unverified()).await;
    assert_eq!(c.reply().await.code, 220);
    c.send("EHLO app.test\r\n").await;
    assert!(has_keyword(&c.reply().await, "REQUIRETLS"));
    assert_eq!(mail(&mut c, "MAIL FROM:<a@x.test> REQUIRETLS", "r3@y.test", "Subject: three\r\n\r\nx").await.code, 250);
    let _ = c.cmd("QUIT").await;
    stop_sink(child);

    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap();
    assert_eq!((json["messages"].as_u64(), json["requiretls_messages"].as_u64()), (Some(3), Some(2)), "{json}");
    // Without the sink's own trace field (its client address and EHLO name, a Received: line
    // after the markers), which tests/sink_peers.rs checks.
    let without_trace = |f: String| f.split_inclusive("\r\n").filter(|l| !l.starts_with("Received: from ")).collect::<String>();
    let mut files: Vec<String> =
        std::fs::read_dir(&mail_dir).unwrap().map(|e| without_trace(std::fs::read_to_string(e.unwrap().path()).unwrap())).collect();
    files.sort_by_key(|f| f.lines().find(|l| l.starts_with("Subject: ")).map(str::to_string));
    assert_eq!(files.len(), 3);
    // The marker follows the envelope lines, before the content; absent without REQUIRETLS.
    assert!(
        files[0]
            .starts_with("X-Mxpipe-Mail-From: <a@x.test>\r\nX-Mxpipe-Rcpt-To: <r1@y.test>\r\nX-Mxpipe-Requiretls: yes\r\nSubject: one\r\n"),
        "{}",
        files[0]
    );
    assert!(
        files[1].starts_with("X-Mxpipe-Mail-From: <a@x.test>\r\nX-Mxpipe-Rcpt-To: <r3@y.test>\r\nX-Mxpipe-Requiretls: yes\r\n"),
        "{}",
        files[1]
    );
    assert_eq!(files[2], "X-Mxpipe-Mail-From: <a@x.test>\r\nX-Mxpipe-Rcpt-To: <r2@y.test>\r\nSubject: two\r\n\r\nx\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_without_the_flag_does_not_offer_requiretls() {
    let (child, st, _) = spawn_sink(&[]);
    let (mut c, _, tls) = starttls(st).await;
    assert!(!has_keyword(&tls, "REQUIRETLS"), "{tls:?}");
    assert_eq!(c.cmd("MAIL FROM:<a@x.test> REQUIRETLS").await, 555);
    let _ = c.cmd("QUIT").await;
    stop_sink(child);
}

/// Deliver `msg` with the library's client session over implicit TLS to `addr`, moving bytes
/// only (what the engine's driver does): the outcome, and whether the server advertised
/// REQUIRETLS.
async fn deliver_with_session(addr: SocketAddr, msg: mxpipe::session::Message) -> (mxpipe::session::MessageOutcome, bool) {
    use mxpipe::session::{ClientSession, Event, SessionConfig, TlsMode};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut io = tokio_rustls::TlsConnector::from(client_tls_unverified()).connect(name, tcp).await.unwrap();
    let mut s = ClientSession::new(SessionConfig { tls: TlsMode::Implicit, ..SessionConfig::new("client.test") });
    s.send_message(msg).unwrap();
    let (mut outcome, mut advertised) = (None, false);
    let mut buf = vec![0u8; 4096];
    loop {
        while let Some(ev) = s.poll_event() {
            match ev {
                Event::Send(b) => io.write_all(&b).await.unwrap(),
                Event::Done(o) => {
                    advertised = s.server_requiretls();
                    outcome = Some(o);
                    s.quit();
                }
                Event::Ready => s.quit(),
                Event::Closed => return (outcome.expect("a Done before Closed"), advertised),
                other => panic!("unexpected {other:?}"),
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(10), io.read(&mut buf)).await.unwrap().unwrap();
        if n == 0 {
            s.receive_eof();
        } else {
            s.receive(&buf[..n]);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_session_sends_requiretls_only_to_a_server_that_offers_it() {
    use mxpipe::session::{Message, RcptStatus};
    let msg = || Message {
        id: 1,
        from: "a@x.test".into(),
        rcpts: vec!["b@y.test".into()],
        data: b"Subject: s\r\n\r\nx\r\n"[..].into(),
        requiretls: true,
    };
    // A sink that offers it: the parameter goes on MAIL and the sink counts it.
    let (sink, _) = common::start_sink(|c| c.requiretls = true).await;
    let (o, advertised) = deliver_with_session(sink.addr(mxpipe::sink::PortKind::Implicit).unwrap(), msg()).await;
    assert!(advertised);
    assert_eq!(o.rcpts[0].status, RcptStatus::Delivered, "{o:?}");
    assert_eq!((sink.stats().messages, sink.stats().requiretls_messages), (1, 1));
    // One that does not: nothing is sent, the recipient bounces with 5.7.30.
    let (plain, _) = common::start_sink(|_| {}).await;
    let (o, advertised) = deliver_with_session(plain.addr(mxpipe::sink::PortKind::Implicit).unwrap(), msg()).await;
    assert!(!advertised);
    assert_eq!(o.rcpts[0].status, RcptStatus::Bounced, "{o:?}");
    assert_eq!(o.rcpts[0].enhanced.as_deref(), Some("5.7.30"));
    assert!(o.rcpts[0].reply.contains("next hop does not advertise REQUIRETLS"), "{o:?}");
    assert_eq!(plain.stats().messages, 0, "the message was not sent without REQUIRETLS");
}
