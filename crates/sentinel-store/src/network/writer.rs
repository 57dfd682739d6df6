//! The network results writer: one thread with its own connection that writes scored items in
//! batches (one transaction per batch), fed by a bounded queue, and applies the retention.
//!
//! The live path never waits for the disk: when the disk falls behind, new live items are
//! dropped and counted rather than piling up in memory. An agent's accepted snapshot waits for
//! room instead (it was promised), and is one item of the queue: its rows and the deletion of
//! its `ingest_journal` entry are always in the same transaction, so after a crash a snapshot
//! is either wholly stored and out of the journal, or wholly absent and replayed — never both.
//!
//! The connection uses `synchronous = NORMAL`: these rows are high-volume observations, and a
//! power loss that takes the last ones also takes their journal deletions with them (the WAL
//! keeps commit order), so accepted snapshots are replayed, not lost.

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
    /// Connections, features and predictions older than this are deleted, at start and hourly.
    pub retention: Duration,
}

/// How often the retention runs.
const RETENTION_EVERY: Duration = Duration::from_secs(3600);

/// Told, after the commit, whether a delivery's items were written (`false`: the record had
/// been stored before), or why they could not be.
pub(crate) type DeliveryCallback = Box<dyn FnOnce(Result<bool, StoreError>) + Send>;

enum WriterItem {
    Item(Box<ScoredItem>),
    /// An accepted snapshot's items, written with the deletion of its journal entry.
    Snapshot {
        journal_id: i64,
        items: Vec<ScoredItem>,
    },
    Metrics(Vec<ModelMetricsRow>),
    /// A broker record's items, written with its `broker_deliveries` row unless that row is
    /// there already; `stored` is told which after the commit.
    Delivery {
        msg_id: String,
        items: Vec<ScoredItem>,
        stored: DeliveryCallback,
    },
    /// Asks for what is queued before it to be written now; answered once it is.
    Flush(SyncSender<()>),
}

impl WriterItem {
    fn items(&self) -> usize {
        match self {
            WriterItem::Item(_) => 1,
            WriterItem::Snapshot { items, .. } | WriterItem::Delivery { items, .. } => items.len(),
            WriterItem::Metrics(rows) => rows.len(),
            WriterItem::Flush(_) => 0,
        }
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
    pub(crate) fn start(
        path: &Path,
        settings: WriterSettings,
        busy_timeout: Duration,
        key: Option<&DatabaseKey>,
    ) -> Result<ResultsWriter, StoreError> {
        let connection = Connection::open(path)?;
        sqlcipher::apply_key(&connection, key, path)?;
        connection.busy_timeout(busy_timeout)?;
        connection.pragma_update(None, "synchronous", "NORMAL")?;
        let (sender, receiver) = std::sync::mpsc::sync_channel(settings.queue.max(1));
        let counters = Arc::new(Counters::default());
        let thread_counters = Arc::clone(&counters);
        let thread = std::thread::Builder::new()
            .name("network-writer".into())
            .spawn(move || write_loop(connection, &receiver, settings, &thread_counters))
            .map_err(StoreError::io(path))?;
        Ok(ResultsWriter { sender: Mutex::new(Some(sender)), thread: Mutex::new(Some(thread)), counters })
    }

    /// Queues an item; drops it (counted) when the writer is behind.
    pub(crate) fn store(&self, item: ScoredItem) {
        self.send(WriterItem::Item(Box::new(item)));
    }

    /// Queues a model's evaluation rows; dropped (counted) when the writer is behind.
    pub(crate) fn store_metrics(&self, rows: Vec<ModelMetricsRow>) {
        self.send(WriterItem::Metrics(rows));
    }

    /// Queues an accepted snapshot's items, to be written in one transaction with the deletion
    /// of its journal entry; waits for room rather than dropping them.
    pub(crate) fn store_snapshot(&self, journal_id: i64, items: Vec<ScoredItem>) {
        let guard = lock(&self.sender);
        if let Some(sender) = guard.as_ref() {
            // The sender lock is held while waiting: `close` waits for it, then for the writer,
            // which keeps draining the queue.
            let _ = sender.send(WriterItem::Snapshot { journal_id, items });
        }
    }

    /// Queues a broker record's items, written with its `broker_deliveries` row in one
    /// transaction (skipped if the row exists); waits for room rather than dropping them.
    /// `stored` is called once the transaction is committed or failed, or at once with
    /// [`StoreError::WriterStopped`] when the writer is closed.
    pub(crate) fn store_delivery(&self, msg_id: String, items: Vec<ScoredItem>, stored: DeliveryCallback) {
        let guard = lock(&self.sender);
        let Some(sender) = guard.as_ref() else {
            stored(Err(StoreError::WriterStopped));
            return;
        };
        if let Err(std::sync::mpsc::SendError(WriterItem::Delivery { stored, .. })) =
            sender.send(WriterItem::Delivery { msg_id, items, stored })
        {
            stored(Err(StoreError::WriterStopped));
        }
    }

    fn send(&self, item: WriterItem) {
        let guard = lock(&self.sender);
        let Some(sender) = guard.as_ref() else { return };
        if let Err(TrySendError::Full(item) | TrySendError::Disconnected(item)) = sender.try_send(item) {
            self.counters.dropped.fetch_add(item.items() as u64, Ordering::Relaxed);
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

fn write_loop(
    mut connection: Connection,
    receiver: &Receiver<WriterItem>,
    settings: WriterSettings,
    counters: &Counters,
) {
    let mut batch: Vec<WriterItem> = Vec::new();
    // At start, before anything queued is written, then hourly.
    let mut last_retention = Instant::now();
    retain(&connection, settings.retention);
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
                Ok(item) => {
                    items += item.items();
                    batch.push(item);
                }
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => {
                    closed = true;
                    break;
                }
            }
        }
        if !batch.is_empty() {
            let outcome = write_batch(&mut connection, &batch);
            match &outcome {
                Ok(_) => counters.written.fetch_add(items as u64, Ordering::Relaxed),
                Err(error) => {
                    tracing::error!(%error, items, "network results could not be stored");
                    counters.failed.fetch_add(items as u64, Ordering::Relaxed)
                }
            };
            tell_deliveries(std::mem::take(&mut batch), outcome);
        }
        for done in flush {
            let _ = done.send(());
        }
        // Retention runs from the writer, which holds the write lock anyway.
        if last_retention.elapsed() >= RETENTION_EVERY {
            last_retention = Instant::now();
            retain(&connection, settings.retention);
        }
        if closed {
            return;
        }
    }
}

/// Tells each delivery of a written (or failed) batch what became of it, in queue order.
fn tell_deliveries(batch: Vec<WriterItem>, outcome: Result<Vec<bool>, rusqlite::Error>) {
    let (mut written, error) = match outcome {
        Ok(written) => (written.into_iter(), None),
        Err(error) => (Vec::new().into_iter(), Some(Arc::new(error))),
    };
    for item in batch {
        if let WriterItem::Delivery { stored, .. } = item {
            match &error {
                Some(error) => stored(Err(StoreError::Commit(Arc::clone(error)))),
                None => stored(Ok(written.next().unwrap_or(false))),
            }
        }
    }
}

/// Writes a batch in one transaction; returns, for each delivery in order, whether its items
/// were written (false: its record had been stored before).
fn write_batch(connection: &mut Connection, batch: &[WriterItem]) -> Result<Vec<bool>, rusqlite::Error> {
    // IMMEDIATE: the write lock is taken (waiting for the journal's writer if need be) before
    // anything is read, so the transaction never has to upgrade a read snapshot.
    let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut deliveries = Vec::new();
    for item in batch {
        match item {
            WriterItem::Item(item) => insert_item(&transaction, item)?,
            WriterItem::Snapshot { journal_id, items } => {
                for item in items {
                    insert_item(&transaction, item)?;
                }
                transaction
                    .prepare_cached("DELETE FROM ingest_journal WHERE id = ?1")?
                    .execute([journal_id])?;
            }
            WriterItem::Delivery { msg_id, items, .. } => {
                let recorded = transaction
                    .prepare_cached(
                        "INSERT INTO broker_deliveries (msg_id, stored_at) VALUES (?1, ?2)
                         ON CONFLICT (msg_id) DO NOTHING",
                    )?
                    .execute(params![msg_id, timestamp(SystemTime::now())])?;
                if recorded == 1 {
                    for item in items {
                        insert_item(&transaction, item)?;
                    }
                }
                deliveries.push(recorded == 1);
            }
            WriterItem::Metrics(rows) => insert_metrics(&transaction, rows)?,
            WriterItem::Flush(_) => {}
        }
    }
    transaction.commit()?;
    Ok(deliveries)
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
        .execute(params![
            item.id,
            at,
            connection_id,
            serde_json::Value::Object(item.features.clone()).to_string(),
            item.session
        ])?;
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

fn saturating_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Applies the retention now; a failure is logged, and retried at the next run.
fn retain(connection: &Connection, retention: Duration) {
    let cutoff = SystemTime::now().checked_sub(retention).unwrap_or(SystemTime::UNIX_EPOCH);
    if let Err(error) = apply_retention(connection, cutoff) {
        tracing::error!(%error, "network retention failed");
    }
}

/// Deletes connections, features, their predictions and feedback observed before `cutoff`;
/// model metrics and the journal are kept.
fn apply_retention(connection: &Connection, cutoff: SystemTime) -> Result<(), rusqlite::Error> {
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
    if predictions + features + connections > 0 {
        tracing::info!(predictions, features, connections, cutoff, "network retention applied");
    }
    Ok(())
}
