//! The HTTP API's injection body parser over arbitrary bytes. Beyond never panicking: what it
//! accepts is a JSON object; a single message (no `messages` key) gives exactly one message;
//! every error has a message for the client; and the messages it returns, written back as a
//! batch, parse to the same messages (nothing is lost or altered on the way in).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mxpipe::inject::http::{parse_inject, NewMessage};

fn fields(m: &[NewMessage]) -> Vec<(&str, &[String], &str)> {
    m.iter().map(|m| (m.from.as_str(), &m.to[..], m.data.as_str())).collect()
}

fuzz_target!(|data: &[u8]| {
    match parse_inject(data) {
        Ok(msgs) => {
            let v: serde_json::Value = serde_json::from_slice(data).expect("accepted input is JSON");
            assert!(v.is_object());
            if v.get("messages").is_none() {
                assert_eq!(msgs.len(), 1);
            }
            let batch = serde_json::json!({
                "messages": msgs.iter().map(|m| serde_json::json!({"from": m.from, "to": m.to, "data": m.data})).collect::<Vec<_>>()
            });
            let again = parse_inject(batch.to_string().as_bytes()).expect("a written-back batch parses");
            assert_eq!(fields(&again), fields(&msgs));
        }
        Err(e) => assert!(!e.is_empty()),
    }
});
