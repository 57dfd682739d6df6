//! Named leases through the public API, on both backends: several stores on one database (the
//! replicas of a fleet, or threads of one process on SQLite) racing for one lease get exactly one
//! holder; the holder renews it, releases it, and another then takes it.

use std::sync::Barrier;
use std::time::Duration;

use sentinel_store::{Store, StoreError};

mod backends;
use backends::each_backend;

const TTL: Duration = Duration::from_secs(60);

#[test]
fn stores_racing_for_one_lease_get_exactly_one_holder() {
    each_backend(|fixture| {
        const REPLICAS: usize = 8;
        let stores: Vec<Store> = (0..REPLICAS).map(|_| fixture.open()).collect();
        for round in 0..3 {
            let name = format!("stream-partition-{round}");
            let barrier = Barrier::new(REPLICAS);
            let won: Vec<bool> = std::thread::scope(|scope| {
                let threads: Vec<_> = stores
                    .iter()
                    .enumerate()
                    .map(|(replica, store)| {
                        let (barrier, name) = (&barrier, &name);
                        scope.spawn(move || {
                            barrier.wait();
                            store.acquire_lease(name, &format!("replica-{replica}"), TTL).unwrap()
                        })
                    })
                    .collect();
                threads.into_iter().map(|thread| thread.join().unwrap()).collect()
            });
            let winners: Vec<usize> =
                won.iter().enumerate().filter(|(_, won)| **won).map(|(at, _)| at).collect();
            assert_eq!(winners.len(), 1, "round {round}: {won:?}");
            let (holder, _) = stores[0].lease_holder(&name).unwrap().unwrap();
            assert_eq!(holder, format!("replica-{}", winners[0]));
        }
    });
}

#[test]
fn a_holder_renews_and_releases_and_another_owner_then_takes_the_lease() {
    each_backend(|fixture| {
        let (first, second) = (fixture.open(), fixture.open());
        assert_eq!(first.lease_holder("network-training").unwrap(), None);
        assert!(first.acquire_lease("network-training", "replica-a", TTL).unwrap());
        let (_, expires_at) = second.lease_holder("network-training").unwrap().unwrap();
        assert!(!second.acquire_lease("network-training", "replica-b", TTL).unwrap());
        // A renewal with a longer time to live moves the expiry.
        assert!(first.acquire_lease("network-training", "replica-a", TTL * 2).unwrap());
        let renewed = second.lease_holder("network-training").unwrap().unwrap();
        assert_eq!(renewed.0, "replica-a");
        assert!(renewed.1 >= expires_at + 60, "{renewed:?} after {expires_at}");

        // Only the holder releases it.
        assert!(!second.release_lease("network-training", "replica-b").unwrap());
        assert!(first.release_lease("network-training", "replica-a").unwrap());
        assert!(!first.release_lease("network-training", "replica-a").unwrap());
        assert_eq!(second.lease_holder("network-training").unwrap(), None);
        assert!(second.acquire_lease("network-training", "replica-b", TTL).unwrap());
        // Leases are independent of each other, and survive a restart.
        assert!(first.acquire_lease("other", "replica-a", TTL).unwrap());
        drop((first, second));
        let store = fixture.open();
        assert_eq!(store.lease_holder("network-training").unwrap().unwrap().0, "replica-b");
        assert_eq!(store.lease_holder("other").unwrap().unwrap().0, "replica-a");
    });
}

#[test]
fn invalid_names_owners_and_times_to_live_are_refused() {
    each_backend(|fixture| {
        let store = fixture.open();
        let long = "x".repeat(257);
        let refused = |outcome: Result<bool, StoreError>| matches!(outcome, Err(StoreError::InvalidLease(_)));
        assert!(refused(store.acquire_lease("", "replica-a", TTL)));
        assert!(refused(store.acquire_lease("lease", "", TTL)));
        assert!(refused(store.acquire_lease(&long, "replica-a", TTL)));
        assert!(refused(store.acquire_lease("lease", &long, TTL)));
        assert!(refused(store.acquire_lease("lease", "replica-a", Duration::ZERO)));
        assert!(refused(store.acquire_lease("lease", "replica-a", Duration::from_secs(8 * 24 * 3600))));
        assert!(refused(store.release_lease("", "replica-a")));
        assert!(matches!(store.lease_holder(&long), Err(StoreError::InvalidLease(_))));
        // The longest name and owner accepted.
        assert!(store.acquire_lease(&long[1..], &long[1..], TTL).unwrap());
        assert_eq!(store.lease_holder(&long[1..]).unwrap().unwrap().0, long[1..]);
    });
}

#[test]
fn live_leases_lists_the_unexpired_holders_of_a_family_only() {
    each_backend(|fixture| {
        let store = fixture.open();
        assert!(store.acquire_lease("network-worker/b", "replica-b", TTL).unwrap());
        assert!(store.acquire_lease("network-worker/a", "replica-a", TTL).unwrap());
        assert!(store.acquire_lease("network-partition/3", "replica-a", TTL).unwrap());
        // A `_` or `%` in the prefix is a character, not a pattern.
        assert!(store.acquire_lease("network_worker/x", "replica-x", TTL).unwrap());
        assert_eq!(
            store.live_leases("network-worker/").unwrap(),
            [
                ("network-worker/a".to_owned(), "replica-a".to_owned()),
                ("network-worker/b".into(), "replica-b".into())
            ]
        );
        assert!(store.release_lease("network-worker/a", "replica-a").unwrap());
        assert_eq!(store.live_leases("network-worker/").unwrap().len(), 1);
        assert_eq!(store.live_leases("").unwrap().len(), 3);
        assert!(store.live_leases("nothing/").unwrap().is_empty());
        assert!(matches!(store.live_leases(&"x".repeat(300)), Err(StoreError::InvalidLease(_))));
    });
}
