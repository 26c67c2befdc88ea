//! The header section of a message (RFC 5322 §2.2) as fields: each field's byte span, with
//! its folded continuation lines, its name and its raw value. Shared by the intake's directive
//! fields ([`crate::inject::directives`], which cuts fields out by span) and the DKIM signer's
//! From reader ([`crate::dkim::from_domain`]). LF and CRLF line endings alike.

use std::ops::Range;

/// One field of the header section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field<'a> {
    /// Where it is in the message: its first line through its last continuation line, line
    /// endings included.
    pub span: Range<usize>,
    /// The name, without surrounding white space; `None` for a line without a colon (not a
    /// field, kept as it is by whoever copies the section).
    pub name: Option<&'a [u8]>,
    /// Everything after the colon, continuation lines and line endings included.
    pub value: &'a [u8],
}

impl Field<'_> {
    /// The value unfolded (each continuation line trimmed and joined with one space), trimmed.
    pub fn unfolded(&self) -> String {
        let mut parts = self.value.split(|&b| b == b'\n').map(|l| l.strip_suffix(b"\r").unwrap_or(l));
        let mut v = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
        for p in parts.filter(|p| !p.is_empty()) {
            v.push(' ');
            v.push_str(&String::from_utf8_lossy(p.trim_ascii()));
        }
        v.trim().to_string()
    }
}

/// Where the header section of `b` ends: the start of its empty line, or the end of `b`.
pub fn section_end(b: &[u8]) -> usize {
    let mut pos = 0;
    while pos < b.len() {
        if b[pos] == b'\n' || (b[pos] == b'\r' && b.get(pos + 1) == Some(&b'\n')) {
            return pos;
        }
        pos = next_line(b, pos);
    }
    b.len()
}

/// The fields of the header section of `b`, in order.
pub fn fields(b: &[u8]) -> impl Iterator<Item = Field<'_>> {
    let end = section_end(b);
    let mut pos = 0;
    std::iter::from_fn(move || {
        if pos >= end {
            return None;
        }
        let start = pos;
        let mut field_end = next_line(b, pos);
        while field_end < end && matches!(b.get(field_end), Some(b' ' | b'\t')) {
            field_end = next_line(b, field_end);
        }
        pos = field_end;
        let field = &b[start..field_end];
        let colon = field.iter().position(|&c| c == b':');
        Some(Field {
            span: start..field_end,
            name: colon.map(|c| field[..c].trim_ascii()),
            value: colon.map_or(&field[field.len()..], |c| &field[c + 1..]),
        })
    })
}

/// Index just past the line starting at `pos` (its LF included), or the end.
fn next_line(b: &[u8], pos: usize) -> usize {
    memchr::memchr(b'\n', &b[pos..]).map_or(b.len(), |i| pos + i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_with_their_spans_folds_and_the_end_of_the_section() {
        let m = b"From: a@b\r\nX-Long: one,\r\n two\r\nnot a field\r\n\r\nBody: no\r\n";
        let f: Vec<Field> = fields(m).collect();
        assert_eq!(f.len(), 3);
        assert_eq!(f[0].name, Some(&b"From"[..]));
        assert_eq!(f[1].unfolded(), "one, two");
        assert_eq!(&m[f[1].span.clone()], b"X-Long: one,\r\n two\r\n");
        assert_eq!(f[2].name, None);
        assert_eq!(section_end(m), 44);
        assert_eq!(fields(b"a: b\n\nc: d\n").count(), 1);
    }
}
