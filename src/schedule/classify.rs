//! What a final SMTP reply means for scheduling: delivered, retry this message, give up on
//! it, or back off from the whole destination.
//!
//! The reply code decides the broad class (RFC 5321 §4.2.1); for 4xx replies the enhanced
//! code (RFC 3463) and the text decide whether the receiver is telling us to slow down.
//! Receivers word that in their own ways (Gmail's 4.7.28, Microsoft's 4.7.5xx, Yahoo's
//! `[TS0x]`, Outlook.com's `RP-00x`, Postfix's "too many connections"), so the rules below
//! are a table of what real servers send; the tests hold the real lines.

use std::fmt;

/// How a reply affects scheduling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReplyClass {
    /// 2xx: accepted.
    Ok,
    /// A temporary failure of this message or recipient: retry it with backoff, the
    /// destination carries on.
    TempFail,
    /// 5xx: will never succeed as sent; bounce.
    PermFail,
    /// The receiver says we send too much or too fast: retry the message and suspend the
    /// destination.
    RateLimited,
    /// 421 without a rate-limit reason: the server is closing the channel; retry the message
    /// and suspend the destination.
    ServiceUnavailable,
}

impl ReplyClass {
    /// Whether the destination should be suspended (see `Destinations::record`).
    pub fn suspends(self) -> bool {
        matches!(self, ReplyClass::RateLimited | ReplyClass::ServiceUnavailable)
    }
}

impl fmt::Display for ReplyClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ReplyClass::Ok => "ok",
            ReplyClass::TempFail => "temp-fail",
            ReplyClass::PermFail => "perm-fail",
            ReplyClass::RateLimited => "rate-limited",
            ReplyClass::ServiceUnavailable => "service-unavailable",
        })
    }
}

/// Bytes of reply text searched for rate-limit phrases. The phrases come in the first lines;
/// the bound keeps a hostile server's 2 MB reply from costing more than a normal one.
pub const MAX_CLASSIFIED_TEXT: usize = 4096;

/// Substrings (lowercase, compared ASCII case-insensitively) that mark a 4xx reply as a rate
/// limit.
const RATE_PHRASES: &[&str] = &[
    "rate limit",
    "rate-limit",
    "ratelimit",
    "too many",
    "too much mail",
    "try again later",
    "throttl",
    "exceeded",
    "deferred due to",
    "unusual rate",
    "unexpected volume",
    "server busy",
    "slow down",
];

/// Reason codes that count only at the start of a word: Outlook.com's `RP-001`…, Yahoo's
/// `[TS01]`… and `[TSS04]`… (a bare "ts0" would match host names such as `hosts01`).
const RATE_TOKENS: &[&str] = &["rp-00", "ts0", "tss0"];

/// Phrases that are never a destination-wide rate limit even when a rate phrase also appears:
/// greylisting asks for a retry of this one message, and suspending the destination for it
/// would delay everything else.
const NOT_RATE_PHRASES: &[&str] = &["greylist", "graylist"];

/// Classify a final reply.
///
/// `code` is the three-digit reply code, `enhanced` the RFC 3463 code if the caller parsed one
/// (`"4.7.28"`); when it is `None` a code at the start of `text` is used. An enhanced code
/// whose class differs from the reply code's is ignored, as the reply parser does.
///
/// - 2xx → [`ReplyClass::Ok`]; 5xx → [`ReplyClass::PermFail`], whatever the text, because
///   turning a permanent failure into a retry would keep a bounce from its sender for days.
/// - 421 → [`ReplyClass::RateLimited`] when it gives a rate-limit reason, else
///   [`ReplyClass::ServiceUnavailable`]; both suspend the destination.
/// - Other 4xx → [`ReplyClass::TempFail`] when the enhanced code is about one recipient or
///   message (`4.1.x` address, `4.2.x` mailbox — including Gmail's per-recipient "receiving
///   mail at a rate" 4.2.1 —, `4.3.1` storage, `4.3.4` size, `4.5.3` too many recipients) or
///   the text is about greylisting; else [`ReplyClass::RateLimited`] for Gmail's `4.7.28`,
///   Microsoft's `4.7.500`–`4.7.699`, or a rate-limit phrase in the text; else `TempFail`.
/// - Anything else (1xx, 3xx where a final reply was due, codes outside 100–599) →
///   [`ReplyClass::TempFail`]: a protocol error is worth a retry, never a bounce.
pub fn classify(code: u16, enhanced: Option<&str>, text: &str) -> ReplyClass {
    match code {
        200..=299 => return ReplyClass::Ok,
        500..=599 => return ReplyClass::PermFail,
        400..=499 => {}
        _ => return ReplyClass::TempFail,
    }
    let text = &text.as_bytes()[..text.len().min(MAX_CLASSIFIED_TEXT)];
    let enhanced = enhanced
        .map(str::as_bytes)
        .or_else(|| text.split(u8::is_ascii_whitespace).next())
        .and_then(parse_enhanced)
        .filter(|e| u16::from(e.0) == code / 100);
    let limited = is_rate_limit(enhanced, text);
    if code == 421 {
        return if limited { ReplyClass::RateLimited } else { ReplyClass::ServiceUnavailable };
    }
    let about_one_recipient = match enhanced {
        Some((_, 1 | 2, _)) | Some((_, 3, 1 | 4)) | Some((_, 5, 3)) => true,
        Some(_) => false,
        // RFC 5321's own wording for 452, from servers that send no enhanced code.
        None => code == 452 && contains(text, "too many recipients"),
    };
    if limited && !about_one_recipient {
        ReplyClass::RateLimited
    } else {
        ReplyClass::TempFail
    }
}

/// Whether the enhanced code or the text says "too much, too fast".
fn is_rate_limit(enhanced: Option<(u8, u16, u16)>, text: &[u8]) -> bool {
    if NOT_RATE_PHRASES.iter().any(|p| contains(text, p)) {
        return false;
    }
    matches!(enhanced, Some((_, 7, 28)) | Some((_, 7, 500..=699)))
        || RATE_PHRASES.iter().any(|p| contains(text, p))
        || RATE_TOKENS.iter().any(|t| contains_word_start(text, t))
}

/// `class.subject.detail`, as [`EnhancedCode::parse`](crate::reply::EnhancedCode::parse) reads it.
fn parse_enhanced(word: &[u8]) -> Option<(u8, u16, u16)> {
    let e = crate::reply::EnhancedCode::parse(std::str::from_utf8(word).ok()?)?;
    Some((e.class, e.subject, e.detail))
}

/// ASCII case-insensitive substring test; `needle` is lowercase.
fn contains(hay: &[u8], needle: &str) -> bool {
    find_all(hay, needle).next().is_some()
}

/// Like [`contains`], but the match must not follow a letter or digit.
fn contains_word_start(hay: &[u8], needle: &str) -> bool {
    find_all(hay, needle).any(|i| i == 0 || !hay[i - 1].is_ascii_alphanumeric())
}

fn find_all<'a>(hay: &'a [u8], needle: &'a str) -> impl Iterator<Item = usize> + 'a {
    let n = needle.as_bytes();
    hay.windows(n.len().max(1)).enumerate().filter(move |(_, w)| w.eq_ignore_ascii_case(n)).map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ReplyClass::*;

    /// Classify a logged reply line the way a caller holding a parsed
    /// [`crate::reply::Reply`] does: code, parsed enhanced code, the text of all lines.
    fn classify_line(line: &str) -> ReplyClass {
        let (r, _) = crate::reply::parse_reply(format!("{line}\r\n").as_bytes()).unwrap().unwrap();
        let enhanced = r.enhanced.map(|e| e.to_string());
        classify(r.code, enhanced.as_deref(), &r.lines.join(" "))
    }

    /// Real reply lines, as receivers send them (addresses and ids replaced).
    const REAL: &[(&str, ReplyClass)] = &[
        // Gmail
        ("250 2.0.0 OK  1700000000 a1-20020a056402000100b00000000000si1.123 - gsmtp", Ok),
        ("421 4.7.28 [203.0.113.5      15] Our system has detected an unusual rate of unsolicited mail originating from your IP address. To protect our users from spam, mail sent from your IP address has been temporarily rate limited. Please visit https://support.google.com/mail/?p=UnsolicitedRateLimitError to review our Bulk Email Senders Guidelines. a1si1 - gsmtp", RateLimited),
        ("450 4.7.28 [203.0.113.5] Our system has detected an unusual rate of unsolicited mail originating from your IP address. - gsmtp", RateLimited),
        ("421 4.7.0 Try again later, closing connection. (EHLO) a1si1 - gsmtp", RateLimited),
        ("421 4.3.0 Temporary System Problem.  Try again later (10). a1si1 - gsmtp", RateLimited),
        ("450 4.2.1 The user you are trying to contact is receiving mail at a rate that prevents additional messages from being delivered. Please resend your message at a later point. If the user is able to receive mail at that time, your message will be delivered. - gsmtp", TempFail),
        ("452 4.2.2 The email account that you tried to reach is over quota. Please direct the recipient to https://support.google.com/mail/?p=OverQuotaTemp - gsmtp", TempFail),
        ("451 4.3.0 Mail server temporarily rejected message. a1si1 - gsmtp", TempFail),
        ("452 4.5.3 Your message has too many recipients. For more information regarding Google's sending limits, visit https://support.google.com/mail/?p=TooManyRecipientsError - gsmtp", TempFail),
        ("550 5.1.1 The email account that you tried to reach does not exist. Please try double-checking the recipient's email address for typos or unnecessary spaces. - gsmtp", PermFail),
        ("550 5.7.26 This mail has been blocked because the sender is unauthenticated. Gmail requires all senders to authenticate with either SPF or DKIM. - gsmtp", PermFail),
        ("550 5.7.28 [203.0.113.5] Our system has detected an unusual rate of unsolicited mail originating from your IP address. - gsmtp", PermFail),
        // Yahoo / AOL
        ("421 4.7.0 [TSS04] Messages from 203.0.113.5 temporarily deferred due to unexpected volume or user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes", RateLimited),
        ("421 4.7.0 [TS01] Messages from 203.0.113.5 temporarily deferred due to user complaints - 4.16.55.1; see https://help.yahoo.com/kb/postmaster/SLN3434.html", RateLimited),
        ("421 4.7.1 [TS03] All messages from 203.0.113.5 will be permanently deferred; Retrying will NOT succeed. See https://postmaster.yahooinc.com/error-codes", RateLimited),
        ("451 Message temporarily deferred - [160]", TempFail),
        ("553 5.7.2 [TSS09] All messages from 203.0.113.5 will be permanently deferred; Retrying will NOT succeed. See https://postmaster.yahooinc.com/error-codes", PermFail),
        ("554 5.7.9 Message not accepted for policy reasons.  See https://postmaster.yahooinc.com/error-codes", PermFail),
        // Microsoft (Exchange Online, Outlook.com)
        ("250 2.6.0 <a@b.example> [InternalId=1, Hostname=AM0PR01MB0001.eurprd01.prod.exchangelabs.com] Queued mail for delivery", Ok),
        ("451 4.7.500 Server busy. Please try again later from [203.0.113.5]. (S77714) [BN8NAM11FT066.eop-nam11.prod.protection.outlook.com]", RateLimited),
        ("451 4.7.650 The mail server [203.0.113.5] has been temporarily rate limited due to IP reputation. For e-mail delivery information, see https://aka.ms/postmaster (S775) [DB5EUR03FT001.eop-EUR03.prod.protection.outlook.com]", RateLimited),
        ("421 RP-001 (COL004-MC2F33) Unfortunately, some messages from 203.0.113.5 weren't sent. Please try again. We have limits for how many messages can be sent per hour and per day. You can also refer http://mail.live.com/mail/troubleshooting.aspx#errors.", RateLimited),
        ("452 4.5.3 Too many recipients (AS780090) [DM6NAM10FT002.eop-nam10.prod.protection.outlook.com]", TempFail),
        ("550 5.7.1 Unfortunately, messages from [203.0.113.5] weren't sent. Please contact your Internet service provider since part of their network is on our block list (S3150). You can also refer your provider to http://mail.live.com/mail/troubleshooting.aspx#errors.", PermFail),
        ("550 5.4.1 Recipient address rejected: Access denied. AS(201806281) [DM6NAM10FT002.eop-nam10.prod.protection.outlook.com]", PermFail),
        // Postfix, Exim, Postgrey, Mimecast, Spamhaus-blocking servers
        ("421 4.7.0 mx.example.net Error: too many connections from 203.0.113.5", RateLimited),
        ("450 4.7.1 Error: too much mail from 203.0.113.5", RateLimited),
        ("450 4.7.1 Error: too many recipients from 203.0.113.5", RateLimited),
        ("421 4.3.2 Service not available, closing transmission channel", ServiceUnavailable),
        ("421 mx.example.net Service not available - closing transmission channel", ServiceUnavailable),
        ("450 4.7.1 Client host rejected: cannot find your hostname, [203.0.113.5]", TempFail),
        ("450 4.2.0 <u@example.org>: Recipient address rejected: Greylisted, see http://postgrey.schweikert.ch/help/example.org.html", TempFail),
        ("451 4.7.1 Greylisting in action, please try again later", TempFail),
        ("451 Temporary local problem - please try later", TempFail),
        ("452 4.3.1 Insufficient system storage", TempFail),
        ("452 Too many recipients", TempFail),
        ("451 Internal resource temporarily unavailable - https://community.mimecast.com/docs/DOC-1369#451", TempFail),
        ("421 Too many concurrent SMTP connections; please try again later.", RateLimited),
        ("554 5.7.1 Service unavailable; Client host [203.0.113.5] blocked using zen.spamhaus.org", PermFail),
    ];

    #[test]
    fn real_replies() {
        assert!(REAL.len() >= 20);
        for (line, want) in REAL {
            assert_eq!(classify_line(line), *want, "{line}");
        }
    }

    #[test]
    fn enhanced_code_in_text_is_used_when_not_given() {
        // The same Gmail line, once with the parsed code, once with only the text.
        let text = "4.7.28 [203.0.113.5] Our system has detected an unusual volume. - gsmtp";
        assert_eq!(classify(450, Some("4.7.28"), "Our system has detected an unusual volume."), RateLimited);
        assert_eq!(classify(450, None, text), RateLimited);
        assert_eq!(classify(450, None, "4.7.28"), RateLimited);
        assert_eq!(classify(451, None, "4.7.599 Access denied, please try later"), RateLimited);
        assert_eq!(classify(451, None, "4.7.700 something"), TempFail);
        // The argument wins over the text.
        assert_eq!(classify(450, Some("4.2.1"), "4.7.28 unusual rate"), TempFail);
    }

    #[test]
    fn enhanced_code_of_another_class_is_ignored() {
        // A 4xx reply cannot carry a 5.x.x code; the text decides alone.
        assert_eq!(classify(450, Some("5.7.28"), "blocked"), TempFail);
        assert_eq!(classify(450, Some("2.7.28"), "blocked"), TempFail);
        assert_eq!(classify(452, Some("5.5.3"), "Too many recipients"), TempFail);
        assert_eq!(classify(450, Some("5.7.1"), "Too many recipients"), RateLimited);
        for bad in ["4.7", "4.7.28.1", "4..28", "x.7.28", "4.7.2800", "44.7.28", "", "4.7.+28", "4.7.28 "] {
            assert_eq!(classify(450, Some(bad), "blocked"), TempFail, "{bad:?}");
        }
    }

    #[test]
    fn codes_decide_the_broad_class() {
        for c in [200, 220, 250, 251, 252, 299] {
            assert_eq!(classify(c, None, "rate limit exceeded"), Ok, "{c}");
        }
        for c in [500, 550, 552, 554, 599] {
            assert_eq!(classify(c, Some("5.7.28"), "rate limited, try again later"), PermFail, "{c}");
        }
        for c in [0, 99, 100, 199, 300, 354, 399, 600, 999, u16::MAX] {
            assert_eq!(classify(c, None, "too many connections"), TempFail, "{c}");
        }
        assert_eq!(classify(421, None, ""), ServiceUnavailable);
        assert_eq!(classify(421, Some("4.2.1"), "mailbox busy"), ServiceUnavailable);
        assert_eq!(classify(450, None, ""), TempFail);
        assert_eq!(classify(499, None, "throttled"), RateLimited);
    }

    #[test]
    fn phrases_match_without_regard_to_case() {
        for text in [
            "RATE LIMIT reached",
            "rate-limited",
            "RateLimit",
            "Throttling in effect",
            "throttled",
            "Quota EXCEEDED for sender",
            "too many messages",
            "Too Much Mail from you",
            "Try Again Later",
            "message deferred due to volume",
            "Server Busy",
            "slow down",
            "[TS02] deferred",
            "(TSS05) see postmaster",
            "RP-002 (BAY0) limits",
        ] {
            assert_eq!(classify(451, Some("4.7.1"), text), RateLimited, "{text}");
        }
        for text in ["hosts01 is busy", "rts01", "XRP-001", "ratelimi", "to many", "try later"] {
            assert_eq!(classify(451, Some("4.7.1"), text), TempFail, "{text}");
        }
    }

    #[test]
    fn one_recipient_is_never_the_destination() {
        for enh in ["4.1.1", "4.1.8", "4.2.0", "4.2.1", "4.2.2", "4.3.1", "4.3.4", "4.5.3"] {
            assert_eq!(classify(450, Some(enh), "too many, try again later"), TempFail, "{enh}");
        }
        // Without an enhanced code only 452's RFC 5321 wording is recognised.
        assert_eq!(classify(452, None, "Too many recipients"), TempFail);
        assert_eq!(classify(450, None, "Too many recipients"), RateLimited);
        assert_eq!(classify(452, None, "Too many connections"), RateLimited);
        // Greylisting defeats a rate phrase, except on 421 where the channel closes anyway.
        assert_eq!(classify(450, Some("4.7.28"), "greylisted"), TempFail);
        assert_eq!(classify(421, Some("4.7.0"), "Graylisted, try again later"), ServiceUnavailable);
    }

    #[test]
    fn long_and_hostile_text_is_bounded() {
        let late = format!("{}rate limited", "x".repeat(MAX_CLASSIFIED_TEXT));
        assert_eq!(classify(451, None, &late), TempFail);
        let early = format!("rate limited{}", "x".repeat(100_000));
        assert_eq!(classify(451, None, &early), RateLimited);
        // A cut inside a multi-byte character, NULs and control bytes are harmless.
        let utf = "é".repeat(MAX_CLASSIFIED_TEXT);
        assert_eq!(classify(451, None, &utf), TempFail);
        assert_eq!(classify(451, None, "\0\r\n\t too\0many"), TempFail);
        assert_eq!(classify(421, None, "\u{1F600} throttled"), RateLimited);
    }

    #[test]
    fn class_names_and_suspension() {
        let all = [Ok, TempFail, PermFail, RateLimited, ServiceUnavailable];
        let names = ["ok", "temp-fail", "perm-fail", "rate-limited", "service-unavailable"];
        for (c, n) in all.iter().zip(names) {
            assert_eq!(c.to_string(), n);
            assert_eq!(serde_json::to_string(c).unwrap(), format!("\"{n}\""));
            assert_eq!(c.suspends(), matches!(c, RateLimited | ServiceUnavailable));
        }
    }
}
