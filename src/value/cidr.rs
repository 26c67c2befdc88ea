//! IP networks (`"10.0.0.0/8"`, `"2001:db8::/32"`, a bare address for one host), as the
//! injection listener's `allowed_networks` are written.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::{Deserialize, Deserializer};

/// An IP network: an address and a prefix length (`"10.0.0.0/8"`, `"2001:db8::/32"`; a bare
/// address is a single host). Host bits must be zero, so that a typo such as `"10.1.2.3/8"`
/// is caught rather than read as a network the writer did not mean.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// `127.0.0.0/8`.
    pub const LOOPBACK_V4: Cidr = Cidr { addr: IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)), prefix: 8 };
    /// `::1/128`.
    pub const LOOPBACK_V6: Cidr = Cidr { addr: IpAddr::V6(Ipv6Addr::LOCALHOST), prefix: 128 };

    /// The network of `addr` with `prefix` leading bits; refused if the prefix is longer than
    /// the address or host bits are set.
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Cidr, String> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(format!("prefix length /{prefix} is longer than the {max} bits of {addr}"));
        }
        let c = Cidr { addr, prefix };
        let network = c.network();
        if network != addr {
            return Err(format!("{addr}/{prefix} has host bits set; the network is {network}/{prefix}"));
        }
        Ok(c)
    }

    /// The network address (host bits zero).
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The number of leading bits that make the network: 0 to 32 for IPv4, to 128 for IPv6.
    pub fn prefix_len(&self) -> u8 {
        self.prefix
    }

    fn network(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask32(self.prefix))),
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask128(self.prefix))),
        }
    }

    /// Whether `ip` is in this network. An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, what a
    /// dual-stack listener reports for an IPv4 client) is compared as IPv4.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => u32::from(a) & mask32(self.prefix) == u32::from(n),
            (IpAddr::V6(n), IpAddr::V6(a)) => u128::from(a) & mask128(self.prefix) == u128::from(n),
            _ => false,
        }
    }
}

fn mask32(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn mask128(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Cidr, String> {
        let t = s.trim();
        let (addr, prefix) = match t.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (t, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| format!("{s:?} is not a network: {addr:?} is not an IP address"))?;
        let prefix = match prefix {
            None => {
                if addr.is_ipv4() {
                    32
                } else {
                    128
                }
            }
            Some(p) => p.parse::<u8>().map_err(|_| format!("{s:?} is not a network: {p:?} is not a prefix length"))?,
        };
        Cidr::new(addr, prefix).map_err(|e| format!("{s:?} is not a network: {e}"))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Cidr, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs() {
        let c: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(c.contains("10.255.0.1".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        assert!(c.contains("::ffff:10.1.2.3".parse().unwrap()), "IPv4-mapped clients of a dual-stack listener");
        assert!(!c.contains("::1".parse().unwrap()));
        let v6: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains("2001:db8:ffff::1".parse().unwrap()));
        assert!(!v6.contains("2001:db9::1".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("203.0.113.9".parse().unwrap()));
        assert!("::/0".parse::<Cidr>().unwrap().contains("2001:db8::1".parse().unwrap()));
        let host: Cidr = "192.0.2.7".parse().unwrap();
        assert_eq!((host.prefix_len(), host.to_string()), (32, "192.0.2.7/32".to_string()));
        assert!(host.contains("192.0.2.7".parse().unwrap()) && !host.contains("192.0.2.8".parse().unwrap()));
        assert_eq!("::1".parse::<Cidr>().unwrap().prefix_len(), 128);
        for bad in ["10.0.0.0/33", "::/129", "10.1.2.3/8", "10.0.0/8", "10.0.0.0/", "10.0.0.0/x", "localhost", "2001:db8::1/32"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad:?}");
        }
        assert!("10.1.2.3/8".parse::<Cidr>().unwrap_err().contains("10.0.0.0/8"), "suggests the network");
        assert_eq!(Some(Cidr::LOOPBACK_V4), "127.0.0.0/8".parse().ok());
        assert_eq!(Some(Cidr::LOOPBACK_V6), "::1".parse().ok());
    }
}
