//! Training a model from the stored history as a job on the blocking pool, saving it in the
//! model registry as the new active version, and rolling back to another version.

use std::sync::Arc;
use std::time::SystemTime;

use sentinel_store::{MetricsSource, ModelMetricsRow};

use super::jobs::{JobState, TrainingJob};
use super::{ActiveModel, NetworkService, StorageError, TrainError};
use crate::features::RawFeatures;
use crate::model::{FitError, FitObserver, ModelBundle, TrainingRow};
use crate::saved_model::{self, ModelVersion, TrainingRun};

#[derive(Debug, thiserror::Error)]
enum TrainingFailure {
    #[error(transparent)]
    Fit(#[from] FitError),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl From<sentinel_store::StoreError> for TrainingFailure {
    fn from(error: sentinel_store::StoreError) -> TrainingFailure {
        TrainingFailure::Storage(error.into())
    }
}

impl NetworkService {
    /// Starts a training job from stored history, unless one is running.
    pub fn train(self: &Arc<Self>, trigger: &'static str) -> Result<Arc<TrainingJob>, TrainError> {
        let job = self.new_job(trigger)?;
        let service = Arc::clone(self);
        let running = Arc::clone(&job);
        let runtime = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            // With a broker, one replica trains at a time; the others follow its model.
            let lease = match service.training_lease(&runtime) {
                Ok(lease) => lease,
                Err(error) => {
                    tracing::info!(%error, "network model training not started");
                    running.finish(JobState::Failed { error });
                    return;
                }
            };
            if lease.is_some() {
                let before = service.model.load().as_ref().map(|model| model.info.version);
                if let Err(error) = service.follow_registry() {
                    tracing::warn!(%error, "the active network model could not be checked");
                }
                let after = service.model.load().as_ref().map(|model| model.info.version);
                if trigger != "api" && before != after {
                    let error = "another replica trained a network model meanwhile".to_owned();
                    running.finish(JobState::Failed { error });
                    return;
                }
            }
            let state = match service.run_training(&running) {
                Ok((version, rows)) => {
                    tracing::info!(version, rows, "network model trained");
                    JobState::Succeeded { version, training_rows: rows }
                }
                Err(TrainingFailure::Fit(FitError::Cancelled)) => JobState::Cancelled,
                Err(error) => {
                    tracing::warn!(%error, "network model training failed");
                    JobState::Failed { error: error.to_string() }
                }
            };
            running.finish(state);
            drop(lease);
        });
        Ok(job)
    }

    fn run_training(&self, job: &TrainingJob) -> Result<(i64, usize), TrainingFailure> {
        let history = self.store.history(self.settings.model.max_training_rows, &|| job.is_cancelled())?;
        // Rows written by an older feature set are skipped rather than failing the training.
        let rows: Vec<TrainingRow> = history
            .into_iter()
            .filter_map(|row| {
                let features = RawFeatures::from_json(&row.features).ok()?;
                Some(TrainingRow { features, process_name: row.process_name, anomalous: row.anomalous })
            })
            .collect();
        // Stopping the read early leaves a partial history: a cancellation, not too few rows.
        job.stage("fitting", 0.05)?;
        let bundle = ModelBundle::fit(&rows, &self.settings.model, job)?;
        job.stage("saving", 0.95)?;
        let run = TrainingRun {
            trigger: job.trigger,
            training_rows: rows.len(),
            settings: model_settings(&self.settings.model),
        };
        let info = saved_model::save(&self.registry, &bundle, &run, self.settings.training.versions_kept)?;
        let measured_at = SystemTime::now();
        self.store.store_metrics(
            bundle
                .facts
                .evaluations
                .iter()
                .map(|evaluation| ModelMetricsRow {
                    model_name: evaluation.model_name.clone(),
                    measured_at,
                    source: MetricsSource::HeldOut,
                    samples: evaluation.validation_rows as u64,
                    anomalies: evaluation.labelled_anomalies as u64,
                    accuracy: evaluation.accuracy,
                    precision: evaluation.precision,
                    recall: evaluation.recall,
                    f1: evaluation.f1,
                    auc_roc: evaluation.auc_roc,
                    false_positive_rate: Some(evaluation.false_positive_rate),
                })
                .collect(),
        );
        let version = info.version;
        self.model.store(Some(Arc::new(ActiveModel::trained(info, bundle))));
        // The new model learns from the feedback of the window as its predecessor had.
        if let Err(error) = self.refresh_feedback() {
            tracing::warn!(%error, "the network feedback could not be measured");
        }
        Ok((version, rows.len()))
    }

    /// Makes a stored version active: `version`, or the one before the active one.
    pub async fn rollback(self: &Arc<Self>, version: Option<i64>) -> Result<ModelVersion, StorageError> {
        let current = self.model.load_full().map(|model| model.info.version);
        let service = Arc::clone(self);
        let (info, bundle) = tokio::task::spawn_blocking(move || {
            let target = match version {
                Some(version) => version,
                None => saved_model::versions(&service.registry)?
                    .into_iter()
                    .map(|info| info.version)
                    .find(|&candidate| current.is_none_or(|current| candidate < current))
                    .ok_or(StorageError::NoSuchVersion(current.unwrap_or(0) - 1))?,
            };
            let reason = match version {
                Some(_) => "rollback to a chosen version",
                None => "rollback to the version before the active one",
            };
            saved_model::activate(&service.registry, target, reason)
        })
        .await
        .map_err(|error| StorageError::Task(error.to_string()))??;
        self.model.store(Some(Arc::new(ActiveModel::trained(info.clone(), bundle))));
        let service = Arc::clone(self);
        match tokio::task::spawn_blocking(move || service.refresh_feedback()).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => tracing::warn!(%error, "the network feedback could not be measured"),
            Err(error) => tracing::error!(%error, "measuring the network feedback failed"),
        }
        Ok(info)
    }
}

/// The settings a fit depends on, as the registry records them.
fn model_settings(settings: &crate::settings::ModelSettings) -> serde_json::Value {
    serde_json::json!({
        "false_positive_rate": settings.false_positive_rate,
        "combination": format!("{:?}", settings.combination),
        "max_training_rows": settings.max_training_rows,
        "validation_fraction": settings.validation_fraction,
        "isolation_forest_trees": settings.isolation_forest_trees,
        "lof_max_rows": settings.lof_max_rows,
        "lof_neighbors": settings.lof_neighbors,
        "svm_max_rows": settings.svm_max_rows,
        "svm_nu": settings.svm_nu,
        "weighting": settings.weighting,
        "beyond_range": settings.beyond_range,
        "seed": settings.seed,
    })
}
