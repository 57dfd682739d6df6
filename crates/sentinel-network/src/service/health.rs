//! What someone watching the service needs to know without reading its status document: why
//! this host's connections are not watched, whether the last training failed, each model's
//! accuracy at promotion against its accuracy on analysts' labels, and how full the ingestion
//! queue is. The alert rules of `sentinel serve` read it periodically.

use super::jobs::JobState;
use super::{NetworkService, lock};

/// The service's health, as of the call.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceHealth {
    /// Why this host's connections are not watched although `collect` is on.
    pub collector_unavailable: Option<String>,
    /// The latest training job, when it failed: its id and error.
    pub failed_training: Option<(u64, String)>,
    /// Per model (then `ensemble`) of the active version, when feedback measured it.
    pub accuracies: Vec<AccuracyFigures>,
    /// The pipeline's input queue (agents' snapshots, collector events): in use and capacity.
    pub ingest_queue: Option<(usize, usize)>,
}

/// A model's accuracy then and now.
#[derive(Debug, Clone, PartialEq)]
pub struct AccuracyFigures {
    pub model: String,
    pub model_version: i64,
    /// On the validation rows when the version was trained.
    pub at_promotion: f64,
    /// On the labels of the feedback window.
    pub on_feedback: f64,
    pub labels: u64,
}

impl NetworkService {
    /// The service's health now. Cheap: reads what the service holds in memory.
    pub fn health(&self) -> ServiceHealth {
        let failed_training = lock(&self.job).as_ref().and_then(|job| match job.report().state {
            JobState::Failed { error } => Some((job.id, error)),
            _ => None,
        });
        let model = self.model.load_full();
        let feedback = self.feedback_summary();
        let accuracies = match &model {
            Some(model) => feedback
                .metrics
                .iter()
                .filter_map(|measured| {
                    let promoted =
                        model.bundle.facts.evaluations.iter().find(|e| e.model_name == measured.model)?;
                    Some(AccuracyFigures {
                        model: measured.model.clone(),
                        model_version: model.info.version,
                        at_promotion: promoted.accuracy,
                        on_feedback: measured.accuracy,
                        labels: measured.samples,
                    })
                })
                .collect(),
            None => Vec::new(),
        };
        let ingest_queue = lock(&self.pipeline)
            .as_ref()
            .map(|sender| (sender.max_capacity() - sender.capacity(), sender.max_capacity()));
        ServiceHealth {
            collector_unavailable: self.collector_unavailable.get().cloned(),
            failed_training,
            accuracies,
            ingest_queue,
        }
    }
}
