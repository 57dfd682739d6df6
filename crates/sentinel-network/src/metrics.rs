//! The network service's Prometheus metrics, read from its counters at each scrape:
//! `predictions_total`, `anomalies_detected`, `network_events_total`,
//! `network_collector_dropped_total`, `network_storage_dropped_total`,
//! `network_websocket_dropped_total` and
//! `model_accuracy{model}`.
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

use crate::service::NetworkService;

/// Registers the service's metrics in the process's registry.
pub fn register(service: &Arc<NetworkService>, registry: &mut Registry) {
    registry.register_collector(Box::new(NetworkMetrics(Arc::clone(service))));
}

struct NetworkMetrics(Arc<NetworkService>);

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
        let mut accuracy = encoder.encode_descriptor(
            "model_accuracy",
            "Accuracy of the active network model on held-out normal rows, by model.",
            None,
            MetricType::Gauge,
        )?;
        for (model, value) in &counts.accuracy {
            ConstGauge::new(*value).encode(accuracy.encode_family(&[("model", model.as_str())])?)?;
        }
        Ok(())
    }
}
