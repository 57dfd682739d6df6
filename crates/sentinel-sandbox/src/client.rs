//! The CAPE v2 REST client.
//!
//! One analysis is three steps of CAPE's `apiv2`:
//!
//! 1. `POST /apiv2/tasks/create/file/` (multipart, field `file`, optional
//!    `timeout` and `options`) → `{"error": false, "data": {"task_ids": [N]}}`;
//! 2. `GET /apiv2/tasks/view/N/` every poll interval → `data.status`:
//!    `pending`, `running`, `completed`, `distributed`… until `reported`, or a
//!    failure (`failed_analysis`, `failed_processing`, `failed_reporting`,
//!    `banned`);
//! 3. `GET /apiv2/tasks/get/report/N/json/` → the JSON report, read with a
//!    size limit and parsed by `sentinel_behaviour::parse_cape_report`.
//!
//! Each request carries `Authorization: Token <token>` when a token is set. A
//! semaphore bounds the analyses in flight (CAPE has a few VMs; queueing more
//! tasks than it can run only makes every one of them time out), and the whole
//! analysis — submission, polling and download — is bounded by the analysis
//! timeout.

use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use sentinel_behaviour::{CapeBehaviour, CapeLimits, CapeReportError, parse_cape_report};
use serde::Deserialize;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::error::SandboxError;
use crate::settings::SandboxSettings;

/// Largest answer accepted from the task endpoints (they return small JSON).
const MAX_API_ANSWER_BYTES: usize = 1 << 20;

/// Longest excerpt of an answer quoted in an error.
const EXCERPT_CHARS: usize = 200;

/// Longest file name sent to CAPE.
const MAX_FILE_NAME: usize = 100;

/// Where a task stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskStatus {
    /// Queued, running or being processed: ask again later.
    InProgress(String),
    /// The report is ready.
    Reported,
    /// CAPE gave up on the task.
    Failed(String),
}

impl TaskStatus {
    fn from_cape(status: &str) -> TaskStatus {
        match status {
            "reported" => TaskStatus::Reported,
            "failed_analysis" | "failed_processing" | "failed_reporting" | "banned" => {
                TaskStatus::Failed(status.to_owned())
            }
            // pending, running, completed, distributed, recovered, and any
            // state a newer CAPE adds: keep polling until the timeout.
            other => TaskStatus::InProgress(other.chars().take(40).collect()),
        }
    }
}

/// A finished analysis: the task and the behaviour read from its report.
#[derive(Debug, Clone, PartialEq)]
pub struct CapeAnalysis {
    pub task_id: u64,
    pub behaviour: CapeBehaviour,
}

/// CAPE's answer envelope: `{"error": bool, "data": …, "error_value": …}`.
#[derive(Deserialize)]
struct Envelope<T> {
    #[serde(default)]
    error: bool,
    data: Option<T>,
    error_value: Option<serde_json::Value>,
    errors: Option<serde_json::Value>,
}

impl<T> Envelope<T> {
    fn error_message(&self) -> String {
        let text = match (&self.error_value, &self.errors) {
            (Some(serde_json::Value::String(s)), _) => s.clone(),
            (Some(v), _) => v.to_string(),
            (None, Some(v)) => v.to_string(),
            (None, None) => "no reason given".to_owned(),
        };
        excerpt(&text)
    }
}

#[derive(Deserialize)]
struct CreatedTasks {
    #[serde(default)]
    task_ids: Vec<u64>,
    task_id: Option<u64>,
}

#[derive(Deserialize)]
struct TaskView {
    status: String,
}

fn excerpt(text: &str) -> String {
    text.chars().take(EXCERPT_CHARS).filter(|c| !c.is_control()).collect()
}

/// The file name CAPE will give the sample: its extension matters to CAPE's
/// package choice, the rest only needs to be harmless.
fn safe_file_name(name: &str) -> String {
    let cleaned: String = name
        .rsplit(['/', '\\'])
        .next()
        .unwrap_or("")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        .collect();
    let cleaned = cleaned.trim_start_matches('.');
    if cleaned.is_empty() {
        "sample.exe".to_owned()
    } else {
        cleaned.chars().rev().take(MAX_FILE_NAME).collect::<Vec<_>>().into_iter().rev().collect()
    }
}

/// A client of one CAPE instance. Cheap to share: clone it or put it in an `Arc`.
#[derive(Debug, Clone)]
pub struct CapeClient {
    http: reqwest::Client,
    base_url: String,
    settings: Arc<SandboxSettings>,
    slots: Arc<Semaphore>,
}

impl CapeClient {
    /// Checks the settings and builds the HTTP client.
    pub fn new(settings: SandboxSettings) -> Result<CapeClient, SandboxError> {
        let base_url = settings.base_url.trim().trim_end_matches('/').to_owned();
        if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
            return Err(SandboxError::Settings(format!(
                "base_url must start with http:// or https://, got {base_url:?}"
            )));
        }
        if settings.max_in_flight == 0
            || settings.poll_interval.is_zero()
            || settings.analysis_timeout.is_zero()
        {
            return Err(SandboxError::Settings(
                "max_in_flight, poll_interval and analysis_timeout must be positive".into(),
            ));
        }
        let http = reqwest::Client::builder()
            .timeout(settings.request_timeout.max(Duration::from_secs(1)))
            .connect_timeout(settings.request_timeout.clamp(Duration::from_secs(1), Duration::from_secs(10)))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| SandboxError::Settings(format!("cannot build the HTTP client: {e}")))?;
        let slots = Arc::new(Semaphore::new(settings.max_in_flight));
        Ok(CapeClient { http, base_url, settings: Arc::new(settings), slots })
    }

    pub fn settings(&self) -> &SandboxSettings {
        &self.settings
    }

    /// Runs `file` in CAPE and reads the API calls of its report: submits,
    /// polls until reported, downloads. Waits for a free slot first (at most
    /// `max_in_flight` analyses at once); the analysis timeout starts once the
    /// slot is obtained.
    pub async fn analyse(&self, file: &[u8], file_name: &str) -> Result<CapeAnalysis, SandboxError> {
        if file.len() > self.settings.max_upload_bytes {
            return Err(SandboxError::TooLarge { size: file.len(), limit: self.settings.max_upload_bytes });
        }
        let _slot =
            self.slots.acquire().await.map_err(|_| SandboxError::Settings("the client is closed".into()))?;
        let seconds = self.settings.analysis_timeout.as_secs();
        let deadline = Instant::now() + self.settings.analysis_timeout;
        let task_id = tokio::time::timeout_at(deadline, self.submit(file, file_name))
            .await
            .map_err(|_| SandboxError::Timeout { task_id: None, seconds })??;
        tracing::info!(task_id, bytes = file.len(), "submitted to CAPE");
        let finished = tokio::time::timeout_at(deadline, async {
            self.wait_until_reported(task_id).await?;
            self.fetch_report(task_id).await
        })
        .await;
        let behaviour = finished.map_err(|_| SandboxError::Timeout { task_id: Some(task_id), seconds })??;
        tracing::info!(
            task_id,
            calls = behaviour.sequence.len(),
            notes = behaviour.notes.len(),
            "CAPE report read"
        );
        Ok(CapeAnalysis { task_id, behaviour })
    }

    /// Submits a file; returns CAPE's task id.
    pub async fn submit(&self, file: &[u8], file_name: &str) -> Result<u64, SandboxError> {
        if file.len() > self.settings.max_upload_bytes {
            return Err(SandboxError::TooLarge { size: file.len(), limit: self.settings.max_upload_bytes });
        }
        let part = reqwest::multipart::Part::bytes(file.to_vec())
            .file_name(safe_file_name(file_name))
            .mime_str("application/octet-stream")
            .map_err(|e| SandboxError::Settings(e.to_string()))?;
        let mut form = reqwest::multipart::Form::new().part("file", part);
        if self.settings.run_time.as_secs() > 0 {
            form = form.text("timeout", self.settings.run_time.as_secs().to_string());
        }
        if !self.settings.options.is_empty() {
            form = form.text("options", self.settings.options.clone());
        }
        let request = self.http.post(format!("{}/apiv2/tasks/create/file/", self.base_url)).multipart(form);
        let body = self.send(request, MAX_API_ANSWER_BYTES).await?;
        let answer: Envelope<CreatedTasks> = serde_json::from_slice(&body)
            .map_err(|e| SandboxError::Rejected(format!("unexpected answer to the submission: {e}")))?;
        if answer.error {
            return Err(SandboxError::Rejected(answer.error_message()));
        }
        let created =
            answer.data.ok_or_else(|| SandboxError::Rejected("the submission answer has no data".into()))?;
        created
            .task_ids
            .first()
            .copied()
            .or(created.task_id)
            .ok_or_else(|| SandboxError::Rejected("CAPE created no task".into()))
    }

    /// The current status of a task.
    pub async fn status(&self, task_id: u64) -> Result<TaskStatus, SandboxError> {
        let request = self.http.get(format!("{}/apiv2/tasks/view/{task_id}/", self.base_url));
        let body = self.send(request, MAX_API_ANSWER_BYTES).await?;
        let answer: Envelope<TaskView> = serde_json::from_slice(&body)
            .map_err(|e| SandboxError::Rejected(format!("unexpected answer about task {task_id}: {e}")))?;
        if answer.error {
            return Err(SandboxError::Rejected(answer.error_message()));
        }
        let view =
            answer.data.ok_or_else(|| SandboxError::Rejected(format!("no data about task {task_id}")))?;
        Ok(TaskStatus::from_cape(&view.status))
    }

    async fn wait_until_reported(&self, task_id: u64) -> Result<(), SandboxError> {
        let interval = self.settings.poll_interval;
        loop {
            match self.status(task_id).await? {
                TaskStatus::Reported => return Ok(()),
                TaskStatus::Failed(status) => return Err(SandboxError::AnalysisFailed { task_id, status }),
                TaskStatus::InProgress(status) => {
                    tracing::debug!(task_id, status, "CAPE task in progress");
                    tokio::time::sleep(interval).await;
                }
            }
        }
    }

    /// Downloads and parses a task's JSON report.
    pub async fn fetch_report(&self, task_id: u64) -> Result<CapeBehaviour, SandboxError> {
        let request = self.http.get(format!("{}/apiv2/tasks/get/report/{task_id}/json/", self.base_url));
        let body = match self.send(request, self.settings.max_report_bytes).await {
            Err(SandboxError::TooLarge { limit, .. }) => {
                return Err(SandboxError::BadReport {
                    task_id,
                    reason: format!("larger than {limit} bytes"),
                });
            }
            other => other?,
        };
        let limits = CapeLimits {
            max_report_bytes: self.settings.max_report_bytes,
            max_calls: self.settings.max_calls,
        };
        // Parsing a report of up to `max_report_bytes` is CPU work: keep it off
        // the async runtime's threads, which move every other client's bytes.
        let parsed = tokio::task::spawn_blocking(move || parse_cape_report(&body, &limits))
            .await
            .map_err(|_| SandboxError::BadReport { task_id, reason: "the report parser failed".into() })?;
        parsed.map_err(|e| SandboxError::BadReport {
            task_id,
            reason: match e {
                CapeReportError::SandboxError(message) => {
                    format!("CAPE answered an error: {}", excerpt(&message))
                }
                other => excerpt(&other.to_string()),
            },
        })
    }

    /// Sends a request with the token and reads at most `limit` bytes of a
    /// successful answer; maps every failure to its reason.
    async fn send(&self, request: reqwest::RequestBuilder, limit: usize) -> Result<Vec<u8>, SandboxError> {
        let request = if self.settings.token.is_empty() {
            request
        } else {
            request.header(reqwest::header::AUTHORIZATION, format!("Token {}", self.settings.token.expose()))
        };
        let mut response = request.send().await.map_err(|e| SandboxError::Unreachable(describe(&e)))?;
        let status = response.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(SandboxError::Auth { status: status.as_u16() });
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| SandboxError::Unreachable(describe(&e)))? {
            if body.len() + chunk.len() > limit {
                if !status.is_success() {
                    break;
                }
                return Err(SandboxError::TooLarge { size: body.len() + chunk.len(), limit });
            }
            body.extend_from_slice(&chunk);
        }
        if status.is_server_error() {
            return Err(SandboxError::Unavailable {
                status: status.as_u16(),
                message: excerpt(&String::from_utf8_lossy(&body)),
            });
        }
        if !status.is_success() {
            return Err(SandboxError::Rejected(format!(
                "HTTP {}: {}",
                status.as_u16(),
                excerpt(&String::from_utf8_lossy(&body))
            )));
        }
        Ok(body)
    }
}

/// A reqwest error with its cause chain, which holds the useful part
/// ("connection refused"). URLs carry no secret: the token is a header.
fn describe(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    excerpt(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_are_made_harmless() {
        assert_eq!(safe_file_name("C:\\Users\\x\\evil sample.exe"), "evilsample.exe");
        assert_eq!(safe_file_name("../../etc/passwd"), "passwd");
        assert_eq!(safe_file_name(""), "sample.exe");
        assert_eq!(safe_file_name("..."), "sample.exe");
        assert!(safe_file_name(&format!("{}.exe", "a".repeat(500))).ends_with(".exe"));
    }

    #[test]
    fn statuses_map_to_progress_success_or_failure() {
        assert_eq!(TaskStatus::from_cape("reported"), TaskStatus::Reported);
        assert_eq!(TaskStatus::from_cape("failed_analysis"), TaskStatus::Failed("failed_analysis".into()));
        assert!(matches!(TaskStatus::from_cape("running"), TaskStatus::InProgress(_)));
        assert!(matches!(TaskStatus::from_cape("completed"), TaskStatus::InProgress(_)));
    }

    #[test]
    fn settings_are_checked() {
        let bad = SandboxSettings { base_url: "ftp://x".into(), ..SandboxSettings::default() };
        assert!(matches!(CapeClient::new(bad), Err(SandboxError::Settings(_))));
        let zero = SandboxSettings {
            base_url: "http://cape:8000".into(),
            max_in_flight: 0,
            ..SandboxSettings::default()
        };
        assert!(matches!(CapeClient::new(zero), Err(SandboxError::Settings(_))));
    }
}
