//! The VirusTotal client against a local fake of VirusTotal API v3.

mod virtual_time;

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use bytes::Bytes;
use sentinel_testkit::fake_virustotal::{FakeVt, sha256_hex};
use sentinel_virustotal::{
    ApiKey, Clock, ErrorKind, FileHash, KeyHasher, Label, Lookup, LookupRequest, QuotaOrigin, Source,
    TierLimits, VirusTotal, VirusTotalSettings, VtError,
};
use virtual_time::{MemoryDataset, VirtualClock};

const KEY: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";

struct Harness {
    fake: FakeVt,
    dataset: Arc<MemoryDataset>,
    clock: Arc<VirtualClock>,
    client: VirusTotal,
}

fn test_settings(base_url: &str) -> VirusTotalSettings {
    VirusTotalSettings {
        base_url: base_url.to_owned(),
        request_timeout: Duration::from_secs(10),
        retry_base_delay: Duration::from_secs(1),
        analysis_poll_interval: Duration::from_secs(15),
        // Generous limits unless a test is about them.
        default_tier: TierLimits { requests_per_minute: 1000, requests_per_day: 100_000 },
        ..VirusTotalSettings::default()
    }
}

async fn harness(configure: impl FnOnce(&mut VirusTotalSettings)) -> Harness {
    let fake = FakeVt::start().await;
    fake.state.add_key(KEY);
    let mut settings = test_settings(&fake.base_url);
    configure(&mut settings);
    let dataset = Arc::new(MemoryDataset::default());
    let clock = VirtualClock::new();
    let client = VirusTotal::with_clock(
        &settings,
        KeyHasher::new(b"test server secret, 32 bytes long").unwrap(),
        dataset.clone(),
        clock.clone(),
    )
    .unwrap();
    Harness { fake, dataset, clock, client }
}

fn request(sha256: &str, key: &str) -> LookupRequest {
    LookupRequest {
        sha256: FileHash::parse(sha256).unwrap(),
        api_key: Some(ApiKey::new(key).unwrap()),
        file: None,
    }
}

fn hash_of(n: u32) -> String {
    sha256_hex(&n.to_le_bytes())
}

#[tokio::test]
async fn a_known_hash_is_fetched_once_then_answered_from_the_dataset() {
    let h = harness(|_| {}).await;
    let sha = hash_of(1);
    h.fake.state.add_report(&sha, 40, 70);

    let first = h.client.lookup(request(&sha, KEY)).await.unwrap();
    assert_eq!(first.source, Source::FileReport);
    let verdict = &first.verdict;
    assert_eq!(verdict.sha256.to_string(), sha);
    assert_eq!(
        (verdict.stats.malicious, verdict.stats.undetected, verdict.stats.type_unsupported),
        (40, 30, 3)
    );
    assert_eq!(verdict.engines.len(), 70);
    assert_eq!(verdict.engines[0].result.as_deref(), Some("Trojan.Win32.Fake.0"));
    assert_eq!(verdict.last_analysis_date, Some(1_700_000_000));
    assert_eq!(verdict.fetched_at as u64, h.clock.now().as_secs());
    assert!(verdict.score(h.client.verdict_rule()).unwrap() > 0.9);
    assert_eq!(verdict.label(h.client.verdict_rule()), Label::Malicious);
    assert!(h.dataset.reports.lock().unwrap().contains_key(&verdict.sha256), "stored in the dataset");

    // Within the freshness limit no call is made, even without a key.
    let no_key = LookupRequest { api_key: None, ..request(&sha, KEY) };
    let second = h.client.lookup(no_key).await.unwrap();
    assert_eq!(second, Lookup { verdict: first.verdict.clone(), source: Source::Dataset });
    assert_eq!(h.fake.state.count("GET", "/api/v3/files/"), 1);
    assert_eq!(h.fake.state.received()[0].api_key, KEY, "sent in x-apikey");

    // A week later the report is refreshed.
    h.clock.advance(Duration::from_secs(7 * 86_400));
    assert_eq!(h.client.lookup(request(&sha, KEY)).await.unwrap().source, Source::FileReport);
    let metrics = h.client.metrics();
    assert_eq!((metrics.upstream_requests, metrics.cache_hits), (2, 1));
}

#[tokio::test]
async fn an_unknown_hash_is_not_found() {
    let h = harness(|_| {}).await;
    let result = h.client.lookup(request(&hash_of(2), KEY)).await;
    assert_eq!(result, Err(VtError::NotFound));
    assert_eq!(h.client.metrics().errors[&ErrorKind::NotFound], 1);
    // Without a key nothing can be asked.
    let no_key = LookupRequest { api_key: None, ..request(&hash_of(2), KEY) };
    assert_eq!(h.client.lookup(no_key).await, Err(VtError::MissingKey));
    assert_eq!(h.fake.state.count("GET", "/api/v3/files/"), 1);
}

#[tokio::test]
async fn a_wrong_key_is_reported_and_never_shown() {
    let h = harness(|_| {}).await;
    let sha = hash_of(3);
    h.fake.state.add_report(&sha, 1, 70);
    let wrong_key = "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff";
    let request = request(&sha, wrong_key);
    assert!(!format!("{request:?}").contains(wrong_key));
    let error = h.client.lookup(request).await.unwrap_err();
    let VtError::WrongCredentials { message } = &error else {
        panic!("expected WrongCredentials, got {error:?}")
    };
    // The fake echoes the key in its message; the client redacts it.
    assert_eq!(message, "Wrong API key <redacted>");
    assert!(!error.to_string().contains(wrong_key) && !format!("{error:?}").contains(wrong_key));
    assert!(!format!("{:?}", h.client).contains(wrong_key));
    assert_eq!(h.client.metrics().errors[&ErrorKind::WrongCredentials], 1);
    assert!(h.dataset.reports.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_429_is_a_quota_error_and_holds_the_key_back() {
    let h = harness(|_| {}).await;
    let other_key = "0000000000000000000000000000000000000000000000000000000000000001";
    h.fake.state.add_key(other_key);
    h.fake.state.exhaust_key(KEY);
    let sha = hash_of(4);
    h.fake.state.add_report(&sha, 0, 70);

    let error = h.client.lookup(request(&sha, KEY)).await.unwrap_err();
    assert!(matches!(error, VtError::QuotaExceeded { origin: QuotaOrigin::VirusTotal, .. }), "{error:?}");
    assert_eq!(h.fake.state.count("GET", "/api/v3/files/"), 1, "a 429 is not retried");

    // For the next minute the key is refused here, without bothering VirusTotal.
    let error = h.client.lookup(request(&hash_of(5), KEY)).await.unwrap_err();
    assert_eq!(
        error,
        VtError::QuotaExceeded {
            origin: QuotaOrigin::LocalLimit,
            retry_after: Some(Duration::from_secs(60))
        }
    );
    assert_eq!(h.fake.state.count("GET", "/api/v3/files/"), 1);

    // Another client's key is unaffected, and its answer then serves everyone.
    let answer = h.client.lookup(request(&sha, other_key)).await.unwrap();
    assert_eq!(answer.source, Source::FileReport);
    assert_eq!(h.client.lookup(request(&sha, KEY)).await.unwrap().source, Source::Dataset);
}

#[tokio::test]
async fn transient_errors_are_retried_with_back_off() {
    let h = harness(|settings| settings.max_retries = 3).await;
    let sha = hash_of(6);
    h.fake.state.add_report(&sha, 5, 70);
    h.fake.state.fail_next(&[StatusCode::SERVICE_UNAVAILABLE, StatusCode::INTERNAL_SERVER_ERROR]);
    let before = h.clock.now();

    let answer = h.client.lookup(request(&sha, KEY)).await.unwrap();
    assert_eq!(answer.source, Source::FileReport);
    assert_eq!(h.fake.state.count("GET", "/api/v3/files/"), 3);
    assert_eq!(h.client.metrics().retries, 2);
    // Back-off of 0.5–1 s then 1–2 s (virtual time).
    let waited = h.clock.now() - before;
    assert!(waited >= Duration::from_millis(1500) && waited <= Duration::from_secs(3), "{waited:?}");

    // Bounded: after max_retries + 1 attempts the lookup fails.
    let sha = hash_of(7);
    h.fake.state.add_report(&sha, 5, 70);
    h.fake.state.fail_next(&[StatusCode::BAD_GATEWAY; 4]);
    let error = h.client.lookup(request(&sha, KEY)).await.unwrap_err();
    assert!(
        matches!(&error, VtError::Unavailable { attempts: 4, last } if last.contains("502")),
        "{error:?}"
    );
    assert_eq!(h.fake.state.count("GET", "/api/v3/files/"), 7);
}

#[tokio::test]
async fn fifty_concurrent_lookups_of_one_hash_make_one_call() {
    let h = harness(|_| {}).await;
    let sha = hash_of(8);
    h.fake.state.add_report(&sha, 3, 70);
    h.fake.state.set_report_delay(Duration::from_millis(200));
    let keys: Vec<String> = (0..50).map(|i| format!("{i:064x}")).collect();
    for key in &keys {
        h.fake.state.add_key(key);
    }

    let lookups: Vec<_> = keys
        .iter()
        .map(|key| {
            let client = h.client.clone();
            let request = request(&sha, key);
            tokio::spawn(async move { client.lookup(request).await })
        })
        .collect();
    let mut answers = Vec::new();
    for lookup in lookups {
        answers.push(lookup.await.unwrap().unwrap());
    }

    let received = h.fake.state.received();
    assert_eq!(received.len(), 1, "exactly one upstream call");
    assert!(keys.contains(&received[0].api_key));
    assert!(answers.iter().all(|answer| answer.verdict == answers[0].verdict));
    let paid = answers.iter().filter(|a| a.source == Source::FileReport).count();
    assert_eq!(paid, 1);
    let metrics = h.client.metrics();
    assert_eq!(metrics.single_flight_saved + metrics.cache_hits, 49);
    assert_eq!(metrics.upstream_requests, 1);
}

#[tokio::test]
async fn a_leader_with_a_bad_key_does_not_fail_the_requests_waiting_on_it() {
    let h = harness(|_| {}).await;
    let sha = hash_of(9);
    h.fake.state.add_report(&sha, 0, 70);
    h.fake.state.set_report_delay(Duration::from_millis(200));
    let bad_key = "badbadbadbadbadbadbadbadbadbadbadbadbadbadbadbadbadbadbadbadbadb";

    let leader = {
        let (client, sha) = (h.client.clone(), sha.clone());
        tokio::spawn(async move { client.lookup(request(&sha, bad_key)).await })
    };
    while h.fake.state.received().is_empty() {
        tokio::task::yield_now().await;
    }
    let follower = h.client.lookup(request(&sha, KEY)).await.unwrap();
    assert!(matches!(leader.await.unwrap(), Err(VtError::WrongCredentials { .. })));
    assert_eq!(follower.source, Source::FileReport, "made its own call with its own key");
    let keys: Vec<_> = h.fake.state.received().into_iter().map(|r| r.api_key).collect();
    assert_eq!(keys, [bad_key, KEY]);
}

#[tokio::test]
async fn the_rate_limiter_queues_short_waits_and_refuses_long_ones() {
    let h = harness(|settings| {
        settings.default_tier = TierLimits { requests_per_minute: 4, requests_per_day: 500 };
        settings.max_queue_wait = Duration::from_secs(20);
    })
    .await;
    for n in 10..20 {
        h.fake.state.add_report(&hash_of(n), 1, 70);
    }
    let start = h.clock.now();
    for n in 10..14 {
        h.client.lookup(request(&hash_of(n), KEY)).await.unwrap();
    }
    assert_eq!(h.clock.now(), start, "four requests a minute go at once");

    // The fifth would wait a minute: refused, nothing sent.
    let error = h.client.lookup(request(&hash_of(14), KEY)).await.unwrap_err();
    assert_eq!(
        error,
        VtError::QuotaExceeded {
            origin: QuotaOrigin::LocalLimit,
            retry_after: Some(Duration::from_secs(60))
        }
    );
    assert_eq!(h.fake.state.count("GET", "/api/v3/files/"), 4);

    // 45 s later the wait is 15 s: queued, then sent when the window allows.
    h.clock.advance(Duration::from_secs(45));
    let answer = h.client.lookup(request(&hash_of(14), KEY)).await.unwrap();
    assert_eq!(answer.source, Source::FileReport);
    assert_eq!(h.clock.now() - start, Duration::from_secs(60));
    assert_eq!(h.fake.state.count("GET", "/api/v3/files/"), 5);
    assert_eq!(h.client.metrics().errors[&ErrorKind::LocalRateLimit], 1);
}

#[tokio::test]
async fn an_unreachable_virustotal_is_an_outage_that_spends_no_quota() {
    // A port held bound but never listening: every connection to it is refused, and no other
    // process can take it meanwhile.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let address = socket.local_addr().unwrap();
    let mut settings = test_settings(&format!("http://{address}"));
    // A public key: four requests a minute, each lookup four attempts.
    settings.default_tier = TierLimits { requests_per_minute: 4, requests_per_day: 500 };
    settings.max_retries = 3;
    let clock = VirtualClock::new();
    let client = VirusTotal::with_clock(
        &settings,
        KeyHasher::new(b"test server secret, 32 bytes long").unwrap(),
        Arc::new(MemoryDataset::default()),
        clock.clone(),
    )
    .unwrap();

    // Three lookups during the outage: twelve attempts, three times the key's minute.
    let start = clock.now();
    for n in 30..33 {
        let error = client.lookup(request(&hash_of(n), KEY)).await.unwrap_err();
        assert!(matches!(&error, VtError::Unreachable { attempts: 4, .. }), "{error:?}");
        assert!(error.to_string().starts_with("VirusTotal unreachable after 4 attempts"), "{error}");
        assert_eq!(error.kind(), ErrorKind::Unavailable);
    }
    assert!(clock.now() - start < Duration::from_secs(60), "all within the key's minute");
    assert_eq!(client.metrics().errors[&ErrorKind::LocalRateLimit], 0, "{:?}", client.metrics());

    // VirusTotal is back on the same port: the key's whole minute is still there.
    let fake = FakeVt::start_on(socket.listen(64).unwrap()).await;
    fake.state.add_key(KEY);
    for n in 33..37 {
        fake.state.add_report(&hash_of(n), 3, 70);
        let answer = client.lookup(request(&hash_of(n), KEY)).await.unwrap();
        assert_eq!(answer.source, Source::FileReport);
    }
    assert_eq!(fake.state.count("GET", "/api/v3/files/"), 4);
    assert!(clock.now() - start < Duration::from_secs(60), "no request waited for the limiter");
}

#[tokio::test]
async fn premium_keys_get_their_tier() {
    let fake_key_id = {
        let hasher = KeyHasher::new(b"test server secret, 32 bytes long").unwrap();
        hasher.key_id(&ApiKey::new(KEY).unwrap()).to_string()
    };
    let h = harness(|settings| {
        settings.default_tier = TierLimits { requests_per_minute: 1, requests_per_day: 500 };
        settings
            .tiers
            .insert("premium".into(), TierLimits { requests_per_minute: 30, requests_per_day: 10_000 });
        settings.key_tiers.insert(fake_key_id.clone(), "premium".into());
    })
    .await;
    assert_eq!(h.client.key_id(&ApiKey::new(KEY).unwrap()).to_string(), fake_key_id);
    for n in 20..30 {
        h.fake.state.add_report(&hash_of(n), 1, 70);
        h.client.lookup(request(&hash_of(n), KEY)).await.unwrap();
    }
    assert_eq!(h.fake.state.count("GET", "/api/v3/files/"), 10);
}

fn upload_request(file: &[u8]) -> LookupRequest {
    LookupRequest { file: Some(Bytes::copy_from_slice(file)), ..request(&sha256_hex(file), KEY) }
}

#[tokio::test]
async fn unknown_files_are_uploaded_and_the_analysis_polled_when_enabled() {
    let h = harness(|settings| settings.upload_enabled = true).await;
    h.fake.state.polls_before_completion.store(2, std::sync::atomic::Ordering::SeqCst);
    let file = b"MZ\x90\x00 a sample the fake VirusTotal has never seen".to_vec();

    let answer = h.client.lookup(upload_request(&file)).await.unwrap();
    assert_eq!(answer.source, Source::Upload);
    assert_eq!(answer.verdict.sha256.to_string(), sha256_hex(&file));
    assert_eq!((answer.verdict.stats.malicious, answer.verdict.engines.len()), (12, 60));
    assert_eq!(answer.verdict.last_analysis_date, Some(1_700_000_200));
    assert_eq!(h.fake.state.uploaded(), std::slice::from_ref(&file));
    assert_eq!(h.fake.state.count("POST", "/api/v3/files"), 1);
    assert_eq!(h.fake.state.count("GET", "/api/v3/analyses/"), 3, "two 'queued' then 'completed'");
    assert!(h.fake.state.received().iter().all(|r| r.api_key == KEY));
    assert!(h.dataset.reports.lock().unwrap().contains_key(&answer.verdict.sha256));
    assert_eq!(h.client.metrics().uploads, 1);
}

#[tokio::test]
async fn an_analysis_that_never_completes_times_out() {
    let h = harness(|settings| {
        settings.upload_enabled = true;
        settings.analysis_timeout = Duration::from_secs(60);
    })
    .await;
    h.fake.state.polls_before_completion.store(1000, std::sync::atomic::Ordering::SeqCst);
    let error = h.client.lookup(upload_request(b"slow sample")).await.unwrap_err();
    assert_eq!(error, VtError::AnalysisTimeout(Duration::from_secs(60)));
    assert_eq!(h.fake.state.count("GET", "/api/v3/analyses/"), 4, "polls every 15 s for 60 s");
}

#[tokio::test]
async fn large_files_go_through_an_upload_url() {
    let h = harness(|settings| settings.upload_enabled = true).await;
    let file = vec![0x5a; 33 * 1024 * 1024];
    let answer = h.client.lookup(upload_request(&file)).await.unwrap();
    assert_eq!(answer.source, Source::Upload);
    assert_eq!(h.fake.state.count("GET", "/api/v3/files/upload_url"), 1);
    assert_eq!(h.fake.state.count("POST", "/_ah/upload/"), 1);
    assert_eq!(h.fake.state.count("POST", "/api/v3/files"), 0);
    assert_eq!(h.fake.state.uploaded()[0].len(), file.len());
}

#[tokio::test]
async fn uploads_are_refused_when_disabled_or_too_large() {
    let h = harness(|_| {}).await;
    let file = b"a sample that must not leave the premises";
    assert_eq!(h.client.lookup(upload_request(file)).await, Err(VtError::NotFound));
    assert_eq!(h.fake.state.count("POST", "/"), 0, "nothing uploaded by default");

    let h = harness(|settings| {
        settings.upload_enabled = true;
        settings.max_upload_bytes = 8;
    })
    .await;
    let error = h.client.lookup(upload_request(file)).await.unwrap_err();
    assert_eq!(error, VtError::FileTooLarge { size: file.len() as u64, limit: 8 });
    assert_eq!(h.fake.state.count("POST", "/"), 0);
}

#[tokio::test]
async fn a_stale_report_is_answered_when_virustotal_cannot_be_asked() {
    let h = harness(|_| {}).await;
    let sha = hash_of(40);
    h.fake.state.add_report(&sha, 2, 70);
    h.client.lookup(request(&sha, KEY)).await.unwrap();
    h.clock.advance(Duration::from_secs(30 * 86_400));
    h.fake.state.exhaust_key(KEY);
    let answer = h.client.lookup(request(&sha, KEY)).await.unwrap();
    assert_eq!(answer.source, Source::StaleDataset);
    assert_eq!(h.client.metrics().stale_answers, 1);
}
