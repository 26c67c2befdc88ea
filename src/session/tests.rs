//! Script tests: server bytes in, the exact client bytes and events out.

use super::*;
use crate::reply::EnhancedCode;

const GREETING: &[u8] = b"220 mx.example.test ESMTP mxpipe\r\n";
/// The sink's EHLO reply without CHUNKING or STARTTLS.
const EHLO_PIPE: &[u8] =
    b"250-mx.example.test greets you\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-8BITMIME\r\n250 ENHANCEDSTATUSCODES\r\n";
/// The sink's full EHLO reply (without STARTTLS).
const EHLO_FULL: &[u8] =
    b"250-mx.example.test greets you\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250 CHUNKING\r\n";
const EHLO_TLS: &[u8] = b"250-mx.example.test greets you\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-STARTTLS\r\n250 8BITMIME\r\n";

/// How server bytes are handed to the session.
#[derive(Clone, Copy, Debug)]
enum Feed {
    Whole,
    /// One byte per `receive`.
    Bytes,
    /// Every server write split in two at this offset (clamped).
    At(usize),
}

struct T {
    s: ClientSession,
    feed: Feed,
}

impl T {
    fn new(cfg: SessionConfig, feed: Feed) -> T {
        let s = ClientSession::new(cfg);
        T { s, feed }
    }

    fn events(&mut self) -> Vec<Event> {
        std::iter::from_fn(|| self.s.poll_event()).collect()
    }

    fn server(&mut self, b: &[u8]) -> Vec<Event> {
        match self.feed {
            Feed::Whole => self.s.receive(b),
            Feed::Bytes => b.chunks(1).for_each(|c| self.s.receive(c)),
            Feed::At(k) => {
                let k = k.min(b.len());
                self.s.receive(&b[..k]);
                self.s.receive(&b[k..]);
            }
        }
        self.events()
    }

    fn submit(&mut self, m: Message) -> Vec<Event> {
        self.s.send_message(m).expect("session should take the message");
        self.events()
    }

    fn quit(&mut self) -> Vec<Event> {
        self.s.quit();
        self.events()
    }

    /// Greeting and EHLO answered with `ehlo`; expects `Ready`.
    fn open(&mut self, ehlo: &[u8]) {
        assert_eq!(self.server(GREETING), vec![send(b"EHLO client.test\r\n")]);
        assert_eq!(self.server(ehlo), vec![Event::Ready]);
    }
}

fn cfg() -> SessionConfig {
    SessionConfig { tls: TlsMode::None, ..SessionConfig::new("client.test") }
}

fn send(b: &[u8]) -> Event {
    Event::Send(b.to_vec())
}

fn msg(id: u64, from: &str, rcpts: &[&str], data: &[u8]) -> Message {
    Message { id, from: from.into(), rcpts: rcpts.iter().map(|r| r.to_string()).collect(), data: data.into(), requiretls: false }
}

fn out(rcpt: &str, status: RcptStatus, reply: &str) -> RcptOutcome {
    let enhanced =
        parse_reply(format!("{reply}\r\n").as_bytes()).ok().flatten().and_then(|(r, _)| r.enhanced).map(|e: EnhancedCode| e.to_string());
    RcptOutcome { rcpt: rcpt.into(), status, reply: reply.into(), enhanced }
}

fn done(id: u64, rcpts: Vec<RcptOutcome>) -> Event {
    Event::Done(MessageOutcome { id, rcpts })
}

fn reply(s: &str) -> Reply {
    parse_reply(s.as_bytes()).unwrap().unwrap().0
}

use RcptStatus::{Bounced, Deferred, Delivered};

// ----- scenarios, each run with every way of splitting the input -----

fn happy_pipelined_data(feed: Feed) {
    let mut t = T::new(cfg(), feed);
    assert_eq!(t.events(), vec![]);
    assert_eq!(t.s.timeout(), timeouts::GREETING);
    t.open(EHLO_PIPE);
    let caps = t.s.capabilities().unwrap();
    assert!(caps.pipelining && !caps.chunking && caps.size == Some(10_240_000));
    assert_eq!(t.submit(msg(1, "a@x", &["b@y"], b"Hello, all\n")), vec![send(b"MAIL FROM:<a@x> SIZE=12\r\nRCPT TO:<b@y>\r\nDATA\r\n")]);
    assert_eq!(t.s.timeout(), timeouts::MAIL);
    assert_eq!(t.server(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n"), vec![send(b"Hello, all\r\n.\r\n")]);
    assert_eq!(t.s.timeout(), timeouts::DATA_END);
    assert_eq!(
        t.server(b"250 2.0.0 Ok: queued as 1F\r\n"),
        vec![done(1, vec![out("b@y", Delivered, "250 2.0.0 Ok: queued as 1F")]), Event::Ready]
    );
    assert_eq!(t.quit(), vec![send(b"QUIT\r\n")]);
    assert_eq!(t.server(b"221 2.0.0 Bye\r\n"), vec![Event::Closed]);
    let st = t.s.stats();
    assert_eq!((st.commands, st.round_trips, st.messages), (5, 4, 1));
    assert!(t.s.unfinished().is_empty());
}

fn bdat_pipelined(feed: Feed) {
    let mut t = T::new(cfg(), feed);
    t.open(EHLO_FULL);
    assert_eq!(
        t.submit(msg(2, "a@x", &["b@y", "c@y"], b"a\n.b\n")),
        vec![send(b"MAIL FROM:<a@x> SIZE=7\r\nRCPT TO:<b@y>\r\nRCPT TO:<c@y>\r\nBDAT 7 LAST\r\na\r\n.b\r\n")]
    );
    assert_eq!(t.server(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n"), vec![]);
    assert_eq!(t.s.timeout(), timeouts::DATA_END);
    assert_eq!(
        t.server(b"250 2.0.0 Ok: queued as 2\r\n"),
        vec![
            done(2, vec![out("b@y", Delivered, "250 2.0.0 Ok: queued as 2"), out("c@y", Delivered, "250 2.0.0 Ok: queued as 2")]),
            Event::Ready
        ]
    );
    assert_eq!(t.s.stats().commands, 1 + 4);
}

fn mixed_rcpts(feed: Feed) {
    let mut t = T::new(cfg(), feed);
    t.open(EHLO_PIPE);
    assert_eq!(
        t.submit(msg(3, "", &["ok@y", "busy@y", "gone@y"], b"x\r\n")),
        vec![send(b"MAIL FROM:<> SIZE=3\r\nRCPT TO:<ok@y>\r\nRCPT TO:<busy@y>\r\nRCPT TO:<gone@y>\r\nDATA\r\n")]
    );
    assert_eq!(
        t.server(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n450 4.2.0 Mailbox busy\r\n550 5.1.1 No such user\r\n354 go\r\n"),
        vec![send(b"x\r\n.\r\n")]
    );
    assert_eq!(
        t.server(b"250 2.0.0 Ok: queued as 3\r\n"),
        vec![
            done(
                3,
                vec![
                    out("ok@y", Delivered, "250 2.0.0 Ok: queued as 3"),
                    out("busy@y", Deferred, "450 4.2.0 Mailbox busy"),
                    out("gone@y", Bounced, "550 5.1.1 No such user"),
                ]
            ),
            Event::Ready
        ]
    );
}

fn no_pipelining(feed: Feed) {
    // The server offers PIPELINING and CHUNKING, the config turns both off.
    let mut t = T::new(SessionConfig { pipelining: false, prefer_bdat: false, ..cfg() }, feed);
    t.open(EHLO_FULL);
    assert_eq!(t.submit(msg(4, "a@x", &["b@y", "c@y"], b"caf\xc3\xa9\n")), vec![send(b"MAIL FROM:<a@x> SIZE=7 BODY=8BITMIME\r\n")]);
    assert_eq!(t.server(b"250 2.1.0 Ok\r\n"), vec![send(b"RCPT TO:<b@y>\r\n")]);
    assert_eq!(t.s.timeout(), timeouts::RCPT);
    assert_eq!(t.server(b"550 5.1.1 No such user\r\n"), vec![send(b"RCPT TO:<c@y>\r\n")]);
    assert_eq!(t.server(b"250 2.1.5 Ok\r\n"), vec![send(b"DATA\r\n")]);
    assert_eq!(t.s.timeout(), timeouts::DATA_INIT);
    assert_eq!(t.server(b"354 go\r\n"), vec![send(b"caf\xc3\xa9\r\n.\r\n")]);
    assert_eq!(
        t.server(b"250 2.0.0 Ok: queued as 4\r\n"),
        vec![
            done(4, vec![out("b@y", Bounced, "550 5.1.1 No such user"), out("c@y", Delivered, "250 2.0.0 Ok: queued as 4")]),
            Event::Ready
        ]
    );
    assert_eq!(t.s.stats().round_trips, 1 + 5);
}

fn all_feeds() -> Vec<Feed> {
    let mut v = vec![Feed::Whole, Feed::Bytes];
    v.extend((0..120).map(Feed::At));
    v
}

#[test]
fn happy_path_pipelined_data() {
    happy_pipelined_data(Feed::Whole);
}

#[test]
fn bdat_one_write_per_message() {
    bdat_pipelined(Feed::Whole);
}

/// A body already in CRLF goes out byte for byte; one with a bare CR, a bare LF or no final
/// line end is normalised, and either way the BDAT size and SIZE= count exactly what follows.
#[test]
fn bdat_chunk_is_the_body_as_it_is_or_normalised() {
    let cases: [(&[u8], &[u8]); 5] = [
        (b"a\r\n.b\r\n", b"a\r\n.b\r\n"),
        (b"a\r\nb", b"a\r\nb\r\n"),
        (b"a\rb\r\n", b"a\r\nb\r\n"),
        (b"a\r\nb\n", b"a\r\nb\r\n"),
        (b"a\r\n\r", b"a\r\n\r\n"),
    ];
    for (i, (body, wire)) in cases.into_iter().enumerate() {
        let mut t = T::new(cfg(), Feed::Whole);
        t.open(EHLO_FULL);
        let n = wire.len();
        let mut want = format!("MAIL FROM:<a@x> SIZE={n}\r\nRCPT TO:<b@y>\r\nBDAT {n} LAST\r\n").into_bytes();
        want.extend_from_slice(wire);
        assert_eq!(t.submit(msg(i as u64 + 1, "a@x", &["b@y"], body)), vec![send(&want)], "body {body:?}");
    }
}

#[test]
fn mixed_rcpt_results() {
    mixed_rcpts(Feed::Whole);
}

#[test]
fn without_pipelining_one_command_per_round_trip() {
    no_pipelining(Feed::Whole);
}

#[test]
fn replies_split_at_every_byte_boundary() {
    for feed in all_feeds() {
        happy_pipelined_data(feed);
        bdat_pipelined(feed);
        mixed_rcpts(feed);
        no_pipelining(feed);
    }
}

// ----- TLS -----

fn tls_cfg(required: bool) -> SessionConfig {
    SessionConfig { tls: TlsMode::Starttls { required }, ..cfg() }
}

#[test]
fn starttls_required_not_offered_returns_the_message() {
    let mut t = T::new(tls_cfg(true), Feed::Whole);
    let m = msg(5, "a@x", &["b@y"], b"x\n");
    assert_eq!(t.submit(m.clone()), vec![]);
    assert_eq!(t.server(GREETING), vec![send(b"EHLO client.test\r\n")]);
    assert_eq!(t.server(EHLO_PIPE), vec![Event::Failed(SessionError::StartTlsUnavailable("the server did not offer STARTTLS".into()))]);
    assert_eq!(t.s.unfinished(), vec![m]);
    assert!(t.s.unfinished().is_empty(), "taken once");
    assert_eq!(t.server(b"250 late\r\n"), vec![], "input after failure is ignored");
    assert_eq!(t.s.timeout(), Duration::ZERO);
}

#[test]
fn starttls_opportunistic_not_offered_continues_in_clear() {
    let mut t = T::new(tls_cfg(false), Feed::Whole);
    t.open(EHLO_PIPE);
    assert!(!t.s.is_tls());
}

#[test]
fn starttls_upgrade_then_ehlo_again_and_queued_message_goes_out() {
    let mut t = T::new(tls_cfg(true), Feed::Whole);
    assert_eq!(t.submit(msg(6, "a@x", &["b@y"], b"x\n")), vec![]);
    assert_eq!(t.server(GREETING), vec![send(b"EHLO client.test\r\n")]);
    assert_eq!(t.server(EHLO_TLS), vec![send(b"STARTTLS\r\n")]);
    assert_eq!(t.server(b"220 2.0.0 Ready to start TLS\r\n"), vec![Event::StartTls]);
    assert!(t.s.capabilities().is_some(), "kept until the handshake is done");
    t.s.tls_ready();
    assert!(t.s.is_tls());
    assert_eq!(t.s.capabilities(), None, "RFC 3207: forget what was said in clear");
    assert_eq!(t.events(), vec![send(b"EHLO client.test\r\n")]);
    // The queued message is sent straight after the EHLO over TLS, with no Ready between.
    assert_eq!(t.server(EHLO_FULL), vec![send(b"MAIL FROM:<a@x> SIZE=3\r\nRCPT TO:<b@y>\r\nBDAT 3 LAST\r\nx\r\n")]);
    assert_eq!(
        t.server(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.0.0 Ok: queued as 6\r\n"),
        vec![done(6, vec![out("b@y", Delivered, "250 2.0.0 Ok: queued as 6")]), Event::Ready]
    );
}

#[test]
fn starttls_454_opportunistic_goes_on_in_clear() {
    let mut t = T::new(tls_cfg(false), Feed::Whole);
    assert_eq!(t.server(GREETING), vec![send(b"EHLO client.test\r\n")]);
    assert_eq!(t.server(EHLO_TLS), vec![send(b"STARTTLS\r\n")]);
    assert_eq!(t.server(b"454 4.7.0 TLS not available due to temporary reason\r\n"), vec![Event::Ready]);
    assert!(!t.s.is_tls());
    assert!(t.s.capabilities().unwrap().pipelining, "clear-text capabilities still apply");
    assert_eq!(t.submit(msg(7, "a@x", &["b@y"], b"")), vec![send(b"MAIL FROM:<a@x> SIZE=0\r\nRCPT TO:<b@y>\r\nDATA\r\n")]);
}

#[test]
fn starttls_454_required_fails_with_the_message() {
    let mut t = T::new(tls_cfg(true), Feed::Whole);
    let m = msg(8, "a@x", &["b@y"], b"x");
    t.submit(m.clone());
    t.server(GREETING);
    t.server(EHLO_TLS);
    assert_eq!(
        t.server(b"454 4.7.0 TLS not available\r\n"),
        vec![Event::Failed(SessionError::StartTlsUnavailable("STARTTLS refused: 454 4.7.0 TLS not available".into()))]
    );
    assert_eq!(t.s.unfinished(), vec![m]);
}

#[test]
fn bytes_after_starttls_220_are_refused() {
    // Same read: a plaintext reply injected behind the 220 (CVE-2011-0411 style).
    let mut t = T::new(tls_cfg(false), Feed::Whole);
    t.server(GREETING);
    t.server(EHLO_TLS);
    let ev = t.server(b"220 go ahead\r\n250 injected\r\n");
    assert!(matches!(ev.as_slice(), [Event::Failed(SessionError::Protocol(_))]), "{ev:?}");
    // A later read before tls_ready().
    let mut t = T::new(tls_cfg(false), Feed::Whole);
    t.server(GREETING);
    t.server(EHLO_TLS);
    assert_eq!(t.server(b"220 go ahead\r\n"), vec![Event::StartTls]);
    let ev = t.server(b"250 injected\r\n");
    assert!(matches!(ev.as_slice(), [Event::Failed(SessionError::Protocol(_))]), "{ev:?}");
}

#[test]
fn implicit_tls_never_starttls() {
    let mut t = T::new(SessionConfig { tls: TlsMode::Implicit, ..cfg() }, Feed::Whole);
    assert!(t.s.is_tls());
    t.open(EHLO_TLS);
}

// ----- REQUIRETLS (RFC 8689) -----

/// The EHLO reply over TLS of a server that offers REQUIRETLS.
const EHLO_REQUIRETLS: &[u8] =
    b"250-mx.example.test greets you\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-ENHANCEDSTATUSCODES\r\n250 REQUIRETLS\r\n";

fn requiretls_msg(id: u64) -> Message {
    Message { requiretls: true, ..msg(id, "a@x", &["b@y", "c@y"], b"x\n") }
}

#[test]
fn requiretls_is_read_from_the_ehlo_after_starttls_and_sent_on_mail() {
    let mut t = T::new(tls_cfg(true), Feed::Whole);
    assert!(!t.s.server_requiretls(), "nothing known before EHLO");
    t.server(GREETING);
    // A server that (wrongly) offers it in clear: it is forgotten with the rest at STARTTLS.
    let clear = b"250-mx.example.test\r\n250-STARTTLS\r\n250 REQUIRETLS\r\n";
    assert_eq!(t.server(clear), vec![send(b"STARTTLS\r\n")]);
    assert!(t.s.server_requiretls(), "read from the clear EHLO");
    assert_eq!(t.server(b"220 2.0.0 Ready to start TLS\r\n"), vec![Event::StartTls]);
    t.s.tls_ready();
    assert!(!t.s.server_requiretls(), "forgotten until the EHLO over TLS is answered");
    assert_eq!(t.events(), vec![send(b"EHLO client.test\r\n")]);
    assert_eq!(t.server(EHLO_REQUIRETLS), vec![Event::Ready]);
    assert!(t.s.server_requiretls());
    assert_eq!(t.submit(requiretls_msg(1)), vec![send(b"MAIL FROM:<a@x> SIZE=3 REQUIRETLS\r\nRCPT TO:<b@y>\r\nRCPT TO:<c@y>\r\nDATA\r\n")]);
    // A message that does not ask for it is sent without it on the same connection.
    let mut t = T::new(SessionConfig { tls: TlsMode::Implicit, ..cfg() }, Feed::Whole);
    t.open(EHLO_REQUIRETLS);
    assert_eq!(t.submit(msg(2, "a@x", &["b@y"], b"x\n")), vec![send(b"MAIL FROM:<a@x> SIZE=3\r\nRCPT TO:<b@y>\r\nDATA\r\n")]);
}

#[test]
fn requiretls_message_is_never_sent_to_a_server_that_does_not_advertise_it() {
    let why = "local: next hop does not advertise REQUIRETLS, not sent";
    let mut t = T::new(SessionConfig { tls: TlsMode::Implicit, ..cfg() }, Feed::Whole);
    t.open(EHLO_FULL);
    assert!(!t.s.server_requiretls());
    let ev = t.submit(requiretls_msg(3));
    let bounced = |r: &str| RcptOutcome { rcpt: r.into(), status: Bounced, reply: why.into(), enhanced: Some("5.7.30".into()) };
    assert_eq!(ev, vec![done(3, vec![bounced("b@y"), bounced("c@y")]), Event::Ready], "nothing written");
    assert_eq!(t.s.stats().commands, 1, "only the EHLO went out");
    // The connection stays usable for other messages.
    assert_eq!(t.submit(msg(4, "a@x", &["b@y"], b"x\n")), vec![send(b"MAIL FROM:<a@x> SIZE=3\r\nRCPT TO:<b@y>\r\nBDAT 3 LAST\r\nx\r\n")]);
}

#[test]
fn requiretls_message_is_never_sent_in_clear_even_if_advertised() {
    let mut t = T::new(cfg(), Feed::Whole);
    t.open(EHLO_REQUIRETLS);
    let ev = t.submit(requiretls_msg(5));
    let Some(Event::Done(o)) = ev.first() else { panic!("{ev:?}") };
    assert!(o.rcpts.iter().all(|r| r.status == Bounced && r.enhanced.as_deref() == Some("5.7.30")), "{o:?}");
    assert!(o.rcpts[0].reply.contains("not encrypted"), "{o:?}");
    assert_eq!(t.s.stats().commands, 1, "only the EHLO went out");
}

#[test]
fn requiretls_after_a_helo_fallback_is_refused_locally() {
    let mut t = T::new(SessionConfig { tls: TlsMode::Implicit, ..cfg() }, Feed::Whole);
    assert_eq!(t.server(GREETING), vec![send(b"EHLO client.test\r\n")]);
    assert_eq!(t.server(b"502 5.5.1 EHLO not supported\r\n"), vec![send(b"HELO client.test\r\n")]);
    assert_eq!(t.server(b"250 mx\r\n"), vec![Event::Ready]);
    assert!(!t.s.server_requiretls());
    let ev = t.submit(requiretls_msg(6));
    assert!(matches!(ev.as_slice(), [Event::Done(o), Event::Ready] if o.rcpts.iter().all(|r| r.status == Bounced)), "{ev:?}");
}

// ----- refusals -----

#[test]
fn all_rcpts_rejected_then_rset_pipelined_before_next_mail() {
    let mut t = T::new(cfg(), Feed::Whole);
    t.open(EHLO_PIPE);
    t.submit(msg(9, "a@x", &["b@y"], b"x\n"));
    assert_eq!(
        t.server(b"250 2.1.0 Ok\r\n550 5.1.1 No such user\r\n554 5.5.1 No valid recipients\r\n"),
        vec![done(9, vec![out("b@y", Bounced, "550 5.1.1 No such user")]), Event::Ready]
    );
    assert_eq!(t.submit(msg(10, "a@x", &["c@y"], b"x\n")), vec![send(b"RSET\r\nMAIL FROM:<a@x> SIZE=3\r\nRCPT TO:<c@y>\r\nDATA\r\n")]);
    assert_eq!(t.s.timeout(), timeouts::COMMAND);
    assert_eq!(t.server(b"250 2.0.0 Ok\r\n250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 go\r\n"), vec![send(b"x\r\n.\r\n")]);
    assert_eq!(
        t.server(b"250 2.0.0 Ok: queued as A\r\n"),
        vec![done(10, vec![out("c@y", Delivered, "250 2.0.0 Ok: queued as A")]), Event::Ready]
    );
    // A completed transaction owes no RSET.
    assert_eq!(t.submit(msg(11, "a@x", &["d@y"], b"x\n")), vec![send(b"MAIL FROM:<a@x> SIZE=3\r\nRCPT TO:<d@y>\r\nDATA\r\n")]);
}

#[test]
fn all_rcpts_rejected_with_bdat_consumes_the_chunk_reply() {
    let mut t = T::new(cfg(), Feed::Whole);
    t.open(EHLO_FULL);
    t.submit(msg(12, "a@x", &["b@y", "c@y"], b"x\n"));
    assert_eq!(
        t.server(b"250 2.1.0 Ok\r\n450 4.2.1 Try later\r\n550 5.1.1 No\r\n554 5.5.1 No valid recipients\r\n"),
        vec![done(12, vec![out("b@y", Deferred, "450 4.2.1 Try later"), out("c@y", Bounced, "550 5.1.1 No")]), Event::Ready]
    );
    assert_eq!(
        t.submit(msg(13, "a@x", &["d@y"], b"y")),
        vec![send(b"RSET\r\nMAIL FROM:<a@x> SIZE=3\r\nRCPT TO:<d@y>\r\nBDAT 3 LAST\r\ny\r\n")]
    );
}

#[test]
fn all_rcpts_rejected_without_pipelining_skips_data_and_resets() {
    let mut t = T::new(SessionConfig { pipelining: false, ..cfg() }, Feed::Whole);
    t.open(b"250-mx\r\n250 SIZE\r\n");
    assert_eq!(t.submit(msg(14, "a@x", &["b@y"], b"x\n")), vec![send(b"MAIL FROM:<a@x> SIZE=3\r\n")]);
    assert_eq!(t.server(b"250 2.1.0 Ok\r\n"), vec![send(b"RCPT TO:<b@y>\r\n")]);
    assert_eq!(t.server(b"550 5.1.1 No\r\n"), vec![done(14, vec![out("b@y", Bounced, "550 5.1.1 No")]), Event::Ready]);
    assert_eq!(t.submit(msg(15, "a@x", &["c@y"], b"x\n")), vec![send(b"RSET\r\n")]);
    assert_eq!(t.server(b"250 2.0.0 Ok\r\n"), vec![send(b"MAIL FROM:<a@x> SIZE=3\r\n")]);
}

#[test]
fn mail_rejected_every_rcpt_gets_the_mail_reply() {
    let mut t = T::new(cfg(), Feed::Whole);
    t.open(EHLO_PIPE);
    t.submit(msg(16, "a@x", &["b@y", "c@y"], b"x\n"));
    assert_eq!(t.server(b"550 5.7.1 Sender rejected\r\n503 5.5.1 Need MAIL\r\n503 5.5.1 Need MAIL\r\n"), vec![]);
    assert_eq!(
        t.server(b"503 5.5.1 Need MAIL command\r\n"),
        vec![
            done(16, vec![out("b@y", Bounced, "550 5.7.1 Sender rejected"), out("c@y", Bounced, "550 5.7.1 Sender rejected")]),
            Event::Ready
        ]
    );
    assert!(t.submit(msg(17, "a@x", &["b@y"], b"x\n"))[0] == send(b"RSET\r\nMAIL FROM:<a@x> SIZE=3\r\nRCPT TO:<b@y>\r\nDATA\r\n"));
}

#[test]
fn mail_rejected_transiently_without_pipelining() {
    let mut t = T::new(SessionConfig { pipelining: false, ..cfg() }, Feed::Whole);
    t.open(EHLO_PIPE);
    t.submit(msg(18, "a@x", &["b@y"], b"x\n"));
    assert_eq!(t.server(b"451 4.3.0 Try again\r\n"), vec![done(18, vec![out("b@y", Deferred, "451 4.3.0 Try again")]), Event::Ready]);
}

#[test]
fn unwanted_354_gets_a_lone_dot_and_its_reply_is_ignored() {
    let mut t = T::new(cfg(), Feed::Whole);
    t.open(EHLO_PIPE);
    t.submit(msg(19, "a@x", &["b@y"], b"secret body\n"));
    assert_eq!(t.server(b"250 2.1.0 Ok\r\n550 5.1.1 No\r\n354 go\r\n"), vec![send(b".\r\n")]);
    assert_eq!(t.server(b"250 2.0.0 Ok: queued as Z\r\n"), vec![done(19, vec![out("b@y", Bounced, "550 5.1.1 No")]), Event::Ready]);
}

#[test]
fn data_final_451_defers_accepted_rcpts_only() {
    let mut t = T::new(cfg(), Feed::Whole);
    t.open(EHLO_PIPE);
    t.submit(msg(20, "a@x", &["b@y", "c@y"], b"x\n"));
    t.server(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n550 5.1.1 No\r\n354 go\r\n");
    assert_eq!(
        t.server(b"451 4.3.0 Cannot store message\r\n"),
        vec![done(20, vec![out("b@y", Deferred, "451 4.3.0 Cannot store message"), out("c@y", Bounced, "550 5.1.1 No")]), Event::Ready]
    );
    // The transaction ended with a final reply: no RSET.
    assert_eq!(t.submit(msg(21, "a@x", &["d@y"], b"x\n"))[0], send(b"MAIL FROM:<a@x> SIZE=3\r\nRCPT TO:<d@y>\r\nDATA\r\n"));
}

#[test]
fn data_final_552_bounces_accepted_rcpts() {
    let mut t = T::new(cfg(), Feed::Whole);
    t.open(EHLO_FULL);
    t.submit(msg(22, "a@x", &["b@y"], b"x\n"));
    assert_eq!(
        t.server(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n552 5.3.4 Message size exceeds fixed limit\r\n"),
        vec![done(22, vec![out("b@y", Bounced, "552 5.3.4 Message size exceeds fixed limit")]), Event::Ready]
    );
}

#[test]
fn service_closing_mid_transaction_returns_the_message() {
    for feed in all_feeds() {
        let mut t = T::new(cfg(), feed);
        t.open(EHLO_PIPE);
        let m = msg(23, "a@x", &["b@y", "c@y"], b"x\n");
        t.submit(m.clone());
        assert_eq!(
            t.server(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n421 4.4.2 mx Error: timeout exceeded\r\n"),
            vec![Event::Failed(SessionError::ServiceClosing(reply("421 4.4.2 mx Error: timeout exceeded\r\n")))]
        );
        assert_eq!(t.s.unfinished(), vec![m]);
        assert_eq!(t.server(b"250 more\r\n"), vec![]);
        t.s.receive_eof();
        assert_eq!(t.events(), vec![]);
    }
}

#[test]
fn service_closing_while_idle_and_at_greeting() {
    let mut t = T::new(cfg(), Feed::Whole);
    t.open(EHLO_PIPE);
    assert!(matches!(t.server(b"421 4.3.2 shutting down\r\n").as_slice(), [Event::Failed(SessionError::ServiceClosing(_))]));
    assert!(t.s.unfinished().is_empty());
    let mut t = T::new(cfg(), Feed::Whole);
    assert!(matches!(t.server(b"421 busy\r\n").as_slice(), [Event::Failed(SessionError::ServiceClosing(_))]));
}

#[test]
fn greeting_not_220_fails() {
    let mut t = T::new(cfg(), Feed::Whole);
    let m = msg(24, "a@x", &["b@y"], b"x");
    t.submit(m.clone());
    assert_eq!(
        t.server(b"554 5.3.2 No service for you\r\n"),
        vec![Event::Failed(SessionError::Greeting(reply("554 5.3.2 No service for you\r\n")))]
    );
    assert_eq!(t.s.unfinished(), vec![m]);
}

#[test]
fn ehlo_502_falls_back_to_helo_without_extensions() {
    let mut t = T::new(cfg(), Feed::Whole);
    assert_eq!(t.server(GREETING), vec![send(b"EHLO client.test\r\n")]);
    assert_eq!(t.server(b"502 5.5.1 Command not implemented\r\n"), vec![send(b"HELO client.test\r\n")]);
    assert_eq!(t.server(b"250 mx.example.test\r\n"), vec![Event::Ready]);
    assert_eq!(t.s.capabilities(), Some(&Capabilities::default()));
    // No SIZE, no pipelining, no 8BITMIME.
    assert_eq!(t.submit(msg(25, "a@x", &["b@y"], b"\xff\n")), vec![send(b"MAIL FROM:<a@x>\r\n")]);
}

#[test]
fn helo_refused_fails() {
    let mut t = T::new(cfg(), Feed::Whole);
    t.server(GREETING);
    t.server(b"500 what\r\n");
    assert_eq!(t.server(b"550 go away\r\n"), vec![Event::Failed(SessionError::Ehlo(reply("550 go away\r\n")))]);
    let mut t = T::new(cfg(), Feed::Whole);
    t.server(GREETING);
    assert_eq!(t.server(b"450 later\r\n"), vec![Event::Failed(SessionError::Ehlo(reply("450 later\r\n")))]);
}

#[test]
fn size_too_big_bounces_locally_without_sending() {
    let mut t = T::new(cfg(), Feed::Whole);
    t.open(b"250-mx\r\n250-PIPELINING\r\n250 SIZE 10\r\n");
    let before = t.s.stats();
    let reason = "local: message size 12 exceeds the server's limit of 10, not sent";
    let local = |r: &str| RcptOutcome { rcpt: r.into(), status: Bounced, reply: reason.into(), enhanced: Some("5.3.4".into()) };
    assert_eq!(t.submit(msg(26, "a@x", &["b@y", "c@y"], b"0123456789\n")), vec![done(26, vec![local("b@y"), local("c@y")]), Event::Ready]);
    assert_eq!(t.s.stats().round_trips, before.round_trips);
    // Exactly at the limit is fine.
    assert_eq!(t.submit(msg(27, "a@x", &["b@y"], b"01234567\n"))[0], send(b"MAIL FROM:<a@x> SIZE=10\r\nRCPT TO:<b@y>\r\nDATA\r\n"));
}

#[test]
fn size_zero_means_no_limit() {
    let mut t = T::new(cfg(), Feed::Whole);
    t.open(b"250-mx\r\n250-PIPELINING\r\n250 SIZE 0\r\n");
    assert_eq!(t.submit(msg(28, "a@x", &["b@y"], b"0123456789\n"))[0], send(b"MAIL FROM:<a@x> SIZE=12\r\nRCPT TO:<b@y>\r\nDATA\r\n"));
}

#[test]
fn addresses_that_would_inject_commands_are_refused_locally() {
    let mut t = T::new(cfg(), Feed::Whole);
    t.open(EHLO_PIPE);
    let evil = "b@y>\r\nRCPT TO:<x@evil";
    let ev = t.submit(msg(29, "a@x", &[evil, "ok@y"], b"x\n"));
    assert_eq!(ev, vec![send(b"MAIL FROM:<a@x> SIZE=3\r\nRCPT TO:<ok@y>\r\nDATA\r\n")]);
    t.server(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 go\r\n");
    let ev = t.server(b"250 2.0.0 Ok\r\n");
    let Event::Done(o) = &ev[0] else { panic!("{ev:?}") };
    assert_eq!(o.rcpts[0].status, Bounced);
    assert_eq!(o.rcpts[0].enhanced.as_deref(), Some("5.1.3"));
    assert_eq!(o.rcpts[1].status, Delivered);
    // A bad sender refuses the whole message without a round trip.
    let ev = t.submit(msg(30, "a b@x", &["ok@y"], b"x\n"));
    let Event::Done(o) = &ev[0] else { panic!("{ev:?}") };
    assert_eq!((o.rcpts[0].status, o.rcpts[0].enhanced.as_deref()), (Bounced, Some("5.1.7")));
}

#[test]
fn dot_stuffing_and_crlf_normalisation_on_the_wire() {
    for (data, body, size) in [
        (&b".\n"[..], &b"..\r\n.\r\n"[..], 3),
        (b"\r", b"\r\n.\r\n", 2),
        (b"a\nb", b"a\r\nb\r\n.\r\n", 6),
        (b"no trailing newline", b"no trailing newline\r\n.\r\n", 21),
        (b".start\r\n..two\r\nend.\r\n", b"..start\r\n...two\r\nend.\r\n.\r\n", 21),
    ] {
        let mut t = T::new(cfg(), Feed::Whole);
        t.open(EHLO_PIPE);
        let group = format!("MAIL FROM:<a@x> SIZE={size}\r\nRCPT TO:<b@y>\r\nDATA\r\n");
        assert_eq!(t.submit(msg(31, "a@x", &["b@y"], data)), vec![send(group.as_bytes())]);
        assert_eq!(t.server(b"250 Ok\r\n250 Ok\r\n354 go\r\n"), vec![send(body)], "{data:?}");
    }
}

#[test]
fn three_messages_on_one_connection() {
    let mut t = T::new(cfg(), Feed::Whole);
    t.open(EHLO_FULL);
    for id in 1..=3u64 {
        let rcpt = format!("r{id}@y");
        let ev = t.submit(msg(id, "a@x", &[rcpt.as_str()], b"hi\n"));
        let group = format!("MAIL FROM:<a@x> SIZE=4\r\nRCPT TO:<{rcpt}>\r\nBDAT 4 LAST\r\nhi\r\n");
        assert_eq!(ev, vec![send(group.as_bytes())]);
        assert_eq!(t.s.send_message(msg(99, "a@x", &["z@y"], b"")).unwrap_err().id, 99, "busy");
        let final_reply = format!("250 2.0.0 Ok: queued as {id}");
        assert_eq!(
            t.server(format!("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n{final_reply}\r\n").as_bytes()),
            vec![done(id, vec![out(&rcpt, Delivered, &final_reply)]), Event::Ready]
        );
    }
    assert_eq!(t.quit(), vec![send(b"QUIT\r\n")]);
    assert_eq!(t.server(b"221 2.0.0 Bye\r\n"), vec![Event::Closed]);
    let st = t.s.stats();
    assert_eq!((st.messages, st.round_trips, st.commands), (3, 1 + 3 + 1, 1 + 9 + 1));
}

#[test]
fn quit_then_eof_is_closed() {
    let mut t = T::new(cfg(), Feed::Whole);
    t.open(EHLO_PIPE);
    assert_eq!(t.quit(), vec![send(b"QUIT\r\n")]);
    t.s.receive_eof();
    assert_eq!(t.events(), vec![Event::Closed]);
    t.s.quit();
    assert_eq!(t.events(), vec![], "quit after close does nothing");
}

#[test]
fn quit_before_ready_is_sent_when_idle_and_returns_a_queued_message() {
    let mut t = T::new(cfg(), Feed::Whole);
    let m = msg(32, "a@x", &["b@y"], b"x");
    t.submit(m.clone());
    t.s.quit();
    assert!(t.s.send_message(m.clone()).is_err());
    t.server(GREETING);
    assert_eq!(t.server(EHLO_PIPE), vec![send(b"QUIT\r\n")]);
    assert_eq!(t.server(b"221 Bye\r\n"), vec![Event::Closed]);
    assert_eq!(t.s.unfinished(), vec![m]);
}

#[test]
fn eof_mid_transaction_fails_with_the_message() {
    let mut t = T::new(cfg(), Feed::Whole);
    t.open(EHLO_PIPE);
    let m = msg(33, "a@x", &["b@y"], b"x");
    t.submit(m.clone());
    t.server(b"250 2.1.0 Ok\r\n");
    t.s.receive_eof();
    assert_eq!(t.events(), vec![Event::Failed(SessionError::UnexpectedEof("waiting for a RCPT reply"))]);
    assert_eq!(t.s.unfinished(), vec![m]);
}

#[test]
fn malformed_and_unexpected_replies_fail() {
    let mut t = T::new(cfg(), Feed::Whole);
    t.open(EHLO_PIPE);
    let m = msg(34, "a@x", &["b@y"], b"x");
    t.submit(m.clone());
    let ev = t.server(b"250 2.1.0 Ok\r\nHTTP/1.1 400 Bad Request\r\n");
    assert!(matches!(ev.as_slice(), [Event::Failed(SessionError::Protocol(_))]), "{ev:?}");
    assert_eq!(t.s.unfinished(), vec![m]);

    let mut t = T::new(cfg(), Feed::Whole);
    t.open(EHLO_PIPE);
    let ev = t.server(b"250 unsolicited\r\n");
    assert!(matches!(ev.as_slice(), [Event::Failed(SessionError::Protocol(_))]), "{ev:?}");

    let mut t = T::new(cfg(), Feed::Whole);
    t.open(EHLO_PIPE);
    t.submit(msg(35, "a@x", &["b@y"], b"x"));
    let ev = t.server(b"354 what\r\n");
    assert!(matches!(ev.as_slice(), [Event::Failed(SessionError::Protocol(_))]), "{ev:?}");

    // An endless line is refused once it passes the reply-line bound.
    let mut t = T::new(cfg(), Feed::Whole);
    for _ in 0..10 {
        t.s.receive(&[b'2'; 1000]);
    }
    let ev = t.events();
    assert!(matches!(ev.as_slice(), [Event::Failed(SessionError::Protocol(_))]), "{ev:?}");
}

#[test]
fn timeouts_follow_rfc_5321() {
    let mut t = T::new(SessionConfig { pipelining: false, prefer_bdat: false, ..tls_cfg(false) }, Feed::Whole);
    assert_eq!(t.s.timeout(), Duration::from_secs(300));
    t.server(GREETING);
    assert_eq!(t.s.timeout(), Duration::from_secs(300));
    t.server(EHLO_TLS);
    assert_eq!(t.s.timeout(), timeouts::COMMAND);
    t.server(b"220 go\r\n");
    t.s.tls_ready();
    t.server(EHLO_PIPE);
    t.submit(msg(36, "a@x", &["b@y"], b"x"));
    assert_eq!(t.s.timeout(), Duration::from_secs(300));
    t.server(b"250 ok\r\n");
    assert_eq!(t.s.timeout(), Duration::from_secs(300));
    t.server(b"250 ok\r\n");
    assert_eq!(t.s.timeout(), Duration::from_secs(120));
    t.server(b"354 go\r\n");
    assert_eq!(t.s.timeout(), Duration::from_secs(600));
    assert_eq!(timeouts::DATA_BLOCK, Duration::from_secs(180));
}

#[test]
fn recycled_buffer_is_reused() {
    let mut t = T::new(cfg(), Feed::Whole);
    t.open(EHLO_FULL);
    t.s.recycle(Vec::with_capacity(64 * 1024));
    let ev = t.submit(msg(37, "a@x", &["b@y"], b"x"));
    let Event::Send(buf) = &ev[0] else { panic!() };
    assert!(buf.capacity() >= 64 * 1024);
}

#[test]
fn message_without_recipients_is_done_at_once() {
    let mut t = T::new(cfg(), Feed::Whole);
    t.open(EHLO_FULL);
    assert_eq!(t.submit(msg(38, "a@x", &[], b"x")), vec![done(38, vec![]), Event::Ready]);
}

// ----- robustness -----

struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Drive a session with `input` chunks, answering every event as a driver would, and check
/// the one invariant that matters: every message is either Done (with one outcome per
/// recipient) or handed back by `unfinished`.
fn drive(rng: &mut Lcg, chunks: &[Vec<u8>]) -> usize {
    let tls = [TlsMode::None, TlsMode::Implicit, TlsMode::Starttls { required: false }, TlsMode::Starttls { required: true }];
    let cfg = SessionConfig {
        tls: tls[rng.below(4)],
        pipelining: rng.below(2) == 0,
        prefer_bdat: rng.below(2) == 0,
        ..SessionConfig::new("client.test")
    };
    let mut s = ClientSession::new(cfg);
    let mut next_id = 0u64;
    let mut submitted = Vec::new();
    let mut finished = Vec::new();
    let mut returned = Vec::new();
    let mut new_msg = |rng: &mut Lcg| {
        next_id += 1;
        let n = rng.below(4);
        let rcpts: Vec<String> = (0..n).map(|i| format!("r{i}@y")).collect();
        Message { id: next_id, from: "a@x".into(), rcpts, data: b"Subject: x\n\n.dot\nbody".as_slice().into(), requiretls: false }
    };
    let m = new_msg(rng);
    submitted.push(m.clone());
    s.send_message(m).unwrap();
    for chunk in chunks {
        s.receive(chunk);
        if rng.below(50) == 0 {
            s.receive_eof();
        }
        while let Some(ev) = s.poll_event() {
            match ev {
                Event::StartTls => s.tls_ready(),
                Event::Ready => {
                    if rng.below(4) == 0 {
                        s.quit();
                    } else {
                        // A Ready followed in the same batch by Failed/Closed is stale:
                        // the message comes straight back.
                        let m = new_msg(rng);
                        submitted.push(m.clone());
                        if let Err(m) = s.send_message(m) {
                            returned.push(m);
                        }
                    }
                }
                Event::Done(o) => finished.push(o),
                Event::Failed(_) | Event::Closed => returned.extend(s.unfinished()),
                Event::Send(_) => {}
            }
        }
        let _ = s.timeout();
    }
    returned.extend(s.unfinished());
    for o in &finished {
        let m = submitted.iter().find(|m| m.id == o.id).unwrap();
        assert_eq!(o.rcpts.len(), m.rcpts.len());
        assert!(o.rcpts.iter().zip(&m.rcpts).all(|(a, b)| &a.rcpt == b));
    }
    // Nothing both finished and returned; anything neither is still in flight.
    for r in &returned {
        assert!(!finished.iter().any(|o| o.id == r.id));
    }
    let accounted = finished.len() + returned.len();
    assert!(accounted + 1 >= submitted.len(), "{accounted} of {}", submitted.len());
    finished.iter().filter(|o| !o.rcpts.is_empty()).count()
}

#[test]
fn random_garbage_never_panics() {
    let mut rng = Lcg(0x5eed);
    for _ in 0..3000 {
        let n = rng.below(8) + 1;
        let chunks: Vec<Vec<u8>> = (0..n)
            .map(|_| {
                let len = rng.below(64);
                (0..len).map(|_| rng.next() as u8).collect()
            })
            .collect();
        drive(&mut rng, &chunks);
    }
}

#[test]
fn random_plausible_replies_never_panic() {
    // Real reply lines in random order reach the deep states that pure garbage cannot.
    const LINES: &[&[u8]] = &[
        b"220 mx ESMTP\r\n",
        b"220 2.0.0 Ready to start TLS\r\n",
        b"250-mx\r\n250-PIPELINING\r\n250-STARTTLS\r\n250-SIZE 40\r\n250 CHUNKING\r\n",
        b"250-mx\r\n250 8BITMIME\r\n",
        b"250 2.1.0 Ok\r\n",
        b"250 2.0.0 Ok: queued as 1\r\n",
        b"251 forwarded\r\n",
        b"354 go\r\n",
        b"421 4.4.2 bye\r\n",
        b"221 2.0.0 Bye\r\n",
        b"450 4.2.0 busy\r\n",
        b"451 4.3.0 later\r\n",
        b"454 4.7.0 no tls\r\n",
        b"502 5.5.1 no\r\n",
        b"503 5.5.1 bad sequence\r\n",
        b"550 5.1.1 no such user\r\n",
        b"554 5.5.1 no valid recipients\r\n",
        b"334 \r\n",
        b"250-partial\r\n",
        b"garbage\r\n",
    ];
    let mut rng = Lcg(42);
    let mut done = 0;
    for _ in 0..5000 {
        let n = rng.below(12) + 1;
        let mut stream = Vec::new();
        for _ in 0..n {
            stream.extend_from_slice(LINES[rng.below(LINES.len() - 1)]);
        }
        if rng.below(20) == 0 {
            stream.extend_from_slice(LINES[LINES.len() - 1]);
        }
        // Cut the stream into random pieces.
        let mut chunks = Vec::new();
        let mut rest = &stream[..];
        while !rest.is_empty() {
            let k = (rng.below(40) + 1).min(rest.len());
            chunks.push(rest[..k].to_vec());
            rest = &rest[k..];
        }
        done += drive(&mut rng, &chunks);
    }
    assert!(done > 40, "only {done} messages got through: the input does not reach the data states");
}

// ----- SMTPUTF8 (RFC 6531) -----

const EHLO_UTF8: &[u8] = b"250-mx.example.test greets you\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n";

fn local_5_6_7(rcpt: &str, whose: &str) -> RcptOutcome {
    let reply = format!(
        "local: the {whose}'s local part is not ASCII and the receiving server does not offer SMTPUTF8 (RFC 6531); there is no ASCII form of the {}, not sent",
        if whose == "sender" { "sender" } else { "address" }
    );
    RcptOutcome { rcpt: rcpt.into(), status: Bounced, reply, enhanced: Some("5.6.7".into()) }
}

#[test]
fn smtputf8_is_sent_with_utf8_addresses_where_advertised() {
    let mut t = T::new(cfg(), Feed::Whole);
    t.open(EHLO_UTF8);
    assert!(t.s.capabilities().unwrap().smtputf8);
    // A UTF-8 recipient: the parameter, and each address in its normal form (a UTF-8 local
    // part with U-labels, an ASCII one with A-labels).
    let m = msg(1, "a@x.test", &["jörg@BÜCHER.example", "fred@bücher.example"], b"x\n");
    assert_eq!(
        t.submit(m),
        vec![send(
            "MAIL FROM:<a@x.test> SMTPUTF8\r\nRCPT TO:<jörg@bücher.example>\r\nRCPT TO:<fred@xn--bcher-kva.example>\r\nDATA\r\n".as_bytes()
        )]
    );
    t.server(b"250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n");
    let ev = t.server(b"250 2.0.0 queued\r\n");
    assert_eq!(
        ev,
        vec![
            done(
                1,
                vec![out("jörg@BÜCHER.example", Delivered, "250 2.0.0 queued"), out("fred@bücher.example", Delivered, "250 2.0.0 queued")]
            ),
            Event::Ready
        ]
    );
    // A UTF-8 sender alone needs it too; an all-ASCII envelope (IDN domains included) does not.
    assert_eq!(
        t.submit(msg(2, "jörg@x.test", &["b@y.test"], b"x\n")),
        vec![send("MAIL FROM:<jörg@x.test> SMTPUTF8\r\nRCPT TO:<b@y.test>\r\nDATA\r\n".as_bytes())]
    );
    t.server(b"250 ok\r\n250 ok\r\n354 go\r\n");
    t.server(b"250 ok\r\n");
    assert_eq!(
        t.submit(msg(3, "a@bücher.example", &["b@y.test"], "Subject: grüße\n".as_bytes())),
        vec![send(b"MAIL FROM:<a@xn--bcher-kva.example> BODY=8BITMIME\r\nRCPT TO:<b@y.test>\r\nDATA\r\n")]
    );
}

#[test]
fn without_smtputf8_ascii_local_parts_go_as_a_labels_and_utf8_ones_bounce_5_6_7() {
    let mut t = T::new(cfg(), Feed::Whole);
    t.open(EHLO_PIPE);
    let m = msg(1, "app@bücher.example", &["jörg@bücher.example", "fred@BÜCHER.example"], b"x\n");
    assert_eq!(
        t.submit(m),
        vec![send(b"MAIL FROM:<app@xn--bcher-kva.example> SIZE=3\r\nRCPT TO:<fred@xn--bcher-kva.example>\r\nDATA\r\n")]
    );
    t.server(b"250 ok\r\n250 ok\r\n354 go\r\n");
    assert_eq!(
        t.server(b"250 2.0.0 queued\r\n"),
        vec![
            done(1, vec![local_5_6_7("jörg@bücher.example", "recipient"), out("fred@BÜCHER.example", Delivered, "250 2.0.0 queued")]),
            Event::Ready
        ]
    );
    // Only UTF-8 recipients: nothing is sent.
    assert_eq!(
        t.submit(msg(2, "a@x.test", &["用户@例子.广告"], b"x\n")),
        vec![done(2, vec![local_5_6_7("用户@例子.广告", "recipient")]), Event::Ready]
    );
    // A UTF-8 sender: every recipient bounces, nothing is sent.
    assert_eq!(
        t.submit(msg(3, "jörg@x.test", &["a@y.test", "b@y.test"], b"x\n")),
        vec![done(3, vec![local_5_6_7("a@y.test", "sender"), local_5_6_7("b@y.test", "sender")]), Event::Ready]
    );
    assert_eq!(t.s.stats().commands, 4, "EHLO, and MAIL, RCPT, DATA of the first message only");
}

#[test]
fn smtputf8_after_a_helo_fallback_is_not_assumed() {
    let mut t = T::new(cfg(), Feed::Whole);
    t.server(GREETING);
    assert_eq!(t.server(b"502 5.5.1 no EHLO\r\n"), vec![send(b"HELO client.test\r\n")]);
    assert_eq!(t.server(b"250 mx.example.test\r\n"), vec![Event::Ready]);
    assert_eq!(
        t.submit(msg(1, "a@x.test", &["jörg@y.test"], b"x\n")),
        vec![done(1, vec![local_5_6_7("jörg@y.test", "recipient")]), Event::Ready]
    );
}
