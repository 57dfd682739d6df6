//! The VirusTotal step through the TCP protocol (commands 3 and 4), against a
//! local server on 127.0.0.1 that speaks VirusTotal's API v3 with its real
//! JSON shapes and errors: the shared results dataset, single flight across
//! connections, quota and key errors as protocol reasons, labels collected
//! from reports, and a dataset that survives a restart.

mod harness;

use std::time::Duration;

use harness::{TestServer, detail_of, request, sha256_hex, status};
use sentinel_protocol::{Client, Command, Reason, Response, STATUS_NO, encode_request};
use sentinel_store::{LabelSource, VtReportRow};
use sentinel_testkit::fake_virustotal::FakeVt;
use sentinel_testkit::synthetic_pe;
use sentinel_virustotal::{AnalysisStats, FileHash, TierLimits, Verdict, VirusTotalSettings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const KEY: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";
const OTHER_KEY: &str = "0f0e0d0c0b0a09080706050403020100ffeeddccbbaa99887766554433221100";

fn vt_settings(fake: &FakeVt) -> VirusTotalSettings {
    VirusTotalSettings {
        base_url: fake.base_url.clone(),
        request_timeout: Duration::from_secs(5),
        retry_base_delay: Duration::from_millis(10),
        analysis_poll_interval: Duration::from_millis(20),
        // Generous limits unless a test is about them.
        default_tier: TierLimits { requests_per_minute: 10_000, requests_per_day: 100_000 },
        ..VirusTotalSettings::default()
    }
}

async fn fake_vt() -> FakeVt {
    let fake = FakeVt::start().await;
    fake.state.add_key(KEY);
    fake.state.add_key(OTHER_KEY);
    fake
}

async fn server_with(fake: &FakeVt, adjust: impl FnOnce(&mut VirusTotalSettings)) -> TestServer {
    let mut settings = vt_settings(fake);
    adjust(&mut settings);
    TestServer::start_in(tempfile::tempdir().unwrap(), |_| {}, Some(settings)).await
}

async fn detailed_client(server: &TestServer) -> Client {
    let mut client = Client::connect(server.tcp).await.unwrap();
    assert!(client.enable_error_detail().await.unwrap());
    client
}

fn by_hash(sha256: &str, key: &str) -> sentinel_protocol::Request {
    request(Command::VtAnalyse, b"", Some(sha256), Some(key))
}

fn scores(response: Response) -> Vec<f32> {
    match response {
        Response::Yes(scores) => scores,
        other => panic!("expected Yes, got {other:?}"),
    }
}

fn file_reports(fake: &FakeVt) -> usize {
    fake.state.count("GET", "/api/v3/files/")
}

#[tokio::test]
async fn a_known_hash_is_fetched_once_then_answered_from_the_dataset_for_every_client() {
    let fake = fake_vt().await;
    let server = server_with(&fake, |_| {}).await;
    let sha256 = sha256_hex(b"known sample");
    fake.state.add_report(&sha256, 40, 70);

    let first = scores(detailed_client(&server).await.request(&by_hash(&sha256, KEY)).await.unwrap());
    assert_eq!(first.len(), 2, "y and the VirusTotal score");
    assert_eq!(first[0], first[1], "with one step y is its score");
    assert!(first[1] > 0.9, "40 of 70 engines: {}", first[1]);
    assert_eq!(file_reports(&fake), 1);

    // Another client, with another key and then with no key at all: no call.
    let mut other = detailed_client(&server).await;
    assert_eq!(scores(other.request(&by_hash(&sha256, OTHER_KEY)).await.unwrap()), first);
    let no_key = request(Command::VtAnalyse, b"", Some(&sha256), None);
    assert_eq!(scores(other.request(&no_key).await.unwrap()), first);
    assert_eq!(file_reports(&fake), 1, "a fresh stored report costs nobody anything");

    let vt = status(server.http).await["virustotal"].clone();
    assert_eq!((vt["calls_made"].as_u64(), vt["cache_hits"].as_u64()), (Some(1), Some(2)), "{vt}");
    assert_eq!(vt["calls_saved"].as_u64(), Some(2), "{vt}");
    let (code, metrics) = harness::http(server.http, "GET", "/metrics").await;
    assert_eq!(code, 200);
    for line in
        ["virustotal_calls_total 1", "virustotal_cache_hits_total 2", "virustotal_calls_saved_total 2"]
    {
        assert!(metrics.lines().any(|metric| metric == line), "{line} in {metrics}");
    }

    // The report is in the dataset and labelled the sample by consensus.
    let stored = server.store.vt_report(&sha256).unwrap().expect("the report is stored");
    assert_eq!((stored.malicious, stored.undetected), (40, 30));
    let label = server.store.label(&sha256).unwrap().expect("the sample is labelled");
    assert_eq!((label.y, label.source), (1, LabelSource::VirusTotal));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_clients_asking_for_one_unknown_hash_at_once_make_one_call() {
    let fake = fake_vt().await;
    // Long enough for every client's request to arrive while the first call is out.
    fake.state.set_report_delay(Duration::from_millis(700));
    let server = server_with(&fake, |_| {}).await;
    let sha256 = sha256_hex(b"popular sample");
    fake.state.add_report(&sha256, 3, 70);

    let mut clients = Vec::new();
    for _ in 0..50 {
        clients.push(Client::connect(server.tcp).await.unwrap());
    }
    let asks = clients.into_iter().enumerate().map(|(index, mut client)| {
        let sha256 = sha256.clone();
        tokio::spawn(async move {
            let key = if index % 2 == 0 { KEY } else { OTHER_KEY };
            client.request(&by_hash(&sha256, key)).await.unwrap()
        })
    });
    let mut answers = Vec::new();
    for ask in asks.collect::<Vec<_>>() {
        answers.push(ask.await.unwrap());
    }
    let first = scores(answers[0].clone());
    assert!(
        answers.iter().all(|answer| *answer == Response::Yes(first.clone())),
        "every client gets the report"
    );
    assert_eq!(file_reports(&fake), 1, "one upstream call for fifty clients");
    let vt = status(server.http).await["virustotal"].clone();
    assert_eq!(vt["calls_made"].as_u64(), Some(1), "{vt}");
    assert_eq!(vt["calls_saved"].as_u64(), Some(49), "{vt}");
    server.stop().await;
}

/// A report as the client stores it, fetched `age` ago.
fn stored_report(sha256: &str, malicious: u32, age: Duration) -> VtReportRow {
    let fetched_at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
        as i64
        - age.as_secs() as i64;
    let verdict = Verdict {
        sha256: FileHash::parse(sha256).unwrap(),
        engines: Vec::new(),
        stats: AnalysisStats { malicious, undetected: 70 - malicious, ..AnalysisStats::default() },
        last_analysis_date: Some(fetched_at),
        first_submission_date: Some(fetched_at - 86_400 * 365),
        fetched_at,
    };
    VtReportRow {
        sha256: sha256.to_owned(),
        last_analysis_date: verdict.last_analysis_date,
        fetched_at,
        malicious,
        suspicious: 0,
        undetected: 70 - malicious,
        harmless: 0,
        report_json: serde_json::to_string(&verdict).unwrap(),
    }
}

#[tokio::test]
async fn a_429_is_quota_exceeded_holds_the_key_back_and_a_stale_report_is_answered() {
    let fake = fake_vt().await;
    fake.state.exhaust_key(KEY);
    let server = server_with(&fake, |_| {}).await;
    let unknown = sha256_hex(b"never seen");
    fake.state.add_report(&unknown, 10, 70);
    let mut client = detailed_client(&server).await;

    let (reason, step, message) = detail_of(client.request(&by_hash(&unknown, KEY)).await.unwrap());
    assert_eq!((reason, step.as_deref()), (Reason::QuotaExceeded, Some("virustotal")), "{message}");
    assert_eq!(file_reports(&fake), 1, "a 429 is not retried");
    // VirusTotal said the quota is spent: the key is held back here, not sent again.
    let (reason, _, _) = detail_of(client.request(&by_hash(&unknown, KEY)).await.unwrap());
    assert_eq!(reason, Reason::QuotaExceeded);
    assert_eq!(file_reports(&fake), 1, "no call while the key is held back");
    // Another client's key is not affected.
    assert_eq!(scores(client.request(&by_hash(&unknown, OTHER_KEY)).await.unwrap()).len(), 2);
    assert_eq!(file_reports(&fake), 2);

    // A report older than the freshness limit is answered when VirusTotal cannot be asked.
    let stale = sha256_hex(b"seen long ago");
    server.store.put_vt_report(&stored_report(&stale, 35, Duration::from_secs(30 * 86_400))).unwrap();
    let answer = scores(client.request(&by_hash(&stale, KEY)).await.unwrap());
    assert!(answer[1] > 0.9, "{answer:?}");
    assert_eq!(file_reports(&fake), 2);
    assert_eq!(status(server.http).await["virustotal"]["client"]["stale_answers"].as_u64(), Some(1));
    server.stop().await;
}

#[tokio::test]
async fn an_unreachable_virustotal_is_unavailable_not_quota_exceeded() {
    // VirusTotal's port held bound but never listening: every connection is refused.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let settings = VirusTotalSettings {
        base_url: format!("http://{}", socket.local_addr().unwrap()),
        retry_base_delay: Duration::from_millis(10),
        // A public key's minute: the retries of one request would spend it all.
        default_tier: TierLimits { requests_per_minute: 4, requests_per_day: 500 },
        ..VirusTotalSettings::default()
    };
    let server = TestServer::start_in(tempfile::tempdir().unwrap(), |_| {}, Some(settings)).await;
    let mut client = detailed_client(&server).await;
    for n in 0..3u8 {
        let sha256 = sha256_hex(&[n]);
        let (reason, step, message) = detail_of(client.request(&by_hash(&sha256, KEY)).await.unwrap());
        assert_eq!((reason, step.as_deref()), (Reason::Unavailable, Some("virustotal")), "{message}");
        assert!(message.contains("VirusTotal unreachable"), "{message}");
    }
    server.stop().await;
}

#[tokio::test]
async fn a_wrong_key_is_no_with_its_reason_and_exactly_four_bytes_for_a_plain_client() {
    let fake = fake_vt().await;
    let server = server_with(&fake, |_| {}).await;
    let sha256 = sha256_hex(b"any sample");
    fake.state.add_report(&sha256, 5, 70);
    let wrong_key = "deadbeefdeadbeefdeadbeefdeadbeefdeadbeefdeadbeefdeadbeefdeadbeef";

    let mut client = detailed_client(&server).await;
    let (reason, step, message) = detail_of(client.request(&by_hash(&sha256, wrong_key)).await.unwrap());
    assert_eq!((reason, step.as_deref()), (Reason::WrongCredentials, Some("virustotal")));
    assert!(!message.contains(wrong_key), "the key is never echoed: {message}");

    // A client that did not opt in reads exactly the 4-byte No, and goes on.
    let mut raw = TcpStream::connect(server.tcp).await.unwrap();
    let mut frame = bytes::BytesMut::new();
    encode_request(&by_hash(&sha256, wrong_key), &mut frame);
    encode_request(&by_hash(&sha256, KEY), &mut frame);
    raw.write_all(&frame).await.unwrap();
    let mut status_bytes = [0u8; 4];
    raw.read_exact(&mut status_bytes).await.unwrap();
    assert_eq!(u32::from_le_bytes(status_bytes), STATUS_NO);
    raw.read_exact(&mut status_bytes).await.unwrap();
    assert_eq!(
        u32::from_le_bytes(status_bytes),
        sentinel_protocol::STATUS_YES,
        "the next answer follows at once"
    );
    let data_dir = server.stop().await;

    // No key reached the disk in clear (database, its WAL, the vault, the secret).
    for entry in walk(data_dir.path()) {
        let bytes = std::fs::read(&entry).unwrap();
        for key in [wrong_key, KEY] {
            assert!(!bytes.windows(key.len()).any(|window| window == key.as_bytes()), "{}", entry.display());
        }
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() { files.extend(walk(&path)) } else { files.push(path) }
    }
    files
}

#[tokio::test]
async fn a_restart_keeps_the_dataset_and_the_labels() {
    let fake = fake_vt().await;
    let server = server_with(&fake, |_| {}).await;
    let sha256 = sha256_hex(b"remembered sample");
    fake.state.add_report(&sha256, 0, 70);
    let before = scores(detailed_client(&server).await.request(&by_hash(&sha256, KEY)).await.unwrap());
    let data_dir = server.stop().await;

    let server = TestServer::start_in(data_dir, |_| {}, Some(vt_settings(&fake))).await;
    let after = scores(detailed_client(&server).await.request(&by_hash(&sha256, OTHER_KEY)).await.unwrap());
    assert_eq!(after, before);
    assert_eq!(file_reports(&fake), 1, "answered from the dataset kept across the restart");
    let label = server.store.label(&sha256).unwrap().expect("labelled before the restart");
    assert_eq!(label.y, 0, "no detection on a file known for years is benign");
    server.stop().await;
}

#[tokio::test]
async fn command_4_answers_the_combined_the_static_and_the_virustotal_scores() {
    let fake = fake_vt().await;
    let server = server_with(&fake, |_| {}).await;
    let pe = synthetic_pe(8 * 1024, 4);
    let sha256 = sha256_hex(&pe);
    fake.state.add_report(&sha256, 14, 70);
    let mut client = detailed_client(&server).await;

    let answer = scores(
        client.request(&request(Command::StaticAnalyseWithVt, &pe, Some(&sha256), Some(KEY))).await.unwrap(),
    );
    assert_eq!(answer.len(), 3, "combined, static, VirusTotal: {answer:?}");
    let (combined, static_score, vt_score) = (answer[0], answer[1], answer[2]);
    assert!((vt_score - 0.8).abs() < 0.001, "14 of 70 engines score 0.8: {vt_score}");
    // 70 engines make VirusTotal confident: weight 2 against the static model's 1.
    let logit = |p: f32| (p.clamp(0.001, 0.999) / (1.0 - p.clamp(0.001, 0.999))).ln();
    let expected = 1.0 / (1.0 + (-(logit(static_score) + 2.0 * logit(vt_score)) / 3.0).exp());
    assert!((combined - expected).abs() < 1e-4, "{combined} vs {expected}");

    let mut analyses: Vec<String> =
        server.store.verdicts(&sha256).unwrap().into_iter().map(|verdict| verdict.analysis).collect();
    analyses.sort();
    assert_eq!(analyses, ["combined", "static", "virustotal"]);

    // Unknown to VirusTotal, uploads off: not_found, and nothing is uploaded.
    let unknown = synthetic_pe(8 * 1024, 5);
    let response = client
        .request(&request(Command::StaticAnalyseWithVt, &unknown, Some(&sha256_hex(&unknown)), Some(KEY)))
        .await
        .unwrap();
    assert_eq!(detail_of(response).0, Reason::NotFound);
    assert_eq!(fake.state.count("POST", "/api/v3/files"), 0);
    server.stop().await;
}

#[tokio::test]
async fn unknown_files_are_uploaded_and_their_analysis_polled_only_when_enabled() {
    let fake = fake_vt().await;
    fake.state.polls_before_completion.store(2, std::sync::atomic::Ordering::SeqCst);
    let server = server_with(&fake, |settings| settings.upload_enabled = true).await;
    let pe = synthetic_pe(8 * 1024, 6);
    let sha256 = sha256_hex(&pe);
    let response = detailed_client(&server)
        .await
        .request(&request(Command::VtAnalyse, &pe, Some(&sha256), Some(KEY)))
        .await
        .unwrap();
    assert_eq!(scores(response).len(), 2);
    assert_eq!(fake.state.uploaded(), [pe]);
    assert_eq!(fake.state.count("GET", "/api/v3/analyses/"), 3, "two polls queued, the third completed");
    assert!(server.store.vt_report(&sha256).unwrap().is_some());
    server.stop().await;
}

#[tokio::test]
async fn a_combined_command_checks_every_step_before_running_any() {
    let server = TestServer::start(|_| {}).await;
    let pe = synthetic_pe(4096, 7);
    let sha256 = sha256_hex(&pe);
    let mut client = detailed_client(&server).await;
    let response =
        client.request(&request(Command::StaticAnalyseWithVt, &pe, Some(&sha256), Some(KEY))).await.unwrap();
    let (reason, step, _) = detail_of(response);
    assert_eq!((reason, step.as_deref()), (Reason::Unavailable, Some("virustotal")));
    assert!(server.store.verdicts(&sha256).unwrap().is_empty(), "the static step did not run");
    assert!(status(server.http).await["virustotal"].is_null());
    server.stop().await;
}
