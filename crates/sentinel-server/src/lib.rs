//! The malware AI server: the TCP protocol of SPEC §1.1 (framing in
//! `sentinel-protocol`) served to many central servers at once. It contributes
//! `/status`, `/admin/reload`, the analysis of files over HTTP
//! (`/api/v1/files`), the safelist and badlist (`/api/v1/lists`), a readiness
//! check and its metrics to the process's HTTP listener (`sentinel-api`)
//! through [`Server::contribute`]. Both the protocol and HTTP go through one
//! analysis pipeline (`analysis`).
//!
//! Connections are tokio tasks; CPU-bound analysis runs on a bounded set of
//! blocking workers (`workers`) so slow analyses never stall the reactor;
//! models are shared through one [`ModelsInService`] and can be replaced while
//! requests are in flight; every sample and verdict is stored durably before
//! the answer is sent. `docs/protocol.md` documents the protocol and settings.

mod analysis;
mod client_limits;
mod connection;
mod exposure;
mod file_api;
mod http;
mod list_api;
mod metrics;
mod models;
mod outcomes;
mod registry_watch;
mod server;
mod settings;
mod stage_times;
mod state;
mod status;
mod workers;

pub use analysis::{FusionSettings, VT_KEY_SECRET_FILE, VirusTotalReport, VirusTotalStep, label_from_report};
pub use exposure::ExposureError;
pub use models::{BEHAVIOUR_MODEL_PATH, ModelLoadError, Models, ModelsInService, STATIC_MODEL_PATH};
pub use outcomes::AnalysisOutcome;
pub use registry_watch::follow_registry;
pub use server::{ClientRecords, Server, ServerError};
pub use settings::{Role, ServerSettings, SettingsError};
pub use state::{ReloadError, Reloader};
pub use status::{COMMAND_INVALID, ConnectionCounts, ModelReport, OUTCOME_YES, ReloadCounts, StatusReport};
