//! Connections per client: at most `max_conns_per_ip` at once from one IPv4 address or one
//! IPv6 /64 (a single host usually holds a whole /64, so counting exact IPv6 addresses would
//! give one client endless fresh slots).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use crate::value::client::Client;

/// Open connections by client. The map holds only clients with a connection open, so its
/// size is bounded by the server's `max_conns`.
#[derive(Debug, Default)]
pub struct PerClient {
    open: Mutex<HashMap<Client, usize>>,
}

/// One counted connection; dropping it frees the slot.
#[derive(Debug)]
pub struct Slot {
    owner: Arc<PerClient>,
    key: Client,
}

impl PerClient {
    /// Count a connection from `ip`, or `None` if that client already has `max` open.
    pub fn try_take(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<Slot> {
        let key = Client::of(ip);
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(key).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Slot { owner: self.clone(), key })
    }

    /// Clients with a connection open now (tests).
    #[cfg(test)]
    fn clients(&self) -> usize {
        self.open.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.owner.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_slot_per_client_up_to_the_cap_and_freed_on_drop() {
        let p = Arc::new(PerClient::default());
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let s1 = p.try_take(a, 2).unwrap();
        let _s2 = p.try_take(a, 2).unwrap();
        assert!(p.try_take(a, 2).is_none());
        assert!(p.try_take("127.0.0.2".parse().unwrap(), 2).is_some());
        drop(s1);
        assert!(p.try_take(a, 2).is_some());
    }

    #[test]
    fn an_ipv6_64_is_one_client_and_mapped_ipv4_is_ipv4() {
        let p = Arc::new(PerClient::default());
        let _a = p.try_take("2001:db8:1:2::1".parse().unwrap(), 1).unwrap();
        assert!(p.try_take("2001:db8:1:2:ffff::9".parse().unwrap(), 1).is_none());
        assert!(p.try_take("2001:db8:1:3::1".parse().unwrap(), 1).is_some());
        let _b = p.try_take("192.0.2.7".parse().unwrap(), 1).unwrap();
        assert!(p.try_take("::ffff:192.0.2.7".parse().unwrap(), 1).is_none());
        assert_ne!(Client::of("0.0.0.1".parse().unwrap()), Client::of("::1".parse().unwrap()));
    }

    #[test]
    fn the_map_forgets_clients_without_connections() {
        let p = Arc::new(PerClient::default());
        let slots: Vec<_> = (0..100u8).map(|i| p.try_take(IpAddr::from([10, 0, 0, i]), 1).unwrap()).collect();
        assert_eq!(p.clients(), 100);
        drop(slots);
        assert_eq!(p.clients(), 0);
    }
}
