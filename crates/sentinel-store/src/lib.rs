//! Sentinel's store: every table of the service, behind one migration mechanism
//! (`migrations.rs`), in the data directory:
//!
//! - [`Store`]: a SQLite database in WAL mode (`<data_dir>/sentinel.db`) for samples, verdicts,
//!   the two datasets (VirusTotal results, labelled samples) and the model registry of every
//!   model kind (`model_registry.rs`), the HTTP API's tokens, kept as hashes (`api_tokens.rs`),
//!   the audit table of administrative actions (`audit.rs`), the safelist and badlist
//!   (`hash_lists.rs`), alerts and their delivery outbox (`alerts.rs`), named leases that
//!   decide which replica does a job (`leases.rs`),
//!   and a content-addressed vault of defanged sample files
//!   (`<data_dir>/samples/`);
//! - [`NetworkStore`]: the network service's tables (SPEC §2.3), ingest journal and broker
//!   deliveries in `<data_dir>/network.db` or in the PostgreSQL database of the malware tables,
//!   with its batched results writer (`network/`).
//!
//! Callers see domain values, never SQL: `docs/storage.md` says where another backend plugs in.
//!
//! Every write of a [`Store`] (and every journal entry of a [`NetworkStore`]) is durable when
//! the call returns: an acknowledged sample or verdict survives a crash or power loss. Scored
//! network items are queued for the results writer instead (see [`NetworkStore`]). Concurrent writes are grouped into shared transactions (group commit),
//! so many clients share each fsync. Methods block on disk I/O, so async callers run them on
//! `spawn_blocking`; a [`Store`] is `Send + Sync` and is shared behind an `Arc`.
//!
//! With a store key (`SENTINEL_STORE_KEY` or `[store] key_file`, [`StoreKey`]) both databases are
//! encrypted with SQLCipher and the vault's files with AES-256-GCM, each under its own subkey
//! (`store_key.rs`, `sqlcipher.rs`, `vault_cipher.rs`); [`encrypt_store`] and [`rekey_store`]
//! change a store's encryption (`reencryption.rs`). docs/security.md, "Encryption at rest".
//!
//! Each dataset lives in its own module with its own `impl Store` block and its own schema
//! migration, so new datasets are new modules. `docs/storage.md` describes the tables and files.

mod alerts;
mod api_tokens;
mod audit;
#[cfg(test)]
mod backends;
mod background_writes;
mod database;
mod dataset_csv;
mod error;
mod hash_lists;
mod labels;
mod leases;
mod migrations;
mod model_registry;
mod network;
mod postgres;
mod reencryption;
mod retention;
mod sample_hash;
mod sample_journal;
mod samples;
mod settings;
mod sqlcipher;
mod store_key;
mod store_lock;
mod vault;
mod vault_cipher;
mod vault_compaction;
mod vault_settling;
mod verdicts;
mod vt_economy;
mod vt_reports;
mod yara_matches;

use std::fmt;
use std::fs::DirBuilder;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

pub use alerts::{
    AlertDelivery, AlertQuery, AlertRecord, DeliveryState, DueDelivery, MAX_ALERT_PAGE, NewAlert, Raised,
};
pub use api_tokens::{ApiTokenRecord, NewApiToken};
pub use audit::{AuditEvent, AuditQuery, MAX_AUDIT_PAGE, NewAuditEvent, local_user_principal};
pub use database::WriteStats;
pub use dataset_csv::{ImportReport, RowError};
pub use error::StoreError;
pub use hash_lists::{HashList, ListEntry, ListQuery, MAX_LIST_PAGE, NewListEntry, UnknownList};
pub use labels::{LabelSource, LabelledSample};
pub use model_registry::{
    DecisionOutcome, DecisionRecord, ModelKind, ModelVersionInfo, NewDecision, NewModelVersion, Provenance,
    StoredModel,
};
pub use network::{
    ConnectionRow, HistoryExtent, HistoryRow, ItemLabel, LabelledPrediction, LegacyNetworkModel,
    MetricsSource, ModelMetricsRow, NETWORK_DATABASE_FILE, NetworkRowCounts, NetworkStore, PredictionRow,
    ScoredItem, WriterSettings, WriterStats,
};
pub use reencryption::{ReencryptionReport, encrypt_store, rekey_store};
pub use retention::RetentionReport;
pub use samples::{SampleRecord, VerifiedSample};
pub use settings::{StoreSettings, VaultCompression};
pub use store_key::{STORE_KEY_ENV, StoreKey};
pub use verdicts::{NewVerdict, NewYaraMatches, VerdictRecord};
pub use vt_economy::{FlightClaim, FlightState, KeyAdmission, KeyLimits};
pub use vt_reports::VtReportRow;
pub use yara_matches::YaraMatchRecord;

use database::Database;
use postgres::PgDatabase;
use sqlcipher::DatabaseKey;
use store_key::KeyPurpose;
use store_lock::StoreLock;
use vault::{Codec, Vault};
use vault_cipher::VaultCipher;
use vault_compaction::VaultCompaction;
use vault_settling::VaultSettling;

/// Name of the database file inside the data directory.
const DATABASE_FILE: &str = "sentinel.db";

/// Current time as unix seconds. A plain function pointer so tests can substitute their clock.
type Clock = fn() -> i64;

/// Where the store's tables are: the embedded SQLite database of the data directory (the
/// default), or a PostgreSQL database that several replicas share (`--store postgres://…`).
/// The vault is in the data directory either way.
enum Tables {
    Sqlite(Database),
    Postgres(PgDatabase),
}

/// The store: open once at start-up, share with `Arc`, call from blocking threads.
pub struct Store {
    data_dir: PathBuf,
    settings: StoreSettings,
    tables: Tables,
    /// Shared with the writer thread, which checks and deletes vault files inside transactions.
    vault: Arc<Vault>,
    clock: Clock,
    /// The store key, when the store is encrypted: the network store beside it uses it too.
    key: Option<StoreKey>,
    /// Compresses masked vault files in the background (`vault_compression = "background"`);
    /// stopped when the store is dropped.
    _compaction: Option<VaultCompaction>,
    /// Settles samples journaled for requests, once [`Store::start_sample_journal`] started it;
    /// what is left is settled when the store is dropped.
    settling: OnceLock<VaultSettling>,
    /// Held while the store is open, so its encryption is not changed under it.
    _lock: StoreLock,
}

impl Store {
    /// Opens the store in `data_dir`, creating the directory (mode 0700), the database
    /// (`sentinel.db`, mode 0600) and the vault if missing, and migrating the schema. The store is
    /// encrypted when a key is configured ([`StoreKey::configured`]: `SENTINEL_STORE_KEY` or
    /// `[store] key_file`).
    pub fn open(data_dir: &Path, settings: StoreSettings) -> Result<Store, StoreError> {
        let key = StoreKey::configured(&settings)?;
        Store::open_with_key(data_dir, settings, key)
    }

    /// Opens the store with the given key (`None`: a plain store), whatever the settings and
    /// the environment say. A store that the key does not open (a plain store with a key, an
    /// encrypted one without one or with another key) is refused before anything in it changes.
    pub fn open_with_key(
        data_dir: &Path,
        settings: StoreSettings,
        key: Option<StoreKey>,
    ) -> Result<Store, StoreError> {
        Store::open_with_clock(data_dir, settings, key, system_clock)
    }

    pub(crate) fn open_with_clock(
        data_dir: &Path,
        settings: StoreSettings,
        key: Option<StoreKey>,
        clock: Clock,
    ) -> Result<Store, StoreError> {
        settings.validate()?;
        create_private_dir(data_dir)?;
        let database_path = data_dir.join(DATABASE_FILE);
        let database_key = key.as_ref().map(|key| DatabaseKey::new(key, KeyPurpose::MalwareDatabase));
        // Before the lock file, the vault's directories or the database are touched.
        sqlcipher::probe(&database_path, database_key.as_ref())?;
        let lock = StoreLock::shared(data_dir)?;

        let busy_timeout = settings.busy_timeout;
        let database = Database::open(
            &database_path,
            &migrations::MALWARE,
            busy_timeout,
            settings.read_connections,
            database_key,
        )?;
        Store::assemble(data_dir, settings, Tables::Sqlite(database), key, clock, lock)
    }

    /// Opens the store where `settings` say: the PostgreSQL database of `settings.url` when it is
    /// set ([`Store::open_postgres`]), else the SQLite database of the data directory
    /// ([`Store::open`]).
    pub fn open_configured(data_dir: &Path, settings: StoreSettings) -> Result<Store, StoreError> {
        match settings.url.clone() {
            Some(url) => Store::open_postgres(&url, data_dir, settings),
            None => Store::open(data_dir, settings),
        }
    }

    /// Opens the store on the PostgreSQL database at `url` (`postgres://user@host/database`),
    /// migrating its schema, with the vault in `data_dir` (created if missing, mode 0700).
    /// Replicas that share the database must share the vault's directory too (a shared volume;
    /// docs/scale-out.md). With a store key the vault's files are encrypted as usual; the tables
    /// are PostgreSQL's to protect (its disk encryption), as SQLCipher does not apply there.
    pub fn open_postgres(url: &str, data_dir: &Path, settings: StoreSettings) -> Result<Store, StoreError> {
        let key = StoreKey::configured(&settings)?;
        Store::open_postgres_with_clock(url, data_dir, settings, key, system_clock)
    }

    pub(crate) fn open_postgres_with_clock(
        url: &str,
        data_dir: &Path,
        settings: StoreSettings,
        key: Option<StoreKey>,
        clock: Clock,
    ) -> Result<Store, StoreError> {
        let settings = StoreSettings { url: Some(url.to_owned()), ..settings };
        settings.validate()?;
        create_private_dir(data_dir)?;
        let lock = StoreLock::shared(data_dir)?;
        let database = PgDatabase::connect(url, settings.password_file.as_deref(), &postgres::MALWARE)?;
        Store::assemble(data_dir, settings, Tables::Postgres(database), key, clock, lock)
    }

    /// The store around its opened tables: the vault and its compaction.
    fn assemble(
        data_dir: &Path,
        settings: StoreSettings,
        tables: Tables,
        key: Option<StoreKey>,
        clock: Clock,
        lock: StoreLock,
    ) -> Result<Store, StoreError> {
        let cipher = key.as_ref().map(VaultCipher::new);
        let codec = match settings.vault_compression {
            VaultCompression::Background => Codec::Masked,
            VaultCompression::Inline => Codec::Zstd,
        };
        let vault = Arc::new(Vault::open(data_dir, settings.compression_level, codec, cipher)?);
        let compaction = match settings.vault_compression {
            VaultCompression::Background => Some(VaultCompaction::start(Arc::clone(&vault))?),
            VaultCompression::Inline => None,
        };
        // Makes the entries of a newly created database and its WAL durable.
        vault::sync_dir(data_dir)?;
        Ok(Store {
            data_dir: data_dir.to_owned(),
            settings,
            tables,
            vault,
            clock,
            key,
            _compaction: compaction,
            settling: OnceLock::new(),
            _lock: lock,
        })
    }

    /// Starts the sample journal, for a server: from now on the samples of requests
    /// ([`Store::keep_sample_file`]) are made durable with one data flush and their vault files
    /// written in the background (docs/storage.md, "The sample journal"). Returns false, and
    /// samples' files keep being written directly, on PostgreSQL (replicas share the vault, and
    /// a journal is one process's) or when another process journals this vault.
    pub fn start_sample_journal(&self) -> Result<bool, StoreError> {
        if self.is_shared() {
            return Ok(false);
        }
        if self.settling.get().is_some() {
            return Ok(true);
        }
        match VaultSettling::start(Arc::clone(&self.vault))? {
            Some(settling) => {
                // One caller at start-up; a second one's thread is dropped, settling nothing.
                let _ = self.settling.set(settling);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Whether the tables are in a database other replicas may share (PostgreSQL): what is
    /// coordinated in-process on SQLite (single flight, rate limits) must then go through it.
    pub fn is_shared(&self) -> bool {
        matches!(self.tables, Tables::Postgres(_))
    }

    /// The store key the store was opened with; `None` for a plain store.
    pub fn store_key(&self) -> Option<&StoreKey> {
        self.key.as_ref()
    }

    /// Succeeds if the database can take its write lock and the vault's file system accepts a
    /// synced write: for readiness probes.
    pub fn is_writable(&self) -> Result<(), StoreError> {
        match &self.tables {
            Tables::Sqlite(database) => database.write(|_| Ok(()))?,
            Tables::Postgres(database) => database.run(|client| async move {
                client.batch_execute("SELECT 1").await?;
                Ok(())
            })?,
        }
        self.vault.probe_writable()
    }

    /// Transactions and writes committed since the store was opened; their ratio shows how well
    /// concurrent writes are being grouped into shared transactions (for metrics).
    /// On PostgreSQL, which groups nothing itself, both stay 0.
    pub fn write_stats(&self) -> WriteStats {
        match &self.tables {
            Tables::Sqlite(database) => database.stats(),
            Tables::Postgres(_) => WriteStats::default(),
        }
    }

    fn now(&self) -> i64 {
        (self.clock)()
    }
}

impl fmt::Debug for Store {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("Store")
            .field("data_dir", &self.data_dir)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// Creates the data directory (and its parents) private to the service's user (mode 0700), and
/// makes its entry durable.
fn create_private_dir(data_dir: &Path) -> Result<(), StoreError> {
    let mut builder = DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(data_dir).map_err(StoreError::io(data_dir))?;
    if let Some(parent) = data_dir.parent().filter(|parent| !parent.as_os_str().is_empty()) {
        vault::sync_dir(parent)?;
    }
    Ok(())
}

fn system_clock() -> i64 {
    // A clock before 1970 is a broken clock; 0 keeps the arithmetic sane.
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since_epoch| i64::try_from(since_epoch.as_secs()).unwrap_or(i64::MAX))
}
