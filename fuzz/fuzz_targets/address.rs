//! The address parser over arbitrary strings (UTF-8 ones included, RFC 6531): it must never
//! panic, and an address it accepts must be safe and stable: its written form holds no control
//! character and no angle bracket, fits the RFC 5321 bounds in both its forms, parses back to
//! the same address, needs SMTPUTF8 exactly when it is not ASCII, and has an ASCII form
//! exactly when it does not need SMTPUTF8 (with the domain as the A-label it is routed by).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mxpipe::address::{Mailbox, MAX_LOCAL, MAX_MAILBOX};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let Ok(m) = Mailbox::parse(s) else { return };
    let written = m.to_string();
    assert!(!written.chars().any(|c| c.is_control() || c == '<' || c == '>'), "{written:?}");
    assert!(written.len() <= MAX_MAILBOX && m.local().len() <= MAX_LOCAL, "{written:?}");
    assert_eq!(Mailbox::parse(&written).as_ref(), Ok(&m), "{written:?} parses back");
    assert_eq!(m.needs_smtputf8(), !written.is_ascii(), "{written:?}");
    match m.to_ascii() {
        Ok(a) => {
            assert!(!m.needs_smtputf8() && a.is_ascii() && a.len() <= MAX_MAILBOX, "{a:?}");
            assert!(a.ends_with(&format!("@{}", m.domain())), "{a:?}");
        }
        Err(_) => assert!(m.needs_smtputf8()),
    }
});
