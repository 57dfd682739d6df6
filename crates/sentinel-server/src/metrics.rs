//! The malware server's Prometheus metrics, read from its status counters at each scrape (no
//! second copy of any counter): `malware_connections_open`, `malware_connections_total{result}`,
//! `malware_requests_total{command,outcome}`, `malware_model_reloads_total{result}`,
//! `malware_refusals_total{reason}` (connections and requests refused by the listeners' limits,
//! counted by the refusal log), the stage and request times of `stage_times`
//! (`malware_request_stage_seconds{stage}`, `malware_request_seconds{command}`) and, when
//! the VirusTotal step is on, `virustotal_calls_total`, `virustotal_cache_hits_total`,
//! `virustotal_calls_saved_total` and `virustotal_errors_total{kind}`.
//!
//! Counters are registered without `_total`: the encoder appends it.

use std::sync::Arc;

use sentinel_api::prometheus_client::collector::Collector;
use sentinel_api::prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use sentinel_api::prometheus_client::metrics::MetricType;
use sentinel_api::prometheus_client::metrics::counter::ConstCounter;
use sentinel_api::prometheus_client::metrics::gauge::ConstGauge;
use sentinel_api::prometheus_client::registry::Registry;

use crate::state::Shared;

/// Registers the server's metrics in the process's registry.
pub(crate) fn register(shared: &Arc<Shared>, registry: &mut Registry) {
    registry.register_collector(Box::new(ServerMetrics(Arc::clone(shared))));
    registry.register(
        "malware_refusals",
        "Protocol connections closed before being served (not_allowed, max_connections, \
         max_connections_per_client, tls_handshake, first_byte_timeout) and requests refused \
         (max_requests_per_client, client_request_rate, frame_memory_budget), by reason.",
        shared.refusals.counter(),
    );
    shared.analyser.stage_times.register(registry);
}

#[derive(Debug)]
struct ServerMetrics(Arc<Shared>);

/// One counter series per label set, under one family.
fn counters<'a>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (Vec<(&'a str, &'a str)>, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in series {
        ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for ServerMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let report = self.0.report();
        let open = ConstGauge::new(i64::try_from(report.connections.open).unwrap_or(i64::MAX));
        open.encode(encoder.encode_descriptor(
            "malware_connections_open",
            "Protocol connections open now.",
            None,
            MetricType::Gauge,
        )?)?;
        counters(
            &mut encoder,
            "malware_connections",
            "Protocol connections, accepted or closed before being served (malware_refusals has why).",
            [
                (vec![("result", "accepted")], report.connections.accepted),
                (vec![("result", "refused")], report.connections.refused),
            ],
        )?;
        counters(
            &mut encoder,
            "malware_requests",
            "Protocol requests by command and outcome.",
            report.requests.iter().flat_map(|(command, outcomes)| {
                outcomes.iter().map(move |(outcome, count)| {
                    (vec![("command", command.as_str()), ("outcome", outcome.as_str())], *count)
                })
            }),
        )?;
        counters(
            &mut encoder,
            "malware_model_reloads",
            "Model reloads by result.",
            [
                (vec![("result", "succeeded")], report.reloads.succeeded),
                (vec![("result", "failed")], report.reloads.failed),
            ],
        )?;
        let Some(virustotal) = &report.virustotal else { return Ok(()) };
        for (name, help, value) in [
            ("virustotal_calls", "HTTP requests sent to VirusTotal.", virustotal.calls_made),
            ("virustotal_cache_hits", "Lookups answered from the results dataset.", virustotal.cache_hits),
            ("virustotal_calls_saved", "Lookups that needed no call of their own.", virustotal.calls_saved),
        ] {
            counters(&mut encoder, name, help, [(Vec::new(), value)])?;
        }
        counters(
            &mut encoder,
            "virustotal_errors",
            "Failed VirusTotal lookups by kind.",
            virustotal.client.errors.iter().map(|(kind, count)| (vec![("kind", kind.as_str())], *count)),
        )
    }
}
