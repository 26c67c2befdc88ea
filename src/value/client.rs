//! Who a connection or a failure is counted against: an IPv4 address, or an IPv6 /64 (one host
//! usually holds a whole /64, so counting single IPv6 addresses would give it endless fresh
//! ones). An IPv4-mapped IPv6 address is its IPv4 address.

use std::net::IpAddr;

/// One client: its IPv4 address, or its IPv6 /64 prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Client {
    /// An IPv4 address (also when it arrived IPv4-mapped).
    V4(u32),
    /// The top 64 bits of an IPv6 address.
    V6(u64),
}

impl Client {
    /// The client `ip` belongs to.
    pub fn of(ip: IpAddr) -> Client {
        match ip {
            IpAddr::V4(a) => Client::V4(a.to_bits()),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(a) => Client::V4(a.to_bits()),
                None => Client::V6((a.to_bits() >> 64) as u64),
            },
        }
    }
}
