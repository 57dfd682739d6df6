//! Sample retention: deletes the vault files of samples not seen for
//! `sample_retention`, keeping their rows (hash, size, dates) and verdicts, which are small
//! and are the history the models learn from.
//!
//! Each file is deleted and its directory fsynced before the row that lists it is updated, so a
//! crash in between leaves a row listing a missing file (reported by `read_sample`, repaired by
//! the next run or by the next `record_sample` of that hash), never a kept file that no row
//! lists and no later run would find.

use std::sync::Arc;

use rusqlite::params;

use crate::sample_hash::SampleHash;
use crate::{Store, StoreError};

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
            let batch = self.sqlite()?.write(move |connection| {
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
            })?;
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
    use std::sync::atomic::{AtomicI64, Ordering};

    use sha2::{Digest, Sha256};

    use super::*;
    use crate::StoreSettings;

    const DAY: i64 = 86_400;
    static NOW: AtomicI64 = AtomicI64::new(0);

    fn test_clock() -> i64 {
        NOW.load(Ordering::SeqCst)
    }

    fn sha256(bytes: &[u8]) -> String {
        hex::encode(Sha256::digest(bytes))
    }

    #[test]
    fn deletes_files_unseen_for_the_retention_period_and_keeps_rows() {
        let dir = tempfile::tempdir().unwrap();
        let settings = StoreSettings {
            sample_retention: Some(std::time::Duration::from_secs(30 * DAY as u64)),
            ..StoreSettings::default()
        };
        let store = Store::open_with_clock(dir.path(), settings, None, test_clock).unwrap();
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

    #[test]
    fn repairs_rows_whose_file_vanished_and_processes_many_batches() {
        let dir = tempfile::tempdir().unwrap();
        let settings = StoreSettings {
            sample_retention: Some(std::time::Duration::from_secs(DAY as u64)),
            ..StoreSettings::default()
        };
        // This test keeps the system clock and runs retention from a store whose clock is far
        // in the future; the shared test clock belongs to the other test.
        let store = Store::open_with_clock(dir.path(), settings.clone(), None, crate::system_clock).unwrap();
        let (kept, vanished) = (b"kept until expiry".as_slice(), b"deleted by hand".as_slice());
        store.record_sample(&sha256(kept), kept).unwrap();
        let vanished_path = store.record_sample(&sha256(vanished), vanished).unwrap().stored_path.unwrap();
        std::fs::remove_file(vanished_path).unwrap();
        assert!(matches!(store.read_sample(&sha256(vanished)), Err(StoreError::MissingVaultFile { .. })));
        // Rows listing files that are gone, as a crash in the middle of a run leaves them; enough
        // of them to need several batches.
        let listed_without_file = 2 * BATCH_SIZE + 3;
        store
            .sqlite()
            .unwrap()
            .write(move |connection| {
                for i in 0..listed_without_file {
                    connection.execute(
                        "INSERT INTO samples VALUES (?1, 1, 0, 0, 'samples/listed')",
                        [sha256(format!("row {i}").as_bytes())],
                    )?;
                }
                Ok(())
            })
            .unwrap();

        let later = Store::open_with_clock(dir.path(), settings, None, || i64::MAX / 2).unwrap();
        let report = later.apply_retention().unwrap();
        assert_eq!(report.samples_expired, listed_without_file as u64 + 2);
        assert_eq!(report.files_deleted, 1);
        assert_eq!(later.read_sample(&sha256(vanished)).unwrap(), None);
        assert_eq!(later.read_sample(&sha256(kept)).unwrap(), None);
        assert!(later.sample(&sha256(kept)).unwrap().is_some());
    }
}
