//! The network part of the store through its public API, on real files: the schema of SPEC §2.3
//! and its versioning (including adopting a file written before it was versioned), the journal,
//! the results writer, retention, history, and the files' permissions.

use std::path::Path;
use std::time::{Duration, SystemTime};

use sentinel_store::{
    ConnectionRow, ItemLabel, MetricsSource, ModelMetricsRow, NETWORK_DATABASE_FILE, NetworkStore,
    PredictionRow, ScoredItem, Store, StoreError, StoreSettings, WriterSettings,
};

const DAY: Duration = Duration::from_secs(86_400);

fn settings() -> WriterSettings {
    WriterSettings { batch: 2, flush_interval: Duration::from_millis(20), queue: 1000, retention: 30 * DAY }
}

/// An item with an id reserved from `store`.
fn item(
    store: &NetworkStore,
    observed: SystemTime,
    process: &str,
    session: &str,
    scored: bool,
) -> ScoredItem {
    let mut features = serde_json::Map::new();
    features.insert("bytes_sent".to_owned(), serde_json::json!(400.0));
    features.insert("protocol".to_owned(), serde_json::json!("tcp"));
    ScoredItem {
        id: store.reserve_item_ids(1),
        observed,
        connection: Some(ConnectionRow {
            timestamp: observed,
            process_id: Some(42),
            process_name: Some(process.to_owned()),
            local_ip: "10.0.0.5".to_owned(),
            local_port: 40_000,
            remote_ip: "h:8f14e45fceea167a5a36dedd4bea2543".to_owned(),
            remote_port: 443,
            protocol: Some("tcp".to_owned()),
            state: Some("ESTABLISHED".to_owned()),
            bytes_sent: Some(400),
            bytes_received: Some(u64::MAX),
        }),
        features,
        session: session.to_owned(),
        predictions: match scored {
            true => vec![
                PredictionRow {
                    model: "isolation_forest".into(),
                    score: 0.4,
                    is_anomaly: false,
                    confidence: 1.0,
                    explanation: None,
                },
                PredictionRow {
                    model: "ensemble".into(),
                    score: 0.3,
                    is_anomaly: false,
                    confidence: 1.0,
                    explanation: Some("[]".into()),
                },
            ],
            false => Vec::new(),
        },
    }
}

fn metrics_row(measured_at: SystemTime, source: MetricsSource) -> ModelMetricsRow {
    ModelMetricsRow {
        model_name: "ensemble".into(),
        measured_at,
        source,
        samples: 200,
        anomalies: 0,
        accuracy: 0.99,
        precision: None,
        recall: None,
        f1: None,
        auc_roc: None,
        false_positive_rate: Some(0.01),
    }
}

fn columns(connection: &rusqlite::Connection, table: &str) -> Vec<(String, String)> {
    let mut statement = connection.prepare(&format!("PRAGMA table_info({table})")).unwrap();
    statement
        .query_map([], |row| Ok((row.get::<_, String>(1)?, row.get::<_, String>(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[test]
fn the_tables_have_exactly_the_columns_of_spec_2_3_and_the_schema_is_versioned() {
    let dir = tempfile::tempdir().unwrap();
    NetworkStore::open(dir.path(), settings()).unwrap().close();
    let database = rusqlite::Connection::open(dir.path().join(NETWORK_DATABASE_FILE)).unwrap();
    let names = |table| {
        columns(&database, table).into_iter().map(|(name, kind)| format!("{name} {kind}")).collect::<Vec<_>>()
    };
    assert_eq!(
        names("network_connections"),
        [
            "id INTEGER",
            "timestamp DATETIME",
            "process_id INTEGER",
            "process_name TEXT",
            "local_ip TEXT",
            "local_port INTEGER",
            "remote_ip TEXT",
            "remote_port INTEGER",
            "protocol TEXT",
            "state TEXT",
            "bytes_sent INTEGER",
            "bytes_received INTEGER"
        ]
    );
    assert_eq!(
        names("network_features"),
        [
            "id INTEGER",
            "timestamp DATETIME",
            "connection_id INTEGER",
            "feature_vector TEXT",
            "label INTEGER",
            "session_id TEXT"
        ]
    );
    assert_eq!(
        names("model_metrics"),
        [
            "id INTEGER",
            "model_name TEXT",
            "timestamp DATETIME",
            "accuracy REAL",
            "precision_score REAL",
            "recall REAL",
            "f1_score REAL",
            "auc_roc REAL",
            "false_positive_rate REAL",
            // Migration 2, after the columns of SPEC §2.3.
            "source TEXT",
            "samples INTEGER",
            "anomalies INTEGER"
        ]
    );
    assert_eq!(
        names("network_feedback"),
        ["feature_id INTEGER", "labelled_at DATETIME", "analyst TEXT", "note TEXT"]
    );
    assert_eq!(
        names("predictions"),
        [
            "id INTEGER",
            "timestamp DATETIME",
            "feature_id INTEGER",
            "model_name TEXT",
            "anomaly_score REAL",
            "is_anomaly BOOLEAN",
            "confidence REAL",
            "explanation TEXT"
        ]
    );
    let sql: String = database
        .query_row("SELECT sql FROM sqlite_schema WHERE name = 'predictions'", [], |row| row.get(0))
        .unwrap();
    assert!(sql.contains("feature_id INTEGER REFERENCES network_features(id)"), "{sql}");
    let indexes: i64 = database
        .query_row("SELECT count(*) FROM sqlite_schema WHERE type = 'index' AND sql IS NOT NULL", [], |row| {
            row.get(0)
        })
        .unwrap();
    assert_eq!(indexes, 9);
    let version: i64 = database.query_row("PRAGMA user_version", [], |row| row.get(0)).unwrap();
    let application_id: i64 = database.query_row("PRAGMA application_id", [], |row| row.get(0)).unwrap();
    assert_eq!(names("broker_deliveries"), ["msg_id TEXT", "stored_at DATETIME"]);
    assert_eq!((version, application_id), (3, 0x534E_544E));
}

/// The schema the network service created itself before the store versioned it.
const UNVERSIONED_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS network_connections (id INTEGER PRIMARY KEY AUTOINCREMENT, timestamp DATETIME NOT NULL,
  process_id INTEGER, process_name TEXT, local_ip TEXT, local_port INTEGER, remote_ip TEXT,
  remote_port INTEGER, protocol TEXT, state TEXT, bytes_sent INTEGER, bytes_received INTEGER);
CREATE TABLE IF NOT EXISTS network_features (id INTEGER PRIMARY KEY AUTOINCREMENT, timestamp DATETIME NOT NULL,
  connection_id INTEGER REFERENCES network_connections(id), feature_vector TEXT,
  label INTEGER DEFAULT 0, session_id TEXT);
CREATE TABLE IF NOT EXISTS model_metrics (id INTEGER PRIMARY KEY AUTOINCREMENT, model_name TEXT NOT NULL,
  timestamp DATETIME NOT NULL, accuracy REAL, precision_score REAL, recall REAL, f1_score REAL,
  auc_roc REAL, false_positive_rate REAL);
CREATE TABLE IF NOT EXISTS predictions (id INTEGER PRIMARY KEY AUTOINCREMENT, timestamp DATETIME NOT NULL,
  feature_id INTEGER REFERENCES network_features(id), model_name TEXT, anomaly_score REAL,
  is_anomaly BOOLEAN, confidence REAL, explanation TEXT);
CREATE INDEX IF NOT EXISTS network_connections_timestamp ON network_connections(timestamp);
CREATE TABLE IF NOT EXISTS network_models (version INTEGER PRIMARY KEY AUTOINCREMENT,
  created_at DATETIME NOT NULL, training_rows INTEGER NOT NULL, active INTEGER NOT NULL DEFAULT 0,
  facts TEXT NOT NULL, preprocessor BLOB NOT NULL, ensemble BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS ingest_journal (id INTEGER PRIMARY KEY AUTOINCREMENT,
  received_at DATETIME NOT NULL, snapshot BLOB NOT NULL);
INSERT INTO network_features (timestamp, feature_vector, session_id) VALUES ('2026-12-01T00:00:00.000000Z', '{\"a\": 1}', 'live:old');
INSERT INTO network_models (created_at, training_rows, active, facts, preprocessor, ensemble)
  VALUES ('2026-12-01T00:00:00Z', 1234, 1, '{}', X'7B7D', X'7B7D');
INSERT INTO ingest_journal (received_at, snapshot) VALUES ('2026-12-01T00:00:00Z', X'7B7D');
";

#[test]
fn a_network_db_written_before_the_schema_was_versioned_is_adopted_with_its_data() {
    let dir = tempfile::tempdir().unwrap();
    {
        let database = rusqlite::Connection::open(dir.path().join(NETWORK_DATABASE_FILE)).unwrap();
        database.execute_batch(UNVERSIONED_SCHEMA).unwrap();
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.path().join(NETWORK_DATABASE_FILE);
        // As the unversioned service left it: created with the umask's permissions.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let store =
        NetworkStore::open(dir.path(), WriterSettings { retention: 36_500 * DAY, ..settings() }).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(NETWORK_DATABASE_FILE)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "made private");
    }
    assert_eq!(store.history_extent().unwrap().rows, 1, "its rows are kept");
    assert_eq!(store.journalled_snapshots().unwrap().len(), 1, "its journal is kept");
    let legacy = store.legacy_models().unwrap();
    assert_eq!(legacy.len(), 1);
    assert!(legacy[0].active);
    assert_eq!(legacy[0].training_rows, 1234);
    store.drop_legacy_models().unwrap();
    assert!(store.legacy_models().unwrap().is_empty());
    store.close();
    drop(store);
    // The missing indexes were created, and a second open finds the file at its version.
    let store = NetworkStore::open(dir.path(), settings()).unwrap();
    assert!(store.legacy_models().unwrap().is_empty());
    let database = rusqlite::Connection::open(dir.path().join(NETWORK_DATABASE_FILE)).unwrap();
    let indexes: i64 = database
        .query_row("SELECT count(*) FROM sqlite_schema WHERE type = 'index' AND sql IS NOT NULL", [], |row| {
            row.get(0)
        })
        .unwrap();
    assert_eq!(indexes, 9);
    // Its old row keeps its id: the next item's id is above it.
    assert_eq!(store.reserve_item_ids(1), 2);
}

#[test]
fn a_file_of_another_program_or_of_the_malware_store_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let database = rusqlite::Connection::open(dir.path().join(NETWORK_DATABASE_FILE)).unwrap();
        database.execute_batch("CREATE TABLE accounts (id INTEGER)").unwrap();
    }
    assert!(matches!(
        NetworkStore::open(dir.path(), settings()),
        Err(StoreError::NotSentinelDatabase { .. })
    ));

    // sentinel.db copied over network.db: another schema of Sentinel, refused too.
    let other = tempfile::tempdir().unwrap();
    drop(Store::open(other.path(), StoreSettings::default()).unwrap());
    let data = tempfile::tempdir().unwrap();
    std::fs::copy(other.path().join("sentinel.db"), data.path().join(NETWORK_DATABASE_FILE)).unwrap();
    assert!(matches!(
        NetworkStore::open(data.path(), settings()),
        Err(StoreError::NotSentinelDatabase { .. })
    ));
}

#[test]
fn a_snapshot_is_stored_whole_with_its_journal_entry_gone_and_live_items_beside_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = NetworkStore::open(dir.path(), settings()).unwrap();
    let id = store.journal_snapshot(b"{\"host\": \"a\"}".to_vec()).unwrap();
    let other = store.journal_snapshot(b"{\"host\": \"b\"}".to_vec()).unwrap();
    assert_eq!(
        store.journalled_snapshots().unwrap(),
        [(id, b"{\"host\": \"a\"}".to_vec()), (other, b"{\"host\": \"b\"}".to_vec())]
    );
    store.forget_snapshot(other).unwrap();
    let now = SystemTime::now();
    // Five items with a batch of two: the snapshot is not split.
    store.store_snapshot(id, (0..5).map(|_| item(&store, now, "agentproc", "agent:a", true)).collect());
    store.store(item(&store, now, "liveproc", "live:here", false));
    store.close();
    let counts = store.row_counts().unwrap();
    assert_eq!((counts.connections, counts.features, counts.predictions), (6, 6, 10), "{counts:?}");
    assert_eq!(counts.journalled_snapshots, 0);
    assert_eq!(store.writer_stats().written, 6);
    let history = store.history(100, &|| false).unwrap();
    assert_eq!(history.len(), 6);
    assert_eq!(history[0].process_name.as_deref(), Some("liveproc"), "newest first");
    assert_eq!(history[0].features["protocol"], "tcp");
    assert!(history.iter().all(|row| !row.anomalous));
    assert_eq!(store.history(2, &|| false).unwrap().len(), 2, "the limit holds");
}

#[test]
fn retention_deletes_what_is_older_than_the_retention_and_keeps_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let now = SystemTime::now();
    {
        let store = NetworkStore::open(dir.path(), settings()).unwrap();
        for age in [40 * DAY, 31 * DAY] {
            store.store(item(&store, now - age, "old", "live:here", true));
        }
        for age in [29 * DAY, DAY, Duration::ZERO] {
            store.store(item(&store, now - age, "recent", "live:here", true));
        }
        store.store_metrics(vec![metrics_row(now - 40 * DAY, MetricsSource::HeldOut)]);
        store.close();
        assert_eq!(store.row_counts().unwrap().features, 5, "written after the retention of the opening");
    }
    // The retention runs when the writer starts (and hourly).
    let store = NetworkStore::open(dir.path(), settings()).unwrap();
    store.close();
    let counts = store.row_counts().unwrap();
    assert_eq!((counts.connections, counts.features, counts.predictions), (3, 3, 6), "{counts:?}");
    assert_eq!(counts.model_metrics, 1, "model metrics are history of the models, kept");
    let history = store.history(100, &|| false).unwrap();
    assert!(history.iter().all(|row| row.process_name.as_deref() == Some("recent")));
    let oldest = store.history_extent().unwrap().oldest.unwrap();
    assert!(now.duration_since(oldest).unwrap() < 30 * DAY);
}

#[test]
fn labels_are_all_or_nothing_replace_earlier_ones_and_pair_with_the_stored_verdicts() {
    let dir = tempfile::tempdir().unwrap();
    // The writer would wait a minute before writing these few items: only `flush` writes them.
    let writer = WriterSettings { batch: 1000, flush_interval: 60 * Duration::from_secs(1), ..settings() };
    let store = NetworkStore::open(dir.path(), writer).unwrap();
    let now = SystemTime::now();
    let scored: Vec<ScoredItem> = (0..3).map(|_| item(&store, now, "p", "live:here", true)).collect();
    let ids: Vec<i64> = scored.iter().map(|item| item.id).collect();
    assert_eq!(ids[1], ids[0] + 1, "reserved ids are consecutive");
    let old = item(&store, now - 10 * DAY, "p", "live:here", true);
    let (old_id, unscored) = (old.id, item(&store, now, "p", "live:here", false));
    let unscored_id = unscored.id;
    for item in scored.into_iter().chain([old, unscored]) {
        store.store(item);
    }
    assert_eq!(store.row_counts().unwrap().features, 0, "still queued");
    store.flush();
    assert_eq!(store.row_counts().unwrap().features, 5, "written when flush returns");
    assert!(store.item_id_issued(ids[0]) && !store.item_id_issued(unscored_id + 1));

    let label = |id, anomalous, note: &str| ItemLabel { id, anomalous, note: Some(note.to_owned()) };
    let unknown = store
        .label_items(vec![label(ids[0], true, "exfiltration"), label(9_999, false, "?")], "alice", now)
        .unwrap();
    assert_eq!(unknown, [9_999]);
    assert!(store.labelled_predictions(now - DAY).unwrap().is_empty(), "nothing was labelled");

    let labels = vec![
        label(ids[0], true, "exfiltration"),
        label(ids[1], false, "backup job"),
        label(old_id, true, "old"),
        label(unscored_id, true, "before the first model"),
    ];
    assert!(store.label_items(labels, "alice", now).unwrap().is_empty());
    // A second verdict replaces the first.
    assert!(
        store.label_items(vec![label(ids[1], true, "on second thought")], "bob", now).unwrap().is_empty()
    );
    let predictions = store.labelled_predictions(now - DAY).unwrap();
    let items: Vec<(i64, &str, bool)> =
        predictions.iter().map(|row| (row.item, row.model.as_str(), row.anomalous)).collect();
    assert_eq!(
        items,
        [
            (ids[0], "isolation_forest", true),
            (ids[0], "ensemble", true),
            (ids[1], "isolation_forest", true),
            (ids[1], "ensemble", true)
        ],
        "the window leaves the old item out; the unscored one has no verdict"
    );
    assert_eq!(predictions[1].score, 0.3);
    let rows = store.labelled_rows(now - DAY).unwrap();
    assert_eq!(rows.len(), 3, "the unscored item has features to learn from");
    assert!(rows.iter().all(|row| row.anomalous && row.features["protocol"] == "tcp"));
    assert_eq!(store.row_counts().unwrap().feedback, 4);

    store.record_metrics(vec![metrics_row(now, MetricsSource::Feedback)]).unwrap();
    let rows = store.model_metrics(MetricsSource::Feedback, 10).unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].samples, rows[0].false_positive_rate, rows[0].precision), (200, Some(0.01), None));
    assert!(store.model_metrics(MetricsSource::HeldOut, 10).unwrap().is_empty());
    store.close();
    let database = rusqlite::Connection::open(dir.path().join(NETWORK_DATABASE_FILE)).unwrap();
    let (analyst, note, label): (String, String, i64) = database
        .query_row(
            "SELECT b.analyst, b.note, f.label FROM network_feedback b JOIN network_features f ON f.id = b.feature_id
             WHERE b.feature_id = ?1",
            [ids[1]],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
        )
        .unwrap();
    assert_eq!((analyst.as_str(), note.as_str(), label), ("bob", "on second thought", 1));
    let source: String =
        database.query_row("SELECT source FROM model_metrics", [], |row| row.get(0)).unwrap();
    assert_eq!(source, "feedback");
}

#[test]
fn item_ids_are_never_handed_out_twice_even_after_retention() {
    let dir = tempfile::tempdir().unwrap();
    let now = SystemTime::now();
    let last = {
        let store = NetworkStore::open(dir.path(), settings()).unwrap();
        let old = item(&store, now - 40 * DAY, "p", "live:here", true);
        let id = old.id;
        store.store(old);
        store.close();
        id
    };
    // The retention at this opening deletes that row; its id stays used.
    let store = NetworkStore::open(dir.path(), settings()).unwrap();
    store.flush();
    assert_eq!(store.row_counts().unwrap().features, 0);
    assert_eq!(store.reserve_item_ids(2), last + 1);
    assert_eq!(store.reserve_item_ids(1), last + 3);
}

#[cfg(unix)]
#[test]
fn every_file_under_the_data_directory_is_private_to_the_service_user() {
    use std::os::unix::fs::PermissionsExt;

    fn check(path: &Path, found: &mut usize) {
        let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        if path.is_dir() {
            assert_eq!(mode, 0o700, "{}", path.display());
            for entry in std::fs::read_dir(path).unwrap() {
                check(&entry.unwrap().path(), found);
            }
        } else {
            assert_eq!(mode, 0o600, "{}", path.display());
            *found += 1;
        }
    }

    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let store = Store::open(&data_dir, StoreSettings::default()).unwrap();
    let network = NetworkStore::open(&data_dir, settings()).unwrap();
    let sample = b"MZ a sample of a few bytes".to_vec();
    store.record_sample(&sentinel_sha256(&sample), &sample).unwrap();
    network.journal_snapshot(b"{}".to_vec()).unwrap();
    network.store(item(&network, SystemTime::now(), "p", "live:here", false));
    // While both are open: the -wal and -shm files exist.
    std::thread::sleep(Duration::from_millis(100));
    for name in ["sentinel.db-wal", "sentinel.db-shm", "network.db-wal", "network.db-shm"] {
        assert!(data_dir.join(name).exists(), "{name}");
    }
    let mut files = 0;
    check(&data_dir, &mut files);
    assert!(files >= 7, "{files} files checked");
}

fn sentinel_sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

#[test]
fn a_broker_record_is_stored_once_however_often_it_is_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let store = NetworkStore::open(dir.path(), settings()).unwrap();
    let now = SystemTime::now();
    let (told, outcomes) = std::sync::mpsc::channel();
    for attempt in 0..3 {
        let told = told.clone();
        let items = (0..2).map(|_| item(&store, now, "agentproc", "agent:a", true)).collect();
        store.store_delivery("f00d".repeat(16), items, move |outcome| {
            told.send((attempt, outcome.map_err(|error| error.to_string()))).unwrap()
        });
    }
    store.store_delivery("beef".repeat(16), vec![item(&store, now, "other", "agent:b", false)], {
        let told = told.clone();
        move |outcome| told.send((3, outcome.map_err(|error| error.to_string()))).unwrap()
    });
    let mut seen: Vec<_> = (0..4).map(|_| outcomes.recv_timeout(Duration::from_secs(10)).unwrap()).collect();
    seen.sort_by_key(|(attempt, _)| *attempt);
    assert_eq!(seen, vec![(0, Ok(true)), (1, Ok(false)), (2, Ok(false)), (3, Ok(true))]);
    let counts = store.row_counts().unwrap();
    assert_eq!((counts.connections, counts.features, counts.predictions), (3, 3, 4), "{counts:?}");

    store.close();
    store.store_delivery("cafe".repeat(16), Vec::new(), move |outcome| {
        told.send((4, outcome.map_err(|error| error.to_string()))).unwrap()
    });
    let (_, closed) = outcomes.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(closed.unwrap_err().contains("stopped"), "a closed writer says so at once");
}

#[test]
fn processes_sharing_the_database_never_hand_out_the_same_item_id() {
    let dir = tempfile::tempdir().unwrap();
    let settings = WriterSettings { queue: 10_000, ..settings() };
    let first = NetworkStore::open(dir.path(), settings).unwrap();
    let second = NetworkStore::open(dir.path(), settings).unwrap();
    first.share_item_ids();
    second.share_item_ids();
    let now = SystemTime::now();
    let mut ids = std::collections::HashSet::new();
    for round in 0..3000 {
        let store = if round % 3 == 0 { &first } else { &second };
        let item = item(store, now, "p", "agent:a", false);
        assert!(ids.insert(item.id), "id {} handed out twice", item.id);
        store.store(item);
    }
    first.close();
    second.close();
    let (first_stats, second_stats) = (first.writer_stats(), second.writer_stats());
    assert_eq!(first_stats.failed + second_stats.failed, 0, "no write refused for a taken id");
    assert_eq!(first_stats.dropped + second_stats.dropped, 0);
    assert_eq!(first.row_counts().unwrap().features, 3000);
}
