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
    /// Accuracy of the active model's members and ensemble on held-out rows, by model name.
    pub accuracy: Vec<(String, f64)>,
}

impl NetworkService {
    /// The counters `/metrics` exposes, read now.
    pub(crate) fn metric_counts(&self) -> MetricCounts {
        let collector_dropped = lock(&self.collection).as_ref().map_or(0, CollectionHandle::dropped);
        let accuracy = self.model.load_full().map_or_else(Vec::new, |model| {
            model
                .bundle
                .facts
                .evaluations
                .iter()
                .map(|evaluation| (evaluation.model_name.clone(), evaluation.accuracy))
                .collect()
        });
        MetricCounts {
            predictions: self.counters.predictions.load(Ordering::Relaxed),
            anomalies: self.counters.anomalies.load(Ordering::Relaxed),
            events: self.counters.events.load(Ordering::Relaxed),
            collector_dropped,
            storage_dropped: self.store.writer_stats().dropped,
            websocket_dropped: self.counters.websocket_dropped.load(Ordering::Relaxed),
            accuracy,
        }
    }
}
