//! The two backends every store test runs on: the embedded SQLite of a data directory, and a
//! scratch PostgreSQL database of the test's own (with the vault in a data directory beside it).
//! A test body takes a [`Fixture`] and runs once per backend, so both keep the same promises.

#![allow(dead_code)] // Each test file uses the part of the harness it needs.

use std::path::Path;

use sentinel_store::{NetworkStore, Store, StoreError, StoreSettings, WriterSettings};
use sentinel_testkit::postgres::ScratchDatabase;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A fresh, empty store location on one backend: a data directory, and on PostgreSQL a database.
/// Open it as often as the test needs (a reopen after a drop is a restart).
pub struct Fixture {
    pub backend: Backend,
    pub dir: tempfile::TempDir,
    pub database: Option<ScratchDatabase>,
}

impl Fixture {
    pub fn new(backend: Backend) -> Fixture {
        let database = (backend == Backend::Postgres).then(|| ScratchDatabase::create("store"));
        Fixture { backend, dir: tempfile::tempdir().unwrap(), database }
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn open(&self) -> Store {
        self.try_open(StoreSettings::default()).unwrap()
    }

    pub fn try_open(&self, settings: StoreSettings) -> Result<Store, StoreError> {
        match &self.database {
            None => Store::open(self.dir.path(), settings),
            Some(database) => Store::open_postgres(database.url(), self.dir.path(), settings),
        }
    }

    /// The network tables of the location: `network.db` in the data directory, or the same
    /// PostgreSQL database as the malware tables.
    pub fn open_network(&self, settings: WriterSettings) -> NetworkStore {
        self.try_open_network(settings).unwrap()
    }

    pub fn try_open_network(&self, settings: WriterSettings) -> Result<NetworkStore, StoreError> {
        match &self.database {
            None => NetworkStore::open(self.dir.path(), settings),
            Some(database) => NetworkStore::open_postgres(database.url(), None, settings),
        }
    }

    /// The scratch database, on PostgreSQL.
    pub fn postgres(&self) -> Option<&ScratchDatabase> {
        self.database.as_ref()
    }
}

/// Runs `test` on a fresh fixture of each backend, saying which before each run so that a
/// failure names its backend.
pub fn each_backend(test: impl Fn(Fixture)) {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        eprintln!("--- on {backend:?}");
        test(Fixture::new(backend));
    }
}
