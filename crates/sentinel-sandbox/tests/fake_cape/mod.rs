//! A fake CAPE v2 on 127.0.0.1: an axum server with CAPE's `apiv2` paths,
//! answer envelopes and task states, serving a given report (usually one of the
//! real fixture reports). Shared by the CAPE client's tests and the server's
//! dynamic-analysis tests, which include this file with `#[path]`.
//!
//! What a task does is its [`Plan`]: the server's default, or chosen by the
//! submitted file's name (`fail.exe`, `slow.exe`, `malformed.exe`) for tests
//! that drive the client directly.

// Each test file uses its own part of the fake.
#![allow(dead_code)]

pub mod fixtures;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use sentinel_sandbox::{ApiToken, SandboxSettings};

/// The token the fake accepts (`Authorization: Token <TOKEN>`).
pub const TOKEN: &str = "test-token-1234";

/// A tiny report in CAPE's shape, for the tests that do not need the fixtures.
pub const SMALL_REPORT: &str = r#"{"info": {"id": 1}, "behavior": {"processes": [
  {"process_id": 1, "calls": [
    {"timestamp": "2025-01-01 10:00:00,001", "api": "NtCreateFile", "arguments": []},
    {"timestamp": "2025-01-01 10:00:00,003", "api": "NtWriteFile"}]},
  {"process_id": 2, "calls": [
    {"timestamp": "2025-01-01 10:00:00,002", "api": "RegOpenKeyExW"}]}]}}"#;

/// Client settings for a fake at `url`: its token, and short polls and timeouts.
pub fn client_settings(url: &str) -> SandboxSettings {
    SandboxSettings {
        base_url: url.to_owned(),
        token: ApiToken::new(TOKEN),
        poll_interval: Duration::from_millis(20),
        analysis_timeout: Duration::from_secs(10),
        request_timeout: Duration::from_secs(5),
        ..SandboxSettings::default()
    }
}

/// How the fake CAPE treats a submitted file.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Plan {
    /// `pending`, `running`, `completed`, then `reported`.
    Normal,
    /// `running`, then `failed_analysis`.
    Fails,
    /// `running` forever.
    Slow,
    /// Reported, but the report is cut in the middle.
    Malformed,
}

impl Plan {
    fn for_file(name: &str) -> Option<Plan> {
        match name {
            "fail.exe" => Some(Plan::Fails),
            "slow.exe" => Some(Plan::Slow),
            "malformed.exe" => Some(Plan::Malformed),
            _ => None,
        }
    }
}

pub struct Task {
    pub plan: Plan,
    pub polls: usize,
    report: Bytes,
}

/// What the fake saw: tasks, uploads, and the most tasks in flight at once.
#[derive(Default)]
pub struct Cape {
    pub tasks: HashMap<u64, Task>,
    next_id: u64,
    /// Tasks submitted and not yet fetched, and the most seen at once.
    active: usize,
    pub max_active: usize,
    /// File name and size of every upload.
    pub uploads: Vec<(String, usize)>,
    /// `Authorization` headers that carried the wrong token.
    pub refused: usize,
}

/// A fake CAPE to start.
#[derive(Clone)]
pub struct FakeCape {
    state: Arc<Mutex<Cape>>,
    report: Bytes,
    plan: Plan,
    fail_create_with_500: bool,
    /// Added to every answer, like a loaded CAPE.
    delay: Duration,
}

/// A running fake: its base URL and what it saw.
pub struct RunningCape {
    pub url: String,
    pub state: Arc<Mutex<Cape>>,
}

impl FakeCape {
    /// A fake serving `report` for every task, with the normal plan.
    pub fn new(report: &[u8]) -> FakeCape {
        FakeCape {
            state: Default::default(),
            report: Bytes::copy_from_slice(report),
            plan: Plan::Normal,
            fail_create_with_500: false,
            delay: Duration::ZERO,
        }
    }

    /// The plan of tasks whose file name does not choose one.
    pub fn plan(mut self, plan: Plan) -> FakeCape {
        self.plan = plan;
        self
    }

    /// Answers every submission with HTTP 500.
    pub fn failing_submissions(mut self) -> FakeCape {
        self.fail_create_with_500 = true;
        self
    }

    /// Waits `delay` before every answer.
    pub fn delay(mut self, delay: Duration) -> FakeCape {
        self.delay = delay;
        self
    }

    pub async fn start(self) -> RunningCape {
        let state = self.state.clone();
        let app = Router::new()
            .route("/apiv2/tasks/create/file/", post(create))
            .route("/apiv2/tasks/view/{id}/", get(view))
            .route("/apiv2/tasks/get/report/{id}/json/", get(report))
            .with_state(self);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        RunningCape { url: format!("http://{address}"), state }
    }
}

/// Checks the token, after the fake's delay.
async fn admitted(cape: &FakeCape, headers: &HeaderMap) -> Result<(), Response> {
    tokio::time::sleep(cape.delay).await;
    if headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(&format!("Token {TOKEN}")) {
        return Ok(());
    }
    cape.state.lock().unwrap().refused += 1;
    Err((StatusCode::UNAUTHORIZED, axum::Json(serde_json::json!({"detail": "Invalid token."})))
        .into_response())
}

/// Where `needle` first occurs in `haystack` at or after `from`.
fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    haystack.get(from..)?.windows(needle.len()).position(|w| w == needle).map(|i| i + from)
}

/// Pulls the file name and the size of the `file` part out of a multipart body
/// (bytes, not text: samples are binary).
fn uploaded_file(body: &[u8], content_type: &str) -> Option<(String, usize)> {
    let boundary = content_type.split("boundary=").nth(1)?.trim_matches('"');
    let marker = b"name=\"file\"; filename=\"";
    let name_start = find(body, marker, 0)? + marker.len();
    let name_end = find(body, b"\"", name_start)?;
    let name = String::from_utf8_lossy(&body[name_start..name_end]).into_owned();
    let content_start = find(body, b"\r\n\r\n", name_end)? + 4;
    let content_end = find(body, format!("\r\n--{boundary}").as_bytes(), content_start)?;
    Some((name, content_end - content_start))
}

async fn create(State(cape): State<FakeCape>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(refused) = admitted(&cape, &headers).await {
        return refused;
    }
    if cape.fail_create_with_500 {
        return (StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error").into_response();
    }
    let content_type = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("");
    let Some((name, size)) =
        uploaded_file(&body, content_type).filter(|_| content_type.starts_with("multipart/form-data"))
    else {
        return axum::Json(serde_json::json!({"error": true, "error_value": "No file was submitted"}))
            .into_response();
    };
    let plan = Plan::for_file(&name).unwrap_or(cape.plan);
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
    if let Err(refused) = admitted(&cape, &headers).await {
        return refused;
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
    if let Err(refused) = admitted(&cape, &headers).await {
        return refused;
    }
    let mut state = cape.state.lock().unwrap();
    let Some(report) = state.tasks.get(&id).map(|t| t.report.clone()) else {
        return axum::Json(serde_json::json!({"error": true, "error_value": "Task does not exist"}))
            .into_response();
    };
    state.active -= 1;
    ([("content-type", "application/json")], report).into_response()
}
