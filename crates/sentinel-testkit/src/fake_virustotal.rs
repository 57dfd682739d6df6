//! A local stand-in for VirusTotal API v3 on 127.0.0.1: a real HTTP server speaking VirusTotal's
//! paths, JSON shapes and errors (file reports, uploads direct and through an upload URL,
//! analyses), that counts and records the requests it receives. The VirusTotal client's tests,
//! the malware server's and the binary's use this one fake.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// One request as the fake received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub method: &'static str,
    pub path: String,
    pub api_key: String,
}

#[derive(Default)]
pub struct FakeState {
    /// sha256 → file report `data` object.
    reports: Mutex<HashMap<String, Value>>,
    valid_keys: Mutex<HashSet<String>>,
    exhausted_keys: Mutex<HashSet<String>>,
    /// Statuses returned by the next file-report requests, before normal service.
    failures: Mutex<VecDeque<StatusCode>>,
    /// analysis id → (sha256, polls left before "completed").
    analyses: Mutex<HashMap<String, (String, u32)>>,
    /// Polls answered "queued" before an upload's analysis completes.
    pub polls_before_completion: AtomicU64,
    /// Delay before answering a file report, so that concurrent lookups overlap.
    report_delay_ms: AtomicU64,
    received: Mutex<Vec<Received>>,
    uploaded: Mutex<Vec<Vec<u8>>>,
    address: Mutex<Option<SocketAddr>>,
}

pub struct FakeVt {
    pub state: Arc<FakeState>,
    pub base_url: String,
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A VirusTotal-shaped file object with `malicious` of `engines` engines detecting it.
pub fn file_object(sha256: &str, malicious: u32, engines: u32) -> Value {
    let mut results = serde_json::Map::new();
    for index in 0..engines {
        let name = format!("Engine{index:02}");
        let (category, result) = if index < malicious {
            ("malicious", json!(format!("Trojan.Win32.Fake.{index}")))
        } else {
            ("undetected", Value::Null)
        };
        results.insert(
            name.clone(),
            json!({"category": category, "engine_name": name, "engine_version": "1.0",
                   "result": result, "method": "blacklist", "engine_update": "20240101"}),
        );
    }
    json!({
        "id": sha256, "type": "file", "links": {"self": format!("https://www.virustotal.com/api/v3/files/{sha256}")},
        "attributes": {
            "sha256": sha256, "md5": "00000000000000000000000000000000", "size": 1024,
            "first_submission_date": 1_600_000_000, "last_analysis_date": 1_700_000_000,
            "last_analysis_stats": {"malicious": malicious, "suspicious": 0, "undetected": engines - malicious,
                "harmless": 0, "timeout": 0, "confirmed-timeout": 0, "failure": 0, "type-unsupported": 3},
            "last_analysis_results": results,
            "names": ["sample.exe"], "type_description": "Win32 EXE"
        }
    })
}

fn vt_error(status: StatusCode, code: &str, message: &str) -> Response {
    (status, axum::Json(json!({"error": {"code": code, "message": message}}))).into_response()
}

impl FakeState {
    pub fn add_key(&self, key: &str) {
        self.valid_keys.lock().unwrap().insert(key.to_owned());
    }

    pub fn exhaust_key(&self, key: &str) {
        self.exhausted_keys.lock().unwrap().insert(key.to_owned());
    }

    pub fn add_report(&self, sha256: &str, malicious: u32, engines: u32) {
        self.reports.lock().unwrap().insert(sha256.to_owned(), file_object(sha256, malicious, engines));
    }

    pub fn fail_next(&self, statuses: &[StatusCode]) {
        self.failures.lock().unwrap().extend(statuses);
    }

    pub fn set_report_delay(&self, delay: Duration) {
        self.report_delay_ms.store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Requests received whose path starts with `prefix` and that used `method`.
    pub fn count(&self, method: &str, prefix: &str) -> usize {
        self.received().iter().filter(|r| r.method == method && r.path.starts_with(prefix)).count()
    }

    pub fn uploaded(&self) -> Vec<Vec<u8>> {
        self.uploaded.lock().unwrap().clone()
    }

    fn record(&self, method: &'static str, path: String, headers: &HeaderMap) -> String {
        let api_key = headers.get("x-apikey").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        self.received.lock().unwrap().push(Received { method, path, api_key: api_key.clone() });
        api_key
    }

    /// VirusTotal's answers to a missing, unknown or exhausted key.
    fn refusal(&self, api_key: &str) -> Option<Response> {
        if api_key.is_empty() {
            return Some(vt_error(
                StatusCode::UNAUTHORIZED,
                "AuthenticationRequiredError",
                "X-Apikey header is missing",
            ));
        }
        if !self.valid_keys.lock().unwrap().contains(api_key) {
            // Echoes the key, as a careless server might: the client must redact it.
            let message = format!("Wrong API key {api_key}");
            return Some(vt_error(StatusCode::UNAUTHORIZED, "WrongCredentialsError", &message));
        }
        if self.exhausted_keys.lock().unwrap().contains(api_key) {
            return Some(vt_error(StatusCode::TOO_MANY_REQUESTS, "QuotaExceededError", "Quota exceeded"));
        }
        None
    }
}

async fn file_report(
    State(state): State<Arc<FakeState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let api_key = state.record("GET", format!("/api/v3/files/{id}"), &headers);
    let delay = state.report_delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    if let Some(response) = state.refusal(&api_key) {
        return response;
    }
    if let Some(status) = state.failures.lock().unwrap().pop_front() {
        let code = if status == StatusCode::SERVICE_UNAVAILABLE { "TransientError" } else { "InternalError" };
        return vt_error(status, code, "try again later");
    }
    match state.reports.lock().unwrap().get(&id.to_lowercase()) {
        Some(data) => axum::Json(json!({"data": data})).into_response(),
        None => vt_error(StatusCode::NOT_FOUND, "NotFoundError", &format!("File \"{id}\" not found")),
    }
}

async fn upload_url(State(state): State<Arc<FakeState>>, headers: HeaderMap) -> Response {
    let api_key = state.record("GET", "/api/v3/files/upload_url".to_owned(), &headers);
    if let Some(response) = state.refusal(&api_key) {
        return response;
    }
    let address = state.address.lock().unwrap().expect("address set at start");
    axum::Json(json!({"data": format!("http://{address}/_ah/upload/large-file-token/")})).into_response()
}

/// The content of the `file` part of a multipart/form-data body.
fn multipart_file(headers: &HeaderMap, body: &[u8]) -> Option<Vec<u8>> {
    let content_type = headers.get("content-type")?.to_str().ok()?;
    let boundary = content_type.strip_prefix("multipart/form-data; boundary=")?;
    let start = body.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&body[..start]).ok()?;
    if !head.contains("name=\"file\"") {
        return None;
    }
    let closing = format!("\r\n--{boundary}--");
    let end = body.windows(closing.len()).rposition(|w| w == closing.as_bytes())?;
    Some(body[start..end].to_vec())
}

async fn upload(
    State(state): State<Arc<FakeState>>,
    headers: HeaderMap,
    path: axum::http::Uri,
    body: Bytes,
) -> Response {
    let api_key = state.record("POST", path.path().to_owned(), &headers);
    if let Some(response) = state.refusal(&api_key) {
        return response;
    }
    let Some(file) = multipart_file(&headers, &body) else {
        return vt_error(StatusCode::BAD_REQUEST, "BadRequestError", "expected a multipart file");
    };
    let sha256 = sha256_hex(&file);
    state.uploaded.lock().unwrap().push(file);
    let mut analyses = state.analyses.lock().unwrap();
    let id = format!("YW5hbHlzaXM{}==", analyses.len());
    analyses.insert(id.clone(), (sha256, state.polls_before_completion.load(Ordering::SeqCst) as u32));
    axum::Json(json!({"data": {"type": "analysis", "id": id,
        "links": {"self": format!("https://www.virustotal.com/api/v3/analyses/{id}")}}}))
    .into_response()
}

async fn analysis(
    State(state): State<Arc<FakeState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let api_key = state.record("GET", format!("/api/v3/analyses/{id}"), &headers);
    if let Some(response) = state.refusal(&api_key) {
        return response;
    }
    let mut analyses = state.analyses.lock().unwrap();
    let Some((sha256, polls_left)) = analyses.get_mut(&id) else {
        return vt_error(StatusCode::NOT_FOUND, "NotFoundError", "Analysis not found");
    };
    let file_info = json!({"sha256": sha256, "md5": "00000000000000000000000000000000", "size": 10});
    if *polls_left > 0 {
        *polls_left -= 1;
        return axum::Json(json!({"data": {"id": id, "type": "analysis",
            "attributes": {"status": "queued", "date": 1_700_000_100, "stats": {}, "results": {}}},
            "meta": {"file_info": file_info}}))
        .into_response();
    }
    let report = file_object(sha256, 12, 60);
    let attributes = &report["attributes"];
    let completed = json!({"data": {"id": id, "type": "analysis", "attributes": {
            "status": "completed", "date": 1_700_000_200,
            "stats": attributes["last_analysis_stats"], "results": attributes["last_analysis_results"]}},
        "meta": {"file_info": file_info}});
    state.reports.lock().unwrap().insert(sha256.clone(), report);
    axum::Json(completed).into_response()
}

impl FakeVt {
    /// Starts the fake on an ephemeral port of 127.0.0.1.
    pub async fn start() -> FakeVt {
        FakeVt::start_on(tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0")).await
    }

    /// Starts the fake on `listener` (a test that first held the port closed hands it over here).
    pub async fn start_on(listener: tokio::net::TcpListener) -> FakeVt {
        let state = Arc::new(FakeState::default());
        let app = Router::new()
            .route("/api/v3/files/upload_url", get(upload_url))
            .route("/api/v3/files/{id}", get(file_report))
            .route("/api/v3/files", post(upload))
            .route("/_ah/upload/large-file-token/", post(upload))
            .route("/api/v3/analyses/{id}", get(analysis))
            .layer(DefaultBodyLimit::max(64 * 1024 * 1024))
            .with_state(state.clone());
        let address = listener.local_addr().expect("a bound listener");
        *state.address.lock().unwrap() = Some(address);
        tokio::spawn(async move { axum::serve(listener, app).await.expect("the fake VirusTotal serves") });
        FakeVt { state, base_url: format!("http://{address}") }
    }
}
