//! Storage of the network service in its own SQLite file, `<data_dir>/network.db` (WAL).
//!
//! SQLite allows one writer per file: the network tables get a file of their own so that their
//! high-volume writes never make the malware analyses wait for the lock. The four tables are
//! exactly those of SPEC §2.3, plus indexes and `network_models`, the versioned model store.
//!
//! Results are written by one writer thread in batches (one transaction per batch), fed by a
//! bounded queue: the live path never waits for the disk, and when the disk falls behind, its new
//! items are dropped and counted rather than piling up in memory (an agent's accepted snapshot
//! waits instead). The writer also applies the
//! retention policy. Reads (training history, model versions) use their own connections, which
//! WAL lets run beside the writer.
//!
//! An agent's snapshot is accepted only once it is in `ingest_journal` ([`Journal`]); the writer
//! deletes it in the transaction that stores its results, and the service replays what is left
//! at start-up, so a snapshot answered 202 survives a crash or a restart before it is stored.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use rusqlite::{Connection, OptionalExtension, params};
use sentinel_anomaly::{Ensemble, Preprocessor};
use sentinel_netmon::ConnectionRecord;
use serde::Serialize;

use crate::features::RawFeatures;
use crate::model::{ModelBundle, ModelFacts, TrainingRow};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS network_connections (id INTEGER PRIMARY KEY AUTOINCREMENT, timestamp DATETIME NOT NULL,
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
CREATE TABLE IF NOT EXISTS network_models (version INTEGER PRIMARY KEY AUTOINCREMENT,
  created_at DATETIME NOT NULL, training_rows INTEGER NOT NULL, active INTEGER NOT NULL DEFAULT 0,
  facts TEXT NOT NULL, preprocessor BLOB NOT NULL, ensemble BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS ingest_journal (id INTEGER PRIMARY KEY AUTOINCREMENT,
  received_at DATETIME NOT NULL, snapshot BLOB NOT NULL);
";

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("network database {path}: {source}")]
    Open { path: PathBuf, source: rusqlite::Error },
    #[error("network database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("stored model {version} is unusable: {reason}")]
    Model { version: i64, reason: String },
    #[error("no model version {0}")]
    NoSuchVersion(i64),
}

pub(crate) fn open(path: &Path) -> Result<Connection, StoreError> {
    let connection =
        Connection::open(path).map_err(|source| StoreError::Open { path: path.to_owned(), source })?;
    connection.pragma_update(None, "journal_mode", "WAL")?;
    connection.pragma_update(None, "synchronous", "NORMAL")?;
    connection.busy_timeout(Duration::from_secs(5))?;
    Ok(connection)
}

/// Agents' snapshots accepted and not yet stored with their results, in arrival order.
pub(crate) struct Journal {
    connection: std::sync::Mutex<Connection>,
}

impl Journal {
    pub(crate) fn open(path: &Path) -> Result<Journal, StoreError> {
        Ok(Journal { connection: std::sync::Mutex::new(open(path)?) })
    }

    fn connection(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.connection.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Writes a snapshot's JSON (blocking; committed when this returns) and returns its id.
    pub(crate) fn append(&self, snapshot: &[u8]) -> Result<i64, StoreError> {
        let connection = self.connection();
        connection.execute(
            "INSERT INTO ingest_journal (received_at, snapshot) VALUES (?1, ?2)",
            params![timestamp(SystemTime::now()), snapshot],
        )?;
        Ok(connection.last_insert_rowid())
    }

    /// Forgets a snapshot that was not accepted after all (the pipeline was full).
    pub(crate) fn remove(&self, id: i64) -> Result<(), StoreError> {
        self.connection().execute("DELETE FROM ingest_journal WHERE id = ?1", [id])?;
        Ok(())
    }

    /// The snapshots still to process, oldest first.
    pub(crate) fn pending(&self) -> Result<Vec<(i64, Vec<u8>)>, StoreError> {
        let connection = self.connection();
        let mut statement = connection.prepare("SELECT id, snapshot FROM ingest_journal ORDER BY id")?;
        let rows = statement.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

/// Creates the tables; called once at start.
pub(crate) fn initialise(path: &Path) -> Result<(), StoreError> {
    open(path)?.execute_batch(SCHEMA)?;
    Ok(())
}

fn timestamp(time: SystemTime) -> String {
    humantime::format_rfc3339_micros(time).to_string()
}

/// One scored item to store: the record (when it came from a connection), its features and the
/// verdict of each model and of the ensemble.
pub(crate) struct StoredResult {
    pub observed: SystemTime,
    pub record: Option<ConnectionRecord>,
    pub features: RawFeatures,
    pub session: String,
    /// Empty while the service learns.
    pub predictions: Vec<PredictionRow>,
}

/// One row of `predictions`.
pub(crate) struct PredictionRow {
    pub model: String,
    pub score: f64,
    pub is_anomaly: bool,
    pub confidence: f64,
    /// JSON, on the ensemble's row.
    pub explanation: Option<String>,
}

enum WriterItem {
    Result(Box<StoredResult>),
    Metrics(SystemTime, Vec<crate::model::Evaluation>),
    /// The journalled snapshot whose results were queued before this item.
    Journalled(i64),
}

/// Counters of the writer.
#[derive(Default)]
pub(crate) struct WriterCounters {
    pub written: AtomicU64,
    pub dropped: AtomicU64,
    pub failures: AtomicU64,
}

/// The sending side of the writer thread.
pub(crate) struct Writer {
    sender: std::sync::Mutex<Option<SyncSender<WriterItem>>>,
    thread: std::sync::Mutex<Option<JoinHandle<()>>>,
    pub counters: Arc<WriterCounters>,
}

/// How the writer batches and what it keeps.
pub(crate) struct WriterSettings {
    pub batch: usize,
    pub flush_interval: Duration,
    pub queue: usize,
    pub retention: Duration,
}

impl Writer {
    pub(crate) fn start(path: &Path, settings: WriterSettings) -> Result<Writer, StoreError> {
        let connection = open(path)?;
        let (sender, receiver) = std::sync::mpsc::sync_channel(settings.queue);
        let counters = Arc::new(WriterCounters::default());
        let thread_counters = Arc::clone(&counters);
        let thread = std::thread::Builder::new()
            .name("network-writer".into())
            .spawn(move || write_loop(connection, receiver, settings, &thread_counters))
            .map_err(|error| StoreError::Model { version: 0, reason: format!("writer thread: {error}") })?;
        Ok(Writer {
            sender: std::sync::Mutex::new(Some(sender)),
            thread: std::sync::Mutex::new(Some(thread)),
            counters,
        })
    }

    /// Queues a result; drops it (counted) when the writer is behind.
    pub(crate) fn store(&self, result: StoredResult) {
        self.send(WriterItem::Result(Box::new(result)));
    }

    pub(crate) fn store_metrics(&self, at: SystemTime, evaluations: Vec<crate::model::Evaluation>) {
        self.send(WriterItem::Metrics(at, evaluations));
    }

    /// Queues a result of an accepted snapshot, waiting for room rather than dropping it: when
    /// the disk falls behind, this holds the pipeline back, and agents' next snapshots find it
    /// busy (503) and are retried.
    pub(crate) fn store_waiting(&self, result: StoredResult) {
        self.send_waiting(WriterItem::Result(Box::new(result)));
    }

    /// Marks a journalled snapshot as done: the writer deletes it in the transaction that stores
    /// the results queued before this call.
    pub(crate) fn journalled(&self, id: i64) {
        self.send_waiting(WriterItem::Journalled(id));
    }

    fn send_waiting(&self, item: WriterItem) {
        let guard = self.sender.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(sender) = guard.as_ref() {
            // The sender lock is held while waiting: `close` waits for it, then for the writer,
            // which keeps draining the queue.
            let _ = sender.send(item);
        }
    }

    fn send(&self, item: WriterItem) {
        let guard = self.sender.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let Some(sender) = guard.as_ref() else { return };
        match sender.try_send(item) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Writes what is queued and stops the thread (blocking).
    pub(crate) fn close(&self) {
        self.sender.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
        if let Some(thread) = self.thread.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take() {
            let _ = thread.join();
        }
    }
}

fn write_loop(
    mut connection: Connection,
    receiver: Receiver<WriterItem>,
    settings: WriterSettings,
    counters: &WriterCounters,
) {
    let mut batch: Vec<WriterItem> = Vec::with_capacity(settings.batch);
    let mut last_retention: Option<Instant> = None;
    loop {
        let deadline = Instant::now() + settings.flush_interval;
        let mut closed = false;
        while batch.len() < settings.batch {
            let wait = deadline.saturating_duration_since(Instant::now());
            match receiver.recv_timeout(wait) {
                Ok(item) => batch.push(item),
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => {
                    closed = true;
                    break;
                }
            }
        }
        if !batch.is_empty() {
            let items = batch.len() as u64;
            match write_batch(&mut connection, &batch) {
                Ok(()) => counters.written.fetch_add(items, Ordering::Relaxed),
                Err(error) => {
                    tracing::error!(%error, items, "network results could not be stored");
                    counters.failures.fetch_add(items, Ordering::Relaxed)
                }
            };
            batch.clear();
        }
        // Retention runs hourly (and at start) from the writer, which holds the write lock anyway.
        if last_retention.is_none_or(|at| at.elapsed() >= Duration::from_secs(3600)) {
            last_retention = Some(Instant::now());
            if let Err(error) = apply_retention(&connection, settings.retention) {
                tracing::error!(%error, "network retention failed");
            }
        }
        if closed {
            return;
        }
    }
}

fn write_batch(connection: &mut Connection, batch: &[WriterItem]) -> Result<(), rusqlite::Error> {
    let transaction = connection.transaction()?;
    {
        let mut insert_connection = transaction.prepare_cached(
            "INSERT INTO network_connections (timestamp, process_id, process_name, local_ip, local_port, remote_ip,
             remote_port, protocol, state, bytes_sent, bytes_received) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        )?;
        let mut insert_features = transaction.prepare_cached(
            "INSERT INTO network_features (timestamp, connection_id, feature_vector, label, session_id)
             VALUES (?1, ?2, ?3, 0, ?4)",
        )?;
        let mut insert_prediction = transaction.prepare_cached(
            "INSERT INTO predictions (timestamp, feature_id, model_name, anomaly_score, is_anomaly, confidence, explanation)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?;
        let mut insert_metrics = transaction.prepare_cached(
            "INSERT INTO model_metrics (model_name, timestamp, accuracy, precision_score, recall, f1_score, auc_roc,
             false_positive_rate) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?;
        for item in batch {
            match item {
                WriterItem::Result(result) => {
                    let at = timestamp(result.observed);
                    let connection_id = match &result.record {
                        Some(record) => {
                            insert_connection.execute(params![
                                timestamp(record.timestamp),
                                record.pid,
                                record.process_name,
                                record.local_ip.to_string(),
                                record.local_port,
                                record.remote_ip.to_string(),
                                record.remote_port,
                                serde_json::to_value(record.protocol)
                                    .ok()
                                    .and_then(|v| v.as_str().map(str::to_owned)),
                                serde_json::to_value(record.state)
                                    .ok()
                                    .and_then(|v| v.as_str().map(str::to_owned)),
                                record.bytes_sent.map(|v| v.min(i64::MAX as u64) as i64),
                                record.bytes_received.map(|v| v.min(i64::MAX as u64) as i64),
                            ])?;
                            Some(transaction.last_insert_rowid())
                        }
                        None => None,
                    };
                    insert_features.execute(params![
                        at,
                        connection_id,
                        result.features.to_json().to_string(),
                        result.session
                    ])?;
                    let feature_id = transaction.last_insert_rowid();
                    for row in &result.predictions {
                        insert_prediction.execute(params![
                            at,
                            feature_id,
                            row.model,
                            row.score,
                            row.is_anomaly,
                            row.confidence,
                            row.explanation
                        ])?;
                    }
                }
                WriterItem::Journalled(id) => {
                    transaction.execute("DELETE FROM ingest_journal WHERE id = ?1", [id])?;
                }
                WriterItem::Metrics(at, evaluations) => {
                    for evaluation in evaluations {
                        insert_metrics.execute(params![
                            evaluation.model_name,
                            timestamp(*at),
                            evaluation.accuracy,
                            evaluation.precision,
                            evaluation.recall,
                            evaluation.f1,
                            evaluation.auc_roc,
                            evaluation.false_positive_rate,
                        ])?;
                    }
                }
            }
        }
    }
    transaction.commit()
}

fn apply_retention(connection: &Connection, retention: Duration) -> Result<(), rusqlite::Error> {
    let cutoff = timestamp(SystemTime::now().checked_sub(retention).unwrap_or(SystemTime::UNIX_EPOCH));
    // Children first: predictions point to features, features to connections.
    let predictions = connection.execute("DELETE FROM predictions WHERE timestamp < ?1", [&cutoff])?;
    let features = connection.execute("DELETE FROM network_features WHERE timestamp < ?1", [&cutoff])?;
    let connections =
        connection.execute("DELETE FROM network_connections WHERE timestamp < ?1", [&cutoff])?;
    if predictions + features + connections > 0 {
        tracing::info!(predictions, features, connections, cutoff, "network retention applied");
    }
    Ok(())
}

/// How much history there is.
pub(crate) struct HistoryExtent {
    pub rows: u64,
    pub oldest: Option<SystemTime>,
}

pub(crate) fn history_extent(connection: &Connection) -> Result<HistoryExtent, StoreError> {
    let (rows, oldest): (i64, Option<String>) =
        connection.query_row("SELECT count(*), min(timestamp) FROM network_features", [], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })?;
    Ok(HistoryExtent {
        rows: u64::try_from(rows).unwrap_or(0),
        oldest: oldest.and_then(|text| humantime::parse_rfc3339(&text).ok()),
    })
}

/// The most recent `limit` stored feature rows, with their process names and labels.
pub(crate) fn training_rows(
    connection: &Connection,
    limit: usize,
    cancelled: &dyn Fn() -> bool,
) -> Result<Vec<TrainingRow>, StoreError> {
    let mut statement = connection.prepare(
        "SELECT f.feature_vector, c.process_name, f.label FROM network_features f
         LEFT JOIN network_connections c ON c.id = f.connection_id ORDER BY f.id DESC LIMIT ?1",
    )?;
    let mut rows = statement.query([limit as i64])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        if out.len() % 10_000 == 0 && cancelled() {
            break;
        }
        let text: Option<String> = row.get(0)?;
        let Some(object) = text
            .and_then(|text| serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&text).ok())
        else {
            continue;
        };
        // Rows written by an older feature set are skipped rather than failing the training.
        let Ok(features) = RawFeatures::from_json(&object) else { continue };
        let label: Option<i64> = row.get(2)?;
        out.push(TrainingRow { features, process_name: row.get(1)?, anomalous: label == Some(1) });
    }
    Ok(out)
}

/// A stored model version, without its fitted objects.
#[derive(Debug, Clone, Serialize)]
pub struct ModelVersion {
    pub version: i64,
    pub created_at: String,
    pub training_rows: u64,
    pub active: bool,
}

/// Saves a model as a new version, makes it the active one and prunes old versions.
pub(crate) fn save_model(
    connection: &mut Connection,
    bundle: &ModelBundle,
    training_rows: usize,
    created: SystemTime,
    keep: usize,
) -> Result<i64, StoreError> {
    let mut preprocessor = Vec::new();
    sentinel_anomaly::save(&bundle.preprocessor, &mut preprocessor)
        .map_err(|error| StoreError::Model { version: 0, reason: error.to_string() })?;
    let mut ensemble = Vec::new();
    sentinel_anomaly::save(&bundle.ensemble, &mut ensemble)
        .map_err(|error| StoreError::Model { version: 0, reason: error.to_string() })?;
    let facts = serde_json::to_string(&bundle.facts)
        .map_err(|error| StoreError::Model { version: 0, reason: error.to_string() })?;
    let transaction = connection.transaction()?;
    transaction.execute("UPDATE network_models SET active = 0 WHERE active = 1", [])?;
    transaction.execute(
        "INSERT INTO network_models (created_at, training_rows, active, facts, preprocessor, ensemble)
         VALUES (?1, ?2, 1, ?3, ?4, ?5)",
        params![timestamp(created), training_rows as i64, facts, preprocessor, ensemble],
    )?;
    let version = transaction.last_insert_rowid();
    transaction.execute(
        "DELETE FROM network_models WHERE active = 0 AND version NOT IN
         (SELECT version FROM network_models ORDER BY version DESC LIMIT ?1)",
        [keep as i64],
    )?;
    transaction.commit()?;
    Ok(version)
}

/// Loads a version (the active one when `version` is `None`).
pub(crate) fn load_model(
    connection: &Connection,
    version: Option<i64>,
) -> Result<Option<(ModelVersion, ModelBundle)>, StoreError> {
    let query = "SELECT version, created_at, training_rows, active, facts, preprocessor, ensemble FROM network_models";
    let row = match version {
        Some(version) => {
            connection.query_row(&format!("{query} WHERE version = ?1"), [version], read_model).optional()?
        }
        None => connection.query_row(&format!("{query} WHERE active = 1"), [], read_model).optional()?,
    };
    let Some((info, facts, preprocessor, ensemble)) = row else { return Ok(None) };
    let corrupt = |reason: String| StoreError::Model { version: info.version, reason };
    let facts: ModelFacts = serde_json::from_str(&facts).map_err(|error| corrupt(error.to_string()))?;
    let preprocessor: Preprocessor =
        sentinel_anomaly::load(preprocessor.as_slice()).map_err(|error| corrupt(error.to_string()))?;
    let ensemble: Ensemble =
        sentinel_anomaly::load(ensemble.as_slice()).map_err(|error| corrupt(error.to_string()))?;
    Ok(Some((info, ModelBundle { preprocessor, ensemble, facts })))
}

type ModelRow = (ModelVersion, String, Vec<u8>, Vec<u8>);

fn read_model(row: &rusqlite::Row<'_>) -> rusqlite::Result<ModelRow> {
    Ok((
        ModelVersion {
            version: row.get(0)?,
            created_at: row.get(1)?,
            training_rows: u64::try_from(row.get::<_, i64>(2)?).unwrap_or(0),
            active: row.get::<_, i64>(3)? == 1,
        },
        row.get(4)?,
        row.get(5)?,
        row.get(6)?,
    ))
}

/// Makes `version` the active model.
pub(crate) fn activate(connection: &mut Connection, version: i64) -> Result<(), StoreError> {
    let transaction = connection.transaction()?;
    let exists: Option<i64> = transaction
        .query_row("SELECT version FROM network_models WHERE version = ?1", [version], |row| row.get(0))
        .optional()?;
    if exists.is_none() {
        return Err(StoreError::NoSuchVersion(version));
    }
    transaction.execute("UPDATE network_models SET active = (version = ?1)", [version])?;
    transaction.commit()?;
    Ok(())
}

pub(crate) fn model_versions(connection: &Connection) -> Result<Vec<ModelVersion>, StoreError> {
    let mut statement = connection.prepare(
        "SELECT version, created_at, training_rows, active FROM network_models ORDER BY version DESC",
    )?;
    let versions = statement
        .query_map([], |row| {
            Ok(ModelVersion {
                version: row.get(0)?,
                created_at: row.get(1)?,
                training_rows: u64::try_from(row.get::<_, i64>(2)?).unwrap_or(0),
                active: row.get::<_, i64>(3)? == 1,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(versions)
}
