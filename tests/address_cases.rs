//! One table of accepted and refused addresses (`mxpipe::address::cases`), and every entry
//! point that takes an address or a destination domain checked against it: each must give
//! the same verdict (and the same normal form) as `Mailbox::parse` / `Domain::parse`.
//! The daemon's two doors (SMTP `MAIL`/`RCPT` and the HTTP API) are checked against a real
//! `mxpipe serve`: the same verdict, and what they spool is the normal form.

mod common;

use std::sync::Arc;

use mxpipe::address::{cases, Mailbox, ReversePath};
use mxpipe::session::{ClientSession, Event, Message, RcptStatus, SessionConfig, TlsMode};

#[test]
fn library_parsers_agree_with_the_table() {
    for c in cases::all() {
        let got = Mailbox::parse(&c.input).map(|m| m.to_string()).ok();
        assert_eq!(got, c.accepted, "Mailbox::parse({:?})", c.input);
        let sender = ReversePath::parse(&c.input).map(|m| m.to_string()).ok();
        let want = if c.input.is_empty() { Some(String::new()) } else { c.accepted.clone() };
        assert_eq!(sender, want, "ReversePath::parse({:?})", c.input);
    }
    for (d, want) in cases::domains() {
        assert_eq!(mxpipe::address::Domain::parse(&d).map(|d| d.to_string()).ok(), want, "Domain::parse({d:?})");
    }
}

/// The engine routes (and the queue manager and board key recipients) by `domain_of`.
#[test]
fn engine_routing_agrees_with_the_table() {
    for c in cases::all() {
        // Routed by the A-label, also where the normal form shows U-labels (a UTF-8 local part).
        let want = c.accepted.as_ref().map(|a| mxpipe::address::Domain::parse(a.rsplit_once('@').unwrap().1).unwrap().into_string());
        assert_eq!(mxpipe::engine::domain_of(&c.input), want, "domain_of({:?})", c.input);
    }
}

/// `mxpipe send --input`: a line is refused whole when its sender or a recipient is.
#[test]
fn send_jsonl_agrees_with_the_table() {
    let line = |from: &str, to: &str| serde_json::json!({ "id": "m", "from": from, "to": [to], "data": "x" }).to_string();
    for c in cases::all() {
        let as_rcpt = mxpipe::engine::input::parse_line(&line("s@x.test", &c.input));
        assert_eq!(as_rcpt.is_ok(), c.accepted.is_some(), "to {:?}: {as_rcpt:?}", c.input);
        let as_sender = mxpipe::engine::input::parse_line(&line(&c.input, "r@x.test"));
        assert_eq!(as_sender.is_ok(), c.accepted.is_some() || c.input.is_empty(), "from {:?}: {as_sender:?}", c.input);
    }
}

/// A session with a server that said EHLO with PIPELINING and SMTPUTF8, ready for a message.
fn ready_session() -> ClientSession {
    let mut s = ClientSession::new(SessionConfig { tls: TlsMode::None, ..SessionConfig::new("client.test") });
    s.receive(b"220 mx.test ESMTP\r\n");
    assert!(matches!(s.poll_event(), Some(Event::Send(_))));
    s.receive(b"250-mx.test\r\n250-PIPELINING\r\n250 SMTPUTF8\r\n");
    assert_eq!(s.poll_event(), Some(Event::Ready));
    s
}

fn events(s: &mut ClientSession) -> Vec<Event> {
    std::iter::from_fn(|| s.poll_event()).collect()
}

/// The client session's command builder: an accepted address goes on the wire in its normal
/// form (a UTF-8 one with `SMTPUTF8` on MAIL); a refused one is bounced for that recipient
/// (or, as the sender, for every recipient) without being sent.
#[test]
fn client_session_agrees_with_the_table() {
    let data: Arc<[u8]> = Arc::from(&b"x\n"[..]);
    for c in cases::all() {
        let mut s = ready_session();
        let msg = Message {
            id: 1,
            from: "s@x.test".into(),
            rcpts: vec![c.input.clone(), "ok@x.test".into()],
            data: data.clone(),
            requiretls: false,
        };
        s.send_message(msg).unwrap();
        let ev = events(&mut s);
        let Some(Event::Send(wire)) = ev.first() else { panic!("{:?}: {ev:?}", c.input) };
        let wire = String::from_utf8_lossy(wire).into_owned();
        match &c.accepted {
            Some(a) => assert!(
                wire.starts_with(&format!(
                    "MAIL FROM:<s@x.test>{}\r\nRCPT TO:<{a}>\r\nRCPT TO:<ok@x.test>\r\n",
                    if a.is_ascii() { "" } else { " SMTPUTF8" }
                )),
                "{:?}: {wire}",
                c.input
            ),
            None => {
                assert!(wire.starts_with("MAIL FROM:<s@x.test>\r\nRCPT TO:<ok@x.test>\r\nDATA\r\n"), "{:?}: {wire}", c.input);
                s.receive(b"250 ok\r\n250 ok\r\n354 go\r\n250 ok\r\n");
                let ev = events(&mut s);
                let Some(o) = ev.iter().find_map(|e| if let Event::Done(o) = e { Some(o) } else { None }) else {
                    panic!("{:?}: {ev:?}", c.input)
                };
                assert_eq!((o.rcpts[0].status, o.rcpts[0].enhanced.as_deref()), (RcptStatus::Bounced, Some("5.1.3")), "{:?}", c.input);
                assert_eq!(o.rcpts[1].status, RcptStatus::Delivered);
            }
        }
        // As the sender.
        let mut s = ready_session();
        s.send_message(Message { id: 2, from: c.input.clone(), rcpts: vec!["ok@x.test".into()], data: data.clone(), requiretls: false })
            .unwrap();
        let ev = events(&mut s);
        match (&c.accepted, ev.first()) {
            (Some(a), Some(Event::Send(wire))) => {
                let param = if a.is_ascii() { "" } else { " SMTPUTF8" };
                assert!(
                    wire.starts_with(format!("MAIL FROM:<{a}>{param}\r\n").as_bytes()),
                    "{:?}: {}",
                    c.input,
                    String::from_utf8_lossy(wire)
                )
            }
            (None, Some(Event::Send(wire))) if c.input.is_empty() => assert!(wire.starts_with(b"MAIL FROM:<>\r\n")),
            (None, Some(Event::Done(o))) => {
                assert_eq!((o.rcpts[0].status, o.rcpts[0].enhanced.as_deref()), (RcptStatus::Bounced, Some("5.1.7")), "{:?}", c.input)
            }
            other => panic!("sender {:?}: {other:?}", c.input),
        }
    }
}

/// A TOML basic string with every control character, quote and backslash escaped.
fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            c if c.is_control() || c == '"' || c == '\\' => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `[[domain]] name` in the daemon's configuration.
#[test]
fn config_domain_names_agree_with_the_table() {
    for (d, want) in cases::domains() {
        let toml = format!("[[domain]]\nname = {}\nmax_conns = 2\n", toml_string(&d));
        let got = mxpipe::config::Config::from_toml_str(&toml);
        let got = got.as_ref().map(|c| c.domains[0].name.clone().unwrap());
        assert_eq!(got.as_ref().ok(), want.as_ref(), "[[domain]] name = {d:?}: {got:?}");
    }
}

/// `mxpipe queue suspend|resume|bounce DOMAIN` (and the API's `/v1/queues/{domain}/...`).
#[test]
fn queue_command_domain_agrees_with_the_table() {
    for (d, want) in cases::domains() {
        let got = mxpipe::queue::ctl::path_segment(&d).map(|d| d.to_string());
        assert_eq!(got.as_ref().ok(), want.as_ref(), "path_segment({d:?}): {got:?}");
    }
}

/// `--tls-floor DOMAIN=LEVEL`.
#[test]
fn tls_floor_agrees_with_the_table() {
    for (d, want) in cases::domains() {
        let got = mxpipe::engine::parse_floor(&format!("{d}=encrypt")).map(|(d, _)| d);
        assert_eq!(got.as_ref().ok(), want.as_ref(), "--tls-floor {d:?}=encrypt: {got:?}");
    }
}

/// The daemon's SMTP listener and HTTP API give each row the table's verdict (250 or 501 at
/// RCPT and at MAIL, in a transaction opened with SMTPUTF8 so UTF-8 rows are taken; 202 or
/// 400 from the API), so nothing the API accepts bounces later for an address the SMTP door
/// would have refused, or the other way round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_smtp_and_http_doors_agree_with_the_table() {
    use common::daemon::*;
    let dir = tmpdir("address-doors");
    let dns = mxpipe::dnsserver::DnsServer::start(vec![mxpipe::dnsserver::ZoneBuilder::new("t.test.")], "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let setup = Setup::new(&dir, dns.addr(), 25);
    let config = setup.write(&dir);
    let d = start_daemon(&config, setup.inject);
    let mut checked = 0;
    for case in cases::all() {
        let ok = case.accepted.is_some();
        // HTTP: as a recipient and as a sender.
        for (from, to) in [("app@src.test", case.input.as_str()), (case.input.as_str(), "rcpt@t.test")] {
            let body = serde_json::json!({"from": from, "to": [to], "data": "Subject: x\r\n\r\nx\r\n"}).to_string();
            let (code, resp) = http_async(setup.http, "POST", "/v1/messages".into(), body).await;
            // The null sender is a valid sender but not a valid recipient.
            let want = ok || (from.is_empty() && to == "rcpt@t.test");
            assert_eq!(code == 202, want, "HTTP from {from:?} to {to:?}: {code} {resp}");
        }
        // SMTP: a line break inside an address cannot be sent as one command line.
        if case.input.contains(['\r', '\n']) {
            continue;
        }
        let mut c = common::Client::connect(setup.inject).await;
        assert_eq!(c.reply().await.code, 220);
        assert_eq!(c.cmd("EHLO app.test").await, 250);
        let mail = c.cmd(&format!("MAIL FROM:<{}> SMTPUTF8", case.input)).await;
        assert_eq!(mail == 250, ok || case.input.is_empty(), "MAIL FROM:<{:?}> got {mail}", case.input);
        if mail != 250 {
            assert_eq!(c.cmd("MAIL FROM:<app@src.test> SMTPUTF8").await, 250);
        }
        let rcpt = c.cmd(&format!("RCPT TO:<{}>", case.input)).await;
        assert_eq!(rcpt == 250, ok, "RCPT TO:<{:?}> got {rcpt}", case.input);
        if !ok {
            assert_eq!(rcpt, 501, "RCPT TO:<{:?}>", case.input);
        }
        checked += 1;
    }
    assert!(checked > 40, "only {checked} rows reached the SMTP door");
    // What was spooled is the normal form: an IDN domain as its A-label.
    let (code, _) = http_async(
        setup.http,
        "POST",
        "/v1/messages".into(),
        serde_json::json!({"from": "app@src.test", "to": ["user@BÜCHER.example"], "data": "x"}).to_string(),
    )
    .await;
    assert_eq!(code, 202);
    wait_for("the IDN queue", std::time::Duration::from_secs(10), || {
        http(setup.http, "GET", "/v1/queues", "").1.contains("xn--bcher-kva.example")
    })
    .await;
    assert!(terminate(d));
    dns.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
