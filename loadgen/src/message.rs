//! The test message sent in transaction mode, and SMTP dot-stuffing (RFC 5321 §4.5.2).
//!
//! Pure code, no I/O. The body is built and dot-stuffed once per phase; each message only adds
//! its own header block (with a unique Message-ID), so a 100 KB message costs one copy, not a
//! rebuild. The body deliberately contains lines that start with `.` so a server's
//! de-stuffing is exercised too.

use std::time::{SystemTime, UNIX_EPOCH};

/// Longest body line we generate, without CRLF (RFC 5322 recommends 78, requires ≤ 998).
pub const LINE_LEN: usize = 76;

/// A message of a fixed size, ready to be sent after `354` many times over.
#[derive(Debug, Clone)]
pub struct MessageTemplate {
    /// Headers before Message-ID (From, To, Subject, Date).
    head: String,
    /// Headers after Message-ID, ending with the blank line.
    tail: String,
    /// Right-hand side of the Message-ID (`@` domain).
    domain: String,
    /// The body, already dot-stuffed, followed by the end-of-data `.` line.
    stuffed_body: Vec<u8>,
    /// Size of one message before stuffing: what the server stores.
    size: usize,
}

impl MessageTemplate {
    /// A message of `size` bytes (headers included) when `size` is larger than the headers
    /// (about 300 bytes); smaller sizes give the headers and a one-line body.
    pub fn new(size: usize, from: &str, to: &str) -> MessageTemplate {
        let domain = from.rsplit_once('@').map_or("mxpipe.test", |(_, d)| d).to_string();
        let head = format!(
            "From: <{from}>\r\nTo: <{to}>\r\nSubject: mxpipe-loadgen test message\r\nDate: {}\r\n",
            rfc5322_date(SystemTime::now())
        );
        let tail = "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n".to_string();
        let header_len = head.len() + message_id(0, &domain).len() + tail.len();
        let body = body_of(size.saturating_sub(header_len));
        let size = header_len + body.len();
        let mut stuffed_body = dot_stuff(&body);
        stuffed_body.extend_from_slice(b".\r\n");
        MessageTemplate { head, tail, domain, stuffed_body, size }
    }

    /// Size of one message as the server stores it (before dot-stuffing), for `SIZE=`.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The bytes to send after `354` for message number `seq`: headers, stuffed body and the
    /// terminating `.` line. Headers never start with `.`, so they need no stuffing.
    pub fn data(&self, seq: u64) -> Vec<u8> {
        let id = message_id(seq, &self.domain);
        let mut out = Vec::with_capacity(self.head.len() + id.len() + self.tail.len() + self.stuffed_body.len());
        out.extend_from_slice(self.head.as_bytes());
        out.extend_from_slice(id.as_bytes());
        out.extend_from_slice(self.tail.as_bytes());
        out.extend_from_slice(&self.stuffed_body);
        out
    }
}

/// Fixed width, so the header length does not depend on `seq`.
fn message_id(seq: u64, domain: &str) -> String {
    format!("Message-ID: <{seq:016x}.{:08x}@{domain}>\r\n", std::process::id())
}

/// A body of exactly `len` bytes (or `\r\n` when `len < 2`): CRLF-terminated lines of at most
/// [`LINE_LEN`] characters; every 16th line starts with a dot.
pub fn body_of(len: usize) -> Vec<u8> {
    const TEXT: &[u8] = b"The quick brown fox jumps over the lazy dog; mxpipe load generator test text. ";
    if len < 2 {
        return b"\r\n".to_vec();
    }
    let mut out = Vec::with_capacity(len);
    let mut remaining = len;
    let mut line_no = 0usize;
    while remaining > 0 {
        // Take a full line unless that would leave a single byte, which cannot end in CRLF.
        let take = match remaining {
            r if r <= LINE_LEN + 2 => r,
            r if r == LINE_LEN + 3 => LINE_LEN,
            _ => LINE_LEN + 2,
        };
        let chars = take - 2;
        for i in 0..chars {
            let b = if i == 0 && line_no % 16 == 3 { b'.' } else { TEXT[(i + line_no) % TEXT.len()] };
            out.push(b);
        }
        out.extend_from_slice(b"\r\n");
        remaining -= take;
        line_no += 1;
    }
    out
}

/// Double a `.` at the start of every line, so no line of the content reads as the
/// end-of-data marker. `data` is CRLF-terminated text; the first byte starts a line.
pub fn dot_stuff(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + data.len() / 64 + 2);
    let mut at_line_start = true;
    for &b in data {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        at_line_start = b == b'\n';
    }
    out
}

/// `Sun, 06 Nov 1994 08:49:37 +0000`, without a date crate.
pub fn rfc5322_date(t: SystemTime) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = secs / 86_400;
    let (y, m, d) = civil_from_days(days as i64);
    let s = secs % 86_400;
    format!("{}, {d:02} {} {y} {:02}:{:02}:{:02} +0000", DAYS[(days % 7) as usize], MONTHS[(m - 1) as usize], s / 3600, s / 60 % 60, s % 60)
}

/// Days since 1970-01-01 to (year, month 1-12, day 1-31); Howard Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Undo dot-stuffing up to the end-of-data line, as a server does.
    fn unstuff(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for line in data.split_inclusive(|&b| b == b'\n') {
            if line == b".\r\n" {
                return out;
            }
            out.extend_from_slice(if line.starts_with(b".") { &line[1..] } else { line });
        }
        panic!("no end-of-data line");
    }

    #[test]
    fn dot_stuffing() {
        assert_eq!(dot_stuff(b".a\r\nb.\r\n..\r\n.\r\n"), b"..a\r\nb.\r\n...\r\n..\r\n");
        assert_eq!(dot_stuff(b"no dots\r\n"), b"no dots\r\n");
        assert_eq!(dot_stuff(b""), b"");
    }

    #[test]
    fn body_sizes_and_lines() {
        for len in [0, 1, 2, 3, 77, 78, 79, 80, 81, 157, 158, 159, 1000, 100_000] {
            let b = body_of(len);
            assert_eq!(b.len(), len.max(2), "len {len}");
            assert!(b.ends_with(b"\r\n"));
            for line in b.split(|&c| c == b'\n') {
                assert!(line.len() <= 998, "line too long");
                assert!(!line.contains(&b'\r') || line.ends_with(b"\r"));
            }
        }
        assert!(body_of(2000).windows(3).any(|w| w == b"\n.T" || w == b"\n.h" || w[..2] == *b"\n."));
    }

    #[test]
    fn message_round_trips_through_stuffing() {
        let t = MessageTemplate::new(10_000, "a@x.test", "b@y.test");
        assert_eq!(t.size(), 10_000);
        let d = t.data(7);
        assert!(d.ends_with(b"\r\n.\r\n"));
        let plain = unstuff(&d);
        assert_eq!(plain.len(), 10_000);
        let text = String::from_utf8(plain).unwrap();
        assert!(text.starts_with("From: <a@x.test>\r\nTo: <b@y.test>\r\n"));
        assert!(text.contains("Message-ID: <0000000000000007."));
        assert!(text.contains("\r\n\r\n"));
        assert!(d.len() > 10_000 + 3, "body had dot lines that were stuffed");
        // Size does not depend on the sequence number.
        assert_eq!(t.data(u64::MAX).len(), d.len());
    }

    #[test]
    fn tiny_size_still_valid() {
        let t = MessageTemplate::new(10, "a@x.test", "b@y.test");
        assert!(t.size() > 10);
        assert!(t.data(0).ends_with(b"\r\n\r\n.\r\n"));
    }

    #[test]
    fn date_format() {
        let t = UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(rfc5322_date(t), "Sun, 06 Nov 1994 08:49:37 +0000");
        assert_eq!(rfc5322_date(UNIX_EPOCH), "Thu, 01 Jan 1970 00:00:00 +0000");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc5322_date(leap), "Tue, 29 Feb 2000 00:00:00 +0000");
    }
}
