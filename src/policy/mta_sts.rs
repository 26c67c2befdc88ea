//! MTA-STS (RFC 8461): the `_mta-sts` TXT record, the policy file, and MX host matching.
//!
//! This module owns the *syntax and meaning* of MTA-STS: what a TXT record or a policy body
//! says, and whether an MX host name is covered by a policy. It is pure: no sockets, no DNS,
//! no clock, no cache. Fetching the policy over HTTPS is [`fetch`]; looking up the TXT record
//! and the policy host's addresses is [`crate::resolve::MxResolver`]; when to refetch, how long
//! to keep a policy and how it composes with the MX prefix and DANE belong to the caller (see
//! `mx-prefix-policy.md`). This module must not do any of those.
//!
//! Where the RFC's grammar and robustness pull apart, the parsers follow the grammar, with
//! three documented exceptions that cannot change what a policy means: blank lines and a
//! leading UTF-8 byte-order mark in the policy body are skipped, and a trailing dot on an `mx`
//! pattern is dropped (matching ignores a trailing dot on host names too). Rejecting those would
//! only turn a domain's protection off.

pub mod fetch;

use std::fmt;

use serde::{Deserialize, Serialize};

/// Largest `max_age` a policy may carry, in seconds (RFC 8461 §3.2: about one year).
pub const MAX_MAX_AGE: u32 = 31_557_600;

/// Most lines a policy body may have. Real policies have a handful (one per MX pattern); a bound
/// keeps a hostile body from costing more than a glance.
pub const MAX_POLICY_LINES: usize = 1000;

/// Longest line of a policy body, in bytes, without its line ending. An `mx` line is at most
/// `mx: *.` and a 253-character name; extension fields get room to spare.
pub const MAX_LINE_LEN: usize = 1000;

/// Longest TXT record (its character-strings joined) that is parsed. An STS record is
/// `v=STSv1; id=` and 32 characters, plus any extensions; anything this long is not one.
pub const MAX_TXT_LEN: usize = 2048;

/// Why a TXT record or a policy body is not a usable MTA-STS policy.
///
/// RFC 8461 says a sender that meets any of these "MUST assume the recipient domain does not
/// have an available MTA-STS policy" (for a TXT record) or treat the fetch as failed (for a
/// policy body); the message says what the domain's operator has to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StsError {
    /// More than one TXT record at `_mta-sts` begins with `v=STSv1`.
    #[error("{0} TXT records at _mta-sts begin with v=STSv1; exactly one must (RFC 8461 §3.1), so the domain has no usable policy")]
    MultipleTxt(usize),
    /// The one `v=STSv1` TXT record does not follow the §3.1 grammar.
    #[error("invalid _mta-sts TXT record {record:?}: {reason}")]
    InvalidTxt {
        /// The record, shortened to a length fit for a log line.
        record: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The policy body is longer than [`MAX_POLICY_LINES`] lines.
    #[error("policy has more than {MAX_POLICY_LINES} lines")]
    TooManyLines,
    /// A line of the policy body does not follow the §3.2 grammar.
    #[error("policy line {line}: {reason}")]
    InvalidLine {
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// A field the policy must have is absent.
    #[error("policy has no `{field}` line{hint}")]
    Missing {
        /// The field name (`version`, `mode`, `max_age` or `mx`).
        field: &'static str,
        /// Extra advice (empty, or starting with a separator).
        hint: String,
    },
}

/// The parsed `_mta-sts.<domain>` TXT record: only the policy id matters to a sender, which
/// refetches the policy when the id changes (RFC 8461 §5.1).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StsTxt {
    /// 1 to 32 ASCII letters and digits, compared as is (case-sensitive).
    pub id: String,
}

/// What a policy asks of senders (RFC 8461 §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Deliver only to matching MX hosts over TLS with a valid WebPKI certificate.
    Enforce,
    /// Check as for `enforce` and report failures (TLS-RPT), but deliver anyway.
    Testing,
    /// The domain has withdrawn its policy: act as if there were none.
    None,
}

impl Mode {
    /// The name as written in a policy and in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Testing => "testing",
            Mode::None => "none",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A parsed MTA-STS policy (RFC 8461 §3.2). Serializable, so that a cache can keep it beside
/// the spool across restarts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StsPolicy {
    /// What the policy asks of senders.
    pub mode: Mode,
    /// MX host patterns, lower case, no trailing dot: `mx1.example.com` or `*.example.com`.
    /// At least one unless `mode` is `none`.
    pub mx: Vec<String>,
    /// How long the policy may be cached, in seconds, at most [`MAX_MAX_AGE`].
    pub max_age: u32,
}

impl StsPolicy {
    /// Whether MX host `mx_host` is covered by one of the policy's `mx` patterns (RFC 8461
    /// §4.1). Case is ignored, and so is a trailing dot. `*.example.com` covers a host with
    /// exactly one more label on the left (`mx1.example.com`), neither `example.com` itself
    /// nor `a.b.example.com`; that is narrower than [`crate::value::MxPattern`], which is why
    /// this does not reuse it.
    pub fn matches(&self, mx_host: &str) -> bool {
        let host = mx_host.strip_suffix('.').unwrap_or(mx_host);
        if host.is_empty() {
            return false;
        }
        self.mx.iter().any(|pattern| pattern_matches(pattern, host))
    }
}

/// One `mx` pattern (lower case, no trailing dot) against a host without its trailing dot.
fn pattern_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix("*.") {
        // The wildcard is one whole label: split the host at its first dot and compare the rest.
        Some(suffix) => match host.split_once('.') {
            Some((first, rest)) => !first.is_empty() && rest.eq_ignore_ascii_case(suffix),
            None => false,
        },
        None => host.eq_ignore_ascii_case(pattern),
    }
}

/// The STS record among the TXT records at `_mta-sts.<domain>`, each given with its
/// character-strings already joined.
///
/// Records that do not begin with `v=STSv1` (followed by `;`, whitespace or nothing) are
/// someone else's and are ignored. `Ok(None)`: no STS record, the domain has no policy.
/// More than one STS record, or one that breaks the §3.1 grammar, is an error; the RFC says
/// the sender must then assume there is no policy, and the error says why for the report.
pub fn parse_txt(records: &[String]) -> Result<Option<StsTxt>, StsError> {
    let mut sts = records.iter().filter(|r| is_sts_record(r));
    let Some(first) = sts.next() else { return Ok(None) };
    let others = sts.count();
    if others > 0 {
        return Err(StsError::MultipleTxt(others + 1));
    }
    parse_sts_record(first).map(Some)
}

/// `v=STSv1` exactly (case-sensitive, RFC 8461 uses %s), then the end or a delimiter, so that a
/// hypothetical `v=STSv10` is not mistaken for version 1.
fn is_sts_record(record: &str) -> bool {
    match record.strip_prefix("v=STSv1") {
        Some(rest) => rest.is_empty() || rest.starts_with([';', ' ', '\t']),
        None => false,
    }
}

/// §3.1: `v=STSv1` 1*(*WSP ";" *WSP field) [*WSP ";" *WSP], where a field is `id=` and 1 to
/// 32 letters or digits, or an extension `name=value`.
fn parse_sts_record(record: &str) -> Result<StsTxt, StsError> {
    let invalid = |reason: String| StsError::InvalidTxt { record: shorten(record), reason };
    if record.len() > MAX_TXT_LEN {
        return Err(invalid(format!("longer than {MAX_TXT_LEN} bytes")));
    }
    // is_sts_record() has checked the prefix.
    let rest = record.strip_prefix("v=STSv1").unwrap_or_default();
    let mut pieces = rest.split(';');
    // Before the first ';' only whitespace may follow the version.
    if pieces.next().is_some_and(|p| !p.trim_matches(is_wsp).is_empty()) {
        return Err(invalid("the version must be followed by \";\"".into()));
    }
    let pieces: Vec<&str> = pieces.map(|p| p.trim_matches(is_wsp)).collect();
    let mut id = None;
    for (i, field) in pieces.iter().enumerate() {
        if field.is_empty() {
            // Only the very last piece may be empty: a trailing ";" is allowed, ";;" is not.
            if i + 1 == pieces.len() && i > 0 {
                continue;
            }
            return Err(invalid("empty field (\";;\", or nothing after \"v=STSv1;\")".into()));
        }
        let Some((name, value)) = field.split_once('=') else {
            return Err(invalid(format!("field {:?} has no \"=\"", shorten(field))));
        };
        if name == "id" {
            if id.is_some() {
                return Err(invalid("more than one id field".into()));
            }
            if value.is_empty() || value.len() > 32 || !value.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return Err(invalid(format!("id {:?} must be 1 to 32 letters and digits", shorten(value))));
            }
            id = Some(value.to_owned());
        } else {
            if !is_ext_name(name) {
                return Err(invalid(format!("{:?} is not a valid field name", shorten(name))));
            }
            // sts-ext-value: 1*(%x21-3A / %x3C / %x3E-7E): visible ASCII but ";" and "=".
            if value.is_empty() || !value.bytes().all(|b| matches!(b, 0x21..=0x3a | 0x3c | 0x3e..=0x7e)) {
                return Err(invalid(format!("field {name:?} has an empty value or one with spaces, \"=\" or non-ASCII")));
            }
        }
    }
    match id {
        Some(id) => Ok(StsTxt { id }),
        None => Err(invalid("no id field (\"id=\" and 1 to 32 letters and digits)".into())),
    }
}

/// §3.1 `sts-ext-name` and §3.2 `sts-policy-ext-name`: a letter or digit, then up to 31
/// letters, digits, `_`, `-` or `.`.
fn is_ext_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 32
        && b[0].is_ascii_alphanumeric()
        && b[1..].iter().all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.'))
}

fn is_wsp(c: char) -> bool {
    c == ' ' || c == '\t'
}

/// A prefix of untrusted text for an error message: errors end up in logs and reports.
fn shorten(s: &str) -> String {
    const MAX: usize = 80;
    if s.len() <= MAX {
        return s.to_owned();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// Parse a policy body (RFC 8461 §3.2): `key: value` lines ended by LF or CRLF, in any order.
///
/// `version: STSv1`, `mode` and `max_age` must each appear exactly once (the grammar's
/// "required once"; a second one would make the policy ambiguous); `mx` at least once unless
/// the mode is `none`. Field names and the values of `version` and `mode` are case-sensitive,
/// as the RFC's `%s` strings are: `Mode: enforce` is an unknown field, and unknown fields are
/// ignored (they must still be well-formed lines). Errors name the line.
pub fn parse_policy(body: &[u8]) -> Result<StsPolicy, StsError> {
    let body = body.strip_prefix(b"\xef\xbb\xbf").unwrap_or(body);
    let mut version = None;
    let mut mode = None;
    let mut max_age = None;
    let mut mx = Vec::new();
    let mut near_miss: Option<(usize, String)> = None;

    let mut lines = body.split(|&b| b == b'\n');
    for (i, raw) in (&mut lines).take(MAX_POLICY_LINES).enumerate() {
        let n = i + 1;
        let bad = |reason: String| StsError::InvalidLine { line: n, reason };
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        if raw.len() > MAX_LINE_LEN {
            return Err(bad(format!("longer than {MAX_LINE_LEN} bytes")));
        }
        let line = std::str::from_utf8(raw).map_err(|_| bad("not valid UTF-8".into()))?;
        if let Some(c) = line.chars().find(|&c| c.is_control() && c != '\t') {
            return Err(bad(format!("control character {c:?}")));
        }
        // Trailing whitespace is allowed after every field (`*WSP` in the grammar).
        let line = line.trim_end_matches(is_wsp);
        if line.is_empty() {
            continue;
        }
        let Some((key, value)) = line.split_once(':') else {
            return Err(bad(format!("{:?} is not \"key: value\"", shorten(line))));
        };
        let value = value.trim_start_matches(is_wsp);
        match key {
            "version" => {
                if version.replace(n).is_some() {
                    return Err(bad("a second version line".into()));
                }
                if value != "STSv1" {
                    return Err(bad(format!("version {:?} is not supported (only STSv1)", shorten(value))));
                }
            }
            "mode" => {
                let m = match value {
                    "enforce" => Mode::Enforce,
                    "testing" => Mode::Testing,
                    "none" => Mode::None,
                    _ => return Err(bad(format!("mode {:?} is not enforce, testing or none", shorten(value)))),
                };
                if mode.replace(m).is_some() {
                    return Err(bad("a second mode line".into()));
                }
            }
            "max_age" => {
                // 1*10DIGIT: no sign, no spaces inside, no hex.
                if value.is_empty() || value.len() > 10 || !value.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(bad(format!("max_age {:?} is not a number of seconds", shorten(value))));
                }
                let secs = value.parse::<u64>().map_err(|_| bad("max_age does not parse".into()))?;
                let secs = u32::try_from(secs)
                    .ok()
                    .filter(|&s| s <= MAX_MAX_AGE)
                    .ok_or_else(|| bad(format!("max_age {secs} is more than the maximum of {MAX_MAX_AGE} seconds (one year)")))?;
                if max_age.replace(secs).is_some() {
                    return Err(bad("a second max_age line".into()));
                }
            }
            "mx" => mx.push(parse_mx_pattern(value).map_err(|why| bad(format!("mx {:?}: {why}", shorten(value))))?),
            other => {
                if !is_ext_name(other) {
                    return Err(bad(format!("{:?} is not a valid field name", shorten(other))));
                }
                if near_miss.is_none() && ["version", "mode", "max_age", "mx"].iter().any(|k| k.eq_ignore_ascii_case(other)) {
                    near_miss = Some((n, other.to_owned()));
                }
            }
        }
    }
    // What is left must be nothing, or the empty piece after a final line ending.
    match lines.next() {
        None => {}
        Some(last) if last.is_empty() && lines.next().is_none() => {}
        Some(_) => return Err(StsError::TooManyLines),
    }

    let hint = |field: &str| match &near_miss {
        Some((line, key)) if key.eq_ignore_ascii_case(field) => {
            format!(" (line {line} has {key:?}: field names are case-sensitive)")
        }
        _ => String::new(),
    };
    if version.is_none() {
        return Err(StsError::Missing { field: "version", hint: hint("version") });
    }
    let Some(mode) = mode else { return Err(StsError::Missing { field: "mode", hint: hint("mode") }) };
    let Some(max_age) = max_age else { return Err(StsError::Missing { field: "max_age", hint: hint("max_age") }) };
    if mx.is_empty() && mode != Mode::None {
        return Err(StsError::Missing { field: "mx", hint: format!(" (required with mode {mode}){}", hint("mx")) });
    }
    Ok(StsPolicy { mode, mx, max_age })
}

/// `["*."] Domain` (RFC 5321 §4.1.2: labels of letters, digits and inner hyphens), lowercased.
fn parse_mx_pattern(value: &str) -> Result<String, &'static str> {
    let lower = value.to_ascii_lowercase();
    let lower = lower.strip_suffix('.').unwrap_or(&lower);
    let name = lower.strip_prefix("*.").unwrap_or(lower);
    if name.is_empty() {
        return Err("empty host name");
    }
    if name.len() > 253 {
        return Err("longer than 253 characters");
    }
    for label in name.split('.') {
        let b = label.as_bytes();
        if b.is_empty() || b.len() > 63 {
            return Err("each label must be 1 to 63 characters");
        }
        if !b.iter().all(|&c| c.is_ascii_alphanumeric() || c == b'-') {
            return Err("only letters, digits and '-' are allowed (and '*' only as the whole first label)");
        }
        if b[0] == b'-' || b[b.len() - 1] == b'-' {
            return Err("a label may not begin or end with '-'");
        }
    }
    Ok(lower.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn txt(records: &[&str]) -> Result<Option<StsTxt>, StsError> {
        parse_txt(&records.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    fn id(s: &str) -> Option<StsTxt> {
        Some(StsTxt { id: s.into() })
    }

    #[test]
    fn txt_valid_records() {
        assert_eq!(txt(&["v=STSv1; id=20160831085700Z"]).unwrap(), id("20160831085700Z"));
        assert_eq!(txt(&["v=STSv1;id=abc"]).unwrap(), id("abc"));
        assert_eq!(txt(&["v=STSv1 ;\tid=abc ;"]).unwrap(), id("abc"), "WSP around delimiters, trailing delimiter");
        assert_eq!(txt(&["v=STSv1; id=abc; "]).unwrap(), id("abc"));
        assert_eq!(txt(&["v=STSv1; ext.x-1=v:a/l<u>e; id=abc"]).unwrap(), id("abc"), "extensions, before or after id");
        assert_eq!(txt(&["v=STSv1; id=abc; foo=bar"]).unwrap(), id("abc"));
        let longest = format!("v=STSv1; id={}", "a".repeat(32));
        assert_eq!(txt(&[&longest]).unwrap(), id(&"a".repeat(32)));
    }

    #[test]
    fn txt_other_records_are_ignored() {
        assert_eq!(txt(&[]).unwrap(), None);
        assert_eq!(txt(&["v=spf1 -all", "hello"]).unwrap(), None);
        assert_eq!(txt(&["v=spf1 -all", "v=STSv1; id=x1", "google-site-verification=abc"]).unwrap(), id("x1"));
        // Not version 1, not this exact spelling, or not at the start: not an STS record.
        assert_eq!(txt(&["v=STSv10; id=abc", "v=stsv1; id=abc", " v=STSv1; id=abc", "V=STSv1; id=abc"]).unwrap(), None);
    }

    #[test]
    fn txt_more_than_one_is_an_error() {
        assert_eq!(txt(&["v=STSv1; id=a", "v=STSv1; id=b"]), Err(StsError::MultipleTxt(2)));
        // Even when they agree, and even when one of them is invalid.
        assert_eq!(txt(&["v=STSv1; id=a", "v=STSv1; id=a", "v=STSv1"]), Err(StsError::MultipleTxt(3)));
    }

    #[test]
    fn txt_invalid_records() {
        for bad in [
            "v=STSv1",
            "v=STSv1;",
            "v=STSv1; ",
            "v=STSv1 id=abc",
            "v=STSv1; id=",
            "v=STSv1; id=abc-def",
            "v=STSv1; id=abc def",
            "v=STSv1; id=é",
            "v=STSv1; id=aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "v=STSv1;; id=abc",
            "v=STSv1; id=abc;; x=y",
            "v=STSv1; id=a; id=b",
            "v=STSv1; foo=bar",
            "v=STSv1; id=abc; foo",
            "v=STSv1; id=abc; foo=",
            "v=STSv1; id=abc; _foo=bar",
            "v=STSv1; id=abc; foo=b=r",
            "v=STSv1; ID=abc",
        ] {
            let e = txt(&[bad]).expect_err(bad);
            assert!(matches!(e, StsError::InvalidTxt { .. }), "{bad:?}: {e}");
        }
        let long = format!("v=STSv1; id=abc; x={}", "y".repeat(MAX_TXT_LEN));
        assert!(matches!(txt(&[&long]), Err(StsError::InvalidTxt { ref record, .. }) if record.len() < 100));
    }

    const GOOD: &str = "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.Example.NET.\r\nmax_age: 604800\r\n";

    fn policy(s: &str) -> Result<StsPolicy, StsError> {
        parse_policy(s.as_bytes())
    }

    fn line_of(e: StsError) -> usize {
        match e {
            StsError::InvalidLine { line, .. } => line,
            other => panic!("expected a line error, got {other}"),
        }
    }

    #[test]
    fn policy_valid() {
        let p = policy(GOOD).unwrap();
        assert_eq!(p, StsPolicy { mode: Mode::Enforce, mx: vec!["mail.example.com".into(), "*.example.net".into()], max_age: 604_800 });
        // LF endings, any order, no final newline, blank lines, trailing spaces, no space after ':'.
        let p = policy("mx: a.test\nmax_age:0  \n\nmode:testing\nversion: STSv1").unwrap();
        assert_eq!(p, StsPolicy { mode: Mode::Testing, mx: vec!["a.test".into()], max_age: 0 });
        assert_eq!(policy("version: STSv1\nmode: none\nmax_age: 31557600\n").unwrap().mx, Vec::<String>::new());
        // Unknown fields, including different-case versions of known ones, are ignored.
        let p = policy("\u{feff}version: STSv1\nmode: enforce\nfoo.bar_1: any thing: ü\nMode: none\nmx: a.test\nmax_age: 5\n").unwrap();
        assert_eq!(p.mode, Mode::Enforce);
    }

    #[test]
    fn policy_json_round_trip() {
        let p = policy(GOOD).unwrap();
        let json = serde_json::to_string(&p).unwrap();
        assert!(json.contains("\"mode\":\"enforce\""), "{json}");
        assert_eq!(serde_json::from_str::<StsPolicy>(&json).unwrap(), p);
        assert_eq!(serde_json::to_string(&Mode::None).unwrap(), "\"none\"");
    }

    #[test]
    fn policy_missing_fields() {
        let missing = |s: &str| match policy(s) {
            Err(StsError::Missing { field, hint }) => (field, hint),
            other => panic!("{s:?}: {other:?}"),
        };
        assert_eq!(missing("mode: enforce\nmx: a.test\nmax_age: 5\n").0, "version");
        assert_eq!(missing("version: STSv1\nmx: a.test\nmax_age: 5\n").0, "mode");
        assert_eq!(missing("version: STSv1\nmode: enforce\nmx: a.test\n").0, "max_age");
        assert_eq!(missing("version: STSv1\nmode: testing\nmax_age: 5\n").0, "mx");
        assert_eq!(missing("").0, "version");
        let (field, hint) = missing("version: STSv1\nMode: enforce\nmx: a.test\nmax_age: 5\n");
        assert_eq!(field, "mode");
        assert!(hint.contains("line 2") && hint.contains("case-sensitive"), "{hint}");
    }

    #[test]
    fn policy_invalid_lines_are_named() {
        let base = "version: STSv1\nmode: enforce\nmx: a.test\nmax_age: 86400\n";
        for (extra, why) in [
            ("mode: Enforce", "values are case-sensitive"),
            ("mode: reject", "unknown mode"),
            ("version: STSv2", "unsupported version"),
            ("version: STSv1", "second version"),
            ("mode: enforce", "second mode"),
            ("max_age: 31557601", "over the maximum"),
            ("max_age: 99999999999", "11 digits"),
            ("max_age: -1", "sign"),
            ("max_age: 1 2", "space inside"),
            ("max_age:", "empty"),
            ("mx: ", "empty mx"),
            ("mx: *", "bare wildcard"),
            ("mx: *.*.a.test", "two wildcards"),
            ("mx: a*.test", "wildcard inside a label"),
            ("mx: a..test", "empty label"),
            ("mx: -a.test", "leading hyphen"),
            ("mx: a_b.test", "underscore"),
            ("mx: a.test extra", "space in the name"),
            ("no colon here", "not key: value"),
            (" mode: enforce", "leading space"),
            ("mode : enforce", "space before the colon"),
            ("-x: y", "bad field name"),
            ("bell: \u{7}", "control character"),
        ] {
            // Put the bad line third, so the line number is checked too.
            let (head, tail) = base.split_at(base.find("mx:").unwrap());
            let body = format!("{head}{extra}\n{tail}");
            let e = policy(&body).expect_err(why);
            assert_eq!(line_of(e.clone()), 3, "{why}: {e}");
            assert!(e.to_string().starts_with("policy line 3: "), "{e}");
        }
        // A duplicate is reported at its second occurrence.
        assert_eq!(line_of(policy(&format!("{base}max_age: 5\n")).unwrap_err()), 5);
        assert_eq!(line_of(parse_policy(b"version: STSv1\n\xff\xfe\n").unwrap_err()), 2);
        let long = format!("version: STSv1\nx: {}\n", "y".repeat(MAX_LINE_LEN));
        assert_eq!(line_of(policy(&long).unwrap_err()), 2);
    }

    #[test]
    fn policy_line_count_is_bounded() {
        let mut body = String::from("version: STSv1\nmode: enforce\nmax_age: 5\n");
        body.push_str(&"mx: a.test\n".repeat(MAX_POLICY_LINES - 3));
        assert_eq!(policy(&body).unwrap().mx.len(), MAX_POLICY_LINES - 3, "exactly the limit, plus the final newline");
        body.push_str("mx: b.test\n");
        assert_eq!(policy(&body), Err(StsError::TooManyLines));
    }

    #[test]
    fn matching_follows_section_4_1() {
        let p = StsPolicy { mode: Mode::Enforce, mx: vec!["mail.example.com".into(), "*.example.net".into()], max_age: 1 };
        assert!(p.matches("mail.example.com"));
        assert!(p.matches("MAIL.Example.COM."));
        assert!(!p.matches("mail.example.com.evil.test"));
        assert!(!p.matches("amail.example.com"));
        assert!(!p.matches("x.mail.example.com"), "no implicit wildcard");
        assert!(p.matches("mx1.example.net"));
        assert!(p.matches("MX1.EXAMPLE.NET."));
        assert!(!p.matches("example.net"), "the wildcard is not the bare domain");
        assert!(!p.matches("a.b.example.net"), "the wildcard is exactly one label");
        assert!(!p.matches(".example.net"));
        assert!(!p.matches("mx1example.net"));
        assert!(!p.matches("mx1.example.net.evil"));
        assert!(!p.matches(""));
        assert!(!p.matches("."));
        assert!(!p.matches("é.example.com"), "non-ASCII does not panic");
    }

    #[test]
    fn error_messages_say_what_to_fix() {
        assert!(StsError::MultipleTxt(2).to_string().contains("exactly one"));
        let e = txt(&["v=STSv1; id=abc-def"]).unwrap_err().to_string();
        assert!(e.contains("1 to 32 letters and digits") && e.contains("abc-def"), "{e}");
    }
}
