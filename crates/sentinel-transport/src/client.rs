//! Who a client is, for its limits and in the logs: the subject of the certificate it
//! authenticated with (mutual TLS), else the address it connects from.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use crate::subject::CertificateSubject;

/// The identity limits are counted against.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ClientKey {
    /// The source address; an IPv4 client reaching an IPv6 socket counts as its IPv4 address.
    Address(IpAddr),
    /// The distinguished name of a verified client certificate.
    Certificate(Arc<str>),
}

impl ClientKey {
    pub fn address(address: IpAddr) -> ClientKey {
        ClientKey::Address(address.to_canonical())
    }

    pub fn certificate(subject: &CertificateSubject) -> ClientKey {
        ClientKey::Certificate(Arc::from(subject.distinguished_name()))
    }
}

impl fmt::Display for ClientKey {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientKey::Address(address) => write!(formatter, "{address}"),
            ClientKey::Certificate(subject) => write!(formatter, "certificate \"{subject}\""),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv4_mapped_address_is_the_ipv4_client() {
        let mapped: IpAddr = "::ffff:127.0.0.2".parse().unwrap();
        let plain: IpAddr = "127.0.0.2".parse().unwrap();
        assert_eq!(ClientKey::address(mapped), ClientKey::address(plain));
        assert_eq!(ClientKey::address(plain).to_string(), "127.0.0.2");
        assert_ne!(ClientKey::address(plain), ClientKey::Certificate(Arc::from("127.0.0.2")));
    }
}
