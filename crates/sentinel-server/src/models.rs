//! The models in service: the one set of models every connection shares — the
//! static model and the behaviour model, loaded and reloaded together from the
//! model registry of the store (`sentinel-store`, which keeps every version, its
//! origin, evaluation and promotion decisions, and which one is active).
//!
//! Requests take a snapshot ([`ModelsInService::current`], an `Arc`) when they
//! start and use it to the end, so replacing the models ([`ModelsInService::replace`],
//! or a reload) never disturbs an analysis in flight: the old models are freed
//! when their last request finishes. The swap is a single atomic pointer store
//! (arc-swap); readers never wait on a lock.

use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use sentinel_behaviour::BehaviourModel;
use sentinel_static::StaticModel;
use sentinel_store::{ModelKind, Store, StoreError, StoredModel};

/// Where a static model file may be put by hand inside the data directory: used
/// when the registry has no active static model.
pub const STATIC_MODEL_PATH: &str = "models/static.json";

/// Where a behaviour model file may be put by hand inside the data directory:
/// used when the registry has no active behaviour model.
pub const BEHAVIOUR_MODEL_PATH: &str = "models/behaviour.json";

/// Why the models could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ModelLoadError {
    #[error("static model: {0}")]
    Static(#[from] sentinel_static::ModelError),
    #[error("behaviour model: {0}")]
    Behaviour(#[from] sentinel_behaviour::ModelError),
    #[error("model registry: {0}")]
    Registry(#[from] StoreError),
}

/// The models in service.
#[derive(Debug)]
pub struct Models {
    pub static_model: StaticModel,
    /// Where the static model came from (`registry version N`, a file path, or `builtin`).
    pub static_source: String,
    /// Scores API-call sequences (dynamic analysis).
    pub behaviour_model: BehaviourModel,
    /// Where the behaviour model came from (`registry version N`, a file path, or `builtin`).
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

    /// Loads the active static and behaviour models of the registry; for a kind
    /// with no active version, `<data_dir>/models/static.json` (or
    /// `behaviour.json`) if present, else the built-in one (the committed
    /// `models/*.json`). Blocking (reads and checks the models): call from a
    /// blocking context.
    pub fn load(registry: &Store, data_dir: &Path) -> Result<Models, ModelLoadError> {
        let (static_model, static_source) = match registry.active_model(ModelKind::Static)? {
            Some(stored) => (StaticModel::from_slice(&stored.artifact)?, registry_source(&stored)),
            None => {
                let path = data_dir.join(STATIC_MODEL_PATH);
                match path.exists() {
                    true => (StaticModel::load(&path)?, path.display().to_string()),
                    false => (StaticModel::builtin(), "builtin".to_owned()),
                }
            }
        };
        let (behaviour_model, behaviour_source) = match registry.active_model(ModelKind::Behaviour)? {
            Some(stored) => (BehaviourModel::from_json(&stored.artifact)?, registry_source(&stored)),
            None => {
                let path = data_dir.join(BEHAVIOUR_MODEL_PATH);
                match path.exists() {
                    true => (BehaviourModel::load(&path)?, path.display().to_string()),
                    false => (BehaviourModel::builtin()?, "builtin".to_owned()),
                }
            }
        };
        Ok(Models { static_model, static_source, behaviour_model, behaviour_source })
    }
}

fn registry_source(stored: &StoredModel) -> String {
    format!("registry version {}", stored.info.id)
}

/// Shared, atomically replaceable models.
#[derive(Debug)]
pub struct ModelsInService {
    models: ArcSwap<Models>,
}

impl ModelsInService {
    pub fn new(models: Models) -> ModelsInService {
        ModelsInService { models: ArcSwap::from_pointee(models) }
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
