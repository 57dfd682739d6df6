//! The model registry: the one set of models every connection shares — the
//! static model and the behaviour model, loaded and reloaded together.
//!
//! Requests take a snapshot ([`ModelRegistry::current`], an `Arc`) when they
//! start and use it to the end, so replacing the models ([`ModelRegistry::replace`],
//! or a reload from the data directory) never disturbs an analysis in flight:
//! the old models are freed when their last request finishes. The swap is a
//! single atomic pointer store (arc-swap); readers never wait on a lock.

use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use sentinel_behaviour::BehaviourModel;
use sentinel_static::StaticModel;

/// Where the static model file lives inside the data directory.
pub const STATIC_MODEL_PATH: &str = "models/static.json";

/// Where the behaviour model file lives inside the data directory.
pub const BEHAVIOUR_MODEL_PATH: &str = "models/behaviour.json";

/// Why the models could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ModelLoadError {
    #[error("static model: {0}")]
    Static(#[from] sentinel_static::ModelError),
    #[error("behaviour model: {0}")]
    Behaviour(#[from] sentinel_behaviour::ModelError),
}

/// The models in service.
#[derive(Debug)]
pub struct Models {
    pub static_model: StaticModel,
    /// Where the static model came from (a file path, or `builtin`).
    pub static_source: String,
    /// Scores API-call sequences (dynamic analysis).
    pub behaviour_model: BehaviourModel,
    /// Where the behaviour model came from (a file path, or `builtin`).
    pub behaviour_source: String,
}

impl Models {
    /// Models with the given static model and the built-in behaviour model.
    pub fn with_static(
        static_model: StaticModel,
        source: impl Into<String>,
    ) -> Result<Models, ModelLoadError> {
        Ok(Models {
            static_model,
            static_source: source.into(),
            behaviour_model: BehaviourModel::builtin()?,
            behaviour_source: "builtin".to_owned(),
        })
    }

    /// Loads `<data_dir>/models/static.json` and `<data_dir>/models/behaviour.json`,
    /// each if present, else the built-in one. Blocking (reads and checks the
    /// files): call from a blocking context.
    pub fn load(data_dir: &Path) -> Result<Models, ModelLoadError> {
        let static_path = data_dir.join(STATIC_MODEL_PATH);
        let (static_model, static_source) = if static_path.exists() {
            (StaticModel::load(&static_path)?, static_path.display().to_string())
        } else {
            (StaticModel::builtin(), "builtin".to_owned())
        };
        let behaviour_path = data_dir.join(BEHAVIOUR_MODEL_PATH);
        let (behaviour_model, behaviour_source) = if behaviour_path.exists() {
            (BehaviourModel::load(&behaviour_path)?, behaviour_path.display().to_string())
        } else {
            (BehaviourModel::builtin()?, "builtin".to_owned())
        };
        Ok(Models { static_model, static_source, behaviour_model, behaviour_source })
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
