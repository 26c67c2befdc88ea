//! Envelope addresses: one parser for every place an address or a destination domain enters
//! mxpipe (the HTTP and SMTP injection listeners, `mxpipe send`'s input, the configuration,
//! the operator's commands, and the client session before it writes MAIL FROM / RCPT TO).
//!
//! Four checks that disagreed meant an address could be accepted at one door, spooled, and
//! bounced at the next. [`Mailbox::parse`] is the verdict; [`cases`] is the table every
//! entry point is tested against.
//!
//! Decisions (RFC 5321 §4.1.2, §4.1.3):
//! - Domains are sent and keyed as A-labels: lowercase ASCII, no trailing dot, IDN U-labels
//!   converted with UTS 46 (`bücher.example` → `xn--bcher-kva.example`).
//! - Labels are LDH (letters, digits, hyphen, not first or last). `_` is refused: RFC 5321's
//!   `sub-domain` has no underscore, and names with one are DNS service labels (`_dmarc`),
//!   never mail domains; a server that checks the grammar would refuse such a recipient
//!   after we had accepted it.
//! - Address literals (`[192.0.2.1]`, `[IPv6:…]`) are refused: mxpipe routes by MX lookup of a
//!   domain name and has no way to deliver to a literal, so accepting one would only bounce
//!   it later.
//! - Local parts are a dot-string or a quoted string, kept as given (case matters to the
//!   receiving host). They may hold UTF-8 (RFC 6531 §3.3: `atext` and `qtextSMTP` take
//!   `UTF8-non-ascii`); such an address needs SMTPUTF8 ([`Mailbox::needs_smtputf8`]) and is
//!   written with its domain in U-labels (`jörg@bücher.example`), while an ASCII local part is
//!   written with A-labels and can go to any server. Unicode spaces and invisible format
//!   characters (zero-width, bidi controls) are refused: nobody can read such an address back.
//!   `<`, `>` are refused everywhere, even quoted: they frame the path on the wire.
//! - Every bound is in octets of the form sent: 64 for the local part (UTF-8 octets), 254 for
//!   the mailbox in both its A-label and its UTF-8 form.
//! - The null sender is [`ReversePath::Null`], written `""`; a [`Mailbox`] is never empty.
//!
//! The module owns syntax only: it must not resolve names or decide routing.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

/// Longest local part, in octets (RFC 5321 §4.5.3.1.1).
pub const MAX_LOCAL: usize = 64;
/// Longest domain, in octets of its A-label form, without the trailing dot (RFC 1035 §2.3.4).
pub const MAX_DOMAIN: usize = 253;
/// Longest label, in octets (RFC 1035 §2.3.4).
pub const MAX_LABEL: usize = 63;
/// Longest mailbox, `local@domain` (RFC 5321 §4.5.3.1.3: a path is 256 octets with `<>`).
pub const MAX_MAILBOX: usize = 254;
/// Input longer than this is refused before any work (no A-label form of it could fit).
const MAX_INPUT: usize = 1024;

/// Why an address or a domain was refused: the input and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?}: {kind}")]
pub struct AddressError {
    /// What was given (an address, or a domain where only a domain was asked for).
    pub input: String,
    /// What is wrong with it.
    pub kind: ErrorKind,
}

/// What is wrong, worded for the person who wrote the address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Nothing was given: an empty address, or an empty domain where only a domain was asked for.
    #[error("empty address: give local@domain (only a sender may be the null sender \"\")")]
    Empty,
    /// An address without an `@` (and without a space, which would be the better reason).
    #[error("no @: give local@domain")]
    NoAt,
    /// Nothing before the `@`, or an empty quoted local part (`""@example.test`).
    #[error("nothing before the @: give local@domain")]
    EmptyLocal,
    /// A second unquoted `@`, after the one that starts the domain.
    #[error("more than one @ outside quotes: an @ in the local part must be quoted, as in \"a@b\"@example.com")]
    TwoAt,
    /// A non-ASCII local part where only ASCII will do ([`Mailbox::to_ascii`]: a server
    /// without SMTPUTF8). The parser accepts UTF-8 local parts and never returns this.
    #[error("the local part is not ASCII: it can only be sent with SMTPUTF8 (RFC 6531), and there is no ASCII form of it")]
    NonAsciiLocal,
    /// A Unicode space (no-break space, ideographic space, ...) or an invisible format
    /// character (zero-width, bidi control, byte-order mark): refused, as nobody can read or
    /// type the address back.
    #[error("contains the invisible or space character U+{0:04X}: remove it")]
    Invisible(u32),
    /// A control character anywhere; checked first, as a CR or LF would inject a command.
    #[error("contains a control character (CR, LF, TAB, NUL, DEL, ...)")]
    Control,
    /// A space in an unquoted local part or in the domain.
    #[error("contains a space outside quotes")]
    Space,
    /// `<` or `>` anywhere, even quoted: they frame the path on the wire.
    #[error("contains '<' or '>': give the address without angle brackets")]
    AngleBracket,
    /// The first character of an unquoted local part that is neither `atext` nor a dot.
    #[error("{0:?} is not allowed in an unquoted local part: quote the local part, as in \"a,b\"@example.com")]
    LocalChar(char),
    /// An unquoted local part with a leading, trailing or doubled dot.
    #[error("the local part starts or ends with a dot, or has two in a row: fix the dots, or quote the local part")]
    LocalDots,
    /// A quoted local part without its closing quote, or followed by something other than `@`.
    #[error("the quoted local part is not closed, or is not followed by @")]
    Unquoted,
    /// A character a quoted local part may not hold (not printable ASCII or UTF-8), bare, or
    /// after a backslash (which takes printable ASCII only).
    #[error("{0:?} is not allowed in a quoted local part (only printable ASCII or UTF-8, and \\ before printable ASCII)")]
    QuotedChar(char),
    /// The local part's length in octets, over [`MAX_LOCAL`].
    #[error("the local part is {0} octets, over the limit of 64 (RFC 5321)")]
    LocalTooLong(usize),
    /// The address's length in octets (the domain as A-labels), over [`MAX_MAILBOX`].
    #[error("the address is {0} octets, over the limit of 254 (RFC 5321)")]
    TooLong(usize),
    /// Nothing after the `@`, or only a dot.
    #[error("no domain after the @: give local@domain")]
    EmptyDomain,
    /// An address literal (`[192.0.2.1]`, `[IPv6:…]`) where a domain name must be.
    #[error("address literals like [192.0.2.1] are not supported: mxpipe delivers by MX lookup of a domain name; give a domain")]
    Literal,
    /// An empty label in the domain: a leading dot, two dots in a row, or two trailing dots.
    #[error("an empty label (a leading dot, or two dots in a row) in the domain")]
    EmptyLabel,
    /// The domain's length in octets as A-labels, over [`MAX_DOMAIN`].
    #[error("the domain is {0} octets (as A-labels), over the limit of 253")]
    DomainTooLong(usize),
    /// A label (as an A-label) and its length in octets, over [`MAX_LABEL`].
    #[error("the domain label {0:?} is {1} octets, over the limit of 63")]
    LabelTooLong(String, usize),
    /// A label and its first character that is not a letter, digit or `-` (`_` included).
    #[error("the domain label {0:?} has {1:?}: only letters, digits and '-' are allowed (RFC 5321; '_' is for DNS service names, not mail domains)")]
    LabelChar(String, char),
    /// A label that starts or ends with `-`.
    #[error("the domain label {0:?} starts or ends with '-'")]
    LabelHyphen(String),
    /// A non-ASCII or `xn--` domain that UTS 46 cannot convert to (or check as) A-labels.
    #[error("not a valid internationalised domain name (UTS 46 refuses it); check the spelling, or give its xn-- form")]
    Idna,
}

impl AddressError {
    fn new(input: &str, kind: ErrorKind) -> AddressError {
        AddressError { input: input.to_string(), kind }
    }
}

/// A destination domain as mxpipe sends and keys it: A-labels, lowercase, no trailing dot.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Domain(String);

impl Domain {
    /// Check and normalise a domain name (one trailing dot allowed; U-labels become A-labels).
    pub fn parse(s: &str) -> Result<Domain, AddressError> {
        normalise_domain(s).map(|d| Domain(d.into_owned())).map_err(|kind| AddressError::new(s, kind))
    }

    /// The A-label form, as sent on the wire and used as the key for routing.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The A-label form, without a copy.
    pub fn into_string(self) -> String {
        self.0
    }

    /// Whether the domain has an IDN label (`xn--`): its U-label form differs from the
    /// A-label one, so a server without SMTPUTF8 must be given the A-label form.
    pub fn is_idn(&self) -> bool {
        self.0.split('.').any(|l| l.starts_with("xn--"))
    }

    /// The U-label form (`bücher.example`), for an address sent with SMTPUTF8 and for people.
    /// Borrows when there is no IDN label; falls back to the A-label form if UTS 46 would not
    /// give back the same A-labels (it always should: the A-label was checked at parse).
    pub fn to_unicode(&self) -> Cow<'_, str> {
        if !self.is_idn() {
            return Cow::Borrowed(&self.0);
        }
        let (u, r) = idna::domain_to_unicode(&self.0);
        match r {
            Ok(()) if normalise_domain(&u).is_ok_and(|a| a == self.0) => Cow::Owned(u),
            _ => Cow::Borrowed(&self.0),
        }
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Domain {
    type Err = AddressError;
    fn from_str(s: &str) -> Result<Domain, AddressError> {
        Domain::parse(s)
    }
}

impl AsRef<str> for Domain {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl From<Domain> for String {
    fn from(d: Domain) -> String {
        d.0
    }
}

/// `local@domain`: the local part as given, the domain normalised ([`Domain`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Mailbox {
    local: String,
    domain: Domain,
    /// The domain's U-label form, kept only when the local part is UTF-8 and the domain has
    /// an IDN label: the written form is then all UTF-8.
    unicode_domain: Option<Box<str>>,
}

impl Mailbox {
    /// Check an address given without angle brackets (a recipient, or a sender that is not
    /// the null sender; for a sender use [`ReversePath::parse`]).
    pub fn parse(s: &str) -> Result<Mailbox, AddressError> {
        parse_mailbox(s).map_err(|kind| AddressError::new(s, kind))
    }

    /// The local part, as given (quotes included when it was quoted).
    pub fn local(&self) -> &str {
        &self.local
    }

    /// The domain, normalised: the one delivery resolves and queues by.
    pub fn domain(&self) -> &Domain {
        &self.domain
    }

    /// The domain, dropping the local part (no copy).
    pub fn into_domain(self) -> Domain {
        self.domain
    }

    /// Whether the address can only be sent with SMTPUTF8 (RFC 6531): its local part is
    /// UTF-8. An ASCII local part with an IDN domain does not: it goes with A-labels.
    pub fn needs_smtputf8(&self) -> bool {
        !self.local.is_ascii()
    }

    /// The all-ASCII form for a server without SMTPUTF8: the local part and the domain in
    /// A-labels, or [`ErrorKind::NonAsciiLocal`] when the local part is UTF-8 (it has no
    /// ASCII form; the recipient bounces with 5.6.7).
    pub fn to_ascii(&self) -> Result<String, AddressError> {
        if self.needs_smtputf8() {
            return Err(AddressError::new(&self.to_string(), ErrorKind::NonAsciiLocal));
        }
        Ok(format!("{}@{}", self.local, self.domain))
    }
}

impl fmt::Display for Mailbox {
    /// The normal form, as spooled and sent: an ASCII local part with the A-label domain
    /// (sendable to any server), a UTF-8 one with the U-label domain (all UTF-8, as the
    /// person wrote it; sent only with SMTPUTF8).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let domain = self.unicode_domain.as_deref().unwrap_or(self.domain.as_str());
        write!(f, "{}@{domain}", self.local)
    }
}

impl FromStr for Mailbox {
    type Err = AddressError;
    fn from_str(s: &str) -> Result<Mailbox, AddressError> {
        Mailbox::parse(s)
    }
}

/// An envelope sender: a mailbox, or the null sender (`MAIL FROM:<>`, for bounces).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ReversePath {
    /// The null sender, `""`: a bounce or other notification, which is never bounced in turn.
    Null,
    /// A sender that gets the bounces.
    Mailbox(Mailbox),
}

impl ReversePath {
    /// `""` is the null sender; anything else must be a [`Mailbox`].
    pub fn parse(s: &str) -> Result<ReversePath, AddressError> {
        if s.is_empty() {
            return Ok(ReversePath::Null);
        }
        Mailbox::parse(s).map(ReversePath::Mailbox)
    }

    /// Where bounces go: the sender's mailbox, or `None` for the null sender.
    pub fn mailbox(&self) -> Option<&Mailbox> {
        match self {
            ReversePath::Null => None,
            ReversePath::Mailbox(m) => Some(m),
        }
    }

    /// Whether this is the null sender, to which no DSN may be sent.
    pub fn is_null(&self) -> bool {
        matches!(self, ReversePath::Null)
    }
}

impl fmt::Display for ReversePath {
    /// What goes between `<` and `>`: nothing for the null sender.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReversePath::Null => Ok(()),
            ReversePath::Mailbox(m) => m.fmt(f),
        }
    }
}

impl FromStr for ReversePath {
    type Err = AddressError;
    fn from_str(s: &str) -> Result<ReversePath, AddressError> {
        ReversePath::parse(s)
    }
}

macro_rules! string_serde {
    ($t:ty) => {
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<$t, D::Error> {
                let s = Cow::<str>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}
string_serde!(Domain);
string_serde!(Mailbox);
string_serde!(ReversePath);

fn parse_mailbox(s: &str) -> Result<Mailbox, ErrorKind> {
    if s.is_empty() {
        return Err(ErrorKind::Empty);
    }
    if s.len() > MAX_INPUT {
        return Err(ErrorKind::TooLong(s.len()));
    }
    // Framing first: these are wrong wherever they are, and would change the command.
    if s.chars().any(char::is_control) {
        return Err(ErrorKind::Control);
    }
    if s.contains(['<', '>']) {
        return Err(ErrorKind::AngleBracket);
    }
    if let Some(c) = s.chars().find(|&c| invisible(c)) {
        return Err(ErrorKind::Invisible(c as u32));
    }
    let (local, domain) = if s.starts_with('"') {
        let end = quoted_end(s)?;
        match s[end..].strip_prefix('@') {
            Some(domain) => (&s[..end], domain),
            None => return Err(ErrorKind::Unquoted),
        }
    } else {
        let (local, domain) = s.split_once('@').ok_or(if s.contains(' ') { ErrorKind::Space } else { ErrorKind::NoAt })?;
        if local.contains(' ') {
            return Err(ErrorKind::Space);
        }
        if domain.contains('@') {
            return Err(ErrorKind::TwoAt);
        }
        check_dot_string(local)?;
        (local, domain)
    };
    if local.len() > MAX_LOCAL {
        return Err(ErrorKind::LocalTooLong(local.len()));
    }
    let domain = Domain(normalise_domain(domain).map_err(|k| if k == ErrorKind::Empty { ErrorKind::EmptyDomain } else { k })?.into_owned());
    let unicode_domain = (!local.is_ascii() && domain.is_idn()).then(|| Box::<str>::from(domain.to_unicode()));
    // Both forms must fit: the A-label one is sent without SMTPUTF8, the UTF-8 one with it.
    let longest = domain.as_str().len().max(unicode_domain.as_deref().map_or(0, str::len));
    let total = local.len() + 1 + longest;
    if total > MAX_MAILBOX {
        return Err(ErrorKind::TooLong(total));
    }
    Ok(Mailbox { local: local.to_string(), domain, unicode_domain })
}

/// A Unicode space or an invisible format character, which RFC 6531's grammar lets through
/// but no person can read back: refused in local parts (UTS 46 refuses them in domains).
fn invisible(c: char) -> bool {
    !c.is_ascii()
        && (c.is_whitespace()
            || matches!(c, '\u{ad}' | '\u{34f}' | '\u{61c}' | '\u{115f}' | '\u{1160}' | '\u{180e}' | '\u{200b}'..='\u{200f}'
                | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{206f}' | '\u{3164}' | '\u{fe00}'..='\u{fe0f}' | '\u{feff}'
                | '\u{ffa0}' | '\u{fff0}'..='\u{fffb}'))
}

/// RFC 5321 `Dot-string`: atoms of `atext` joined by single dots.
fn check_dot_string(local: &str) -> Result<(), ErrorKind> {
    if local.is_empty() {
        return Err(ErrorKind::EmptyLocal);
    }
    if let Some(c) = local.chars().find(|&c| c != '.' && !is_atext(c)) {
        return Err(ErrorKind::LocalChar(c));
    }
    if local.split('.').any(str::is_empty) {
        return Err(ErrorKind::LocalDots);
    }
    Ok(())
}

/// RFC 5321 `atext`, with RFC 6531 §3.3's `UTF8-non-ascii` (controls and invisible
/// characters were refused before).
fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || !c.is_ascii()
}

/// The end (one past the closing quote) of the RFC 5321 `Quoted-string` that `s` starts with.
fn quoted_end(s: &str) -> Result<usize, ErrorKind> {
    let mut chars = s.char_indices().skip(1);
    while let Some((i, c)) = chars.next() {
        match c {
            '"' if i == 1 => return Err(ErrorKind::EmptyLocal),
            '"' => return Ok(i + 1),
            '\\' => match chars.next() {
                // RFC 6531 §3.3 extends `qtextSMTP`, not `quoted-pairSMTP`: an escape is ASCII.
                Some((_, c)) if (' '..='~').contains(&c) => {}
                Some((_, c)) => return Err(ErrorKind::QuotedChar(c)),
                None => return Err(ErrorKind::Unquoted),
            },
            ' '..='~' => {}
            c if !c.is_ascii() && !c.is_control() => {}
            c => return Err(ErrorKind::QuotedChar(c)),
        }
    }
    Err(ErrorKind::Unquoted)
}

/// The A-label form of `s`, or why it is not a domain. Borrows when `s` is already normal.
fn normalise_domain(s: &str) -> Result<Cow<'_, str>, ErrorKind> {
    let bare = s.strip_suffix('.').unwrap_or(s);
    if bare.is_empty() {
        return Err(ErrorKind::Empty);
    }
    if bare.len() > MAX_INPUT {
        return Err(ErrorKind::DomainTooLong(bare.len()));
    }
    if bare.starts_with('[') {
        return Err(ErrorKind::Literal);
    }
    if bare.chars().any(char::is_control) {
        return Err(ErrorKind::Control);
    }
    if bare.contains(' ') {
        return Err(ErrorKind::Space);
    }
    if bare.contains(['<', '>']) {
        return Err(ErrorKind::AngleBracket);
    }
    let needs_idna = !bare.is_ascii() || bare.split('.').any(|l| l.len() >= 4 && l[..4].eq_ignore_ascii_case("xn--"));
    let ascii: Cow<'_, str> = if needs_idna {
        // No deny list or hyphen rule here: the LDH check below gives the precise reason.
        use idna::uts46::{AsciiDenyList, DnsLength, Hyphens, Uts46};
        let a =
            Uts46::new().to_ascii(bare.as_bytes(), AsciiDenyList::EMPTY, Hyphens::Allow, DnsLength::Ignore).map_err(|_| ErrorKind::Idna)?;
        Cow::Owned(a.into_owned())
    } else if bare.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(bare.to_ascii_lowercase())
    } else {
        Cow::Borrowed(bare)
    };
    for label in ascii.split('.') {
        if label.is_empty() {
            return Err(ErrorKind::EmptyLabel);
        }
        if label.len() > MAX_LABEL {
            return Err(ErrorKind::LabelTooLong(label.to_string(), label.len()));
        }
        if let Some(c) = label.chars().find(|&c| !(c.is_ascii_alphanumeric() || c == '-')) {
            return Err(ErrorKind::LabelChar(label.to_string(), c));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(ErrorKind::LabelHyphen(label.to_string()));
        }
    }
    if ascii.len() > MAX_DOMAIN {
        return Err(ErrorKind::DomainTooLong(ascii.len()));
    }
    Ok(ascii)
}

/// The table of accepted and refused addresses that every entry point is tested against
/// (`tests/address_cases.rs`), so the doors cannot drift apart again.
#[doc(hidden)]
pub mod cases {
    /// One row: the address as a user writes it, and its normalised form when accepted.
    #[derive(Debug, Clone)]
    pub struct Case {
        pub input: String,
        pub accepted: Option<String>,
    }

    /// The local part of the rows that also test domain-only entry points: for a row
    /// `user@D`, `D` must get the same verdict as a domain (and normalise to the same).
    pub const DOMAIN_ROW: &str = "user@";

    /// Every row.
    pub fn all() -> Vec<Case> {
        let label63 = "a".repeat(63);
        // Three labels of 63 and a fourth, with dots: 249 octets (the longest domain after
        // `user@` in a 254-octet mailbox) and 254 (over the 253 of any domain).
        let domain249 = format!("{label63}.{label63}.{label63}.{}", "b".repeat(57));
        let domain254 = format!("{label63}.{label63}.{label63}.{}", "b".repeat(62));
        let local64 = "l".repeat(64);
        let same = |s: &str| (s.to_string(), Some(s.to_string()));
        let to = |s: &str, n: &str| (s.to_string(), Some(n.to_string()));
        let no = |s: &str| (s.to_string(), None);
        let rows = vec![
            same("user@example.test"),
            same("first.last+tag@example.test"),
            same("User@example.test"),
            to("user@EXAMPLE.Test", "user@example.test"),
            to("user@example.test.", "user@example.test"),
            same("user@localhost"),
            same("user@a-b.example"),
            same("user@123.example"),
            to("user@bücher.example", "user@xn--bcher-kva.example"),
            to("user@BÜCHER.example", "user@xn--bcher-kva.example"),
            to("user@XN--BCHER-KVA.example", "user@xn--bcher-kva.example"),
            same("\"john..doe\"@example.test"),
            same("\"first last\"@example.test"),
            same("\"a@b\"@example.test"),
            same("\"q\\\"uote\"@example.test"),
            // SMTPUTF8 (RFC 6531): a UTF-8 local part is written with the domain in U-labels.
            same("jörg@example.test"),
            same("\"jörg\"@example.test"),
            same("\"jörg müller\"@example.test"),
            same("Jörg.Müller@bücher.example"),
            to("jörg@BÜCHER.example", "jörg@bücher.example"),
            to("jörg@xn--bcher-kva.example", "jörg@bücher.example"),
            to("jörg@bücher.example.", "jörg@bücher.example"),
            same("用户@例子.广告"),
            same("δοκιμή@παράδειγμα.δοκιμή"),
            to("user@例子.广告", "user@xn--fsqu00a.xn--4rr70v"),
            to("user@παράδειγμα.δοκιμή", "user@xn--hxajbheg2az3al.xn--jxalpdlp"),
            same(&format!("{}@example.test", "ü".repeat(32))),
            no(&format!("{}x@example.test", "ü".repeat(32))),
            // Its A-label form fits (179 octets) but its UTF-8 form (308) does not.
            no(&format!("jörg@{0}.{0}.{0}.test", "ä".repeat(50))),
            no("jö rg@example.test"),
            no("jö\u{a0}rg@example.test"),
            no("\"jö\u{3000}rg\"@example.test"),
            no("jö\u{200b}rg@example.test"),
            no("\"jö\u{202e}rg\"@example.test"),
            no("jörg\u{feff}@example.test"),
            no("jö\u{85}rg@example.test"),
            no("\"a\\ü\"@example.test"),
            no("jörg@under_score.example"),
            no("jörg@[192.0.2.1]"),
            no("jörg@"),
            no("ö@@example.test"),
            no(""),
            no("nodomain"),
            no("@example.test"),
            no("\"\"@example.test"),
            no("user@"),
            no("user@."),
            no("user@@example.test"),
            no("a@b@example.test"),
            no("user@a@example.test"),
            no("first last@example.test"),
            no(" user@example.test"),
            no("user@exa mple.test"),
            no("user@example.test "),
            no("<user@example.test>"),
            no("user@<example.test>"),
            no("us[er@example.test"),
            no("us,er@example.test"),
            no(".user@example.test"),
            no("us..er@example.test"),
            no("user.@example.test"),
            no("\"unclosed@example.test"),
            no("\"q\"x@example.test"),
            no("user\r\n@example.test"),
            no("user@example.test\r\nRCPT TO:<x@evil.test>"),
            no("user@exam\tple.test"),
            no("user@exam\u{7f}ple.test"),
            no("us\0er@example.test"),
            no("user@[192.0.2.1]"),
            no("user@[IPv6:2001:db8::1]"),
            no("user@-lead.example"),
            no("user@trail-.example"),
            no("user@under_score.example"),
            no("user@.example"),
            no("user@a..example"),
            no("user@example..test."),
            no("user@example.test.."),
            no("user@xn--a.example"),
            no("user@ex!ample.test"),
            same(&format!("user@{label63}.example")),
            no(&format!("user@{label63}a.example")),
            same(&format!("{local64}@example.test")),
            no(&format!("{local64}l@example.test")),
            same(&format!("user@{domain249}")),
            no(&format!("user@{domain254}")),
            // Domain fine (249 octets) and local fine (5), but 255 in all.
            no(&format!("userx@{domain249}")),
            no(&format!("user@{}", "a".repeat(2000))),
        ];
        rows.into_iter().map(|(input, accepted)| Case { input, accepted }).collect()
    }

    /// The rows that test a domain-only entry point: `(domain, normalised when accepted)`.
    pub fn domains() -> Vec<(String, Option<String>)> {
        all()
            .into_iter()
            .filter_map(|c| {
                let d = c.input.strip_prefix(DOMAIN_ROW)?.to_string();
                Some((d, c.accepted.map(|a| a[DOMAIN_ROW.len()..].to_string())))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_holds_for_the_parsers() {
        for c in cases::all() {
            let got = Mailbox::parse(&c.input).map(|m| m.to_string());
            assert_eq!(got.as_ref().ok(), c.accepted.as_ref(), "Mailbox::parse({:?}) = {got:?}", c.input);
            let rp = ReversePath::parse(&c.input).map(|r| r.to_string());
            if c.input.is_empty() {
                assert_eq!(rp, Ok(String::new()), "\"\" is the null sender");
            } else {
                assert_eq!(rp.ok(), c.accepted, "ReversePath::parse({:?})", c.input);
            }
        }
        let domains = cases::domains();
        assert!(domains.len() > 30, "the table has domain rows");
        for (d, want) in domains {
            let got = Domain::parse(&d).map(|d| d.to_string());
            assert_eq!(got.as_ref().ok(), want.as_ref(), "Domain::parse({d:?}) = {got:?}");
        }
    }

    #[test]
    fn errors_say_what_to_do() {
        let kind = |s: &str| Mailbox::parse(s).unwrap_err().kind;
        assert_eq!(kind("jö\u{200b}rg@example.test"), ErrorKind::Invisible(0x200b));
        assert!(Mailbox::parse("jö\u{200b}rg@example.test").unwrap_err().to_string().contains("U+200B"));
        assert_eq!(kind("jö rg@example.test"), ErrorKind::Space);
        assert_eq!(kind("\"a\\ü\"@example.test"), ErrorKind::QuotedChar('ü'));
        assert_eq!(kind(&format!("{}@c.test", "ü".repeat(33))), ErrorKind::LocalTooLong(66));
        assert_eq!(kind(&format!("jörg@{0}.{0}.{0}.test", "ä".repeat(50))), ErrorKind::TooLong(5 + 1 + 3 * 100 + 3 + 4));
        let e = Mailbox::parse("jörg@bücher.example").unwrap().to_ascii().unwrap_err();
        assert_eq!(e.kind, ErrorKind::NonAsciiLocal);
        assert!(e.to_string().contains("SMTPUTF8"), "{e}");
        assert_eq!(kind("user@[192.0.2.1]"), ErrorKind::Literal);
        assert_eq!(kind("a@b@c.test"), ErrorKind::TwoAt);
        assert_eq!(kind("@c.test"), ErrorKind::EmptyLocal);
        assert_eq!(kind("a@"), ErrorKind::EmptyDomain);
        assert_eq!(kind(""), ErrorKind::Empty);
        assert_eq!(kind("a b@c.test"), ErrorKind::Space);
        assert_eq!(kind("a\n@c.test"), ErrorKind::Control);
        assert_eq!(kind("<a@c.test>"), ErrorKind::AngleBracket);
        assert_eq!(kind("a@under_score.test"), ErrorKind::LabelChar("under_score".into(), '_'));
        assert_eq!(kind("a@-x.test"), ErrorKind::LabelHyphen("-x".into()));
        assert_eq!(kind(&format!("{}@c.test", "l".repeat(65))), ErrorKind::LocalTooLong(65));
        let e = Mailbox::parse("a@b@c.test").unwrap_err().to_string();
        assert!(e.starts_with("\"a@b@c.test\": more than one @"), "{e}");
        assert_eq!(Domain::parse("").unwrap_err().kind, ErrorKind::Empty);
        let d253 = format!("{0}.{0}.{0}.{1}", "a".repeat(63), "b".repeat(61));
        assert_eq!(Domain::parse(&d253).map(|d| d.as_str().len()), Ok(253));
        assert_eq!(Domain::parse(&format!("{d253}.")).map(|d| d.as_str().len()), Ok(253), "the trailing dot is not counted");
        assert_eq!(Domain::parse(&format!("{d253}b")).unwrap_err().kind, ErrorKind::DomainTooLong(254));
    }

    #[test]
    fn parts_and_forms() {
        let m = Mailbox::parse("Fred.Bloggs@Bücher.Example.").unwrap();
        assert_eq!((m.local(), m.domain().as_str()), ("Fred.Bloggs", "xn--bcher-kva.example"));
        assert_eq!(m.to_string(), "Fred.Bloggs@xn--bcher-kva.example");
        assert_eq!(ReversePath::parse("").unwrap(), ReversePath::Null);
        assert!(ReversePath::parse("").unwrap().mailbox().is_none());
        assert_eq!(ReversePath::parse("a@B.test").unwrap().mailbox().map(|m| m.domain().as_str()), Some("b.test"));
        assert!(Mailbox::parse("").is_err(), "a recipient is never the null sender");
        // Already normal: no copy.
        assert!(matches!(normalise_domain("example.test"), Ok(Cow::Borrowed(_))));
    }

    #[test]
    fn utf8_addresses() {
        let m = Mailbox::parse("Jörg@BÜCHER.example").unwrap();
        assert!(m.needs_smtputf8());
        assert_eq!(m.domain().as_str(), "xn--bcher-kva.example", "routed and resolved by its A-label");
        assert!(m.domain().is_idn());
        assert_eq!(m.domain().to_unicode(), "bücher.example");
        assert_eq!(m.to_string(), "Jörg@bücher.example");
        // An ASCII local part needs no SMTPUTF8: only its domain is converted.
        let a = Mailbox::parse("fred@bücher.example").unwrap();
        assert!(!a.needs_smtputf8());
        assert!(a.domain().is_idn());
        assert_eq!(a.to_ascii().unwrap(), "fred@xn--bcher-kva.example");
        assert_eq!(a.to_string(), "fred@xn--bcher-kva.example");
        let plain = Mailbox::parse("jörg@example.test").unwrap();
        assert!(!plain.domain().is_idn());
        assert!(matches!(plain.domain().to_unicode(), Cow::Borrowed("example.test")));
        // The written form parses back to the same address.
        for s in ["Jörg@bücher.example", "\"jörg müller\"@例子.广告", "δοκιμή@παράδειγμα.δοκιμή"] {
            let m = Mailbox::parse(s).unwrap();
            assert_eq!(Mailbox::parse(&m.to_string()).unwrap(), m, "{s}");
        }
        assert!(ReversePath::parse("jörg@bücher.example").unwrap().mailbox().unwrap().needs_smtputf8());
        // The fuzz target's invariants (fuzz/fuzz_targets/address.rs), over the table.
        for c in cases::all().into_iter().filter(|c| c.accepted.is_some()) {
            let m = Mailbox::parse(&c.input).unwrap();
            let written = m.to_string();
            assert_eq!(Mailbox::parse(&written).as_ref(), Ok(&m), "{written:?} parses back");
            assert_eq!(m.needs_smtputf8(), !written.is_ascii(), "{written:?}");
            assert_eq!(m.to_ascii().is_ok(), !m.needs_smtputf8(), "{written:?}");
        }
    }

    #[test]
    fn serde_is_the_string_form() {
        let d: Domain = serde_json::from_str("\"Bücher.example.\"").unwrap();
        assert_eq!(serde_json::to_string(&d).unwrap(), "\"xn--bcher-kva.example\"");
        let e = serde_json::from_str::<Mailbox>("\"a b@c\"").unwrap_err().to_string();
        assert!(e.contains("space"), "{e}");
        let r: ReversePath = serde_json::from_str("\"\"").unwrap();
        assert!(r.is_null());
    }
}
