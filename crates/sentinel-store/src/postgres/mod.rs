//! The PostgreSQL backend of the store (`--store postgres://…`), for fleets: every replica of
//! `sentinel serve` opens the same database, so what one replica stored (a VirusTotal report, a
//! token, a model) every other one sees.
//!
//! The store's API is blocking (callers run it on `spawn_blocking`, as for SQLite), while the
//! PostgreSQL client is async: [`PgDatabase`] owns a small tokio runtime of its own that drives
//! the pooled connections (deadpool-postgres), and each call hands it one job and waits for the
//! answer on a channel. Waiting on a channel, rather than `block_on`, works from any thread —
//! a blocking-pool thread, a plain thread, even (blocking it, as SQLite would) a runtime worker.
//!
//! Durability is PostgreSQL's: a call returns once its transaction committed, and PostgreSQL's
//! default `synchronous_commit = on` has flushed it to the WAL by then. Concurrency is too:
//! there is no writer thread and no group commit here, PostgreSQL serialises what must be.
//!
//! A job that cannot get a connection within the pool's wait timeout, or a statement running
//! longer than `statement_timeout`, fails with [`StoreError::Postgres`] instead of hanging: an
//! outage of the database is an error the caller reports (and retries), never a stuck thread.
//! Connections broken by a restart of PostgreSQL are dropped when next taken from the pool, and
//! new ones are made, so the store recovers by itself.
//!
//! Each dataset's SQL is in its own file here, beside the SQLite SQL of the dataset's module;
//! `schema.rs` (malware tables) and `network_schema.rs` (network tables) hold the migrations,
//! `migrations.rs` applies them.

pub(crate) mod alerts;
pub(crate) mod api_tokens;
pub(crate) mod audit;
pub(crate) mod hash_lists;
pub(crate) mod labels;
pub(crate) mod leases;
mod migrations;
pub(crate) mod model_registry;
pub(crate) mod network;
mod network_schema;
pub(crate) mod samples;
mod schema;
pub(crate) mod verdicts;
pub(crate) mod vt_economy;
pub(crate) mod vt_reports;
pub(crate) mod yara_matches;

use std::future::Future;
use std::path::Path;
use std::sync::{Arc, mpsc};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime, Timeouts};
use tokio_postgres::NoTls;
use zeroize::Zeroizing;

use crate::StoreError;

pub(crate) use migrations::PgSchema;
pub(crate) use network_schema::NETWORK;
pub(crate) use schema::MALWARE;

/// Connections of one pool (a replica has two: the malware tables' and the network tables'):
/// each serves one call at a time, and callers beyond it wait (up to the wait timeout) rather
/// than open connections PostgreSQL would refuse — its default `max_connections` of 100 then
/// serves five replicas with room for the operator's own sessions.
const POOL_SIZE: usize = 10;

/// How long a call waits for a free connection, or for a new one to be made, before failing.
const POOL_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest a statement may run: a stuck query fails instead of holding a thread and a
/// connection for ever.
const STATEMENT_TIMEOUT_MS: u64 = 60_000;

/// A pool of connections to one PostgreSQL database, and the runtime that drives them.
pub(crate) struct PgDatabase {
    pool: Pool,
    /// `Option` only so that `Drop` can take it: a runtime dropped from inside another runtime
    /// panics, so it is shut down in the background instead.
    runtime: Option<tokio::runtime::Runtime>,
}

impl PgDatabase {
    /// Connects to the database at `url` (`postgres://user@host:port/database`, or the
    /// key=value form), with the password of `password_file` if one is given, and brings
    /// `schema` to its latest version. A URL carrying a password is refused: URLs are shown in
    /// process listings and error messages, password files are not.
    pub(crate) fn connect(
        url: &str,
        password_file: Option<&Path>,
        schema: &'static PgSchema,
    ) -> Result<PgDatabase, StoreError> {
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|error| StoreError::InvalidSettings(format!("invalid PostgreSQL URL: {error}")))?;
        if config.get_password().is_some() {
            return Err(StoreError::InvalidSettings(
                "the PostgreSQL URL carries a password: put it in [store] password_file instead".into(),
            ));
        }
        if let Some(path) = password_file {
            config.password(read_password_file(path)?.as_bytes());
        }
        if config.get_application_name().is_none() {
            config.application_name("sentinel");
        }
        config.options(format!("-c statement_timeout={STATEMENT_TIMEOUT_MS}"));
        config.connect_timeout(POOL_TIMEOUT);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("sentinel-store-postgres")
            .enable_all()
            .build()
            .map_err(|error| {
                StoreError::Postgres(format!("cannot start the PostgreSQL client's runtime: {error}"))
            })?;
        // `Fast` recycling: a pooled connection whose socket PostgreSQL closed (a restart) is
        // noticed and replaced when taken, without a round trip on every call.
        let manager =
            Manager::from_config(config, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .timeouts(Timeouts {
                wait: Some(POOL_TIMEOUT),
                create: Some(POOL_TIMEOUT),
                recycle: Some(POOL_TIMEOUT),
            })
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|error| StoreError::Postgres(format!("cannot build the connection pool: {error}")))?;
        let database = PgDatabase { pool, runtime: Some(runtime) };
        database.run(move |mut client| async move { migrations::migrate(&mut client, schema).await })?;
        Ok(database)
    }

    /// Runs `job` on a pooled connection on the backend's runtime and waits for its value.
    /// `job` owns what it needs (`'static`): it runs on another thread.
    pub(crate) fn run<T, F, Fut>(&self, job: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(Object) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        let Some(runtime) = self.runtime.as_ref() else {
            return Err(StoreError::WriterStopped);
        };
        let pool = self.pool.clone();
        let (reply, answer) = mpsc::sync_channel(1);
        runtime.spawn(async move {
            let outcome = match pool.get().await {
                Ok(client) => job(client).await,
                Err(error) => Err(StoreError::Postgres(format!("no connection to PostgreSQL: {error}"))),
            };
            let _ = reply.send(outcome);
        });
        // The job's task always sends unless it panicked; its sender is then dropped.
        answer.recv().map_err(|_| StoreError::Postgres("a PostgreSQL job panicked".into()))?
    }

    /// [`PgDatabase::run`] for a job that only reads, run again on another connection when
    /// PostgreSQL had ended the one it was given. The pool notices a connection the server ended
    /// only once the client has read the server's goodbye, so in the moment after a restart or a
    /// `pg_terminate_backend` it can still hand one out; a read is safe to repeat, and failing it
    /// would answer an API request 503 (its token is read on every request) for nothing. Each
    /// ended connection is dropped when it comes back to the pool, so a pool's worth of tries
    /// reaches a new one; a server that is down fails the connect instead, and that is returned.
    pub(crate) fn run_read<T, F, Fut>(&self, job: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Fn(Object) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        let job = Arc::new(job);
        let mut tries = 0;
        loop {
            let attempt = Arc::clone(&job);
            match self.run(move |client| attempt(client)) {
                Err(StoreError::PostgresConnectionEnded(error)) if tries < POOL_SIZE => {
                    tries += 1;
                    tracing::warn!(%error, "PostgreSQL ended a pooled connection: the read is tried on another");
                }
                outcome => return outcome,
            }
        }
    }
}

/// The first line of a password file private to its owner.
fn read_password_file(path: &Path) -> Result<Zeroizing<String>, StoreError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let metadata = std::fs::metadata(path).map_err(StoreError::io(path))?;
        let mode = metadata.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(StoreError::KeyFileNotPrivate { path: path.to_owned(), mode });
        }
    }
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(StoreError::io(path))?);
    let password = Zeroizing::new(text.lines().next().unwrap_or_default().to_owned());
    if password.is_empty() {
        return Err(StoreError::InvalidSettings(format!("the password file {} is empty", path.display())));
    }
    Ok(password)
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(error: tokio_postgres::Error) -> StoreError {
        // A database error's SQLSTATE and message, never its detail: the detail quotes the
        // values of the row at fault, which may be a client's data.
        let text = match error.as_db_error() {
            Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
            None => error.to_string(),
        };
        // Class 57P: the server ended the session (admin_shutdown, crash_shutdown,
        // cannot_connect_now).
        let ended = error.is_closed() || error.code().is_some_and(|code| code.code().starts_with("57P"));
        match ended {
            true => StoreError::PostgresConnectionEnded(text),
            false => StoreError::Postgres(text),
        }
    }
}
