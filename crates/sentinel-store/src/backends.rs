//! The two backends the module tests that need the store's clock run on: a SQLite data
//! directory, and a scratch PostgreSQL database with a data directory beside it. The integration
//! tests have their own harness (`tests/backends`); this one reaches `open_*_with_clock`.

use sentinel_testkit::postgres::ScratchDatabase;

use crate::{Clock, Store, StoreSettings};

/// A fresh store location on one backend, opened as often as a test needs (several stores on
/// one database are several replicas; a reopen after a drop is a restart).
pub(crate) struct Fixture {
    dir: tempfile::TempDir,
    database: Option<ScratchDatabase>,
    clock: Clock,
}

impl Fixture {
    pub(crate) fn open(&self) -> Store {
        let settings = StoreSettings::default();
        match &self.database {
            None => Store::open_with_clock(self.dir.path(), settings, None, self.clock),
            Some(database) => {
                Store::open_postgres_with_clock(database.url(), self.dir.path(), settings, None, self.clock)
            }
        }
        .unwrap()
    }
}

/// Runs `test` on a fresh fixture of SQLite, then of PostgreSQL, with stores reading `clock`.
pub(crate) fn each_backend(clock: Clock, test: impl Fn(Fixture)) {
    for postgres in [false, true] {
        eprintln!("--- on {}", if postgres { "PostgreSQL" } else { "SQLite" });
        let database = postgres.then(|| ScratchDatabase::create("store_module"));
        test(Fixture { dir: tempfile::tempdir().unwrap(), database, clock });
    }
}
