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

//! The network service's part of the store: the tables of SPEC §2.3 and the ingest journal,
//! either in their own SQLite file `<data_dir>/network.db` (WAL), migrated by the same
//! mechanism as `sentinel.db` ([`crate::migrations`]), or in the PostgreSQL database of the
//! malware tables ([`NetworkStore::open_postgres`], `crate::postgres::network`), where several
//! replicas write at once.
//!
//! Why a file of its own on SQLite: SQLite allows one writer per file, and the network service
//! writes thousands of rows a second in batches; in `sentinel.db` those batches would make every
//! malware verdict wait for the lock. Its tables are exactly those of SPEC §2.3 plus indexes,
//! and `ingest_journal` ([`schema`]). Its models are in the model registry of `sentinel.db`
//! ([`crate::Store::register_model`]).
//!
//! An agent's snapshot is accepted only once it is in `ingest_journal`
//! ([`NetworkStore::journal_snapshot`], a durable commit); the results writer deletes it in the
//! transaction that stores its results ([`NetworkStore::store_snapshot`]), and the service
//! replays what is left at start-up ([`NetworkStore::journalled_snapshots`]). A record a
//! message broker delivered is stored once however often it is delivered
//! ([`NetworkStore::store_delivery`]).
//!
//! Each item's `network_features.id` is reserved before it is queued
//! ([`NetworkStore::reserve_item_ids`]), so that the result handed out names the row it will
//! be; analysts label items by that id ([`NetworkStore::label_items`]), a durable commit.

mod records;
mod schema;
pub(crate) mod writer;

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use rusqlite::params;

pub use records::{
    ConnectionRow, HistoryExtent, HistoryRow, ItemLabel, LabelledPrediction, LegacyNetworkModel,
    MetricsSource, ModelMetricsRow, NetworkRowCounts, PredictionRow, ScoredItem, WriterStats,
};
pub use writer::WriterSettings;

use crate::StoreError;
use crate::database::Database;
use crate::postgres::{self, PgDatabase};
use crate::sqlcipher::{self, DatabaseKey};
use crate::store_key::{KeyPurpose, StoreKey};
use crate::store_lock::StoreLock;
use writer::{ResultsWriter, WriterTarget};

/// Name of the network database inside the data directory.
pub const NETWORK_DATABASE_FILE: &str = "network.db";

/// How long a call waits for the lock of the other connection on the same file (the results
/// writer and the journal's writer share it).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Idle read connections kept: training, status and the scheduler read at most a few at once.
const READ_CONNECTIONS: usize = 2;

/// Longest broker record id kept (the broker's message ids are 64 hexadecimal characters).
const MAX_RECORD_ID_LEN: usize = 256;

/// Item ids a replica takes from PostgreSQL's sequence at a time: one round trip per block, not
/// per item; ids of a block left unused when the replica stops are never used.
const ITEM_ID_BLOCK: i64 = 1024;

/// How long after failing to take a block of ids from PostgreSQL reservations fail at once.
const ITEM_ID_RETRY: Duration = Duration::from_secs(1);

/// Feature rows read per query of [`NetworkStore::history`] on PostgreSQL (and rows between two
/// questions to `cancelled` on both backends).
const HISTORY_PAGE: usize = 10_000;

/// The network tables: open once at start-up, share with `Arc`, call from blocking threads.
pub struct NetworkStore {
    /// Scored items, metrics, deliveries and retention. First, so that it is closed (what is
    /// queued written) before the tables are dropped.
    writer: ResultsWriter,
    tables: NetworkTables,
    ids: ItemIds,
}

enum NetworkTables {
    Sqlite {
        path: PathBuf,
        /// Journal writes (durable, `synchronous = FULL`) and reads.
        database: Database,
        /// Held while the store is open, so its encryption is not changed under it.
        _lock: StoreLock,
    },
    Postgres(Arc<PgDatabase>),
}

/// Where item ids come from.
enum ItemIds {
    /// SQLite: one process writes the file, and counts here from above every id the table has
    /// had (its AUTOINCREMENT sequence), so that an id never names two items, even after
    /// retention.
    Counter(AtomicI64),
    /// PostgreSQL: blocks taken from the sequence every replica shares.
    Blocks {
        database: Arc<PgDatabase>,
        block: Mutex<IdBlock>,
        /// Above every id handed out by any replica when the store opened, or in this replica's
        /// blocks since.
        issued_below: AtomicI64,
    },
}

/// What is left of a replica's block of item ids, and the last failure to take one.
struct IdBlock {
    ids: Range<i64>,
    failed: Option<(Instant, String)>,
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
        let writer =
            ResultsWriter::start(WriterTarget::sqlite(&path, BUSY_TIMEOUT, key.as_ref())?, settings)?;
        crate::vault::sync_dir(data_dir)?;
        Ok(NetworkStore {
            writer,
            tables: NetworkTables::Sqlite { path, database, _lock: lock },
            ids: ItemIds::Counter(AtomicI64::new(highest + 1)),
        })
    }

    /// Opens the network tables where `store` keeps its own: `network.db` in `data_dir` beside
    /// an SQLite store (encrypted exactly when the store is), the same PostgreSQL database (and
    /// password) for a shared one.
    pub fn open_beside(
        store: &crate::Store,
        data_dir: &Path,
        settings: WriterSettings,
    ) -> Result<NetworkStore, StoreError> {
        match (&store.tables, &store.settings.url) {
            (crate::Tables::Postgres(_), Some(url)) => {
                NetworkStore::open_postgres(url, store.settings.password_file.as_deref(), settings)
            }
            _ => NetworkStore::open_with_key(data_dir, settings, store.store_key()),
        }
    }

    /// Opens the network tables in the PostgreSQL database at `url`, the database of the
    /// malware tables ([`crate::Store::open_postgres`]), creating or migrating them (under the
    /// name `network` in `sentinel_schema`), and starts the results writer, which applies the
    /// retention at once. Several replicas may open the same database and write at once.
    /// `password_file` holds the password, as `[store] password_file` says.
    pub fn open_postgres(
        url: &str,
        password_file: Option<&Path>,
        settings: WriterSettings,
    ) -> Result<NetworkStore, StoreError> {
        let database = Arc::new(PgDatabase::connect(url, password_file, &postgres::NETWORK)?);
        let highest = postgres::network::highest_item_id(&database)?;
        let writer = ResultsWriter::start(WriterTarget::Postgres(Arc::clone(&database)), settings)?;
        Ok(NetworkStore {
            writer,
            ids: ItemIds::Blocks {
                database: Arc::clone(&database),
                block: Mutex::new(IdBlock { ids: 0..0, failed: None }),
                issued_below: AtomicI64::new(highest + 1),
            },
            tables: NetworkTables::Postgres(database),
        })
    }

    /// Reserves `count` consecutive item ids and returns the first: the ids of items to
    /// [`NetworkStore::store`]. An item dropped (its writer behind) leaves its id unused. On
    /// PostgreSQL the ids are unique across the replicas sharing the database; this fails only
    /// when a new block of them cannot be taken from it.
    pub fn reserve_item_ids(&self, count: usize) -> Result<i64, StoreError> {
        let count = i64::try_from(count).unwrap_or(i64::MAX);
        match &self.ids {
            ItemIds::Counter(next) => Ok(next.fetch_add(count, Ordering::Relaxed)),
            ItemIds::Blocks { database, block, issued_below } => {
                let mut block = block.lock().unwrap_or_else(PoisonError::into_inner);
                if block.ids.end - block.ids.start < count {
                    // While the database is unreachable, callers (the live pipeline among them)
                    // fail at once instead of each waiting for the pool's timeout.
                    if let Some((at, reason)) = &block.failed
                        && at.elapsed() < ITEM_ID_RETRY
                    {
                        return Err(StoreError::Postgres(format!("no item ids: {reason}")));
                    }
                    // What is left of the block is too short: a new one, the rest unused.
                    let size = count.max(ITEM_ID_BLOCK);
                    let first = postgres::network::take_item_ids(database, size).inspect_err(|error| {
                        block.failed = Some((Instant::now(), error.to_string()));
                    })?;
                    block.failed = None;
                    block.ids = first..first + size;
                    issued_below.fetch_max(first + size, Ordering::Relaxed);
                }
                let first = block.ids.start;
                block.ids.start += count;
                Ok(first)
            }
        }
    }

    /// Whether `id` may have been handed out by [`NetworkStore::reserve_item_ids`] (on
    /// PostgreSQL: by any replica before this one opened, or in this one's blocks since) or
    /// names a row stored before: an id above is unknown for sure.
    pub fn item_id_issued(&self, id: i64) -> bool {
        let below = match &self.ids {
            ItemIds::Counter(next) => next.load(Ordering::Relaxed),
            ItemIds::Blocks { issued_below, .. } => issued_below.load(Ordering::Relaxed),
        };
        id > 0 && id < below
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
        let analyst = analyst.to_owned();
        let database = match &self.tables {
            NetworkTables::Sqlite { database, .. } => database,
            NetworkTables::Postgres(database) => {
                return postgres::network::label_items(database, labels, analyst, at);
            }
        };
        let labelled_at = timestamp(at);
        // One write of the database's writer, which runs it in its own savepoint: all of it
        // is committed, or none.
        database.write(move |connection| {
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
        let database = match &self.tables {
            NetworkTables::Sqlite { database, .. } => database,
            NetworkTables::Postgres(database) => {
                return postgres::network::labelled_predictions(database, since);
            }
        };
        let since = timestamp(since);
        database.read(move |connection| {
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
        let database = match &self.tables {
            NetworkTables::Sqlite { database, .. } => database,
            NetworkTables::Postgres(database) => return postgres::network::labelled_rows(database, since),
        };
        let since = timestamp(since);
        database.read(move |connection| {
            let mut statement = connection.prepare_cached(
                "SELECT f.feature_vector, c.process_name, f.label
                 FROM network_feedback b JOIN network_features f ON f.id = b.feature_id
                 LEFT JOIN network_connections c ON c.id = f.connection_id
                 WHERE f.timestamp >= ?1 ORDER BY f.id",
            )?;
            let mut rows = statement.query([since])?;
            let mut out = Vec::new();
            while let Some(row) = rows.next()? {
                if let Some(row) = history_row(row.get(0)?, row.get(1)?, row.get(2)?) {
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
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let database = match &self.tables {
            NetworkTables::Sqlite { database, .. } => database,
            NetworkTables::Postgres(database) => {
                return postgres::network::model_metrics(database, source, limit);
            }
        };
        database.read(|connection| {
            let mut statement = connection.prepare_cached(
                "SELECT model_name, timestamp, accuracy, precision_score, recall, f1_score, auc_roc,
                 false_positive_rate, samples, anomalies FROM model_metrics WHERE source = ?1
                 ORDER BY id DESC LIMIT ?2",
            )?;
            let rows = statement.query_map(params![source.as_str(), limit], |row| {
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
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    /// Writes rows of `model_metrics` in one durable transaction (the results writer's queue,
    /// [`NetworkStore::store_metrics`], may drop them when it is behind).
    pub fn record_metrics(&self, rows: Vec<ModelMetricsRow>) -> Result<(), StoreError> {
        match &self.tables {
            NetworkTables::Sqlite { database, .. } => {
                database.write(move |connection| Ok(writer::insert_metrics(connection, &rows)?))
            }
            NetworkTables::Postgres(database) => postgres::network::record_metrics(database, rows),
        }
    }

    /// Where the database file is; `None` on PostgreSQL.
    pub fn path(&self) -> Option<&Path> {
        match &self.tables {
            NetworkTables::Sqlite { path, .. } => Some(path),
            NetworkTables::Postgres(_) => None,
        }
    }

    /// Journals an agent's snapshot (its JSON) and returns its id; durable when this returns.
    pub fn journal_snapshot(&self, snapshot: Vec<u8>) -> Result<i64, StoreError> {
        let database = match &self.tables {
            NetworkTables::Sqlite { database, .. } => database,
            NetworkTables::Postgres(database) => {
                return postgres::network::journal_snapshot(database, snapshot);
            }
        };
        let received_at = timestamp(SystemTime::now());
        database.write(move |connection| {
            connection
                .prepare_cached("INSERT INTO ingest_journal (received_at, snapshot) VALUES (?1, ?2)")?
                .execute(params![received_at, snapshot])?;
            Ok(connection.last_insert_rowid())
        })
    }

    /// Forgets a journalled snapshot that was not accepted after all, or cannot be read.
    pub fn forget_snapshot(&self, id: i64) -> Result<(), StoreError> {
        match &self.tables {
            NetworkTables::Sqlite { database, .. } => database.write(move |connection| {
                connection.prepare_cached("DELETE FROM ingest_journal WHERE id = ?1")?.execute([id])?;
                Ok(())
            }),
            NetworkTables::Postgres(database) => postgres::network::forget_snapshot(database, id),
        }
    }

    /// The snapshots journalled and not yet stored, oldest first, with their ids.
    pub fn journalled_snapshots(&self) -> Result<Vec<(i64, Vec<u8>)>, StoreError> {
        match &self.tables {
            NetworkTables::Sqlite { database, .. } => database.read(|connection| {
                let mut statement =
                    connection.prepare("SELECT id, snapshot FROM ingest_journal ORDER BY id")?;
                let rows = statement.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?;
                Ok(rows.collect::<Result<_, _>>()?)
            }),
            NetworkTables::Postgres(database) => postgres::network::journalled_snapshots(database),
        }
    }

    /// How many journalled snapshots are not yet stored.
    pub fn journalled_count(&self) -> Result<u64, StoreError> {
        match &self.tables {
            NetworkTables::Sqlite { database, .. } => database.read(|connection| {
                let count: i64 =
                    connection.query_row("SELECT count(*) FROM ingest_journal", [], |row| row.get(0))?;
                Ok(u64::try_from(count).unwrap_or(0))
            }),
            NetworkTables::Postgres(database) => postgres::network::journalled_count(database),
        }
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

    /// Queues the items of a record a message broker delivered, under the record's id (the
    /// broker's message id: the same record delivered again, or published again by a retrying
    /// front end, has the same id), to be stored exactly once: they are written with a
    /// `broker_deliveries` row of that id in one transaction, and skipped when that row exists
    /// (a redelivery of a message stored before an acknowledgement was lost). Waits for room in
    /// the queue rather than dropping them. The id is the record's, not the broker's sequence
    /// number, which starts again at 1 when a stream is made anew.
    ///
    /// `stored` is called once, from the writer's thread (so it must be quick: hand the answer
    /// on, e.g. to a channel): `Ok(true)` when the items were stored now, `Ok(false)` when the
    /// delivery had been stored before, both once that is durable — the moment to acknowledge
    /// the message —, or the error that kept them from being stored (do not acknowledge: the
    /// broker delivers it again). Delivery rows are forgotten with the items, after the
    /// retention ([`WriterSettings::retention`]).
    pub fn store_delivery(
        &self,
        record_id: String,
        items: Vec<ScoredItem>,
        stored: impl FnOnce(Result<bool, StoreError>) + Send + 'static,
    ) {
        if record_id.is_empty() || record_id.len() > MAX_RECORD_ID_LEN {
            return stored(Err(StoreError::DeliveryNotStored(format!(
                "a record id must have 1 to {MAX_RECORD_ID_LEN} bytes, not {}",
                record_id.len()
            ))));
        }
        self.writer.store_delivery(record_id, items, Box::new(stored))
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
        match &self.tables {
            NetworkTables::Sqlite { database, .. } => database.read(|connection| {
                let (rows, oldest): (i64, Option<String>) = connection.query_row(
                    "SELECT count(*), min(timestamp) FROM network_features",
                    [],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )?;
                Ok(HistoryExtent {
                    rows: u64::try_from(rows).unwrap_or(0),
                    oldest: oldest.and_then(|text| humantime::parse_rfc3339(&text).ok()),
                })
            }),
            NetworkTables::Postgres(database) => postgres::network::history_extent(database),
        }
    }

    /// Rows per table.
    pub fn row_counts(&self) -> Result<NetworkRowCounts, StoreError> {
        let database = match &self.tables {
            NetworkTables::Sqlite { database, .. } => database,
            NetworkTables::Postgres(database) => return postgres::network::row_counts(database),
        };
        database.read(|connection| {
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
        let database = match &self.tables {
            NetworkTables::Sqlite { database, .. } => database,
            NetworkTables::Postgres(database) => return history_in_pages(database, limit, cancelled),
        };
        database.read(|connection| {
            let mut statement = connection.prepare(
                "SELECT f.feature_vector, c.process_name, f.label FROM network_features f
                 LEFT JOIN network_connections c ON c.id = f.connection_id ORDER BY f.id DESC LIMIT ?1",
            )?;
            let mut rows = statement.query([i64::try_from(limit).unwrap_or(i64::MAX)])?;
            let mut out = Vec::new();
            let mut read = 0usize;
            while let Some(row) = rows.next()? {
                if read.is_multiple_of(HISTORY_PAGE) && cancelled() {
                    break;
                }
                read += 1;
                if let Some(row) = history_row(row.get(0)?, row.get(1)?, row.get(2)?) {
                    out.push(row);
                }
            }
            Ok(out)
        })
    }

    /// The models the service kept in `network.db` before the model registry, oldest first;
    /// empty once [`NetworkStore::drop_legacy_models`] has run, on a new file, and always on
    /// PostgreSQL (which the service never used before the registry).
    pub fn legacy_models(&self) -> Result<Vec<LegacyNetworkModel>, StoreError> {
        let NetworkTables::Sqlite { database, .. } = &self.tables else { return Ok(Vec::new()) };
        database.read(|connection| {
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

    /// Drops the legacy model table, once its models are in the registry (nothing to do on
    /// PostgreSQL).
    pub fn drop_legacy_models(&self) -> Result<(), StoreError> {
        let NetworkTables::Sqlite { database, .. } = &self.tables else { return Ok(()) };
        database.write(|connection| {
            connection.execute_batch("DROP TABLE IF EXISTS network_models")?;
            Ok(())
        })
    }
}

impl std::fmt::Debug for NetworkStore {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The path, or the backend alone: a PostgreSQL URL may hold a password.
        match &self.tables {
            NetworkTables::Sqlite { path, .. } => {
                formatter.debug_struct("NetworkStore").field("path", path).finish_non_exhaustive()
            }
            NetworkTables::Postgres(_) => {
                formatter.debug_struct("NetworkStore").field("backend", &"postgres").finish_non_exhaustive()
            }
        }
    }
}

/// [`NetworkStore::history`] on PostgreSQL: a page of rows per query, newest first, so that
/// neither side holds more than a page beyond the rows returned, asking `cancelled` before each.
fn history_in_pages(
    database: &PgDatabase,
    limit: usize,
    cancelled: &dyn Fn() -> bool,
) -> Result<Vec<HistoryRow>, StoreError> {
    let mut out = Vec::new();
    let mut before = None;
    let mut read = 0usize;
    while read < limit && !cancelled() {
        let page = HISTORY_PAGE.min(limit - read);
        let rows = postgres::network::history_page(database, before, page as i64)?;
        read += rows.len();
        before = rows.last().map(|(id, _)| *id);
        let complete = rows.len() == page;
        out.extend(rows.into_iter().filter_map(|(_, row)| row));
        if !complete {
            break;
        }
    }
    Ok(out)
}

/// A row of (feature vector, process name, label); `None` when the vector is not a JSON object.
pub(crate) fn history_row(
    vector: Option<String>,
    process_name: Option<String>,
    label: Option<i64>,
) -> Option<HistoryRow> {
    let Some(Ok(serde_json::Value::Object(features))) = vector.map(|text| serde_json::from_str(&text)) else {
        return None;
    };
    Some(HistoryRow { features, process_name, anomalous: label == Some(1) })
}

/// Times are stored as RFC 3339 text with microseconds (UTC), which sorts as time does.
fn timestamp(time: SystemTime) -> String {
    humantime::format_rfc3339_micros(time).to_string()
}
