//! SMTP reply parsing (RFC 5321 §4.2, RFC 3463 enhanced status codes, RFC 5321 §4.1.1.1 EHLO
//! keywords).
//!
//! Pure functions over bytes: no I/O, no allocation beyond the parsed reply, so the client
//! state machines (the load generator today, the delivery session later) and the fuzz target
//! share one parser. Parsing is incremental: [`parse_reply`] returns `Ok(None)` until the last
//! line of a reply has arrived, and says how many bytes it consumed so pipelined replies that
//! arrive in one read are taken one at a time.

use std::fmt;

/// Longest reply line accepted. RFC 5321 allows 512 octets; real servers exceed it with long
/// EHLO keywords or diagnostic text, so we are lenient but bounded.
pub const MAX_REPLY_LINE: usize = 8192;
/// Most lines in one multi-line reply; bounds memory against a server that never ends a reply.
pub const MAX_REPLY_LINES: usize = 256;

/// An RFC 3463 enhanced status code such as `2.0.0` or `5.7.1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EnhancedCode {
    /// 2 (success), 4 (transient failure) or 5 (permanent failure), as the reply code's first digit.
    pub class: u8,
    /// What the code is about: 1 addressing, 2 mailbox, 3 mail system, 4 network, 5 protocol, 6 content, 7 security.
    pub subject: u16,
    /// The specific condition within the subject.
    pub detail: u16,
}

impl fmt::Display for EnhancedCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

/// One complete SMTP reply, possibly multi-line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit reply code, e.g. 250.
    pub code: u16,
    /// The enhanced status code from the first line's text, when the server sent one.
    pub enhanced: Option<EnhancedCode>,
    /// The text of each line after the code and separator, without the line ending; the
    /// enhanced code, when present, stays in the text so the reply can be logged as received.
    pub lines: Vec<String>,
}

impl Reply {
    /// 2xx: the command succeeded.
    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }
    /// 3xx: the server waits for more (354 after DATA, 334 during AUTH).
    pub fn is_intermediate(&self) -> bool {
        (300..400).contains(&self.code)
    }
    /// 4xx: temporary failure, retry later.
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }
    /// 5xx: permanent failure.
    pub fn is_permanent(&self) -> bool {
        (500..600).contains(&self.code)
    }
    /// The reply on one line, as a log or an outcome record shows it: `250 2.0.0 Ok`.
    pub fn one_line(&self) -> String {
        let mut s = self.code.to_string();
        for l in &self.lines {
            s.push(' ');
            s.push_str(l);
        }
        s
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.one_line())
    }
}

/// Why bytes from a server are not an SMTP reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    /// A line is not a 3-digit code 2xx-5xx followed by a space or hyphen (its first 80 bytes, lossily decoded).
    #[error("malformed reply line (expected a 3-digit code 2xx-5xx): {0:?}")]
    BadLine(String),
    /// The lines of one multi-line reply carry different codes.
    #[error("multi-line reply changes code from {first} to {later}")]
    MixedCodes {
        /// The code of the first line.
        first: u16,
        /// The first code that differs from it.
        later: u16,
    },
    /// A line exceeded [`MAX_REPLY_LINE`] bytes without ending.
    #[error("reply line longer than {MAX_REPLY_LINE} bytes")]
    LineTooLong,
    /// A multi-line reply went past [`MAX_REPLY_LINES`] lines.
    #[error("reply has more than {MAX_REPLY_LINES} lines")]
    TooManyLines,
}

/// Parse one reply from the front of `buf`.
///
/// Returns `Ok(Some((reply, consumed)))` when a complete reply is present, `Ok(None)` when more
/// bytes are needed, and an error when the bytes cannot be a reply. Lines end in CRLF; a bare
/// LF is tolerated because some servers send it.
pub fn parse_reply(buf: &[u8]) -> Result<Option<(Reply, usize)>, ReplyError> {
    let mut pos = 0;
    let mut code: Option<u16> = None;
    let mut lines = Vec::new();
    loop {
        let rest = &buf[pos..];
        let Some(nl) = memchr(b'\n', rest) else {
            if rest.len() > MAX_REPLY_LINE {
                return Err(ReplyError::LineTooLong);
            }
            return Ok(None);
        };
        if nl > MAX_REPLY_LINE {
            return Err(ReplyError::LineTooLong);
        }
        let mut line = &rest[..nl];
        if line.last() == Some(&b'\r') {
            line = &line[..line.len() - 1];
        }
        pos += nl + 1;
        let (this_code, last, text) = split_line(line)?;
        match code {
            None => code = Some(this_code),
            Some(c) if c != this_code => return Err(ReplyError::MixedCodes { first: c, later: this_code }),
            _ => {}
        }
        lines.push(String::from_utf8_lossy(text).into_owned());
        if last {
            let code = this_code;
            let enhanced = parse_enhanced(&lines[0], code);
            return Ok(Some((Reply { code, enhanced, lines }, pos)));
        }
        if lines.len() >= MAX_REPLY_LINES {
            return Err(ReplyError::TooManyLines);
        }
    }
}

/// Split `250-text` / `250 text` / `250` into (code, is_last_line, text).
fn split_line(line: &[u8]) -> Result<(u16, bool, &[u8]), ReplyError> {
    let bad = || ReplyError::BadLine(String::from_utf8_lossy(&line[..line.len().min(80)]).into_owned());
    if line.len() < 3 || !line[..3].iter().all(u8::is_ascii_digit) {
        return Err(bad());
    }
    let (d0, d1) = (line[0] - b'0', line[1] - b'0');
    if !(2..=5).contains(&d0) || d1 > 5 {
        return Err(bad());
    }
    let code = u16::from(d0) * 100 + u16::from(d1) * 10 + u16::from(line[2] - b'0');
    match line.get(3) {
        None => Ok((code, true, &[])),
        Some(b' ') => Ok((code, true, &line[4..])),
        Some(b'-') => Ok((code, false, &line[4..])),
        Some(_) => Err(bad()),
    }
}

/// Read an RFC 3463 code at the start of `text`; its class must agree with the reply code.
fn parse_enhanced(text: &str, code: u16) -> Option<EnhancedCode> {
    EnhancedCode::parse(text.split(' ').next()?).filter(|e| u16::from(e.class) == code / 100)
}

impl EnhancedCode {
    /// Parse `class.subject.detail` (class 2, 4 or 5; subject and detail up to 999).
    pub fn parse(word: &str) -> Option<EnhancedCode> {
        let mut it = word.split('.');
        // One to three ASCII digits each ("+1" or "0001" are not codes).
        let mut part = || -> Option<u16> {
            let s = it.next()?;
            if s.is_empty() || s.len() > 3 || !s.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            s.parse().ok()
        };
        let (class, subject, detail) = (part()?, part()?, part()?);
        if it.next().is_some() || !matches!(class, 2 | 4 | 5) {
            return None;
        }
        Some(EnhancedCode { class: class as u8, subject, detail })
    }
}

/// The extensions a server announced in its EHLO reply that a client acts on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// `PIPELINING` (RFC 2920): commands may be sent without waiting for each reply.
    pub pipelining: bool,
    /// `STARTTLS` (RFC 3207): the session can be upgraded to TLS.
    pub starttls: bool,
    /// `8BITMIME` (RFC 6152): the body may contain 8-bit data.
    pub eightbitmime: bool,
    /// `CHUNKING` (RFC 3030): `BDAT` may be used instead of `DATA`.
    pub chunking: bool,
    /// `ENHANCED-STATUSCODES` (RFC 2034): replies carry RFC 3463 codes.
    pub enhanced_status_codes: bool,
    /// `SMTPUTF8` (RFC 6531): addresses and headers may be UTF-8.
    pub smtputf8: bool,
    /// `SIZE n`: the most the server accepts; `Some(0)` means announced without a limit.
    pub size: Option<u64>,
    /// `REQUIRETLS` (RFC 8689): the server takes `MAIL FROM:<..> REQUIRETLS` and promises to
    /// relay such a message only the same way. Servers offer it only once TLS is active.
    pub requiretls: bool,
}

impl Capabilities {
    /// Read the keywords from the lines after the first (which is the server's greeting).
    pub fn from_ehlo(reply: &Reply) -> Capabilities {
        let mut caps = Capabilities::default();
        for line in reply.lines.iter().skip(1) {
            let mut words = line.split_ascii_whitespace();
            let Some(kw) = words.next() else { continue };
            match kw.to_ascii_uppercase().as_str() {
                "PIPELINING" => caps.pipelining = true,
                "STARTTLS" => caps.starttls = true,
                "8BITMIME" => caps.eightbitmime = true,
                "CHUNKING" => caps.chunking = true,
                "ENHANCEDSTATUSCODES" => caps.enhanced_status_codes = true,
                "SMTPUTF8" => caps.smtputf8 = true,
                "REQUIRETLS" => caps.requiretls = true,
                "SIZE" => caps.size = Some(words.next().and_then(|n| n.parse().ok()).unwrap_or(0)),
                _ => {}
            }
        }
        caps
    }
}

/// Position of `needle` in `hay`. The std slice search is a plain loop; this stays small and
/// dependency-free and is only used on short reply lines.
pub(crate) fn memchr(needle: u8, hay: &[u8]) -> Option<usize> {
    hay.iter().position(|&b| b == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(s: &str) -> Reply {
        let (r, n) = parse_reply(s.as_bytes()).unwrap().unwrap();
        assert_eq!(n, s.len());
        r
    }

    #[test]
    fn single_line_with_enhanced_code() {
        let r = one("250 2.1.0 Ok\r\n");
        assert_eq!(r.code, 250);
        assert_eq!(r.enhanced, Some(EnhancedCode { class: 2, subject: 1, detail: 0 }));
        assert_eq!(r.lines, vec!["2.1.0 Ok"]);
        assert_eq!(r.one_line(), "250 2.1.0 Ok");
    }

    #[test]
    fn code_only_line_is_complete() {
        let r = one("354\r\n");
        assert_eq!(r.code, 354);
        assert!(r.is_intermediate());
        assert_eq!(r.lines, vec![""]);
    }

    #[test]
    fn multi_line_ehlo_and_capabilities() {
        let r = one("250-mx.example.test\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-starttls\r\n250-8BITMIME\r\n250 CHUNKING\r\n");
        assert_eq!(r.lines.len(), 6);
        let c = Capabilities::from_ehlo(&r);
        assert!(c.pipelining && c.starttls && c.eightbitmime && c.chunking);
        assert!(!c.enhanced_status_codes);
        assert_eq!(c.size, Some(10_240_000));
    }

    #[test]
    fn greeting_line_is_not_a_capability() {
        // A server named "starttls" must not make the client think STARTTLS is offered.
        let r = one("250-STARTTLS\r\n250 PIPELINING\r\n");
        assert!(!Capabilities::from_ehlo(&r).starttls);
    }

    #[test]
    fn incomplete_needs_more() {
        assert_eq!(parse_reply(b"250-a\r\n250-b\r\n").unwrap(), None);
        assert_eq!(parse_reply(b"250 partial").unwrap(), None);
        assert_eq!(parse_reply(b"").unwrap(), None);
    }

    #[test]
    fn pipelined_replies_are_taken_one_at_a_time() {
        let buf = b"250 2.1.0 Ok\r\n550 5.1.1 No such user\r\n354 go\r\n";
        let (a, n) = parse_reply(buf).unwrap().unwrap();
        let (b, m) = parse_reply(&buf[n..]).unwrap().unwrap();
        let (c, _) = parse_reply(&buf[n + m..]).unwrap().unwrap();
        assert_eq!((a.code, b.code, c.code), (250, 550, 354));
        assert!(b.is_permanent());
        assert_eq!(b.enhanced.unwrap().to_string(), "5.1.1");
    }

    #[test]
    fn bare_lf_tolerated() {
        assert_eq!(one("221 bye\n").code, 221);
    }

    #[test]
    fn malformed_lines_are_errors() {
        for bad in ["hello\r\n", "25\r\n", "2500 x\r\n", "199 x\r\n", "260 x\r\n", "abc x\r\n", "250x\r\n"] {
            assert!(matches!(parse_reply(bad.as_bytes()), Err(ReplyError::BadLine(_))), "{bad:?}");
        }
    }

    #[test]
    fn mixed_codes_rejected() {
        assert_eq!(parse_reply(b"250-a\r\n251 b\r\n"), Err(ReplyError::MixedCodes { first: 250, later: 251 }));
    }

    #[test]
    fn enhanced_code_must_match_class() {
        assert_eq!(one("250 5.0.0 odd\r\n").enhanced, None);
        assert_eq!(one("451 4.3.0 busy\r\n").enhanced.unwrap().class, 4);
        assert_eq!(one("250 1.2.3.4 x\r\n").enhanced, None);
    }

    #[test]
    fn enhanced_code_parse_is_strict() {
        assert_eq!(EnhancedCode::parse("4.7.28"), Some(EnhancedCode { class: 4, subject: 7, detail: 28 }));
        for bad in ["", "4.7", "4.7.28.1", "3.1.1", "+4.1.1", "4.0001.1", "4..1", "x.1.1", "4.1.1000"] {
            assert_eq!(EnhancedCode::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn bounded_line_and_line_count() {
        let long = vec![b'2'; MAX_REPLY_LINE + 10];
        assert_eq!(parse_reply(&long), Err(ReplyError::LineTooLong));
        let many = "250-x\r\n".repeat(MAX_REPLY_LINES + 1);
        assert_eq!(parse_reply(many.as_bytes()), Err(ReplyError::TooManyLines));
    }
}
