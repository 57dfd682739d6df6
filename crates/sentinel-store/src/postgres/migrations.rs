//! Versioned migrations on PostgreSQL, the counterpart of `crate::migrations` for SQLite.
//!
//! One database holds both schemas of the store (the malware tables and the network tables), so
//! the version is not a property of the database as in SQLite's `user_version`: the table
//! `sentinel_schema` holds one row per schema with the number of its migrations applied. Each
//! opening applies the missing ones in one transaction, under a transaction-level advisory lock,
//! so replicas starting together migrate once and never see a half-migrated schema. A schema
//! whose recorded version is above this build's is refused (a newer Sentinel wrote it), and so
//! is a database holding tables of another program and no `sentinel_schema`.

use tokio_postgres::Client;

use crate::StoreError;

/// A schema on PostgreSQL: its name in `sentinel_schema` and its migrations. Migration `i`
/// takes the schema from version `i` to `i + 1`; new tables are new migrations appended,
/// never edits of an applied one.
pub(crate) struct PgSchema {
    pub name: &'static str,
    pub migrations: &'static [&'static str],
}

/// The advisory lock every migration takes ("SNTL" as an integer): one migrating opener at a
/// time across all replicas.
const MIGRATION_LOCK: i64 = 0x534E_544C;

pub(crate) async fn migrate(client: &mut Client, schema: &PgSchema) -> Result<(), StoreError> {
    let transaction = client.transaction().await?;
    transaction.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await?;
    let registry_exists: bool =
        transaction.query_one("SELECT to_regclass('sentinel_schema') IS NOT NULL", &[]).await?.get(0);
    if !registry_exists {
        let foreign: i64 = transaction
            .query_one("SELECT count(*) FROM pg_catalog.pg_tables WHERE schemaname = current_schema()", &[])
            .await?
            .get(0);
        if foreign > 0 {
            return Err(StoreError::Postgres(format!(
                "the database holds {foreign} tables but no sentinel_schema table: it is not a Sentinel \
                 database; give Sentinel a database of its own"
            )));
        }
        transaction
            .batch_execute(
                "CREATE TABLE sentinel_schema (name TEXT PRIMARY KEY, version INTEGER NOT NULL CHECK (version >= 0))",
            )
            .await?;
    }
    let version: i32 = transaction
        .query_opt("SELECT version FROM sentinel_schema WHERE name = $1", &[&schema.name])
        .await?
        .map_or(0, |row| row.get(0));
    let supported = schema.migrations.len() as i64;
    if i64::from(version) > supported {
        return Err(StoreError::SchemaTooNew { found: i64::from(version), supported });
    }
    for (from, migration) in schema.migrations.iter().enumerate().skip(version as usize) {
        transaction.batch_execute(migration).await?;
        let reached = from as i32 + 1;
        transaction
            .execute(
                "INSERT INTO sentinel_schema (name, version) VALUES ($1, $2)
                 ON CONFLICT (name) DO UPDATE SET version = excluded.version",
                &[&schema.name, &reached],
            )
            .await?;
        tracing::info!(schema = schema.name, version = reached, "applied PostgreSQL schema migration");
    }
    transaction.commit().await?;
    Ok(())
}
