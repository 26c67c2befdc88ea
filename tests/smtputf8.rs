//! SMTPUTF8 (RFC 6531) end to end over loopback: the engine resolves an IDN domain by its
//! A-label (the project's DNS server serves the zone by that name) and delivers with
//! `MAIL FROM:<..> SMTPUTF8` and the UTF-8 addresses to a sink that offers it; to a sink
//! started without it, an ASCII local part goes with its domain in A-labels and a UTF-8 local
//! part bounces with 5.6.7 (the sender's: every recipient). `mxpipe serve` takes UTF-8
//! addresses on SMTP (with the parameter; 553 5.6.7 without) and on the HTTP API, delivers
//! them, and writes a DSN for the 5.6.7 bounce. Engine tests use 127.61.151.x; the daemon test
//! 127.66.0.x.

mod common;

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use common::engine::*;
use mxpipe::dnsserver::{DnsServer, ZoneBuilder};
use mxpipe::outcome::Status;
use mxpipe::sink::{MailDir, SinkConfig};

/// The `.eml` files a `--mail-dir` sink wrote, as text.
fn mails(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "eml"))
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    v.sort();
    v
}

/// The envelope lines (`X-Mxpipe-...`) at the head of a stored message.
fn envelope(mail: &str) -> Vec<&str> {
    mail.lines().take_while(|l| l.starts_with("X-Mxpipe-")).collect()
}

fn fresh_dir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("mxpipe-smtputf8-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// bücher.test's MX offers SMTPUTF8, müller.test's does not; both zones are served by their
/// A-labels only, so delivery works only if the engine resolves the A-label.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivered_with_smtputf8_where_offered_and_downgraded_or_bounced_5_6_7_where_not() {
    let (utf8_dir, ascii_dir) = (fresh_dir("engine-utf8"), fresh_dir("engine-ascii"));
    let (ud, ad) = (utf8_dir.clone(), ascii_dir.clone());
    bounded(async move {
        let net = 151;
        let ports = free_ports(net);
        let p = pki(&["mx.xn--bcher-kva.test", "mx.xn--mller-kva.test"]);
        let utf8 = sink(ip(net, 1), ports, &p.identity, |c: &mut SinkConfig| MailDir::install(c, &ud)).await;
        let ascii = sink(ip(net, 2), ports, &p.identity, |c: &mut SinkConfig| {
            c.smtputf8 = false;
            MailDir::install(c, &ad)
        })
        .await;
        let mut a = ZoneBuilder::new("xn--bcher-kva.test.");
        a.mx("xn--bcher-kva.test", 10, "mx.xn--bcher-kva.test").a("mx.xn--bcher-kva.test", ip(net, 1));
        let mut b = ZoneBuilder::new("xn--mller-kva.test.");
        b.mx("xn--mller-kva.test", 10, "mx.xn--mller-kva.test").a("mx.xn--mller-kva.test", ip(net, 2));
        let dns = DnsServer::start(vec![a, b], std::net::SocketAddr::from((ip(net, 53), 0))).await.unwrap();

        let mut from_utf8 = msg("m3", &["anna@müller.test", "bob@müller.test"]);
        from_utf8.from = "jörg@mxpipe.test".into();
        let msgs =
            vec![msg("m1", &["jörg@BÜCHER.test", "fred@bücher.test"]), msg("m2", &["jörg@müller.test", "fred@MÜLLER.test"]), from_utf8];
        let (o, _) = deliver(engine_config(&dns, ports, &[&p]), msgs).await;
        for r in ["jörg@BÜCHER.test", "fred@bücher.test", "fred@MÜLLER.test"] {
            let x = one(&o, r);
            assert_eq!(x.status, Status::Delivered, "{x:#?}");
        }
        let x = one(&o, "jörg@BÜCHER.test");
        assert_eq!(x.mx.as_deref(), Some("mx.xn--bcher-kva.test"), "resolved by the A-label: {x:#?}");
        // No ASCII form of the local part: a bounce with 5.6.7 that says why, not a drop.
        let j = one(&o, "jörg@müller.test");
        assert_eq!((j.status, j.enhanced.as_deref()), (Status::Bounced, Some("5.6.7")), "{j:#?}");
        assert!(j.reply.contains("not ASCII") && j.reply.contains("SMTPUTF8"), "{j:#?}");
        for r in ["anna@müller.test", "bob@müller.test"] {
            let x = one(&o, r);
            assert_eq!((x.status, x.enhanced.as_deref()), (Status::Bounced, Some("5.6.7")), "{x:#?}");
            assert!(x.reply.contains("sender's local part is not ASCII"), "{x:#?}");
        }
        let (su, sa) = (sink_stats(utf8).await, sink_stats(ascii).await);
        assert_eq!((su.messages, su.smtputf8_messages), (1, 1), "m1 went with SMTPUTF8");
        assert_eq!((sa.messages, sa.smtputf8_messages), (1, 0), "only fred's copy of m2, without it");
        dns.shutdown().await;
    })
    .await;
    let got = mails(&utf8_dir);
    assert_eq!(got.len(), 1);
    assert_eq!(
        envelope(&got[0]),
        [
            "X-Mxpipe-Mail-From: <sender@mxpipe.test>",
            "X-Mxpipe-Rcpt-To: <jörg@bücher.test>",
            "X-Mxpipe-Rcpt-To: <fred@xn--bcher-kva.test>",
            "X-Mxpipe-Smtputf8: yes"
        ],
        "the UTF-8 address as given (U-labels), the ASCII one with A-labels, and the parameter: {}",
        got[0]
    );
    let got = mails(&ascii_dir);
    assert_eq!(got.len(), 1);
    assert_eq!(
        envelope(&got[0]),
        ["X-Mxpipe-Mail-From: <sender@mxpipe.test>", "X-Mxpipe-Rcpt-To: <fred@xn--mller-kva.test>"],
        "the domain in punycode, no SMTPUTF8: {}",
        got[0]
    );
    for d in [utf8_dir, ascii_dir] {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// The server core's side, on a sink: SMTPUTF8 is advertised by default; without the
/// parameter a UTF-8 address gets 553 5.6.7 at MAIL and at RCPT; a sink told not to offer it
/// does not advertise it and answers the parameter with 555 5.5.4.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_takes_utf8_addresses_only_with_the_parameter_it_advertises() {
    let (sink, _pki) = common::start_sink(|_| {}).await;
    let addr = sink.addr(mxpipe::sink::PortKind::StartTls).unwrap();
    let mut c = common::Client::connect(addr).await;
    assert_eq!(c.reply().await.code, 220);
    c.send("EHLO client.test\r\n").await;
    let ehlo = c.reply().await;
    assert!(mxpipe::reply::Capabilities::from_ehlo(&ehlo).smtputf8, "{ehlo:?}");
    c.send("MAIL FROM:<jörg@bücher.test>\r\n").await;
    let r = c.reply().await;
    assert_eq!((r.code, r.enhanced.map(|e| e.to_string())), (553, Some("5.6.7".into())), "{r:?}");
    assert_eq!(c.cmd("MAIL FROM:<a@x.test>").await, 250);
    c.send("RCPT TO:<用户@例子.广告>\r\n").await;
    let r = c.reply().await;
    assert_eq!((r.code, r.enhanced.map(|e| e.to_string())), (553, Some("5.6.7".into())), "{r:?}");
    assert_eq!(c.cmd("RCPT TO:<fred@例子.广告>").await, 250, "an ASCII local part needs no SMTPUTF8");
    assert_eq!(c.cmd("RSET").await, 250);
    assert_eq!(c.cmd("MAIL FROM:<jörg@bücher.test> SMTPUTF8").await, 250);
    assert_eq!(c.cmd("RCPT TO:<用户@例子.广告>").await, 250);
    assert_eq!(c.cmd("RCPT TO:<jö\u{200b}rg@x.test>").await, 501, "an invisible character is a bad address, with or without it");
    assert_eq!(c.cmd("DATA").await, 354);
    c.send("Subject: grüße\r\n\r\nhallo\r\n.\r\n").await;
    assert_eq!(c.reply().await.code, 250);
    assert_eq!(c.cmd("QUIT").await, 221);
    let stats = sink.shutdown(Duration::from_secs(2)).await.stats;
    assert_eq!((stats.messages, stats.smtputf8_messages), (1, 1));
    assert!(stats.to_table().contains("smtputf8 1"), "{}", stats.to_table());

    let (sink, _pki) = common::start_sink(|c| c.smtputf8 = false).await;
    let mut c = common::Client::connect(sink.addr(mxpipe::sink::PortKind::StartTls).unwrap()).await;
    assert_eq!(c.reply().await.code, 220);
    c.send("EHLO client.test\r\n").await;
    assert!(!mxpipe::reply::Capabilities::from_ehlo(&c.reply().await).smtputf8);
    c.send("MAIL FROM:<a@x.test> SMTPUTF8\r\n").await;
    let r = c.reply().await;
    assert_eq!((r.code, r.enhanced.map(|e| e.to_string())), (555, Some("5.5.4".into())), "{r:?}");
    assert_eq!(c.cmd("MAIL FROM:<jörg@x.test>").await, 553);
    assert_eq!(c.cmd("QUIT").await, 221);
    sink.shutdown(Duration::from_secs(2)).await;
}

/// `mxpipe serve`: SMTP injection with SMTPUTF8 (553 5.6.7 without it) and the HTTP API take
/// UTF-8 addresses, which are delivered to a next hop that offers SMTPUTF8; one whose next hop
/// does not is bounced with 5.6.7 and its sender gets a DSN saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_takes_utf8_addresses_on_smtp_and_http_and_delivers_them() {
    use common::daemon::*;
    let dir = tmpdir("smtputf8");
    let (utf8_mail, ascii_mail, src_mail) = (dir.join("utf8"), dir.join("ascii"), dir.join("src"));
    for d in [&utf8_mail, &ascii_mail, &src_mail] {
        std::fs::create_dir_all(d).unwrap();
    }
    let ips = [Ipv4Addr::new(127, 66, 0, 1), Ipv4Addr::new(127, 66, 0, 2), Ipv4Addr::new(127, 66, 0, 3)];
    let port = free_port("127.66.0.1");
    let utf8 = sink_on(ips[0], port, &utf8_mail, |_| {}).await;
    let ascii = sink_on(ips[1], port, &ascii_mail, |c| c.smtputf8 = false).await;
    let src = sink_on(ips[2], port, &src_mail, |_| {}).await;
    let mut a = ZoneBuilder::new("xn--bcher-kva.test.");
    a.mx("xn--bcher-kva.test", 10, "mx.xn--bcher-kva.test").a("mx.xn--bcher-kva.test", ips[0]);
    let mut b = ZoneBuilder::new("xn--mller-kva.test.");
    b.mx("xn--mller-kva.test", 10, "mx.xn--mller-kva.test").a("mx.xn--mller-kva.test", ips[1]);
    let mut s = ZoneBuilder::new("src.test.");
    s.mx("src.test", 10, "mx.src.test").a("mx.src.test", ips[2]);
    let dns = DnsServer::start(vec![a, b, s], "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let setup = Setup::new(&dir, dns.addr(), port);
    let d = start_daemon(&setup.write(&dir), setup.inject);

    let mut c = common::Client::connect(setup.inject).await;
    assert_eq!(c.reply().await.code, 220);
    c.send("EHLO app.test\r\n").await;
    assert!(mxpipe::reply::Capabilities::from_ehlo(&c.reply().await).smtputf8, "[inject.smtp] smtputf8 is on by default");
    assert_eq!(c.cmd("MAIL FROM:<app@src.test>").await, 250);
    assert_eq!(c.cmd("RCPT TO:<jörg@bücher.test>").await, 553, "RFC 6531 §3.4: not without SMTPUTF8");
    assert_eq!(c.cmd("RSET").await, 250);
    assert_eq!(c.cmd("MAIL FROM:<app@src.test> SMTPUTF8").await, 250);
    assert_eq!(c.cmd("RCPT TO:<jörg@BÜCHER.test>").await, 250);
    assert_eq!(c.cmd("RCPT TO:<jörg@müller.test>").await, 250);
    assert_eq!(c.cmd("DATA").await, 354);
    c.send("Subject: via smtp\r\n\r\nhallo\r\n.\r\n").await;
    assert_eq!(c.reply().await.code, 250);
    assert_eq!(c.cmd("QUIT").await, 221);
    let body = serde_json::json!({"from": "app@src.test", "to": ["анна@bücher.test"], "data": "Subject: via http\r\n\r\nx\r\n"});
    let (code, resp) = http_async(setup.http, "POST", "/v1/messages".into(), body.to_string()).await;
    assert_eq!(code, 202, "{resp}");

    wait_for("both messages at bücher.test", Duration::from_secs(30), || mails(&utf8_mail).len() >= 2).await;
    wait_for("the DSN for müller.test", Duration::from_secs(30), || !mails(&src_mail).is_empty()).await;
    let got = mails(&utf8_mail);
    let smtp = got.iter().find(|m| m.contains("Subject: via smtp")).expect("the SMTP message");
    assert_eq!(
        envelope(smtp),
        ["X-Mxpipe-Mail-From: <app@src.test>", "X-Mxpipe-Rcpt-To: <jörg@bücher.test>", "X-Mxpipe-Smtputf8: yes"],
        "{smtp}"
    );
    let api = got.iter().find(|m| m.contains("Subject: via http")).expect("the HTTP message");
    assert_eq!(
        envelope(api),
        ["X-Mxpipe-Mail-From: <app@src.test>", "X-Mxpipe-Rcpt-To: <анна@bücher.test>", "X-Mxpipe-Smtputf8: yes"],
        "{api}"
    );
    let dsn = &mails(&src_mail)[0];
    assert!(dsn.starts_with("X-Mxpipe-Mail-From: <>\r\nX-Mxpipe-Rcpt-To: <app@src.test>"), "{dsn}");
    assert!(dsn.contains("Status: 5.6.7"), "{dsn}");
    assert!(mails(&ascii_mail).is_empty(), "nothing reached the server without SMTPUTF8");
    assert!(terminate(d));
    for s in [utf8, ascii, src] {
        s.shutdown(Duration::from_secs(2)).await;
    }
    dns.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// `[inject.smtp] smtputf8` is read from the configuration (default on).
#[test]
fn the_inject_smtp_flag_is_read_from_the_config() {
    let on = mxpipe::config::Config::from_toml_str("").unwrap();
    assert!(on.inject.smtp.smtputf8);
    let off = mxpipe::config::Config::from_toml_str("[inject.smtp]\nsmtputf8 = false\n").unwrap();
    assert!(!off.inject.smtp.smtputf8);
    assert!(!mxpipe::inject::smtp::server_config(&off).unwrap().smtputf8);
}

/// `mxpipe sink` advertises SMTPUTF8 unless given `--no-smtputf8`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sink_binary_offers_smtputf8_unless_told_not_to() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    for (extra, offered) in [(&[][..], true), (&["--no-smtputf8"][..], false)] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_mxpipe"))
            .args(["sink", "--starttls-port", "0", "--implicit-port", "off", "--duration", "60"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let line = lines.next().expect("the sink prints its listener").unwrap();
        let addr: std::net::SocketAddr = line.strip_prefix("mxpipe sink: starttls on ").expect(&line).parse().unwrap();
        std::thread::spawn(move || for _ in lines {});
        let mut c = common::Client::connect(addr).await;
        assert_eq!(c.reply().await.code, 220);
        c.send("EHLO client.test\r\n").await;
        assert_eq!(mxpipe::reply::Capabilities::from_ehlo(&c.reply().await).smtputf8, offered, "{extra:?}");
        let want = if offered { 250 } else { 555 };
        assert_eq!(c.cmd("MAIL FROM:<jörg@x.test> SMTPUTF8").await, want, "{extra:?}");
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
