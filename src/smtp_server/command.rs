//! The server's command parser: one command line (without its line ending) in, one
//! [`Command`] out. A pure function, so every verb and every malformed argument is tested here
//! and fuzzed (`fuzz/fuzz_targets/server_command.rs`); the session only acts on the result.
//!
//! It checks syntax only: whether an address may be used is [`crate::address`]'s question,
//! whether a command is allowed now is the session's.

/// One parsed command line. Slices borrow from the line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command<'a> {
    /// `EHLO domain`.
    Ehlo(&'a [u8]),
    /// `HELO domain`.
    Helo(&'a [u8]),
    /// `STARTTLS` (RFC 3207).
    StartTls,
    /// `MAIL FROM:<path> [SIZE=n] [REQUIRETLS] [SMTPUTF8] [other parameters]`; `path` is
    /// empty for the null sender.
    Mail {
        /// The reverse path without its brackets.
        path: &'a [u8],
        /// The declared `SIZE=` (RFC 1870), if given.
        size: Option<u64>,
        /// The `REQUIRETLS` parameter (RFC 8689) was given; whether it is allowed here is
        /// the session's question.
        requiretls: bool,
        /// The `SMTPUTF8` parameter (RFC 6531 §3.4) was given: the envelope may hold UTF-8
        /// addresses. Whether it is allowed here is the session's question.
        smtputf8: bool,
    },
    /// `RCPT TO:<path> [parameters]`; `path` is never empty.
    Rcpt {
        /// The forward path without its brackets.
        path: &'a [u8],
    },
    /// `DATA`.
    Data,
    /// `BDAT size [LAST]` (RFC 3030).
    Bdat {
        /// Octets of the chunk that follows the command line.
        size: u64,
        /// The last chunk of the message.
        last: bool,
    },
    /// `RSET`.
    Rset,
    /// `NOOP [string]`.
    Noop,
    /// `QUIT`.
    Quit,
    /// `AUTH mechanism [initial-response]` (RFC 4954).
    Auth {
        /// The SASL mechanism as given (compare case-insensitively).
        mechanism: &'a [u8],
        /// The initial response, if given on the command line.
        initial: Option<&'a [u8]>,
    },
    /// `VRFY string`.
    Vrfy,
    /// `HELP [string]`.
    Help,
    /// A verb we do not know.
    Unknown,
    /// A known verb with arguments that do not parse.
    Invalid(Syntax),
}

/// Which command's syntax was wrong; [`Syntax::reply`] is the answer to give.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Syntax {
    /// EHLO or HELO without a domain.
    Hello,
    /// STARTTLS with an argument.
    StartTls,
    /// MAIL without `FROM:<path>`.
    Mail,
    /// A `SIZE=` parameter that is not a number.
    MailSize,
    /// RCPT without `TO:<path>`, or with an empty path.
    Rcpt,
    /// DATA with an argument.
    Data,
    /// BDAT without a size, or with something other than `LAST` after it. The stream cannot be
    /// followed past it (the chunk's length is unknown), so the session closes.
    Bdat,
    /// AUTH without a mechanism, or with more than a mechanism and a response.
    Auth,
}

impl Syntax {
    /// The reply line (with CRLF) for this mistake.
    pub fn reply(self) -> &'static str {
        match self {
            Syntax::Hello => "501 5.5.4 Syntax: EHLO hostname\r\n",
            Syntax::StartTls => "501 5.5.4 Syntax: STARTTLS\r\n",
            Syntax::Mail => "501 5.5.4 Syntax: MAIL FROM:<address>\r\n",
            Syntax::MailSize => "501 5.5.4 Bad SIZE parameter\r\n",
            Syntax::Rcpt => "501 5.5.4 Syntax: RCPT TO:<address>\r\n",
            Syntax::Data => "501 5.5.4 Syntax: DATA\r\n",
            Syntax::Bdat => "501 5.5.4 Syntax: BDAT size [LAST], closing connection\r\n",
            Syntax::Auth => "501 5.5.4 Syntax: AUTH mechanism [initial-response]\r\n",
        }
    }
}

impl Command<'_> {
    /// Commands that move no mail forward (RFC 5321 §4.5.3: a server may limit them). The
    /// session counts them against a per-session budget, so a client cannot hold a connection
    /// with an endless stream of them.
    pub fn carries_no_mail(&self) -> bool {
        matches!(self, Command::Noop | Command::Vrfy | Command::Rset | Command::Help | Command::Unknown)
    }
}

/// Parse one command line (without CRLF). Never fails: a line that is not a command is
/// [`Command::Unknown`] or [`Command::Invalid`].
pub fn parse(line: &[u8]) -> Command<'_> {
    let (verb, arg) = match memchr::memchr(b' ', line) {
        Some(i) => (&line[..i], trim(&line[i + 1..])),
        None => (line, &[][..]),
    };
    let is = |v: &[u8]| verb.eq_ignore_ascii_case(v);
    if is(b"EHLO") || is(b"HELO") {
        if arg.is_empty() {
            return Command::Invalid(Syntax::Hello);
        }
        return if is(b"EHLO") { Command::Ehlo(arg) } else { Command::Helo(arg) };
    }
    if is(b"MAIL") {
        let Some((path, params)) = parse_path(arg, b"FROM:") else { return Command::Invalid(Syntax::Mail) };
        let (mut size, mut requiretls, mut smtputf8) = (None, false, false);
        for p in params.split(|&b| b == b' ').filter(|p| !p.is_empty()) {
            if p.eq_ignore_ascii_case(b"REQUIRETLS") {
                requiretls = true;
            } else if p.eq_ignore_ascii_case(b"SMTPUTF8") {
                smtputf8 = true;
            } else if p.len() > 5 && p[..5].eq_ignore_ascii_case(b"SIZE=") {
                match std::str::from_utf8(&p[5..]).ok().and_then(|s| s.parse::<u64>().ok()) {
                    Some(n) => size = Some(n),
                    None => return Command::Invalid(Syntax::MailSize),
                }
            }
        }
        return Command::Mail { path, size, requiretls, smtputf8 };
    }
    if is(b"RCPT") {
        return match parse_path(arg, b"TO:") {
            Some((path, _)) if !path.is_empty() => Command::Rcpt { path },
            _ => Command::Invalid(Syntax::Rcpt),
        };
    }
    if is(b"DATA") {
        return if arg.is_empty() { Command::Data } else { Command::Invalid(Syntax::Data) };
    }
    if is(b"BDAT") {
        let mut words = arg.split(|&b| b == b' ').filter(|w| !w.is_empty());
        let size = words.next().and_then(|w| std::str::from_utf8(w).ok()).and_then(|s| s.parse::<u64>().ok());
        let last = match words.next() {
            None => Some(false),
            Some(w) if w.eq_ignore_ascii_case(b"LAST") => Some(true),
            Some(_) => None,
        };
        return match (size, last, words.next()) {
            (Some(size), Some(last), None) => Command::Bdat { size, last },
            _ => Command::Invalid(Syntax::Bdat),
        };
    }
    if is(b"STARTTLS") {
        return if arg.is_empty() { Command::StartTls } else { Command::Invalid(Syntax::StartTls) };
    }
    if is(b"AUTH") {
        let mut words = arg.split(|&b| b == b' ').filter(|w| !w.is_empty());
        return match (words.next(), words.next(), words.next()) {
            (Some(mechanism), initial, None) => Command::Auth { mechanism, initial },
            _ => Command::Invalid(Syntax::Auth),
        };
    }
    if is(b"RSET") {
        Command::Rset
    } else if is(b"NOOP") {
        Command::Noop
    } else if is(b"QUIT") {
        Command::Quit
    } else if is(b"VRFY") {
        Command::Vrfy
    } else if is(b"HELP") {
        Command::Help
    } else {
        Command::Unknown
    }
}

/// Parse `FROM:<path> params` / `TO:<path> params` (the keyword case-insensitive, a space
/// after the colon tolerated). Returns the path without brackets and the parameter text.
/// A quoted local part may hold spaces, brackets and escaped quotes (RFC 5321 §4.1.2); outside
/// quotes a space or `<` ends the parse, and a control byte is refused anywhere.
fn parse_path<'b>(arg: &'b [u8], keyword: &[u8]) -> Option<(&'b [u8], &'b [u8])> {
    if arg.len() < keyword.len() || !arg[..keyword.len()].eq_ignore_ascii_case(keyword) {
        return None;
    }
    let rest = trim(&arg[keyword.len()..]);
    if rest.first() != Some(&b'<') {
        return None;
    }
    let (mut quoted, mut escaped) = (false, false);
    for (i, &b) in rest.iter().enumerate().skip(1) {
        if b < 0x20 || b == 0x7f {
            return None;
        }
        if escaped {
            escaped = false;
        } else if quoted {
            match b {
                b'\\' => escaped = true,
                b'"' => quoted = false,
                _ => {}
            }
        } else {
            match b {
                b'"' => quoted = true,
                b'>' => return Some((&rest[1..i], trim(&rest[i + 1..]))),
                b'<' | b' ' => return None,
                _ => {}
            }
        }
    }
    None
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(s.len());
    let end = s.iter().rposition(|b| !b.is_ascii_whitespace()).map_or(start, |e| e + 1);
    &s[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbs_are_case_insensitive_and_take_their_arguments() {
        assert_eq!(parse(b"EHLO client.test"), Command::Ehlo(b"client.test"));
        assert_eq!(parse(b"ehlo  client.test  "), Command::Ehlo(b"client.test"));
        assert_eq!(parse(b"HeLo c"), Command::Helo(b"c"));
        assert_eq!(parse(b"STARTTLS"), Command::StartTls);
        assert_eq!(parse(b"DATA"), Command::Data);
        assert_eq!(parse(b"rset"), Command::Rset);
        assert_eq!(parse(b"NOOP anything"), Command::Noop);
        assert_eq!(parse(b"QUIT"), Command::Quit);
        assert_eq!(parse(b"VRFY bob"), Command::Vrfy);
        assert_eq!(parse(b"HELP"), Command::Help);
        assert_eq!(parse(b"EXPN list"), Command::Unknown);
        assert_eq!(parse(b""), Command::Unknown);
        assert_eq!(parse(b"MAILFROM:<a@b>"), Command::Unknown);
    }

    #[test]
    fn mail_and_rcpt_paths() {
        assert_eq!(parse(b"MAIL FROM:<a@b>"), Command::Mail { path: b"a@b", size: None, requiretls: false, smtputf8: false });
        assert_eq!(
            parse(b"mail from: <a@b> SIZE=10 BODY=8BITMIME"),
            Command::Mail { path: b"a@b", size: Some(10), requiretls: false, smtputf8: false }
        );
        assert_eq!(parse(b"MAIL FROM:<>"), Command::Mail { path: b"", size: None, requiretls: false, smtputf8: false });
        assert_eq!(
            parse(b"MAIL FROM:<a@b> SIZE=3 requiretls"),
            Command::Mail { path: b"a@b", size: Some(3), requiretls: true, smtputf8: false }
        );
        assert_eq!(
            parse("MAIL FROM:<jörg@bücher.example> smtputf8 SIZE=5".as_bytes()),
            Command::Mail { path: "jörg@bücher.example".as_bytes(), size: Some(5), requiretls: false, smtputf8: true }
        );
        assert_eq!(parse("RCPT TO:<用户@例子.广告>".as_bytes()), Command::Rcpt { path: "用户@例子.广告".as_bytes() });
        // Only the bare keyword (RFC 8689 gives it no value).
        assert_eq!(
            parse(b"MAIL FROM:<a@b> REQUIRETLS=YES"),
            Command::Mail { path: b"a@b", size: None, requiretls: false, smtputf8: false }
        );
        assert_eq!(parse(b"MAIL FROM:<a@b> SIZE=ten"), Command::Invalid(Syntax::MailSize));
        assert_eq!(parse(b"MAIL FROM:a@b"), Command::Invalid(Syntax::Mail));
        assert_eq!(parse(b"MAIL FROM:<a@b"), Command::Invalid(Syntax::Mail));
        assert_eq!(parse(b"MAIL TO:<a@b>"), Command::Invalid(Syntax::Mail));
        assert_eq!(parse(b"RCPT TO:<c@d> NOTIFY=NEVER"), Command::Rcpt { path: b"c@d" });
        assert_eq!(parse(b"RCPT TO:<>"), Command::Invalid(Syntax::Rcpt));
        assert_eq!(parse(b"RCPT TO:<a b@c>"), Command::Invalid(Syntax::Rcpt));
        assert_eq!(parse(b"RCPT TO:<a\x01@c>"), Command::Invalid(Syntax::Rcpt));
        assert_eq!(parse(b"RCPT TO:<a<@c>"), Command::Invalid(Syntax::Rcpt));
        assert_eq!(parse(b"RCPT"), Command::Invalid(Syntax::Rcpt));
        // A quoted local part may hold what would otherwise end the path.
        assert_eq!(parse(b"RCPT TO:<\"a b>c\"@d>"), Command::Rcpt { path: b"\"a b>c\"@d" });
        assert_eq!(parse(b"RCPT TO:<\"a\\\"b\"@d> X=1"), Command::Rcpt { path: b"\"a\\\"b\"@d" });
        assert_eq!(parse(b"RCPT TO:<\"open@d>"), Command::Invalid(Syntax::Rcpt));
        assert_eq!(parse(b"RCPT TO:<\"a\tb\"@d>"), Command::Invalid(Syntax::Rcpt));
    }

    #[test]
    fn bdat_auth_and_bad_arguments() {
        assert_eq!(parse(b"BDAT 100"), Command::Bdat { size: 100, last: false });
        assert_eq!(parse(b"BDAT 0 last"), Command::Bdat { size: 0, last: true });
        assert_eq!(parse(b"BDAT"), Command::Invalid(Syntax::Bdat));
        assert_eq!(parse(b"BDAT -1"), Command::Invalid(Syntax::Bdat));
        assert_eq!(parse(b"BDAT 1 LAST more"), Command::Invalid(Syntax::Bdat));
        assert_eq!(parse(b"BDAT 1 FIRST"), Command::Invalid(Syntax::Bdat));
        assert_eq!(parse(b"AUTH PLAIN"), Command::Auth { mechanism: b"PLAIN", initial: None });
        assert_eq!(parse(b"AUTH plain AGJvYgBwdw=="), Command::Auth { mechanism: b"plain", initial: Some(b"AGJvYgBwdw==") });
        assert_eq!(parse(b"AUTH"), Command::Invalid(Syntax::Auth));
        assert_eq!(parse(b"AUTH PLAIN a b"), Command::Invalid(Syntax::Auth));
        assert_eq!(parse(b"EHLO"), Command::Invalid(Syntax::Hello));
        assert_eq!(parse(b"DATA now"), Command::Invalid(Syntax::Data));
        assert_eq!(parse(b"STARTTLS please"), Command::Invalid(Syntax::StartTls));
    }

    #[test]
    fn which_commands_carry_no_mail() {
        for l in [&b"NOOP"[..], b"VRFY x", b"RSET", b"HELP", b"XYZZY"] {
            assert!(parse(l).carries_no_mail(), "{l:?}");
        }
        for l in [&b"EHLO x"[..], b"MAIL FROM:<>", b"RCPT TO:<a@b>", b"DATA", b"QUIT", b"STARTTLS", b"AUTH PLAIN"] {
            assert!(!parse(l).carries_no_mail(), "{l:?}");
        }
    }
}
