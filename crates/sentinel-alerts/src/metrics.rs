//! The alert service's Prometheus metrics: `alerts_raised_total{rule}` (new alerts, not repeats
//! within the cooldown) and `alert_deliveries_total{channel, outcome}` (each try: `delivered`,
//! `retry`, `failed` when given up), so that a channel failing to deliver shows on a dashboard
//! before anyone misses an alert; `alerts_held_back_total{rule}` counts the new alerts recorded
//! but not sent because they came faster than `[alerts] max_per_minute`.

use sentinel_api::prometheus_client::metrics::counter::Counter;
use sentinel_api::prometheus_client::metrics::family::Family;
use sentinel_api::prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

#[derive(Debug, Clone, Default)]
pub(crate) struct AlertMetrics {
    raised: Family<Labels, Counter>,
    held_back: Family<Labels, Counter>,
    deliveries: Family<Labels, Counter>,
}

impl AlertMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "alerts_raised",
            "New alerts raised, by rule (repeats within the cooldown are not counted).",
            self.raised.clone(),
        );
        registry.register(
            "alerts_held_back",
            "New alerts recorded but not sent, by rule: they came faster than [alerts] max_per_minute.",
            self.held_back.clone(),
        );
        registry.register(
            "alert_deliveries",
            "Alert delivery tries, by channel and outcome (delivered, retry, failed: given up).",
            self.deliveries.clone(),
        );
    }

    pub fn raised(&self, rule: &str) {
        self.raised.get_or_create(&vec![("rule", rule.to_owned())]).inc();
    }

    pub fn held_back(&self, rule: &str) {
        self.held_back.get_or_create(&vec![("rule", rule.to_owned())]).inc();
    }

    pub fn delivery(&self, channel: &str, outcome: &'static str) {
        self.deliveries
            .get_or_create(&vec![("channel", channel.to_owned()), ("outcome", outcome.to_owned())])
            .inc();
    }
}
