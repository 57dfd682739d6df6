//! The malware AI server: the TCP protocol of SPEC §1.1 (framing in
//! `sentinel-protocol`) served to many central servers at once, plus an HTTP
//! listener for health, readiness, status, Prometheus metrics and model
//! reloads, on which the binary also serves the network API
//! ([`Server::merge_http_routes`]).
//!
//! Connections are tokio tasks; CPU-bound analysis runs on a bounded set of
//! blocking workers (`workers`) so slow analyses never stall the reactor;
//! models are shared through one [`ModelsInService`] and can be replaced while
//! requests are in flight; every sample and verdict is stored durably before
//! the answer is sent. `docs/protocol.md` documents the protocol and settings.

mod analysis;
mod connection;
mod http;
mod metrics;
mod models;
mod server;
mod settings;
mod status;
mod workers;

pub use analysis::{FusionSettings, VT_KEY_SECRET_FILE, VirusTotalReport, VirusTotalStep, label_from_report};
pub use models::{BEHAVIOUR_MODEL_PATH, ModelLoadError, Models, ModelsInService, STATIC_MODEL_PATH};
pub use server::{ReloadError, Reloader, Server, ServerError};
pub use settings::{ServerSettings, SettingsError};
pub use status::{COMMAND_INVALID, ConnectionCounts, ModelReport, OUTCOME_YES, ReloadCounts, StatusReport};
