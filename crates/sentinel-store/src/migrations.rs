//! Versioned schema migrations, the one mechanism behind every database file of the store.
//! `PRAGMA user_version` holds the number of migrations applied and `PRAGMA application_id` says
//! which schema the file holds; opening a database applies the missing migrations in one
//! transaction, so a crash leaves the schema at either the old or the new version. New tables
//! are added by appending to a [`Schema`]'s list, never by editing an applied migration.
//!
//! Two schemas exist: [`MALWARE`] (`sentinel.db`: samples, verdicts, the two datasets, the
//! model registry, API tokens, the audit table, the safelist and badlist) and the network schema
//! (`network.db`, in [`crate::network`]).

use std::path::Path;

use rusqlite::{Connection, TransactionBehavior};

use crate::StoreError;

/// A database file's schema: its identity and its migrations. Migration `i` takes the schema
/// from version `i` to version `i + 1`.
pub(crate) struct Schema {
    /// `PRAGMA application_id` of a file holding this schema.
    pub application_id: i64,
    pub migrations: &'static [&'static str],
    /// Whether a file at version 0 whose tables are all in this list may be adopted: files
    /// written before the schema was versioned, whose first migration only creates what is
    /// missing (`IF NOT EXISTS`).
    pub adoptable_tables: &'static [&'static str],
}

/// The schema of `sentinel.db`; its application id spells "SNTL".
pub(crate) const MALWARE: Schema =
    Schema { application_id: 0x534E_544C, migrations: MALWARE_MIGRATIONS, adoptable_tables: &[] };

const MALWARE_MIGRATIONS: &[&str] = &[
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
    // 4: the model registry (static, behaviour and network models): every version with where it
    // came from and its evaluation, the decisions taken on them, and the active version of each
    // kind. A pruned version keeps its row (decisions refer to it) but loses its artifact.
    "CREATE TABLE model_versions (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        kind        TEXT    NOT NULL CHECK (kind IN ('static', 'behaviour', 'network')),
        label       TEXT    NOT NULL,
        created_at  INTEGER NOT NULL,
        trainer     TEXT    NOT NULL,
        command     TEXT    NOT NULL,
        data        TEXT    NOT NULL CHECK (json_valid(data)),
        sha256      TEXT    NOT NULL CHECK (length(sha256) = 64),
        evaluation  TEXT    CHECK (evaluation IS NULL OR json_valid(evaluation)),
        artifact    BLOB
    ) STRICT;
    CREATE INDEX model_versions_by_kind ON model_versions (kind, id);
    CREATE TABLE model_decisions (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        kind        TEXT    NOT NULL,
        decided_at  INTEGER NOT NULL,
        outcome     TEXT    NOT NULL CHECK (outcome IN ('promoted', 'rejected', 'activated')),
        version_id  INTEGER NOT NULL REFERENCES model_versions (id),
        previous_id INTEGER REFERENCES model_versions (id),
        reason      TEXT    NOT NULL,
        figures     TEXT    NOT NULL CHECK (json_valid(figures))
    ) STRICT;
    CREATE INDEX model_decisions_by_kind ON model_decisions (kind, id);
    CREATE TABLE active_models (
        kind         TEXT    PRIMARY KEY NOT NULL,
        version_id   INTEGER NOT NULL REFERENCES model_versions (id),
        activated_at INTEGER NOT NULL
    ) STRICT;",
    // 5: API tokens of the HTTP API (`api_tokens.rs`): only the SHA-256 of each token is kept.
    "CREATE TABLE api_tokens (
        id         INTEGER PRIMARY KEY,
        name       TEXT    NOT NULL UNIQUE,
        hash       BLOB    NOT NULL UNIQUE CHECK (length(hash) = 32),
        scopes     TEXT    NOT NULL,
        created_at INTEGER NOT NULL,
        expires_at INTEGER,
        last_used  INTEGER,
        revoked_at INTEGER
    ) STRICT;",
    // 6: the audit table (`audit.rs`): administrative actions, only ever added to.
    "CREATE TABLE audit_events (
        id        INTEGER PRIMARY KEY,
        time      INTEGER NOT NULL,
        principal TEXT    NOT NULL,
        action    TEXT    NOT NULL,
        target    TEXT,
        outcome   TEXT    NOT NULL,
        details   TEXT    NOT NULL CHECK (json_valid(details)),
        client    TEXT
    ) STRICT;
    CREATE INDEX audit_events_by_action ON audit_events (action, id);",
    // 7: the safelist and the badlist (`hash_lists.rs`): one entry per hash, on one list. A
    // listed hash is answered from its list and that answer recorded as a verdict of analysis
    // `list`, which the CHECK of `verdicts` did not admit: the table is rebuilt with the new
    // CHECK (SQLite cannot alter one), keeping every row, its id and the id sequence, so ids
    // are still never reused.
    "CREATE TABLE hash_lists (
        sha256   TEXT    PRIMARY KEY NOT NULL CHECK (length(sha256) = 64),
        list     TEXT    NOT NULL CHECK (list IN ('safe', 'bad')),
        reason   TEXT    NOT NULL,
        source   TEXT    NOT NULL,
        added_at INTEGER NOT NULL,
        added_by TEXT    NOT NULL
    ) STRICT;
    CREATE INDEX hash_lists_by_list ON hash_lists (list, sha256);
    CREATE TABLE verdicts_with_lists (
        id            INTEGER PRIMARY KEY AUTOINCREMENT,
        sha256        TEXT    NOT NULL CHECK (length(sha256) = 64),
        analysis      TEXT    NOT NULL
                      CHECK (analysis IN ('static', 'dynamic', 'virustotal', 'combined', 'list')),
        model_version TEXT    NOT NULL,
        score         REAL    NOT NULL CHECK (score >= 0.0 AND score <= 1.0),
        created_at    INTEGER NOT NULL,
        client        TEXT    NOT NULL
    ) STRICT;
    INSERT INTO verdicts_with_lists (id, sha256, analysis, model_version, score, created_at, client)
        SELECT id, sha256, analysis, model_version, score, created_at, client FROM verdicts;
    DELETE FROM sqlite_sequence WHERE name = 'verdicts_with_lists';
    INSERT INTO sqlite_sequence (name, seq)
        SELECT 'verdicts_with_lists', seq FROM sqlite_sequence WHERE name = 'verdicts';
    DROP TABLE verdicts;
    ALTER TABLE verdicts_with_lists RENAME TO verdicts;
    CREATE INDEX verdicts_by_sha256 ON verdicts (sha256, id);",
    // 8: YARA matches (`yara_matches.rs`): the rules of a rule set that matched a sample, one row
    // per rule, replaced when the same set scans the sample again.
    "CREATE TABLE yara_matches (
        sha256     TEXT    NOT NULL,
        ruleset    TEXT    NOT NULL,
        namespace  TEXT    NOT NULL,
        rule       TEXT    NOT NULL,
        tags       TEXT    NOT NULL CHECK (json_valid(tags)),
        metadata   TEXT    NOT NULL CHECK (json_valid(metadata)),
        matched_at INTEGER NOT NULL,
        PRIMARY KEY (sha256, ruleset, namespace, rule)
    ) STRICT;",
    // 9: alerts and their outbox (`alerts.rs`): one row per alert, one per channel it is to be
    // delivered on; the pending deliveries are the outbox.
    "CREATE TABLE alerts (
        id                   INTEGER PRIMARY KEY AUTOINCREMENT,
        rule                 TEXT    NOT NULL,
        key                  TEXT    NOT NULL,
        severity             TEXT    NOT NULL,
        summary              TEXT    NOT NULL,
        details              TEXT    NOT NULL CHECK (json_valid(details)),
        raised_at            INTEGER NOT NULL,
        last_raised_at       INTEGER NOT NULL,
        repeats              INTEGER NOT NULL DEFAULT 0,
        acknowledged_at      INTEGER,
        acknowledged_by      TEXT,
        acknowledgement_note TEXT
    ) STRICT;
    CREATE INDEX alerts_by_rule_key ON alerts (rule, key, id);
    CREATE TABLE alert_deliveries (
        alert_id        INTEGER NOT NULL REFERENCES alerts (id),
        channel         TEXT    NOT NULL,
        state           TEXT    NOT NULL CHECK (state IN ('pending', 'delivered', 'failed')),
        attempts        INTEGER NOT NULL DEFAULT 0,
        next_attempt_at INTEGER,
        last_error      TEXT,
        delivered_at    INTEGER,
        PRIMARY KEY (alert_id, channel)
    ) STRICT;
    CREATE INDEX alert_deliveries_due ON alert_deliveries (state, next_attempt_at);",
    // 10: leases (`leases.rs`): which replica holds a share of the work, until when (unix
    // seconds).
    "CREATE TABLE leases (
        name       TEXT    PRIMARY KEY,
        owner      TEXT    NOT NULL,
        expires_at INTEGER NOT NULL
    ) STRICT;",
];

/// Brings the database at `path` (open on `connection`) to the latest version of `schema`.
pub(crate) fn migrate(connection: &mut Connection, path: &Path, schema: &Schema) -> Result<(), StoreError> {
    // IMMEDIATE: two processes opening the same fresh database must not both migrate it.
    let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let version: i64 = transaction.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    let application_id: i64 = transaction.query_row("PRAGMA application_id", [], |row| row.get(0))?;
    let supported = schema.migrations.len() as i64;

    if application_id != schema.application_id && (application_id != 0 || version != 0) {
        return Err(StoreError::NotSentinelDatabase { path: path.to_owned(), found: application_id });
    }
    if version > supported {
        return Err(StoreError::SchemaTooNew { found: version, supported });
    }
    if version == 0 {
        let mut statement = transaction
            .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")?;
        let tables =
            statement.query_map([], |row| row.get::<_, String>(0))?.collect::<Result<Vec<_>, _>>()?;
        drop(statement);
        let adoptable = tables.iter().all(|table| schema.adoptable_tables.contains(&table.as_str()));
        if !adoptable {
            return Err(StoreError::NotSentinelDatabase { path: path.to_owned(), found: application_id });
        }
        if !tables.is_empty() {
            tracing::info!(path = %path.display(), "adopting a database written before its schema was versioned");
        }
        transaction.pragma_update(None, "application_id", schema.application_id)?;
    }
    for (from, migration) in schema.migrations.iter().enumerate().skip(version as usize) {
        transaction.execute_batch(migration)?;
        transaction.pragma_update(None, "user_version", from as i64 + 1)?;
        tracing::info!(path = %path.display(), version = from + 1, "applied store schema migration");
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
        migrate(&mut connection, &path, &MALWARE).unwrap();
        migrate(&mut connection, &path, &MALWARE).unwrap();
        let version: i64 = connection.query_row("PRAGMA user_version", [], |row| row.get(0)).unwrap();
        assert_eq!(version, MALWARE.migrations.len() as i64);
    }

    #[test]
    fn a_database_of_an_older_version_gets_the_missing_migrations_and_keeps_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let mut connection = Connection::open(&path).unwrap();
        // sentinel.db as a build with three migrations left it.
        for migration in &MALWARE.migrations[..3] {
            connection.execute_batch(migration).unwrap();
        }
        connection.pragma_update(None, "application_id", MALWARE.application_id).unwrap();
        connection.pragma_update(None, "user_version", 3).unwrap();
        connection.execute("INSERT INTO labels VALUES (?1, 1, 'manual', 0, NULL)", ["a".repeat(64)]).unwrap();
        migrate(&mut connection, &path, &MALWARE).unwrap();
        let version: i64 = connection.query_row("PRAGMA user_version", [], |row| row.get(0)).unwrap();
        assert_eq!(version, MALWARE.migrations.len() as i64);
        let labels: i64 = connection.query_row("SELECT count(*) FROM labels", [], |row| row.get(0)).unwrap();
        let versions: i64 =
            connection.query_row("SELECT count(*) FROM model_versions", [], |row| row.get(0)).unwrap();
        assert_eq!((labels, versions), (1, 0));
    }

    #[test]
    fn the_verdicts_table_rebuilt_for_list_verdicts_keeps_its_rows_and_never_reuses_an_id() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let mut connection = Connection::open(&path).unwrap();
        for migration in &MALWARE.migrations[..6] {
            connection.execute_batch(migration).unwrap();
        }
        connection.pragma_update(None, "application_id", MALWARE.application_id).unwrap();
        connection.pragma_update(None, "user_version", 6).unwrap();
        let insert = "INSERT INTO verdicts (sha256, analysis, model_version, score, created_at, client)
            VALUES (?1, 'static', 'v1', 0.5, 0, 'c')";
        for _ in 0..3 {
            connection.execute(insert, ["a".repeat(64)]).unwrap();
        }
        // The newest verdict was deleted: its id must still not come back.
        connection.execute("DELETE FROM verdicts WHERE id = 3", []).unwrap();
        migrate(&mut connection, &path, &MALWARE).unwrap();
        let ids: Vec<i64> = connection
            .prepare("SELECT id FROM verdicts ORDER BY id")
            .unwrap()
            .query_map([], |row| row.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(ids, [1, 2]);
        let list = insert.replace("'static'", "'list'");
        connection.execute(&list, ["a".repeat(64)]).unwrap();
        let newest: i64 = connection.query_row("SELECT max(id) FROM verdicts", [], |row| row.get(0)).unwrap();
        assert_eq!(newest, 4);
        assert!(connection.execute(&insert.replace("'static'", "'other'"), ["a".repeat(64)]).is_err());
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let mut connection = Connection::open(&path).unwrap();
        migrate(&mut connection, &path, &MALWARE).unwrap();
        connection.pragma_update(None, "user_version", 999).unwrap();
        assert!(matches!(
            migrate(&mut connection, &path, &MALWARE),
            Err(StoreError::SchemaTooNew { found: 999, .. })
        ));
    }

    #[test]
    fn foreign_database_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let mut connection = Connection::open(&path).unwrap();
        connection.execute_batch("CREATE TABLE other (x)").unwrap();
        assert!(matches!(
            migrate(&mut connection, &path, &MALWARE),
            Err(StoreError::NotSentinelDatabase { .. })
        ));
    }
}
