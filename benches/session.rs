//! Hot paths of the SMTP client session: reply parsing, building a pipelined envelope, and
//! encoding a body for DATA (CRLF normalisation and dot-stuffing).
//!
//! Run: `cargo bench --bench session -- --warm-up-time 1 --measurement-time 2`

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use mxpipe::reply::{parse_reply, Capabilities};
use mxpipe::session::{encode_data, ClientSession, Event, Message, SessionConfig, TlsMode};

const EHLO: &[u8] =
    b"250-mx.example.test greets you\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250 STARTTLS\r\n";

fn parse_ehlo(c: &mut Criterion) {
    c.bench_function("parse 6-line EHLO reply + capabilities", |b| {
        b.iter(|| {
            let (reply, n) = parse_reply(black_box(EHLO)).unwrap().unwrap();
            black_box((Capabilities::from_ehlo(&reply), n))
        })
    });
}

/// A session past the greeting and an EHLO reply of `ehlo`.
fn session_after(ehlo: &[u8]) -> ClientSession {
    let cfg = SessionConfig { tls: TlsMode::None, ..SessionConfig::new("client.example.test") };
    let mut s = ClientSession::new(cfg);
    s.receive(b"220 mx.example.test ESMTP\r\n");
    s.receive(ehlo);
    while s.poll_event().is_some() {}
    s
}

fn envelope(c: &mut Criterion) {
    let msg = Message {
        id: 1,
        from: "bounces+12345@sender.example.com".into(),
        rcpts: vec!["alice@example.org".into(), "bob@example.org".into(), "carol@example.org".into()],
        data: Arc::from(&b"Subject: hi\r\n\r\nhello\r\n"[..]),
        requiretls: false,
    };
    // EHLO offers PIPELINING and SIZE, no CHUNKING: the group ends in DATA.
    bench_group(c, "pipelined MAIL + RCPT x3 + DATA group", EHLO, msg);
}

/// Time one message's first write: `msg` given to a fresh session past an EHLO reply of `ehlo`.
fn bench_group(c: &mut Criterion, name: &str, ehlo: &[u8], msg: Message) {
    c.bench_function(name, |b| {
        b.iter_batched(
            || (session_after(ehlo), msg.clone()),
            |(mut s, m)| {
                s.send_message(m).unwrap();
                match s.poll_event() {
                    Some(Event::Send(bytes)) => black_box(bytes),
                    other => panic!("{other:?}"),
                }
            },
            BatchSize::SmallInput,
        )
    });
}

/// A 10 KB message with LF line ends (the worst common case: every line end is rewritten)
/// and some lines starting with a dot.
fn body_10k() -> Vec<u8> {
    let mut v = Vec::with_capacity(10 * 1024);
    let mut i = 0;
    while v.len() < 10 * 1024 - 80 {
        if i % 10 == 0 {
            v.extend_from_slice(b".");
        }
        v.extend_from_slice(b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod\n");
        i += 1;
    }
    v
}

fn encode(c: &mut Criterion) {
    let lf = body_10k();
    let crlf: Vec<u8> = {
        let mut v = Vec::new();
        mxpipe::session::normalise_into(&lf, false, &mut v);
        v
    };
    let mut g = c.benchmark_group("encode DATA body 10 KB");
    for (name, data) in [("LF line ends", &lf), ("CRLF line ends", &crlf)] {
        g.throughput(Throughput::Bytes(data.len() as u64));
        let mut out = Vec::with_capacity(16 * 1024);
        g.bench_function(name, |b| {
            b.iter(|| {
                out.clear();
                encode_data(black_box(data), &mut out);
                black_box(out.len())
            })
        });
    }
    g.finish();
}

/// An EHLO reply with PIPELINING, SIZE and CHUNKING (what the sink and most large receivers
/// offer): the whole transaction goes out as one group ending in `BDAT n LAST`.
const EHLO_CHUNKING: &[u8] =
    b"250-mx.example.test\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-8BITMIME\r\n250-CHUNKING\r\n250 ENHANCEDSTATUSCODES\r\n";

/// The daemon's benchmark message (perf/daemon.sh): about 2 KB, CRLF line ends, one recipient,
/// sent as MAIL + RCPT + BDAT LAST with the body in one write.
fn bdat_2k(c: &mut Criterion) {
    let mut body = b"From: <sender@src.bench.test>\r\nTo: <u@d1.bench.test>\r\nSubject: bench\r\n\r\n".to_vec();
    while body.len() < 2048 - 74 {
        body.extend_from_slice(b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmo\r\n");
    }
    let msg = Message {
        id: 1,
        from: "sender@src.bench.test".into(),
        rcpts: vec!["u1@d1.bench.test".into()],
        data: Arc::from(body),
        requiretls: false,
    };
    bench_group(c, "pipelined MAIL + RCPT + BDAT LAST, 2 KB CRLF body", EHLO_CHUNKING, msg);
}

criterion_group!(benches, parse_ehlo, envelope, encode, bdat_2k);
criterion_main!(benches);
