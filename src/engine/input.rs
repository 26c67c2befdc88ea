//! `mxpipe send`'s input: one message per JSON line, checked before it reaches the engine.
//!
//! A line whose sender or a recipient is not a usable address is refused whole, with the
//! reason, as the HTTP API refuses such a message: nothing of it is sent. The engine's own
//! per-recipient check stays as the last guard for callers of the library.
//!
//! The module owns the line format only: it must not read files or submit.

use std::path::PathBuf;

use serde::Deserialize;

use crate::address::{Mailbox, ReversePath};

/// One input line, addresses checked (and kept as given: the engine normalises domains
/// when it routes, so outcomes name the recipient as the input did).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputLine {
    /// The caller's message id, carried into every outcome.
    pub id: String,
    /// The envelope sender; `""` is the null sender.
    pub from: String,
    /// The envelope recipients (`user@domain`); at least one, each gets one outcome.
    pub to: Vec<String>,
    /// The message itself, or `data_file`: exactly one of the two.
    pub data: Option<String>,
    /// A file holding the message (RFC 5322 bytes), instead of `data`.
    pub data_file: Option<PathBuf>,
    /// REQUIRETLS (RFC 8689): deliver only over verified TLS to next hops that advertise
    /// REQUIRETLS, else bounce with 5.7.30. Default false; without it, a `TLS-Required: No`
    /// header field in the message asks for opportunistic TLS only.
    #[serde(default)]
    pub requiretls: bool,
    /// The egress pool to send from (`mxpipe send --egress`); default: the rules by sender
    /// domain, then the default pool.
    #[serde(default)]
    pub pool: Option<String>,
}

impl InputLine {
    /// The submission for this line, with `data` read from `data` or `data_file`, and its TLS
    /// requirement from `requiretls` or the message's header ([`crate::requiretls`]).
    pub fn into_submission(self, data: Vec<u8>) -> super::Submission {
        let tls = crate::requiretls::message_tls(self.requiretls, &data);
        super::Submission { tls, pool: self.pool, ..super::Submission::new(self.id, self.from, self.to, data) }
    }
}

/// Parse and check one line (JSON, then the addresses); the error is the reason to print.
pub fn parse_line(line: &str) -> Result<InputLine, String> {
    let l: InputLine = serde_json::from_str(line).map_err(|e| e.to_string())?;
    ReversePath::parse(&l.from).map_err(|e| format!("\"from\": {e}"))?;
    if l.to.is_empty() {
        return Err("\"to\": no recipients".into());
    }
    for (i, r) in l.to.iter().enumerate() {
        Mailbox::parse(r).map_err(|e| format!("\"to\"[{i}]: {e}"))?;
    }
    Ok(l)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines() {
        let l = parse_line(r#"{"id":"m1","from":"","to":["a@B.test"],"data":"x"}"#).unwrap();
        assert_eq!((l.from.as_str(), l.to[0].as_str()), ("", "a@B.test"), "kept as given");
        let e = parse_line(r#"{"id":"m1","from":"s@x.test","to":["ok@x.test","jö rg@x.test"],"data":"x"}"#).unwrap_err();
        assert!(e.starts_with("\"to\"[1]: \"jö rg@x.test\": contains a space"), "{e}");
        assert!(parse_line(r#"{"id":"m1","from":"jörg@x.test","to":["用户@例子.广告"],"data":"x"}"#).is_ok(), "SMTPUTF8 addresses");
        let e = parse_line(r#"{"id":"m1","from":"s b@x.test","to":["a@x.test"],"data":"x"}"#).unwrap_err();
        assert!(e.starts_with("\"from\": "), "{e}");
        assert!(parse_line(r#"{"id":"m1","from":"","to":[],"data":"x"}"#).unwrap_err().contains("no recipients"));
        assert!(parse_line("not json").is_err());
    }

    #[test]
    fn requiretls_field_and_header() {
        use crate::engine::MessageTls;
        let sub = |line: &str| {
            let l = parse_line(line).unwrap();
            let data = l.data.clone().unwrap().into_bytes();
            l.into_submission(data).tls
        };
        assert_eq!(sub(r#"{"id":"m","from":"","to":["a@x.test"],"data":"x"}"#), MessageTls::Default);
        assert_eq!(sub(r#"{"id":"m","from":"","to":["a@x.test"],"data":"x","requiretls":true}"#), MessageTls::RequireTls);
        let no = r#"{"id":"m","from":"","to":["a@x.test"],"data":"TLS-Required: No\r\n\r\nx""#;
        assert_eq!(sub(&format!("{no}}}")), MessageTls::Optional);
        assert_eq!(sub(&format!("{no},\"requiretls\":true}}")), MessageTls::RequireTls, "the field wins over the header");
    }
}
