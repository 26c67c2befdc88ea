//! Host names as written in mail settings (`ehlo_name`, `[[domain]] name`, MX patterns).

/// Whether `name` is a DNS name as written in mail: letters, digits, `-`, `_` and dots, no
/// empty label, within DNS's length limits.
pub fn is_host_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
}

/// Lower case, without the trailing dot of a fully qualified name.
pub fn normalize_name(s: &str) -> String {
    s.trim().trim_end_matches('.').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names() {
        for ok in ["a", "mx1.example.com", "under_score.test", "xn--bcher-kva.example"] {
            assert!(is_host_name(ok), "{ok:?}");
        }
        let long_label = "a".repeat(64);
        let long_name = ["a"; 127].join(".") + ".ab";
        for bad in ["", ".", "a..b", ".a", "a b", "é.test", "*.a.test", &long_label, &long_name] {
            assert!(!is_host_name(bad), "{bad:?}");
        }
        assert_eq!(normalize_name(" MX.Example.COM. "), "mx.example.com");
    }
}
