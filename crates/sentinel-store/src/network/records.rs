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
    /// Its `network_features.id`, reserved with [`crate::NetworkStore::reserve_item_ids`] so that
    /// the result can name it (analysts' feedback refers to it) before the row is written.
    pub id: i64,
    pub observed: SystemTime,
    pub connection: Option<ConnectionRow>,
    /// The feature vector, a JSON object of feature name to value.
    pub features: serde_json::Map<String, serde_json::Value>,
    /// `live:<host>`, `agent:<host>` or `analyze`.
    pub session: String,
    /// Empty while the service learns.
    pub predictions: Vec<PredictionRow>,
}

/// What a row of `model_metrics` was measured on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricsSource {
    /// Rows held out at training (normal rows, and the labelled anomalies of the history).
    HeldOut,
    /// The predictions analysts labelled within a window ([`crate::NetworkStore::label_items`]).
    Feedback,
}

impl MetricsSource {
    /// Its name in the `source` column.
    pub fn as_str(self) -> &'static str {
        match self {
            MetricsSource::HeldOut => "held_out",
            MetricsSource::Feedback => "feedback",
        }
    }
}

/// One model's evaluation, a row of `model_metrics`. A figure that the rows measured cannot
/// give (recall without a labelled anomaly, say) is `None`.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelMetricsRow {
    pub model_name: String,
    pub measured_at: SystemTime,
    pub source: MetricsSource,
    /// Rows measured, and of those labelled anomalous.
    pub samples: u64,
    pub anomalies: u64,
    pub accuracy: f64,
    pub precision: Option<f64>,
    pub recall: Option<f64>,
    pub f1: Option<f64>,
    pub auc_roc: Option<f64>,
    pub false_positive_rate: Option<f64>,
}

/// An analyst's verdict on a stored item ([`crate::NetworkStore::label_items`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ItemLabel {
    /// The item's id (`network_features.id`, the result's `id`).
    pub id: i64,
    /// True: a true anomaly (`label = 1`); false: normal, a false positive when it was flagged.
    pub anomalous: bool,
    pub note: Option<String>,
}

/// One model's stored verdict on an item an analyst labelled.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelledPrediction {
    pub item: i64,
    /// A member model's name, or `ensemble`.
    pub model: String,
    pub score: f64,
    pub is_anomaly: bool,
    /// The analyst's verdict.
    pub anomalous: bool,
}

/// A stored feature row, for training (and, for labelled rows, for learning from feedback).
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
    /// Items an analyst labelled.
    pub feedback: u64,
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
