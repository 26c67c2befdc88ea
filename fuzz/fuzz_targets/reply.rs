//! `parse_reply` over arbitrary bytes, taking replies off the front as a client does with
//! pipelined replies: it must never panic, never claim more bytes than it was given, and
//! always make progress when it returns a reply.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mxpipe::reply::{parse_reply, Capabilities, MAX_REPLY_LINES};

fuzz_target!(|data: &[u8]| {
    let mut buf = data;
    while let Ok(Some((reply, n))) = parse_reply(buf) {
        assert!(n > 0 && n <= buf.len(), "consumed {n} of {}", buf.len());
        assert!((200..600).contains(&reply.code));
        assert!(!reply.lines.is_empty() && reply.lines.len() <= MAX_REPLY_LINES);
        let _ = Capabilities::from_ehlo(&reply);
        let _ = reply.one_line();
        buf = &buf[n..];
    }
});
