//! The samples table on PostgreSQL (`crate::samples` on SQLite), and sample retention
//! (`crate::retention`): where the vault's files and the rows listing them are kept in step while
//! replicas record and expire samples at once.
//!
//! The rule that keeps them in step: a vault file is deleted only by retention, and only while
//! retention holds the lock of the row listing it (`FOR UPDATE`, until the row says the file is
//! gone). A recorder locks its row first (its upsert) and only then looks whether the file is
//! there, so what it sees holds until it commits: a row never lists a file that is not there,
//! except after a crash between a file's deletion and its row's commit, which SQLite's store
//! allows too and the next run or record repairs.

use std::sync::Arc;

use tokio_postgres::Row;

use super::PgDatabase;
use crate::retention::RetentionReport;
use crate::sample_hash::SampleHash;
use crate::samples::SampleRows;
use crate::vault::Vault;
use crate::{SampleRecord, StoreError};

/// Inserts or refreshes the row, locking it until the transaction ends.
const UPSERT: &str = "INSERT INTO samples (sha256, size, first_seen, last_seen, stored_path)
    VALUES ($1, $2, $3, $3, $4)
    ON CONFLICT (sha256) DO UPDATE SET
        last_seen = GREATEST(samples.last_seen, excluded.last_seen),
        stored_path = excluded.stored_path
    RETURNING sha256, size, first_seen, last_seen, stored_path IS NOT NULL";

const SELECT: &str =
    "SELECT sha256, size, first_seen, last_seen, stored_path IS NOT NULL FROM samples WHERE sha256 = $1";

/// The expired rows of one batch, locked; rows another replica holds (a recorder refreshing
/// them, another retention run) are skipped rather than waited for.
const LOCK_EXPIRED: &str = "SELECT sha256 FROM samples
    WHERE stored_path IS NOT NULL AND last_seen < $1 ORDER BY last_seen LIMIT $2
    FOR UPDATE SKIP LOCKED";

const CLEAR_STORED_PATHS: &str = "UPDATE samples SET stored_path = NULL WHERE sha256 = ANY($1)";

/// A sample's row to record: its hash, size, when it was seen, and whether the vault must hold
/// its file (the caller stored it) or merely may.
pub(crate) struct NewSample {
    pub hash: SampleHash,
    pub size: i64,
    pub seen: i64,
    pub keep: bool,
}

/// Records the sample's row and `rows` in one transaction. `None` when the vault's file was
/// found otherwise than expected once the row was locked (deleted by retention since it was
/// stored): nothing was committed, and the caller stores the file again and retries.
pub(crate) fn record<R: SampleRows>(
    database: &PgDatabase,
    vault: Arc<Vault>,
    sample: NewSample,
    rows: R,
) -> Result<Option<(SampleRecord, R::Written)>, StoreError> {
    database.run(move |mut client| async move {
        let expected = sample.keep || contains(&vault, &sample.hash).await?;
        let transaction = client.transaction().await?;
        let statement = transaction.prepare_cached(UPSERT).await?;
        let stored_path = expected.then(|| Vault::relative_path(&sample.hash));
        let row = transaction
            .query_one(&statement, &[&sample.hash.as_str(), &sample.size, &sample.seen, &stored_path])
            .await?;
        // The row is locked now: retention cannot delete the file until this commits.
        if contains(&vault, &sample.hash).await? != expected {
            return Ok(None);
        }
        let record = sample_from_row(&vault, &row)?;
        let written = rows.write_postgres(&transaction, sample.seen).await?;
        transaction.commit().await?;
        Ok(Some((record, written)))
    })
}

/// Writes `rows` in a transaction of their own.
pub(crate) fn write_rows<R: SampleRows>(
    database: &PgDatabase,
    rows: R,
    now: i64,
) -> Result<R::Written, StoreError> {
    database.run(move |mut client| async move {
        let transaction = client.transaction().await?;
        let written = rows.write_postgres(&transaction, now).await?;
        transaction.commit().await?;
        Ok(written)
    })
}

/// The record of a sample, or `None`.
pub(crate) fn get(
    database: &PgDatabase,
    vault: Arc<Vault>,
    hash: SampleHash,
) -> Result<Option<SampleRecord>, StoreError> {
    database.run(move |client| async move {
        let statement = client.prepare_cached(SELECT).await?;
        let row = client.query_opt(&statement, &[&hash.as_str()]).await?;
        row.map(|row| sample_from_row(&vault, &row)).transpose()
    })
}

/// Deletes the vault files of up to `limit` samples last seen before `cutoff`, and clears their
/// rows' `stored_path`, in one transaction that holds the rows' locks meanwhile.
pub(crate) fn expire_batch(
    database: &PgDatabase,
    vault: Arc<Vault>,
    cutoff: i64,
    limit: i64,
) -> Result<RetentionReport, StoreError> {
    database.run(move |mut client| async move {
        let transaction = client.transaction().await?;
        let statement = transaction.prepare_cached(LOCK_EXPIRED).await?;
        let expired: Vec<String> = transaction
            .query(&statement, &[&cutoff, &limit])
            .await?
            .iter()
            .map(|row| row.try_get(0))
            .collect::<Result<_, _>>()?;
        let hashes = expired.iter().map(|sha256| SampleHash::parse(sha256)).collect::<Result<Vec<_>, _>>()?;
        // Deleting and fsyncing a batch of files blocks: not on the runtime's few workers.
        let mut batch = on_blocking_thread(move || {
            let mut batch = RetentionReport::default();
            for hash in &hashes {
                if let Some(bytes) = vault.remove(hash)? {
                    batch.files_deleted += 1;
                    batch.bytes_freed += bytes;
                }
            }
            Ok(batch)
        })
        .await?;
        let clear = transaction.prepare_cached(CLEAR_STORED_PATHS).await?;
        batch.samples_expired = transaction.execute(&clear, &[&expired]).await?;
        transaction.commit().await?;
        Ok(batch)
    })
}

/// Whether the vault holds the sample's file: a file-system call, so off the runtime's workers
/// (the vault may be on a network volume shared by the replicas).
async fn contains(vault: &Arc<Vault>, hash: &SampleHash) -> Result<bool, StoreError> {
    let (vault, hash) = (Arc::clone(vault), hash.clone());
    on_blocking_thread(move || vault.contains(&hash)).await
}

async fn on_blocking_thread<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|_| StoreError::Postgres("a vault operation of a PostgreSQL job panicked".into()))?
}

fn sample_from_row(vault: &Vault, row: &Row) -> Result<SampleRecord, StoreError> {
    let sha256: String = row.try_get(0)?;
    let stored: bool = row.try_get(4)?;
    // The path is derived from the hash, never read from the row, as on SQLite.
    let stored_path = match stored {
        true => SampleHash::parse(&sha256).ok().map(|hash| vault.path_of(&hash)),
        false => None,
    };
    let size: i64 = row.try_get(1)?;
    // The table's CHECK keeps sizes non-negative.
    let size =
        u64::try_from(size).map_err(|_| StoreError::Postgres(format!("sample size {size} is negative")))?;
    Ok(SampleRecord { sha256, size, first_seen: row.try_get(2)?, last_seen: row.try_get(3)?, stored_path })
}
