//! The CAPE client against a local HTTP server that speaks CAPE v2's REST API
//! (the same paths, envelopes and task states) and serves the real CAPE report
//! fixtures from ../shared/data.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use sentinel_behaviour::{CapeLimits, parse_cape_report};
use sentinel_sandbox::{ApiToken, CapeClient, FailureReason, SandboxError, SandboxSettings};

const TOKEN: &str = "test-token-1234";

/// A tiny report in CAPE's shape, for the tests that do not need the fixtures.
const SMALL_REPORT: &str = r#"{"info": {"id": 1}, "behavior": {"processes": [
  {"process_id": 1, "calls": [
    {"timestamp": "2025-01-01 10:00:00,001", "api": "NtCreateFile", "arguments": []},
    {"timestamp": "2025-01-01 10:00:00,003", "api": "NtWriteFile"}]},
  {"process_id": 2, "calls": [
    {"timestamp": "2025-01-01 10:00:00,002", "api": "RegOpenKeyExW"}]}]}}"#;

/// How the fake CAPE treats a submitted file, chosen by its file name.
#[derive(Clone, Copy, PartialEq)]
enum Plan {
    /// `pending`, `running`, `completed`, then `reported`.
    Normal,
    /// `running`, then `failed_analysis`.
    Fails,
    /// `running` forever.
    Slow,
    /// Reported, but the report is cut in the middle.
    Malformed,
}

struct Task {
    plan: Plan,
    polls: usize,
    report: Bytes,
}

#[derive(Default)]
struct Cape {
    tasks: HashMap<u64, Task>,
    next_id: u64,
    /// Tasks submitted and not yet fetched, and the most seen at once.
    active: usize,
    max_active: usize,
    uploads: Vec<(String, usize)>,
}

#[derive(Clone)]
struct FakeCape {
    state: Arc<Mutex<Cape>>,
    report: Bytes,
    fail_create_with_500: bool,
}

fn authorised(headers: &HeaderMap) -> bool {
    headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(&format!("Token {TOKEN}"))
}

fn unauthorised() -> Response {
    (StatusCode::UNAUTHORIZED, axum::Json(serde_json::json!({"detail": "Invalid token."}))).into_response()
}

/// Pulls the file name and the size of the `file` part out of a multipart body.
fn uploaded_file(body: &[u8]) -> Option<(String, usize)> {
    let text = String::from_utf8_lossy(body);
    let start = text.find("name=\"file\"; filename=\"")? + "name=\"file\"; filename=\"".len();
    let name = text[start..].split('"').next()?.to_owned();
    let content_start = text[start..].find("\r\n\r\n")? + start + 4;
    let content_end = text[content_start..].find("\r\n--")? + content_start;
    Some((name, content_end - content_start))
}

async fn create(State(cape): State<FakeCape>, headers: HeaderMap, body: Bytes) -> Response {
    if !authorised(&headers) {
        return unauthorised();
    }
    if cape.fail_create_with_500 {
        return (StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error").into_response();
    }
    let content_type = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("");
    let Some((name, size)) = uploaded_file(&body).filter(|_| content_type.starts_with("multipart/form-data"))
    else {
        return axum::Json(serde_json::json!({"error": true, "error_value": "No file was submitted"}))
            .into_response();
    };
    let plan = match name.as_str() {
        "fail.exe" => Plan::Fails,
        "slow.exe" => Plan::Slow,
        "malformed.exe" => Plan::Malformed,
        _ => Plan::Normal,
    };
    let report = if plan == Plan::Malformed {
        cape.report.slice(..cape.report.len() / 2)
    } else {
        cape.report.clone()
    };
    let mut state = cape.state.lock().unwrap();
    state.next_id += 1;
    let id = state.next_id;
    state.tasks.insert(id, Task { plan, polls: 0, report });
    state.active += 1;
    state.max_active = state.max_active.max(state.active);
    state.uploads.push((name, size));
    axum::Json(serde_json::json!({
        "error": false,
        "data": {"task_ids": [id], "message": "Task ID 1 has been submitted"},
        "errors": [],
        "url": [format!("http://cape/submit/status/{id}/")]
    }))
    .into_response()
}

async fn view(State(cape): State<FakeCape>, headers: HeaderMap, Path(id): Path<u64>) -> Response {
    if !authorised(&headers) {
        return unauthorised();
    }
    let mut state = cape.state.lock().unwrap();
    let Some(task) = state.tasks.get_mut(&id) else {
        return axum::Json(serde_json::json!({"error": true, "error_value": "Task does not exist"}))
            .into_response();
    };
    task.polls += 1;
    let status = match (task.plan, task.polls) {
        (Plan::Slow, _) => "running",
        (Plan::Fails, 1) => "running",
        (Plan::Fails, _) => "failed_analysis",
        (_, 1) => "pending",
        (_, 2) => "running",
        (_, 3) => "completed",
        _ => "reported",
    };
    axum::Json(serde_json::json!({
        "error": false,
        "data": {"id": id, "category": "file", "target": "/tmp/x", "status": status, "timeout": 200,
                 "added_on": "2025-11-21 15:48:00", "machine": null}
    }))
    .into_response()
}

async fn report(State(cape): State<FakeCape>, headers: HeaderMap, Path(id): Path<u64>) -> Response {
    if !authorised(&headers) {
        return unauthorised();
    }
    let mut state = cape.state.lock().unwrap();
    let Some(report) = state.tasks.get(&id).map(|t| t.report.clone()) else {
        return axum::Json(serde_json::json!({"error": true, "error_value": "Task does not exist"}))
            .into_response();
    };
    state.active -= 1;
    ([("content-type", "application/json")], report).into_response()
}

async fn start(cape: FakeCape) -> (String, Arc<Mutex<Cape>>) {
    let state = cape.state.clone();
    let app = Router::new()
        .route("/apiv2/tasks/create/file/", post(create))
        .route("/apiv2/tasks/view/{id}/", get(view))
        .route("/apiv2/tasks/get/report/{id}/json/", get(report))
        .with_state(cape);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{address}"), state)
}

async fn fake_cape(report: &[u8]) -> (String, Arc<Mutex<Cape>>) {
    start(FakeCape {
        state: Default::default(),
        report: Bytes::copy_from_slice(report),
        fail_create_with_500: false,
    })
    .await
}

fn settings(base_url: &str) -> SandboxSettings {
    SandboxSettings {
        base_url: base_url.to_owned(),
        token: ApiToken::new(TOKEN),
        poll_interval_ms: 20,
        analysis_timeout_secs: 10,
        request_timeout_secs: 5,
        ..SandboxSettings::default()
    }
}

/// The real CAPE reports, or `None` (with a message) when the shared data is absent.
fn fixture_reports() -> Option<Vec<(PathBuf, Vec<u8>)>> {
    let dir =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/malware/dynamic/cape-reports");
    let mut reports: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.to_string_lossy().ends_with(".lite.json"))
                .map(|p| {
                    let bytes = std::fs::read(&p).unwrap();
                    (p, bytes)
                })
                .collect()
        })
        .unwrap_or_default();
    if reports.is_empty() {
        assert!(
            std::env::var("SENTINEL_REQUIRE_DATA").as_deref() != Ok("1"),
            "SENTINEL_REQUIRE_DATA=1 but no CAPE fixture in {}",
            dir.display()
        );
        eprintln!("skipped: no CAPE report fixtures in {} (../shared/data absent)", dir.display());
        return None;
    }
    reports.sort();
    Some(reports)
}

#[tokio::test]
async fn a_real_report_is_fetched_after_the_task_goes_through_its_states() {
    let Some(reports) = fixture_reports() else { return };
    for (path, bytes) in reports {
        let (url, state) = fake_cape(&bytes).await;
        let client = CapeClient::new(settings(&url)).unwrap();
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
    let client = CapeClient::new(settings(&url)).unwrap();
    let error = client.analyse(b"MZ", "fail.exe").await.unwrap_err();
    assert_eq!(error.reason(), FailureReason::AnalysisFailed, "{error}");
    assert!(error.to_string().contains("failed_analysis"), "{error}");
}

#[tokio::test]
async fn a_wrong_token_is_an_auth_failure_and_is_never_echoed() {
    let (url, _) = fake_cape(SMALL_REPORT.as_bytes()).await;
    let client =
        CapeClient::new(SandboxSettings { token: ApiToken::new("wrong-secret"), ..settings(&url) }).unwrap();
    let error = client.analyse(b"MZ", "a.exe").await.unwrap_err();
    assert!(matches!(error, SandboxError::Auth { status: 401 }), "{error}");
    assert!(!format!("{error} {error:?}").contains("wrong-secret"));
}

#[tokio::test]
async fn a_server_error_is_unavailable() {
    let (url, _) = start(FakeCape {
        state: Default::default(),
        report: Bytes::from_static(SMALL_REPORT.as_bytes()),
        fail_create_with_500: true,
    })
    .await;
    let error = CapeClient::new(settings(&url)).unwrap().analyse(b"MZ", "a.exe").await.unwrap_err();
    assert!(matches!(error, SandboxError::Unavailable { status: 500, .. }), "{error}");
    assert_eq!(error.reason().as_str(), "unavailable");
}

#[tokio::test]
async fn a_task_that_never_finishes_times_out() {
    let (url, _) = fake_cape(SMALL_REPORT.as_bytes()).await;
    let client = CapeClient::new(SandboxSettings { analysis_timeout_secs: 1, ..settings(&url) }).unwrap();
    let started = std::time::Instant::now();
    let error = client.analyse(b"MZ", "slow.exe").await.unwrap_err();
    assert!(matches!(error, SandboxError::Timeout { task_id: Some(1), seconds: 1 }), "{error}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn a_malformed_report_is_a_bad_report() {
    let (url, _) = fake_cape(SMALL_REPORT.as_bytes()).await;
    let error = CapeClient::new(settings(&url)).unwrap().analyse(b"MZ", "malformed.exe").await.unwrap_err();
    assert_eq!(error.reason(), FailureReason::BadReport, "{error}");
}

#[tokio::test]
async fn a_report_over_the_limit_is_a_bad_report() {
    let (url, _) = fake_cape(SMALL_REPORT.as_bytes()).await;
    let client = CapeClient::new(SandboxSettings { max_report_bytes: 100, ..settings(&url) }).unwrap();
    let error = client.analyse(b"MZ", "a.exe").await.unwrap_err();
    assert!(error.to_string().contains("larger than 100 bytes"), "{error}");
}

#[tokio::test]
async fn files_over_the_upload_limit_are_not_sent() {
    let (url, state) = fake_cape(SMALL_REPORT.as_bytes()).await;
    let client = CapeClient::new(SandboxSettings { max_upload_bytes: 10, ..settings(&url) }).unwrap();
    let error = client.analyse(&[0u8; 11], "a.exe").await.unwrap_err();
    assert_eq!(error.reason(), FailureReason::TooLarge);
    assert!(state.lock().unwrap().uploads.is_empty());
}

#[tokio::test]
async fn an_unreachable_sandbox_is_reported_as_such() {
    // Bind then drop a listener: nothing listens on that port any more.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let client = CapeClient::new(settings(&format!("http://127.0.0.1:{port}"))).unwrap();
    let error = client.analyse(b"MZ", "a.exe").await.unwrap_err();
    assert_eq!(error.reason(), FailureReason::Unreachable, "{error}");
}

#[tokio::test]
async fn analyses_in_flight_are_limited() {
    let (url, state) = fake_cape(SMALL_REPORT.as_bytes()).await;
    let client = CapeClient::new(SandboxSettings { max_in_flight: 2, ..settings(&url) }).unwrap();
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
