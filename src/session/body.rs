//! Message body encoding for the wire: CRLF normalisation, dot-stuffing (RFC 5321 §4.5.2) and
//! the DATA terminator.
//!
//! This is the per-byte hot path of delivery, so it is one pass with `memchr2` over the line
//! ends, copying whole lines between them into one caller-owned `Vec` (which the session
//! recycles between messages). [`normalised_len`] is a count-only pass so the size can be
//! written into `MAIL FROM ... SIZE=` and `BDAT n` before the body is.

use memchr::memchr2_iter;

/// Length of `data` after [`normalise_into`] without dot-stuffing: bare CR and bare LF each
/// become CRLF, and a non-empty body that does not end in a line ending gets a CRLF.
///
/// This is the number sent as `SIZE=` (RFC 1870 counts CRLF line ends, before stuffing) and
/// as the `BDAT` chunk size (RFC 3030).
pub fn normalised_len(data: &[u8]) -> usize {
    let mut n = data.len();
    for pos in memchr2_iter(b'\r', b'\n', data) {
        match data[pos] {
            b'\n' if pos == 0 || data[pos - 1] != b'\r' => n += 1,
            b'\r' if data.get(pos + 1) != Some(&b'\n') => n += 1,
            _ => {}
        }
    }
    if matches!(data.last(), Some(b) if *b != b'\n' && *b != b'\r') {
        n += 2;
    }
    n
}

/// Append `data` to `out` with every line ending as CRLF (a bare CR or bare LF becomes CRLF;
/// CRLF stays), ending in CRLF when non-empty, and with `dot_stuff` a '.' doubled at the start
/// of every line. Without `dot_stuff` exactly [`normalised_len`]`(data)` bytes are appended.
pub fn normalise_into(data: &[u8], dot_stuff: bool, out: &mut Vec<u8>) {
    // Most bodies are already CRLF; stuffing adds a byte per dot-line, which is rare.
    out.reserve(data.len() + data.len() / 64 + 8);
    if dot_stuff && data.first() == Some(&b'.') {
        out.push(b'.');
    }
    let mut start = 0;
    for pos in memchr2_iter(b'\r', b'\n', data) {
        if pos < start {
            // The LF of a CRLF already taken with its CR.
            continue;
        }
        out.extend_from_slice(&data[start..pos]);
        out.extend_from_slice(b"\r\n");
        start = if data[pos] == b'\r' && data.get(pos + 1) == Some(&b'\n') { pos + 2 } else { pos + 1 };
        if dot_stuff && data.get(start) == Some(&b'.') {
            out.push(b'.');
        }
    }
    if start < data.len() {
        out.extend_from_slice(&data[start..]);
        out.extend_from_slice(b"\r\n");
    }
}

/// Append the whole DATA payload: the normalised, dot-stuffed body and the `.` line.
pub fn encode_data(data: &[u8], out: &mut Vec<u8>) {
    normalise_into(data, true, out);
    out.extend_from_slice(b".\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(s: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        encode_data(s, &mut v);
        v
    }

    fn plain(s: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        normalise_into(s, false, &mut v);
        assert_eq!(v.len(), normalised_len(s), "{s:?}");
        v
    }

    #[test]
    fn data_fixtures() {
        assert_eq!(data(b".\n"), b"..\r\n.\r\n");
        assert_eq!(data(b"\r"), b"\r\n.\r\n");
        assert_eq!(data(b"a\nb"), b"a\r\nb\r\n.\r\n");
        assert_eq!(data(b"no newline"), b"no newline\r\n.\r\n");
        assert_eq!(data(b""), b".\r\n");
        assert_eq!(data(b"a\r\n.b\r\n..c\n.\r\n"), b"a\r\n..b\r\n...c\r\n..\r\n.\r\n");
        assert_eq!(data(b"x\r\r\ny\n\nz"), b"x\r\n\r\ny\r\n\r\nz\r\n.\r\n");
        assert_eq!(data(b"a\r.b"), b"a\r\n..b\r\n.\r\n");
        assert_eq!(data(b"\n.\n"), b"\r\n..\r\n.\r\n");
    }

    #[test]
    fn bdat_fixtures_are_not_stuffed() {
        assert_eq!(plain(b".\n"), b".\r\n");
        assert_eq!(plain(b"\r"), b"\r\n");
        assert_eq!(plain(b"a\nb"), b"a\r\nb\r\n");
        assert_eq!(plain(b""), b"");
        assert_eq!(plain(b"a\r\n"), b"a\r\n");
        assert_eq!(plain(b"\r\n\r"), b"\r\n\r\n");
    }

    #[test]
    fn length_matches_output_on_pseudo_random_input() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..2000 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let len = (x >> 56) as usize;
            let mut v = Vec::with_capacity(len);
            for _ in 0..len {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                v.push(b"ab.\r\n\x80"[((x >> 33) % 6) as usize]);
            }
            let p = plain(&v);
            // Every CR in the output is followed by LF and every LF preceded by CR.
            for (i, &b) in p.iter().enumerate() {
                if b == b'\r' {
                    assert_eq!(p.get(i + 1), Some(&b'\n'));
                }
                if b == b'\n' {
                    assert!(i > 0 && p[i - 1] == b'\r');
                }
            }
            let d = data(&v);
            assert!(d.ends_with(b".\r\n"));
            assert!(!d[..d.len() - 3].windows(5).any(|w| w == b"\r\n.\r\n"), "{v:?}");
        }
    }
}
