//! The network service's Prometheus metrics, read from its counters at each scrape:
//! `predictions_total`, `anomalies_detected`, `network_events_total`,
//! `network_collector_dropped_total`, `network_storage_dropped_total`,
//! `network_websocket_dropped_total`, `network_feedback_labelled`, and the models' figures
//! `model_accuracy`, `model_precision`, `model_recall`, `model_f1_score`, `model_roc_auc` and
//! `model_false_positive_rate`, each `{model, source}`: `source="feedback"` on analysts'
//! labelled predictions of the window (`service/feedback.rs`), `source="held_out"` on the rows
//! held out when the active model was trained.
//!
//! Counters are registered without `_total`, which the encoder appends. `anomalies_detected`
//! keeps the name users scrape, which the exposition format allows a counter only with
//! `_total`: it is exposed untyped (PromQL's `rate` and `increase` work on it all the same).

use std::sync::Arc;

use sentinel_api::prometheus_client::collector::Collector;
use sentinel_api::prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use sentinel_api::prometheus_client::metrics::MetricType;
use sentinel_api::prometheus_client::metrics::counter::ConstCounter;
use sentinel_api::prometheus_client::metrics::gauge::ConstGauge;
use sentinel_api::prometheus_client::registry::Registry;

use crate::service::{ModelFigures, NetworkService};

/// Registers the service's metrics in the process's registry.
pub fn register(service: &Arc<NetworkService>, registry: &mut Registry) {
    registry.register_collector(Box::new(NetworkMetrics(Arc::clone(service))));
}

struct NetworkMetrics(Arc<NetworkService>);

/// Reads one figure of a model's, `None` when its rows cannot give it.
type Figure = fn(&ModelFigures) -> Option<f64>;

impl std::fmt::Debug for NetworkMetrics {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("NetworkMetrics")
    }
}

impl Collector for NetworkMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let counts = self.0.metric_counts();
        for (name, help, value) in [
            ("predictions", "Items scored by the network model (live, agents, analyze).", counts.predictions),
            ("network_events", "Connection events from this host's collector and agents.", counts.events),
            (
                "network_collector_dropped",
                "Observations the collector dropped for a slow pipeline.",
                counts.collector_dropped,
            ),
            (
                "network_storage_dropped",
                "Results not stored because the writer's queue was full.",
                counts.storage_dropped,
            ),
            (
                "network_websocket_dropped",
                "WebSocket subscribers closed for falling behind the stream of results.",
                counts.websocket_dropped,
            ),
        ] {
            ConstCounter::new(value).encode(encoder.encode_descriptor(
                name,
                help,
                None,
                MetricType::Counter,
            )?)?;
        }
        let anomalies = ConstGauge::new(i64::try_from(counts.anomalies).unwrap_or(i64::MAX));
        anomalies.encode(encoder.encode_descriptor(
            "anomalies_detected",
            "Scored items the network model flagged as anomalous (a counter).",
            None,
            MetricType::Unknown,
        )?)?;
        ConstGauge::new(counts.labelled as f64).encode(encoder.encode_descriptor(
            "network_feedback_labelled",
            "Predictions of the feedback window that analysts labelled.",
            None,
            MetricType::Gauge,
        )?)?;
        let figures: [(&str, &str, Figure); 6] = [
            ("model_accuracy", "Accuracy of the network models", |figures| Some(figures.accuracy)),
            ("model_precision", "Precision of the network models", |figures| figures.precision),
            ("model_recall", "Recall (detection rate) of the network models", |figures| figures.recall),
            ("model_f1_score", "F1 score of the network models", |figures| figures.f1),
            ("model_roc_auc", "ROC AUC of the network models", |figures| figures.auc_roc),
            ("model_false_positive_rate", "False-positive rate of the network models", |figures| {
                figures.false_positive_rate
            }),
        ];
        for (name, help, figure) in figures {
            let help = format!(
                "{help}, by model: on analysts' labelled predictions of the feedback window \
                 (source=feedback) and on the rows held out at training (source=held_out)."
            );
            let mut family = encoder.encode_descriptor(name, &help, None, MetricType::Gauge)?;
            for (source, models) in [("feedback", &counts.feedback), ("held_out", &counts.held_out)] {
                for figures in models {
                    if let Some(value) = figure(figures) {
                        ConstGauge::new(value).encode(
                            family.encode_family(&[("model", figures.model.as_str()), ("source", source)])?,
                        )?;
                    }
                }
            }
        }
        Ok(())
    }
}
