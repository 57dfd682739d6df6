//! The network results writer: one thread that writes scored items in batches (one
//! transaction per batch), fed by a bounded queue, and applies the retention. On SQLite it has
//! its own connection to `network.db`; on PostgreSQL it hands each batch to the pool
//! (`crate::postgres::network`), so replicas' writers commit side by side.
//!
//! The live path never waits for the disk: when the disk falls behind, new live items are
//! dropped and counted rather than piling up in memory. An agent's accepted snapshot waits for
//! room instead (it was promised), and is one item of the queue: its rows and the deletion of
//! its `ingest_journal` entry are always in the same transaction, so after a crash a snapshot
//! is either wholly stored and out of the journal, or wholly absent and replayed — never both.
//! A broker delivery waits for room too, and its items are written in the transaction that
//! records the delivery in `broker_deliveries` (skipped when it is there already: a redelivery);
//! its caller is told once that transaction committed, and only then acknowledges the message.
//!
//! The SQLite connection uses `synchronous = NORMAL`: these rows are high-volume observations,
//! and a power loss that takes the last ones also takes their journal deletions with them (the
//! WAL keeps commit order), so accepted snapshots are replayed, not lost. A delivery's answer
//! waits for a commit that is durable (`synchronous = FULL` is set for the transactions holding
//! one), since its message is acknowledged, and so not redelivered, after it.

use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use rusqlite::{Connection, Transaction, TransactionBehavior, params};

use super::records::{ModelMetricsRow, ScoredItem, WriterStats};
use super::timestamp;
use crate::StoreError;
use crate::postgres::PgDatabase;
use crate::sqlcipher::{self, DatabaseKey};

/// How the writer batches and what it keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriterSettings {
    /// Items written in one transaction at most (a snapshot is never split, so one batch can
    /// hold more when a snapshot is larger).
    pub batch: usize,
    /// Longest time an item waits before being written.
    pub flush_interval: Duration,
    /// Items waiting for the writer; beyond, new live items are dropped and counted.
    pub queue: usize,
    /// Connections, features, predictions and broker deliveries older than this are deleted,
    /// at start and hourly.
    pub retention: Duration,
}

/// How often the retention runs.
const RETENTION_EVERY: Duration = Duration::from_secs(3600);

/// Told once a delivery's transaction committed: `Ok(true)` stored now, `Ok(false)` stored
/// before (a redelivery), or why it was not stored.
pub(crate) type DeliveryAnswer = Box<dyn FnOnce(Result<bool, StoreError>) + Send>;

/// One entry of a batch: what one transaction writes.
pub(crate) enum BatchEntry {
    Item(Box<ScoredItem>),
    /// An accepted snapshot's items, written with the deletion of its journal entry.
    Snapshot {
        journal_id: i64,
        items: Vec<ScoredItem>,
    },
    Metrics(Vec<ModelMetricsRow>),
    /// A broker delivery's items, written with its `broker_deliveries` row unless that row
    /// exists already.
    Delivery {
        record_id: String,
        items: Vec<ScoredItem>,
    },
}

impl BatchEntry {
    fn items(&self) -> usize {
        match self {
            BatchEntry::Item(_) => 1,
            BatchEntry::Snapshot { items, .. } | BatchEntry::Delivery { items, .. } => items.len(),
            BatchEntry::Metrics(rows) => rows.len(),
        }
    }
}

/// What a batch's transaction did.
#[derive(Debug, Default)]
pub(crate) struct BatchOutcome {
    /// Rows of items and metrics written (a skipped redelivery's items are not).
    pub written: usize,
    /// For each delivery of the batch, in order: stored now (true) or found stored (false).
    pub claimed: Vec<bool>,
}

enum WriterItem {
    Write(BatchEntry),
    Deliver {
        record_id: String,
        items: Vec<ScoredItem>,
        answer: DeliveryAnswer,
    },
    /// Asks for what is queued before it to be written now; answered once it is.
    Flush(SyncSender<()>),
}

/// Where the writer writes.
pub(crate) enum WriterTarget {
    Sqlite(Connection),
    Postgres(Arc<PgDatabase>),
}

impl WriterTarget {
    /// The writer's own connection to `network.db`.
    pub(crate) fn sqlite(
        path: &Path,
        busy_timeout: Duration,
        key: Option<&DatabaseKey>,
    ) -> Result<WriterTarget, StoreError> {
        let connection = Connection::open(path)?;
        sqlcipher::apply_key(&connection, key, path)?;
        connection.busy_timeout(busy_timeout)?;
        connection.pragma_update(None, "synchronous", "NORMAL")?;
        Ok(WriterTarget::Sqlite(connection))
    }

    fn write(&mut self, batch: Vec<BatchEntry>) -> Result<BatchOutcome, StoreError> {
        match self {
            WriterTarget::Sqlite(connection) => Ok(write_batch(connection, &batch)?),
            WriterTarget::Postgres(database) => crate::postgres::network::write_batch(database, batch),
        }
    }

    /// Applies the retention now; a failure is logged, and retried at the next run.
    fn retain(&self, retention: Duration) {
        let cutoff = SystemTime::now().checked_sub(retention).unwrap_or(SystemTime::UNIX_EPOCH);
        let deleted = match self {
            WriterTarget::Sqlite(connection) => apply_retention(connection, cutoff).map_err(StoreError::from),
            WriterTarget::Postgres(database) => crate::postgres::network::apply_retention(database, cutoff),
        };
        match deleted {
            Ok(deleted) if deleted.any() => {
                let cutoff = timestamp(cutoff);
                let Deleted { predictions, features, connections, deliveries } = deleted;
                tracing::info!(
                    predictions,
                    features,
                    connections,
                    deliveries,
                    cutoff,
                    "network retention applied"
                );
            }
            Ok(_) => {}
            Err(error) => tracing::error!(%error, "network retention failed"),
        }
    }
}

/// Rows a retention run deleted.
#[derive(Debug, Default)]
pub(crate) struct Deleted {
    pub predictions: u64,
    pub features: u64,
    pub connections: u64,
    pub deliveries: u64,
}

impl Deleted {
    fn any(&self) -> bool {
        self.predictions + self.features + self.connections + self.deliveries > 0
    }
}

#[derive(Default)]
struct Counters {
    written: AtomicU64,
    dropped: AtomicU64,
    failed: AtomicU64,
}

/// The sending side of the writer thread.
pub(crate) struct ResultsWriter {
    sender: Mutex<Option<SyncSender<WriterItem>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    counters: Arc<Counters>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl ResultsWriter {
    pub(crate) fn start(target: WriterTarget, settings: WriterSettings) -> Result<ResultsWriter, StoreError> {
        let (sender, receiver) = std::sync::mpsc::sync_channel(settings.queue.max(1));
        let counters = Arc::new(Counters::default());
        let thread_counters = Arc::clone(&counters);
        let thread = std::thread::Builder::new()
            .name("network-writer".into())
            .spawn(move || write_loop(target, &receiver, settings, &thread_counters))
            .map_err(|error| {
                tracing::error!(%error, "cannot start the network writer thread");
                StoreError::WriterStopped
            })?;
        Ok(ResultsWriter { sender: Mutex::new(Some(sender)), thread: Mutex::new(Some(thread)), counters })
    }

    /// Queues an item; drops it (counted) when the writer is behind.
    pub(crate) fn store(&self, item: ScoredItem) {
        self.send(WriterItem::Write(BatchEntry::Item(Box::new(item))));
    }

    /// Queues a model's evaluation rows; dropped (counted) when the writer is behind.
    pub(crate) fn store_metrics(&self, rows: Vec<ModelMetricsRow>) {
        self.send(WriterItem::Write(BatchEntry::Metrics(rows)));
    }

    /// Queues an accepted snapshot's items, to be written in one transaction with the deletion
    /// of its journal entry; waits for room rather than dropping them.
    pub(crate) fn store_snapshot(&self, journal_id: i64, items: Vec<ScoredItem>) {
        let guard = lock(&self.sender);
        if let Some(sender) = guard.as_ref() {
            // The sender lock is held while waiting: `close` waits for it, then for the writer,
            // which keeps draining the queue.
            let _ = sender.send(WriterItem::Write(BatchEntry::Snapshot { journal_id, items }));
        }
    }

    /// Queues a broker delivery's items, waiting for room; `answer` is called once its
    /// transaction committed or failed, or at once when the writer is closed.
    pub(crate) fn store_delivery(&self, record_id: String, items: Vec<ScoredItem>, answer: DeliveryAnswer) {
        let unsent = {
            let guard = lock(&self.sender);
            match guard.as_ref() {
                Some(sender) => match sender.send(WriterItem::Deliver { record_id, items, answer }) {
                    Ok(()) => None,
                    Err(std::sync::mpsc::SendError(WriterItem::Deliver { answer, .. })) => Some(answer),
                    Err(_) => None,
                },
                None => Some(answer),
            }
        };
        // Answered outside the lock: the caller's closure may well queue the next delivery.
        if let Some(answer) = unsent {
            tell(answer, Err(StoreError::WriterStopped));
        }
    }

    fn send(&self, item: WriterItem) {
        let guard = lock(&self.sender);
        let Some(sender) = guard.as_ref() else { return };
        if let Err(
            TrySendError::Full(WriterItem::Write(entry))
            | TrySendError::Disconnected(WriterItem::Write(entry)),
        ) = sender.try_send(item)
        {
            self.counters.dropped.fetch_add(entry.items() as u64, Ordering::Relaxed);
        }
    }

    /// Writes what is queued now and returns once it is (blocking): for a caller that must see
    /// rows it was told of. Returns at once when the writer is closed.
    pub(crate) fn flush(&self) {
        let (done, written) = std::sync::mpsc::sync_channel(1);
        {
            let guard = lock(&self.sender);
            let Some(sender) = guard.as_ref() else { return };
            // Waits for room rather than being dropped: the caller waits for the answer.
            if sender.send(WriterItem::Flush(done)).is_err() {
                return;
            }
        }
        // An error means the writer thread ended, which writes nothing more either way.
        let _ = written.recv();
    }

    pub(crate) fn stats(&self) -> WriterStats {
        WriterStats {
            written: self.counters.written.load(Ordering::Relaxed),
            dropped: self.counters.dropped.load(Ordering::Relaxed),
            failed: self.counters.failed.load(Ordering::Relaxed),
        }
    }

    /// Writes what is queued and stops the thread (blocking). Later items are dropped.
    pub(crate) fn close(&self) {
        lock(&self.sender).take();
        if let Some(thread) = lock(&self.thread).take()
            && thread.join().is_err()
        {
            tracing::error!("the network writer thread had panicked");
        }
    }
}

impl Drop for ResultsWriter {
    fn drop(&mut self) {
        self.close();
    }
}

/// Calls a delivery's answer; a panic in the caller's closure is logged, and does not stop the
/// writer (the items of every other caller still have to be written).
fn tell(answer: DeliveryAnswer, result: Result<bool, StoreError>) {
    if std::panic::catch_unwind(AssertUnwindSafe(move || answer(result))).is_err() {
        tracing::error!("a broker delivery's answer panicked");
    }
}

fn write_loop(
    mut target: WriterTarget,
    receiver: &Receiver<WriterItem>,
    settings: WriterSettings,
    counters: &Counters,
) {
    let mut batch: Vec<BatchEntry> = Vec::new();
    let mut answers: Vec<DeliveryAnswer> = Vec::new();
    // At start, before anything queued is written, then hourly.
    let mut last_retention = Instant::now();
    target.retain(settings.retention);
    loop {
        let deadline = Instant::now() + settings.flush_interval;
        let mut closed = false;
        let mut items = 0;
        let mut flush = Vec::new();
        while items < settings.batch {
            let wait = deadline.saturating_duration_since(Instant::now());
            match receiver.recv_timeout(wait) {
                Ok(WriterItem::Flush(done)) => {
                    flush.push(done);
                    break;
                }
                Ok(WriterItem::Write(entry)) => {
                    items += entry.items();
                    batch.push(entry);
                }
                Ok(WriterItem::Deliver { record_id, items: delivered, answer }) => {
                    items += delivered.len();
                    batch.push(BatchEntry::Delivery { record_id, items: delivered });
                    answers.push(answer);
                }
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => {
                    closed = true;
                    break;
                }
            }
        }
        if !batch.is_empty() {
            match target.write(std::mem::take(&mut batch)) {
                Ok(outcome) => {
                    counters.written.fetch_add(outcome.written as u64, Ordering::Relaxed);
                    for (answer, claimed) in answers.drain(..).zip(outcome.claimed) {
                        tell(answer, Ok(claimed));
                    }
                }
                Err(error) => {
                    tracing::error!(%error, items, "network results could not be stored");
                    counters.failed.fetch_add(items as u64, Ordering::Relaxed);
                    let reason = error.to_string();
                    for answer in answers.drain(..) {
                        tell(answer, Err(StoreError::DeliveryNotStored(reason.clone())));
                    }
                }
            }
        }
        for done in flush {
            let _ = done.send(());
        }
        // Retention runs from the writer, which holds the write lock anyway.
        if last_retention.elapsed() >= RETENTION_EVERY {
            last_retention = Instant::now();
            target.retain(settings.retention);
        }
        if closed {
            return;
        }
    }
}

fn write_batch(connection: &mut Connection, batch: &[BatchEntry]) -> Result<BatchOutcome, rusqlite::Error> {
    let deliveries = batch.iter().any(|entry| matches!(entry, BatchEntry::Delivery { .. }));
    if deliveries {
        // Its answer lets the broker forget the message: the commit must survive a power loss.
        connection.pragma_update(None, "synchronous", "FULL")?;
    }
    let written = write_transaction(connection, batch);
    if deliveries && let Err(error) = connection.pragma_update(None, "synchronous", "NORMAL") {
        // The batch's outcome stands; later batches are merely synced more than they need.
        tracing::warn!(%error, "the network writer could not return to synchronous = NORMAL");
    }
    written
}

fn write_transaction(
    connection: &mut Connection,
    batch: &[BatchEntry],
) -> Result<BatchOutcome, rusqlite::Error> {
    // IMMEDIATE: the write lock is taken (waiting for the journal's writer if need be) before
    // anything is read, so the transaction never has to upgrade a read snapshot.
    let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut outcome = BatchOutcome::default();
    let stored_at = timestamp(SystemTime::now());
    for entry in batch {
        match entry {
            BatchEntry::Item(item) => insert_item(&transaction, item)?,
            BatchEntry::Snapshot { journal_id, items } => {
                for item in items {
                    insert_item(&transaction, item)?;
                }
                transaction
                    .prepare_cached("DELETE FROM ingest_journal WHERE id = ?1")?
                    .execute([journal_id])?;
            }
            BatchEntry::Metrics(rows) => insert_metrics(&transaction, rows)?,
            BatchEntry::Delivery { record_id, items } => {
                let claimed = transaction
                    .prepare_cached(
                        "INSERT OR IGNORE INTO broker_deliveries (record_id, stored_at) VALUES (?1, ?2)",
                    )?
                    .execute(params![record_id, stored_at])?
                    == 1;
                outcome.claimed.push(claimed);
                if !claimed {
                    continue;
                }
                for item in items {
                    insert_item(&transaction, item)?;
                }
            }
        }
        outcome.written += entry.items();
    }
    transaction.commit()?;
    Ok(outcome)
}

/// Inserts rows of `model_metrics`.
pub(super) fn insert_metrics(
    connection: &rusqlite::Connection,
    rows: &[ModelMetricsRow],
) -> Result<(), rusqlite::Error> {
    let mut insert = connection.prepare_cached(
        "INSERT INTO model_metrics (model_name, timestamp, accuracy, precision_score, recall, f1_score,
         auc_roc, false_positive_rate, source, samples, anomalies)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )?;
    for row in rows {
        insert.execute(params![
            row.model_name,
            timestamp(row.measured_at),
            row.accuracy,
            row.precision,
            row.recall,
            row.f1,
            row.auc_roc,
            row.false_positive_rate,
            row.source.as_str(),
            saturating_i64(row.samples),
            saturating_i64(row.anomalies),
        ])?;
    }
    Ok(())
}

/// Inserts an item: its connection (if any), its feature row, then one row per prediction.
fn insert_item(transaction: &Transaction<'_>, item: &ScoredItem) -> Result<(), rusqlite::Error> {
    let at = timestamp(item.observed);
    let connection_id = match &item.connection {
        Some(connection) => {
            transaction
                .prepare_cached(
                    "INSERT INTO network_connections (timestamp, process_id, process_name, local_ip, local_port,
                     remote_ip, remote_port, protocol, state, bytes_sent, bytes_received)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                )?
                .execute(params![
                    timestamp(connection.timestamp),
                    connection.process_id,
                    connection.process_name,
                    connection.local_ip,
                    connection.local_port,
                    connection.remote_ip,
                    connection.remote_port,
                    connection.protocol,
                    connection.state,
                    connection.bytes_sent.map(saturating_i64),
                    connection.bytes_received.map(saturating_i64),
                ])?;
            Some(transaction.last_insert_rowid())
        }
        None => None,
    };
    transaction
        .prepare_cached(
            "INSERT INTO network_features (id, timestamp, connection_id, feature_vector, label, session_id)
             VALUES (?1, ?2, ?3, ?4, 0, ?5)",
        )?
        .execute(params![item.id, at, connection_id, feature_vector(item), item.session])?;
    let feature_id = item.id;
    let mut insert_prediction = transaction.prepare_cached(
        "INSERT INTO predictions (timestamp, feature_id, model_name, anomaly_score, is_anomaly, confidence, explanation)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    for row in &item.predictions {
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
    Ok(())
}

/// The feature vector's JSON text.
pub(crate) fn feature_vector(item: &ScoredItem) -> String {
    serde_json::Value::Object(item.features.clone()).to_string()
}

pub(crate) fn saturating_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Deletes connections, features, their predictions and feedback observed before `cutoff`, and
/// the broker deliveries stored before it; model metrics and the journal are kept.
fn apply_retention(connection: &Connection, cutoff: SystemTime) -> Result<Deleted, rusqlite::Error> {
    let cutoff = timestamp(cutoff);
    // Children first: predictions and feedback point to features, features to connections.
    connection.execute(
        "DELETE FROM network_feedback WHERE feature_id IN (SELECT id FROM network_features WHERE timestamp < ?1)",
        [&cutoff],
    )?;
    let predictions = connection.execute("DELETE FROM predictions WHERE timestamp < ?1", [&cutoff])?;
    let features = connection.execute("DELETE FROM network_features WHERE timestamp < ?1", [&cutoff])?;
    let connections =
        connection.execute("DELETE FROM network_connections WHERE timestamp < ?1", [&cutoff])?;
    let deliveries = connection.execute("DELETE FROM broker_deliveries WHERE stored_at < ?1", [&cutoff])?;
    Ok(Deleted {
        predictions: predictions as u64,
        features: features as u64,
        connections: connections as u64,
        deliveries: deliveries as u64,
    })
}
