//! What a message asks of TLS (RFC 8689), read once for every door (SMTP injection, the HTTP
//! API, `mxpipe send`): the `REQUIRETLS` MAIL parameter, or a `TLS-Required: No` header field.
//!
//! Pure functions of the envelope flag and the message bytes. Acting on the answer (which MX
//! hosts, which TLS, passing REQUIRETLS on) is the engine's business, not this module's.

use crate::engine::MessageTls;

/// The message's TLS requirement: [`MessageTls::RequireTls`] when the sender gave REQUIRETLS
/// (the header field is then ignored: RFC 8689 gives the option precedence), else [`MessageTls::Optional`] when
/// the header section has `TLS-Required: No` (§3), else [`MessageTls::Default`].
pub fn message_tls(requiretls: bool, data: &[u8]) -> MessageTls {
    if requiretls {
        MessageTls::RequireTls
    } else if tls_required_no(data) {
        MessageTls::Optional
    } else {
        MessageTls::Default
    }
}

/// Whether the header section (up to the first empty line) holds a `TLS-Required` field whose
/// value is `No`. The field name and the value are compared case-insensitively, folding and
/// surrounding white space are ignored; the same words in the body do not count.
pub fn tls_required_no(data: &[u8]) -> bool {
    const NAME: &[u8] = b"tls-required:";
    let mut found = false;
    // The field being read, unfolded: its first line and any continuation lines.
    let mut field: Option<Vec<u8>> = None;
    for line in data.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let continuation = matches!(line.first(), Some(b' ' | b'\t'));
        if continuation {
            if let Some(f) = &mut field {
                f.extend_from_slice(line);
            }
            continue;
        }
        if let Some(f) = field.take() {
            found |= value_is_no(&f[NAME.len()..]);
        }
        if line.is_empty() {
            break;
        }
        if line.len() >= NAME.len() && line[..NAME.len()].eq_ignore_ascii_case(NAME) {
            field = Some(line.to_vec());
        }
    }
    if let Some(f) = field {
        found |= value_is_no(&f[NAME.len()..]);
    }
    found
}

fn value_is_no(value: &[u8]) -> bool {
    value.trim_ascii().eq_ignore_ascii_case(b"no")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_field_is_found_only_in_the_header_section() {
        for yes in [
            &b"TLS-Required: No\r\nSubject: x\r\n\r\nbody"[..],
            b"Subject: x\r\ntls-required:no\r\n\r\n",
            b"Subject: x\nTLS-REQUIRED:   NO  \n\nbody",
            b"TLS-Required:\r\n No\r\n\r\n",
            b"Subject: x\r\nTLS-Required: No",
        ] {
            assert!(tls_required_no(yes), "{:?}", String::from_utf8_lossy(yes));
        }
        for no in [
            &b"Subject: x\r\n\r\nTLS-Required: No\r\n"[..],
            b"TLS-Required: Yes\r\n\r\n",
            b"TLS-Required: Nope\r\n\r\n",
            b"X-TLS-Required: No\r\n\r\n",
            b"TLS-Required-Not: No\r\n\r\n",
            b"Subject: TLS-Required: No\r\n\r\n",
            b"",
        ] {
            assert!(!tls_required_no(no), "{:?}", String::from_utf8_lossy(no));
        }
    }

    #[test]
    fn the_parameter_wins_over_the_header_field() {
        let header = b"TLS-Required: No\r\n\r\nbody";
        assert_eq!(message_tls(true, header), MessageTls::RequireTls);
        assert_eq!(message_tls(false, header), MessageTls::Optional);
        assert_eq!(message_tls(false, b"Subject: x\r\n\r\n"), MessageTls::Default);
    }
}
