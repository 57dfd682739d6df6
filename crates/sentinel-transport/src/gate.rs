//! Caps on open connections, in all and per client, so that one client cannot hold every slot
//! and all of them together cannot take the process's file descriptors. A connection is
//! admitted before it is served and holds a [`Permit`] until it closes.
//!
//! Memory stays bounded: a client is tracked only while it has a connection open, so the map
//! never holds more entries than the global cap.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::client::ClientKey;

/// The caps; both at least 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GateLimits {
    /// Connections open at once, all clients together.
    pub max_connections: usize,
    /// Connections open at once from one client.
    pub max_per_client: usize,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Refusal {
    #[error("the listener holds its maximum of connections")]
    TooManyConnections,
    #[error("this client holds its maximum of connections")]
    TooManyFromClient,
}

impl Refusal {
    /// The `reason` label of the refusal counter.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::TooManyConnections => "max_connections",
            Refusal::TooManyFromClient => "max_connections_per_client",
        }
    }
}

/// Counts open connections against [`GateLimits`]; clones share the counts.
#[derive(Debug, Clone)]
pub struct ConnectionGate {
    inner: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    limits: GateLimits,
    open: Mutex<Open>,
}

#[derive(Debug, Default)]
struct Open {
    total: usize,
    per_client: HashMap<ClientKey, usize>,
}

/// One admitted connection; dropping it gives the slot back.
#[derive(Debug)]
pub struct Permit {
    gate: Arc<Shared>,
    client: ClientKey,
}

impl ConnectionGate {
    /// A gate with these caps (a cap of 0 is taken as 1).
    pub fn new(limits: GateLimits) -> ConnectionGate {
        let limits = GateLimits {
            max_connections: limits.max_connections.max(1),
            max_per_client: limits.max_per_client.max(1),
        };
        ConnectionGate { inner: Arc::new(Shared { limits, open: Mutex::default() }) }
    }

    pub fn limits(&self) -> GateLimits {
        self.inner.limits
    }

    /// Admits one more connection of `client`, or says which cap it would exceed.
    pub fn admit(&self, client: ClientKey) -> Result<Permit, Refusal> {
        let mut open = self.inner.lock();
        if open.total >= self.inner.limits.max_connections {
            return Err(Refusal::TooManyConnections);
        }
        let count = open.per_client.entry(client.clone()).or_insert(0);
        if *count >= self.inner.limits.max_per_client {
            return Err(Refusal::TooManyFromClient);
        }
        *count += 1;
        open.total += 1;
        Ok(Permit { gate: Arc::clone(&self.inner), client })
    }

    /// Connections open now, all clients together.
    pub fn open_connections(&self) -> usize {
        self.inner.lock().total
    }

    /// Connections `client` has open now.
    pub fn open_for(&self, client: &ClientKey) -> usize {
        self.inner.lock().per_client.get(client).copied().unwrap_or(0)
    }

    /// Clients with at least one connection open (the entries kept in memory).
    pub fn clients(&self) -> usize {
        self.inner.lock().per_client.len()
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Open> {
        // The counts stay consistent even if a holder panicked: every change is one statement.
        self.open.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Open {
    fn release(&mut self, client: &ClientKey) {
        if let Entry::Occupied(mut entry) = self.per_client.entry(client.clone()) {
            *entry.get_mut() -= 1;
            if *entry.get() == 0 {
                entry.remove();
            }
        }
    }
}

impl Permit {
    /// The client this connection counts against.
    pub fn client(&self) -> &ClientKey {
        &self.client
    }

    /// Counts this connection against another client from now on, the global count unchanged:
    /// a TLS listener admits by address at accept and learns the certificate's subject after
    /// the handshake. When `client` is at its cap the permit stays with the former client.
    pub fn change_client(&mut self, client: ClientKey) -> Result<(), Refusal> {
        if client == self.client {
            return Ok(());
        }
        let mut open = self.gate.lock();
        let count = open.per_client.entry(client.clone()).or_insert(0);
        if *count >= self.gate.limits.max_per_client {
            return Err(Refusal::TooManyFromClient);
        }
        *count += 1;
        open.release(&self.client);
        drop(open);
        self.client = client;
        Ok(())
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut open = self.gate.lock();
        open.total -= 1;
        open.release(&self.client);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(last: u8) -> ClientKey {
        ClientKey::address([127, 0, 0, last].into())
    }

    #[test]
    fn a_client_at_its_cap_is_refused_while_others_are_admitted() {
        let gate = ConnectionGate::new(GateLimits { max_connections: 10, max_per_client: 2 });
        let first = gate.admit(client(2)).unwrap();
        let _second = gate.admit(client(2)).unwrap();
        assert_eq!(gate.admit(client(2)).unwrap_err(), Refusal::TooManyFromClient);
        let _other = gate.admit(client(3)).unwrap();
        assert_eq!(gate.open_for(&client(2)), 2);
        drop(first);
        assert_eq!(gate.open_for(&client(2)), 1);
        assert!(gate.admit(client(2)).is_ok());
    }

    #[test]
    fn the_global_cap_refuses_every_client() {
        let gate = ConnectionGate::new(GateLimits { max_connections: 3, max_per_client: 3 });
        let permits: Vec<Permit> = (1..=3).map(|last| gate.admit(client(last)).unwrap()).collect();
        assert_eq!(gate.admit(client(9)).unwrap_err(), Refusal::TooManyConnections);
        assert_eq!(gate.open_connections(), 3);
        drop(permits);
        assert_eq!(gate.open_connections(), 0);
        assert!(gate.admit(client(9)).is_ok());
    }

    #[test]
    fn clients_are_forgotten_when_their_last_connection_closes() {
        let gate = ConnectionGate::new(GateLimits { max_connections: 100_000, max_per_client: 1 });
        for round in 0..3 {
            let permits: Vec<Permit> = (0..=255u8)
                .flat_map(|third| (0..=255u8).map(move |last| (third, last)))
                .take(50_000)
                .map(|(third, last)| gate.admit(ClientKey::address([10, round, third, last].into())).unwrap())
                .collect();
            assert_eq!(gate.clients(), 50_000);
            drop(permits);
            assert_eq!(gate.clients(), 0, "round {round}");
            assert_eq!(gate.open_connections(), 0);
        }
    }

    #[test]
    fn a_permit_moves_to_its_certificate_within_that_clients_cap() {
        let gate = ConnectionGate::new(GateLimits { max_connections: 10, max_per_client: 1 });
        let certificate = ClientKey::Certificate(Arc::from("CN=central-1"));
        let mut first = gate.admit(client(2)).unwrap();
        first.change_client(certificate.clone()).unwrap();
        assert_eq!((gate.open_for(&client(2)), gate.open_for(&certificate)), (0, 1));
        assert_eq!(gate.clients(), 1);
        // A second connection of the same certificate, from another address, is over its cap.
        let mut second = gate.admit(client(3)).unwrap();
        assert_eq!(second.change_client(certificate.clone()).unwrap_err(), Refusal::TooManyFromClient);
        assert_eq!(second.client(), &client(3));
        assert_eq!(gate.open_connections(), 2);
        drop((first, second));
        assert_eq!((gate.open_connections(), gate.clients()), (0, 0));
    }
}
