//! The state every part of the malware server shares — settings, the analyser (models, store,
//! workers, sandbox, VirusTotal), the status counters — and the operations on it that more than
//! one part needs: reloading the models (HTTP `/admin/reload`, SIGHUP) and the status report
//! (`/status`, `/metrics`).
//!
//! It lives apart from the accept loop (`server`), the connections (`connection`) and the HTTP
//! routes (`http`), which all read it, so none of them depends on another.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::Mutex;

use crate::analysis::{Analyser, VirusTotalStep};
use crate::models::{ModelLoadError, Models};
use crate::settings::ServerSettings;
use crate::status::{ModelReport, Status, StatusReport};

/// Why a model reload failed; the models in service stay in service.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Model(#[from] ModelLoadError),
    #[error("the reload job failed unexpectedly")]
    Panicked,
}

/// State shared by the listeners and every connection.
#[derive(Debug)]
pub(crate) struct Shared {
    pub settings: ServerSettings,
    pub analyser: Analyser,
    pub status: Status,
    pub data_dir: PathBuf,
    /// Reloads run one at a time, so two reloads cannot finish out of order.
    reload_lock: Mutex<()>,
}

impl Shared {
    pub fn new(settings: ServerSettings, analyser: Analyser, data_dir: PathBuf) -> Shared {
        Shared { settings, analyser, status: Status::default(), data_dir, reload_lock: Mutex::new(()) }
    }

    /// Loads the models from the data directory and puts them in service.
    pub async fn reload(&self) -> Result<Arc<Models>, ReloadError> {
        let _one_at_a_time = self.reload_lock.lock().await;
        let data_dir = self.data_dir.clone();
        let store = Arc::clone(&self.analyser.store);
        let loaded = tokio::task::spawn_blocking(move || Models::load(&store, &data_dir))
            .await
            .map_err(|_| ReloadError::Panicked)
            .and_then(|models| models.map_err(ReloadError::from));
        self.status.reload_done(loaded.as_ref().map(|_| ()).map_err(ToString::to_string));
        let models = loaded?;
        tracing::info!(
            static_version = models.static_model.version(),
            static_source = %models.static_source,
            behaviour_version = models.behaviour_model.version(),
            behaviour_source = %models.behaviour_source,
            "models reloaded"
        );
        self.analyser.models.replace(models);
        Ok(self.analyser.models.current())
    }

    pub fn report(&self) -> StatusReport {
        let models = self.analyser.models.current();
        let virustotal = self.analyser.virustotal.as_ref().map(VirusTotalStep::report);
        self.status.report(
            ModelReport {
                static_version: models.static_model.version().to_owned(),
                static_source: models.static_source.clone(),
                behaviour_version: models.behaviour_model.version().to_owned(),
                behaviour_source: models.behaviour_source.clone(),
            },
            virustotal,
        )
    }
}

/// A handle that reloads the server's models (for SIGHUP).
#[derive(Debug, Clone)]
pub struct Reloader(pub(crate) Arc<Shared>);

impl Reloader {
    /// Reloads the models from `<data_dir>/models/`; returns the static model's version.
    pub async fn reload(&self) -> Result<String, ReloadError> {
        Ok(self.0.reload().await?.static_model.version().to_owned())
    }
}
