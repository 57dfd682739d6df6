//! The service's Prometheus metrics, appended to the server's `GET /metrics`.

use std::sync::atomic::Ordering;

use sentinel_netmon::CollectionHandle;

use super::{NetworkService, lock};

impl NetworkService {
    /// Appends the service's Prometheus metrics (text exposition format) to `out`, for the
    /// server's `GET /metrics`.
    pub fn write_metrics(&self, out: &mut String) {
        use std::fmt::Write;
        let writer = self.store.writer_stats();
        let dropped_by_collector = lock(&self.collection).as_ref().map_or(0, CollectionHandle::dropped);
        let counters = [
            (
                "predictions_total",
                "Items scored by the network model (live, agents, analyze).",
                self.counters.predictions.load(Ordering::Relaxed),
            ),
            (
                "anomalies_detected",
                "Scored items the network model flagged as anomalous.",
                self.counters.anomalies.load(Ordering::Relaxed),
            ),
            (
                "network_events_total",
                "Connection events from this host's collector and agents.",
                self.counters.events.load(Ordering::Relaxed),
            ),
            (
                "network_collector_dropped_total",
                "Observations the collector dropped for a slow pipeline.",
                dropped_by_collector,
            ),
            (
                "network_storage_dropped_total",
                "Results not stored because the writer's queue was full.",
                writer.dropped,
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}");
        }
        let _ = writeln!(
            out,
            "# HELP model_accuracy Accuracy of the active network model on held-out normal rows, by model.\n# TYPE model_accuracy gauge"
        );
        if let Some(model) = self.model.load_full() {
            for evaluation in &model.bundle.facts.evaluations {
                let _ = writeln!(
                    out,
                    "model_accuracy{{model=\"{}\"}} {}",
                    evaluation.model_name, evaluation.accuracy
                );
            }
        }
    }
}
