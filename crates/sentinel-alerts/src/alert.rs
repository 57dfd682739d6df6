//! What an alert is before it is stored: the rule that raised it, what it is about (the key
//! deduplicated on), how severe, a line for people and the details, and how a stored alert is
//! shown to channels and to the API.

use std::fmt;
use std::time::{Duration, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// How urgent an alert is; channels take alerts from a minimum severity up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }

    /// The name as stored; an unknown one (a future severity) reads as `warning`.
    pub fn parse(name: &str) -> Severity {
        match name {
            "info" => Severity::Info,
            "critical" => Severity::Critical,
            _ => Severity::Warning,
        }
    }

    /// ECS's `event.severity`: a number, higher is worse.
    pub fn ecs_number(self) -> u8 {
        match self {
            Severity::Info => 21,
            Severity::Warning => 47,
            Severity::Critical => 73,
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// The rules that raise alerts (docs/alerts.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rule {
    /// An anomalous connection.
    Anomaly,
    /// Too large a share of anomalies among recent predictions.
    AnomalyRate,
    /// A model's accuracy on feedback fell below its accuracy at promotion.
    AccuracyDrop,
    /// CPU, memory or a queue near its capacity.
    Overload,
    /// A malware verdict at or above the threshold.
    MalwareVerdict,
    /// A failure that needs a person.
    Failure,
    /// A test notification asked for through the API.
    Test,
}

impl Rule {
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::Anomaly => "anomaly",
            Rule::AnomalyRate => "anomaly_rate",
            Rule::AccuracyDrop => "accuracy_drop",
            Rule::Overload => "overload",
            Rule::MalwareVerdict => "malware_verdict",
            Rule::Failure => "failure",
            Rule::Test => "test",
        }
    }

    /// ECS's `event.category` of the rule's alerts.
    pub fn ecs_category(self) -> &'static str {
        match self {
            Rule::Anomaly | Rule::AnomalyRate => "network",
            Rule::MalwareVerdict => "malware",
            Rule::AccuracyDrop | Rule::Overload | Rule::Failure | Rule::Test => "host",
        }
    }

    fn parse(name: &str) -> Option<Rule> {
        [
            Rule::Anomaly,
            Rule::AnomalyRate,
            Rule::AccuracyDrop,
            Rule::Overload,
            Rule::MalwareVerdict,
            Rule::Failure,
            Rule::Test,
        ]
        .into_iter()
        .find(|rule| rule.as_str() == name)
    }
}

/// An alert a rule raises.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    pub rule: Rule,
    /// What it is about: with the rule, what is deduplicated on.
    pub key: String,
    pub severity: Severity,
    pub summary: String,
    pub details: Map<String, Value>,
}

impl Alert {
    pub fn new(rule: Rule, key: impl Into<String>, severity: Severity, summary: impl Into<String>) -> Alert {
        Alert { rule, key: key.into(), severity, summary: summary.into(), details: Map::new() }
    }

    /// The alert with `details` (a JSON object; anything else is kept under `value`).
    pub fn with_details(mut self, details: Value) -> Alert {
        self.details = match details {
            Value::Object(map) => map,
            other => Map::from_iter([("value".to_owned(), other)]),
        };
        self
    }
}

/// A stored alert as the API and the channels show it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct AlertView {
    pub id: i64,
    pub rule: String,
    /// What the alert is about; with the rule, what repeats are counted on.
    pub key: String,
    /// `info`, `warning` or `critical`.
    pub severity: String,
    pub summary: String,
    #[schema(value_type = Object)]
    pub details: Map<String, Value>,
    /// RFC 3339.
    pub raised_at: String,
    /// RFC 3339: the last repeat within the cooldown (the first raise when none).
    pub last_raised_at: String,
    /// Raises within the cooldown after the first, counted rather than sent.
    pub repeats: u64,
    pub acknowledged_at: Option<String>,
    pub acknowledged_by: Option<String>,
    pub acknowledgement_note: Option<String>,
    pub deliveries: Vec<DeliveryView>,
}

/// One channel's delivery of an alert.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct DeliveryView {
    pub channel: String,
    /// `pending` (in the outbox), `delivered` or `failed` (given up).
    pub state: String,
    pub attempts: u32,
    /// RFC 3339, while pending.
    pub next_attempt_at: Option<String>,
    pub last_error: Option<String>,
    pub delivered_at: Option<String>,
}

impl AlertView {
    pub(crate) fn rule(&self) -> Option<Rule> {
        Rule::parse(&self.rule)
    }
}

impl From<sentinel_store::AlertRecord> for AlertView {
    fn from(record: sentinel_store::AlertRecord) -> AlertView {
        AlertView {
            id: record.id,
            rule: record.rule,
            key: record.key,
            severity: record.severity,
            summary: record.summary,
            details: record.details,
            raised_at: rfc3339(record.raised_at),
            last_raised_at: rfc3339(record.last_raised_at),
            repeats: record.repeats,
            acknowledged_at: record.acknowledged_at.map(rfc3339),
            acknowledged_by: record.acknowledged_by,
            acknowledgement_note: record.acknowledgement_note,
            deliveries: record
                .deliveries
                .into_iter()
                .map(|delivery| DeliveryView {
                    channel: delivery.channel,
                    state: delivery.state.as_str().to_owned(),
                    attempts: delivery.attempts,
                    next_attempt_at: delivery.next_attempt_at.map(rfc3339),
                    last_error: delivery.last_error,
                    delivered_at: delivery.delivered_at.map(rfc3339),
                })
                .collect(),
        }
    }
}

/// Unix seconds as RFC 3339 (UTC).
pub(crate) fn rfc3339(seconds: i64) -> String {
    let time = UNIX_EPOCH + Duration::from_secs(seconds.max(0) as u64);
    humantime::format_rfc3339_seconds(time).to_string()
}
