//! Bounces: RFC 3464 delivery status notifications, built as RFC 5322 message bytes.
//!
//! [`build_dsn`] is a pure function of what the queue knows about a message (envelope, the
//! original bytes, one record per failed or delayed recipient, the clock and a random seed),
//! so it is tested byte for byte. It owns the wording and the wire format of a bounce and
//! nothing else: deciding *when* to bounce (5xx, expiry) belongs to the queue, and sending the
//! result belongs to the engine, which delivers [`Dsn::data`] from the null reverse-path to
//! [`Dsn::to`] like any other message.
//!
//! Everything a server or a client gave us (replies, addresses, host names, the original
//! message) is untrusted: it is stripped of control characters before it reaches a header or
//! a delivery-status field, so a reply such as `550 no\r\nBcc: x` cannot add a header, and
//! every line is kept within RFC 5322's 998 octets by folding. The notification is 7-bit
//! (plain US-ASCII, quoted-printable where the original's bytes need it) so any server can
//! take it without 8BITMIME; the single exception is a non-ASCII envelope sender, which
//! appears raw in `To:` (RFC 6532), as the engine must then use SMTPUTF8 to reach it anyway.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::session::normalise_into;

/// Largest original message returned whole with [`ReturnContent::Full`]; beyond it only the
/// headers are returned, so a bounce of a large attachment does not double the traffic.
pub const MAX_RETURNED_MESSAGE: usize = 256 * 1024;
/// Largest header block returned; a message with megabytes of headers is abuse, and the
/// bounce must stay small. Truncated at a line end.
pub const MAX_RETURNED_HEADERS: usize = 64 * 1024;
/// Longest server reply kept in a Diagnostic-Code (after cleaning), in characters; real
/// multi-line replies are a few hundred.
pub const MAX_DIAGNOSTIC: usize = 2000;
/// Longest envelope sender we will address a bounce to: RFC 5321 §4.5.3.1.3 limits a path
/// to 256 octets including the angle brackets.
pub const MAX_SENDER: usize = 254;

/// Lines are folded at whitespace to this width where possible (RFC 5322 §2.1.1 "SHOULD").
const SOFT_LINE: usize = 78;
/// RFC 5322 §2.1.1 "MUST": no line longer than 998 octets without its CRLF.
const HARD_LINE: usize = 998;

/// What happened to a recipient, as the RFC 3464 `Action` field says it. Only the two a
/// bounce generator reports; `delivered`, `relayed` and `expanded` are success DSNs, which
/// mxpipe does not send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Will not be delivered: a permanent failure, or retries ran out (then with a 4.x.x
    /// status such as 4.4.7, as RFC 3464 §2.3.3 allows).
    Failed,
    /// Not delivered yet and still being retried.
    Delayed,
}

impl Action {
    /// The RFC 3464 §2.3.3 keyword.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Failed => "failed",
            Action::Delayed => "delayed",
        }
    }
}

/// How much of the original message goes back to the sender (the RET parameter of RFC 3461,
/// or the operator's default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReturnContent {
    /// Only the header block, as `text/rfc822-headers` (RFC 6522).
    Headers,
    /// The whole message as `message/rfc822` when it is at most [`MAX_RETURNED_MESSAGE`]
    /// octets and 7-bit clean; otherwise the headers, and the notification says why.
    Full,
}

/// One recipient to report on: the fields of an RFC 3464 per-recipient block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedRcpt {
    /// The address as given in RCPT TO, without angle brackets.
    pub rcpt: String,
    /// Failed or still being retried; decides the wording and the Subject.
    pub action: Action,
    /// RFC 3463 enhanced code, e.g. `5.1.1`; anything that is not one becomes `5.0.0`
    /// (failed) or `4.0.0` (delayed), since the field is mandatory.
    pub status: String,
    /// The MX host that gave the answer, if a connection got that far.
    pub remote_mta: Option<String>,
    /// The server's reply (`550 5.1.1 ...`), optionally already typed (`smtp; 550 ...`). A
    /// local reason such as `mxpipe: null MX` is typed `X-mxpipe`.
    pub diagnostic: Option<String>,
    /// When the last delivery attempt for this recipient ended (`Last-Attempt-Date`).
    pub last_attempt: Option<SystemTime>,
}

/// Everything a notification is built from; borrowed from the queue's record of the message.
#[derive(Debug, Clone)]
pub struct DsnInput<'a> {
    /// Our host name: `Reporting-MTA` and the domain of `MAILER-DAEMON@`.
    pub reporting_mta: &'a str,
    /// The original MAIL FROM address, without angle brackets; `""` is the null sender.
    pub envelope_from: &'a str,
    /// The ENVID the client gave (RFC 3461), if any; written as given, less controls and
    /// non-ASCII, at most 100 characters (RFC 3461 §4.4's limit).
    pub envelope_id: Option<&'a str>,
    /// The original message as spooled.
    pub original_message: &'a [u8],
    /// When we accepted the message.
    pub arrival: SystemTime,
    /// The recipients this notification reports on, in the order they are listed; others
    /// of the message (delivered, or not yet due for a notice) are not mentioned.
    pub rcpts: Vec<FailedRcpt>,
    /// How much of the original to return.
    pub return_content: ReturnContent,
    /// Right-hand side of the notification's Message-ID.
    pub message_id_domain: &'a str,
    /// The notification's `Date` and the time in its Message-ID.
    pub now: SystemTime,
    /// Random per notification: it makes the MIME boundary and the Message-ID unique and
    /// unguessable, so an original message cannot be crafted to contain the boundary.
    pub boundary_seed: u64,
}

/// A notification ready for the queue: send `data` from the null reverse-path to `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dsn {
    /// Always `""`: RFC 5321 §4.5.5 requires the null reverse-path, which is also what stops
    /// a bounce of a bounce.
    pub from: String,
    /// The original envelope sender.
    pub to: String,
    /// The RFC 5322 message, CRLF line ends, not dot-stuffed.
    pub data: Vec<u8>,
}

/// Build the notification for `input`, or `None` when none must be sent.
///
/// `None` when the envelope sender is null (`""`, or `"<>"` if a caller kept the brackets):
/// RFC 5321 §4.5.5 forbids bouncing a bounce. Also `None` when there is no recipient to report,
/// and when the sender could never be a RCPT TO argument (a control character, or longer than
/// [`MAX_SENDER`]); injection rejects such senders, so this only guards against a bad spool.
///
/// Senders such as `MAILER-DAEMON@` or `postmaster@` with a non-null path *are* bounced:
/// a real notification arrives with the null path, a postmaster sending mail wants its bounces,
/// and guessing by local part would silently lose them. RFC 3834's "do not answer
/// `Auto-Submitted` mail" does not apply to DSNs (RFC 3834 §1), so that header is not
/// consulted either.
pub fn build_dsn(input: &DsnInput) -> Option<Dsn> {
    let sender = input.envelope_from;
    if sender.is_empty() || sender == "<>" || input.rcpts.is_empty() {
        return None;
    }
    if sender.len() > MAX_SENDER || sender.chars().any(char::is_control) {
        return None;
    }
    let host = clean_host(input.reporting_mta).unwrap_or_else(|| "localhost".into());
    let id_domain = clean_host(input.message_id_domain).unwrap_or_else(|| host.clone());
    let returned = returned_part(input.original_message, input.return_content);
    let parts = [notification_part(input, &host, &returned), status_part(input, &host), returned.part];
    let boundary = choose_boundary(input.boundary_seed, &parts);
    let any_failed = input.rcpts.iter().any(|r| r.action == Action::Failed);

    let mut head = String::new();
    head.push_str(&format!("From: Mail Delivery System <MAILER-DAEMON@{host}>\r\n"));
    head.push_str(&format!("To: <{sender}>\r\n"));
    let subject = if any_failed { "Undelivered Mail Returned to Sender" } else { "Delivery Status Notification (Delay)" };
    head.push_str(&format!("Subject: {subject}\r\n"));
    head.push_str(&format!("Date: {}\r\n", rfc5322_date(input.now)));
    head.push_str(&format!("Message-ID: <dsn.{}.{:016x}@{id_domain}>\r\n", unix_secs(input.now), input.boundary_seed));
    head.push_str("MIME-Version: 1.0\r\n");
    head.push_str("Auto-Submitted: auto-replied\r\n");
    head.push_str("Content-Type: multipart/report; report-type=delivery-status;\r\n");
    head.push_str(&format!("\tboundary=\"{boundary}\"\r\n"));
    head.push_str("\r\n");
    head.push_str("This is a MIME-encapsulated message.\r\n");

    let mut data = head.into_bytes();
    for part in &parts {
        data.extend_from_slice(format!("\r\n--{boundary}\r\n").as_bytes());
        data.extend_from_slice(part);
    }
    data.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    Some(Dsn { from: String::new(), to: sender.to_string(), data })
}

/// The first part: what happened, in words, for the person who sent the message.
fn notification_part(input: &DsnInput, host: &str, returned: &Returned) -> Vec<u8> {
    let mut t = String::from("Content-Description: Notification\r\n");
    t.push_str("Content-Type: text/plain; charset=us-ascii\r\n\r\n");
    wrap_into(&mut t, "", &format!("This is the mail delivery system at {host}."), "", 72);
    t.push_str("\r\n");

    for (action, explanation) in [
        (
            Action::Failed,
            "Your message could not be delivered to one or more of its recipients. This is a \
             permanent error: it will not be retried for them.",
        ),
        (
            Action::Delayed,
            "Your message has not yet been delivered to one or more of its recipients. The mail \
             system will keep trying; you do not need to send it again. You will be notified if \
             delivery finally fails.",
        ),
    ] {
        let rcpts: Vec<&FailedRcpt> = input.rcpts.iter().filter(|r| r.action == action).collect();
        if rcpts.is_empty() {
            continue;
        }
        wrap_into(&mut t, "", explanation, "", 72);
        t.push_str("\r\n");
        for r in rcpts {
            rcpt_line(&mut t, r);
        }
        t.push_str("\r\n");
    }
    let what = match returned.kind {
        ReturnedKind::Message => "Your message is attached.".to_string(),
        ReturnedKind::Headers(None) => "The headers of your message are attached.".to_string(),
        ReturnedKind::Headers(Some(why)) => format!("Only the headers of your message are attached: {why}."),
    };
    wrap_into(&mut t, "", &what, "", 72);
    t.into_bytes()
}

/// `<rcpt>: host mx said: 550 ...`, wrapped, for the human part.
fn rcpt_line(t: &mut String, r: &FailedRcpt) {
    let (_, addr) = address_field(&r.rcpt);
    // The address is text, not the lead, so an absurdly long one is split like any word.
    let mut text = format!("<{addr}>: ");
    let diag = r.diagnostic.as_deref().and_then(diagnostic_code);
    match (r.remote_mta.as_deref().and_then(clean_host), diag) {
        (Some(mta), Some((kind, d))) if kind.eq_ignore_ascii_case("smtp") => text.push_str(&format!("host {mta} said: {d}")),
        (_, Some((_, d))) => text.push_str(&d),
        (Some(mta), None) => text.push_str(&format!("host {mta} (status {})", status_code(r))),
        (None, None) => text.push_str(&format!("status {}", status_code(r))),
    }
    wrap_into(t, "", &text, "    ", 72);
}

/// The second part: the machine-readable report (RFC 3464 §2).
fn status_part(input: &DsnInput, host: &str) -> Vec<u8> {
    let mut t = String::from("Content-Description: Delivery report\r\n");
    t.push_str("Content-Type: message/delivery-status\r\n\r\n");
    // RFC 3464 §2.2: per-message fields, Original-Envelope-Id first.
    if let Some(envid) = input.envelope_id.map(|e| clean_text(e, 100)).filter(|e| !e.is_empty()) {
        field(&mut t, "Original-Envelope-Id", &envid);
    }
    field(&mut t, "Reporting-MTA", &format!("dns; {host}"));
    field(&mut t, "Arrival-Date", &rfc5322_date(input.arrival));
    for r in &input.rcpts {
        t.push_str("\r\n");
        let (kind, addr) = address_field(&r.rcpt);
        field(&mut t, "Final-Recipient", &format!("{kind}; {addr}"));
        field(&mut t, "Action", r.action.as_str());
        field(&mut t, "Status", &status_code(r));
        if let Some(mta) = r.remote_mta.as_deref().and_then(clean_host) {
            field(&mut t, "Remote-MTA", &format!("dns; {mta}"));
        }
        if let Some((kind, d)) = r.diagnostic.as_deref().and_then(diagnostic_code) {
            field(&mut t, "Diagnostic-Code", &format!("{kind}; {d}"));
        }
        if let Some(at) = r.last_attempt {
            field(&mut t, "Last-Attempt-Date", &rfc5322_date(at));
        }
    }
    t.into_bytes()
}

/// What went into the third part, so the first can say so.
enum ReturnedKind {
    Message,
    /// Headers only; with the reason when the whole message was asked for.
    Headers(Option<&'static str>),
}

struct Returned {
    kind: ReturnedKind,
    part: Vec<u8>,
}

/// The third part: the original message or its headers.
///
/// `message/rfc822` may only be 7bit, 8bit or binary (RFC 2046 §5.2.1), so an original with
/// 8-bit bytes, NULs or over-long lines is returned as headers; `text/rfc822-headers` is text,
/// so its bytes are kept exactly by quoted-printable when they are not 7-bit clean.
fn returned_part(original: &[u8], want: ReturnContent) -> Returned {
    let mut msg = Vec::new();
    normalise_into(original, false, &mut msg);
    let mut why = None;
    if want == ReturnContent::Full {
        if msg.len() > MAX_RETURNED_MESSAGE {
            why = Some("it is larger than the limit for returned messages");
        } else if !seven_bit_clean(&msg) {
            why = Some("it contains 8-bit data or over-long lines");
        } else {
            let mut part = b"Content-Description: Undelivered Message\r\n".to_vec();
            part.extend_from_slice(b"Content-Type: message/rfc822\r\n\r\n");
            part.extend_from_slice(&msg);
            return Returned { kind: ReturnedKind::Message, part };
        }
    }
    let mut headers = header_block(&msg);
    if headers.len() > MAX_RETURNED_HEADERS {
        let cut = headers[..MAX_RETURNED_HEADERS].windows(2).rposition(|w| w == b"\r\n").map_or(0, |p| p + 2);
        headers.truncate(cut);
    }
    let mut part = b"Content-Description: Undelivered Message Headers\r\n".to_vec();
    part.extend_from_slice(b"Content-Type: text/rfc822-headers\r\n");
    if seven_bit_clean(&headers) {
        part.extend_from_slice(b"\r\n");
        part.extend_from_slice(&headers);
    } else {
        part.extend_from_slice(b"Content-Transfer-Encoding: quoted-printable\r\n\r\n");
        quoted_printable_into(&headers, &mut part);
    }
    Returned { kind: ReturnedKind::Headers(why), part }
}

/// The header block of a CRLF-normalised message: up to and including the CRLF of its last
/// header line, or the whole message when it has no body.
fn header_block(msg: &[u8]) -> Vec<u8> {
    if msg.starts_with(b"\r\n") {
        return Vec::new();
    }
    match memchr::memmem::find(msg, b"\r\n\r\n") {
        Some(p) => msg[..p + 2].to_vec(),
        None => msg.to_vec(),
    }
}

/// RFC 2045 §2.7 7bit data: no NUL, no byte above 127, CR and LF only as CRLF (the caller has
/// normalised), lines at most 998 octets.
fn seven_bit_clean(data: &[u8]) -> bool {
    data.iter().all(|&b| b != 0 && b < 0x80) && data.split(|&b| b == b'\n').all(|l| l.len() <= HARD_LINE + 1)
}

/// RFC 2045 §6.7 quoted-printable of CRLF-normalised text: line ends stay hard breaks, lines
/// are soft-broken before 76 characters.
fn quoted_printable_into(data: &[u8], out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for line in data.split_inclusive(|&b| b == b'\n') {
        let (body, crlf) = match line.strip_suffix(b"\r\n") {
            Some(b) => (b, true),
            None => (line, false),
        };
        let mut col = 0;
        for (i, &b) in body.iter().enumerate() {
            let last = i + 1 == body.len();
            let literal = ((b == b' ' || b == b'\t') && !last) || ((33..=126).contains(&b) && b != b'=');
            let width = if literal { 1 } else { 3 };
            // Keep room for the soft break's "=" within 76.
            if col + width > 75 {
                out.extend_from_slice(b"=\r\n");
                col = 0;
            }
            if literal {
                out.push(b);
            } else {
                out.extend_from_slice(&[b'=', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
            }
            col += width;
        }
        if crlf {
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// A boundary derived from the seed that occurs in no part; re-derived on a collision.
///
/// Candidates come from a bijective mix of distinct inputs, so they are all distinct and the
/// loop ends: finite content contains only finitely many of them.
fn choose_boundary(seed: u64, parts: &[Vec<u8>]) -> String {
    let mut n: u64 = 0;
    loop {
        let b = format!("=_mxpipe-dsn_{:016x}", splitmix64(seed.wrapping_add(n.wrapping_mul(0x9e37_79b9_7f4a_7c15))));
        if parts.iter().all(|p| memchr::memmem::find(p, b.as_bytes()).is_none()) {
            return b;
        }
        n += 1;
    }
}

/// The SplitMix64 finaliser: a bijection on u64 that scatters nearby seeds.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// `Name: value`, folded at spaces to [`SOFT_LINE`] where it can be.
fn field(out: &mut String, name: &str, value: &str) {
    wrap_into(out, &format!("{name}: "), value, " ", SOFT_LINE);
}

/// Append `lead` + `text` as CRLF-terminated lines broken at spaces, continuation lines
/// starting with `indent`. Breaking replaces the space, so for a header (`indent` = " ")
/// unfolding gives back the text. A word too long for any line is split at
/// [`HARD_LINE`], the one place the text changes, because the limit is a MUST.
fn wrap_into(out: &mut String, lead: &str, text: &str, indent: &str, width: usize) {
    let room = HARD_LINE.saturating_sub(lead.len().max(indent.len()) + 1).max(1);
    let mut line = String::from(lead);
    let mut fresh = true;
    for word in text.split(' ').filter(|w| !w.is_empty()) {
        for piece in split_at_bytes(word, room) {
            if !fresh && line.len() + 1 + piece.len() > width {
                out.push_str(&line);
                out.push_str("\r\n");
                line = indent.to_string();
                fresh = true;
            }
            if !fresh {
                line.push(' ');
            }
            line.push_str(piece);
            fresh = false;
        }
    }
    out.push_str(line.trim_end());
    out.push_str("\r\n");
}

/// `s` in pieces of at most `max` bytes, cut at character boundaries.
fn split_at_bytes(mut s: &str, max: usize) -> Vec<&str> {
    let mut pieces = Vec::new();
    while s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        if cut == 0 {
            // `max` is narrower than one character: take the character whole.
            cut = s.chars().next().map_or(s.len(), char::len_utf8);
        }
        pieces.push(&s[..cut]);
        s = &s[cut..];
    }
    if !s.is_empty() || pieces.is_empty() {
        pieces.push(s);
    }
    pieces
}

/// Untrusted text for a field or the human part: controls become spaces, non-ASCII becomes
/// `?` (the fields are US-ASCII, RFC 3464 §2.1.2), runs of spaces collapse, at most `max`
/// characters.
fn clean_text(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max));
    let mut n = 0;
    for c in s.chars() {
        let c = match c {
            c if c.is_control() || c.is_whitespace() => ' ',
            c if !c.is_ascii() => '?',
            c => c,
        };
        if c == ' ' && (out.is_empty() || out.ends_with(' ')) {
            continue;
        }
        if n == max {
            out.push_str("...");
            break;
        }
        out.push(c);
        n += 1;
    }
    out.trim_end().to_string()
}

/// A host name for `Reporting-MTA`, `Remote-MTA`, `From:` and the Message-ID: only the
/// characters of a domain name or an address literal survive; `None` if none do.
fn clean_host(s: &str) -> Option<String> {
    let h: String = s.chars().filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':' | '[' | ']')).take(255).collect();
    (!h.is_empty()).then_some(h)
}

/// The address type and value of a `Final-Recipient` field. An ASCII address is `rfc822`;
/// a non-ASCII one is `utf-8` in utf-8-addr-xtext form (RFC 6533 §3): `\x{HEX}` for each
/// non-ASCII character and for `+`, `=` and `\`. Controls are dropped in both.
fn address_field(addr: &str) -> (&'static str, String) {
    let addr: String = addr.chars().filter(|c| !c.is_control()).collect();
    let addr = addr.trim();
    if addr.is_ascii() {
        return ("rfc822", addr.to_string());
    }
    let mut out = String::new();
    for c in addr.chars() {
        match c {
            '+' | '=' | '\\' | ' ' => out.push_str(&format!("\\x{{{:X}}}", u32::from(c))),
            c if c.is_ascii() => out.push(c),
            c => out.push_str(&format!("\\x{{{:X}}}", u32::from(c))),
        }
    }
    ("utf-8", out)
}

/// The RFC 3463 code to report: the given one when it is `class.subject.detail` with class
/// 2, 4 or 5, else the generic code for the action.
fn status_code(r: &FailedRcpt) -> String {
    let parsed = crate::reply::EnhancedCode::parse(r.status.trim()).map(|e| e.to_string());
    parsed.unwrap_or_else(|| match r.action {
        Action::Failed => "5.0.0".into(),
        Action::Delayed => "4.0.0".into(),
    })
}

/// Split a diagnostic into (diagnostic-type, text) for `Diagnostic-Code` (RFC 3464 §2.3.6).
/// A typed value (`smtp; 550 ...`) keeps its type; a bare SMTP reply is `smtp`; anything else
/// is one of our own reasons, `X-mxpipe`. `None` when no text is left to report.
fn diagnostic_code(d: &str) -> Option<(String, String)> {
    let d = clean_text(d, MAX_DIAGNOSTIC);
    if let Some((kind, rest)) = d.split_once(';') {
        let typed = kind.len() <= 32
            && kind.starts_with(|c: char| c.is_ascii_alphabetic())
            && kind.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        if typed {
            let rest = rest.trim();
            return (!rest.is_empty()).then(|| (kind.to_string(), rest.to_string()));
        }
    }
    if d.is_empty() {
        None
    } else if d.len() >= 3 && d.as_bytes()[..3].iter().all(u8::is_ascii_digit) {
        Some(("smtp".into(), d))
    } else {
        Some(("X-mxpipe".into(), d))
    }
}

fn unix_secs(t: SystemTime) -> u64 {
    // A clock before 1970 is a broken clock; the epoch is as good a date as any.
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// An RFC 5322 §3.3 date-time in UTC: `Tue, 01 Jul 2025 09:05:03 +0000`.
pub fn rfc5322_date(t: SystemTime) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let secs = unix_secs(t);
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} +0000",
        DAYS[(days % 7) as usize],
        d,
        MONTHS[(m - 1) as usize],
        y,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Proleptic Gregorian (year, month 1-12, day 1-31) of a day count since 1970-01-01
/// (Howard Hinnant's `civil_from_days`, for non-negative days).
pub(crate) fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const ORIGINAL: &[u8] = b"From: Alice <alice@sender.test>\r\nTo: bob@rcpt.test\r\nSubject: hello\r\n\
Message-ID: <m1@sender.test>\r\n\r\nHi Bob.\r\n";

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    /// A recipient still being retried.
    fn carol() -> FailedRcpt {
        FailedRcpt {
            rcpt: "carol@slow.test".into(),
            action: Action::Delayed,
            status: "4.7.1".into(),
            remote_mta: Some("mx.slow.test".into()),
            diagnostic: Some("451 4.7.1 Try again later".into()),
            last_attempt: None,
        }
    }

    fn bob() -> FailedRcpt {
        FailedRcpt {
            rcpt: "bob@rcpt.test".into(),
            action: Action::Failed,
            status: "5.1.1".into(),
            remote_mta: Some("mx.rcpt.test".into()),
            diagnostic: Some("550 5.1.1 <bob@rcpt.test>: Recipient address rejected: User unknown".into()),
            last_attempt: Some(at(1_751_364_000)),
        }
    }

    fn input(rcpts: Vec<FailedRcpt>) -> DsnInput<'static> {
        DsnInput {
            reporting_mta: "out1.sender.test",
            envelope_from: "alice@sender.test",
            envelope_id: Some("ENV-1"),
            original_message: ORIGINAL,
            arrival: at(1_751_360_700),
            rcpts,
            return_content: ReturnContent::Headers,
            message_id_domain: "sender.test",
            now: at(1_751_364_300),
            boundary_seed: 42,
        }
    }

    fn build(i: &DsnInput) -> Dsn {
        let d = build_dsn(i).expect("a DSN");
        assert_wire_clean(&d.data);
        d
    }

    /// CRLF only, every line within 998 octets: what any SMTP server must accept.
    fn assert_wire_clean(data: &[u8]) {
        for (i, &b) in data.iter().enumerate() {
            if b == b'\n' {
                assert!(i > 0 && data[i - 1] == b'\r', "bare LF at {i}");
            }
            if b == b'\r' {
                assert_eq!(data.get(i + 1), Some(&b'\n'), "bare CR at {i}");
            }
        }
        assert!(data.ends_with(b"\r\n"));
        for line in data.split(|&b| b == b'\n') {
            assert!(line.len() <= HARD_LINE + 1, "line of {} octets", line.len());
        }
    }

    /// One MIME entity: its header block (as text) and body.
    struct Entity {
        headers: String,
        body: Vec<u8>,
    }

    impl Entity {
        fn parse(data: &[u8]) -> Entity {
            let (h, b) = if data.starts_with(b"\r\n") {
                (&data[..0], &data[2..])
            } else {
                match memchr::memmem::find(data, b"\r\n\r\n") {
                    Some(p) => (&data[..p + 2], &data[p + 4..]),
                    None => (data, &data[data.len()..]),
                }
            };
            Entity { headers: String::from_utf8(h.to_vec()).expect("ascii headers"), body: b.to_vec() }
        }

        /// Unfolded header lines as (name, value).
        fn fields(&self) -> Vec<(String, String)> {
            fields_of(&self.headers)
        }

        fn get(&self, name: &str) -> Option<String> {
            self.fields().into_iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v)
        }

        fn text(&self) -> String {
            String::from_utf8(self.body.clone()).expect("ascii body")
        }
    }

    fn fields_of(block: &str) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        for line in block.split("\r\n").filter(|l| !l.is_empty()) {
            if line.starts_with([' ', '\t']) {
                out.last_mut().expect("continuation after a field").1.push_str(line);
            } else {
                let (n, v) = line.split_once(':').expect("a field has a colon");
                out.push((n.to_string(), v.trim_start().to_string()));
            }
        }
        out
    }

    /// The tiny MIME splitter: top-level entity and the parts of its multipart body.
    fn split(data: &[u8]) -> (Entity, Vec<Entity>) {
        let top = Entity::parse(data);
        let ct = top.get("Content-Type").expect("Content-Type");
        let b = ct.split("boundary=\"").nth(1).and_then(|r| r.split('"').next()).expect("boundary");
        let delim = format!("\r\n--{b}");
        let body = &top.body;
        let mut starts: Vec<usize> = memchr::memmem::find_iter(body, delim.as_bytes()).collect();
        assert!(starts.len() >= 2, "no parts");
        let close = starts.pop().expect("closing delimiter");
        assert_eq!(&body[close + delim.len()..], b"--\r\n", "closing delimiter ends the body");
        starts.push(close);
        let parts = starts
            .windows(2)
            .map(|w| {
                let from = w[0] + delim.len();
                assert_eq!(&body[from..from + 2], b"\r\n");
                Entity::parse(&body[from + 2..w[1]])
            })
            .collect();
        (top, parts)
    }

    /// The per-message and per-recipient field groups of a message/delivery-status body.
    fn status_groups(part: &Entity) -> Vec<Vec<(String, String)>> {
        part.text().split("\r\n\r\n").map(fields_of).collect()
    }

    fn qp_decode(s: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < s.len() {
            if s[i] == b'=' {
                if s[i + 1..].starts_with(b"\r\n") {
                    i += 3;
                    continue;
                }
                let hex = std::str::from_utf8(&s[i + 1..i + 3]).expect("hex");
                out.push(u8::from_str_radix(hex, 16).expect("hex"));
                i += 3;
            } else {
                out.push(s[i]);
                i += 1;
            }
        }
        out
    }

    #[test]
    fn three_parts_with_report_content_types() {
        let d = build(&input(vec![bob()]));
        assert_eq!(d.from, "");
        assert_eq!(d.to, "alice@sender.test");
        assert!(d.data.iter().all(|&b| b != 0 && b < 0x80), "7-bit");
        let (top, parts) = split(&d.data);
        let names: Vec<String> = top.fields().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["From", "To", "Subject", "Date", "Message-ID", "MIME-Version", "Auto-Submitted", "Content-Type"]);
        assert_eq!(top.get("From").unwrap(), "Mail Delivery System <MAILER-DAEMON@out1.sender.test>");
        assert_eq!(top.get("To").unwrap(), "<alice@sender.test>");
        assert_eq!(top.get("Subject").unwrap(), "Undelivered Mail Returned to Sender");
        assert_eq!(top.get("Date").unwrap(), "Tue, 01 Jul 2025 10:05:00 +0000");
        assert_eq!(top.get("Message-ID").unwrap(), "<dsn.1751364300.000000000000002a@sender.test>");
        assert_eq!(top.get("MIME-Version").unwrap(), "1.0");
        assert_eq!(top.get("Auto-Submitted").unwrap(), "auto-replied");
        assert!(top.get("Content-Type").unwrap().starts_with("multipart/report; report-type=delivery-status;"));
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[0].get("Content-Type").unwrap(), "text/plain; charset=us-ascii");
        assert_eq!(parts[1].get("Content-Type").unwrap(), "message/delivery-status");
        assert_eq!(parts[2].get("Content-Type").unwrap(), "text/rfc822-headers");
        assert_eq!(parts[2].body, &ORIGINAL[..ORIGINAL.len() - "\r\nHi Bob.\r\n".len()]);
    }

    #[test]
    fn every_status_field_present() {
        let d = build(&input(vec![bob()]));
        let (_, parts) = split(&d.data);
        let groups = status_groups(&parts[1]);
        assert_eq!(groups.len(), 2);
        let f = |g: &Vec<(String, String)>, n: &str| g.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        assert_eq!(f(&groups[0], "Original-Envelope-Id").unwrap(), "ENV-1");
        assert_eq!(f(&groups[0], "Reporting-MTA").unwrap(), "dns; out1.sender.test");
        assert_eq!(f(&groups[0], "Arrival-Date").unwrap(), "Tue, 01 Jul 2025 09:05:00 +0000");
        let r = &groups[1];
        assert_eq!(f(r, "Final-Recipient").unwrap(), "rfc822; bob@rcpt.test");
        assert_eq!(f(r, "Action").unwrap(), "failed");
        assert_eq!(f(r, "Status").unwrap(), "5.1.1");
        assert_eq!(f(r, "Remote-MTA").unwrap(), "dns; mx.rcpt.test");
        assert_eq!(f(r, "Diagnostic-Code").unwrap(), "smtp; 550 5.1.1 <bob@rcpt.test>: Recipient address rejected: User unknown");
        assert_eq!(f(r, "Last-Attempt-Date").unwrap(), "Tue, 01 Jul 2025 10:00:00 +0000");

        // Optional fields are left out, not written empty.
        let mut i = input(vec![FailedRcpt { remote_mta: None, diagnostic: Some("  ".into()), last_attempt: None, ..bob() }]);
        i.envelope_id = None;
        let d = build(&i);
        let (_, parts) = split(&d.data);
        let text = parts[1].text();
        for absent in ["Original-Envelope-Id", "Remote-MTA", "Diagnostic-Code", "Last-Attempt-Date"] {
            assert!(!text.contains(absent), "{absent} in {text}");
        }
        assert!(parts[0].text().contains("<bob@rcpt.test>: status 5.1.1"));
    }

    #[test]
    fn requiretls_bounce_states_code_and_reason() {
        // What a REQUIRETLS message's bounce carries (RFC 8689 §5, 5.7.30 "REQUIRETLS
        // support required"): a local reason, or the session's refusal to send it.
        for (diag, typed) in [
            ("mxpipe: REQUIRETLS: no MX host offers REQUIRETLS over verified TLS", "X-mxpipe; mxpipe: REQUIRETLS: no MX host"),
            ("local: next hop does not advertise REQUIRETLS, not sent", "local: next hop does not advertise REQUIRETLS"),
        ] {
            let r = FailedRcpt { status: "5.7.30".into(), diagnostic: Some(diag.into()), ..bob() };
            let d = build(&input(vec![r]));
            let (_, parts) = split(&d.data);
            let groups = status_groups(&parts[1]);
            let f = |n: &str| groups[1].iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
            assert_eq!(f("Status").unwrap(), "5.7.30");
            let code = f("Diagnostic-Code").unwrap();
            assert!(code.contains(typed), "{code}");
            let text = parts[0].text();
            assert!(text.contains("<bob@rcpt.test>: ") && text.contains("REQUIRETLS"), "the reason is in the human part too: {text}");
            // Headers only, never the body (RFC 8689 §5: as if RET=HDRS).
            assert_eq!(parts[2].get("Content-Type").unwrap(), "text/rfc822-headers");
            assert!(!parts[2].text().contains("Hi Bob."));
        }
    }

    #[test]
    fn no_dsn_for_null_sender_or_nothing_to_report() {
        let mut i = input(vec![bob()]);
        i.envelope_from = "";
        assert_eq!(build_dsn(&i), None);
        i.envelope_from = "<>";
        assert_eq!(build_dsn(&i), None);
        i.envelope_from = "alice@sender.test\r\nRCPT TO:<x@y>";
        assert_eq!(build_dsn(&i), None);
        let long = format!("{}@sender.test", "a".repeat(300));
        i.envelope_from = &long;
        assert_eq!(build_dsn(&i), None);
        assert_eq!(build_dsn(&input(vec![])), None);
        // A non-null daemon-looking sender is still told.
        let mut i = input(vec![bob()]);
        i.envelope_from = "MAILER-DAEMON@sender.test";
        assert_eq!(build_dsn(&i).unwrap().to, "MAILER-DAEMON@sender.test");
    }

    #[test]
    fn server_text_cannot_inject_headers_or_fields() {
        let mut i = input(vec![FailedRcpt {
            rcpt: "bob@rcpt.test\r\nBcc: evil@x.test".into(),
            remote_mta: Some("mx.rcpt.test\r\nBcc: evil@x.test".into()),
            diagnostic: Some("550 5.1.1 no\r\nBcc: evil@x.test\r\n\r\n--x\nAction: delivered\0\x1b[2J".into()),
            ..bob()
        }]);
        i.reporting_mta = "out1\r\nBcc: evil@x.test";
        i.envelope_id = Some("ENV\r\nBcc: evil@x.test");
        i.message_id_domain = "x>\r\nBcc: y";
        let d = build(&i);
        assert!(d.data.iter().all(|&b| b == b'\r' || b == b'\n' || b == b'\t' || (0x20..0x7f).contains(&b)));
        for line in d.data.split(|&b| b == b'\n') {
            assert!(!line.starts_with(b"Bcc") && !line.starts_with(b"Action: delivered"));
        }
        let (top, parts) = split(&d.data);
        assert_eq!(top.fields().len(), 8);
        assert_eq!(parts.len(), 3);
        let groups = status_groups(&parts[1]);
        assert_eq!(groups.len(), 2);
        let diag = groups[1].iter().find(|(k, _)| k == "Diagnostic-Code").unwrap().1.clone();
        assert_eq!(diag, "smtp; 550 5.1.1 no Bcc: evil@x.test --x Action: delivered [2J");
        assert_eq!(groups[1].iter().filter(|(k, _)| k == "Action").count(), 1);
        // Only host-name characters survive: harmless, and on one line.
        assert_eq!(top.get("From").unwrap(), "Mail Delivery System <MAILER-DAEMON@out1Bcc:evilx.test>");
    }

    #[test]
    fn very_long_diagnostic_is_folded_and_capped() {
        let words = "word ".repeat(800);
        let blob = "x".repeat(1500);
        let diag = format!("550 5.7.1 {words}{blob}");
        let d = build(&input(vec![FailedRcpt { diagnostic: Some(diag), ..bob() }]));
        let (_, parts) = split(&d.data);
        let text = parts[1].text();
        assert!(text.lines().all(|l| l.len() <= HARD_LINE));
        let groups = status_groups(&parts[1]);
        let got = groups[1].iter().find(|(k, _)| k == "Diagnostic-Code").unwrap().1.clone();
        // Folding at spaces is undone by unfolding; the cap keeps MAX_DIAGNOSTIC characters.
        let want = format!("smtp; {}...", &format!("550 5.7.1 {words}{blob}")[..MAX_DIAGNOSTIC]);
        assert_eq!(got, want);
        // A word longer than a line is split (the MUST wins over exactness).
        let long_word = format!("550 {}", "y".repeat(1500));
        let d = build(&input(vec![FailedRcpt { diagnostic: Some(long_word), ..bob() }]));
        let (_, parts) = split(&d.data);
        assert!(parts[1].text().contains(&"y".repeat(900)));
        assert!(parts[0].text().contains(&"y".repeat(900)));
        assert_eq!(split_at_bytes("\u{e4}b\u{e4}", 1), ["\u{e4}", "b", "\u{e4}"]);
        assert_eq!(split_at_bytes("abcde", 2), ["ab", "cd", "e"]);
    }

    #[test]
    fn original_without_body() {
        let mut i = input(vec![bob()]);
        i.original_message = b"Subject: x\nFrom: a@sender.test";
        let (_, parts) = split(&build(&i).data);
        assert_eq!(parts[2].body, b"Subject: x\r\nFrom: a@sender.test\r\n");
        i.return_content = ReturnContent::Full;
        let (_, parts) = split(&build(&i).data);
        assert_eq!(parts[2].get("Content-Type").unwrap(), "message/rfc822");
        assert_eq!(parts[2].body, b"Subject: x\r\nFrom: a@sender.test\r\n");
        // No header at all: an empty header block.
        i.return_content = ReturnContent::Headers;
        i.original_message = b"\r\njust a body\r\n";
        let (_, parts) = split(&build(&i).data);
        assert_eq!(parts[2].body, b"");
    }

    #[test]
    fn full_return_when_small_and_seven_bit() {
        let mut i = input(vec![bob()]);
        i.return_content = ReturnContent::Full;
        let (_, parts) = split(&build(&i).data);
        assert_eq!(parts[2].get("Content-Type").unwrap(), "message/rfc822");
        assert_eq!(parts[2].body, ORIGINAL);
        assert!(parts[0].text().contains("Your message is attached."));

        let big = [ORIGINAL, "x".repeat(100).as_bytes(), b"\r\n"].concat().repeat(MAX_RETURNED_MESSAGE / 100);
        i.original_message = &big;
        let (_, parts) = split(&build(&i).data);
        assert_eq!(parts[2].get("Content-Type").unwrap(), "text/rfc822-headers");
        assert!(parts[0].text().replace("\r\n", " ").contains("larger than the limit"));
    }

    #[test]
    fn eight_bit_original_returns_headers_quoted_printable() {
        let orig = "From: J\u{fc}rgen <j@sender.test>\r\nSubject: Gr\u{fc}\u{df}e\r\n\r\nK\u{f6}ln\r\n";
        let mut i = input(vec![bob()]);
        i.original_message = orig.as_bytes();
        i.return_content = ReturnContent::Full;
        let d = build(&i);
        assert!(d.data.iter().all(|&b| b < 0x80), "the DSN stays 7-bit");
        let (_, parts) = split(&d.data);
        assert_eq!(parts[2].get("Content-Type").unwrap(), "text/rfc822-headers");
        assert_eq!(parts[2].get("Content-Transfer-Encoding").unwrap(), "quoted-printable");
        let headers = &orig.as_bytes()[..orig.find("\r\n\r\n").unwrap() + 2];
        assert_eq!(qp_decode(&parts[2].body), headers);
        assert!(parts[0].text().replace("\r\n", " ").contains("contains 8-bit data"));

        // QP soft breaks and trailing whitespace, exactly recoverable.
        let long = format!("X-Long: {}\u{e9} \r\n", "=a".repeat(200));
        let mut out = Vec::new();
        quoted_printable_into(long.as_bytes(), &mut out);
        assert!(out.split(|&b| b == b'\n').all(|l| l.len() <= 77));
        assert_eq!(qp_decode(&out), long.as_bytes());
    }

    #[test]
    fn failed_and_delayed_wording() {
        let delayed = carol();
        let (top, parts) = split(&build(&input(vec![delayed.clone()])).data);
        assert_eq!(top.get("Subject").unwrap(), "Delivery Status Notification (Delay)");
        let t = parts[0].text();
        assert!(t.contains("not yet been delivered") && t.contains("will keep trying"));
        assert!(!t.contains("permanent"));
        assert!(t.contains("<carol@slow.test>: host mx.slow.test said: 451 4.7.1 Try again later"));
        assert!(parts[1].text().contains("Action: delayed\r\nStatus: 4.7.1\r\n"));

        let (top, parts) = split(&build(&input(vec![bob()])).data);
        assert_eq!(top.get("Subject").unwrap(), "Undelivered Mail Returned to Sender");
        let t = parts[0].text();
        assert!(t.contains("could not be delivered") && t.contains("will not be retried"));
        assert!(!t.contains("keep trying"));

        let (top, parts) = split(&build(&input(vec![bob(), delayed])).data);
        assert_eq!(top.get("Subject").unwrap(), "Undelivered Mail Returned to Sender");
        let t = parts[0].text();
        assert!(t.contains("will not be retried") && t.contains("keep trying"));
        assert_eq!(status_groups(&parts[1]).len(), 3);
    }

    #[test]
    fn status_and_diagnostic_normalised() {
        let r = |action, status: &str| status_code(&FailedRcpt { action, status: status.into(), ..bob() });
        assert_eq!(r(Action::Failed, "5.1.1"), "5.1.1");
        assert_eq!(r(Action::Failed, "4.4.7"), "4.4.7");
        assert_eq!(r(Action::Failed, "bogus"), "5.0.0");
        assert_eq!(r(Action::Delayed, "9.1.1"), "4.0.0");
        assert_eq!(r(Action::Failed, "5.1.1\r\nX: y"), "5.0.0");
        let dc = |s: &str| diagnostic_code(s).map(|(k, v)| format!("{k}; {v}"));
        assert_eq!(dc("smtp; 550 x").unwrap(), "smtp; 550 x");
        assert_eq!(dc("550 5.1.1 a;b").unwrap(), "smtp; 550 5.1.1 a;b");
        assert_eq!(dc("mxpipe: null MX: domain accepts no mail").unwrap(), "X-mxpipe; mxpipe: null MX: domain accepts no mail");
        assert_eq!(dc("smtp;"), None);
        assert_eq!(dc("\r\n"), None);
        assert_eq!(dc("550 gr\u{fc}\u{df}e").unwrap(), "smtp; 550 gr??e");
    }

    #[test]
    fn non_ascii_recipient_is_utf8_xtext() {
        assert_eq!(address_field("bob@rcpt.test"), ("rfc822", "bob@rcpt.test".to_string()));
        assert_eq!(address_field("j\u{fc}+x@b\u{fc}cher.test"), ("utf-8", "j\\x{FC}\\x{2B}x@b\\x{FC}cher.test".to_string()));
        let d = build(&input(vec![FailedRcpt { rcpt: "j\u{fc}@rcpt.test".into(), ..bob() }]));
        let (_, parts) = split(&d.data);
        assert!(parts[1].text().contains("Final-Recipient: utf-8; j\\x{FC}@rcpt.test\r\n"));
    }

    #[test]
    fn boundary_avoids_content() {
        let first = choose_boundary(42, &[]);
        let hostile = format!("Subject: {first}\r\n\r\n--{first}\r\n");
        let mut i = input(vec![bob()]);
        i.original_message = hostile.as_bytes();
        i.return_content = ReturnContent::Full;
        let d = build(&i);
        let (top, parts) = split(&d.data);
        let ct = top.get("Content-Type").unwrap();
        assert!(!ct.contains(&first));
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[2].body, hostile.as_bytes());
        // Different seeds, different boundaries.
        assert_ne!(choose_boundary(1, &[]), choose_boundary(2, &[]));
    }

    #[test]
    fn huge_header_block_is_capped_at_a_line_end() {
        let mut orig = Vec::new();
        for n in 0..5000 {
            orig.extend_from_slice(format!("X-Filler-{n}: {}\r\n", "z".repeat(40)).as_bytes());
        }
        orig.extend_from_slice(b"\r\nbody\r\n");
        let mut i = input(vec![bob()]);
        i.original_message = &orig;
        let (_, parts) = split(&build(&i).data);
        assert!(parts[2].body.len() <= MAX_RETURNED_HEADERS);
        assert!(parts[2].body.ends_with(b"\r\n"));
        assert!(orig.starts_with(&parts[2].body));
    }

    #[test]
    fn dates() {
        assert_eq!(rfc5322_date(UNIX_EPOCH), "Thu, 01 Jan 1970 00:00:00 +0000");
        assert_eq!(rfc5322_date(at(951_782_400)), "Tue, 29 Feb 2000 00:00:00 +0000");
        assert_eq!(rfc5322_date(at(4_107_542_400)), "Mon, 01 Mar 2100 00:00:00 +0000");
        assert_eq!(rfc5322_date(at(1_751_360_700 + 59)), "Tue, 01 Jul 2025 09:05:59 +0000");
        assert_eq!(rfc5322_date(UNIX_EPOCH - Duration::from_secs(5)), "Thu, 01 Jan 1970 00:00:00 +0000");
        // Every day for 1000 years round-trips through day/month/year without a gap.
        let mut prev = civil_from_days(0);
        for day in 1..366_000 {
            let cur = civil_from_days(day);
            let next_day = (prev.0, prev.1, prev.2 + 1);
            let next_month = (prev.0, prev.1 + 1, 1);
            let next_year = (prev.0 + 1, 1, 1);
            assert!(cur == next_day || cur == next_month || cur == next_year, "{prev:?} -> {cur:?}");
            prev = cur;
        }
    }

    #[test]
    fn random_input_never_breaks_the_format() {
        let mut rng = fastrand::Rng::with_seed(7);
        let junk = |rng: &mut fastrand::Rng, n: usize| -> String {
            (0..rng.usize(0..n))
                .map(|_| match rng.u8(0..10) {
                    0 => '\r',
                    1 => '\n',
                    2 => ' ',
                    3 => char::from_u32(rng.u32(0x80..0x3000)).unwrap_or('?'),
                    4 => char::from(rng.u8(0..0x20)),
                    _ => char::from(rng.u8(0x21..0x7f)),
                })
                .collect()
        };
        for _ in 0..300 {
            let orig: Vec<u8> = (0..rng.usize(0..3000)).map(|_| rng.u8(..)).collect();
            let rcpts = (0..rng.usize(1..4))
                .map(|_| FailedRcpt {
                    rcpt: junk(&mut rng, 300),
                    action: if rng.bool() { Action::Failed } else { Action::Delayed },
                    status: junk(&mut rng, 8),
                    remote_mta: Some(junk(&mut rng, 300)),
                    diagnostic: Some(junk(&mut rng, 3000)),
                    last_attempt: Some(at(rng.u64(..1 << 40))),
                })
                .collect();
            let (host, envid) = (junk(&mut rng, 100), junk(&mut rng, 200));
            let i = DsnInput {
                reporting_mta: &host,
                envelope_id: Some(&envid),
                original_message: &orig,
                arrival: at(rng.u64(..1 << 40)),
                return_content: if rng.bool() { ReturnContent::Full } else { ReturnContent::Headers },
                boundary_seed: rng.u64(..),
                ..input(rcpts)
            };
            let d = build(&i);
            assert!(d.data.iter().all(|&b| b != 0 && b < 0x80));
            let (_, parts) = split(&d.data);
            assert_eq!(parts.len(), 3);
            assert_eq!(status_groups(&parts[1]).len(), 1 + i.rcpts.len());
        }
    }

    /// The whole notification for a fixed seed and clock, byte for byte: any change to the
    /// format shows up here and must be deliberate.
    #[test]
    fn golden() {
        let carol = carol();
        let i = DsnInput { return_content: ReturnContent::Full, ..input(vec![bob(), carol]) };
        let want = concat!(
            "From: Mail Delivery System <MAILER-DAEMON@out1.sender.test>\r\n",
            "To: <alice@sender.test>\r\n",
            "Subject: Undelivered Mail Returned to Sender\r\n",
            "Date: Tue, 01 Jul 2025 10:05:00 +0000\r\n",
            "Message-ID: <dsn.1751364300.000000000000002a@sender.test>\r\n",
            "MIME-Version: 1.0\r\n",
            "Auto-Submitted: auto-replied\r\n",
            "Content-Type: multipart/report; report-type=delivery-status;\r\n",
            "\tboundary=\"=_mxpipe-dsn_bdd732262feb6e95\"\r\n",
            "\r\n",
            "This is a MIME-encapsulated message.\r\n",
            "\r\n",
            "--=_mxpipe-dsn_bdd732262feb6e95\r\n",
            "Content-Description: Notification\r\n",
            "Content-Type: text/plain; charset=us-ascii\r\n",
            "\r\n",
            "This is the mail delivery system at out1.sender.test.\r\n",
            "\r\n",
            "Your message could not be delivered to one or more of its recipients.\r\n",
            "This is a permanent error: it will not be retried for them.\r\n",
            "\r\n",
            "<bob@rcpt.test>: host mx.rcpt.test said: 550 5.1.1 <bob@rcpt.test>:\r\n",
            "    Recipient address rejected: User unknown\r\n",
            "\r\n",
            "Your message has not yet been delivered to one or more of its\r\n",
            "recipients. The mail system will keep trying; you do not need to send it\r\n",
            "again. You will be notified if delivery finally fails.\r\n",
            "\r\n",
            "<carol@slow.test>: host mx.slow.test said: 451 4.7.1 Try again later\r\n",
            "\r\n",
            "Your message is attached.\r\n",
            "\r\n",
            "--=_mxpipe-dsn_bdd732262feb6e95\r\n",
            "Content-Description: Delivery report\r\n",
            "Content-Type: message/delivery-status\r\n",
            "\r\n",
            "Original-Envelope-Id: ENV-1\r\n",
            "Reporting-MTA: dns; out1.sender.test\r\n",
            "Arrival-Date: Tue, 01 Jul 2025 09:05:00 +0000\r\n",
            "\r\n",
            "Final-Recipient: rfc822; bob@rcpt.test\r\n",
            "Action: failed\r\n",
            "Status: 5.1.1\r\n",
            "Remote-MTA: dns; mx.rcpt.test\r\n",
            "Diagnostic-Code: smtp; 550 5.1.1 <bob@rcpt.test>: Recipient address rejected:\r\n",
            " User unknown\r\n",
            "Last-Attempt-Date: Tue, 01 Jul 2025 10:00:00 +0000\r\n",
            "\r\n",
            "Final-Recipient: rfc822; carol@slow.test\r\n",
            "Action: delayed\r\n",
            "Status: 4.7.1\r\n",
            "Remote-MTA: dns; mx.slow.test\r\n",
            "Diagnostic-Code: smtp; 451 4.7.1 Try again later\r\n",
            "\r\n",
            "--=_mxpipe-dsn_bdd732262feb6e95\r\n",
            "Content-Description: Undelivered Message\r\n",
            "Content-Type: message/rfc822\r\n",
            "\r\n",
            "From: Alice <alice@sender.test>\r\n",
            "To: bob@rcpt.test\r\n",
            "Subject: hello\r\n",
            "Message-ID: <m1@sender.test>\r\n",
            "\r\n",
            "Hi Bob.\r\n",
            "\r\n",
            "--=_mxpipe-dsn_bdd732262feb6e95--\r\n",
        );
        let d = build(&i);
        assert_eq!(String::from_utf8_lossy(&d.data), want);
        assert_eq!(d, Dsn { from: String::new(), to: "alice@sender.test".into(), data: want.as_bytes().to_vec() });
    }
}
