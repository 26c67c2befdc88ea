//! The intake's directive fields (`X-Mxpipe-Pool`, `X-Mxpipe-Dkim`) and the From-domain
//! reader over arbitrary messages: never a panic; what is taken out is only directive fields
//! (the result is never longer, its body is the input's body byte for byte, and taking again
//! finds nothing); a From domain, when found, is a lowercase A-label.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mxpipe::inject::directives;

fuzz_target!(|data: &[u8]| {
    let _ = mxpipe::dkim::from_domain(data).map(|d| assert!(d.is_ascii() && d == d.to_ascii_lowercase(), "{d:?}"));
    let Ok((d, out)) = directives::take(data) else { return };
    let Some(out) = out else {
        assert!(d.pool.is_none() && d.dkim.is_none());
        return;
    };
    assert!(out.len() <= data.len());
    if let Ok((again, _)) = directives::take(&out) {
        assert!(again.pool.is_none() && again.dkim.is_none(), "taken twice: {again:?}");
    }
});
