//! Network models in the model registry of `sentinel-store`: the bundle's artifact format (one
//! JSON document holding the facts and the fitted preprocessing and ensemble in
//! `sentinel-anomaly`'s versioned, validated format), saving a trained model as a new active
//! version, loading, activating (rollback) and listing versions, and adopting the models an
//! older service kept in `network.db`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sentinel_anomaly::{Ensemble, Preprocessor};
use sentinel_store::{
    DecisionOutcome, LegacyNetworkModel, ModelKind, ModelVersionInfo, NetworkStore, NewDecision,
    NewModelVersion, Provenance, Store, StoredModel,
};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::model::{ModelBundle, ModelFacts};
use crate::service::StorageError;

/// Names the artifact format; checked when loading.
const FORMAT: &str = "sentinel-network-model";
const FORMAT_VERSION: u32 = 1;

/// A stored model version, without its fitted objects, as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ModelVersion {
    /// The registry's id of the version.
    pub version: i64,
    /// RFC 3339.
    pub created_at: String,
    pub training_rows: u64,
    pub active: bool,
}

impl ModelVersion {
    fn from_info(info: &ModelVersionInfo) -> ModelVersion {
        let registered = UNIX_EPOCH + Duration::from_secs(u64::try_from(info.created_at).unwrap_or(0));
        // An adopted model was trained before it was registered: its training time counts (the
        // retraining schedule runs from it).
        let trained = info.provenance.data["trained_at"]
            .as_str()
            .and_then(|text| humantime::parse_rfc3339_weak(text).ok())
            .unwrap_or(registered);
        ModelVersion {
            version: info.id,
            created_at: humantime::format_rfc3339_seconds(trained).to_string(),
            training_rows: info.provenance.data["training_rows"].as_u64().unwrap_or(0),
            active: info.active,
        }
    }

    /// When it was trained.
    pub(crate) fn created(&self) -> Option<SystemTime> {
        humantime::parse_rfc3339(&self.created_at).ok()
    }
}

#[derive(Serialize)]
struct ArtifactOut<'a> {
    format: &'static str,
    format_version: u32,
    facts: &'a RawValue,
    preprocessor: &'a RawValue,
    ensemble: &'a RawValue,
}

/// Read first, so that another format is named as such rather than as a missing field.
#[derive(Deserialize)]
struct ArtifactHeader {
    format: String,
    format_version: u32,
}

#[derive(Deserialize)]
struct ArtifactIn<'a> {
    facts: ModelFacts,
    #[serde(borrow)]
    preprocessor: &'a RawValue,
    #[serde(borrow)]
    ensemble: &'a RawValue,
}

fn raw(json: Vec<u8>) -> Result<Box<RawValue>, String> {
    let text = String::from_utf8(json).map_err(|error| error.to_string())?;
    RawValue::from_string(text).map_err(|error| error.to_string())
}

/// The artifact of already serialised parts.
fn assemble(facts: &RawValue, preprocessor: &RawValue, ensemble: &RawValue) -> Result<Vec<u8>, String> {
    serde_json::to_vec(&ArtifactOut {
        format: FORMAT,
        format_version: FORMAT_VERSION,
        facts,
        preprocessor,
        ensemble,
    })
    .map_err(|error| error.to_string())
}

/// The bundle as the registry stores it.
pub(crate) fn encode(bundle: &ModelBundle) -> Result<Vec<u8>, String> {
    let mut preprocessor = Vec::new();
    sentinel_anomaly::save(&bundle.preprocessor, &mut preprocessor).map_err(|error| error.to_string())?;
    let mut ensemble = Vec::new();
    sentinel_anomaly::save(&bundle.ensemble, &mut ensemble).map_err(|error| error.to_string())?;
    let facts = serde_json::to_vec(&bundle.facts).map_err(|error| error.to_string())?;
    assemble(&raw(facts)?, &raw(preprocessor)?, &raw(ensemble)?)
}

/// Reads an artifact written by [`encode`], refusing another format or version.
pub(crate) fn decode(bytes: &[u8]) -> Result<ModelBundle, String> {
    let header: ArtifactHeader =
        serde_json::from_slice(bytes).map_err(|error| format!("not a network model: {error}"))?;
    if header.format != FORMAT || header.format_version != FORMAT_VERSION {
        return Err(format!(
            "format {:?} version {}, expected {FORMAT:?} version {FORMAT_VERSION}",
            header.format.chars().take(40).collect::<String>(),
            header.format_version
        ));
    }
    let artifact: ArtifactIn<'_> =
        serde_json::from_slice(bytes).map_err(|error| format!("a damaged network model: {error}"))?;
    let preprocessor: Preprocessor =
        sentinel_anomaly::load(artifact.preprocessor.get().as_bytes()).map_err(|error| error.to_string())?;
    let ensemble: Ensemble =
        sentinel_anomaly::load(artifact.ensemble.get().as_bytes()).map_err(|error| error.to_string())?;
    Ok(ModelBundle { preprocessor, ensemble, facts: artifact.facts })
}

/// A loaded version: its registry entry and the fitted model.
pub(crate) fn load(stored: StoredModel) -> Result<(ModelVersion, ModelBundle), StorageError> {
    let bundle =
        decode(&stored.artifact).map_err(|reason| StorageError::Model { version: stored.info.id, reason })?;
    Ok((ModelVersion::from_info(&stored.info), bundle))
}

/// What a training was run on, for the registry.
pub(crate) struct TrainingRun<'a> {
    pub trigger: &'a str,
    pub training_rows: usize,
    /// The settings the fit read (`[network.model]`), as JSON.
    pub settings: serde_json::Value,
}

/// Saves a trained model as a new version, makes it the active one and drops the artifacts of
/// versions beyond the newest `keep`.
pub(crate) fn save(
    registry: &Store,
    bundle: &ModelBundle,
    run: &TrainingRun<'_>,
    keep: usize,
) -> Result<ModelVersion, StorageError> {
    let artifact = encode(bundle).map_err(|reason| StorageError::Model { version: 0, reason })?;
    let evaluations = serde_json::to_value(&bundle.facts.evaluations).unwrap_or_default();
    let info = registry.register_model(NewModelVersion {
        kind: ModelKind::Network,
        label: String::new(),
        provenance: Provenance {
            trainer: concat!("sentinel-network ", env!("CARGO_PKG_VERSION")).to_owned(),
            command: format!("network training ({})", run.trigger),
            data: serde_json::json!({
                "history": sentinel_store::NETWORK_DATABASE_FILE,
                "training_rows": run.training_rows,
                "settings": run.settings,
            }),
        },
        evaluation: Some(evaluations.clone()),
        artifact,
    })?;
    let decision = registry.decide_model(NewDecision {
        kind: ModelKind::Network,
        version_id: info.id,
        outcome: DecisionOutcome::Activated,
        reason: format!("trained ({})", run.trigger),
        figures: evaluations,
    })?;
    registry.prune_model_versions(ModelKind::Network, keep)?;
    tracing::debug!(version = info.id, decision = decision.id, "network model saved and activated");
    Ok(ModelVersion { active: true, ..ModelVersion::from_info(&info) })
}

/// The active version, if any.
pub(crate) fn active(registry: &Store) -> Result<Option<(ModelVersion, ModelBundle)>, StorageError> {
    registry.active_model(ModelKind::Network)?.map(load).transpose()
}

/// Makes `version` the active one (a rollback) and returns it loaded.
pub(crate) fn activate(
    registry: &Store,
    version: i64,
    reason: &str,
) -> Result<(ModelVersion, ModelBundle), StorageError> {
    let stored =
        registry.stored_model(ModelKind::Network, version)?.ok_or(StorageError::NoSuchVersion(version))?;
    // Loaded before activating: a version that cannot be used is refused, not put in service.
    let (info, bundle) = load(stored)?;
    registry.decide_model(NewDecision {
        kind: ModelKind::Network,
        version_id: version,
        outcome: DecisionOutcome::Activated,
        reason: reason.to_owned(),
        figures: serde_json::Value::Null,
    })?;
    Ok((ModelVersion { active: true, ..info }, bundle))
}

/// The versions that can still be activated, newest first.
pub(crate) fn versions(registry: &Store) -> Result<Vec<ModelVersion>, StorageError> {
    Ok(registry
        .model_versions(ModelKind::Network)?
        .iter()
        .filter(|info| info.available)
        .map(ModelVersion::from_info)
        .collect())
}

/// How an adopted version says where it came from.
const ADOPTED_COMMAND: &str = "adopted from network.db";

/// Moves the models an older service kept in `network.db` into the registry (the active one
/// stays active), then drops their table. Running it again after a crash half-way registers
/// nothing twice: versions already adopted are recognised by their `network.db` version.
pub(crate) fn adopt_legacy(registry: &Store, network: &NetworkStore) -> Result<usize, StorageError> {
    let legacy = network.legacy_models()?;
    let already: Vec<i64> = if legacy.is_empty() {
        Vec::new()
    } else {
        registry
            .model_versions(ModelKind::Network)?
            .iter()
            .filter(|info| info.provenance.command == ADOPTED_COMMAND)
            .filter_map(|info| info.provenance.data["network_db_version"].as_i64())
            .collect()
    };
    let mut adopted = 0;
    for model in legacy.into_iter().filter(|model| !already.contains(&model.version)) {
        adopt_one(registry, model)?;
        adopted += 1;
    }
    network.drop_legacy_models()?;
    if adopted > 0 {
        tracing::info!(adopted, "network models moved from network.db to the model registry");
    }
    Ok(adopted)
}

fn adopt_one(registry: &Store, model: LegacyNetworkModel) -> Result<(), StorageError> {
    let version = model.version;
    let corrupt = |reason: String| StorageError::Model { version, reason };
    let artifact = assemble(
        &RawValue::from_string(model.facts).map_err(|error| corrupt(error.to_string()))?,
        &raw(model.preprocessor).map_err(corrupt)?,
        &raw(model.ensemble).map_err(corrupt)?,
    )
    .map_err(corrupt)?;
    // One that no longer loads is logged and left behind rather than blocking the start.
    let bundle = match decode(&artifact) {
        Ok(bundle) => bundle,
        Err(reason) => {
            tracing::error!(version, reason, "a network model of network.db cannot be loaded; not adopted");
            return Ok(());
        }
    };
    let info = registry.register_model(NewModelVersion {
        kind: ModelKind::Network,
        label: String::new(),
        provenance: Provenance {
            trainer: "sentinel-network (before the model registry)".to_owned(),
            command: ADOPTED_COMMAND.to_owned(),
            data: serde_json::json!({
                "training_rows": model.training_rows,
                "trained_at": model.created_at,
                "network_db_version": version,
            }),
        },
        evaluation: serde_json::to_value(&bundle.facts.evaluations).ok(),
        artifact,
    })?;
    if model.active {
        registry.decide_model(NewDecision {
            kind: ModelKind::Network,
            version_id: info.id,
            outcome: DecisionOutcome::Activated,
            reason: format!("the active model (version {version}) of network.db before the model registry"),
            figures: serde_json::Value::Null,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use sentinel_store::StoreSettings;

    use super::*;
    use crate::model::tests::fitted_bundle;

    fn run(rows: usize) -> TrainingRun<'static> {
        TrainingRun { trigger: "test", training_rows: rows, settings: serde_json::json!({"seed": 7}) }
    }

    #[test]
    fn a_bundle_survives_the_artifact_format_and_another_format_is_refused() {
        let bundle = fitted_bundle();
        let decoded = decode(&encode(&bundle).unwrap()).unwrap();
        assert_eq!(decoded.facts.medians, bundle.facts.medians);
        assert_eq!(decoded.thresholds(), bundle.thresholds());
        let features = crate::model::tests::fitted_rows_example();
        let mut buffer = Vec::new();
        let (before, after) = (
            bundle.judge(&features, Some("webclient"), &mut buffer).unwrap(),
            decoded.judge(&features, Some("webclient"), &mut buffer).unwrap(),
        );
        assert_eq!(before.score, after.score);

        let other = serde_json::json!({"format": "something-else", "format_version": 1, "facts": {},
            "preprocessor": {}, "ensemble": {}});
        let refused = decode(other.to_string().as_bytes()).err().expect("another format is refused");
        assert!(refused.contains("something-else"), "{refused}");
        assert!(decode(b"not json").is_err());
    }

    #[test]
    fn saves_activate_prune_and_roll_back_through_the_registry() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Store::open(dir.path(), StoreSettings::default()).unwrap();
        assert!(active(&registry).unwrap().is_none());
        let bundle = fitted_bundle();
        let first = save(&registry, &bundle, &run(600), 2).unwrap();
        assert!(first.active);
        assert_eq!(first.training_rows, 600);
        // Another bundle (other facts), saved twice more with two versions kept.
        let mut second_bundle = fitted_bundle();
        second_bundle.facts.unseen_rarity += 1.0;
        let second = save(&registry, &second_bundle, &run(700), 2).unwrap();
        let mut third_bundle = fitted_bundle();
        third_bundle.facts.unseen_rarity += 2.0;
        let third = save(&registry, &third_bundle, &run(800), 2).unwrap();
        let (info, _) = active(&registry).unwrap().unwrap();
        assert_eq!(info.version, third.version);
        let kept: Vec<i64> = versions(&registry).unwrap().iter().map(|version| version.version).collect();
        assert_eq!(kept, [third.version, second.version], "the first one's artifact was pruned");
        assert!(matches!(
            activate(&registry, first.version, "rollback"),
            Err(StorageError::NoSuchVersion(_))
        ));

        let (rolled_back, bundle) = activate(&registry, second.version, "rollback").unwrap();
        assert!(rolled_back.active);
        assert_eq!(bundle.facts.unseen_rarity, second_bundle.facts.unseen_rarity);
        assert_eq!(active(&registry).unwrap().unwrap().0.version, second.version);
        let decisions = registry.model_decisions(ModelKind::Network).unwrap();
        assert_eq!(decisions.last().unwrap().reason, "rollback");
        assert_eq!(decisions.last().unwrap().previous_id, Some(third.version));
    }

    #[test]
    fn a_model_kept_in_network_db_before_the_registry_is_adopted_and_stays_active() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Store::open(dir.path(), StoreSettings::default()).unwrap();
        let bundle = fitted_bundle();
        let (mut preprocessor, mut ensemble) = (Vec::new(), Vec::new());
        sentinel_anomaly::save(&bundle.preprocessor, &mut preprocessor).unwrap();
        sentinel_anomaly::save(&bundle.ensemble, &mut ensemble).unwrap();
        let legacy = |version, active| LegacyNetworkModel {
            version,
            created_at: "2026-12-01T00:00:00Z".to_owned(),
            training_rows: 600,
            active,
            facts: serde_json::to_string(&bundle.facts).unwrap(),
            preprocessor: preprocessor.clone(),
            ensemble: ensemble.clone(),
        };
        adopt_one(&registry, legacy(3, false)).unwrap();
        adopt_one(&registry, legacy(4, true)).unwrap();
        // One that cannot be loaded is left behind, not put in service.
        adopt_one(&registry, LegacyNetworkModel { ensemble: b"{}".to_vec(), ..legacy(5, true) }).unwrap();
        let (active_version, loaded) = active(&registry).unwrap().unwrap();
        assert_eq!(active_version.training_rows, 600);
        assert_eq!(active_version.created_at, "2026-12-01T00:00:00Z", "trained then, not when adopted");
        assert_eq!(loaded.thresholds(), bundle.thresholds());
        let adopted = registry.model_versions(ModelKind::Network).unwrap();
        assert_eq!(adopted.len(), 2);
        assert_eq!(adopted[0].provenance.data["network_db_version"], 4);
        assert!(adopted[0].active && !adopted[1].active);
    }
}
