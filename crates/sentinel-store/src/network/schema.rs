//! The schema of `network.db`: the four tables of SPEC §2.3 with exactly its columns, their
//! indexes, and `ingest_journal`, agents' snapshots accepted and not yet stored.
//!
//! Migration 1 is the schema the network service created itself before the store versioned it,
//! written with `IF NOT EXISTS`: such a file is adopted (its tables are already there) rather
//! than refused. Later migrations are plain, like those of `sentinel.db`: migration 2 adds
//! analysts' feedback (`network_feedback`, beside the SPEC's `network_features.label`) and says
//! where each `model_metrics` row comes from.

use crate::migrations::Schema;

/// The schema of `network.db`; its application id spells "SNTN".
pub(crate) const NETWORK: Schema = Schema {
    application_id: 0x534E_544E,
    migrations: MIGRATIONS,
    adoptable_tables: &[
        "network_connections",
        "network_features",
        "model_metrics",
        "predictions",
        "network_models",
        "ingest_journal",
    ],
};

/// The table where the service kept its models before the model registry; rows left in it are
/// moved to the registry ([`crate::NetworkStore::legacy_models`]), then it is dropped.
pub(crate) const LEGACY_MODELS_TABLE: &str = "network_models";

const MIGRATIONS: &[&str] = &[
    // 1: SPEC §2.3 and the ingest journal, as the unversioned network service created them.
    "CREATE TABLE IF NOT EXISTS network_connections (id INTEGER PRIMARY KEY AUTOINCREMENT, timestamp DATETIME NOT NULL,
      process_id INTEGER, process_name TEXT, local_ip TEXT, local_port INTEGER, remote_ip TEXT,
      remote_port INTEGER, protocol TEXT, state TEXT, bytes_sent INTEGER, bytes_received INTEGER);
    CREATE TABLE IF NOT EXISTS network_features (id INTEGER PRIMARY KEY AUTOINCREMENT, timestamp DATETIME NOT NULL,
      connection_id INTEGER REFERENCES network_connections(id), feature_vector TEXT, -- JSON
      label INTEGER DEFAULT 0, -- 0 normal, 1 anomaly
      session_id TEXT);
    CREATE TABLE IF NOT EXISTS model_metrics (id INTEGER PRIMARY KEY AUTOINCREMENT, model_name TEXT NOT NULL,
      timestamp DATETIME NOT NULL, accuracy REAL, precision_score REAL, recall REAL, f1_score REAL,
      auc_roc REAL, false_positive_rate REAL);
    CREATE TABLE IF NOT EXISTS predictions (id INTEGER PRIMARY KEY AUTOINCREMENT, timestamp DATETIME NOT NULL,
      feature_id INTEGER REFERENCES network_features(id), model_name TEXT, anomaly_score REAL,
      is_anomaly BOOLEAN, confidence REAL, explanation TEXT);
    CREATE INDEX IF NOT EXISTS network_connections_timestamp ON network_connections(timestamp);
    CREATE INDEX IF NOT EXISTS network_connections_process ON network_connections(process_name, timestamp);
    CREATE INDEX IF NOT EXISTS network_features_timestamp ON network_features(timestamp);
    CREATE INDEX IF NOT EXISTS network_features_connection ON network_features(connection_id);
    CREATE INDEX IF NOT EXISTS model_metrics_model ON model_metrics(model_name, timestamp);
    CREATE INDEX IF NOT EXISTS predictions_timestamp ON predictions(timestamp);
    CREATE INDEX IF NOT EXISTS predictions_feature ON predictions(feature_id);
    CREATE INDEX IF NOT EXISTS predictions_anomalies ON predictions(is_anomaly, timestamp);
    CREATE TABLE IF NOT EXISTS ingest_journal (id INTEGER PRIMARY KEY AUTOINCREMENT,
      received_at DATETIME NOT NULL, snapshot BLOB NOT NULL);",
    // 2: analysts' feedback. The verdict itself is `network_features.label` (SPEC §2.3); this
    // table says that a row was labelled at all (a row labelled normal has label 0, like every
    // unlabelled row), when, by whom and why. `model_metrics` rows say what they were measured
    // on: `held_out` rows at training (the rows before this migration) or `feedback`, the
    // labelled predictions of a window, and how many rows and labelled anomalies that was.
    "CREATE TABLE network_feedback (feature_id INTEGER PRIMARY KEY REFERENCES network_features(id),
      labelled_at DATETIME NOT NULL, analyst TEXT NOT NULL, note TEXT);
    CREATE INDEX network_feedback_labelled ON network_feedback(labelled_at);
    ALTER TABLE model_metrics ADD COLUMN source TEXT NOT NULL DEFAULT 'held_out';
    ALTER TABLE model_metrics ADD COLUMN samples INTEGER;
    ALTER TABLE model_metrics ADD COLUMN anomalies INTEGER;",
    // 3: the broker's records whose items are stored (scale-out mode): a record delivered again
    // (its worker died before acknowledging it) is recognised by its message id and not stored
    // twice.
    "CREATE TABLE broker_deliveries (msg_id TEXT PRIMARY KEY, stored_at DATETIME NOT NULL);",
];
