//! MX host name patterns (`"mx.example.net"`, `"*.mail.protection.outlook.com"`) of the
//! `[[domain]] mx_pattern` entries, and the one matching rule the engine applies to them.

use std::str::FromStr;

use serde::{Deserialize, Deserializer};

use super::host::{is_host_name, normalize_name};

/// An MX host name pattern: an exact host name, or `*.` followed by a suffix. `*` is allowed
/// only as the whole first label; `"*.example.com"` matches `mx1.example.com` and
/// `a.b.example.com` but not `example.com`. Matching ignores case and a trailing dot.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MxPattern {
    /// Lower case, no trailing dot, as written (`*.` included).
    text: String,
}

impl MxPattern {
    /// The pattern in lower case without a trailing dot, `*.` included.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether the MX host name `host` matches.
    pub fn matches(&self, host: &str) -> bool {
        host_matches(&self.text, host)
    }
}

impl FromStr for MxPattern {
    type Err = String;
    fn from_str(s: &str) -> Result<MxPattern, String> {
        let text = normalize_name(s);
        let name = text.strip_prefix("*.").unwrap_or(&text);
        if name.contains('*') || text == "*" {
            return Err(format!("{s:?}: `*` may only be the whole first label, as in \"*.example.com\""));
        }
        if !is_host_name(name) {
            return Err(format!("{s:?} is not a host name or \"*.\" and a host name"));
        }
        Ok(MxPattern { text })
    }
}

impl<'de> Deserialize<'de> for MxPattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<MxPattern, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Whether MX host `host` matches `pattern` (`mx.example.net`, or `*.example.net` for any
/// host under it). Case and a trailing dot are ignored.
pub fn host_matches(pattern: &str, host: &str) -> bool {
    let pattern = pattern.trim_end_matches('.');
    let host = host.trim_end_matches('.');
    match pattern.strip_prefix("*.") {
        Some(suffix) => {
            // At least one non-empty label, a dot, then the suffix (bytes: no UTF-8 slicing).
            let (h, suffix) = (host.as_bytes(), suffix.as_bytes());
            h.len() > suffix.len() + 1
                && h[h.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
                && h[h.len() - suffix.len() - 1] == b'.'
                && h[h.len() - suffix.len() - 2] != b'.'
        }
        None => host.eq_ignore_ascii_case(pattern),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mx_patterns() {
        let p: MxPattern = "*.Example.COM.".parse().unwrap();
        assert_eq!(p.as_str(), "*.example.com");
        assert!(p.matches("mx1.example.com"));
        assert!(p.matches("MX1.EXAMPLE.COM."));
        assert!(p.matches("a.b.example.com"), "any depth under the suffix");
        assert!(!p.matches("example.com"));
        assert!(!p.matches(".example.com"));
        assert!(!p.matches("a..example.com"));
        assert!(!p.matches("mx1.notexample.com"));
        assert!(!p.matches("mx1example.com"));
        assert!(!p.matches("mx1.example.com.evil.test"));
        assert!(!p.matches("é.example.co"), "non-ASCII input does not panic");
        assert!(!p.matches(""));
        let exact: MxPattern = "mx.example.net".parse().unwrap();
        assert!(exact.matches("MX.example.net."));
        assert!(!exact.matches("a.mx.example.net"));
        for bad in ["*", "*.", "a.*.com", "*x.com", "x*.com", "*.*.com", "", "a b.com"] {
            assert!(bad.parse::<MxPattern>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn host_matching() {
        assert!(host_matches("*.example.net", "mx1.example.net"));
        assert!(host_matches("*.example.net", "a.b.EXAMPLE.net."));
        assert!(!host_matches("*.example.net", "example.net"));
        assert!(!host_matches("*.example.net", "xexample.net"));
        assert!(!host_matches("*.example.net", ".example.net"));
        assert!(host_matches("mx.example.net", "MX.example.net."));
        assert!(!host_matches("mx.example.net", "mx2.example.net"));
    }
}
