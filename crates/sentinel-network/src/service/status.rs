//! The status document of `GET /api/v1/models/status`: state, active model, warm-up progress,
//! versions, collector, storage and prediction counters, and what analysts' feedback measured.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use super::jobs::JobState;
use super::{NetworkService, StorageError, lock, schedule};
use crate::saved_model;

impl NetworkService {
    /// The status document of `/api/v1/models/status`.
    pub async fn status(self: &Arc<Self>) -> Result<serde_json::Value, StorageError> {
        let service = Arc::clone(self);
        let (extent, versions, pending) = tokio::task::spawn_blocking(move || -> Result<_, StorageError> {
            Ok((
                service.store.history_extent()?,
                saved_model::versions(&service.registry)?,
                service.store.journalled_count()?,
            ))
        })
        .await
        .map_err(|error| StorageError::Task(error.to_string()))??;
        let model = self.model.load_full();
        let job = lock(&self.job).as_ref().map(|job| job.report());
        let now = SystemTime::now();
        let collected_secs = extent
            .oldest
            .and_then(|oldest| now.duration_since(oldest).ok())
            .map_or(0, |elapsed| elapsed.as_secs());
        let warmup = &self.settings.training;
        let state = match (&model, &job) {
            (_, Some(job)) if matches!(job.state, JobState::Running) => "training",
            (Some(_), _) => "ready",
            (None, _) => "learning",
        };
        let collection = lock(&self.collection).as_ref().map(|handle| {
            serde_json::json!({
                "collections": handle.collections(),
                "failures": handle.failures(),
                "dropped": handle.dropped(),
            })
        });
        let writer = self.store.writer_stats();
        let min_rows = self.settings.model.min_training_rows as u64;
        Ok(serde_json::json!({
            "state": state,
            "model": model.as_ref().map(|model| serde_json::json!({
                "version": model.info.version,
                "trained_at": model.info.created_at,
                "training_rows": model.info.training_rows,
                "combination": self.settings.model.combination,
                "target_false_positive_rate": self.settings.model.false_positive_rate,
                "thresholds": model.bundle.thresholds(),
                "metrics": model.bundle.facts.evaluations,
                "learned_from_feedback": model.adapted.as_ref().map(|adapted| serde_json::json!({
                    "labels": adapted.labels,
                    "anomalies": adapted.anomalies,
                })),
            })),
            "feedback": self.feedback_summary(),
            "warmup": {
                "required_secs": warmup.warmup.as_secs(),
                "collected_secs": collected_secs,
                "rows": extent.rows,
                "required_rows": min_rows,
                "complete": model.is_some()
                    || schedule::warmed_up(&extent, warmup.warmup, min_rows, now),
            },
            "retrain_every_hours": warmup.retrain_every.as_secs() / 3600,
            "training_job": job,
            "versions": versions,
            "collector": {
                "enabled": self.settings.collect,
                "unavailable": self.collector_unavailable.get(),
                "loop": collection,
            },
            "storage": {
                "written": writer.written,
                "dropped": writer.dropped,
                "failed": writer.failed,
                "pending_snapshots": pending,
            },
            "events_total": self.counters.events.load(Ordering::Relaxed),
            "predictions_total": self.counters.predictions.load(Ordering::Relaxed),
            "anomalies_total": self.counters.anomalies.load(Ordering::Relaxed),
        }))
    }
}
