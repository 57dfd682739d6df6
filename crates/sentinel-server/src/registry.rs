//! The model registry: the one set of models every connection shares.
//!
//! Requests take a snapshot ([`ModelRegistry::current`], an `Arc`) when they
//! start and use it to the end, so replacing the models ([`ModelRegistry::replace`],
//! or a reload from the data directory) never disturbs an analysis in flight:
//! the old models are freed when their last request finishes. The swap is a
//! single atomic pointer store (arc-swap); readers never wait on a lock.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use sentinel_static::{ModelError, StaticModel};

/// Where the static model file lives inside the data directory.
pub const STATIC_MODEL_PATH: &str = "models/static.json";

/// The models in service.
#[derive(Debug)]
pub struct Models {
    pub static_model: StaticModel,
    /// Where the static model came from (a file path, or `builtin`).
    pub static_source: String,
}

impl Models {
    /// Models with the given static model.
    pub fn with_static(static_model: StaticModel, source: impl Into<String>) -> Models {
        Models { static_model, static_source: source.into() }
    }

    /// Loads `<data_dir>/models/static.json` if present, else the built-in model.
    /// Blocking (reads and checks the file): call from a blocking context.
    pub fn load(data_dir: &Path) -> Result<Models, ModelError> {
        let path: PathBuf = data_dir.join(STATIC_MODEL_PATH);
        if path.exists() {
            let model = StaticModel::load(&path)?;
            Ok(Models::with_static(model, path.display().to_string()))
        } else {
            Ok(Models::with_static(StaticModel::builtin(), "builtin"))
        }
    }
}

/// Shared, atomically replaceable models.
#[derive(Debug)]
pub struct ModelRegistry {
    models: ArcSwap<Models>,
}

impl ModelRegistry {
    pub fn new(models: Models) -> ModelRegistry {
        ModelRegistry { models: ArcSwap::from_pointee(models) }
    }

    /// The models to use for one request, from its start to its end.
    pub fn current(&self) -> Arc<Models> {
        self.models.load_full()
    }

    /// Puts `models` in service for the requests that start from now on.
    pub fn replace(&self, models: Models) {
        self.models.store(Arc::new(models));
    }
}
