//! Replicas of the malware server on one PostgreSQL database share one VirusTotal economy:
//! three `VirusTotalStep`s, each on its own `Store::open_postgres` of one scratch database, in
//! front of one fake VirusTotal (real HTTP) that counts the calls.

use std::sync::Arc;
use std::time::Duration;

use sentinel_server::VirusTotalStep;
use sentinel_store::{Store, StoreSettings};
use sentinel_testkit::fake_virustotal::{FakeVt, sha256_hex};
use sentinel_testkit::postgres::ScratchDatabase;
use sentinel_virustotal::{
    ApiKey, FileHash, KeyHasher, LookupRequest, QuotaOrigin, Source, TierLimits, VirusTotalSettings, VtError,
};

const KEY: &str = "economy-test-key";

/// One replica: its own store (its own connection pool) on the shared database, and its own step.
struct Replica {
    step: VirusTotalStep,
    _dir: tempfile::TempDir,
}

fn settings(base_url: &str, configure: impl FnOnce(&mut VirusTotalSettings)) -> VirusTotalSettings {
    let mut settings = VirusTotalSettings {
        base_url: base_url.to_owned(),
        request_timeout: Duration::from_secs(10),
        max_retries: 0,
        shared_flight_lease: Duration::from_secs(2),
        default_tier: TierLimits { requests_per_minute: 1000, requests_per_day: 100_000 },
        ..VirusTotalSettings::default()
    };
    configure(&mut settings);
    settings
}

fn replica(database: &ScratchDatabase, settings: &VirusTotalSettings) -> Replica {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open_postgres(database.url(), dir.path(), StoreSettings::default()).unwrap());
    assert!(store.is_shared());
    // Every replica of a fleet hashes keys under the same secret.
    let hasher = KeyHasher::new(b"fleet-wide key-hash secret, 32 b").unwrap();
    Replica { step: VirusTotalStep::new(settings, hasher, store).unwrap(), _dir: dir }
}

struct Fleet {
    fake: FakeVt,
    replicas: Vec<Replica>,
    _database: ScratchDatabase,
}

async fn fleet(configure: impl FnOnce(&mut VirusTotalSettings)) -> Fleet {
    let fake = FakeVt::start().await;
    fake.state.add_key(KEY);
    let database = ScratchDatabase::create("vt_economy");
    let settings = settings(&fake.base_url, configure);
    let replicas = (0..3).map(|_| replica(&database, &settings)).collect();
    Fleet { fake, replicas, _database: database }
}

fn request(sha256: &str) -> LookupRequest {
    LookupRequest {
        sha256: FileHash::parse(sha256).unwrap(),
        api_key: Some(ApiKey::new(KEY).unwrap()),
        file: None,
    }
}

fn hash_of(n: u32) -> String {
    sha256_hex(&n.to_le_bytes())
}

fn report_calls(fake: &FakeVt) -> usize {
    fake.state.count("GET", "/api/v3/files/")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_lookups_of_one_unknown_hash_over_three_replicas_make_one_call() {
    let fleet = fleet(|_| {}).await;
    let hash = hash_of(1);
    fleet.fake.state.add_report(&hash, 30, 70);
    fleet.fake.state.set_report_delay(Duration::from_millis(700));
    let lookups: Vec<_> = (0..50)
        .map(|index| {
            let step = fleet.replicas[index % 3].step.clone();
            let hash = hash.clone();
            tokio::spawn(async move { step.lookup(request(&hash)).await })
        })
        .collect();
    let mut sources = Vec::new();
    for lookup in lookups {
        let lookup = lookup.await.unwrap().unwrap();
        assert_eq!(lookup.verdict.stats.malicious, 30);
        sources.push(lookup.source);
    }
    assert_eq!(report_calls(&fleet.fake), 1, "one upstream call for the whole fleet");
    assert_eq!(sources.iter().filter(|source| **source == Source::FileReport).count(), 1);
    assert_eq!(sources.iter().filter(|source| **source == Source::SharedFlight).count(), 49);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_report_one_replica_fetched_is_answered_by_the_others_without_a_call() {
    let fleet = fleet(|_| {}).await;
    let hash = hash_of(2);
    fleet.fake.state.add_report(&hash, 5, 70);
    assert_eq!(fleet.replicas[0].step.lookup(request(&hash)).await.unwrap().source, Source::FileReport);
    for replica in &fleet.replicas[1..] {
        let lookup = replica.step.lookup(request(&hash)).await.unwrap();
        assert_eq!((lookup.source, lookup.verdict.stats.malicious), (Source::Dataset, 5));
    }
    assert_eq!(report_calls(&fleet.fake), 1);
}

/// Lookups of `count` distinct known hashes, spread over the replicas one after another.
async fn spread_lookups(fleet: &Fleet, count: u32) -> Vec<Result<Source, VtError>> {
    let mut outcomes = Vec::new();
    for n in 0..count {
        let hash = hash_of(100 + n);
        fleet.fake.state.add_report(&hash, 1, 70);
        let step = &fleet.replicas[n as usize % 3].step;
        outcomes.push(step.lookup(request(&hash)).await.map(|lookup| lookup.source));
    }
    outcomes
}

fn local_refusals(outcomes: &[Result<Source, VtError>]) -> usize {
    outcomes
        .iter()
        .filter(|outcome| {
            matches!(outcome, Err(VtError::QuotaExceeded { origin: QuotaOrigin::LocalLimit, .. }))
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_keys_minute_limit_counts_once_across_the_replicas() {
    let fleet = fleet(|settings| {
        settings.default_tier = TierLimits { requests_per_minute: 4, requests_per_day: 500 };
        settings.max_queue_wait = Duration::ZERO;
    })
    .await;
    let outcomes = spread_lookups(&fleet, 12).await;
    assert_eq!(outcomes.iter().filter(|outcome| outcome.is_ok()).count(), 4, "{outcomes:?}");
    assert_eq!(local_refusals(&outcomes), 8);
    assert_eq!(report_calls(&fleet.fake), 4, "4 calls in the minute, not 4 per replica");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_keys_day_quota_counts_once_across_the_replicas() {
    let fleet = fleet(|settings| {
        settings.default_tier = TierLimits { requests_per_minute: 1000, requests_per_day: 3 };
    })
    .await;
    let outcomes = spread_lookups(&fleet, 9).await;
    assert_eq!(outcomes.iter().filter(|outcome| outcome.is_ok()).count(), 3, "{outcomes:?}");
    assert_eq!(local_refusals(&outcomes), 6);
    assert_eq!(report_calls(&fleet.fake), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_429_holds_the_key_back_on_every_replica() {
    let fleet = fleet(|_| {}).await;
    fleet.fake.state.exhaust_key(KEY);
    let first = fleet.replicas[0].step.lookup(request(&hash_of(3))).await;
    assert!(
        matches!(first, Err(VtError::QuotaExceeded { origin: QuotaOrigin::VirusTotal, .. })),
        "{first:?}"
    );
    for (index, replica) in fleet.replicas.iter().enumerate() {
        let held = replica.step.lookup(request(&hash_of(10 + index as u32))).await;
        assert!(
            matches!(
                held,
                Err(VtError::QuotaExceeded { origin: QuotaOrigin::LocalLimit, retry_after: Some(_) })
            ),
            "replica {index}: {held:?}"
        );
    }
    assert_eq!(report_calls(&fleet.fake), 1, "the held key is not sent again by any replica");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn not_found_is_shared_with_the_other_replicas_waiting_on_the_hash() {
    let fleet = fleet(|_| {}).await;
    fleet.fake.state.set_report_delay(Duration::from_millis(700));
    let hash = hash_of(4);
    let lookups: Vec<_> = (0..9)
        .map(|index| {
            let step = fleet.replicas[index % 3].step.clone();
            let hash = hash.clone();
            tokio::spawn(async move { step.lookup(request(&hash)).await })
        })
        .collect();
    for lookup in lookups {
        assert_eq!(lookup.await.unwrap(), Err(VtError::NotFound));
    }
    assert_eq!(report_calls(&fleet.fake), 1, "the other replicas answered the leader's outcome");
    // The outcome answered those waiting; a later request asks again.
    assert_eq!(fleet.replicas[1].step.lookup(request(&hash)).await, Err(VtError::NotFound));
    assert_eq!(report_calls(&fleet.fake), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_killed_mid_flight_is_taken_over_once_its_claim_expires() {
    let fake = FakeVt::start().await;
    fake.state.add_key(KEY);
    let database = ScratchDatabase::create("vt_economy");
    let settings = settings(&fake.base_url, |_| {});
    let hash = hash_of(5);
    fake.state.add_report(&hash, 9, 70);
    fake.state.set_report_delay(Duration::from_secs(30));

    // The leader runs on a runtime of its own, so that it can be killed with everything it runs.
    let leader_runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let leader = replica(&database, &settings);
    let leader_step = leader.step.clone();
    let leader_hash = hash.clone();
    leader_runtime.spawn(async move { leader_step.lookup(request(&leader_hash)).await });
    while report_calls(&fake) == 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let follower = replica(&database, &settings);
    let follower_hash = hash.clone();
    let following = tokio::spawn(async move {
        let lookup = follower.step.lookup(request(&follower_hash)).await;
        (lookup, follower)
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!following.is_finished(), "the follower waits on the leader's claim");
    assert_eq!(report_calls(&fake), 1, "the follower does not call while the claim is held");

    // The leader dies: its tasks (calls and claim renewal) stop, and its store is gone.
    fake.state.set_report_delay(Duration::ZERO);
    leader_runtime.shutdown_background();
    tokio::task::spawn_blocking(move || drop(leader)).await.unwrap();

    let (lookup, _follower) =
        tokio::time::timeout(Duration::from_secs(20), following).await.unwrap().unwrap();
    let lookup = lookup.unwrap();
    assert_eq!((lookup.source, lookup.verdict.stats.malicious), (Source::FileReport, 9));
    assert_eq!(report_calls(&fake), 2, "the follower made the call the dead leader could not finish");
}
