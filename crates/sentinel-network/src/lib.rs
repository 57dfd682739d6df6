//! Sentinel's network AI service (SPEC §2): it watches this host's connections (and accepts the
//! same records from remote agents), learns what normal traffic looks like, and flags anomalous
//! connections in real time over a REST and WebSocket API.
//!
//! - [`NetworkService::start`] opens `<data_dir>/network.db` (through `sentinel-store`, which
//!   owns every table) and the active model of the model registry, starts the collectors, the
//!   pipeline (tracking → features → models → stream and storage), the results writer and the
//!   training scheduler; [`NetworkService::shutdown`] stops them. Features are computed from
//!   the clear addresses; what is stored, and shown to callers without `network:pii`, has them
//!   in the form `[privacy]` says ([`NetworkService::start_with`], `sentinel-privacy`).
//! - [`router`] is the service's part of the process's HTTP API (`sentinel-api`):
//!   `/api/v1/analyze`, `/api/v1/ingest`, `/api/v1/train`, `/api/v1/models/status`,
//!   `/api/v1/models/rollback`, `/api/v1/predictions/recent`, `/api/v1/feedback` and
//!   `/ws/realtime`, each documented
//!   for the OpenAPI document; [`register_metrics`] adds its Prometheus metrics.
//! - [`agent`]: `sentinel agent`, which runs the collectors on another host and posts snapshots.
//! - [`evaluation`]: the same features, training and verdicts measured on a labelled data set
//!   (`sentinel eval network`).
//!
//! `docs/network.md` describes the features, the models, the warm-up, the storage and the API.

pub mod agent;
pub mod evaluation;
mod features;
mod http;
mod metrics;
mod model;
mod saved_model;
mod service;
mod settings;

pub use features::{CATEGORICAL_FEATURES, FeatureError, NUMERIC_FEATURES, PROCESS_RARITY, WindowValues};
pub use http::router;
pub use metrics::register as register_metrics;
pub use model::{Evaluation, FeatureExplanation, ModelScore, Verdict};
pub use saved_model::ModelVersion;
pub use service::{
    AccuracyFigures, AnalyzeError, ConnectionSummary, DetectionResult, JobReport, JobState, NetworkError,
    NetworkService, ScaleOut, ServiceHealth, Source, StorageError, TrainError,
};
pub use settings::{
    AgentSettings, ApiSettings, FeatureSettings, FeedbackSettings, ModelSettings, NetworkSettings,
    SettingsError, StorageSettings, TrainingSettings,
};
