//! The verdicts table on PostgreSQL (`crate::verdicts` on SQLite). Ids come from an identity
//! column: unique, increasing in the order rows are inserted, never reused.

use deadpool_postgres::Transaction;
use tokio_postgres::Row;

use super::PgDatabase;
use crate::sample_hash::SampleHash;
use crate::verdicts::ValidVerdict;
use crate::{StoreError, VerdictRecord};

const INSERT: &str = "INSERT INTO verdicts (sha256, analysis, model_version, score, created_at, client)
    VALUES ($1, $2, $3, $4, $5, $6) RETURNING id";

/// Oldest first, or with a limit the newest `$2` newest first.
const SELECT_ALL: &str = "SELECT id, sha256, analysis, model_version, score, created_at, client
    FROM verdicts WHERE sha256 = $1 ORDER BY id";
const SELECT_LATEST: &str = "SELECT id, sha256, analysis, model_version, score, created_at, client
    FROM verdicts WHERE sha256 = $1 ORDER BY id DESC LIMIT $2";

/// Inserts a verdict in the caller's transaction; returns its id.
pub(crate) async fn insert(
    transaction: &Transaction<'_>,
    verdict: &ValidVerdict,
    now: i64,
) -> Result<i64, StoreError> {
    let statement = transaction.prepare_cached(INSERT).await?;
    let row = transaction
        .query_one(
            &statement,
            &[
                &verdict.hash.as_str(),
                &verdict.analysis,
                &verdict.model_version,
                &verdict.score,
                &now,
                &verdict.client,
            ],
        )
        .await?;
    Ok(row.try_get(0)?)
}

/// Every verdict on a sample, oldest first; with `latest`, that many newest, newest first.
pub(crate) fn of_sample(
    database: &PgDatabase,
    hash: SampleHash,
    latest: Option<i64>,
) -> Result<Vec<VerdictRecord>, StoreError> {
    database.run(move |client| async move {
        let rows = match latest {
            None => {
                let statement = client.prepare_cached(SELECT_ALL).await?;
                client.query(&statement, &[&hash.as_str()]).await?
            }
            Some(limit) => {
                let statement = client.prepare_cached(SELECT_LATEST).await?;
                client.query(&statement, &[&hash.as_str(), &limit]).await?
            }
        };
        rows.iter().map(verdict).collect()
    })
}

fn verdict(row: &Row) -> Result<VerdictRecord, StoreError> {
    Ok(VerdictRecord {
        id: row.try_get(0)?,
        sha256: row.try_get(1)?,
        analysis: row.try_get(2)?,
        model_version: row.try_get(3)?,
        score: row.try_get(4)?,
        created_at: row.try_get(5)?,
        client: row.try_get(6)?,
    })
}
