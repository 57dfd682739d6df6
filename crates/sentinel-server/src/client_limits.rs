//! What one client may ask of the protocol server at once and over time: requests in flight
//! and a request rate (a token bucket per client), so that one central server cannot take the
//! analysis workers from the others. The client is its certificate's subject on a mutual-TLS
//! connection, else its address ([`ClientKey`]). Connections per client are capped at accept
//! by the listener's `ConnectionGate`; these limits apply per request.
//!
//! Memory stays bounded: a client counts in the in-flight table only while it has a request in
//! flight, and the bucket table holds at most [`MAX_TRACKED_CLIENTS`] clients — when full,
//! buckets that have refilled (clients quiet for `burst / rate` seconds, which a new bucket
//! would equal) are dropped first.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use sentinel_transport::ClientKey;

/// Most clients whose request rate is tracked at once.
pub(crate) const MAX_TRACKED_CLIENTS: usize = 65_536;

/// Why a request of a client was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ClientRefusal {
    #[error("this client has {0} requests in flight, its maximum (max_requests_per_client)")]
    InFlight(usize),
    #[error("this client is over its request rate of {rate} per second (burst {burst})")]
    Rate { rate: u32, burst: u32 },
}

impl ClientRefusal {
    /// The `reason` label of the refusal counter.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            ClientRefusal::InFlight(_) => "max_requests_per_client",
            ClientRefusal::Rate { .. } => "client_request_rate",
        }
    }
}

/// The per-client limits; both at least 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ClientLimitSettings {
    pub max_in_flight: usize,
    /// Requests per second, refilled continuously.
    pub rate: u32,
    /// Requests a quiet client may send at once.
    pub burst: u32,
}

/// The request limits of every client; one per server.
#[derive(Debug)]
pub(crate) struct ClientLimits {
    settings: ClientLimitSettings,
    in_flight: Arc<Mutex<HashMap<ClientKey, usize>>>,
    buckets: Mutex<HashMap<ClientKey, Bucket>>,
}

/// A client's token bucket: `tokens` when last looked at, at `at`.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// A request admitted; dropping it ends the request for the in-flight count.
#[derive(Debug)]
pub(crate) struct InFlight {
    table: Arc<Mutex<HashMap<ClientKey, usize>>>,
    client: ClientKey,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every change under these locks is a single update: a panic cannot leave them half-done.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl ClientLimits {
    pub(crate) fn new(settings: ClientLimitSettings) -> ClientLimits {
        ClientLimits { settings, in_flight: Arc::default(), buckets: Mutex::default() }
    }

    /// Admits one request of `client`, or says which limit it is over. A refused request
    /// takes no token: a client that retries too fast is not punished for the retries.
    pub(crate) fn admit(&self, client: &ClientKey) -> Result<InFlight, ClientRefusal> {
        self.admit_at(client, Instant::now())
    }

    fn admit_at(&self, client: &ClientKey, now: Instant) -> Result<InFlight, ClientRefusal> {
        let mut in_flight = lock(&self.in_flight);
        let count = in_flight.get(client).copied().unwrap_or(0);
        if count >= self.settings.max_in_flight {
            return Err(ClientRefusal::InFlight(count));
        }
        self.take_token(client, now)?;
        *in_flight.entry(client.clone()).or_insert(0) += 1;
        Ok(InFlight { table: Arc::clone(&self.in_flight), client: client.clone() })
    }

    fn take_token(&self, client: &ClientKey, now: Instant) -> Result<(), ClientRefusal> {
        let ClientLimitSettings { rate, burst, .. } = self.settings;
        let (rate_per_s, capacity) = (f64::from(rate), f64::from(burst));
        let refilled = |bucket: &Bucket| {
            (bucket.tokens + now.saturating_duration_since(bucket.at).as_secs_f64() * rate_per_s)
                .min(capacity)
        };
        let mut buckets = lock(&self.buckets);
        if buckets.len() >= MAX_TRACKED_CLIENTS && !buckets.contains_key(client) {
            buckets.retain(|_, bucket| refilled(bucket) < capacity);
        }
        let tokens = buckets.get(client).map_or(capacity, refilled);
        if tokens < 1.0 {
            return Err(ClientRefusal::Rate { rate, burst });
        }
        let bucket = Bucket { tokens: tokens - 1.0, at: now };
        if buckets.len() < MAX_TRACKED_CLIENTS || buckets.contains_key(client) {
            buckets.insert(client.clone(), bucket);
        }
        // Else every tracked client is active: this one goes untracked (admitted at its burst)
        // rather than evicting a client whose rate is being held.
        Ok(())
    }

    /// Clients tracked now: (with requests in flight, with a rate bucket).
    #[cfg(test)]
    fn tracked(&self) -> (usize, usize) {
        (lock(&self.in_flight).len(), lock(&self.buckets).len())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut table = lock(&self.table);
        if let Entry::Occupied(mut entry) = table.entry(self.client.clone()) {
            *entry.get_mut() -= 1;
            if *entry.get() == 0 {
                entry.remove();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn client(last: u8) -> ClientKey {
        ClientKey::address([127, 0, 0, last].into())
    }

    fn limits(max_in_flight: usize, rate: u32, burst: u32) -> ClientLimits {
        ClientLimits::new(ClientLimitSettings { max_in_flight, rate, burst })
    }

    #[test]
    fn requests_in_flight_are_capped_per_client() {
        let limits = limits(2, 1000, 1000);
        let first = limits.admit(&client(2)).unwrap();
        let _second = limits.admit(&client(2)).unwrap();
        assert_eq!(limits.admit(&client(2)).unwrap_err(), ClientRefusal::InFlight(2));
        assert!(limits.admit(&client(3)).is_ok(), "another client is not affected");
        drop(first);
        assert!(limits.admit(&client(2)).is_ok());
    }

    #[test]
    fn the_rate_allows_a_burst_then_refills_over_time() {
        let limits = limits(100, 10, 3);
        let start = Instant::now();
        for _ in 0..3 {
            drop(limits.admit_at(&client(2), start).unwrap());
        }
        let refused = limits.admit_at(&client(2), start).unwrap_err();
        assert_eq!(refused, ClientRefusal::Rate { rate: 10, burst: 3 });
        assert!(limits.admit_at(&client(3), start).is_ok(), "another client has its own bucket");
        // 10 per second: one token back after 100 ms, not before.
        assert!(limits.admit_at(&client(2), start + Duration::from_millis(50)).is_err());
        assert!(limits.admit_at(&client(2), start + Duration::from_millis(100)).is_ok());
        assert!(limits.admit_at(&client(2), start + Duration::from_millis(110)).is_err());
        // A long pause refills to the burst, no more.
        let later = start + Duration::from_secs(60);
        for _ in 0..3 {
            drop(limits.admit_at(&client(2), later).unwrap());
        }
        assert!(limits.admit_at(&client(2), later).is_err());
    }

    #[test]
    fn the_tables_stay_bounded_and_forget_quiet_clients() {
        let limits = limits(1, 1, 1);
        let start = Instant::now();
        let many = |third: u8| (0..=255u8).map(move |last| ClientKey::address([10, 0, third, last].into()));
        for third in 0..=255u8 {
            for key in many(third) {
                drop(limits.admit_at(&key, start).unwrap());
            }
        }
        assert_eq!(limits.tracked(), (0, MAX_TRACKED_CLIENTS));
        // The table is full of clients that just spent their token: a new one is admitted
        // without evicting them, and their rate still holds.
        let newcomer = ClientKey::address([10, 1, 0, 1].into());
        assert!(limits.admit_at(&newcomer, start).is_ok());
        assert!(limits.admit_at(&ClientKey::address([10, 0, 0, 1].into()), start).is_err());
        // One second later every bucket has refilled: the next newcomer clears them.
        let later = start + Duration::from_secs(1);
        assert!(limits.admit_at(&ClientKey::address([10, 1, 0, 2].into()), later).is_ok());
        assert_eq!(limits.tracked(), (0, 1));
    }
}
