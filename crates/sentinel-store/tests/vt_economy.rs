//! The shared VirusTotal economy (key admissions, flight claims) on both backends, and on
//! PostgreSQL with several stores (replicas) at once on one database.

mod backends;

use std::sync::{Arc, Barrier};

use backends::{Backend, Fixture, each_backend};
use sentinel_store::{FlightClaim, FlightState, KeyAdmission, KeyLimits, StoreError};

const DAY_MS: i64 = 86_400_000;
/// 10:00 UTC on some day.
const NOW: i64 = 20_000 * DAY_MS + 10 * 3_600_000;
const KEY: &str = "aa00000000000000000000000000000000000000000000000000000000000000";
const OTHER_KEY: &str = "bb00000000000000000000000000000000000000000000000000000000000000";
const HASH: &str = "cc00000000000000000000000000000000000000000000000000000000000000";
const PUBLIC: KeyLimits = KeyLimits { per_minute: 4, per_day: 500 };

fn granted(at_ms: i64, wait_ms: i64) -> KeyAdmission {
    KeyAdmission::Granted { at_ms, day: NOW / DAY_MS, wait_ms }
}

#[test]
fn a_key_gets_its_minute_then_waits_or_is_refused_and_other_keys_are_apart() {
    each_backend(|fixture| {
        let store = fixture.open();
        assert!(store.is_shared() == (fixture.backend == Backend::Postgres));
        for second in 0..4 {
            let now = NOW + second * 11_000;
            assert_eq!(store.vt_key_admit(KEY, PUBLIC, now, 20_000).unwrap(), granted(now, 0));
        }
        // 44 s after the first: its slot opens in 16 s, within the 20 s queue.
        let now = NOW + 44_000;
        assert_eq!(store.vt_key_admit(KEY, PUBLIC, now, 20_000).unwrap(), granted(NOW + 60_000, 16_000));
        // The next slot is a minute after the second request: 27 s away, refused with that hint.
        assert_eq!(
            store.vt_key_admit(KEY, PUBLIC, now, 20_000).unwrap(),
            KeyAdmission::Refused { retry_after_ms: 27_000 }
        );
        assert_eq!(store.vt_key_admit(OTHER_KEY, PUBLIC, now, 0).unwrap(), granted(now, 0));
        let later = NOW + 200_000;
        assert_eq!(store.vt_key_admit(KEY, PUBLIC, later, 0).unwrap(), granted(later, 0));
    });
}

#[test]
fn the_day_count_holds_until_utc_midnight_and_released_slots_count_nowhere() {
    each_backend(|fixture| {
        let store = fixture.open();
        let limits = KeyLimits { per_minute: 2, per_day: 3 };
        for _ in 0..10 {
            let KeyAdmission::Granted { at_ms, day, .. } = store.vt_key_admit(KEY, limits, NOW, 0).unwrap()
            else {
                panic!("a free slot")
            };
            store.vt_key_release(KEY, at_ms, day).unwrap();
        }
        assert_eq!(store.vt_key_admit(KEY, limits, NOW, 0).unwrap(), granted(NOW, 0));
        assert_eq!(store.vt_key_admit(KEY, limits, NOW, 0).unwrap(), granted(NOW, 0));
        assert_eq!(store.vt_key_admit(KEY, limits, NOW, 60_000).unwrap(), granted(NOW + 60_000, 60_000));
        assert_eq!(
            store.vt_key_admit(KEY, limits, NOW + 120_000, 0).unwrap(),
            KeyAdmission::Refused { retry_after_ms: 14 * 3_600_000 - 120_000 },
            "the day holds three"
        );
        let tomorrow = (NOW / DAY_MS + 1) * DAY_MS;
        assert_eq!(
            store.vt_key_admit(KEY, limits, tomorrow, 0).unwrap(),
            KeyAdmission::Granted { at_ms: tomorrow, day: tomorrow / DAY_MS, wait_ms: 0 }
        );
    });
}

#[test]
fn a_hold_refuses_the_key_until_it_ends_and_a_shorter_one_does_not_shorten_it() {
    each_backend(|fixture| {
        let store = fixture.open();
        store.vt_key_hold(KEY, NOW + 60_000).unwrap();
        store.vt_key_hold(KEY, NOW + 10_000).unwrap();
        assert_eq!(
            store.vt_key_admit(KEY, PUBLIC, NOW, 20_000).unwrap(),
            KeyAdmission::Refused { retry_after_ms: 60_000 }
        );
        assert_eq!(store.vt_key_admit(KEY, PUBLIC, NOW + 60_000, 0).unwrap(), granted(NOW + 60_000, 0));
    });
}

#[test]
fn keys_idle_since_an_earlier_day_are_swept() {
    each_backend(|fixture| {
        let store = fixture.open();
        for index in 0..40u8 {
            let key = format!("{index:02x}{}", "0".repeat(62));
            store.vt_key_admit(&key, PUBLIC, NOW, 0).unwrap();
        }
        store.vt_key_admit(KEY, PUBLIC, NOW + DAY_MS, 0).unwrap();
        if let Some(database) = &fixture.database {
            assert_eq!(database.query_i64("SELECT count(*) FROM vt_key_usage").unwrap(), 1);
            assert_eq!(database.query_i64("SELECT count(*) FROM vt_key_slots").unwrap(), 1);
        }
        // The swept keys start afresh.
        let key = format!("00{}", "0".repeat(62));
        assert_eq!(
            store.vt_key_admit(&key, KeyLimits { per_minute: 1, per_day: 1 }, NOW + DAY_MS, 0).unwrap(),
            KeyAdmission::Granted { at_ms: NOW + DAY_MS, day: NOW / DAY_MS + 1, wait_ms: 0 }
        );
    });
}

#[test]
fn bad_arguments_are_refused() {
    each_backend(|fixture| {
        let store = fixture.open();
        fn invalid<T>(result: Result<T, StoreError>) -> bool {
            matches!(result, Err(StoreError::InvalidVtCoordination(_) | StoreError::InvalidSha256(_)))
        }
        assert!(invalid(store.vt_key_admit("short", PUBLIC, NOW, 0)));
        assert!(invalid(store.vt_key_admit(KEY, KeyLimits { per_minute: 0, per_day: 1 }, NOW, 0)));
        assert!(invalid(store.vt_flight_claim("not a hash", "replica", NOW, 1_000)));
        assert!(invalid(store.vt_flight_claim(HASH, "", NOW, 1_000)));
        assert!(invalid(store.vt_flight_claim(HASH, &"r".repeat(500), NOW, 1_000)));
        assert!(invalid(store.vt_flight_release(HASH, "replica", NOW, Some("two words"))));
    });
}

#[test]
fn a_claim_is_held_renewed_released_with_its_outcome_and_taken_over_when_expired() {
    each_backend(|fixture| {
        let store = fixture.open();
        assert_eq!(store.vt_flight(HASH, NOW).unwrap(), FlightState::Free);
        assert_eq!(store.vt_flight_claim(HASH, "a", NOW, 10_000).unwrap(), FlightClaim::Claimed);
        assert_eq!(
            store.vt_flight_claim(HASH, "b", NOW + 1, 10_000).unwrap(),
            FlightClaim::HeldBy { owner: "a".into(), expires_at_ms: NOW + 10_000 }
        );
        assert!(store.vt_flight_renew(HASH, "a", NOW + 5_000, 10_000).unwrap());
        assert!(!store.vt_flight_renew(HASH, "b", NOW + 5_000, 10_000).unwrap(), "not b's claim");
        assert_eq!(
            store.vt_flight(HASH, NOW + 12_000).unwrap(),
            FlightState::Held { owner: "a".into(), expires_at_ms: NOW + 15_000 }
        );
        assert!(store.vt_flight_release(HASH, "a", NOW + 13_000, Some("not_found")).unwrap());
        assert_eq!(
            store.vt_flight(HASH, NOW + 13_000).unwrap(),
            FlightState::Released { outcome: Some("not_found".into()) }
        );
        assert!(!store.vt_flight_release(HASH, "a", NOW + 13_000, None).unwrap(), "released once");
        // A released claim is taken at once; an abandoned one once its lease ran out.
        assert_eq!(store.vt_flight_claim(HASH, "b", NOW + 14_000, 10_000).unwrap(), FlightClaim::Claimed);
        assert_eq!(store.vt_flight(HASH, NOW + 24_000).unwrap(), FlightState::Expired);
        assert!(matches!(
            store.vt_flight_claim(HASH, "c", NOW + 23_999, 10_000).unwrap(),
            FlightClaim::HeldBy { .. }
        ));
        assert_eq!(store.vt_flight_claim(HASH, "c", NOW + 24_000, 10_000).unwrap(), FlightClaim::Claimed);
        assert!(!store.vt_flight_renew(HASH, "b", NOW + 24_000, 10_000).unwrap(), "b lost it");
        // Claims ended long ago are swept by later claims.
        let other = "dd00000000000000000000000000000000000000000000000000000000000000";
        assert_eq!(store.vt_flight_claim(other, "a", NOW + 3_600_000, 10_000).unwrap(), FlightClaim::Claimed);
        assert_eq!(store.vt_flight(HASH, NOW + 3_600_000).unwrap(), FlightState::Free);
    });
}

/// Replicas at once on one PostgreSQL database: each check-then-write holds.
#[test]
fn replicas_admitting_and_claiming_at_once_share_one_limit_and_one_claim() {
    let fixture = Fixture::new(Backend::Postgres);
    let stores: Vec<_> = (0..3).map(|_| Arc::new(fixture.open())).collect();
    let threads = 24;
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|index| {
            let store = Arc::clone(&stores[index % 3]);
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                barrier.wait();
                let admission =
                    store.vt_key_admit(KEY, KeyLimits { per_minute: 4, per_day: 6 }, NOW, 90_000).unwrap();
                let claim = store.vt_flight_claim(HASH, &format!("replica-{index}"), NOW, 30_000).unwrap();
                (admission, claim)
            })
        })
        .collect();
    let outcomes: Vec<_> = handles.into_iter().map(|handle| handle.join().unwrap()).collect();
    let mut granted: Vec<i64> = outcomes
        .iter()
        .filter_map(|(admission, _)| match admission {
            KeyAdmission::Granted { at_ms, .. } => Some(*at_ms),
            KeyAdmission::Refused { .. } => None,
        })
        .collect();
    granted.sort();
    // Six a day: four now, two a minute later; every other request refused.
    assert_eq!(granted, [NOW, NOW, NOW, NOW, NOW + 60_000, NOW + 60_000]);
    let claimed = outcomes.iter().filter(|(_, claim)| *claim == FlightClaim::Claimed).count();
    assert_eq!(claimed, 1, "exactly one replica leads the flight");
}
