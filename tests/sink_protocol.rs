//! The sink's SMTP dialogue over real loopback sockets: pipelining, STARTTLS, BDAT, faults,
//! storage, and hostile input (overlong lines, garbage, silence, STARTTLS injection).

mod common;

use std::time::Duration;

use common::{client_tls, start_sink, Client};
use mxpipe::sink::PortKind;

/// A client on the STARTTLS port that has been told 354 for a message to one recipient.
async fn in_data(addr: std::net::SocketAddr) -> Client<tokio::net::TcpStream> {
    let mut c = Client::connect(addr).await;
    assert_eq!(c.reply().await.code, 220);
    assert_eq!(c.cmd("EHLO c.test").await, 250);
    assert_eq!(c.cmd("MAIL FROM:<a@x.test>").await, 250);
    assert_eq!(c.cmd("RCPT TO:<b@y.test>").await, 250);
    assert_eq!(c.cmd("DATA").await, 354);
    c
}

#[tokio::test]
async fn pipelined_group_is_answered_in_order() {
    let (sink, _pki) = start_sink(|_| {}).await;
    let mut c = Client::connect(sink.addr(PortKind::StartTls).unwrap()).await;
    assert_eq!(c.reply().await.code, 220);
    // One write: EHLO, a whole transaction, a second MAIL with a bad RCPT, RSET, NOOP.
    c.send("EHLO client.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nRCPT TO:<c@y.test>\r\nDATA\r\n").await;
    let ehlo = c.reply().await;
    assert_eq!(ehlo.code, 250);
    let caps = mxpipe::reply::Capabilities::from_ehlo(&ehlo);
    assert!(caps.pipelining && caps.starttls && caps.chunking && caps.eightbitmime && caps.enhanced_status_codes);
    assert_eq!(caps.size, Some(50 * 1024 * 1024));
    let codes: Vec<u16> = [c.reply().await, c.reply().await, c.reply().await, c.reply().await].iter().map(|r| r.code).collect();
    assert_eq!(codes, [250, 250, 250, 354]);
    c.send("Subject: t\r\n\r\n..leading dot\r\n.\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:bad\r\nRSET\r\nNOOP\r\n").await;
    let r = c.reply().await;
    assert_eq!(r.code, 250);
    assert_eq!(r.enhanced.unwrap().to_string(), "2.0.0");
    let codes: Vec<u16> = [c.reply().await, c.reply().await, c.reply().await, c.reply().await].iter().map(|r| r.code).collect();
    assert_eq!(codes, [250, 501, 250, 250]);
    assert_eq!(c.cmd("QUIT").await, 221);
    assert!(c.expect_close().await.is_empty(), "the sink closes after 221");
    let s = sink.shutdown(Duration::from_secs(2)).await.stats;
    assert_eq!((s.messages, s.recipients), (1, 2));
    // "Subject: t\r\n" + "\r\n" + ".leading dot\r\n" (one dot removed)
    assert_eq!(s.bytes, 12 + 2 + 14);
}

#[tokio::test]
async fn starttls_then_bdat_over_tls() {
    let (sink, pki) = start_sink(|_| {}).await;
    let mut c = Client::connect(sink.addr(PortKind::StartTls).unwrap()).await;
    c.reply().await;
    assert_eq!(c.cmd("EHLO c.test").await, 250);
    assert_eq!(c.cmd("STARTTLS").await, 220);
    let mut c = c.tls(client_tls(&pki)).await;
    c.send("EHLO c.test\r\n").await;
    let caps = mxpipe::reply::Capabilities::from_ehlo(&c.reply().await);
    assert!(!caps.starttls, "STARTTLS is not offered again inside TLS");
    assert!(caps.chunking);
    assert_eq!(c.cmd("STARTTLS").await, 503);
    assert_eq!(c.cmd("MAIL FROM:<a@x.test>").await, 250);
    assert_eq!(c.cmd("RCPT TO:<b@y.test>").await, 250);
    // Two chunks, the second pipelined with its command and followed by QUIT.
    c.send("BDAT 7\r\nab\r\n.\r\n").await;
    assert_eq!(c.reply().await.code, 250);
    c.send("BDAT 3 LAST\r\nxyzQUIT\r\n").await;
    let r = c.reply().await;
    assert_eq!(r.code, 250);
    assert!(r.one_line().contains("queued as"), "{r}");
    assert_eq!(c.reply().await.code, 221);
    let s = sink.shutdown(Duration::from_secs(2)).await.stats;
    assert_eq!(s.starttls.handshakes_full, 1);
    assert_eq!((s.messages, s.bytes), (1, 10), "BDAT data is taken verbatim: no dot-unstuffing");
}

#[tokio::test]
async fn implicit_tls_port_speaks_tls_first() {
    let (sink, pki) = start_sink(|_| {}).await;
    let c = Client::connect(sink.addr(PortKind::Implicit).unwrap()).await;
    let mut c = c.tls(client_tls(&pki)).await;
    assert_eq!(c.reply().await.code, 220);
    c.send("EHLO c.test\r\n").await;
    assert!(!mxpipe::reply::Capabilities::from_ehlo(&c.reply().await).starttls);
    assert_eq!(c.cmd("STARTTLS").await, 503);
    assert_eq!(c.cmd("QUIT").await, 221);
    let s = sink.shutdown(Duration::from_secs(2)).await.stats;
    assert_eq!((s.implicit.handshakes_full, s.starttls.handshakes()), (1, 0));
}

#[tokio::test]
async fn commands_pipelined_after_starttls_are_discarded() {
    // CVE-2011-0411: plaintext injected after STARTTLS must not be executed inside TLS.
    let (sink, pki) = start_sink(|_| {}).await;
    let mut c = Client::connect(sink.addr(PortKind::StartTls).unwrap()).await;
    c.reply().await;
    assert_eq!(c.cmd("EHLO c.test").await, 250);
    c.send("STARTTLS\r\nMAIL FROM:<evil@x.test>\r\n").await;
    assert_eq!(c.reply().await.code, 220);
    let mut c = c.tls(client_tls(&pki)).await;
    assert!(c.silent_for(Duration::from_millis(300)).await, "the injected MAIL was answered");
    // Still no EHLO inside TLS: MAIL must be refused as out of sequence.
    assert_eq!(c.cmd("MAIL FROM:<a@x.test>").await, 503);
    sink.shutdown(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn sequence_and_syntax_errors() {
    let (sink, _) = start_sink(|_| {}).await;
    let mut c = Client::connect(sink.addr(PortKind::StartTls).unwrap()).await;
    c.reply().await;
    assert_eq!(c.cmd("MAIL FROM:<a@x.test>").await, 503, "MAIL before EHLO");
    assert_eq!(c.cmd("EHLO").await, 501, "EHLO without a name");
    assert_eq!(c.cmd("HELO c.test").await, 250);
    assert_eq!(c.cmd("RCPT TO:<b@y.test>").await, 503, "RCPT before MAIL");
    assert_eq!(c.cmd("DATA").await, 503, "DATA before MAIL");
    assert_eq!(c.cmd("MAIL FROM:a@x.test").await, 501, "path without brackets");
    assert_eq!(c.cmd("MAIL FROM:<a@x.test> SIZE=99999999999").await, 552);
    assert_eq!(c.cmd("MAIL FROM:<>").await, 250, "null sender");
    assert_eq!(c.cmd("MAIL FROM:<a@x.test>").await, 503, "nested MAIL");
    assert_eq!(c.cmd("DATA").await, 554, "DATA without recipients");
    assert_eq!(c.cmd("RCPT TO:<>").await, 501, "empty recipient");
    assert_eq!(c.cmd("RCPT TO:<nodomain>").await, 501, "recipient without a domain");
    assert_eq!(c.cmd("XYZZY").await, 500);
    assert_eq!(c.cmd("NOOP").await, 250);
    sink.shutdown(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn oversized_message_gets_552_and_session_continues() {
    let (sink, _) = start_sink(|c| c.max_message_size = 1000).await;
    let mut c = in_data(sink.addr(PortKind::StartTls).unwrap()).await;
    let line = format!("{}\r\n", "x".repeat(98));
    c.send(line.repeat(50) + ".\r\n").await;
    assert_eq!(c.reply().await.code, 552);
    assert_eq!(c.cmd("NOOP").await, 250);
    assert_eq!(sink.shutdown(Duration::from_millis(100)).await.stats.messages, 0);
}

#[tokio::test]
async fn nul_in_the_data_gets_554_and_session_continues() {
    let (sink, _) = start_sink(|_| {}).await;
    let mut c = in_data(sink.addr(PortKind::StartTls).unwrap()).await;
    c.send("Subject: s\r\n\r\na\0b\r\n.\r\n").await;
    let r = c.reply().await;
    assert_eq!((r.code, r.enhanced.unwrap().to_string()), (554, "5.6.0".to_string()));
    assert_eq!(c.cmd("NOOP").await, 250);
    assert_eq!(sink.shutdown(Duration::from_millis(100)).await.stats.messages, 0);
}

/// Only CRLF.CRLF ends the data; a dot line beside a bare LF (an LF-only client, or SMTP
/// smuggling) is refused and the connection closed. A CRLF split across the sink's partial
/// flush of a long line is still a CRLF.
#[tokio::test]
async fn bare_lf_dot_is_refused_and_closes_but_a_split_crlf_is_not_bare() {
    let (sink, _) = start_sink(|_| {}).await;
    let addr = sink.addr(PortKind::StartTls).unwrap();
    for end in ["\n.\n", "\n.\r\n", "\r\n.\n"] {
        let mut c = in_data(addr).await;
        c.send(format!("Subject: s\r\n\r\nhello{end}MAIL FROM:<x@y.test>\r\n")).await;
        let r = c.reply().await;
        assert_eq!((r.code, r.enhanced.unwrap().to_string()), (554, "5.5.2".to_string()), "{end:?}");
        assert!(c.expect_close().await.is_empty(), "{end:?}: nothing after the refusal is answered");
    }
    // Bare LF inside the body is fine.
    let mut c = in_data(addr).await;
    c.send("Subject: s\n\nline\nline\r\n.\r\n").await;
    assert_eq!(c.reply().await.code, 250);
    // A 9000-byte line whose CR arrives before its LF.
    let mut c = in_data(addr).await;
    c.send(format!("{}\r", "x".repeat(9000))).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    c.send("\n.\r\n").await;
    assert_eq!(c.reply().await.code, 250);
    assert_eq!(sink.shutdown(Duration::from_millis(100)).await.stats.messages, 2);
}

#[tokio::test]
async fn overlong_lines_and_garbage_are_refused_then_cut_off() {
    let (sink, _) = start_sink(|_| {}).await;
    let mut c = Client::connect(sink.addr(PortKind::StartTls).unwrap()).await;
    c.reply().await;
    // 1 MB without a line end, then its end: one 500, and the session goes on.
    c.send(vec![b'A'; 1 << 20]).await;
    c.send("\r\n").await;
    let r = c.reply().await;
    assert_eq!((r.code, r.enhanced.unwrap().to_string()), (500, "5.5.2".to_string()));
    assert_eq!(c.cmd("NOOP").await, 250);
    // Binary garbage: each line refused, then the sink gives up with 421.
    let garbage: Vec<u8> = (0..64u32).flat_map(|i| [(i * 37 % 256) as u8, 0, 0xff, b'\n']).collect();
    c.send(&garbage).await;
    let mut last = 0;
    while let Some(r) = c.try_reply().await {
        last = r.code;
    }
    assert_eq!(last, 421, "too many errors ends the session");
    let s = sink.shutdown(Duration::from_millis(100)).await.stats;
    assert!(s.bad_commands >= 10);
}

#[tokio::test]
async fn silent_client_times_out_with_421() {
    let (sink, _) = start_sink(|c| {
        c.idle_timeout = Duration::from_millis(300);
        c.handshake_timeout = Duration::from_millis(300);
    })
    .await;
    let mut c = Client::connect(sink.addr(PortKind::StartTls).unwrap()).await;
    assert_eq!(c.reply().await.code, 220);
    let r = c.reply().await;
    assert_eq!((r.code, r.enhanced.unwrap().to_string()), (421, "4.4.2".to_string()));
    assert!(c.expect_close().await.is_empty());
    // A client that connects to the implicit port and never starts TLS is cut off too.
    let mut t = Client::connect(sink.addr(PortKind::Implicit).unwrap()).await;
    assert!(t.expect_close().await.is_empty());
    let s = sink.shutdown(Duration::from_millis(100)).await.stats;
    assert_eq!((s.timeouts, s.implicit.handshake_failures), (1, 1));
}

#[tokio::test]
async fn require_tls_refuses_mail_in_clear() {
    let (sink, _) = start_sink(|c| c.require_tls = true).await;
    let mut c = Client::connect(sink.addr(PortKind::StartTls).unwrap()).await;
    c.reply().await;
    assert_eq!(c.cmd("EHLO c.test").await, 250);
    assert_eq!(c.cmd("MAIL FROM:<a@x.test>").await, 530);
    assert_eq!(c.cmd("NOOP").await, 250);
    sink.shutdown(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn no_starttls_is_not_offered_nor_accepted() {
    let (sink, _) = start_sink(|c| c.starttls = false).await;
    let mut c = Client::connect(sink.addr(PortKind::StartTls).unwrap()).await;
    c.reply().await;
    c.send("EHLO c.test\r\n").await;
    assert!(!mxpipe::reply::Capabilities::from_ehlo(&c.reply().await).starttls);
    assert_eq!(c.cmd("STARTTLS").await, 502);
    sink.shutdown(Duration::from_millis(100)).await;
}

async fn one_transaction(addr: std::net::SocketAddr) -> (Vec<u16>, Option<u16>) {
    let mut c = Client::connect(addr).await;
    c.reply().await;
    c.cmd("EHLO c.test").await;
    let rcpts = vec![c.cmd("MAIL FROM:<a@x.test>").await, c.cmd("RCPT TO:<b@y.test>").await];
    c.send("DATA\r\n").await;
    let data = c.try_reply().await.map(|r| r.code);
    if data == Some(354) {
        c.send("Subject: x\r\n\r\nbody\r\n.\r\n").await;
        return (rcpts, c.try_reply().await.map(|r| r.code));
    }
    (rcpts, data)
}

#[tokio::test]
async fn injected_faults_give_matching_replies() {
    let (sink, _) = start_sink(|c| c.faults.temp_fail_rate = 1.0).await;
    let (codes, data) = one_transaction(sink.addr(PortKind::StartTls).unwrap()).await;
    assert_eq!((codes, data), (vec![250, 451], Some(554)));
    assert_eq!(sink.shutdown(Duration::from_millis(100)).await.stats.faults.temp_fail, 1);

    let (sink, _) = start_sink(|c| c.faults.perm_fail_rate = 1.0).await;
    let (codes, _) = one_transaction(sink.addr(PortKind::StartTls).unwrap()).await;
    assert_eq!(codes, vec![250, 550]);
    assert_eq!(sink.shutdown(Duration::from_millis(100)).await.stats.faults.perm_fail, 1);

    let (sink, _) = start_sink(|c| c.faults.drop_rate = 1.0).await;
    let (codes, end) = one_transaction(sink.addr(PortKind::StartTls).unwrap()).await;
    assert_eq!((codes, end), (vec![250, 250], None), "connection dropped at end of data, no reply");
    let s = sink.shutdown(Duration::from_millis(100)).await.stats;
    assert_eq!((s.faults.dropped, s.messages), (1, 0));

    let (sink, _) = start_sink(|c| c.faults.delay = Duration::from_millis(50)).await;
    let t0 = std::time::Instant::now();
    let (_, end) = one_transaction(sink.addr(PortKind::StartTls).unwrap()).await;
    assert_eq!(end, Some(250));
    // banner, EHLO, MAIL, RCPT, DATA, end of data: six delayed replies.
    assert!(t0.elapsed() >= Duration::from_millis(300), "delay not applied: {:?}", t0.elapsed());
    sink.shutdown(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn mail_dir_stores_envelope_and_unstuffed_body() {
    let dir = std::env::temp_dir().join(format!("mxpipe-maildir-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let d = dir.clone();
    let (sink, _) = start_sink(move |c| mxpipe::sink::MailDir::install(c, d)).await;
    let mut c = Client::connect(sink.addr(PortKind::StartTls).unwrap()).await;
    c.reply().await;
    c.cmd("EHLO c.test").await;
    c.cmd("MAIL FROM:<a@x.test>").await;
    c.cmd("RCPT TO:<b@y.test>").await;
    c.cmd("DATA").await;
    c.send("Subject: s\r\n\r\n..x\r\n.\r\n").await;
    assert_eq!(c.reply().await.code, 250);
    sink.shutdown(Duration::from_millis(100)).await;
    let files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let text = std::fs::read_to_string(&files[0]).unwrap();
    // The envelope, the sink's trace field (client address and EHLO name), then the message.
    let (head, rest) = text.split_once("Received: from c.test ([127.0.0.1]) by mxpipe-sink with ESMTP id ").expect(&text);
    assert_eq!(head, "X-Mxpipe-Mail-From: <a@x.test>\r\nX-Mxpipe-Rcpt-To: <b@y.test>\r\n");
    assert!(rest.ends_with(" +0000\r\nSubject: s\r\n\r\n.x\r\n"), "{text}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn unwritable_mail_dir_gives_451_not_loss() {
    let (sink, _) = start_sink(|c| mxpipe::sink::MailDir::install(c, "/proc/mxpipe-cannot-write-here")).await;
    let (_, end) = one_transaction(sink.addr(PortKind::StartTls).unwrap()).await;
    assert_eq!(end, Some(451));
    let s = sink.shutdown(Duration::from_millis(100)).await.stats;
    assert_eq!((s.store_errors, s.messages), (1, 0));
}

#[tokio::test]
async fn shutdown_tells_idle_sessions_421() {
    let (sink, _) = start_sink(|_| {}).await;
    let mut c = Client::connect(sink.addr(PortKind::StartTls).unwrap()).await;
    c.reply().await;
    assert_eq!(c.cmd("EHLO c.test").await, 250);
    let report = tokio::spawn(sink.shutdown(Duration::from_secs(5)));
    let r = c.reply().await;
    assert_eq!((r.code, r.enhanced.unwrap().to_string()), (421, "4.3.2".to_string()));
    let report = report.await.unwrap();
    assert_eq!((report.open_at_stop, report.stats.sessions_active, report.stats.sessions_aborted), (1, 0, 0));
}

#[tokio::test]
async fn shutdown_lets_a_message_in_flight_finish_within_grace() {
    let (sink, _) = start_sink(|_| {}).await;
    let mut c = in_data(sink.addr(PortKind::StartTls).unwrap()).await;
    c.send("Subject: half\r\n").await;
    let report = tokio::spawn(sink.shutdown(Duration::from_secs(5)));
    tokio::time::sleep(Duration::from_millis(200)).await;
    c.send("\r\nrest\r\n.\r\n").await;
    assert_eq!(c.reply().await.code, 250, "the message in flight is accepted");
    assert_eq!(c.reply().await.code, 421, "then the session is closed");
    assert_eq!(report.await.unwrap().stats.messages, 1);
}

#[tokio::test]
async fn grace_expiry_aborts_a_stalled_session() {
    let (sink, _) = start_sink(|_| {}).await;
    let _stalled = in_data(sink.addr(PortKind::StartTls).unwrap()).await;
    let report = sink.shutdown(Duration::from_millis(300)).await;
    assert_eq!((report.stats.sessions_aborted, report.stats.messages), (1, 0));
}

#[tokio::test]
async fn connection_limit_refuses_with_421() {
    let (sink, _) = start_sink(|c| c.max_conns = 2).await;
    let addr = sink.addr(PortKind::StartTls).unwrap();
    let mut a = Client::connect(addr).await;
    let mut b = Client::connect(addr).await;
    assert_eq!((a.reply().await.code, b.reply().await.code), (220, 220));
    let mut c = Client::connect(addr).await;
    assert_eq!(c.reply().await.code, 421);
    drop((a, b));
    let s = sink.shutdown(Duration::from_millis(200)).await.stats;
    assert_eq!((s.rejected_busy, s.starttls.connections), (1, 3));
}

#[tokio::test]
async fn bad_bdat_size_closes_the_session() {
    let (sink, _) = start_sink(|_| {}).await;
    let mut c = Client::connect(sink.addr(PortKind::StartTls).unwrap()).await;
    c.reply().await;
    c.cmd("EHLO c.test").await;
    assert_eq!(c.cmd("BDAT lots").await, 501);
    assert!(c.expect_close().await.is_empty());
    // BDAT without a transaction still consumes its chunk, so the next command is read right.
    let mut c = Client::connect(sink.addr(PortKind::StartTls).unwrap()).await;
    c.reply().await;
    c.cmd("EHLO c.test").await;
    c.send("BDAT 4 LAST\r\nNOOPNOOP\r\n").await;
    assert_eq!((c.reply().await.code, c.reply().await.code), (503, 250));
    sink.shutdown(Duration::from_millis(100)).await;
}
