//! Why the service could not start, or an operation of its API failed.

use std::path::PathBuf;

use sentinel_store::StoreError;

use crate::settings::SettingsError;

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("cannot create the data directory {path}: {source}")]
    DataDir { path: PathBuf, source: std::io::Error },
    #[error("network collector: {0}")]
    Collector(String),
    #[error("the pipeline thread could not start: {0}")]
    Thread(std::io::Error),
    #[error(transparent)]
    Privacy(#[from] sentinel_privacy::PrivacyError),
}

impl From<StoreError> for NetworkError {
    fn from(error: StoreError) -> NetworkError {
        NetworkError::Storage(StorageError::Store(error))
    }
}

/// A failure reading or writing the service's data or models.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("stored model {version} is unusable: {reason}")]
    Model { version: i64, reason: String },
    #[error("no model version {0}")]
    NoSuchVersion(i64),
    #[error("the storage task failed: {0}")]
    Task(String),
    #[error("a snapshot could not be journalled: {0}")]
    Journal(String),
}

/// Why a training could not be started or changed.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("training job {0} is already running")]
    AlreadyRunning(u64),
    #[error("no training job {0}")]
    NoSuchJob(u64),
    #[error("training job {0} has already finished")]
    Finished(u64),
}

/// Why an analysis could not be done.
#[derive(Debug, thiserror::Error)]
pub enum AnalyzeError {
    #[error(
        "no model yet: the service is learning this network's normal traffic (see /api/v1/models/status)"
    )]
    NoModel,
    #[error("the analysis task failed: {0}")]
    Task(String),
    #[error("the model could not score the batch: {0}")]
    Model(String),
    #[error("no ids could be reserved for the results to store: {0}")]
    Storage(String),
}
