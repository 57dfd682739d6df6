//! Scratch PostgreSQL databases: each test that runs on PostgreSQL creates a database of its own,
//! with a unique name, on the server of `SENTINEL_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`, the server `.ci/run` makes sure of), and drops
//! it when done. Tests never share a database, so none depends on what another left.
//!
//! The calls run on a thread of their own with a runtime of their own, so a test may use them
//! from synchronous code and from inside a tokio runtime alike.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The administrative connection the scratch databases are created through.
pub const POSTGRES_URL_ENV: &str = "SENTINEL_TEST_POSTGRES_URL";

const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A database created for one test, dropped (with its connections) when this is dropped.
#[derive(Debug)]
pub struct ScratchDatabase {
    name: String,
    url: String,
    admin_url: String,
}

impl ScratchDatabase {
    /// Creates an empty database named after `purpose`, the process and a counter. Panics with
    /// what to do when the server cannot be reached: every test machine runs PostgreSQL.
    pub fn create(purpose: &str) -> ScratchDatabase {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let admin_url = std::env::var(POSTGRES_URL_ENV).unwrap_or_else(|_| DEFAULT_URL.to_owned());
        let purpose: String = purpose
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' })
            .take(24)
            .collect();
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.subsec_nanos());
        let name = format!(
            "sentinel_test_{purpose}_{}_{}_{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        drop_orphans(&admin_url);
        admin(&admin_url, format!("CREATE DATABASE {name}")).unwrap_or_else(|error| {
            panic!(
                "cannot create a scratch PostgreSQL database through {admin_url}: {error}; start PostgreSQL \
                 (.ci/run does) or point {POSTGRES_URL_ENV} at a server where this user may create databases"
            )
        });
        let url = with_database(&admin_url, &name);
        ScratchDatabase { name, url, admin_url }
    }

    /// The URL of the scratch database, for `--store`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Runs SQL statements on the scratch database (a test's look at what the service stored).
    pub fn execute(&self, sql: &str) -> Result<(), String> {
        admin(&self.url, sql.to_owned())
    }

    /// The first column of the first row `sql` returns, as an integer (`count(*)` and the like).
    pub fn query_i64(&self, sql: &str) -> Result<i64, String> {
        let url = self.url.clone();
        let sql = sql.to_owned();
        on_own_runtime(move || async move {
            let client = connect(&url).await?;
            let row = client.query_one(&sql, &[]).await.map_err(|error| error.to_string())?;
            row.try_get::<_, i64>(0).map_err(|error| error.to_string())
        })
    }
}

impl Drop for ScratchDatabase {
    fn drop(&mut self) {
        // FORCE: a server under test may still hold connections.
        if let Err(error) =
            admin(&self.admin_url, format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name))
        {
            eprintln!("could not drop scratch database {}: {error}", self.name);
        }
    }
}

/// Drops the scratch databases of test processes that are gone (killed before their guard
/// dropped them), so that a test machine's server does not fill up with them. The process id
/// is the third field from the end of a scratch database's name.
fn drop_orphans(admin_url: &str) {
    // Whether a process is gone is read from /proc.
    if !cfg!(target_os = "linux") {
        return;
    }
    let url = admin_url.to_owned();
    let names = on_own_runtime(move || async move {
        let client = connect(&url).await?;
        let rows = client
            .query("SELECT datname FROM pg_database WHERE datname LIKE 'sentinel\\_test\\_%'", &[])
            .await
            .map_err(|error| error.to_string())?;
        Ok(rows.iter().map(|row| row.get::<_, String>(0)).collect::<Vec<_>>())
    });
    for name in names.unwrap_or_default() {
        let pid = name.rsplit('_').nth(2).and_then(|pid| pid.parse::<u32>().ok());
        let gone = pid.is_some_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists());
        if gone {
            let _ = admin(admin_url, format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
        }
    }
}

/// `url` with its database replaced by `database`.
fn with_database(url: &str, database: &str) -> String {
    match url.rfind('/') {
        Some(slash) if url[..slash].contains("://") && !url[..slash].ends_with('/') => {
            let query = url[slash..].find('?').map_or("", |at| &url[slash + at..]);
            format!("{}/{database}{query}", &url[..slash])
        }
        _ => format!("{}/{database}", url.trim_end_matches('/')),
    }
}

fn admin(url: &str, sql: String) -> Result<(), String> {
    let url = url.to_owned();
    on_own_runtime(move || async move {
        let client = connect(&url).await?;
        client.batch_execute(&sql).await.map_err(|error| error.to_string())
    })
}

async fn connect(url: &str) -> Result<tokio_postgres::Client, String> {
    let (client, connection) =
        tokio_postgres::connect(url, tokio_postgres::NoTls).await.map_err(|error| error.to_string())?;
    tokio::spawn(connection);
    Ok(client)
}

fn on_own_runtime<T, F, Fut>(job: F) -> Result<T, String>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, String>>,
{
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|error| error.to_string())?;
        runtime.block_on(job())
    })
    .join()
    .map_err(|_| "the PostgreSQL client thread panicked".to_owned())?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_of_a_url_is_replaced_and_its_parameters_kept() {
        assert_eq!(with_database("postgres://u@h:5432/postgres", "x"), "postgres://u@h:5432/x");
        assert_eq!(
            with_database("postgres://u@h/postgres?sslmode=disable", "x"),
            "postgres://u@h/x?sslmode=disable"
        );
        assert_eq!(with_database("postgres://u@h", "x"), "postgres://u@h/x");
    }

    #[test]
    fn a_scratch_database_exists_while_held_and_is_dropped_after() {
        let database = ScratchDatabase::create("testkit self-test");
        database.execute("CREATE TABLE t (x BIGINT); INSERT INTO t VALUES (41), (1)").unwrap();
        assert_eq!(database.query_i64("SELECT sum(x)::BIGINT FROM t").unwrap(), 42);
        let url = database.url().to_owned();
        drop(database);
        assert!(admin(&url, "SELECT 1".into()).is_err(), "the database outlived its guard");
    }
}
