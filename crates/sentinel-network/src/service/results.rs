//! What the service hands out and stores for each scored item: the result streamed on
//! `/ws/realtime` and returned by the API, and the store's rows made from it.

use std::time::SystemTime;

use sentinel_netmon::{ConnectionChange, ConnectionRecord};
use sentinel_store::{ConnectionRow, PredictionRow, ScoredItem};
use serde::Serialize;

use crate::features::RawFeatures;
use crate::model::Verdict;

/// Where a result comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// This host's collectors.
    Live,
    /// A snapshot posted to `/api/v1/ingest`.
    Agent,
    /// A batch posted to `/api/v1/analyze`.
    Analyze,
}

impl Source {
    fn as_str(self) -> &'static str {
        match self {
            Source::Live => "live",
            Source::Agent => "agent",
            Source::Analyze => "analyze",
        }
    }
}

/// The connection a result is about.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectionSummary {
    pub host: String,
    pub pid: Option<u32>,
    pub process_name: Option<String>,
    pub local: String,
    pub remote: String,
    pub protocol: sentinel_netmon::Protocol,
    pub state: sentinel_netmon::SocketState,
    pub change: Option<ConnectionChange>,
}

/// One scored item, as streamed on `/ws/realtime` and returned by the API.
#[derive(Debug, Clone, Serialize)]
pub struct DetectionResult {
    pub source: Source,
    pub observed_at: String,
    pub model_version: i64,
    pub connection: Option<ConnectionSummary>,
    #[serde(flatten)]
    pub verdict: Verdict,
}

impl DetectionResult {
    pub(crate) fn process_name(&self) -> Option<&str> {
        self.connection.as_ref().and_then(|connection| connection.process_name.as_deref())
    }
}

pub(super) fn summary(record: &ConnectionRecord, change: Option<ConnectionChange>) -> ConnectionSummary {
    ConnectionSummary {
        host: record.host.clone(),
        pid: record.pid,
        process_name: record.process_name.clone(),
        local: std::net::SocketAddr::new(record.local_ip, record.local_port).to_string(),
        remote: std::net::SocketAddr::new(record.remote_ip, record.remote_port).to_string(),
        protocol: record.protocol,
        state: record.state,
        change,
    }
}

/// The item to store for a connection record (or a posted feature vector, without `record`).
pub(super) fn scored_item(
    observed: SystemTime,
    record: Option<&ConnectionRecord>,
    features: &RawFeatures,
    source: Source,
    verdict: Option<&Verdict>,
) -> ScoredItem {
    let session = match (source, record) {
        (Source::Analyze, _) | (_, None) => source.as_str().to_owned(),
        (_, Some(record)) => format!("{}:{}", source.as_str(), record.host),
    };
    ScoredItem {
        observed,
        connection: record.map(connection_row),
        features: match features.to_json() {
            serde_json::Value::Object(object) => object,
            _ => serde_json::Map::new(),
        },
        session,
        predictions: verdict.map(predictions_of).unwrap_or_default(),
    }
}

fn connection_row(record: &ConnectionRecord) -> ConnectionRow {
    // The wire names of the protocol and state (`tcp`, `ESTABLISHED`), as agents send them.
    let name = |value: serde_json::Result<serde_json::Value>| {
        value.ok().and_then(|value| value.as_str().map(str::to_owned))
    };
    ConnectionRow {
        timestamp: record.timestamp,
        process_id: record.pid,
        process_name: record.process_name.clone(),
        local_ip: record.local_ip,
        local_port: record.local_port,
        remote_ip: record.remote_ip,
        remote_port: record.remote_port,
        protocol: name(serde_json::to_value(record.protocol)),
        state: name(serde_json::to_value(record.state)),
        bytes_sent: record.bytes_sent,
        bytes_received: record.bytes_received,
    }
}

/// The `predictions` rows of a verdict: one per model, then the ensemble's with the explanation.
fn predictions_of(verdict: &Verdict) -> Vec<PredictionRow> {
    let mut rows: Vec<PredictionRow> = verdict
        .models
        .iter()
        .map(|model| PredictionRow {
            model: model.model.to_owned(),
            score: model.score,
            is_anomaly: model.is_anomaly,
            confidence: verdict.confidence,
            explanation: None,
        })
        .collect();
    rows.push(PredictionRow {
        model: "ensemble".to_owned(),
        score: verdict.score,
        is_anomaly: verdict.is_anomaly,
        confidence: verdict.confidence,
        explanation: serde_json::to_string(&verdict.explanation).ok(),
    });
    rows
}
