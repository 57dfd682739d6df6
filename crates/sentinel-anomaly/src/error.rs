//! The errors every part of the engine reports. Input reaching the engine may be
//! hostile (crafted feature vectors, tampered model files), so each failure says
//! what was wrong and where instead of panicking.

/// What went wrong in fitting, scoring, thresholding or loading.
#[derive(Debug, thiserror::Error)]
pub enum AnomalyError {
    #[error("no data: {0}")]
    Empty(&'static str),
    #[error("value at row {row}, column {column} is not finite ({value})")]
    NotFinite { row: usize, column: usize, value: f64 },
    #[error("wrong dimension: expected {expected} features, got {actual}")]
    Dimension { expected: usize, actual: usize },
    #[error("invalid parameter: {0}")]
    Parameter(String),
    #[error("incompatible model file: {0}")]
    IncompatibleModel(String),
    #[error("corrupt model: {0}")]
    CorruptModel(String),
    #[error("metric: {0}")]
    Metric(#[from] sentinel_metrics::MetricError),
}

pub type Result<T> = std::result::Result<T, AnomalyError>;
