//! The safelist and badlist on PostgreSQL (`crate::hash_lists` on SQLite).
//!
//! Adding an entry answers the entry it replaced. SQLite's writes run one at a time, so reading
//! the old entry and then writing the new one is exact there; here replicas add at once, so the
//! old entry is read under the row's lock (`FOR UPDATE`), or the new row is inserted where there
//! was none (`ON CONFLICT DO NOTHING` waits for a concurrent insert of the same hash to commit).
//! Two adds of one hash therefore answer a chain: the later one is told about the earlier.

use deadpool_postgres::Transaction;
use tokio_postgres::Row;

use super::PgDatabase;
use crate::hash_lists::ValidEntry;
use crate::sample_hash::SampleHash;
use crate::{HashList, ListEntry, StoreError};

const COLUMNS: &str = "sha256, list, reason, source, added_at, added_by";

const INSERT_NEW: &str = "INSERT INTO hash_lists (sha256, list, reason, source, added_at, added_by)
    VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (sha256) DO NOTHING";

const LOCK_EXISTING: &str =
    "SELECT sha256, list, reason, source, added_at, added_by FROM hash_lists WHERE sha256 = $1 FOR UPDATE";

const REPLACE: &str =
    "UPDATE hash_lists SET list = $2, reason = $3, source = $4, added_at = $5, added_by = $6
    WHERE sha256 = $1";

/// How often an add tries again when the entry it was about to replace is removed meanwhile.
const ADD_ATTEMPTS: usize = 8;

/// Adds the entries in one transaction; answers, in the order given, the entry each replaced.
/// They are written in hash order (entries of one hash in the order given), so concurrent
/// imports lock rows in the same order and never deadlock.
pub(crate) fn add(
    database: &PgDatabase,
    entries: Vec<ValidEntry>,
    now: i64,
) -> Result<Vec<Option<ListEntry>>, StoreError> {
    database.run(move |mut client| async move {
        let mut order: Vec<usize> = (0..entries.len()).collect();
        order.sort_by(|&a, &b| entries[a].hash.as_str().cmp(entries[b].hash.as_str()));
        let transaction = client.transaction().await?;
        let mut replaced = vec![None; entries.len()];
        for index in order {
            replaced[index] = add_one(&transaction, &entries[index], now).await?;
        }
        transaction.commit().await?;
        Ok(replaced)
    })
}

async fn add_one(
    transaction: &Transaction<'_>,
    entry: &ValidEntry,
    now: i64,
) -> Result<Option<ListEntry>, StoreError> {
    let insert = transaction.prepare_cached(INSERT_NEW).await?;
    let lock = transaction.prepare_cached(LOCK_EXISTING).await?;
    let replace = transaction.prepare_cached(REPLACE).await?;
    let sha256 = entry.hash.as_str();
    let values: [&(dyn tokio_postgres::types::ToSql + Sync); 6] =
        [&sha256, &entry.list.as_str(), &entry.reason, &entry.source, &now, &entry.added_by];
    for _ in 0..ADD_ATTEMPTS {
        if transaction.execute(&insert, &values).await? == 1 {
            return Ok(None);
        }
        if let Some(row) = transaction.query_opt(&lock, &[&sha256]).await? {
            let previous = list_entry(&row)?;
            transaction.execute(&replace, &values).await?;
            return Ok(Some(previous));
        }
        // Removed between the two statements: insert it again.
    }
    Err(StoreError::Postgres(format!(
        "the list entry of {sha256} was removed and added again {ADD_ATTEMPTS} times while being replaced"
    )))
}

/// Removes the hash from `list`; answers the entry removed.
pub(crate) fn remove(
    database: &PgDatabase,
    list: HashList,
    hash: SampleHash,
) -> Result<Option<ListEntry>, StoreError> {
    database.run(move |client| async move {
        let statement = client
            .prepare_cached(&format!(
                "DELETE FROM hash_lists WHERE sha256 = $1 AND list = $2 RETURNING {COLUMNS}"
            ))
            .await?;
        let row = client.query_opt(&statement, &[&hash.as_str(), &list.as_str()]).await?;
        row.as_ref().map(list_entry).transpose()
    })
}

/// The entry of a hash on either list.
pub(crate) fn get(database: &PgDatabase, hash: SampleHash) -> Result<Option<ListEntry>, StoreError> {
    database.run(move |client| async move {
        let statement =
            client.prepare_cached(&format!("SELECT {COLUMNS} FROM hash_lists WHERE sha256 = $1")).await?;
        let row = client.query_opt(&statement, &[&hash.as_str()]).await?;
        row.as_ref().map(list_entry).transpose()
    })
}

/// Entries of `list` in hash order after `after` (`""`: from the start), at most `limit`
/// (`None`: all).
pub(crate) fn page(
    database: &PgDatabase,
    list: HashList,
    after: String,
    limit: Option<i64>,
) -> Result<Vec<ListEntry>, StoreError> {
    database.run(move |client| async move {
        let statement = client
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM hash_lists WHERE list = $1 AND sha256 > $2 ORDER BY sha256 LIMIT $3"
            ))
            .await?;
        let rows = client.query(&statement, &[&list.as_str(), &after, &limit]).await?;
        rows.iter().map(list_entry).collect()
    })
}

fn list_entry(row: &Row) -> Result<ListEntry, StoreError> {
    let list: String = row.try_get(1)?;
    // The table's CHECK admits only the two lists.
    let list = list.parse().map_err(|_| StoreError::Postgres(format!("unknown list {list:?}")))?;
    Ok(ListEntry {
        sha256: row.try_get(0)?,
        list,
        reason: row.try_get(2)?,
        source: row.try_get(3)?,
        added_at: row.try_get(4)?,
        added_by: row.try_get(5)?,
    })
}
