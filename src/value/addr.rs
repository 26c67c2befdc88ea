//! Socket addresses as the listeners' settings are written: `"IP:PORT"`, never a host name
//! (resolving it at start would make the daemon's address depend on DNS).

use std::net::SocketAddr;

use serde::{Deserialize, Deserializer};

/// Parse `"127.0.0.1:2025"` or `"[::1]:2025"`.
pub fn parse_socket(s: &str) -> Result<SocketAddr, String> {
    s.trim()
        .parse()
        .map_err(|_| format!("{s:?} is not an IP:PORT address, e.g. \"127.0.0.1:2025\" or \"[::1]:2025\" (host names are not resolved)"))
}

/// Serde `deserialize_with` for a [`SocketAddr`] field read by [`parse_socket`].
pub fn deserialize_socket<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let s = String::deserialize(d)?;
    parse_socket(&s).map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockets() {
        assert_eq!(parse_socket(" 127.0.0.1:2025 ").unwrap(), "127.0.0.1:2025".parse().unwrap());
        assert_eq!(parse_socket("[::1]:25").unwrap().port(), 25);
        for bad in ["localhost:2025", "127.0.0.1", "::1:25", "", "127.0.0.1:70000"] {
            let e = parse_socket(bad).unwrap_err();
            assert!(e.contains("IP:PORT"), "{bad:?}: {e}");
        }
    }
}
