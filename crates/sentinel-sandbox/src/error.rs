//! Why a sandbox analysis failed, as an error and as a short reason code.

/// The reason of a failure, for metrics, logs and the opt-in error frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureReason {
    /// The settings cannot work (bad URL, zero limits).
    Settings,
    /// The file is larger than the upload limit.
    TooLarge,
    /// CAPE could not be reached (connection refused, DNS, TLS, request timeout).
    Unreachable,
    /// CAPE refused the token (HTTP 401 or 403).
    Auth,
    /// CAPE refused the request (HTTP 4xx or `"error": true`).
    Rejected,
    /// CAPE failed internally (HTTP 5xx).
    Unavailable,
    /// The analysis itself failed in CAPE (`failed_analysis`, `failed_processing`…).
    AnalysisFailed,
    /// No report within the analysis timeout.
    Timeout,
    /// The report could not be read (not JSON, too large, an error answer).
    BadReport,
}

impl FailureReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::Settings => "settings",
            FailureReason::TooLarge => "too_large",
            FailureReason::Unreachable => "unreachable",
            FailureReason::Auth => "auth",
            FailureReason::Rejected => "rejected",
            FailureReason::Unavailable => "unavailable",
            FailureReason::AnalysisFailed => "analysis_failed",
            FailureReason::Timeout => "timeout",
            FailureReason::BadReport => "bad_report",
        }
    }
}

/// A failed sandbox operation. Messages quote at most a short excerpt of what
/// CAPE answered, and never the token.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("invalid sandbox settings: {0}")]
    Settings(String),
    #[error("the file is {size} bytes, more than the {limit}-byte upload limit")]
    TooLarge { size: usize, limit: usize },
    #[error("CAPE is unreachable: {0}")]
    Unreachable(String),
    #[error("CAPE refused the API token (HTTP {status})")]
    Auth { status: u16 },
    #[error("CAPE rejected the request: {0}")]
    Rejected(String),
    #[error("CAPE failed (HTTP {status}): {message}")]
    Unavailable { status: u16, message: String },
    #[error("CAPE task {task_id} ended with status `{status}`")]
    AnalysisFailed { task_id: u64, status: String },
    #[error("no report after {seconds} s (task {})", task_id.map_or_else(|| "not created".to_owned(), |t| t.to_string()))]
    Timeout { task_id: Option<u64>, seconds: u64 },
    #[error("CAPE task {task_id}: unusable report: {reason}")]
    BadReport { task_id: u64, reason: String },
}

impl SandboxError {
    pub fn reason(&self) -> FailureReason {
        match self {
            SandboxError::Settings(_) => FailureReason::Settings,
            SandboxError::TooLarge { .. } => FailureReason::TooLarge,
            SandboxError::Unreachable(_) => FailureReason::Unreachable,
            SandboxError::Auth { .. } => FailureReason::Auth,
            SandboxError::Rejected(_) => FailureReason::Rejected,
            SandboxError::Unavailable { .. } => FailureReason::Unavailable,
            SandboxError::AnalysisFailed { .. } => FailureReason::AnalysisFailed,
            SandboxError::Timeout { .. } => FailureReason::Timeout,
            SandboxError::BadReport { .. } => FailureReason::BadReport,
        }
    }
}
