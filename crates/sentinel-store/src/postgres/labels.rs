//! The labelled-samples dataset on PostgreSQL (`crate::labels` on SQLite).
//!
//! The precedence rule (a manual label is never replaced by an automatic one) is the upsert's
//! `WHERE`, which PostgreSQL evaluates on the row as it stands once locked, so it holds however
//! the replicas' writes interleave. An import writes a batch's labels in hash order: two imports
//! (or an import and a label set alone) then lock rows in the same order and never deadlock.

use std::sync::Arc;

use deadpool_postgres::Transaction;
use tokio_postgres::Row;

use super::PgDatabase;
use crate::StoreError;
use crate::labels::{LabelSource, LabelledSample, ValidLabel};
use crate::sample_hash::SampleHash;
use crate::vault::Vault;

const UPSERT: &str = "INSERT INTO labels (sha256, y, source, labelled_at, note) VALUES ($1, $2, $3, $4, $5)
    ON CONFLICT (sha256) DO UPDATE SET
        y = excluded.y, source = excluded.source, labelled_at = excluded.labelled_at, note = excluded.note
    WHERE labels.source <> 'manual' OR excluded.source = 'manual'";

const SELECT: &str = "SELECT labels.sha256, y, source, labelled_at, note, samples.stored_path IS NOT NULL
    FROM labels LEFT JOIN samples ON samples.sha256 = labels.sha256";

/// Writes a label in the caller's transaction unless a manual one takes precedence; returns
/// whether it was written.
pub(crate) async fn upsert(
    transaction: &Transaction<'_>,
    label: &ValidLabel,
    now: i64,
) -> Result<bool, StoreError> {
    let statement = transaction.prepare_cached(UPSERT).await?;
    let changed = transaction
        .execute(
            &statement,
            &[&label.hash.as_str(), &i64::from(label.y), &label.source.as_str(), &now, &label.note],
        )
        .await?;
    Ok(changed == 1)
}

/// Writes a batch of labels in one transaction; answers, in the order given, whether each was
/// written. Labels of one hash are applied in the order given, so the last one wins as it would
/// in that order.
pub(crate) fn upsert_all(
    database: &PgDatabase,
    labels: Vec<ValidLabel>,
    now: i64,
) -> Result<Vec<bool>, StoreError> {
    database.run(move |mut client| async move {
        let mut order: Vec<usize> = (0..labels.len()).collect();
        // Stable: the labels of one hash keep their order.
        order.sort_by(|&a, &b| labels[a].hash.as_str().cmp(labels[b].hash.as_str()));
        let transaction = client.transaction().await?;
        let mut written = vec![false; labels.len()];
        for index in order {
            written[index] = upsert(&transaction, &labels[index], now).await?;
        }
        transaction.commit().await?;
        Ok(written)
    })
}

/// The label of a sample, or `None`.
pub(crate) fn get(
    database: &PgDatabase,
    vault: Arc<Vault>,
    hash: SampleHash,
) -> Result<Option<LabelledSample>, StoreError> {
    database.run(move |client| async move {
        let statement = client.prepare_cached(&format!("{SELECT} WHERE labels.sha256 = $1")).await?;
        let row = client.query_opt(&statement, &[&hash.as_str()]).await?;
        row.map(|row| labelled(&vault, &row)).transpose()
    })
}

/// Up to `limit` labelled samples in hash order, after the hash `after`.
pub(crate) fn page(
    database: &PgDatabase,
    vault: Arc<Vault>,
    after: Option<String>,
    limit: i64,
) -> Result<Vec<LabelledSample>, StoreError> {
    database.run(move |client| async move {
        let statement = client
            .prepare_cached(&format!(
                "{SELECT} WHERE $1::TEXT IS NULL OR labels.sha256 > $1 ORDER BY labels.sha256 LIMIT $2"
            ))
            .await?;
        let rows = client.query(&statement, &[&after, &limit]).await?;
        rows.iter().map(|row| labelled(&vault, row)).collect()
    })
}

fn labelled(vault: &Vault, row: &Row) -> Result<LabelledSample, StoreError> {
    let sha256: String = row.try_get(0)?;
    let source: String = row.try_get(2)?;
    // The table's CHECK admits only known sources.
    let source = LabelSource::from_name(&source)
        .ok_or_else(|| StoreError::Postgres(format!("unknown label source {source:?}")))?;
    let y: i64 = row.try_get(1)?;
    // The table's CHECK keeps y to 0 or 1.
    let y = u8::try_from(y).map_err(|_| StoreError::Postgres(format!("label y {y} out of range")))?;
    // The path is derived from the hash, as for samples, never read from the database.
    let stored: Option<bool> = row.try_get(5)?;
    let file_path = match stored.unwrap_or(false) {
        true => SampleHash::parse(&sha256).ok().map(|hash| vault.path_of(&hash)),
        false => None,
    };
    Ok(LabelledSample { sha256, y, source, labelled_at: row.try_get(3)?, note: row.try_get(4)?, file_path })
}
