//! Single flight: concurrent requests for the same key share one piece of work.
//!
//! The first request for a key becomes the leader and gets a [`Flight`]; the
//! others become followers and wait for the value the leader publishes. The
//! entry is removed when the flight ends (value published, or the flight
//! dropped without one, which followers see as `None`), so a later request
//! starts afresh.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::watch;

pub(crate) struct Flights<K, V> {
    inflight: Mutex<HashMap<K, watch::Receiver<Option<V>>>>,
}

pub(crate) enum Role<K: Eq + Hash, V> {
    Leader(Flight<K, V>),
    Follower(watch::Receiver<Option<V>>),
}

/// The leader's handle on a flight.
pub(crate) struct Flight<K: Eq + Hash, V> {
    flights: Arc<Flights<K, V>>,
    key: K,
    sender: watch::Sender<Option<V>>,
}

impl<K: Eq + Hash + Clone, V: Clone> Flights<K, V> {
    pub(crate) fn new() -> Flights<K, V> {
        Flights { inflight: Mutex::new(HashMap::new()) }
    }

    /// Leads the flight for `key`, or follows the one in progress.
    pub(crate) fn join(self: &Arc<Self>, key: K) -> Role<K, V> {
        let mut inflight = self.inflight.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(receiver) = inflight.get(&key) {
            return Role::Follower(receiver.clone());
        }
        let (sender, receiver) = watch::channel(None);
        inflight.insert(key.clone(), receiver);
        Role::Leader(Flight { flights: Arc::clone(self), key, sender })
    }
}

impl<K: Eq + Hash, V: Clone> Flight<K, V> {
    /// A receiver of the flight's value, for the leader itself.
    pub(crate) fn subscribe(&self) -> watch::Receiver<Option<V>> {
        self.sender.subscribe()
    }

    /// Publishes the value to every follower and ends the flight.
    pub(crate) fn complete(self, value: V) {
        self.sender.send_replace(Some(value));
    }
}

impl<K: Eq + Hash, V> Drop for Flight<K, V> {
    fn drop(&mut self) {
        // Only this flight's own entry can be under its key: a new flight for
        // the key is created only once this one is gone.
        self.flights.inflight.lock().unwrap_or_else(PoisonError::into_inner).remove(&self.key);
    }
}

/// The flight's value, or `None` if the leader dropped the flight without one.
pub(crate) async fn outcome<V: Clone>(mut receiver: watch::Receiver<Option<V>>) -> Option<V> {
    receiver.wait_for(Option::is_some).await.ok().and_then(|value| value.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn followers_receive_the_leaders_value_and_the_flight_then_ends() {
        let flights = Arc::new(Flights::<u8, String>::new());
        let Role::Leader(flight) = flights.join(1) else { panic!("first request must lead") };
        let Role::Follower(follower) = flights.join(1) else { panic!("second request must follow") };
        assert!(matches!(flights.join(2), Role::Leader(_)), "other keys are independent");
        let waiting = tokio::spawn(outcome(follower));
        flight.complete("value".to_owned());
        assert_eq!(waiting.await.unwrap().as_deref(), Some("value"));
        assert!(matches!(flights.join(1), Role::Leader(_)), "a finished flight is not joined");
    }

    #[tokio::test]
    async fn followers_of_an_abandoned_flight_get_nothing() {
        let flights = Arc::new(Flights::<u8, u32>::new());
        let Role::Leader(flight) = flights.join(1) else { panic!("first request must lead") };
        let Role::Follower(follower) = flights.join(1) else { panic!("second request must follow") };
        drop(flight);
        assert_eq!(outcome(follower).await, None);
    }
}
