//! The network tables on PostgreSQL (`crate::network` on SQLite): the results writer's batches,
//! the retention, item ids, the journal, feedback, metrics and history.
//!
//! Replicas write at once here, where SQLite had one writer: a batch's rows go in with a few
//! multi-row statements (`UNNEST` of one array per column) in one transaction; item ids come in
//! blocks from the sequence `network_item_ids`; a broker delivery is claimed by inserting its
//! `broker_deliveries` row with `ON CONFLICT DO NOTHING`, which waits for a replica claiming the
//! same one to commit or roll back, so exactly one of them stores its items.

use std::collections::HashSet;
use std::time::SystemTime;

use deadpool_postgres::Transaction;

use super::PgDatabase;
use crate::StoreError;
use crate::network::writer::{BatchEntry, BatchOutcome, Deleted, feature_vector, saturating_i64};
use crate::network::{
    HistoryExtent, HistoryRow, ItemLabel, LabelledPrediction, MetricsSource, ModelMetricsRow,
    NetworkRowCounts, ScoredItem, history_row,
};

/// The advisory lock that serialises taking blocks of item ids ("SNTI").
const ITEM_IDS_LOCK: i64 = 0x534E_5449;

/// Takes `count` consecutive item ids from `network_item_ids` and returns the first. A block
/// is the sequence's next value and the `count - 1` after it: the advisory lock keeps another
/// replica's `nextval` out of the block between the two steps.
pub(crate) fn take_item_ids(database: &PgDatabase, count: i64) -> Result<i64, StoreError> {
    database.run(move |mut client| async move {
        let transaction = client.transaction().await?;
        transaction.execute("SELECT pg_advisory_xact_lock($1)", &[&ITEM_IDS_LOCK]).await?;
        let last: i64 = transaction
            .query_one("SELECT setval('network_item_ids', nextval('network_item_ids') + $1 - 1)", &[&count])
            .await?
            .get(0);
        transaction.commit().await?;
        Ok(last - count + 1)
    })
}

/// The highest item id handed out so far by any replica (0 before the first).
pub(crate) fn highest_item_id(database: &PgDatabase) -> Result<i64, StoreError> {
    database.run(|client| async move {
        let row = client
            .query_one("SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM network_item_ids", &[])
            .await?;
        Ok(row.get(0))
    })
}

const INSERT_CONNECTIONS: &str = "INSERT INTO network_connections (id, timestamp, process_id, process_name,
        local_ip, local_port, remote_ip, remote_port, protocol, state, bytes_sent, bytes_received)
    SELECT * FROM UNNEST($1::BIGINT[], $2::TIMESTAMPTZ[], $3::BIGINT[], $4::TEXT[], $5::TEXT[], $6::BIGINT[],
        $7::TEXT[], $8::BIGINT[], $9::TEXT[], $10::TEXT[], $11::BIGINT[], $12::BIGINT[])";

const INSERT_FEATURES: &str =
    "INSERT INTO network_features (id, timestamp, connection_id, feature_vector, label, session_id)
    SELECT id, at, connection_id, vector, 0, session
    FROM UNNEST($1::BIGINT[], $2::TIMESTAMPTZ[], $3::BIGINT[], $4::TEXT[], $5::TEXT[])
        AS f (id, at, connection_id, vector, session)";

// In the order given, so that prediction ids follow the items' order as on SQLite (the ensemble's
// row after its members').
const INSERT_PREDICTIONS: &str =
    "INSERT INTO predictions (timestamp, feature_id, model_name, anomaly_score, is_anomaly,
        confidence, explanation)
    SELECT at, feature_id, model, score, anomaly, confidence, explanation
    FROM UNNEST($1::TIMESTAMPTZ[], $2::BIGINT[], $3::TEXT[], $4::DOUBLE PRECISION[], $5::BOOLEAN[],
        $6::DOUBLE PRECISION[], $7::TEXT[]) WITH ORDINALITY
        AS p (at, feature_id, model, score, anomaly, confidence, explanation, position)
    ORDER BY position";

// Sorted, so that replicas claiming the same deliveries lock them in one order (no deadlock).
const CLAIM_DELIVERIES: &str = "INSERT INTO broker_deliveries (record_id, stored_at)
    SELECT record_id, $2 FROM UNNEST($1::TEXT[]) AS d (record_id)
    ORDER BY record_id
    ON CONFLICT DO NOTHING RETURNING record_id";

/// Writes a batch of the results writer in one transaction.
pub(crate) fn write_batch(database: &PgDatabase, batch: Vec<BatchEntry>) -> Result<BatchOutcome, StoreError> {
    database.run(move |mut client| async move {
        let transaction = client.transaction().await?;
        let mut claimed = claim_deliveries(&transaction, &batch).await?;
        let mut outcome = BatchOutcome::default();
        let mut items: Vec<&ScoredItem> = Vec::new();
        let mut journal_ids: Vec<i64> = Vec::new();
        for entry in &batch {
            match entry {
                BatchEntry::Item(item) => items.push(item),
                BatchEntry::Snapshot { journal_id, items: snapshot } => {
                    items.extend(snapshot);
                    journal_ids.push(*journal_id);
                }
                BatchEntry::Metrics(rows) => {
                    insert_metrics(&transaction, rows).await?;
                    outcome.written += rows.len();
                }
                BatchEntry::Delivery { record_id, items: delivered } => {
                    // The first of the batch's deliveries of one record takes its claim.
                    let stored_now = claimed.remove(record_id);
                    outcome.claimed.push(stored_now);
                    if stored_now {
                        items.extend(delivered);
                    }
                }
            }
        }
        insert_items(&transaction, &items).await?;
        outcome.written += items.len();
        if !journal_ids.is_empty() {
            transaction.execute("DELETE FROM ingest_journal WHERE id = ANY($1)", &[&journal_ids]).await?;
        }
        transaction.commit().await?;
        Ok(outcome)
    })
}

/// Inserts the `broker_deliveries` rows of the batch's deliveries; returns those inserted now.
async fn claim_deliveries(
    transaction: &Transaction<'_>,
    batch: &[BatchEntry],
) -> Result<HashSet<String>, StoreError> {
    let record_ids: Vec<&str> = batch
        .iter()
        .filter_map(|entry| match entry {
            BatchEntry::Delivery { record_id, .. } => Some(record_id.as_str()),
            _ => None,
        })
        .collect();
    if record_ids.is_empty() {
        return Ok(HashSet::new());
    }
    let rows = transaction.query(CLAIM_DELIVERIES, &[&record_ids, &SystemTime::now()]).await?;
    rows.iter().map(|row| Ok(row.try_get(0)?)).collect()
}

/// Inserts items: their connections (with ids drawn from the table's identity first, so that
/// each feature row can name its connection), the feature rows, then the predictions.
async fn insert_items(transaction: &Transaction<'_>, items: &[&ScoredItem]) -> Result<(), StoreError> {
    if items.is_empty() {
        return Ok(());
    }
    let connected = items.iter().filter(|item| item.connection.is_some()).count() as i64;
    let mut connection_ids = transaction
        .query(
            "SELECT nextval(pg_get_serial_sequence('network_connections', 'id')) FROM generate_series(1, $1::BIGINT)",
            &[&connected],
        )
        .await?
        .into_iter()
        .map(|row| row.get::<_, i64>(0));
    let mut connections = ConnectionColumns::default();
    let mut features = FeatureColumns::default();
    let mut predictions = PredictionColumns::default();
    for item in items {
        let connection_id = match &item.connection {
            Some(connection) => {
                let id = connection_ids.next().ok_or_else(|| {
                    StoreError::Postgres("fewer connection ids than connections were drawn".into())
                })?;
                connections.id.push(id);
                connections.timestamp.push(connection.timestamp);
                connections.process_id.push(connection.process_id.map(i64::from));
                connections.process_name.push(connection.process_name.clone());
                connections.local_ip.push(connection.local_ip.clone());
                connections.local_port.push(i64::from(connection.local_port));
                connections.remote_ip.push(connection.remote_ip.clone());
                connections.remote_port.push(i64::from(connection.remote_port));
                connections.protocol.push(connection.protocol.clone());
                connections.state.push(connection.state.clone());
                connections.bytes_sent.push(connection.bytes_sent.map(saturating_i64));
                connections.bytes_received.push(connection.bytes_received.map(saturating_i64));
                Some(id)
            }
            None => None,
        };
        features.id.push(item.id);
        features.timestamp.push(item.observed);
        features.connection_id.push(connection_id);
        features.vector.push(feature_vector(item));
        features.session.push(item.session.clone());
        for row in &item.predictions {
            predictions.timestamp.push(item.observed);
            predictions.feature_id.push(item.id);
            predictions.model.push(row.model.clone());
            predictions.score.push(row.score);
            predictions.is_anomaly.push(row.is_anomaly);
            predictions.confidence.push(row.confidence);
            predictions.explanation.push(row.explanation.clone());
        }
    }
    if !connections.id.is_empty() {
        let c = &connections;
        transaction
            .execute(
                INSERT_CONNECTIONS,
                &[
                    &c.id,
                    &c.timestamp,
                    &c.process_id,
                    &c.process_name,
                    &c.local_ip,
                    &c.local_port,
                    &c.remote_ip,
                    &c.remote_port,
                    &c.protocol,
                    &c.state,
                    &c.bytes_sent,
                    &c.bytes_received,
                ],
            )
            .await?;
    }
    let f = &features;
    transaction
        .execute(INSERT_FEATURES, &[&f.id, &f.timestamp, &f.connection_id, &f.vector, &f.session])
        .await
        .map_err(|error| match error.code() {
            // Ids are handed out once: a second row with one is a caller's bug, said plainly.
            Some(code) if *code == tokio_postgres::error::SqlState::UNIQUE_VIOLATION => StoreError::Postgres(
                "an item id was stored twice (ids must come from reserve_item_ids)".into(),
            ),
            _ => StoreError::from(error),
        })?;
    if !predictions.feature_id.is_empty() {
        let p = &predictions;
        transaction
            .execute(
                INSERT_PREDICTIONS,
                &[
                    &p.timestamp,
                    &p.feature_id,
                    &p.model,
                    &p.score,
                    &p.is_anomaly,
                    &p.confidence,
                    &p.explanation,
                ],
            )
            .await?;
    }
    Ok(())
}

/// A batch's connections, one array per column.
#[derive(Default)]
struct ConnectionColumns {
    id: Vec<i64>,
    timestamp: Vec<SystemTime>,
    process_id: Vec<Option<i64>>,
    process_name: Vec<Option<String>>,
    local_ip: Vec<String>,
    local_port: Vec<i64>,
    remote_ip: Vec<String>,
    remote_port: Vec<i64>,
    protocol: Vec<Option<String>>,
    state: Vec<Option<String>>,
    bytes_sent: Vec<Option<i64>>,
    bytes_received: Vec<Option<i64>>,
}

#[derive(Default)]
struct FeatureColumns {
    id: Vec<i64>,
    timestamp: Vec<SystemTime>,
    connection_id: Vec<Option<i64>>,
    vector: Vec<String>,
    session: Vec<String>,
}

#[derive(Default)]
struct PredictionColumns {
    timestamp: Vec<SystemTime>,
    feature_id: Vec<i64>,
    model: Vec<String>,
    score: Vec<f64>,
    is_anomaly: Vec<bool>,
    confidence: Vec<f64>,
    explanation: Vec<Option<String>>,
}

async fn insert_metrics(transaction: &Transaction<'_>, rows: &[ModelMetricsRow]) -> Result<(), StoreError> {
    let insert = transaction
        .prepare_cached(
            "INSERT INTO model_metrics (model_name, timestamp, accuracy, precision_score, recall, f1_score,
             auc_roc, false_positive_rate, source, samples, anomalies)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .await?;
    for row in rows {
        transaction
            .execute(
                &insert,
                &[
                    &row.model_name,
                    &row.measured_at,
                    &row.accuracy,
                    &row.precision,
                    &row.recall,
                    &row.f1,
                    &row.auc_roc,
                    &row.false_positive_rate,
                    &row.source.as_str(),
                    &saturating_i64(row.samples),
                    &saturating_i64(row.anomalies),
                ],
            )
            .await?;
    }
    Ok(())
}

/// Writes rows of `model_metrics` in one transaction.
pub(crate) fn record_metrics(database: &PgDatabase, rows: Vec<ModelMetricsRow>) -> Result<(), StoreError> {
    database.run(move |mut client| async move {
        let transaction = client.transaction().await?;
        insert_metrics(&transaction, &rows).await?;
        transaction.commit().await?;
        Ok(())
    })
}

/// Deletes what is older than `cutoff`, in one transaction. Unlike SQLite, PostgreSQL enforces
/// the foreign keys: predictions and feedback of the deleted features go whatever their own
/// time, and a connection still named by a kept feature row stays.
pub(crate) fn apply_retention(database: &PgDatabase, cutoff: SystemTime) -> Result<Deleted, StoreError> {
    database.run(move |mut client| async move {
        let transaction = client.transaction().await?;
        transaction
            .execute(
                "DELETE FROM network_feedback WHERE feature_id IN
                 (SELECT id FROM network_features WHERE timestamp < $1)",
                &[&cutoff],
            )
            .await?;
        let predictions = transaction
            .execute(
                "DELETE FROM predictions WHERE timestamp < $1
                 OR feature_id IN (SELECT id FROM network_features WHERE timestamp < $1)",
                &[&cutoff],
            )
            .await?;
        let features =
            transaction.execute("DELETE FROM network_features WHERE timestamp < $1", &[&cutoff]).await?;
        let connections = transaction
            .execute(
                "DELETE FROM network_connections c WHERE timestamp < $1
                 AND NOT EXISTS (SELECT 1 FROM network_features f WHERE f.connection_id = c.id)",
                &[&cutoff],
            )
            .await?;
        let deliveries =
            transaction.execute("DELETE FROM broker_deliveries WHERE stored_at < $1", &[&cutoff]).await?;
        transaction.commit().await?;
        Ok(Deleted { predictions, features, connections, deliveries })
    })
}

/// Labels items all or nothing; returns the unknown ids (ascending), having written nothing,
/// when there are any. The items are locked (`FOR SHARE`) from the check to the commit, so the
/// retention of another replica cannot delete one in between.
pub(crate) fn label_items(
    database: &PgDatabase,
    labels: Vec<ItemLabel>,
    analyst: String,
    at: SystemTime,
) -> Result<Vec<i64>, StoreError> {
    database.run(move |mut client| async move {
        let transaction = client.transaction().await?;
        let ids: Vec<i64> = labels.iter().map(|label| label.id).collect();
        let found: HashSet<i64> = transaction
            .query("SELECT id FROM network_features WHERE id = ANY($1) FOR SHARE", &[&ids])
            .await?
            .iter()
            .map(|row| row.get(0))
            .collect();
        let mut unknown: Vec<i64> = ids.into_iter().filter(|id| !found.contains(id)).collect();
        if !unknown.is_empty() {
            unknown.sort_unstable();
            unknown.dedup();
            return Ok(unknown);
        }
        let set_label =
            transaction.prepare_cached("UPDATE network_features SET label = $2 WHERE id = $1").await?;
        let record = transaction
            .prepare_cached(
                "INSERT INTO network_feedback (feature_id, labelled_at, analyst, note) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (feature_id) DO UPDATE SET labelled_at = excluded.labelled_at,
                 analyst = excluded.analyst, note = excluded.note",
            )
            .await?;
        for label in &labels {
            transaction.execute(&set_label, &[&label.id, &i64::from(label.anomalous)]).await?;
            transaction.execute(&record, &[&label.id, &at, &analyst, &label.note]).await?;
        }
        transaction.commit().await?;
        Ok(Vec::new())
    })
}

pub(crate) fn labelled_predictions(
    database: &PgDatabase,
    since: SystemTime,
) -> Result<Vec<LabelledPrediction>, StoreError> {
    database.run(move |client| async move {
        let rows = client
            .query(
                "SELECT f.id, p.model_name, p.anomaly_score, p.is_anomaly, f.label
                 FROM network_feedback b JOIN network_features f ON f.id = b.feature_id
                 JOIN predictions p ON p.feature_id = f.id
                 WHERE f.timestamp >= $1 ORDER BY f.id, p.id",
                &[&since],
            )
            .await?;
        rows.iter()
            .map(|row| {
                Ok(LabelledPrediction {
                    item: row.try_get(0)?,
                    model: row.try_get::<_, Option<String>>(1)?.unwrap_or_default(),
                    score: row.try_get::<_, Option<f64>>(2)?.unwrap_or(f64::NAN),
                    is_anomaly: row.try_get::<_, Option<bool>>(3)?.unwrap_or(false),
                    anomalous: row.try_get::<_, Option<i64>>(4)? == Some(1),
                })
            })
            .collect()
    })
}

pub(crate) fn labelled_rows(database: &PgDatabase, since: SystemTime) -> Result<Vec<HistoryRow>, StoreError> {
    database.run(move |client| async move {
        let rows = client
            .query(
                "SELECT f.feature_vector, c.process_name, f.label
                 FROM network_feedback b JOIN network_features f ON f.id = b.feature_id
                 LEFT JOIN network_connections c ON c.id = f.connection_id
                 WHERE f.timestamp >= $1 ORDER BY f.id",
                &[&since],
            )
            .await?;
        let mut out = Vec::new();
        for row in &rows {
            if let Some(row) = history_row(row.try_get(0)?, row.try_get(1)?, row.try_get(2)?) {
                out.push(row);
            }
        }
        Ok(out)
    })
}

/// Up to `limit` feature rows below the id `before` (all when `None`), newest first, as
/// (id, row) where the row is `None` when its vector is not a JSON object.
pub(crate) fn history_page(
    database: &PgDatabase,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<(i64, Option<HistoryRow>)>, StoreError> {
    database.run(move |client| async move {
        let rows = client
            .query(
                "SELECT f.id, f.feature_vector, c.process_name, f.label FROM network_features f
                 LEFT JOIN network_connections c ON c.id = f.connection_id
                 WHERE $1::BIGINT IS NULL OR f.id < $1 ORDER BY f.id DESC LIMIT $2",
                &[&before, &limit],
            )
            .await?;
        rows.iter()
            .map(|row| Ok((row.try_get(0)?, history_row(row.try_get(1)?, row.try_get(2)?, row.try_get(3)?))))
            .collect()
    })
}

pub(crate) fn model_metrics(
    database: &PgDatabase,
    source: MetricsSource,
    limit: i64,
) -> Result<Vec<ModelMetricsRow>, StoreError> {
    database.run(move |client| async move {
        let rows = client
            .query(
                "SELECT model_name, timestamp, accuracy, precision_score, recall, f1_score, auc_roc,
                 false_positive_rate, samples, anomalies FROM model_metrics WHERE source = $1
                 ORDER BY id DESC LIMIT $2",
                &[&source.as_str(), &limit],
            )
            .await?;
        let count = |value: Option<i64>| u64::try_from(value.unwrap_or(0)).unwrap_or(0);
        rows.iter()
            .map(|row| {
                Ok(ModelMetricsRow {
                    model_name: row.try_get(0)?,
                    measured_at: row.try_get(1)?,
                    source,
                    samples: count(row.try_get(8)?),
                    anomalies: count(row.try_get(9)?),
                    accuracy: row.try_get::<_, Option<f64>>(2)?.unwrap_or(f64::NAN),
                    precision: row.try_get(3)?,
                    recall: row.try_get(4)?,
                    f1: row.try_get(5)?,
                    auc_roc: row.try_get(6)?,
                    false_positive_rate: row.try_get(7)?,
                })
            })
            .collect()
    })
}

pub(crate) fn journal_snapshot(database: &PgDatabase, snapshot: Vec<u8>) -> Result<i64, StoreError> {
    database.run(move |client| async move {
        let row = client
            .query_one(
                "INSERT INTO ingest_journal (received_at, snapshot) VALUES ($1, $2) RETURNING id",
                &[&SystemTime::now(), &snapshot],
            )
            .await?;
        Ok(row.try_get(0)?)
    })
}

pub(crate) fn forget_snapshot(database: &PgDatabase, id: i64) -> Result<(), StoreError> {
    database.run(move |client| async move {
        client.execute("DELETE FROM ingest_journal WHERE id = $1", &[&id]).await?;
        Ok(())
    })
}

pub(crate) fn journalled_snapshots(database: &PgDatabase) -> Result<Vec<(i64, Vec<u8>)>, StoreError> {
    database.run(|client| async move {
        let rows = client.query("SELECT id, snapshot FROM ingest_journal ORDER BY id", &[]).await?;
        rows.iter().map(|row| Ok((row.try_get(0)?, row.try_get(1)?))).collect()
    })
}

pub(crate) fn history_extent(database: &PgDatabase) -> Result<HistoryExtent, StoreError> {
    database.run(|client| async move {
        let row = client.query_one("SELECT count(*), min(timestamp) FROM network_features", &[]).await?;
        Ok(HistoryExtent {
            rows: u64::try_from(row.try_get::<_, i64>(0)?).unwrap_or(0),
            oldest: row.try_get(1)?,
        })
    })
}

pub(crate) fn row_counts(database: &PgDatabase) -> Result<NetworkRowCounts, StoreError> {
    database.run(|client| async move {
        let row = client
            .query_one(
                "SELECT (SELECT count(*) FROM network_connections), (SELECT count(*) FROM network_features),
                 (SELECT count(*) FROM predictions), (SELECT count(*) FROM model_metrics),
                 (SELECT count(*) FROM network_feedback), (SELECT count(*) FROM ingest_journal)",
                &[],
            )
            .await?;
        let count = |index: usize| -> Result<u64, StoreError> {
            Ok(u64::try_from(row.try_get::<_, i64>(index)?).unwrap_or(0))
        };
        Ok(NetworkRowCounts {
            connections: count(0)?,
            features: count(1)?,
            predictions: count(2)?,
            model_metrics: count(3)?,
            feedback: count(4)?,
            journalled_snapshots: count(5)?,
        })
    })
}

pub(crate) fn journalled_count(database: &PgDatabase) -> Result<u64, StoreError> {
    database.run(|client| async move {
        let row = client.query_one("SELECT count(*) FROM ingest_journal", &[]).await?;
        Ok(u64::try_from(row.try_get::<_, i64>(0)?).unwrap_or(0))
    })
}
