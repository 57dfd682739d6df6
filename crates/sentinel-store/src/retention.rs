//! Sample retention: deletes the vault files of samples not seen for
//! `sample_retention`, keeping their rows (hash, size, dates) and verdicts, which are small
//! and are the history the models learn from.
//!
//! Each file is deleted and its directory fsynced before the row that lists it is updated, so a
//! crash in between leaves a row listing a missing file (reported by `read_sample`, repaired by
//! the next run or by the next `record_sample` of that hash), never a kept file that no row
//! lists and no later run would find.
//!
//! Runs may overlap (replicas sharing a PostgreSQL database each run it, or two stores on one
//! data directory): on SQLite each batch is a write transaction, which run one at a time; on
//! PostgreSQL each batch locks its rows and skips those another run or a recorder holds
//! (`postgres::samples`), so no file is deleted twice nor a refreshed sample's file at all.

use std::sync::Arc;

use rusqlite::params;

use crate::sample_hash::SampleHash;
use crate::{Store, StoreError, Tables, postgres};

/// Rows handled per write, so a large run does not hold up other writers for long.
const BATCH_SIZE: usize = 256;

/// What a retention run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionReport {
    /// Samples whose vault copy is no longer listed.
    pub samples_expired: u64,
    /// Vault files deleted (fewer than `samples_expired` if some were already gone).
    pub files_deleted: u64,
    /// Disk space released, in bytes.
    pub bytes_freed: u64,
}

const SELECT_EXPIRED: &str = "SELECT sha256 FROM samples
    WHERE stored_path IS NOT NULL AND last_seen < ?1 ORDER BY last_seen LIMIT ?2";

const CLEAR_STORED_PATH: &str = "UPDATE samples SET stored_path = NULL WHERE sha256 = ?1";

impl Store {
    /// Deletes the vault files of samples whose `last_seen` is more than
    /// `sample_retention` ago. Does nothing when retention is off. Run it periodically
    /// (for example daily); it is safe to run concurrently with every other call.
    pub fn apply_retention(&self) -> Result<RetentionReport, StoreError> {
        let mut report = RetentionReport::default();
        let Some(retention) = self.settings.sample_retention else {
            return Ok(report);
        };
        let cutoff = self.now().saturating_sub(i64::try_from(retention.as_secs()).unwrap_or(i64::MAX));
        loop {
            let vault = Arc::clone(&self.vault);
            let batch = match &self.tables {
                Tables::Sqlite(database) => database.write(move |connection| {
                    let mut batch = RetentionReport::default();
                    let expired = connection
                        .prepare_cached(SELECT_EXPIRED)?
                        .query_map(params![cutoff, BATCH_SIZE as i64], |row| row.get::<_, String>(0))?
                        .collect::<Result<Vec<_>, _>>()?;
                    let mut clear = connection.prepare_cached(CLEAR_STORED_PATH)?;
                    for sha256 in &expired {
                        let hash = SampleHash::parse(sha256)?;
                        if let Some(bytes) = vault.remove(&hash)? {
                            batch.files_deleted += 1;
                            batch.bytes_freed += bytes;
                        }
                        clear.execute([hash.as_str()])?;
                        batch.samples_expired += 1;
                    }
                    Ok(batch)
                })?,
                Tables::Postgres(database) => {
                    postgres::samples::expire_batch(database, vault, cutoff, BATCH_SIZE as i64)?
                }
            };
            report.samples_expired += batch.samples_expired;
            report.files_deleted += batch.files_deleted;
            report.bytes_freed += batch.bytes_freed;
            if batch.samples_expired < BATCH_SIZE as u64 {
                break;
            }
        }
        if report.samples_expired > 0 {
            tracing::info!(
                samples = report.samples_expired,
                files = report.files_deleted,
                bytes = report.bytes_freed,
                "sample retention deleted vault files"
            );
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::atomic::{AtomicI64, Ordering};
    use std::sync::{Arc, Barrier};

    use sentinel_testkit::postgres::ScratchDatabase;
    use sha2::{Digest, Sha256};

    use super::*;
    use crate::{Clock, StoreSettings, VaultCompression};

    const DAY: i64 = 86_400;
    static NOW: AtomicI64 = AtomicI64::new(0);

    fn test_clock() -> i64 {
        NOW.load(Ordering::SeqCst)
    }

    fn sha256(bytes: &[u8]) -> String {
        hex::encode(Sha256::digest(bytes))
    }

    /// Where a test's stores live: a data directory, and on PostgreSQL a scratch database.
    struct Location {
        dir: tempfile::TempDir,
        database: Option<ScratchDatabase>,
    }

    impl Location {
        /// One location per backend, SQLite first.
        fn each() -> [Location; 2] {
            let dir = || tempfile::tempdir().unwrap();
            [
                Location { dir: dir(), database: None },
                Location { dir: dir(), database: Some(ScratchDatabase::create("retention")) },
            ]
        }

        fn open(&self, settings: StoreSettings, clock: Clock) -> Store {
            self.open_in(self.dir.path(), settings, clock)
        }

        /// A store on the location's tables with its vault in `data_dir`.
        fn open_in(&self, data_dir: &Path, settings: StoreSettings, clock: Clock) -> Store {
            match &self.database {
                None => Store::open_with_clock(data_dir, settings, None, clock).unwrap(),
                Some(database) => {
                    Store::open_postgres_with_clock(database.url(), data_dir, settings, None, clock).unwrap()
                }
            }
        }

        /// Adds rows that list a vault file that is not there, as a crash in the middle of a run
        /// leaves them.
        fn insert_rows_listing_missing_files(&self, store: &Store, count: usize) {
            let hashes: Vec<String> = (0..count).map(|i| sha256(format!("row {i}").as_bytes())).collect();
            match (&store.tables, &self.database) {
                (Tables::Sqlite(database), _) => database
                    .write(move |connection| {
                        for hash in &hashes {
                            connection.execute(
                                "INSERT INTO samples VALUES (?1, 1, 0, 0, 'samples/listed')",
                                [hash],
                            )?;
                        }
                        Ok(())
                    })
                    .unwrap(),
                (Tables::Postgres(_), Some(database)) => {
                    let values: Vec<String> =
                        hashes.iter().map(|hash| format!("('{hash}', 1, 0, 0, 'samples/listed')")).collect();
                    database.execute(&format!("INSERT INTO samples VALUES {}", values.join(", "))).unwrap();
                }
                (Tables::Postgres(_), None) => unreachable!("a PostgreSQL store has its scratch database"),
            }
        }
    }

    #[test]
    fn deletes_files_unseen_for_the_retention_period_and_keeps_rows() {
        for location in Location::each() {
            eprintln!("--- on PostgreSQL: {}", location.database.is_some());
            let settings = StoreSettings {
                sample_retention: Some(std::time::Duration::from_secs(30 * DAY as u64)),
                ..StoreSettings::default()
            };
            let store = location.open(settings, test_clock);
            let (old, refreshed, recent) =
                (b"old sample".as_slice(), b"seen again".as_slice(), b"new".as_slice());

            NOW.store(1_000 * DAY, Ordering::SeqCst);
            store.record_sample(&sha256(old), old).unwrap();
            store.record_sample(&sha256(refreshed), refreshed).unwrap();
            NOW.store(1_020 * DAY, Ordering::SeqCst);
            store.record_sample(&sha256(refreshed), refreshed).unwrap();
            store.record_sample(&sha256(recent), recent).unwrap();
            let old_path = store.sample(&sha256(old)).unwrap().unwrap().stored_path.unwrap();
            let old_file_size = std::fs::metadata(&old_path).unwrap().len();

            NOW.store(1_031 * DAY, Ordering::SeqCst);
            let report = store.apply_retention().unwrap();
            assert_eq!(
                report,
                RetentionReport { samples_expired: 1, files_deleted: 1, bytes_freed: old_file_size }
            );
            assert!(!old_path.exists());
            let old_record = store.sample(&sha256(old)).unwrap().unwrap();
            assert_eq!((old_record.stored_path, old_record.first_seen), (None, 1_000 * DAY));
            assert_eq!(store.read_sample(&sha256(old)).unwrap(), None);
            assert_eq!(store.read_sample(&sha256(refreshed)).unwrap().as_deref(), Some(refreshed));
            assert_eq!(store.read_sample(&sha256(recent)).unwrap().as_deref(), Some(recent));
            assert_eq!(store.apply_retention().unwrap(), RetentionReport::default());

            // Seen again after expiry: the file is stored anew.
            store.record_sample(&sha256(old), old).unwrap();
            assert_eq!(store.read_sample(&sha256(old)).unwrap().as_deref(), Some(old));
        }
    }

    #[test]
    fn repairs_rows_whose_file_vanished_and_processes_many_batches() {
        for location in Location::each() {
            eprintln!("--- on PostgreSQL: {}", location.database.is_some());
            let settings = StoreSettings {
                sample_retention: Some(std::time::Duration::from_secs(DAY as u64)),
                ..StoreSettings::default()
            };
            // This test keeps the system clock and runs retention from a store whose clock is far
            // in the future; the shared test clock belongs to the other test.
            let store = location.open(settings.clone(), crate::system_clock);
            let (kept, vanished) = (b"kept until expiry".as_slice(), b"deleted by hand".as_slice());
            store.record_sample(&sha256(kept), kept).unwrap();
            let vanished_path =
                store.record_sample(&sha256(vanished), vanished).unwrap().stored_path.unwrap();
            std::fs::remove_file(vanished_path).unwrap();
            assert!(matches!(store.read_sample(&sha256(vanished)), Err(StoreError::MissingVaultFile { .. })));
            // Rows listing files that are gone, enough of them to need several batches.
            let listed_without_file = 2 * BATCH_SIZE + 3;
            location.insert_rows_listing_missing_files(&store, listed_without_file);

            let later = location.open(settings, || i64::MAX / 2);
            let report = later.apply_retention().unwrap();
            assert_eq!(report.samples_expired, listed_without_file as u64 + 2);
            assert_eq!(report.files_deleted, 1);
            assert_eq!(later.read_sample(&sha256(vanished)).unwrap(), None);
            assert_eq!(later.read_sample(&sha256(kept)).unwrap(), None);
            assert!(later.sample(&sha256(kept)).unwrap().is_some());
        }
    }

    fn ten_days_ago() -> i64 {
        crate::system_clock() - 10 * DAY
    }

    /// Replicas sharing the tables and the vault: two run retention at once while two others
    /// record again half of the expired samples. Every file is deleted once, every sample seen
    /// again keeps (or gets back) its file, and no row lists a file that is not there.
    #[test]
    fn overlapping_runs_and_recorders_keep_rows_and_files_in_step() {
        const SAMPLES: usize = 300;
        const RECORDERS: usize = 2;
        const RUNS: usize = 2;
        for location in Location::each() {
            eprintln!("--- on PostgreSQL: {}", location.database.is_some());
            // Inline: the stores' own compaction threads are not part of this test.
            let settings = StoreSettings {
                sample_retention: Some(std::time::Duration::from_secs(DAY as u64)),
                vault_compression: VaultCompression::Inline,
                ..StoreSettings::default()
            };
            let samples: Arc<Vec<Vec<u8>>> = Arc::new(
                (0..SAMPLES).map(|i| format!("MZ sample {i} of the overlap test").into_bytes()).collect(),
            );
            let old = location.open(settings.clone(), ten_days_ago);
            for sample in samples.iter() {
                old.record_sample(&sha256(sample), sample).unwrap();
            }
            drop(old);

            let start = Arc::new(Barrier::new(RECORDERS + RUNS));
            let recorders: Vec<_> = (0..RECORDERS)
                .map(|recorder| {
                    // Opened before its thread starts: a store that cannot open fails the test rather
                    // than leave the other threads waiting at the barrier.
                    let store = location.open(settings.clone(), crate::system_clock);
                    let (start, samples) = (Arc::clone(&start), Arc::clone(&samples));
                    std::thread::spawn(move || {
                        start.wait();
                        // Every recorder records the even samples, in opposite orders.
                        let mut even: Vec<usize> = (0..SAMPLES).step_by(2).collect();
                        if recorder % 2 == 1 {
                            even.reverse();
                        }
                        for index in even {
                            let sample = &samples[index];
                            let record = store.record_sample(&sha256(sample), sample).unwrap();
                            assert!(record.stored_path.is_some(), "sample {index}");
                        }
                    })
                })
                .collect();
            let runs: Vec<_> = (0..RUNS)
                .map(|_| {
                    let (store, start) =
                        (location.open(settings.clone(), crate::system_clock), Arc::clone(&start));
                    std::thread::spawn(move || {
                        start.wait();
                        store.apply_retention().unwrap()
                    })
                })
                .collect();
            for recorder in recorders {
                recorder.join().unwrap();
            }
            let reports: Vec<RetentionReport> = runs.into_iter().map(|run| run.join().unwrap()).collect();
            let expired: u64 = reports.iter().map(|report| report.samples_expired).sum();
            let deleted: u64 = reports.iter().map(|report| report.files_deleted).sum();
            assert_eq!(
                deleted, expired,
                "each expired row had its file, and no file was deleted twice: {reports:?}"
            );
            assert!(expired >= (SAMPLES / 2) as u64, "{reports:?}");

            let store = location.open(settings, crate::system_clock);
            for (index, sample) in samples.iter().enumerate() {
                let record = store.sample(&sha256(sample)).unwrap().unwrap();
                match index % 2 {
                    0 => assert_eq!(store.read_sample(&sha256(sample)).unwrap().as_ref(), Some(sample)),
                    _ => {
                        assert_eq!(record.stored_path, None, "sample {index}");
                        assert!(!store.vault.contains(&SampleHash::of(sample)).unwrap(), "sample {index}");
                    }
                }
            }
            assert_eq!(store.apply_retention().unwrap(), RetentionReport::default());
        }
    }
}
