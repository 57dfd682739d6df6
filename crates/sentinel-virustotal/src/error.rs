//! The errors of a VirusTotal lookup, one variant per outcome a caller acts on
//! differently, and the kinds they are counted under in the metrics.
//!
//! Errors are `Clone` because one upstream call's outcome is handed to every
//! request waiting on it (single flight). Text that comes from VirusTotal is
//! sanitised before it is kept here (see `upstream_message`): it is bounded,
//! free of control characters and never contains the key that was sent.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Who refused a request for quota reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaOrigin {
    /// This server's rate limiter: the key's tier limits would be exceeded and
    /// the wait is longer than `max_queue_wait`. Nothing was sent.
    LocalLimit,
    /// VirusTotal answered 429 `QuotaExceededError` (or `TooManyRequestsError`).
    VirusTotal,
}

/// Why a VirusTotal lookup failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum VtError {
    #[error("the SHA-256 is not 64 hex digits")]
    InvalidHash,
    #[error("the VirusTotal API key is malformed")]
    InvalidKey,
    #[error("no VirusTotal API key was given and the hash is not in the results dataset")]
    MissingKey,
    #[error("VirusTotal refused the API key: {message}")]
    WrongCredentials { message: String },
    #[error("VirusTotal forbids this request for the API key: {message}")]
    Forbidden { message: String },
    #[error("VirusTotal does not know this file")]
    NotFound,
    #[error("VirusTotal quota exceeded ({origin:?}){}", retry_hint(*.retry_after))]
    QuotaExceeded { origin: QuotaOrigin, retry_after: Option<Duration> },
    #[error("the file is {size} bytes, more than the {limit} bytes allowed for upload")]
    FileTooLarge { size: u64, limit: u64 },
    #[error("VirusTotal rejected the request ({status} {code}): {message}")]
    Rejected { status: u16, code: String, message: String },
    #[error("VirusTotal unavailable after {attempts} attempts: {last}")]
    Unavailable { attempts: u32, last: String },
    /// No connection could be made to VirusTotal (refused, no route, name not resolved, TLS
    /// handshake failed): an outage, which costs the key nothing.
    #[error("VirusTotal unreachable after {attempts} attempts: {last}")]
    Unreachable { attempts: u32, last: String },
    #[error("invalid response from VirusTotal: {0}")]
    InvalidResponse(String),
    #[error("the VirusTotal analysis did not complete within {0:?}")]
    AnalysisTimeout(Duration),
    #[error("the VirusTotal lookup was interrupted: {0}")]
    Interrupted(String),
    /// The state replicas share (the keys' ledger) could not be consulted: the request is not
    /// sent rather than risk spending the key beyond its limits.
    #[error("the state shared with the other replicas is unavailable: {0}")]
    SharedState(String),
}

fn retry_hint(retry_after: Option<Duration>) -> String {
    match retry_after {
        Some(wait) => format!(", retry in {} s", wait.as_secs().max(1)),
        None => String::new(),
    }
}

impl VtError {
    /// The kind this error is counted under.
    pub fn kind(&self) -> ErrorKind {
        match self {
            VtError::InvalidHash | VtError::InvalidKey | VtError::MissingKey => ErrorKind::InvalidInput,
            VtError::WrongCredentials { .. } => ErrorKind::WrongCredentials,
            VtError::Forbidden { .. } => ErrorKind::Forbidden,
            VtError::NotFound => ErrorKind::NotFound,
            VtError::QuotaExceeded { origin: QuotaOrigin::LocalLimit, .. } => ErrorKind::LocalRateLimit,
            VtError::QuotaExceeded { origin: QuotaOrigin::VirusTotal, .. } => ErrorKind::QuotaExceeded,
            VtError::FileTooLarge { .. } => ErrorKind::UploadRefused,
            VtError::Rejected { .. } => ErrorKind::Rejected,
            VtError::Unavailable { .. }
            | VtError::Unreachable { .. }
            | VtError::Interrupted(_)
            | VtError::SharedState(_) => ErrorKind::Unavailable,
            VtError::InvalidResponse(_) => ErrorKind::InvalidResponse,
            VtError::AnalysisTimeout(_) => ErrorKind::AnalysisTimeout,
        }
    }

    /// Whether the error says something about the key that made the call rather
    /// than about the file: such an outcome is not handed to requests that carry
    /// other keys; they make their own attempt.
    pub(crate) fn is_about_the_key(&self) -> bool {
        matches!(
            self,
            VtError::MissingKey
                | VtError::InvalidKey
                | VtError::WrongCredentials { .. }
                | VtError::Forbidden { .. }
                | VtError::QuotaExceeded { .. }
        )
    }
}

/// The kinds errors are counted under in [`crate::MetricsSnapshot`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    InvalidInput,
    WrongCredentials,
    Forbidden,
    NotFound,
    LocalRateLimit,
    QuotaExceeded,
    UploadRefused,
    Rejected,
    Unavailable,
    InvalidResponse,
    AnalysisTimeout,
    /// The results dataset (the [`crate::ReportCache`]) failed; the lookup went on without it.
    Cache,
}

impl ErrorKind {
    pub(crate) const ALL: [ErrorKind; 12] = [
        ErrorKind::InvalidInput,
        ErrorKind::WrongCredentials,
        ErrorKind::Forbidden,
        ErrorKind::NotFound,
        ErrorKind::LocalRateLimit,
        ErrorKind::QuotaExceeded,
        ErrorKind::UploadRefused,
        ErrorKind::Rejected,
        ErrorKind::Unavailable,
        ErrorKind::InvalidResponse,
        ErrorKind::AnalysisTimeout,
        ErrorKind::Cache,
    ];

    /// The label used in metrics (`wrong_credentials`, `not_found`…).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidInput => "invalid_input",
            ErrorKind::WrongCredentials => "wrong_credentials",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::NotFound => "not_found",
            ErrorKind::LocalRateLimit => "local_rate_limit",
            ErrorKind::QuotaExceeded => "quota_exceeded",
            ErrorKind::UploadRefused => "upload_refused",
            ErrorKind::Rejected => "rejected",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::InvalidResponse => "invalid_response",
            ErrorKind::AnalysisTimeout => "analysis_timeout",
            ErrorKind::Cache => "cache",
        }
    }
}

/// Invalid [`crate::VirusTotalSettings`] or key-hash secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid VirusTotal settings: {0}")]
pub struct SettingsError(String);

impl SettingsError {
    pub(crate) fn new(message: String) -> SettingsError {
        SettingsError(message)
    }
}

/// Longest piece of VirusTotal's text kept in an error.
const MAX_UPSTREAM_MESSAGE: usize = 200;

/// Upstream text made safe to keep and log: the key removed wherever it
/// appears, control characters replaced, and the length bounded.
pub(crate) fn upstream_message(text: &str, key: &str) -> String {
    let redacted = if key.is_empty() { text.to_owned() } else { text.replace(key, "<redacted>") };
    let mut message: String =
        redacted.chars().map(|c| if c.is_control() { ' ' } else { c }).take(MAX_UPSTREAM_MESSAGE).collect();
    if redacted.chars().nth(MAX_UPSTREAM_MESSAGE).is_some() {
        message.push('…');
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_text_is_redacted_cleaned_and_bounded() {
        let message = upstream_message("key SECRETKEY is wrong\n\u{1b}[31m", "SECRETKEY");
        assert_eq!(message, "key <redacted> is wrong  [31m");
        let long = upstream_message(&"x".repeat(10_000), "k");
        assert_eq!(long.chars().count(), MAX_UPSTREAM_MESSAGE + 1);
    }

    #[test]
    fn every_kind_is_listed_once() {
        let mut labels: Vec<_> = ErrorKind::ALL.iter().map(|kind| kind.as_str()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), ErrorKind::ALL.len());
    }
}
