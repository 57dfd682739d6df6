//! The SQLite connections behind the store: one writer thread that owns the only write
//! connection, and a pool of read-only connections that in WAL mode read concurrently with it.
//!
//! Durability: WAL with `synchronous = FULL`, so every committed transaction is fsynced to the
//! WAL before `commit` returns and survives a power loss, not only a process crash. NORMAL would
//! be faster but can lose the last transactions on power loss, which breaks the promise that an
//! acknowledged verdict is kept.
//!
//! Group commit: that fsync costs milliseconds, so one transaction per write would cap the store
//! at a few hundred writes per second whatever the number of clients. Callers therefore hand
//! their writes to the writer thread over a channel; the thread takes every write queued while
//! it was busy, runs them in one transaction (each inside its own savepoint, so a failing write
//! is rolled back alone), commits once, and only then answers each caller. A caller is still
//! answered only after its write is durable, and a lone write is not delayed.

use std::fs::OpenOptions;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, TransactionBehavior};

use crate::StoreError;
use crate::migrations::{self, Schema};
use crate::sqlcipher::{self, DatabaseKey};

/// Prepared statements cached per connection; the store uses a few dozen.
const STATEMENT_CACHE_CAPACITY: usize = 64;

/// Most writes committed in one transaction: bounds how long a batch holds SQLite's write lock
/// (other processes, checkpoints) and how much one failed commit takes down with it.
const MAX_BATCH: usize = 512;

/// How many transactions and writes the writer thread has committed since the store opened.
/// `writes / transactions` is the mean batch size: close to 1 when writes do not overlap, and
/// growing with the number of concurrent writers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteStats {
    /// Transactions committed.
    pub transactions: u64,
    /// Writes (store calls) acknowledged as committed, including those that failed alone and were
    /// rolled back to their savepoint.
    pub writes: u64,
}

pub(crate) struct Database {
    path: PathBuf,
    busy_timeout: Duration,
    queue: Sender<Box<dyn PendingWrite>>,
    writer: Option<JoinHandle<()>>,
    stats: Arc<Counters>,
    idle_readers: Mutex<Vec<Connection>>,
    max_idle_readers: usize,
    /// Keys every connection when the store is encrypted.
    key: Option<DatabaseKey>,
}

#[derive(Default)]
struct Counters {
    transactions: AtomicU64,
    writes: AtomicU64,
}

impl Database {
    /// Opens (creating if needed) the database at `path`, encrypted under `key` if one is
    /// given, migrates it to the latest schema and starts the writer thread. A file that `key`
    /// does not open (a plain file with a key, an encrypted one without or with another key) is
    /// refused before anything is written to it.
    pub(crate) fn open(
        path: &Path,
        schema: &Schema,
        busy_timeout: Duration,
        max_idle_readers: usize,
        key: Option<DatabaseKey>,
    ) -> Result<Database, StoreError> {
        sqlcipher::probe(path, key.as_ref())?;
        create_private_file(path)?;
        let mut writer = Connection::open(path)?;
        sqlcipher::apply_key(&writer, key.as_ref(), path)?;
        configure(&writer, busy_timeout)?;
        let journal_mode: String = writer.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
        if !journal_mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::WalUnavailable { path: path.to_owned(), journal_mode });
        }
        writer.pragma_update(None, "synchronous", "FULL")?;
        // Checkpoints rewind the WAL but leave its file at its largest size; cap what is kept.
        writer.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)?;
        migrations::migrate(&mut writer, path, schema)?;

        let (queue, pending) = mpsc::channel();
        let stats = Arc::new(Counters::default());
        let thread_stats = Arc::clone(&stats);
        let thread = thread::Builder::new()
            .name("sentinel-store-writer".into())
            .spawn(move || run_writer(writer, &pending, &thread_stats))
            .map_err(StoreError::io(path))?;
        Ok(Database {
            path: path.to_owned(),
            busy_timeout,
            queue,
            writer: Some(thread),
            stats,
            idle_readers: Mutex::new(Vec::new()),
            max_idle_readers,
            key,
        })
    }

    /// Runs `work` on the writer thread inside a write transaction, possibly batched with other
    /// callers' writes, and returns its value once that transaction is committed. If `work`
    /// fails, nothing it did is committed; if the commit fails, nothing of the batch is. A panic
    /// in `work` is resumed in the caller, as if `work` had run on the caller's thread.
    pub(crate) fn write<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (reply, outcome) = mpsc::sync_channel(1);
        let pending = Box::new(Pending { work: Some(work), outcome: None, reply });
        self.queue.send(pending).map_err(|_| StoreError::WriterStopped)?;
        match outcome.recv() {
            Ok(Ok(result)) => result,
            Ok(Err(payload)) => panic::resume_unwind(payload),
            Err(_) => Err(StoreError::WriterStopped),
        }
    }

    pub(crate) fn stats(&self) -> WriteStats {
        WriteStats {
            transactions: self.stats.transactions.load(Ordering::Relaxed),
            writes: self.stats.writes.load(Ordering::Relaxed),
        }
    }

    /// Runs `work` on a read-only connection. The reads of one call see one consistent snapshot
    /// only if `work` opens a transaction; single statements are always consistent.
    pub(crate) fn read<T>(
        &self,
        work: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let pooled = lock(&self.idle_readers).pop();
        let reader = match pooled {
            Some(reader) => reader,
            None => self.open_reader()?,
        };
        let value = work(&reader);
        let mut idle = lock(&self.idle_readers);
        if idle.len() < self.max_idle_readers {
            idle.push(reader);
        }
        value
    }

    fn open_reader(&self) -> Result<Connection, StoreError> {
        // Read-write open flags: a WAL reader must be able to update the shared-memory index.
        // `query_only` then makes any write attempt on it an error.
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let reader = Connection::open_with_flags(&self.path, flags)?;
        sqlcipher::apply_key(&reader, self.key.as_ref(), &self.path)?;
        configure(&reader, self.busy_timeout)?;
        reader.pragma_update(None, "query_only", true)?;
        Ok(reader)
    }
}

impl Drop for Database {
    /// Stops the writer thread after it has committed what is queued, so the database is closed
    /// (and its WAL checkpointed) before `drop` returns.
    fn drop(&mut self) {
        // Replacing the sender closes the channel; the thread ends when the queue is empty.
        drop(std::mem::replace(&mut self.queue, mpsc::channel().0));
        if let Some(writer) = self.writer.take()
            && writer.join().is_err()
        {
            tracing::error!(path = %self.path.display(), "the store's writer thread had panicked");
        }
    }
}

/// A caller's write waiting in the queue, with its result type erased so that writes of
/// different kinds share a batch.
trait PendingWrite: Send {
    /// Runs the write on the batch's connection; returns whether it succeeded, that is whether
    /// its savepoint should be kept.
    fn apply(&mut self, connection: &Connection) -> bool;

    /// Answers the caller once the batch is committed, or could not be.
    fn complete(self: Box<Self>, committed: Result<(), &Arc<rusqlite::Error>>);
}

type Outcome<T> = thread::Result<Result<T, StoreError>>;

struct Pending<T, F> {
    work: Option<F>,
    outcome: Option<Outcome<T>>,
    reply: SyncSender<Outcome<T>>,
}

impl<T, F> PendingWrite for Pending<T, F>
where
    T: Send,
    F: FnOnce(&Connection) -> Result<T, StoreError> + Send,
{
    fn apply(&mut self, connection: &Connection) -> bool {
        let Some(work) = self.work.take() else { return false };
        // Caught so that one bad write cannot stop the writer thread for every other caller;
        // the savepoint of a panicked write is rolled back like that of a failed one.
        let outcome = panic::catch_unwind(AssertUnwindSafe(|| work(connection)));
        let succeeded = matches!(outcome, Ok(Ok(_)));
        self.outcome = Some(outcome);
        succeeded
    }

    fn complete(self: Box<Self>, committed: Result<(), &Arc<rusqlite::Error>>) {
        let outcome = match (committed, self.outcome) {
            (Ok(()), Some(outcome)) => outcome,
            // The write's own failure says more than the batch's.
            (Err(_), Some(outcome @ (Ok(Err(_)) | Err(_)))) => outcome,
            (Err(error), _) => Ok(Err(StoreError::Commit(Arc::clone(error)))),
            // Unreachable: a batch commits only after applying every write in it.
            (Ok(()), None) => Ok(Err(StoreError::WriterStopped)),
        };
        // The caller blocks on the reply until it comes, so it is still there to receive it.
        let _ = self.reply.send(outcome);
    }
}

/// The writer thread: commits batches of queued writes until the store is dropped.
fn run_writer(mut connection: Connection, queue: &Receiver<Box<dyn PendingWrite>>, stats: &Counters) {
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        batch.extend(queue.try_iter().take(MAX_BATCH - 1));
        let committed = commit_batch(&mut connection, &mut batch).map_err(Arc::new);
        if committed.is_ok() {
            stats.transactions.fetch_add(1, Ordering::Relaxed);
            stats.writes.fetch_add(batch.len() as u64, Ordering::Relaxed);
        }
        for pending in batch {
            pending.complete(committed.as_ref().map(|_| ()));
        }
    }
}

/// Applies every write of `batch` in one IMMEDIATE transaction, each in a savepoint that is
/// rolled back if the write fails, and commits.
fn commit_batch(connection: &mut Connection, batch: &mut [Box<dyn PendingWrite>]) -> rusqlite::Result<()> {
    let mut transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
    for pending in batch.iter_mut() {
        let savepoint = transaction.savepoint()?;
        if pending.apply(&savepoint) {
            savepoint.commit()?;
        }
        // Otherwise dropping the savepoint rolls the write back.
    }
    transaction.commit()
}

fn configure(connection: &Connection, busy_timeout: Duration) -> Result<(), StoreError> {
    connection.busy_timeout(busy_timeout)?;
    connection.set_prepared_statement_cache_capacity(STATEMENT_CACHE_CAPACITY);
    Ok(())
}

/// The pool is only pushed to and popped from, so a panic elsewhere cannot leave it
/// inconsistent: a poisoned lock is taken over, not propagated.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Creates the database file readable by its owner only, before SQLite does so with the umask's
/// permissions; SQLite gives the -wal and -shm files the same permissions as the database. A file
/// an older Sentinel created with the umask's permissions (`network.db` was 0644), and its -wal
/// and -shm files if a crash left them, are made private too.
fn create_private_file(path: &Path) -> Result<(), StoreError> {
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path).map(drop).map_err(StoreError::io(path))?;
    #[cfg(unix)]
    for suffix in ["", "-wal", "-shm"] {
        use std::os::unix::fs::PermissionsExt;
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        let file = PathBuf::from(file);
        match std::fs::metadata(&file) {
            Ok(metadata) if metadata.permissions().mode() & 0o077 != 0 => {
                std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))
                    .map_err(StoreError::io(&file))?;
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Barrier;

    use super::*;

    const INSERT: &str = "INSERT INTO verdicts (sha256, analysis, model_version, score, created_at, client)
        VALUES (?1, 'static', 'm', 0.5, 0, 'test')";

    fn hash(index: usize) -> String {
        format!("{index:064x}")
    }

    fn count_verdicts(database: &Database) -> i64 {
        database
            .read(|connection| {
                Ok(connection.query_row("SELECT count(*) FROM verdicts", [], |row| row.get(0))?)
            })
            .unwrap()
    }

    #[test]
    fn queued_writes_share_a_transaction_and_a_failing_one_is_rolled_back_alone() {
        const WRITERS: usize = 24;
        let dir = tempfile::tempdir().unwrap();
        let database = Arc::new(
            Database::open(&dir.path().join("db"), &migrations::MALWARE, Duration::from_secs(5), 2, None)
                .unwrap(),
        );

        // Hold the writer thread inside a write until every other writer has queued; the
        // writers start only once it is inside, or a busy machine could run some of them first.
        let (release, gate) = mpsc::channel::<()>();
        let (entering, entered) = mpsc::channel::<()>();
        let holder = {
            let database = Arc::clone(&database);
            thread::spawn(move || {
                database
                    .write(move |_| {
                        let _ = entering.send(());
                        Ok(gate.recv().is_ok())
                    })
                    .unwrap()
            })
        };
        entered.recv().unwrap();
        let started = Arc::new(Barrier::new(WRITERS + 1));
        let writers: Vec<_> = (0..WRITERS)
            .map(|index| {
                let (database, started) = (Arc::clone(&database), Arc::clone(&started));
                thread::spawn(move || {
                    started.wait();
                    database.write(move |connection| {
                        connection.execute(INSERT, [hash(index)])?;
                        match index {
                            // Fails after writing: its row must not be committed.
                            0 => Err(StoreError::InvalidVerdict("test failure".into())),
                            1 => panic!("test panic after writing"),
                            _ => Ok(index),
                        }
                    })
                })
            })
            .collect();
        started.wait();
        // The writers are queued within microseconds of the barrier; give slow machines ample time.
        thread::sleep(Duration::from_millis(300));
        let before = database.stats();
        release.send(()).unwrap();
        assert!(holder.join().unwrap());

        let mut results: Vec<_> = writers.into_iter().map(thread::JoinHandle::join).collect();
        assert!(results.remove(1).is_err(), "the panic is resumed in its caller");
        assert!(matches!(results.remove(0), Ok(Err(StoreError::InvalidVerdict(_)))));
        for (index, result) in (2..).zip(results) {
            assert_eq!(result.unwrap().unwrap(), index);
        }
        assert_eq!(count_verdicts(&database), WRITERS as i64 - 2);
        let after = database.stats();
        assert_eq!(after.writes - before.writes, WRITERS as u64 + 1);
        assert!(after.transactions - before.transactions <= 2, "{before:?} then {after:?}");

        // The writer thread survived the panic.
        assert_eq!(database.write(|_| Ok(7)).unwrap(), 7);
    }
}
