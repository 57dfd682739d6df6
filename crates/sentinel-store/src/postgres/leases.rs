//! Leases' SQL on PostgreSQL (`crate::leases` keeps the validation and the SQLite side). The
//! upsert takes the row's lock and re-checks its condition on the row as committed, so owners
//! racing on several replicas get one winner.

use super::PgDatabase;
use crate::StoreError;

pub(crate) fn acquire(
    database: &PgDatabase,
    name: String,
    owner: String,
    expires_at: i64,
    now: i64,
) -> Result<bool, StoreError> {
    database.run(move |client| async move {
        let statement = client
            .prepare_cached(
                "INSERT INTO leases (name, owner, expires_at) VALUES ($1, $2, $3)
                 ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at
                 WHERE leases.owner = excluded.owner OR leases.expires_at <= $4",
            )
            .await?;
        Ok(client.execute(&statement, &[&name, &owner, &expires_at, &now]).await? == 1)
    })
}

pub(crate) fn release(database: &PgDatabase, name: String, owner: String) -> Result<bool, StoreError> {
    database.run(move |client| async move {
        let statement = client.prepare_cached("DELETE FROM leases WHERE name = $1 AND owner = $2").await?;
        Ok(client.execute(&statement, &[&name, &owner]).await? == 1)
    })
}

pub(crate) fn holder(
    database: &PgDatabase,
    name: String,
    now: i64,
) -> Result<Option<(String, i64)>, StoreError> {
    database.run(move |client| async move {
        let statement = client
            .prepare_cached("SELECT owner, expires_at FROM leases WHERE name = $1 AND expires_at > $2")
            .await?;
        let row = client.query_opt(&statement, &[&name, &now]).await?;
        Ok(row.map(|row| Ok::<_, tokio_postgres::Error>((row.try_get(0)?, row.try_get(1)?))).transpose()?)
    })
}

pub(crate) fn live(
    database: &PgDatabase,
    prefix: String,
    now: i64,
    limit: i64,
) -> Result<Vec<(String, String)>, StoreError> {
    database.run(move |client| async move {
        let statement = client
            .prepare_cached(
                "SELECT name, owner FROM leases WHERE starts_with(name, $1) AND expires_at > $2
                 ORDER BY name LIMIT $3",
            )
            .await?;
        let rows = client.query(&statement, &[&prefix, &now, &limit]).await?;
        Ok(rows
            .iter()
            .map(|row| Ok::<_, tokio_postgres::Error>((row.try_get(0)?, row.try_get(1)?)))
            .collect::<Result<Vec<_>, _>>()?)
    })
}
