//! What the network part of the store takes and returns: plain values, not rows, so that the
//! network service never sees SQL and another backend can take the same values.

use std::time::SystemTime;

/// One connection as stored in `network_connections`.
///
/// Its addresses are text in the form `[privacy] ip_storage` gives them (a prefix-preserving
/// pseudonym, an `h:` HMAC pseudonym, or the address itself): the caller pseudonymises them
/// (`sentinel-privacy`), so that the store never holds more than the setting allows.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectionRow {
    /// When the collector or agent observed it.
    pub timestamp: SystemTime,
    pub process_id: Option<u32>,
    pub process_name: Option<String>,
    pub local_ip: String,
    pub local_port: u16,
    pub remote_ip: String,
    pub remote_port: u16,
    /// `tcp`, `udp`, …, as the record names it.
    pub protocol: Option<String>,
    /// `ESTABLISHED`, `LISTEN`, …, as the record names it.
    pub state: Option<String>,
    pub bytes_sent: Option<u64>,
    pub bytes_received: Option<u64>,
}

/// One model's verdict on an item, a row of `predictions`.
#[derive(Debug, Clone, PartialEq)]
pub struct PredictionRow {
    /// A member model's name, or `ensemble`.
    pub model: String,
    pub score: f64,
    pub is_anomaly: bool,
    pub confidence: f64,
    /// JSON, on the ensemble's row.
    pub explanation: Option<String>,
}

/// One scored (or, while the service learns, unscored) item: the connection it is about, when it
/// came from one, its feature vector and the verdicts.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoredItem {
    pub observed: SystemTime,
    pub connection: Option<ConnectionRow>,
    /// The feature vector, a JSON object of feature name to value.
    pub features: serde_json::Map<String, serde_json::Value>,
    /// `live:<host>`, `agent:<host>` or `analyze`.
    pub session: String,
    /// Empty while the service learns.
    pub predictions: Vec<PredictionRow>,
}

/// One model's evaluation, a row of `model_metrics`.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelMetricsRow {
    pub model_name: String,
    pub measured_at: SystemTime,
    pub accuracy: f64,
    pub precision: Option<f64>,
    pub recall: Option<f64>,
    pub f1: Option<f64>,
    pub auc_roc: Option<f64>,
    pub false_positive_rate: f64,
}

/// A stored feature row, for training.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryRow {
    pub features: serde_json::Map<String, serde_json::Value>,
    /// The process of the row's connection, when it came from one.
    pub process_name: Option<String>,
    /// Whether an analyst labelled the row anomalous (`label = 1`).
    pub anomalous: bool,
}

/// How much history is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryExtent {
    /// Feature rows.
    pub rows: u64,
    /// The oldest feature row's time.
    pub oldest: Option<SystemTime>,
}

/// Rows per table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct NetworkRowCounts {
    pub connections: u64,
    pub features: u64,
    pub predictions: u64,
    pub model_metrics: u64,
    /// Agents' snapshots accepted and not yet stored.
    pub journalled_snapshots: u64,
}

/// A network model saved by the service before the model registry existed.
#[derive(Debug, Clone, PartialEq)]
pub struct LegacyNetworkModel {
    pub version: i64,
    /// RFC 3339.
    pub created_at: String,
    pub training_rows: u64,
    pub active: bool,
    /// JSON.
    pub facts: String,
    pub preprocessor: Vec<u8>,
    pub ensemble: Vec<u8>,
}

/// The results writer's counters since it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WriterStats {
    /// Items written (a snapshot counts its items).
    pub written: u64,
    /// Items dropped because the queue was full.
    pub dropped: u64,
    /// Items whose transaction failed.
    pub failed: u64,
}
