//! Directives a client gives in header fields on SMTP injection, where an envelope has no room
//! for them: `X-Mxpipe-Pool: NAME` (the egress pool) and `X-Mxpipe-Dkim: NAME[, NAME…]` (the
//! DKIM keys to sign with). They are taken out of the header section before the message is
//! signed and spooled, so no receiver ever sees them; the HTTP API's `"pool"` and `"dkim"`
//! fields take precedence over them.

/// Bytes of the header section searched (directives are near the top; a header section larger
/// than this is searched this far only).
const MAX_SCAN: usize = 256 * 1024;
/// Longest directive value kept.
const MAX_VALUE: usize = 512;

/// What the header fields asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Directives {
    /// `X-Mxpipe-Pool`.
    pub pool: Option<String>,
    /// `X-Mxpipe-Dkim`, split at commas and white space; several fields add up.
    pub dkim: Option<Vec<String>>,
}

/// The directives in `data`'s header section and the message without those fields (`None`
/// when there were none, so the common case copies nothing). A directive that is malformed
/// (empty, too long, not UTF-8, two pools) is an error to give back to the client.
pub fn take(data: &[u8]) -> Result<(Directives, Option<Vec<u8>>), String> {
    let scan = &data[..data.len().min(MAX_SCAN)];
    // Cheap test first: no "x-mxpipe-" anywhere in the header section, nothing to do.
    let head_end = crate::header::section_end(scan);
    if !contains_ci(&scan[..head_end], b"x-mxpipe-") {
        return Ok((Directives::default(), None));
    }
    let mut d = Directives::default();
    let mut out = Vec::with_capacity(data.len());
    for field in crate::header::fields(scan) {
        let Some(name) = field.name.and_then(directive) else {
            out.extend_from_slice(&scan[field.span]);
            continue;
        };
        let value = std::str::from_utf8(field.value).map_err(|_| format!("{name}: not UTF-8"))?;
        let value: String = value.split(['\r', '\n']).map(str::trim).filter(|s| !s.is_empty()).collect::<Vec<_>>().join(" ");
        if value.is_empty() || value.len() > MAX_VALUE {
            return Err(format!("{name}: give a name of 1 to {MAX_VALUE} characters"));
        }
        if name == "X-Mxpipe-Pool" {
            if d.pool.replace(value).is_some() {
                return Err("X-Mxpipe-Pool: given twice".into());
            }
        } else {
            let names = d.dkim.get_or_insert_with(Vec::new);
            names.extend(value.split([',', ' ', '\t']).filter(|s| !s.is_empty()).map(str::to_string));
        }
    }
    out.extend_from_slice(&data[head_end..]);
    Ok((d, Some(out)))
}

/// Which directive a field name is.
fn directive(name: &[u8]) -> Option<&'static str> {
    if name.eq_ignore_ascii_case(b"x-mxpipe-pool") {
        Some("X-Mxpipe-Pool")
    } else if name.eq_ignore_ascii_case(b"x-mxpipe-dkim") {
        Some("X-Mxpipe-Dkim")
    } else {
        None
    }
}

fn contains_ci(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w.eq_ignore_ascii_case(needle))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directives_are_taken_out_and_the_rest_is_kept_byte_for_byte() {
        let m = b"From: a@b.example\r\nX-Mxpipe-Pool: bulk\r\nx-mxpipe-dkim: esp,\r\n shop.example\r\nSubject: x\r\n\r\nX-Mxpipe-Pool: body\r\n";
        let (d, out) = take(m).unwrap();
        assert_eq!(d.pool.as_deref(), Some("bulk"));
        assert_eq!(d.dkim, Some(vec!["esp".to_string(), "shop.example".to_string()]));
        assert_eq!(out.unwrap(), b"From: a@b.example\r\nSubject: x\r\n\r\nX-Mxpipe-Pool: body\r\n".to_vec());
    }

    #[test]
    fn no_directive_no_copy_and_bad_ones_are_errors() {
        let (d, out) = take(b"From: a@b.example\r\n\r\nX-Mxpipe-Pool: only in the body\r\n").unwrap();
        assert_eq!(d, Directives::default());
        assert!(out.is_none());
        assert!(take(b"X-Mxpipe-Pool:\r\n\r\n").unwrap_err().contains("X-Mxpipe-Pool"));
        assert!(take(b"X-Mxpipe-Pool: a\r\nX-Mxpipe-Pool: b\r\n\r\n").unwrap_err().contains("twice"));
        let long = format!("X-Mxpipe-Dkim: {}\r\n\r\n", "a".repeat(600));
        assert!(take(long.as_bytes()).is_err());
        // Bare LF line endings (HTTP API data) work too.
        let (d, out) = take(b"X-Mxpipe-Pool: p\nSubject: s\n\nbody\n").unwrap();
        assert_eq!(d.pool.as_deref(), Some("p"));
        assert_eq!(out.unwrap(), b"Subject: s\n\nbody\n".to_vec());
    }
}
