//! The API tokens' SQL on PostgreSQL (`crate::api_tokens` keeps the validation and the SQLite
//! side). A name is claimed by the insert itself (`ON CONFLICT (name) DO NOTHING`), not by a
//! check before it: two replicas creating the same name at once give one token and one
//! [`StoreError::ApiTokenNameTaken`].

use tokio_postgres::Row;

use super::PgDatabase;
use crate::{ApiTokenRecord, NewApiToken, StoreError};

const COLUMNS: &str = "id, name, scopes, created_at, expires_at, last_used, revoked_at";

pub(crate) fn create(
    database: &PgDatabase,
    token: NewApiToken,
    now: i64,
) -> Result<ApiTokenRecord, StoreError> {
    database.run(move |client| async move {
        let statement = client
            .prepare_cached(
                "INSERT INTO api_tokens (name, hash, scopes, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (name) DO NOTHING RETURNING id",
            )
            .await?;
        let inserted = client
            .query_opt(&statement, &[&token.name, &&token.hash[..], &token.scopes, &now, &token.expires_at])
            .await?;
        let Some(row) = inserted else { return Err(StoreError::ApiTokenNameTaken(token.name)) };
        Ok(ApiTokenRecord {
            id: row.try_get(0)?,
            name: token.name,
            scopes: token.scopes,
            created_at: now,
            expires_at: token.expires_at,
            last_used: None,
            revoked_at: None,
        })
    })
}

/// Read on every API request: tried again on another connection if PostgreSQL ended this one.
pub(crate) fn by_hash(database: &PgDatabase, hash: [u8; 32]) -> Result<Option<ApiTokenRecord>, StoreError> {
    database.run_read(move |client| async move {
        let statement =
            client.prepare_cached(&format!("SELECT {COLUMNS} FROM api_tokens WHERE hash = $1")).await?;
        client.query_opt(&statement, &[&&hash[..]]).await?.as_ref().map(record).transpose()
    })
}

pub(crate) fn list(database: &PgDatabase) -> Result<Vec<ApiTokenRecord>, StoreError> {
    database.run(move |client| async move {
        let statement =
            client.prepare_cached(&format!("SELECT {COLUMNS} FROM api_tokens ORDER BY id")).await?;
        client.query(&statement, &[]).await?.iter().map(record).collect()
    })
}

pub(crate) fn any(database: &PgDatabase) -> Result<bool, StoreError> {
    database.run(move |client| async move {
        let statement = client.prepare_cached("SELECT EXISTS (SELECT 1 FROM api_tokens)").await?;
        Ok(client.query_one(&statement, &[]).await?.try_get(0)?)
    })
}

pub(crate) fn revoke(database: &PgDatabase, name: String, now: i64) -> Result<bool, StoreError> {
    database.run(move |client| async move {
        let statement = client
            .prepare_cached("UPDATE api_tokens SET revoked_at = $2 WHERE name = $1 AND revoked_at IS NULL")
            .await?;
        Ok(client.execute(&statement, &[&name, &now]).await? == 1)
    })
}

pub(crate) fn record_use(database: &PgDatabase, id: i64, at: i64) -> Result<(), StoreError> {
    database.run(move |client| async move {
        // GREATEST in the statement: replicas recording uses at once keep the latest.
        let statement = client
            .prepare_cached(
                "UPDATE api_tokens SET last_used = GREATEST(COALESCE(last_used, 0), $2) WHERE id = $1",
            )
            .await?;
        client.execute(&statement, &[&id, &at]).await?;
        Ok(())
    })
}

fn record(row: &Row) -> Result<ApiTokenRecord, StoreError> {
    Ok(ApiTokenRecord {
        id: row.try_get(0)?,
        name: row.try_get(1)?,
        scopes: row.try_get(2)?,
        created_at: row.try_get(3)?,
        expires_at: row.try_get(4)?,
        last_used: row.try_get(5)?,
        revoked_at: row.try_get(6)?,
    })
}
