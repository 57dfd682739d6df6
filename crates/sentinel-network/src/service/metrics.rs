//! The service's counters as the Prometheus collector (`crate::metrics`) reads them at each
//! scrape: one consistent read of what the pipeline, the collector and the writer counted.

use std::sync::atomic::Ordering;

use sentinel_netmon::CollectionHandle;

use super::{NetworkService, lock};

/// The service's counters as `/metrics` exposes them.
#[derive(Debug, Clone, Default)]
pub(crate) struct MetricCounts {
    pub predictions: u64,
    pub anomalies: u64,
    pub events: u64,
    pub collector_dropped: u64,
    pub storage_dropped: u64,
    pub websocket_dropped: u64,
    /// The active model's figures on held-out rows at training, per member and ensemble.
    pub held_out: Vec<ModelFigures>,
    /// The figures on analysts' labelled predictions of the window (empty below the minimum).
    pub feedback: Vec<ModelFigures>,
    /// Labelled predictions in the window.
    pub labelled: u64,
}

/// One model's figures, as `/metrics` exposes them; a figure its rows cannot give is `None`.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct ModelFigures {
    pub model: String,
    pub accuracy: f64,
    pub precision: Option<f64>,
    pub recall: Option<f64>,
    pub f1: Option<f64>,
    pub auc_roc: Option<f64>,
    pub false_positive_rate: Option<f64>,
}

impl NetworkService {
    /// The counters `/metrics` exposes, read now.
    pub(crate) fn metric_counts(&self) -> MetricCounts {
        let collector_dropped = lock(&self.collection).as_ref().map_or(0, CollectionHandle::dropped);
        let held_out = self.model.load_full().map_or_else(Vec::new, |model| {
            model
                .bundle
                .facts
                .evaluations
                .iter()
                .map(|evaluation| ModelFigures {
                    model: evaluation.model_name.clone(),
                    accuracy: evaluation.accuracy,
                    precision: evaluation.precision,
                    recall: evaluation.recall,
                    f1: evaluation.f1,
                    auc_roc: evaluation.auc_roc,
                    false_positive_rate: Some(evaluation.false_positive_rate),
                })
                .collect()
        });
        let summary = self.feedback_summary();
        let feedback = summary
            .metrics
            .into_iter()
            .map(|figures| ModelFigures {
                model: figures.model,
                accuracy: figures.accuracy,
                precision: figures.precision,
                recall: figures.recall,
                f1: figures.f1,
                auc_roc: figures.auc_roc,
                false_positive_rate: figures.false_positive_rate,
            })
            .collect();
        MetricCounts {
            predictions: self.counters.predictions.load(Ordering::Relaxed),
            anomalies: self.counters.anomalies.load(Ordering::Relaxed),
            events: self.counters.events.load(Ordering::Relaxed),
            collector_dropped,
            storage_dropped: self.store.writer_stats().dropped,
            websocket_dropped: self.counters.websocket_dropped.load(Ordering::Relaxed),
            held_out,
            feedback,
            labelled: summary.labelled as u64,
        }
    }
}
