//! A `ClientSession` with one message submitted, fed arbitrary server bytes in chunks whose
//! size comes from the first byte, answering its events as a driver would. It must never
//! panic, and every message must end `Done` (one outcome per recipient) or be handed back.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use mxpipe::session::{ClientSession, Event, Message, SessionConfig, TlsMode};

fn message(id: u64) -> Message {
    Message {
        id,
        from: "a@x.test".into(),
        rcpts: vec!["b@y.test".into(), "c@y.test".into()],
        data: Arc::from(&b"Subject: fuzz\n\n.dot\r\nbody\r"[..]),
        // Some messages ask for REQUIRETLS: refused locally or sent with it, still Done.
        requiretls: id % 3 == 0,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, input)) = data.split_first() else { return };
    let tls = match sel & 3 {
        0 => TlsMode::None,
        1 => TlsMode::Implicit,
        2 => TlsMode::Starttls { required: false },
        _ => TlsMode::Starttls { required: true },
    };
    let cfg = SessionConfig { tls, pipelining: sel & 4 == 0, prefer_bdat: sel & 8 == 0, ..SessionConfig::new("fuzz.test") };
    let step = usize::from(sel >> 4) + 1;
    let mut s = ClientSession::new(cfg);
    let mut submitted = 1u64;
    let (mut done, mut returned) = (0u64, 0u64);
    s.send_message(message(1)).expect("a new session takes a message");
    let pump = |s: &mut ClientSession, submitted: &mut u64, done: &mut u64, returned: &mut u64| {
        while let Some(ev) = s.poll_event() {
            match ev {
                Event::StartTls => s.tls_ready(),
                Event::Ready if *submitted < 3 => {
                    *submitted += 1;
                    if s.send_message(message(*submitted)).is_err() {
                        *returned += 1;
                    }
                }
                Event::Ready => s.quit(),
                Event::Done(o) => {
                    assert_eq!(o.rcpts.len(), 2);
                    *done += 1;
                }
                Event::Failed(_) | Event::Closed => *returned += s.unfinished().len() as u64,
                Event::Send(b) => s.recycle(b),
            }
        }
    };
    for chunk in input.chunks(step) {
        s.receive(chunk);
        pump(&mut s, &mut submitted, &mut done, &mut returned);
        let _ = s.timeout();
    }
    s.receive_eof();
    pump(&mut s, &mut submitted, &mut done, &mut returned);
    assert_eq!(done + returned, submitted, "a message was lost");
});
