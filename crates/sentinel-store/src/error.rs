//! The one error type of the store. Every failure a caller can meet is a variant here, with the
//! path or value involved, so an operator reading a log line knows what to look at.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The settings cannot work (for example a compression level zstd does not have).
    #[error("invalid store settings: {0}")]
    InvalidSettings(String),

    /// A SHA-256 that is not 64 hexadecimal characters. The value is shown escaped and
    /// truncated because it comes from the network.
    #[error("invalid SHA-256 {0}: expected 64 hexadecimal characters")]
    InvalidSha256(String),

    /// The bytes given with a hash do not hash to it.
    #[error("sample bytes hash to {actual}, not to the claimed {claimed}")]
    HashMismatch { claimed: String, actual: String },

    /// A verdict with a field out of range; the reason names the field.
    #[error("invalid verdict: {0}")]
    InvalidVerdict(String),

    /// A vault file whose header, compression or content hash is wrong: disk corruption or
    /// tampering. The file is left in place for investigation.
    #[error("vault file {} is corrupt: {reason}", path.display())]
    CorruptVaultFile { path: PathBuf, reason: String },

    /// The database says a sample is stored but its vault file is gone (deleted by hand, or a
    /// crash in the middle of a retention run, which the next run repairs).
    #[error("vault file {} is missing although the database lists it", path.display())]
    MissingVaultFile { path: PathBuf },

    /// The database was written by a newer Sentinel; opening it could corrupt it.
    #[error("database schema version {found} is newer than this build supports ({supported})")]
    SchemaTooNew { found: i64, supported: i64 },

    /// The database file belongs to some other program.
    #[error("{} is not a Sentinel database (application_id {found:#x})", path.display())]
    NotSentinelDatabase { path: PathBuf, found: i64 },

    /// SQLite could not put the database in WAL mode (for example on a network file system),
    /// without which readers would block the writer.
    #[error("{} cannot use WAL mode (journal_mode stays {journal_mode})", path.display())]
    WalUnavailable { path: PathBuf, journal_mode: String },

    /// A label that is not 0 or 1, or a note too long; the reason says which.
    #[error("invalid label: {0}")]
    InvalidLabel(String),

    /// A safelist or badlist entry that cannot be stored: a blank or too long reason or source;
    /// the reason says which.
    #[error("invalid list entry: {0}")]
    InvalidListEntry(String),

    /// A VirusTotal report row that cannot be stored; the reason names the field.
    #[error("invalid VirusTotal report: {0}")]
    InvalidVtReport(String),

    /// A request to the shared VirusTotal economy (key admissions, flight claims) with an
    /// argument that cannot be stored: a malformed key id, hash, replica id or outcome.
    #[error("invalid VirusTotal coordination request: {0}")]
    InvalidVtCoordination(String),

    /// A CSV dataset whose first line is not the expected header.
    #[error("CSV header is {found:?}, expected {expected:?}")]
    CsvHeader { expected: &'static str, found: String },

    /// Reading or writing a CSV dataset failed (I/O, or a line that is not CSV at all).
    #[error("CSV error: {0}")]
    Csv(#[from] csv::Error),

    /// A sample's vault file was deleted again and again (by hand) while the sample was being
    /// recorded, so the row could not be made to list a file that exists.
    #[error("vault file {} keeps vanishing while the sample is being recorded", path.display())]
    VaultFileVanished { path: PathBuf },

    /// The batch of writes this write was part of could not be committed (or begun): nothing of
    /// the batch was written. Shared by every write of the batch, hence the `Arc`.
    #[error("the write transaction failed: {0}")]
    Commit(#[source] Arc<rusqlite::Error>),

    /// The writer thread is gone (it panicked), so nothing can be written any more.
    #[error("the store's writer thread has stopped")]
    WriterStopped,

    /// A file-system operation failed.
    #[error("I/O error on {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// No model version with this id and kind in the registry.
    #[error("no {kind} model version {id}")]
    NoSuchModelVersion { kind: crate::ModelKind, id: i64 },

    /// The version's artifact was pruned: it can no longer be loaded or activated.
    #[error("{kind} model version {id} is no longer kept (pruned)")]
    ModelArtifactPruned { kind: crate::ModelKind, id: i64 },

    /// A model version or decision that cannot be stored or read; the reason says which part.
    #[error("invalid model registry entry: {0}")]
    InvalidModel(String),

    /// An API token that cannot be stored: an empty or too long name, a hash of the wrong
    /// length; the reason says which.
    #[error("invalid API token: {0}")]
    InvalidApiToken(String),

    /// An API token's name is already taken (names are unique, so `revoke NAME` is unambiguous).
    #[error("an API token named {0:?} already exists")]
    ApiTokenNameTaken(String),

    /// An audit event that cannot be stored: an action that is not a word, a text too long, too
    /// many details; the reason says which.
    #[error("invalid audit event: {0}")]
    InvalidAuditEvent(String),

    /// An alert that cannot be stored: a rule that is not a word, a text too long or with
    /// control characters, too many details; the reason says which.
    #[error("invalid alert: {0}")]
    InvalidAlert(String),

    /// A lease that cannot be taken: an empty or too long name or owner, a time to live out of
    /// range; the reason says which.
    #[error("invalid lease: {0}")]
    InvalidLease(String),

    /// YARA matches that cannot be stored: a name or a value too long; the reason says which.
    #[error("invalid YARA match: {0}")]
    InvalidYaraMatch(String),

    /// A store key that cannot be used (not 64 hexadecimal characters, unreadable). The reason
    /// never includes the key's text.
    #[error("invalid store key: {0}")]
    InvalidStoreKey(String),

    /// The cryptography library failed (no randomness from the system): nothing was written.
    #[error("encryption failed: {0}")]
    Encryption(&'static str),

    /// A file holding a secret (the store key, the PostgreSQL password) that users other than its
    /// owner may read or write.
    #[error(
        "{} holds a secret but has mode {mode:04o}: it must be private to its owner (chmod 600 {})",
        path.display(),
        path.display()
    )]
    KeyFileNotPrivate { path: PathBuf, mode: u32 },

    /// Both `SENTINEL_STORE_KEY` and `[store] key_file` are set.
    #[error(
        "both SENTINEL_STORE_KEY and [store] key_file ({}) give a store key: set only one",
        key_file.display()
    )]
    StoreKeyConflict { key_file: PathBuf },

    /// A store key is configured but the database file is plain SQLite.
    #[error(
        "{} is not encrypted, but a store key is configured: encrypt the store first \
         (`sentinel store encrypt --key-file FILE`), or start without a key",
        path.display()
    )]
    NotEncrypted { path: PathBuf },

    /// The database file is encrypted (or is not SQLite at all) and no store key is configured.
    #[error(
        "{} is encrypted (or is not a SQLite database) and no store key is configured: \
         set SENTINEL_STORE_KEY or [store] key_file",
        path.display()
    )]
    StoreKeyMissing { path: PathBuf },

    /// The configured key does not decrypt the database file.
    #[error(
        "{} cannot be decrypted with the configured store key (fingerprint {fingerprint}): wrong key, \
         or the file is damaged",
        path.display()
    )]
    WrongStoreKey { path: PathBuf, fingerprint: String },

    /// Another process has the store open (or is changing its encryption), so the store's
    /// encryption cannot be changed now, or the store cannot be opened while it is.
    #[error("the store in {} is in use by another process: {activity}", data_dir.display())]
    StoreInUse { data_dir: PathBuf, activity: &'static str },

    /// PostgreSQL failed, or could not be reached within the pool's timeout. The text is the
    /// server's message and SQLSTATE (never the values of the row at fault), or why no
    /// connection could be made.
    #[error("PostgreSQL error: {0}")]
    Postgres(String),

    /// PostgreSQL ended the connection a call was given — a restart, `pg_terminate_backend`, a
    /// crash of its backend — or it was already closed. The pool replaces it; a read can be
    /// tried again at once.
    #[error("PostgreSQL ended the connection: {0}")]
    PostgresConnectionEnded(String),

    /// A broker delivery was not stored: its sequence is out of range, or the transaction of its
    /// batch failed (the reason), so the message must not be acknowledged.
    #[error("the delivery was not stored: {0}")]
    DeliveryNotStored(String),

    /// SQLite failed.
    #[error("database error: {0}")]
    Database(#[from] rusqlite::Error),
}

impl StoreError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> StoreError {
        let path = path.into();
        move |source| StoreError::Io { path, source }
    }
}
