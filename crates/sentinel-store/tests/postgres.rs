//! What is particular to the PostgreSQL backend: one database shared by replicas that open and
//! migrate it together, refusing what is not Sentinel's, and failing fast when the server is
//! not there. The datasets themselves are tested on both backends in their own files.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sentinel_store::{Store, StoreError, StoreSettings, VtReportRow};
use sentinel_testkit::postgres::ScratchDatabase;

fn report(sha256: &str) -> VtReportRow {
    VtReportRow {
        sha256: sha256.into(),
        last_analysis_date: None,
        fetched_at: 1,
        malicious: 3,
        suspicious: 0,
        undetected: 60,
        harmless: 0,
        report_json: "{}".into(),
    }
}

#[test]
fn replicas_opening_one_database_at_once_migrate_it_once_and_share_its_rows() {
    let database = ScratchDatabase::create("replicas");
    let url: Arc<str> = database.url().into();
    let replicas: Vec<Store> = (0..3)
        .map(|_| {
            let url = Arc::clone(&url);
            std::thread::spawn(move || {
                let dir = tempfile::tempdir().unwrap().keep();
                Store::open_postgres(&url, &dir, StoreSettings::default())
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|opening| opening.join().unwrap().unwrap())
        .collect();
    let hash = "ab".repeat(32);
    assert!(replicas[0].put_vt_report(&report(&hash)).unwrap());
    for replica in &replicas {
        assert_eq!(replica.vt_report(&hash).unwrap().unwrap().malicious, 3);
    }
    let version =
        database.query_i64("SELECT version::BIGINT FROM sentinel_schema WHERE name = 'malware'").unwrap();
    assert!(version >= 1);
    // Reopening finds the schema current and changes nothing.
    drop(replicas);
    let dir = tempfile::tempdir().unwrap();
    let reopened = Store::open_postgres(database.url(), dir.path(), StoreSettings::default()).unwrap();
    assert_eq!(reopened.vt_report(&hash).unwrap().unwrap().sha256, hash);
}

#[test]
fn a_schema_written_by_a_newer_sentinel_is_refused() {
    let database = ScratchDatabase::create("newer");
    let dir = tempfile::tempdir().unwrap();
    drop(Store::open_postgres(database.url(), dir.path(), StoreSettings::default()).unwrap());
    database.execute("UPDATE sentinel_schema SET version = 999 WHERE name = 'malware'").unwrap();
    let refused = Store::open_postgres(database.url(), dir.path(), StoreSettings::default()).unwrap_err();
    assert!(matches!(refused, StoreError::SchemaTooNew { found: 999, .. }), "{refused}");
}

#[test]
fn a_database_of_another_program_is_refused_and_left_alone() {
    let database = ScratchDatabase::create("foreign");
    database.execute("CREATE TABLE customers (id BIGINT)").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let refused = Store::open_postgres(database.url(), dir.path(), StoreSettings::default()).unwrap_err();
    assert!(refused.to_string().contains("not a Sentinel database"), "{refused}");
    assert_eq!(
        database.query_i64("SELECT count(*) FROM pg_tables WHERE tablename = 'sentinel_schema'").unwrap(),
        0
    );
}

#[test]
fn an_unreachable_server_is_a_prompt_error_and_a_bad_url_a_clear_one() {
    // A port nothing listens on: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let error = Store::open_postgres(
        &format!("postgres://postgres@127.0.0.1:{port}/sentinel"),
        dir.path(),
        StoreSettings::default(),
    )
    .unwrap_err();
    assert!(matches!(error, StoreError::Postgres(_)), "{error}");
    assert!(started.elapsed() < Duration::from_secs(30), "took {:?}", started.elapsed());

    let error = Store::open_postgres("postgres://[::1", dir.path(), StoreSettings::default()).unwrap_err();
    assert!(matches!(error, StoreError::InvalidSettings(_)), "{error}");
}

#[test]
fn passwords_come_from_a_private_file_never_from_the_url() {
    let database = ScratchDatabase::create("password");
    let dir = tempfile::tempdir().unwrap();
    let with_password =
        database.url().replacen("postgres://postgres@", "postgres://postgres:hunter2-secret@", 1);
    let error = Store::open_postgres(&with_password, dir.path(), StoreSettings::default()).unwrap_err();
    assert!(matches!(error, StoreError::InvalidSettings(_)), "{error}");
    assert!(!error.to_string().contains("hunter2"), "{error}");

    let password_file = dir.path().join("postgres.password");
    std::fs::write(&password_file, "hunter2-secret\n").unwrap();
    let settings =
        || StoreSettings { password_file: Some(password_file.clone()), ..StoreSettings::default() };
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&password_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let error = Store::open_postgres(database.url(), dir.path(), settings()).unwrap_err();
    assert!(matches!(error, StoreError::KeyFileNotPrivate { mode: 0o644, .. }), "{error}");
    assert!(!error.to_string().contains("hunter2"), "{error}");
    // Private, it is used (this server trusts local connections, so any password opens it).
    std::fs::set_permissions(&password_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let store = Store::open_postgres(database.url(), dir.path(), settings()).unwrap();
    assert!(store.is_shared());
    assert!(format!("{store:?}").find("hunter2").is_none());
}

/// What a PostgreSQL restart does to the replicas' pooled connections, a hundred times: every
/// connection ended by the server, then at once the read every API request makes (its token).
/// The pool can hand out a connection the server has just ended before the client has read the
/// goodbye; the read is then made again on a new one instead of failing the request.
#[test]
fn a_token_read_right_after_postgresql_ends_every_connection_is_answered() {
    let database = ScratchDatabase::create("ended connections");
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_postgres(database.url(), dir.path(), StoreSettings::default()).unwrap();
    let hash = [7u8; 32];
    store
        .create_api_token(sentinel_store::NewApiToken {
            name: "agent".into(),
            hash,
            scopes: "network:ingest".into(),
            expires_at: None,
        })
        .unwrap();
    for round in 0..100 {
        database
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                 WHERE datname = current_database() AND pid <> pg_backend_pid()",
            )
            .unwrap();
        let found = store.api_token_by_hash(&hash).unwrap_or_else(|error| panic!("round {round}: {error}"));
        assert_eq!(found.unwrap().name, "agent");
    }
}
