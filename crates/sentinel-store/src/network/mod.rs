//! The network service's part of the store, in its own SQLite file `<data_dir>/network.db`
//! (WAL), migrated by the same mechanism as `sentinel.db` ([`crate::migrations`]).
//!
//! Why a file of its own: SQLite allows one writer per file, and the network service writes
//! thousands of rows a second in batches; in `sentinel.db` those batches would make every
//! malware verdict wait for the lock. Its tables are exactly those of SPEC §2.3 plus indexes,
//! and `ingest_journal` ([`schema`]). Its models are in the model registry of `sentinel.db`
//! ([`crate::Store::register_model`]).
//!
//! An agent's snapshot is accepted only once it is in `ingest_journal`
//! ([`NetworkStore::journal_snapshot`], a durable commit); the results writer deletes it in the
//! transaction that stores its results ([`NetworkStore::store_snapshot`]), and the service
//! replays what is left at start-up ([`NetworkStore::journalled_snapshots`]).
//!
//! Each item's `network_features.id` is reserved before it is queued
//! ([`NetworkStore::reserve_item_ids`]), so that the result handed out names the row it will
//! be; analysts label items by that id ([`NetworkStore::label_items`]), a durable commit.

mod records;
mod schema;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use rusqlite::params;

pub use records::{
    ConnectionRow, HistoryExtent, HistoryRow, ItemLabel, LabelledPrediction, LegacyNetworkModel,
    MetricsSource, ModelMetricsRow, NetworkRowCounts, PredictionRow, ScoredItem, WriterStats,
};
pub use writer::WriterSettings;

use crate::StoreError;
use crate::database::Database;
use crate::sqlcipher::{self, DatabaseKey};
use crate::store_key::{KeyPurpose, StoreKey};
use crate::store_lock::StoreLock;
use writer::ResultsWriter;

/// Name of the network database inside the data directory.
pub const NETWORK_DATABASE_FILE: &str = "network.db";

/// How long a call waits for the lock of the other connection on the same file (the results
/// writer and the journal's writer share it).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Item ids reserved at once in the database when processes share it.
const ID_BLOCK: i64 = 1024;

/// Idle read connections kept: training, status and the scheduler read at most a few at once.
const READ_CONNECTIONS: usize = 2;

/// The network tables: open once at start-up, share with `Arc`, call from blocking threads.
pub struct NetworkStore {
    path: PathBuf,
    /// Journal writes (durable, `synchronous = FULL`) and reads.
    database: Database,
    /// Scored items, metrics and retention.
    writer: ResultsWriter,
    /// The next `network_features.id` to hand out: above every id the table has had (its
    /// AUTOINCREMENT sequence), so that an id never names two items, even after retention.
    next_item_id: AtomicI64,
    /// Set when several processes write this database (scale-out workers): ids then come from
    /// blocks reserved in the database, `[next, end)`, instead of this process's counter.
    id_block: Mutex<Option<(i64, i64)>>,
    /// Held while the store is open, so its encryption is not changed under it.
    _lock: StoreLock,
}

impl NetworkStore {
    /// Opens `<data_dir>/network.db`, creating the directory (mode 0700) and the file (mode
    /// 0600, as its -wal and -shm files) if missing, migrating (or adopting) its schema, and
    /// starts the results writer, which applies the retention at once. A plain store: see
    /// [`NetworkStore::open_with_key`] for an encrypted one.
    pub fn open(data_dir: &Path, settings: WriterSettings) -> Result<NetworkStore, StoreError> {
        NetworkStore::open_with_key(data_dir, settings, None)
    }

    /// As [`NetworkStore::open`], encrypted under `key` when one is given (that of the
    /// [`crate::Store`] beside it, [`crate::Store::store_key`]; the file has its own subkey). A
    /// file the key does not open is refused before anything changes.
    pub fn open_with_key(
        data_dir: &Path,
        settings: WriterSettings,
        key: Option<&StoreKey>,
    ) -> Result<NetworkStore, StoreError> {
        crate::create_private_dir(data_dir)?;
        let path = data_dir.join(NETWORK_DATABASE_FILE);
        let key = key.map(|key| DatabaseKey::new(key, KeyPurpose::NetworkDatabase));
        sqlcipher::probe(&path, key.as_ref())?;
        let lock = StoreLock::shared(data_dir)?;
        let database = Database::open(&path, &schema::NETWORK, BUSY_TIMEOUT, READ_CONNECTIONS, key.clone())?;
        let highest: i64 = database.read(|connection| {
            Ok(connection.query_row(
                "SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'network_features'), 0),
                            coalesce((SELECT max(id) FROM network_features), 0))",
                [],
                |row| row.get(0),
            )?)
        })?;
        let writer = ResultsWriter::start(&path, settings, BUSY_TIMEOUT, key.as_ref())?;
        crate::vault::sync_dir(data_dir)?;
        Ok(NetworkStore {
            path,
            database,
            writer,
            next_item_id: AtomicI64::new(highest + 1),
            id_block: Mutex::new(None),
            _lock: lock,
        })
    }

    /// Reserves `count` consecutive item ids and returns the first: the ids of items to
    /// [`NetworkStore::store`]. An item dropped (its writer behind) leaves its id unused.
    pub fn reserve_item_ids(&self, count: usize) -> i64 {
        let count = i64::try_from(count).unwrap_or(i64::MAX);
        let mut block = self.id_block.lock().unwrap_or_else(PoisonError::into_inner);
        let Some((next, end)) = block.as_mut() else {
            return self.next_item_id.fetch_add(count, Ordering::Relaxed);
        };
        if end.saturating_sub(*next) < count {
            match self.reserve_id_block(count.max(ID_BLOCK)) {
                Ok((first, last)) => (*next, *end) = (first, last),
                // The counter's ids may be taken by another process: the item's write then
                // fails and its record is scored again, with new ids.
                Err(error) => {
                    tracing::error!(%error, "cannot reserve network item ids in the database");
                    return self.next_item_id.fetch_add(count, Ordering::Relaxed);
                }
            }
        }
        let first = *next;
        *next += count;
        self.next_item_id.fetch_max(*next, Ordering::Relaxed);
        first
    }

    /// Makes [`NetworkStore::reserve_item_ids`] safe when other processes write this database
    /// too (scale-out workers sharing a data directory): ids are then reserved in blocks
    /// through the database, so no two processes hand out the same one.
    pub fn share_item_ids(&self) {
        let mut block = self.id_block.lock().unwrap_or_else(PoisonError::into_inner);
        block.get_or_insert((0, 0));
    }

    /// Reserves `count` ids in the database: `network_features`' AUTOINCREMENT sequence is
    /// moved past them (explicit ids inserted later keep it at least at their value).
    fn reserve_id_block(&self, count: i64) -> Result<(i64, i64), StoreError> {
        self.database.write(move |connection| {
            let highest: i64 = connection.query_row(
                "SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'network_features'), 0),
                            coalesce((SELECT max(id) FROM network_features), 0))",
                [],
                |row| row.get(0),
            )?;
            let last = highest.saturating_add(count);
            let updated = connection
                .execute("UPDATE sqlite_sequence SET seq = ?1 WHERE name = 'network_features'", [last])?;
            if updated == 0 {
                connection.execute(
                    "INSERT INTO sqlite_sequence (name, seq) VALUES ('network_features', ?1)",
                    [last],
                )?;
            }
            Ok((highest + 1, last + 1))
        })
    }

    /// Whether `id` was handed out by [`NetworkStore::reserve_item_ids`] since the store opened
    /// or names a row stored before: an id above is unknown for sure.
    pub fn item_id_issued(&self, id: i64) -> bool {
        id > 0 && id < self.next_item_id.load(Ordering::Relaxed)
    }

    /// Writes what the results writer has queued and returns once it is written (blocking).
    pub fn flush(&self) {
        self.writer.flush();
    }

    /// Records analysts' verdicts on stored items in one durable transaction: each item's
    /// `network_features.label` (1 anomalous, 0 normal) and its `network_feedback` row (when,
    /// by whom, the note; a second verdict on an item replaces the first). All or nothing: when
    /// an id names no stored item, nothing is written and those ids are returned (ascending).
    pub fn label_items(
        &self,
        labels: Vec<ItemLabel>,
        analyst: &str,
        at: SystemTime,
    ) -> Result<Vec<i64>, StoreError> {
        let labelled_at = timestamp(at);
        let analyst = analyst.to_owned();
        // One write of the database's writer, which runs it in its own savepoint: all of it
        // is committed, or none.
        self.database.write(move |connection| {
            let mut unknown = Vec::new();
            let mut exists = connection.prepare_cached("SELECT 1 FROM network_features WHERE id = ?1")?;
            for label in &labels {
                if !exists.exists([label.id])? {
                    unknown.push(label.id);
                }
            }
            if !unknown.is_empty() {
                unknown.sort_unstable();
                unknown.dedup();
                return Ok(unknown);
            }
            let mut set_label =
                connection.prepare_cached("UPDATE network_features SET label = ?2 WHERE id = ?1")?;
            let mut record = connection.prepare_cached(
                "INSERT OR REPLACE INTO network_feedback (feature_id, labelled_at, analyst, note)
                 VALUES (?1, ?2, ?3, ?4)",
            )?;
            for label in &labels {
                set_label.execute(params![label.id, i64::from(label.anomalous)])?;
                record.execute(params![label.id, labelled_at, analyst, label.note])?;
            }
            Ok(Vec::new())
        })
    }

    /// The stored verdicts (one per model and the ensemble's) on the labelled items observed at
    /// or after `since`, with the analysts' verdicts; items without predictions (scored before
    /// the first model) are absent.
    pub fn labelled_predictions(&self, since: SystemTime) -> Result<Vec<LabelledPrediction>, StoreError> {
        let since = timestamp(since);
        self.database.read(move |connection| {
            let mut statement = connection.prepare_cached(
                "SELECT f.id, p.model_name, p.anomaly_score, p.is_anomaly, f.label
                 FROM network_feedback b JOIN network_features f ON f.id = b.feature_id
                 JOIN predictions p ON p.feature_id = f.id
                 WHERE f.timestamp >= ?1 ORDER BY f.id, p.id",
            )?;
            let rows = statement.query_map([since], |row| {
                Ok(LabelledPrediction {
                    item: row.get(0)?,
                    model: row.get::<_, Option<String>>(1)?.unwrap_or_default(),
                    score: row.get::<_, Option<f64>>(2)?.unwrap_or(f64::NAN),
                    is_anomaly: row.get::<_, Option<bool>>(3)?.unwrap_or(false),
                    anomalous: row.get::<_, Option<i64>>(4)? == Some(1),
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    /// The labelled items observed at or after `since`, with their feature vectors and
    /// processes, oldest first: what an ensemble learns from. Rows whose feature vector is not
    /// a JSON object are skipped.
    pub fn labelled_rows(&self, since: SystemTime) -> Result<Vec<HistoryRow>, StoreError> {
        let since = timestamp(since);
        self.database.read(move |connection| {
            let mut statement = connection.prepare_cached(
                "SELECT f.feature_vector, c.process_name, f.label
                 FROM network_feedback b JOIN network_features f ON f.id = b.feature_id
                 LEFT JOIN network_connections c ON c.id = f.connection_id
                 WHERE f.timestamp >= ?1 ORDER BY f.id",
            )?;
            let mut rows = statement.query([since])?;
            let mut out = Vec::new();
            while let Some(row) = rows.next()? {
                if let Some(row) = history_row(row)? {
                    out.push(row);
                }
            }
            Ok(out)
        })
    }

    /// The newest `limit` rows of `model_metrics` measured on `source`, newest first.
    pub fn model_metrics(
        &self,
        source: MetricsSource,
        limit: usize,
    ) -> Result<Vec<ModelMetricsRow>, StoreError> {
        self.database.read(|connection| {
            let mut statement = connection.prepare_cached(
                "SELECT model_name, timestamp, accuracy, precision_score, recall, f1_score, auc_roc,
                 false_positive_rate, samples, anomalies FROM model_metrics WHERE source = ?1
                 ORDER BY id DESC LIMIT ?2",
            )?;
            let rows = statement.query_map(
                params![source.as_str(), i64::try_from(limit).unwrap_or(i64::MAX)],
                |row| {
                    let measured_at: String = row.get(1)?;
                    Ok(ModelMetricsRow {
                        model_name: row.get(0)?,
                        measured_at: humantime::parse_rfc3339(&measured_at).unwrap_or(SystemTime::UNIX_EPOCH),
                        source,
                        samples: u64::try_from(row.get::<_, Option<i64>>(8)?.unwrap_or(0)).unwrap_or(0),
                        anomalies: u64::try_from(row.get::<_, Option<i64>>(9)?.unwrap_or(0)).unwrap_or(0),
                        accuracy: row.get::<_, Option<f64>>(2)?.unwrap_or(f64::NAN),
                        precision: row.get(3)?,
                        recall: row.get(4)?,
                        f1: row.get(5)?,
                        auc_roc: row.get(6)?,
                        false_positive_rate: row.get(7)?,
                    })
                },
            )?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    /// Writes rows of `model_metrics` in one durable transaction (the results writer's queue,
    /// [`NetworkStore::store_metrics`], may drop them when it is behind).
    pub fn record_metrics(&self, rows: Vec<ModelMetricsRow>) -> Result<(), StoreError> {
        self.database.write(move |connection| Ok(writer::insert_metrics(connection, &rows)?))
    }

    /// Where the database is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Journals an agent's snapshot (its JSON) and returns its id; durable when this returns.
    pub fn journal_snapshot(&self, snapshot: Vec<u8>) -> Result<i64, StoreError> {
        let received_at = timestamp(SystemTime::now());
        self.database.write(move |connection| {
            connection
                .prepare_cached("INSERT INTO ingest_journal (received_at, snapshot) VALUES (?1, ?2)")?
                .execute(params![received_at, snapshot])?;
            Ok(connection.last_insert_rowid())
        })
    }

    /// Forgets a journalled snapshot that was not accepted after all, or cannot be read.
    pub fn forget_snapshot(&self, id: i64) -> Result<(), StoreError> {
        self.database.write(move |connection| {
            connection.prepare_cached("DELETE FROM ingest_journal WHERE id = ?1")?.execute([id])?;
            Ok(())
        })
    }

    /// The snapshots journalled and not yet stored, oldest first, with their ids.
    pub fn journalled_snapshots(&self) -> Result<Vec<(i64, Vec<u8>)>, StoreError> {
        self.database.read(|connection| {
            let mut statement = connection.prepare("SELECT id, snapshot FROM ingest_journal ORDER BY id")?;
            let rows = statement.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    /// How many journalled snapshots are not yet stored.
    pub fn journalled_count(&self) -> Result<u64, StoreError> {
        self.database.read(|connection| {
            let count: i64 =
                connection.query_row("SELECT count(*) FROM ingest_journal", [], |row| row.get(0))?;
            Ok(u64::try_from(count).unwrap_or(0))
        })
    }

    /// Queues a scored item for the results writer; dropped (and counted) when it is behind.
    pub fn store(&self, item: ScoredItem) {
        self.writer.store(item);
    }

    /// Queues a journalled snapshot's items: they and the deletion of its journal entry are
    /// committed in one transaction. Waits for room in the queue rather than dropping them.
    pub fn store_snapshot(&self, journal_id: i64, items: Vec<ScoredItem>) {
        self.writer.store_snapshot(journal_id, items);
    }

    /// Queues a broker record's items (scale-out mode): they and a `broker_deliveries` row of
    /// `msg_id` are written in one transaction, unless that row exists, in which case nothing
    /// is written (the record was stored before, by this or another worker). `stored` is
    /// called after the commit: `Ok(true)` written, `Ok(false)` stored before, `Err` nothing
    /// written. Waits for room in the queue rather than dropping them.
    pub fn store_delivery(
        &self,
        msg_id: String,
        items: Vec<ScoredItem>,
        stored: impl FnOnce(Result<bool, StoreError>) + Send + 'static,
    ) {
        self.writer.store_delivery(msg_id, items, Box::new(stored));
    }

    /// Queues a model's evaluation rows (`model_metrics`).
    pub fn store_metrics(&self, rows: Vec<ModelMetricsRow>) {
        self.writer.store_metrics(rows);
    }

    /// The results writer's counters.
    pub fn writer_stats(&self) -> WriterStats {
        self.writer.stats()
    }

    /// Writes what is queued and stops the results writer (blocking); later items are dropped.
    pub fn close(&self) {
        self.writer.close();
    }

    /// How many feature rows are stored, and since when.
    pub fn history_extent(&self) -> Result<HistoryExtent, StoreError> {
        self.database.read(|connection| {
            let (rows, oldest): (i64, Option<String>) =
                connection.query_row("SELECT count(*), min(timestamp) FROM network_features", [], |row| {
                    Ok((row.get(0)?, row.get(1)?))
                })?;
            Ok(HistoryExtent {
                rows: u64::try_from(rows).unwrap_or(0),
                oldest: oldest.and_then(|text| humantime::parse_rfc3339(&text).ok()),
            })
        })
    }

    /// Rows per table.
    pub fn row_counts(&self) -> Result<NetworkRowCounts, StoreError> {
        self.database.read(|connection| {
            let count = |table: &str| -> Result<u64, StoreError> {
                let rows: i64 =
                    connection.query_row(&format!("SELECT count(*) FROM {table}"), [], |row| row.get(0))?;
                Ok(u64::try_from(rows).unwrap_or(0))
            };
            Ok(NetworkRowCounts {
                connections: count("network_connections")?,
                features: count("network_features")?,
                predictions: count("predictions")?,
                model_metrics: count("model_metrics")?,
                feedback: count("network_feedback")?,
                journalled_snapshots: count("ingest_journal")?,
            })
        })
    }

    /// The most recent `limit` feature rows, newest first, with their process names and labels.
    /// Rows whose feature vector is not a JSON object are skipped. `cancelled` is asked every
    /// 10,000 rows; when it says yes, the rows read so far are returned.
    pub fn history(&self, limit: usize, cancelled: &dyn Fn() -> bool) -> Result<Vec<HistoryRow>, StoreError> {
        self.database.read(|connection| {
            let mut statement = connection.prepare(
                "SELECT f.feature_vector, c.process_name, f.label FROM network_features f
                 LEFT JOIN network_connections c ON c.id = f.connection_id ORDER BY f.id DESC LIMIT ?1",
            )?;
            let mut rows = statement.query([i64::try_from(limit).unwrap_or(i64::MAX)])?;
            let mut out = Vec::new();
            let mut read = 0usize;
            while let Some(row) = rows.next()? {
                if read.is_multiple_of(10_000) && cancelled() {
                    break;
                }
                read += 1;
                if let Some(row) = history_row(row)? {
                    out.push(row);
                }
            }
            Ok(out)
        })
    }

    /// The models the service kept in `network.db` before the model registry, oldest first;
    /// empty once [`NetworkStore::drop_legacy_models`] has run (or on a new file).
    pub fn legacy_models(&self) -> Result<Vec<LegacyNetworkModel>, StoreError> {
        self.database.read(|connection| {
            let exists: i64 = connection.query_row(
                "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = ?1",
                [schema::LEGACY_MODELS_TABLE],
                |row| row.get(0),
            )?;
            if exists == 0 {
                return Ok(Vec::new());
            }
            let mut statement = connection.prepare(
                "SELECT version, created_at, training_rows, active, facts, preprocessor, ensemble
                 FROM network_models ORDER BY version",
            )?;
            let rows = statement.query_map([], |row| {
                Ok(LegacyNetworkModel {
                    version: row.get(0)?,
                    created_at: row.get(1)?,
                    training_rows: u64::try_from(row.get::<_, i64>(2)?).unwrap_or(0),
                    active: row.get::<_, i64>(3)? == 1,
                    facts: row.get(4)?,
                    preprocessor: row.get(5)?,
                    ensemble: row.get(6)?,
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    /// Drops the legacy model table, once its models are in the registry.
    pub fn drop_legacy_models(&self) -> Result<(), StoreError> {
        self.database.write(|connection| {
            connection.execute_batch("DROP TABLE IF EXISTS network_models")?;
            Ok(())
        })
    }
}

impl std::fmt::Debug for NetworkStore {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("NetworkStore").field("path", &self.path).finish_non_exhaustive()
    }
}

/// A row of (feature vector, process name, label); `None` when the vector is not a JSON object.
fn history_row(row: &rusqlite::Row<'_>) -> Result<Option<HistoryRow>, rusqlite::Error> {
    let text: Option<String> = row.get(0)?;
    let Some(Ok(serde_json::Value::Object(features))) = text.map(|text| serde_json::from_str(&text)) else {
        return Ok(None);
    };
    let label: Option<i64> = row.get(2)?;
    Ok(Some(HistoryRow { features, process_name: row.get(1)?, anomalous: label == Some(1) }))
}

/// Times are stored as RFC 3339 text with microseconds (UTC), which sorts as time does.
fn timestamp(time: SystemTime) -> String {
    humantime::format_rfc3339_micros(time).to_string()
}
