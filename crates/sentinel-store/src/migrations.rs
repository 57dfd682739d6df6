//! Versioned schema migrations. `PRAGMA user_version` holds the number of migrations applied;
//! opening the store applies the missing ones in one transaction, so a crash leaves the schema at
//! either the old or the new version. New datasets (VirusTotal results, labelled samples, the
//! network tables) are added by appending to [`MIGRATIONS`], never by editing an applied one.

use std::path::Path;

use rusqlite::{Connection, TransactionBehavior};

use crate::StoreError;

/// Marks the file as a Sentinel database (`PRAGMA application_id`, "SNTL").
const APPLICATION_ID: i64 = 0x534E_544C;

/// Migration `i` takes the schema from version `i` to version `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: samples seen by the malware AI server, and the verdicts given on them. Verdicts refer to
    // samples by hash without a foreign key: a VirusTotal verdict can be given on a hash alone.
    "CREATE TABLE samples (
        sha256      TEXT    PRIMARY KEY NOT NULL CHECK (length(sha256) = 64),
        size        INTEGER NOT NULL CHECK (size >= 0),
        first_seen  INTEGER NOT NULL,
        last_seen   INTEGER NOT NULL,
        stored_path TEXT
    ) STRICT;
    CREATE INDEX samples_stored_by_last_seen ON samples (last_seen) WHERE stored_path IS NOT NULL;
    CREATE TABLE verdicts (
        id            INTEGER PRIMARY KEY AUTOINCREMENT,
        sha256        TEXT    NOT NULL CHECK (length(sha256) = 64),
        analysis      TEXT    NOT NULL CHECK (analysis IN ('static', 'dynamic', 'virustotal', 'combined')),
        model_version TEXT    NOT NULL,
        score         REAL    NOT NULL CHECK (score >= 0.0 AND score <= 1.0),
        created_at    INTEGER NOT NULL,
        client        TEXT    NOT NULL
    ) STRICT;
    CREATE INDEX verdicts_by_sha256 ON verdicts (sha256, id);",
    // 2: the VirusTotal results dataset: the newest report per hash, as opaque JSON, with the
    // counts queries need. `engines` (engines that gave a verdict) is derived, so it cannot
    // disagree with the counts.
    "CREATE TABLE vt_reports (
        sha256             TEXT    PRIMARY KEY NOT NULL CHECK (length(sha256) = 64),
        last_analysis_date INTEGER,
        fetched_at         INTEGER NOT NULL,
        malicious          INTEGER NOT NULL CHECK (malicious >= 0),
        suspicious         INTEGER NOT NULL CHECK (suspicious >= 0),
        undetected         INTEGER NOT NULL CHECK (undetected >= 0),
        harmless           INTEGER NOT NULL CHECK (harmless >= 0),
        engines            INTEGER GENERATED ALWAYS AS (malicious + suspicious + undetected + harmless),
        report_json        TEXT    NOT NULL CHECK (json_valid(report_json))
    ) STRICT;",
    // 3: the labelled-samples dataset the models are retrained on. The sample's file is the
    // vault's (the samples table says whether it is kept), so no path is stored here.
    "CREATE TABLE labels (
        sha256      TEXT    PRIMARY KEY NOT NULL CHECK (length(sha256) = 64),
        y           INTEGER NOT NULL CHECK (y IN (0, 1)),
        source      TEXT    NOT NULL CHECK (source IN ('virustotal', 'manual', 'import')),
        labelled_at INTEGER NOT NULL,
        note        TEXT
    ) STRICT;",
];

/// Brings the database at `path` (open on `connection`) to the latest schema version.
pub(crate) fn migrate(connection: &mut Connection, path: &Path) -> Result<(), StoreError> {
    // IMMEDIATE: two processes opening the same fresh database must not both migrate it.
    let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let version: i64 = transaction.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    let application_id: i64 = transaction.query_row("PRAGMA application_id", [], |row| row.get(0))?;
    let supported = MIGRATIONS.len() as i64;

    if application_id != APPLICATION_ID && (application_id != 0 || version != 0) {
        return Err(StoreError::NotSentinelDatabase { path: path.to_owned(), found: application_id });
    }
    if version > supported {
        return Err(StoreError::SchemaTooNew { found: version, supported });
    }
    if version == 0 {
        let tables: i64 =
            transaction.query_row("SELECT count(*) FROM sqlite_schema", [], |row| row.get(0))?;
        if tables != 0 {
            return Err(StoreError::NotSentinelDatabase { path: path.to_owned(), found: application_id });
        }
        transaction.pragma_update(None, "application_id", APPLICATION_ID)?;
    }
    for (from, migration) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        transaction.execute_batch(migration)?;
        transaction.pragma_update(None, "user_version", from as i64 + 1)?;
        tracing::info!(version = from + 1, "applied store schema migration");
    }
    transaction.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_database_reaches_latest_version_and_rerun_is_a_no_op() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let mut connection = Connection::open(&path).unwrap();
        migrate(&mut connection, &path).unwrap();
        migrate(&mut connection, &path).unwrap();
        let version: i64 = connection.query_row("PRAGMA user_version", [], |row| row.get(0)).unwrap();
        assert_eq!(version, MIGRATIONS.len() as i64);
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let mut connection = Connection::open(&path).unwrap();
        migrate(&mut connection, &path).unwrap();
        connection.pragma_update(None, "user_version", 999).unwrap();
        assert!(matches!(migrate(&mut connection, &path), Err(StoreError::SchemaTooNew { found: 999, .. })));
    }

    #[test]
    fn foreign_database_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let mut connection = Connection::open(&path).unwrap();
        connection.execute_batch("CREATE TABLE other (x)").unwrap();
        assert!(matches!(migrate(&mut connection, &path), Err(StoreError::NotSentinelDatabase { .. })));
    }
}
