//! The YARA matches table on PostgreSQL (`crate::yara_matches` on SQLite).
//!
//! What a rule set found in a sample replaces what it found before: on SQLite the writes run one
//! at a time, here two replicas may replace the same sample's matches of the same rule set at
//! once, so each takes a transaction-level advisory lock on the pair first. Without it, both
//! would delete the old rows, and the later would then fail on the rows the earlier inserted
//! (or, with upserts, keep a mix of both).

use deadpool_postgres::Transaction;

use super::PgDatabase;
use crate::sample_hash::SampleHash;
use crate::yara_matches::{ValidMatches, match_record};
use crate::{StoreError, YaraMatchRecord};

/// The pair's lock key: a 64-bit hash of sample and rule set. Two pairs sharing a key merely wait
/// for each other.
const LOCK: &str =
    "SELECT pg_advisory_xact_lock(hashtextextended('yara_matches/' || $1::TEXT || '/' || $2::TEXT, 0))";

const DELETE: &str = "DELETE FROM yara_matches WHERE sha256 = $1 AND ruleset = $2";

const INSERT: &str = "INSERT INTO yara_matches (sha256, ruleset, namespace, rule, tags, metadata, matched_at)
    VALUES ($1, $2, $3, $4, $5, $6, $7)";

/// Newest first, then by rule set, namespace and rule in byte order, as SQLite orders them.
const SELECT: &str = "SELECT ruleset, namespace, rule, tags, metadata, matched_at FROM yara_matches
    WHERE sha256 = $1
    ORDER BY matched_at DESC, ruleset COLLATE \"C\", namespace COLLATE \"C\", rule COLLATE \"C\"";

/// Replaces what the rule set found in the sample before, in the caller's transaction.
pub(crate) async fn replace(
    transaction: &Transaction<'_>,
    matches: &ValidMatches,
    now: i64,
) -> Result<(), StoreError> {
    let (sha256, ruleset) = (matches.hash.as_str(), matches.ruleset.as_str());
    let lock = transaction.prepare_cached(LOCK).await?;
    transaction.execute(&lock, &[&sha256, &ruleset]).await?;
    let delete = transaction.prepare_cached(DELETE).await?;
    transaction.execute(&delete, &[&sha256, &ruleset]).await?;
    let insert = transaction.prepare_cached(INSERT).await?;
    for row in &matches.rows {
        transaction
            .execute(&insert, &[&sha256, &ruleset, &row.namespace, &row.rule, &row.tags, &row.metadata, &now])
            .await?;
    }
    Ok(())
}

/// The matches recorded for a sample.
pub(crate) fn of_sample(database: &PgDatabase, hash: SampleHash) -> Result<Vec<YaraMatchRecord>, StoreError> {
    database.run(move |client| async move {
        let statement = client.prepare_cached(SELECT).await?;
        let rows = client.query(&statement, &[&hash.as_str()]).await?;
        rows.iter()
            .map(|row| {
                let (tags, metadata): (String, String) = (row.try_get(3)?, row.try_get(4)?);
                Ok(match_record(
                    row.try_get(0)?,
                    row.try_get(1)?,
                    row.try_get(2)?,
                    &tags,
                    &metadata,
                    row.try_get(5)?,
                ))
            })
            .collect()
    })
}
