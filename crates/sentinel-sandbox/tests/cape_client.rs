//! The CAPE client against a local HTTP server that speaks CAPE v2's REST API
//! (the same paths, envelopes and task states) and serves the real CAPE report
//! fixtures from ../shared/data.

use std::time::Duration;

use sentinel_behaviour::{CapeLimits, parse_cape_report};
use sentinel_sandbox::{ApiToken, CapeClient, FailureReason, SandboxError, SandboxSettings};
use sentinel_testkit::cape_fixtures::fixture_reports;
use sentinel_testkit::fake_cape::{self, FakeCape, RunningCape, SMALL_REPORT, TOKEN};

/// Client settings for a fake CAPE at `url`: its token, and short polls and timeouts.
fn client_settings(url: &str) -> SandboxSettings {
    SandboxSettings {
        base_url: url.to_owned(),
        token: ApiToken::new(TOKEN),
        poll_interval: Duration::from_millis(20),
        analysis_timeout: Duration::from_secs(10),
        request_timeout: Duration::from_secs(5),
        ..SandboxSettings::default()
    }
}

async fn fake_cape(report: &[u8]) -> (String, std::sync::Arc<std::sync::Mutex<fake_cape::Cape>>) {
    let RunningCape { url, state } = FakeCape::new(report).start().await;
    (url, state)
}

#[tokio::test]
async fn a_real_report_is_fetched_after_the_task_goes_through_its_states() {
    for (path, bytes) in fixture_reports() {
        let (url, state) = fake_cape(&bytes).await;
        let client = CapeClient::new(client_settings(&url)).unwrap();
        let sample = b"MZ not really a program, ASCII so the fake parses it".repeat(100);
        let analysis = client.analyse(&sample, "C:\\samples\\test sample.exe").await.unwrap();
        let expected = parse_cape_report(&bytes, &CapeLimits::default()).unwrap();
        assert_eq!(analysis.task_id, 1);
        assert!(!analysis.behaviour.sequence.is_empty(), "{}", path.display());
        assert_eq!(analysis.behaviour, expected, "{}", path.display());
        let state = state.lock().unwrap();
        assert_eq!(state.uploads, [("testsample.exe".to_owned(), sample.len())]);
        assert_eq!(state.tasks[&1].polls, 4, "pending, running, completed, reported");
    }
}

#[tokio::test]
async fn a_failed_analysis_is_reported_as_such() {
    let (url, _) = fake_cape(SMALL_REPORT.as_bytes()).await;
    let client = CapeClient::new(client_settings(&url)).unwrap();
    let error = client.analyse(b"MZ", "fail.exe").await.unwrap_err();
    assert_eq!(error.reason(), FailureReason::AnalysisFailed, "{error}");
    assert!(error.to_string().contains("failed_analysis"), "{error}");
}

#[tokio::test]
async fn a_wrong_token_is_an_auth_failure_and_is_never_echoed() {
    let (url, _) = fake_cape(SMALL_REPORT.as_bytes()).await;
    let client =
        CapeClient::new(SandboxSettings { token: ApiToken::new("wrong-secret"), ..client_settings(&url) })
            .unwrap();
    let error = client.analyse(b"MZ", "a.exe").await.unwrap_err();
    assert!(matches!(error, SandboxError::Auth { status: 401 }), "{error}");
    assert!(!format!("{error} {error:?}").contains("wrong-secret"));
}

#[tokio::test]
async fn a_server_error_is_unavailable() {
    let RunningCape { url, .. } = FakeCape::new(SMALL_REPORT.as_bytes()).failing_submissions().start().await;
    let error = CapeClient::new(client_settings(&url)).unwrap().analyse(b"MZ", "a.exe").await.unwrap_err();
    assert!(matches!(error, SandboxError::Unavailable { status: 500, .. }), "{error}");
    assert_eq!(error.reason().as_str(), "unavailable");
}

#[tokio::test]
async fn a_task_that_never_finishes_times_out() {
    let (url, _) = fake_cape(SMALL_REPORT.as_bytes()).await;
    let client = CapeClient::new(SandboxSettings {
        analysis_timeout: Duration::from_secs(1),
        ..client_settings(&url)
    })
    .unwrap();
    let started = std::time::Instant::now();
    let error = client.analyse(b"MZ", "slow.exe").await.unwrap_err();
    assert!(matches!(error, SandboxError::Timeout { task_id: Some(1), seconds: 1 }), "{error}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn a_malformed_report_is_a_bad_report() {
    let (url, _) = fake_cape(SMALL_REPORT.as_bytes()).await;
    let error =
        CapeClient::new(client_settings(&url)).unwrap().analyse(b"MZ", "malformed.exe").await.unwrap_err();
    assert_eq!(error.reason(), FailureReason::BadReport, "{error}");
}

#[tokio::test]
async fn a_report_over_the_limit_is_a_bad_report() {
    let (url, _) = fake_cape(SMALL_REPORT.as_bytes()).await;
    let client = CapeClient::new(SandboxSettings { max_report_bytes: 100, ..client_settings(&url) }).unwrap();
    let error = client.analyse(b"MZ", "a.exe").await.unwrap_err();
    assert!(error.to_string().contains("larger than 100 bytes"), "{error}");
}

#[tokio::test]
async fn files_over_the_upload_limit_are_not_sent() {
    let (url, state) = fake_cape(SMALL_REPORT.as_bytes()).await;
    let client = CapeClient::new(SandboxSettings { max_upload_bytes: 10, ..client_settings(&url) }).unwrap();
    let error = client.analyse(&[0u8; 11], "a.exe").await.unwrap_err();
    assert_eq!(error.reason(), FailureReason::TooLarge);
    assert!(state.lock().unwrap().uploads.is_empty());
}

#[tokio::test]
async fn an_unreachable_sandbox_is_reported_as_such() {
    // A socket bound but never listening: connections are refused, and the port stays ours
    // (a dropped listener's port could be taken by another test's server meanwhile).
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = socket.local_addr().unwrap().port();
    let client = CapeClient::new(client_settings(&format!("http://127.0.0.1:{port}"))).unwrap();
    let error = client.analyse(b"MZ", "a.exe").await.unwrap_err();
    assert_eq!(error.reason(), FailureReason::Unreachable, "{error}");
}

#[tokio::test]
async fn analyses_in_flight_are_limited() {
    let (url, state) = fake_cape(SMALL_REPORT.as_bytes()).await;
    let client = CapeClient::new(SandboxSettings { max_in_flight: 2, ..client_settings(&url) }).unwrap();
    let runs = (0..6).map(|i| {
        let client = client.clone();
        tokio::spawn(async move { client.analyse(b"MZ", &format!("s{i}.exe")).await })
    });
    for run in runs.collect::<Vec<_>>() {
        let analysis = run.await.unwrap().unwrap();
        assert_eq!(analysis.behaviour.sequence.calls(), ["ntcreatefile", "regopenkeyexw", "ntwritefile"]);
    }
    let state = state.lock().unwrap();
    assert_eq!(state.tasks.len(), 6);
    assert_eq!(state.max_active, 2);
}
