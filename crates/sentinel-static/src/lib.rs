//! Static malware classification of Windows executables: the `pe-header`
//! features of a file (from `sentinel-pe`, identical to Python pefile's values)
//! scored by a gradient-boosted model (`sentinel-gbdt`), calibrated to a
//! probability, with a documented decision threshold and per-feature
//! explanations. Also the training pipeline (header data set + benign corpus)
//! and the evaluation of labelled CSVs used by the `sentinel` commands.

mod corpus;
mod header_csv;
mod model;
mod training;
mod transfer;

pub use corpus::{Corpus, CorpusFile, read_corpus};
pub use header_csv::{FEATURES, LABEL_COLUMN, LabelledRows, read_header_csv, read_header_csv_from};
pub use model::{FeatureContribution, MODEL_FORMAT_VERSION, SCHEMA, StaticModel, StaticVerdict};
pub use training::{
    BaselineEvaluation, BenignEvaluation, CorpusSplit, Evaluation, TrainingOptions, TrainingSummary,
    balanced_weights, deduplicate, holdout_split, train,
};
pub use transfer::{
    CrossSourceOptions, CrossSourceReport, EXCLUDED_FEATURES, FEATURE_GROUPS, FeatureGroup, TransferFigures,
    cross_source,
};

/// Why a model file cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ModelError {
    #[error("cannot read {path}: {message}")]
    Io { path: String, message: String },
    #[error("invalid static model file: {0}")]
    Format(String),
    #[error("the model reads the {0:?} feature schema, not {SCHEMA:?}")]
    Schema(String),
    #[error("static model format version {found} is not supported (this build reads version {supported})")]
    Version { found: u32, supported: u32 },
}

/// Why a file could not be scored.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum AnalyseError {
    /// The bytes are not a PE file.
    #[error("not a PE file: {0}")]
    NotPe(String),
    /// A PE file whose headers are cut short or unusable (pefile rejects it too).
    #[error("malformed PE file: {0}")]
    Malformed(String),
    /// The model could not score the features.
    #[error("the model failed: {0}")]
    Model(String),
}

/// Why training or evaluation data could not be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DataError {
    #[error("cannot read {path}: {message}")]
    Io { path: String, message: String },
    #[error("invalid CSV: {0}")]
    Csv(String),
    #[error("missing columns: {0}")]
    MissingColumns(String),
    #[error("line {line}, column {column}: {text:?} is not a number")]
    NotNumeric { line: usize, column: String, text: String },
    #[error("{path}: {source}")]
    InFile { path: String, source: Box<DataError> },
}

impl DataError {
    fn in_file(self, path: &std::path::Path) -> DataError {
        match self {
            DataError::Io { .. } | DataError::InFile { .. } => self,
            other => DataError::InFile { path: path.display().to_string(), source: Box::new(other) },
        }
    }
}

/// Why training failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Data(#[from] DataError),
    #[error("boosting failed: {0}")]
    Boosting(#[from] sentinel_gbdt::GbdtError),
    #[error("evaluation failed: {0}")]
    Metric(#[from] sentinel_metrics::MetricError),
    #[error("not enough data: {0}")]
    TooFew(String),
    #[error("{0:?} is not a pe-header column")]
    UnknownFeature(String),
}
