//! Who may reach the protocol listeners. The plain port cannot authenticate its clients (the
//! existing central servers send no credentials), so it listens on loopback by default and may
//! be bound elsewhere only with an allow-list of client networks (`allowed_clients`); the TLS
//! listener off loopback needs either that list or client certificates (mutual TLS). These
//! rules are checked before anything is bound, and a connection from outside a non-empty list
//! is closed at accept.

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;

/// A listener exposed beyond loopback without a way to tell its clients apart.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExposureError {
    #[error(
        "the plain protocol port cannot authenticate its clients: listening on {0} (not a loopback \
         address) requires [server] allowed_clients, the networks of the central servers (CIDR, e.g. \
         [\"10.1.0.0/16\"]); or set [server] tcp_plain = false and use the TLS listener"
    )]
    PlainWithoutAllowList(SocketAddr),
    #[error(
        "the TLS protocol listener on {0} (not a loopback address) would serve anyone who reaches it: \
         give a client CA (--tcp-client-ca, [server] client_ca) or [server] allowed_clients"
    )]
    TlsWithoutClientCheck(SocketAddr),
}

/// The networks clients may connect from; empty means any (allowed only on loopback).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct AllowList(Vec<IpNet>);

impl AllowList {
    pub(crate) fn new(networks: &[IpNet]) -> AllowList {
        AllowList(networks.iter().map(IpNet::trunc).collect())
    }

    /// Whether `address` may connect. An IPv4 client of an IPv6 socket (`::ffff:a.b.c.d`)
    /// is checked as its IPv4 address.
    pub(crate) fn allows(&self, address: IpAddr) -> bool {
        let address = address.to_canonical();
        self.0.is_empty() || self.0.iter().any(|network| network.contains(&address))
    }
}

/// Checks the rules of this module for a plain listener (if on) and a TLS listener (if any).
pub(crate) fn check(
    plain: Option<SocketAddr>,
    tls: Option<SocketAddr>,
    mutual_tls: bool,
    allowed_clients: &[IpNet],
) -> Result<(), ExposureError> {
    let open = allowed_clients.is_empty();
    if let Some(address) = plain.filter(|address| open && !address.ip().is_loopback()) {
        return Err(ExposureError::PlainWithoutAllowList(address));
    }
    if let Some(address) = tls.filter(|address| open && !mutual_tls && !address.ip().is_loopback()) {
        return Err(ExposureError::TlsWithoutClientCheck(address));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn networks(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|text| text.parse().unwrap()).collect()
    }

    #[test]
    fn addresses_are_checked_against_the_networks() {
        let list = AllowList::new(&networks(&["10.1.0.0/16", "192.0.2.7/32", "2001:db8::/32"]));
        for allowed in ["10.1.200.3", "192.0.2.7", "2001:db8::1", "::ffff:10.1.0.9"] {
            assert!(list.allows(allowed.parse().unwrap()), "{allowed}");
        }
        for refused in ["10.2.0.1", "192.0.2.8", "127.0.0.1", "2001:db9::1"] {
            assert!(!list.allows(refused.parse().unwrap()), "{refused}");
        }
        assert!(AllowList::default().allows("203.0.113.9".parse().unwrap()));
        // Host bits in a network are ignored, as `ip route` does.
        assert!(AllowList::new(&networks(&["10.1.2.3/16"])).allows("10.1.9.9".parse().unwrap()));
    }

    #[test]
    fn a_listener_off_loopback_needs_a_way_to_tell_clients() {
        let any: SocketAddr = "0.0.0.0:9500".parse().unwrap();
        let local: SocketAddr = "127.0.0.1:9500".parse().unwrap();
        let local6: SocketAddr = "[::1]:9500".parse().unwrap();
        assert_eq!(check(Some(local), Some(local6), false, &[]), Ok(()));
        assert_eq!(check(Some(any), None, false, &[]), Err(ExposureError::PlainWithoutAllowList(any)));
        assert_eq!(check(Some(any), None, true, &[]), Err(ExposureError::PlainWithoutAllowList(any)));
        assert_eq!(check(Some(any), None, false, &networks(&["10.0.0.0/8"])), Ok(()));
        assert_eq!(check(None, Some(any), false, &[]), Err(ExposureError::TlsWithoutClientCheck(any)));
        assert_eq!(check(None, Some(any), true, &[]), Ok(()));
        assert_eq!(check(Some(local), Some(any), false, &networks(&["10.0.0.0/8"])), Ok(()));
        let message = check(Some(any), None, false, &[]).unwrap_err().to_string();
        assert!(message.contains("allowed_clients") && message.contains("0.0.0.0:9500"), "{message}");
    }
}
