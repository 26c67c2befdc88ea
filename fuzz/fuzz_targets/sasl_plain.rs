//! `decode_plain` over arbitrary client responses. Beyond never panicking: a response it
//! accepts is canonical base64 of `authzid NUL authcid NUL password`, so encoding the decoded
//! fields gives the response back; the fields obey RFC 4616's limits; and a response refused
//! as "not base64" really is not base64.
#![no_main]

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use libfuzzer_sys::fuzz_target;
use mxpipe::auth::{decode_plain, PlainError, MAX_FIELD};

fuzz_target!(|data: &[u8]| {
    match decode_plain(data) {
        Ok(p) => {
            assert!(!p.authcid.is_empty() && !p.password.is_empty());
            for f in [p.authzid.as_bytes(), p.authcid.as_bytes(), &p.password] {
                assert!(f.len() <= MAX_FIELD && !f.contains(&0), "field {f:?}");
            }
            let again = [p.authzid.as_bytes(), b"\0", p.authcid.as_bytes(), b"\0", &p.password].concat();
            assert_eq!(B64.encode(&again).as_bytes(), data, "decoded fields do not re-encode to the response");
            let acts_as_self = p.authzid.is_empty() || p.authzid == p.authcid;
            assert_eq!(p.user(), acts_as_self.then_some(p.authcid.as_str()));
        }
        Err(PlainError::Base64) => assert!(data != b"=" && B64.decode(data).is_err()),
        Err(PlainError::Malformed) => {}
    }
});
