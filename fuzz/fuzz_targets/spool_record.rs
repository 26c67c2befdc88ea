//! The spool's record decoder over arbitrary bytes, as recovery reads a frame body. The first
//! byte picks the input: even, the rest as raw records taken off the front one by one (length
//! and checksum as given); odd, the rest as one payload behind a correct header, so that the
//! fuzzer gets past the checksum to the payload decoder. Beyond never panicking: a record is
//! never longer than its input, and every record that decodes encodes to the same bytes (the
//! format has one encoding per record, so recovery reads what the writer wrote).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mxpipe::queue::spool::{fuzz_reencode, fuzz_seal};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    if mode & 1 == 0 {
        let mut buf = rest;
        while let Some((len, again)) = fuzz_reencode(buf) {
            assert!(len >= 8 && len <= buf.len(), "record of {len} bytes in {}", buf.len());
            if let Some(again) = again {
                assert_eq!(again, &buf[..len], "a decoded record encodes differently");
            }
            buf = &buf[len..];
        }
    } else {
        let rec = fuzz_seal(rest);
        let (len, again) = fuzz_reencode(&rec).expect("a sealed payload is a whole record");
        assert_eq!(len, rec.len());
        if let Some(again) = again {
            assert_eq!(again, rec, "a decoded record encodes differently");
        }
    }
});
