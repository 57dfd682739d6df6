//! Samples the server has seen: hash, size, first and last time seen, and whether the vault
//! holds a copy. Recording a sample stores the vault file before the row, so a row never claims
//! a file that was not durably written.
//!
//! Whether a row may list its file is decided while nothing can delete the file: on SQLite inside
//! the write transaction (retention deletes files inside write transactions, which run one at a
//! time); on PostgreSQL, where replicas write at once, after the row is locked by its upsert
//! (retention deletes a file only while it holds the lock of the file's row).

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use deadpool_postgres::Transaction;
use rusqlite::{Connection, OptionalExtension, Row, params};

use crate::sample_hash::SampleHash;
use crate::vault::Vault;
use crate::{Store, StoreError, Tables, postgres};

/// What the store knows about one sample.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SampleRecord {
    /// Lowercase hexadecimal SHA-256.
    pub sha256: String,
    /// Size of the original sample in bytes.
    pub size: u64,
    /// Unix seconds when the sample was first recorded.
    pub first_seen: i64,
    /// Unix seconds when the sample was last recorded.
    pub last_seen: i64,
    /// The defanged vault file, if the vault holds one (absent when `keep_samples` is off, the
    /// sample exceeded `max_sample_size`, or retention deleted it).
    pub stored_path: Option<PathBuf>,
}

/// A sample's bytes with their SHA-256, computed once when it is made (and checked against the
/// hash its sender claimed), so recording it and its verdicts in several steps hashes a large
/// sample once. Cloning shares the bytes.
#[derive(Clone)]
pub struct VerifiedSample {
    pub(crate) hash: SampleHash,
    pub(crate) bytes: Bytes,
}

impl VerifiedSample {
    /// Hashes `bytes`; with `claimed` (64 hexadecimal characters, either case), fails with
    /// [`StoreError::InvalidSha256`] or [`StoreError::HashMismatch`] unless they hash to it.
    pub fn new(bytes: Bytes, claimed: Option<&str>) -> Result<VerifiedSample, StoreError> {
        let hash = match claimed {
            Some(claimed) => SampleHash::verify(claimed, &bytes)?,
            None => SampleHash::of(&bytes),
        };
        Ok(VerifiedSample { hash, bytes })
    }

    /// Like [`VerifiedSample::new`] for bytes whose SHA-256 the caller computed itself as they
    /// arrived (`digest`), so they are not hashed a second time.
    pub fn hashed(
        bytes: Bytes,
        digest: [u8; 32],
        claimed: Option<&str>,
    ) -> Result<VerifiedSample, StoreError> {
        let actual = SampleHash::from_raw(digest);
        debug_assert_eq!(actual, SampleHash::of(&bytes), "the digest is not the bytes' SHA-256");
        let hash = match claimed {
            Some(claimed) => actual.matches(claimed)?,
            None => actual,
        };
        Ok(VerifiedSample { hash, bytes })
    }

    /// The SHA-256, 64 lowercase hexadecimal characters.
    pub fn sha256(&self) -> &str {
        self.hash.as_str()
    }

    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }
}

impl fmt::Debug for VerifiedSample {
    /// The hash and size only: the bytes are a sample, possibly live malware.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifiedSample")
            .field("sha256", &self.sha256())
            .field("size", &self.bytes.len())
            .finish()
    }
}

/// Rows written in the same transaction as a sample's row (verdicts, YARA matches, a label), or
/// in a transaction of their own when there is no sample, on either backend.
pub(crate) trait SampleRows: Clone + Send + 'static {
    /// What writing them answers (the verdicts' ids, whether a label was applied).
    type Written: Send + 'static;

    fn write_sqlite(&self, connection: &Connection, now: i64) -> Result<Self::Written, StoreError>;

    fn write_postgres<'a>(
        &'a self,
        transaction: &'a Transaction<'a>,
        now: i64,
    ) -> impl Future<Output = Result<Self::Written, StoreError>> + Send + 'a;
}

/// A sample recorded alone.
impl SampleRows for () {
    type Written = ();

    fn write_sqlite(&self, _: &Connection, _: i64) -> Result<(), StoreError> {
        Ok(())
    }

    async fn write_postgres<'a>(&'a self, _: &'a Transaction<'a>, _: i64) -> Result<(), StoreError> {
        Ok(())
    }
}

const UPSERT: &str = "INSERT INTO samples (sha256, size, first_seen, last_seen, stored_path)
    VALUES (?1, ?2, ?3, ?3, ?4)
    ON CONFLICT (sha256) DO UPDATE SET
        last_seen = max(samples.last_seen, excluded.last_seen),
        stored_path = excluded.stored_path
    RETURNING sha256, size, first_seen, last_seen, stored_path IS NOT NULL";

const SELECT: &str =
    "SELECT sha256, size, first_seen, last_seen, stored_path IS NOT NULL FROM samples WHERE sha256 = ?1";

/// Attempts at committing a sample row while its vault file exists. Retention only deletes the
/// files of samples not seen for days, and a sample being recorded is being seen, so a second
/// attempt always succeeds unless someone deletes vault files by hand meanwhile.
const VAULT_ATTEMPTS: usize = 3;

impl Store {
    /// Records that `bytes`, whose SHA-256 is `sha256_hex` (either case), was seen now: creates
    /// the row or updates `last_seen`, and keeps a defanged copy in the vault if the settings
    /// say so. Fails with [`StoreError::HashMismatch`] if the bytes do not hash to the hash.
    /// Both the row and the file are durable when this returns.
    pub fn record_sample(&self, sha256_hex: &str, bytes: &[u8]) -> Result<SampleRecord, StoreError> {
        let hash = SampleHash::verify(sha256_hex, bytes)?;
        self.record_sample_with(&hash, bytes, ()).map(|(record, ())| record)
    }

    /// Writes the sample's vault file now, durably, without its row (a no-op when the settings
    /// keep no copy of it, or the file is there). A caller that records the row later, with its
    /// verdicts ([`Store::record_verified`]), thereby does the sample's disk work while it
    /// analyses it, and commits one transaction. A crash in between leaves a file without a row,
    /// which the next record of that sample adopts; a row never lists a file that is not durable.
    ///
    /// With the sample journal started ([`Store::start_sample_journal`]) the bytes are made
    /// durable in the journal and the file is written in the background.
    pub fn keep_sample_file(&self, sample: &VerifiedSample) -> Result<(), StoreError> {
        match self.keeps(&sample.bytes) {
            true => self.vault.keep_new(&sample.hash, &sample.bytes),
            false => Ok(()),
        }
    }

    /// Whether the settings keep a copy of these bytes in the vault.
    fn keeps(&self, bytes: &[u8]) -> bool {
        self.settings.keep_samples && bytes.len() as u64 <= self.settings.max_sample_size
    }

    /// Records a sample, whose bytes the caller has checked hash to `hash`, as
    /// [`Store::record_sample`] does and, in the same transaction, `rows`; nothing is committed
    /// if writing them fails.
    pub(crate) fn record_sample_with<R: SampleRows>(
        &self,
        hash: &SampleHash,
        bytes: &[u8],
        rows: R,
    ) -> Result<(SampleRecord, R::Written), StoreError> {
        let keep = self.keeps(bytes);
        // A slice holds at most isize::MAX bytes, which fits an i64.
        let size = bytes.len() as i64;
        let now = self.now();
        for _ in 0..VAULT_ATTEMPTS {
            if keep {
                // Compressed and fsynced on the caller's thread, before the write is queued, so
                // the writer thread never waits on a sample's disk I/O. A no-op if the file is
                // already there.
                self.vault.store(hash, bytes)?;
            }
            let (vault, hash, rows) = (Arc::clone(&self.vault), hash.clone(), rows.clone());
            let written = match &self.tables {
                Tables::Sqlite(database) => database.write(move |connection| {
                    // Retention deletes files inside write transactions, which run one at a time,
                    // so a file that exists here still exists when this row is committed. If
                    // retention deleted it since it was stored above, store it again and retry.
                    let stored = vault.contains(&hash)?;
                    if keep && !stored {
                        return Ok(None);
                    }
                    let stored_path = stored.then(|| Vault::relative_path(&hash));
                    let mut statement = connection.prepare_cached(UPSERT)?;
                    let record = statement
                        .query_row(params![hash.as_str(), size, now, stored_path], |row| {
                            sample_from_row(&vault, row)
                        })?;
                    Ok(Some((record, rows.write_sqlite(connection, now)?)))
                })?,
                Tables::Postgres(database) => {
                    let sample = postgres::samples::NewSample { hash, size, seen: now, keep };
                    postgres::samples::record(database, vault, sample, rows)?
                }
            };
            if let Some(written) = written {
                return Ok(written);
            }
        }
        Err(StoreError::VaultFileVanished { path: self.vault.path_of(hash) })
    }

    /// Writes `rows` in a transaction of their own, without a sample.
    pub(crate) fn write_rows<R: SampleRows>(&self, rows: R) -> Result<R::Written, StoreError> {
        let now = self.now();
        match &self.tables {
            Tables::Sqlite(database) => database.write(move |connection| rows.write_sqlite(connection, now)),
            Tables::Postgres(database) => postgres::samples::write_rows(database, rows, now),
        }
    }

    /// The record of a sample, or `None` if it was never recorded.
    pub fn sample(&self, sha256_hex: &str) -> Result<Option<SampleRecord>, StoreError> {
        let hash = SampleHash::parse(sha256_hex)?;
        match &self.tables {
            Tables::Sqlite(database) => database.read(|connection| {
                let mut statement = connection.prepare_cached(SELECT)?;
                Ok(statement
                    .query_row([hash.as_str()], |row| sample_from_row(&self.vault, row))
                    .optional()?)
            }),
            Tables::Postgres(database) => postgres::samples::get(database, Arc::clone(&self.vault), hash),
        }
    }

    /// The original bytes of a sample, decompressed and verified against its hash; `None` if
    /// the sample is unknown or the vault holds no copy. A damaged file is reported as
    /// [`StoreError::CorruptVaultFile`] and a vanished one as [`StoreError::MissingVaultFile`].
    pub fn read_sample(&self, sha256_hex: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let hash = SampleHash::parse(sha256_hex)?;
        match self.sample(hash.as_str())? {
            Some(SampleRecord { stored_path: Some(_), .. }) => self.vault.load(&hash).map(Some),
            _ => Ok(None),
        }
    }
}

fn sample_from_row(vault: &Vault, row: &Row<'_>) -> rusqlite::Result<SampleRecord> {
    let sha256: String = row.get(0)?;
    let stored: bool = row.get(4)?;
    // The path is derived from the hash rather than read from the row, so no database content
    // can point the store at a file outside the vault.
    let stored_path = match stored {
        true => SampleHash::parse(&sha256).ok().map(|hash| vault.path_of(&hash)),
        false => None,
    };
    let size: i64 = row.get(1)?;
    // The table's CHECK keeps sizes non-negative.
    let size = u64::try_from(size).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(1, size))?;
    Ok(SampleRecord { sha256, size, first_seen: row.get(2)?, last_seen: row.get(3)?, stored_path })
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    use sha2::Digest;

    use super::*;
    use crate::StoreSettings;

    #[test]
    fn a_digest_computed_on_arrival_is_checked_against_the_claimed_hash() {
        let bytes = Bytes::from_static(b"MZ sample");
        let digest: [u8; 32] = sha2::Sha256::digest(&bytes).into();
        let hex = hex::encode(digest);
        let taken = VerifiedSample::hashed(bytes.clone(), digest, Some(&hex.to_uppercase())).unwrap();
        assert_eq!(taken.sha256(), hex);
        assert_eq!(VerifiedSample::hashed(bytes.clone(), digest, None).unwrap().sha256(), hex);
        let other = hex::encode([7u8; 32]);
        assert!(matches!(
            VerifiedSample::hashed(bytes.clone(), digest, Some(&other)),
            Err(StoreError::HashMismatch { claimed, actual }) if claimed == other && actual == hex
        ));
        assert!(matches!(
            VerifiedSample::hashed(bytes, digest, Some("not a hash")),
            Err(StoreError::InvalidSha256(_))
        ));
    }

    #[test]
    fn a_file_deleted_before_its_row_is_committed_is_stored_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path(), StoreSettings::default()).unwrap());
        let bytes = b"MZ deleted while queued".to_vec();
        let hash = SampleHash::of(&bytes);
        let path = store.vault.path_of(&hash);

        // Hold the writer thread, as a retention run deleting files would.
        let (release, gate) = mpsc::channel::<()>();
        let holder = {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                let Tables::Sqlite(database) = &store.tables else { unreachable!("opened on SQLite") };
                database.write(move |_| Ok(gate.recv().is_ok())).unwrap()
            })
        };
        let recorder = {
            let (store, bytes, hash) = (Arc::clone(&store), bytes.clone(), hash.clone());
            std::thread::spawn(move || store.record_sample(hash.as_str(), &bytes).unwrap())
        };
        // The file is stored before the row's write is queued; delete it meanwhile.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !path.exists() {
            assert!(Instant::now() < deadline, "the sample was never stored");
            std::thread::sleep(Duration::from_millis(1));
        }
        std::fs::remove_file(&path).unwrap();
        release.send(()).unwrap();
        assert!(holder.join().unwrap());

        let record = recorder.join().unwrap();
        assert_eq!(record.stored_path, Some(path));
        assert_eq!(store.read_sample(hash.as_str()).unwrap(), Some(bytes));
    }

    /// On PostgreSQL a replica's retention run holds the row's lock while it deletes the file;
    /// a recorder of the sample that found the file still there must wait for the row, see the
    /// file gone once it has the row, and store it again rather than commit a row listing it.
    #[test]
    fn a_file_deleted_while_its_row_is_locked_is_stored_again_on_postgres() {
        let database = sentinel_testkit::postgres::ScratchDatabase::create("row_lock");
        let dir = tempfile::tempdir().unwrap();
        let store =
            Arc::new(Store::open_postgres(database.url(), dir.path(), StoreSettings::default()).unwrap());
        let bytes = b"MZ deleted under its row's lock".to_vec();
        let hash = SampleHash::of(&bytes);
        let path = store.record_sample(hash.as_str(), &bytes).unwrap().stored_path.unwrap();

        // Another replica's retention run, as far as the row is concerned.
        let (locked, is_locked) = mpsc::channel();
        let (release, gate) = tokio::sync::oneshot::channel::<()>();
        let holder = {
            let (store, sha256) = (Arc::clone(&store), hash.as_str().to_owned());
            std::thread::spawn(move || {
                let Tables::Postgres(database) = &store.tables else { unreachable!("opened on PostgreSQL") };
                database.run(move |mut client| async move {
                    let transaction = client.transaction().await?;
                    transaction
                        .execute("SELECT 1 FROM samples WHERE sha256 = $1 FOR UPDATE", &[&sha256])
                        .await?;
                    locked.send(()).unwrap();
                    let _ = gate.await;
                    transaction
                        .execute("UPDATE samples SET stored_path = NULL WHERE sha256 = $1", &[&sha256])
                        .await?;
                    transaction.commit().await?;
                    Ok(())
                })
            })
        };
        is_locked.recv().unwrap();
        let recorder = {
            let (store, bytes, hash) = (Arc::clone(&store), bytes.clone(), hash.clone());
            std::thread::spawn(move || store.record_sample(hash.as_str(), &bytes).unwrap())
        };
        // Wait until the recorder, having found the file, waits for the row.
        let deadline = Instant::now() + Duration::from_secs(10);
        let waiting = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'";
        while database.query_i64(waiting).unwrap() == 0 {
            assert!(Instant::now() < deadline, "the recorder never waited for the row");
            std::thread::sleep(Duration::from_millis(5));
        }
        std::fs::remove_file(&path).unwrap();
        release.send(()).unwrap();
        holder.join().unwrap().unwrap();

        let record = recorder.join().unwrap();
        assert_eq!(record.stored_path, Some(path));
        assert_eq!(store.read_sample(hash.as_str()).unwrap(), Some(bytes));
    }
}
