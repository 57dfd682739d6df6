//! Errors of this crate: loading models, reading data sets, parsing reports.

use std::path::PathBuf;

/// A model file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot read model file {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("model file is {size} bytes, more than the {limit}-byte limit")]
    TooLarge { size: u64, limit: u64 },
    #[error("model file is not valid JSON for this format: {0}")]
    Json(#[from] serde_json::Error),
    #[error(
        "not a behaviour model (format {found:?}, version {version}); expected {expected:?} version {expected_version}"
    )]
    WrongFormat { found: String, version: u32, expected: &'static str, expected_version: u32 },
    #[error("invalid model: {0}")]
    Invalid(String),
}

/// A data set could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{what} is larger than the {limit}-byte limit")]
    TooLarge { what: String, limit: u64 },
    #[error("CSV error: {0}")]
    Csv(#[from] csv::Error),
    #[error("zip archive: {0}")]
    Zip(#[from] zip::result::ZipError),
    #[error("line {line}: {message}")]
    Malformed { line: u64, message: String },
    #[error("{0}")]
    Invalid(String),
}

/// A CAPE report could not be parsed.
#[derive(Debug, thiserror::Error)]
pub enum CapeReportError {
    #[error("report is {size} bytes, more than the {limit}-byte limit")]
    TooLarge { size: usize, limit: usize },
    #[error("report is not valid JSON of the CAPE shape: {0}")]
    Json(#[from] serde_json::Error),
    #[error("the sandbox answered an error instead of a report: {0}")]
    SandboxError(String),
}

/// Training could not proceed.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{0}")]
    Data(String),
    #[error(transparent)]
    Metric(#[from] sentinel_metrics::MetricError),
}
