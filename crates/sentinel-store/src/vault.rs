//! The sample vault: defanged copies of samples on disk, content-addressed by SHA-256 under
//! `samples/ab/cd/<sha256>.zst` (two levels of fan-out keep directories small).
//!
//! Defanged means nobody runs or opens one by mistake: each file starts with a Sentinel header
//! (never `MZ`), holds the sample zstd-compressed or masked (each byte XORed with the sample's
//! SHA-256, so no run of the sample's bytes appears in the file), and is created with mode 0600
//! (no exec bit).
//!
//! Two codecs ([`Codec`]): zstd, and masked (uncompressed), which costs next to nothing and is
//! what a new sample gets when `[store] vault_compression = "background"` (the default): the
//! answer to a request then waits for the file's write and fsync, not for its compression. A
//! background thread (`vault_compaction.rs`) later replaces such a file by its zstd form when
//! that saves at least an eighth of it. Either form is a whole, verified file at every moment.
//!
//! A file is written to `samples/incoming/`, fsynced, renamed into place and its directory
//! fsynced, so once [`Vault::store`] returns the file survives a crash or power loss, and a
//! reader never sees a partial file. Reads check the header, the zstd checksum, the size and
//! the SHA-256 of the content, so corruption or tampering is reported instead of served.
//!
//! A sample a request brings can instead be made durable in the sample journal
//! (`sample_journal.rs`), one data flush, when the server has started it
//! ([`Vault::start_journal`]): it counts as stored from then on (it is read from the journal),
//! and the settling thread (`vault_settling.rs`) writes its file as above soon after.
//!
//! When the store has a key, files are written encrypted (format version 2, `vault_cipher.rs`):
//! compressed, then sealed with AES-256-GCM under the vault's subkey. Files of either version
//! are read; [`Vault::reseal_all`] rewrites every file under a new key (`sentinel store encrypt`,
//! `sentinel store rekey`).

use std::collections::HashSet;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, ErrorKind, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Sender, SyncSender};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, SystemTime};

use crate::StoreError;
use crate::background_writes;
use crate::sample_hash::SampleHash;
use crate::sample_journal::{JOURNAL_DIR, SampleJournal};
use crate::vault_cipher::{self, VaultCipher};

/// First bytes of every vault file.
const MAGIC: &[u8; 16] = b"SENTINEL-SAMPLE\0";
/// Of an unencrypted file: magic, format version (u32 LE), original size (u64 LE), raw SHA-256
/// of the original.
const HEADER_LEN: usize = MAGIC.len() + 4 + 8 + 32;
/// A masked file is compressed in the background only if zstd saves at least this fraction of
/// it: rewriting a file (and its fsyncs) for less is not worth the disk's time, and packed
/// executables do not compress at all.
const COMPACTION_MIN_SAVING: usize = 8;
/// Vault directory, relative to the data directory.
const VAULT_DIR: &str = "samples";
const INCOMING_DIR: &str = "incoming";
/// Temporary files older than this in `incoming/` are left over from a crash. No write of a
/// temporary file takes anywhere near this long, so removing them cannot race a live write.
const STALE_TEMPORARY_AGE: Duration = Duration::from_secs(3600);
/// Never reserve more than this up front when decompressing: the size comes from the file.
const MAX_PREALLOCATION: u64 = 16 * 1024 * 1024;

/// Distinguishes temporary files of concurrent writes within one process.
static TEMPORARY_COUNTER: AtomicU64 = AtomicU64::new(0);

pub(crate) struct Vault {
    data_dir: PathBuf,
    root: PathBuf,
    incoming: PathBuf,
    compression_level: i32,
    /// The codec of files written for new samples.
    codec: Codec,
    /// Encrypts new files and decrypts encrypted ones when the store has a key.
    cipher: Option<VaultCipher>,
    /// Where masked files are queued for compression in the background, while the compaction
    /// thread runs. A full queue drops the request: the file stays masked, which is valid.
    compaction: Mutex<Option<SyncSender<SampleHash>>>,
    /// Held while a file is replaced by its compressed form and while a file is deleted, so the
    /// compaction never puts back a file that retention has just deleted.
    replacing: Mutex<()>,
    /// Leaf directories (`ab/cd`, keyed by the hash's first two bytes) this process has made
    /// durable, so their parents are fsynced once per process instead of on every write.
    durable_leaves: Mutex<HashSet<u16>>,
    /// The sample journal, once this process has started it.
    journal: OnceLock<SampleJournal>,
    /// Where journaled samples are sent to be settled, while the settling thread runs.
    settling: Mutex<Option<Sender<SettlingWork>>>,
}

/// Work for the settling thread (`vault_settling.rs`).
pub(crate) enum SettlingWork {
    /// Write the file of a journaled sample.
    Settle(SampleHash),
    /// An append found no room in the journal: get a segment ready.
    Prepare,
}

impl Vault {
    /// Creates the vault directories if needed and removes temporary files left by a crash. With
    /// a cipher, new files are written encrypted.
    pub(crate) fn open(
        data_dir: &Path,
        compression_level: i32,
        codec: Codec,
        cipher: Option<VaultCipher>,
    ) -> Result<Vault, StoreError> {
        let root = data_dir.join(VAULT_DIR);
        let incoming = root.join(INCOMING_DIR);
        create_private_dir(&root, data_dir)?;
        create_private_dir(&incoming, &root)?;
        let vault = Vault {
            data_dir: data_dir.to_owned(),
            root,
            incoming,
            compression_level,
            codec,
            cipher,
            compaction: Mutex::new(None),
            replacing: Mutex::new(()),
            durable_leaves: Mutex::new(HashSet::new()),
            journal: OnceLock::new(),
            settling: Mutex::new(None),
        };
        vault.remove_stale_temporaries()?;
        // Samples acknowledged through the journal of a process that stopped before writing
        // their files: written now, unless another process is journaling this vault (then they
        // are its own). The journal is left for [`Vault::start_journal`].
        if let Some((_, recovered)) =
            SampleJournal::open(&vault.root, false, |hash, contents| vault.recover_record(&hash, &contents))?
            && recovered > 0
        {
            tracing::info!(
                samples = recovered,
                "wrote the vault files of samples left in the sample journal"
            );
        }
        Ok(vault)
    }

    /// Takes the sample journal for this process: from now on [`Vault::keep_new`] journals new
    /// samples and sends them to `queue` to be settled. Returns false, changing nothing, when
    /// another process journals this vault.
    pub(crate) fn start_journal(&self, queue: Sender<SettlingWork>) -> Result<bool, StoreError> {
        if self.journal.get().is_some() {
            return Ok(true);
        }
        let Some((journal, _)) =
            SampleJournal::open(&self.root, true, |hash, contents| self.recover_record(&hash, &contents))?
        else {
            return Ok(false);
        };
        // Only one caller (the store's start-up) starts the journal.
        let _ = self.journal.set(journal);
        *self.settling.lock().unwrap_or_else(PoisonError::into_inner) = Some(queue);
        Ok(true)
    }

    /// Stops sending journaled samples to the settling thread: a sample journaled from now on
    /// is settled on the caller's thread.
    pub(crate) fn stop_settling(&self) {
        self.settling.lock().unwrap_or_else(PoisonError::into_inner).take();
    }

    /// Writes the file of a record left in the journal, if its contents are whole; returns
    /// whether they were.
    fn recover_record(&self, hash: &SampleHash, contents: &[u8]) -> Result<bool, StoreError> {
        if let Err(reason) = decode(contents, hash, self.cipher.as_ref()) {
            let encrypted = format_version(contents).and_then(parse_format_version).is_some_and(|(e, _)| e);
            let sealed_under_another_key = encrypted
                && vault_cipher::encrypted_key_id(MAGIC, contents).is_some_and(|key_id| {
                    self.cipher.as_ref().is_none_or(|cipher| cipher.key_id() != key_id)
                });
            if !sealed_under_another_key {
                // Never acknowledged: its append was cut short by the stop.
                tracing::debug!(
                    sha256 = hash.as_str(),
                    reason,
                    "skipping an incomplete sample journal record"
                );
                return Ok(false);
            }
            // The store's key changed since (`sentinel store rekey`): the file is written as it
            // is, for the rekey to reseal; its authentication is checked when it is read.
        }
        if !self.file_exists(hash)? {
            self.write_contents(hash, contents)?;
        }
        Ok(true)
    }

    /// Stores a sample a request brought, as [`Vault::store`] does, but through the journal when
    /// this process has started it: durable when this returns either way, and quicker.
    pub(crate) fn keep_new(&self, hash: &SampleHash, bytes: &[u8]) -> Result<(), StoreError> {
        let queue = self.settling.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let (Some(journal), Some(queue)) = (self.journal.get(), queue) else {
            return self.store(hash, bytes);
        };
        if self.contains(hash)? {
            return Ok(());
        }
        let contents = self.encode_file(hash, bytes, self.codec)?;
        if journal.append(hash, &contents)? {
            if queue.send(SettlingWork::Settle(hash.clone())).is_err() {
                // The settling thread has stopped (the store is closing).
                self.settle(hash)?;
            }
            return Ok(());
        }
        let _ = queue.send(SettlingWork::Prepare);
        self.write_contents(hash, &contents)?;
        if self.codec == Codec::Masked {
            self.queue_compaction(hash);
        }
        Ok(())
    }

    /// Writes the file of a journaled sample and releases its record; does nothing if it has
    /// none (settled already, or deleted).
    pub(crate) fn settle(&self, hash: &SampleHash) -> Result<(), StoreError> {
        let Some(journal) = self.journal.get() else { return Ok(()) };
        let Some(contents) = journal.read(hash)? else { return Ok(()) };
        // Not if it was deleted (retention) or settled by another caller since it was read.
        let settled = self.place_if(
            hash,
            &contents,
            || Ok(journal.contains(hash)),
            || {
                journal.release(hash);
            },
        )?;
        if settled && self.codec == Codec::Masked {
            self.queue_compaction(hash);
        }
        Ok(())
    }

    /// Settles every journaled sample and voids their records (when the settling thread stops).
    pub(crate) fn settle_all(&self) -> Result<(), StoreError> {
        let Some(journal) = self.journal.get() else { return Ok(()) };
        journal.unsettled().iter().try_for_each(|hash| self.settle(hash))?;
        journal.retire_settled()
    }

    /// How long since a sample was last journaled, and whether the journal needs records
    /// settled to make room; `None` without a journal.
    pub(crate) fn journal_load(&self) -> Option<(Duration, bool)> {
        self.journal.get().map(|journal| (journal.idle_for(), journal.is_pressed()))
    }

    /// One step of keeping a journal segment ready; false when there is none to do.
    pub(crate) fn prepare_journal(&self) -> Result<bool, StoreError> {
        match self.journal.get() {
            Some(journal) => journal.prepare(),
            None => Ok(false),
        }
    }

    /// Makes sure the sample's file is in the vault, settling it now if it is still only in
    /// the journal: for callers that hand out the file's path.
    pub(crate) fn ensure_file(&self, hash: &SampleHash) -> Result<(), StoreError> {
        match self.journal.get() {
            Some(journal) if journal.contains(hash) => self.settle(hash),
            _ => Ok(()),
        }
    }

    /// Where the sample's file is, relative to the data directory, with `/` separators on
    /// every platform (as recorded in the database and exported in datasets).
    pub(crate) fn relative_path(hash: &SampleHash) -> String {
        let text = hash.as_str();
        format!("{VAULT_DIR}/{}/{}/{text}.zst", &text[0..2], &text[2..4])
    }

    pub(crate) fn path_of(&self, hash: &SampleHash) -> PathBuf {
        self.data_dir.join(Vault::relative_path(hash))
    }

    /// Whether the vault holds the sample: its file, or its record in the journal.
    pub(crate) fn contains(&self, hash: &SampleHash) -> Result<bool, StoreError> {
        if self.journal.get().is_some_and(|journal| journal.contains(hash)) {
            return Ok(true);
        }
        self.file_exists(hash)
    }

    fn file_exists(&self, hash: &SampleHash) -> Result<bool, StoreError> {
        let path = self.path_of(hash);
        path.try_exists().map_err(StoreError::io(path))
    }

    /// Stores `bytes`, which the caller has checked hash to `hash`, in the vault's codec for new
    /// samples (a masked file is then queued for compression). Does nothing if the file is
    /// already there: the name is the content's hash, so the content is the same.
    pub(crate) fn store(&self, hash: &SampleHash, bytes: &[u8]) -> Result<(), StoreError> {
        if self.contains(hash)? {
            return Ok(());
        }
        self.write_file(hash, bytes, self.codec)?;
        if self.codec == Codec::Masked {
            self.queue_compaction(hash);
        }
        Ok(())
    }

    /// Writes the file of `hash` in `codec` durably (temporary file, fsync, rename, directory
    /// fsync), replacing any file there.
    fn write_file(&self, hash: &SampleHash, bytes: &[u8], codec: Codec) -> Result<(), StoreError> {
        let contents = self.encode_file(hash, bytes, codec)?;
        self.write_contents(hash, &contents)
    }

    /// Writes `contents`, a vault file of `hash`, durably in its place, as [`Vault::write_file`].
    fn write_contents(&self, hash: &SampleHash, contents: &[u8]) -> Result<(), StoreError> {
        let temporary = self.temporary_path(hash.as_str());
        let written = self
            .write_temporary(&temporary, contents, false)
            .and_then(|()| self.move_into_place(&temporary, hash));
        if written.is_err() {
            // Best effort: a leftover is removed at the next open anyway.
            let _ = fs::remove_file(&temporary);
        }
        written
    }

    /// From now on, masked files written are sent to `queue` for compression.
    pub(crate) fn start_compaction(&self, queue: SyncSender<SampleHash>) {
        *self.compaction.lock().unwrap_or_else(PoisonError::into_inner) = Some(queue);
    }

    /// Stops queueing files for compression; the compaction thread ends when it sees the queue
    /// closed.
    pub(crate) fn stop_compaction(&self) {
        self.compaction.lock().unwrap_or_else(PoisonError::into_inner).take();
    }

    fn queue_compaction(&self, hash: &SampleHash) {
        if let Some(queue) = self.compaction.lock().unwrap_or_else(PoisonError::into_inner).as_ref() {
            // Full or closed: the file stays masked, which is a valid file.
            let _ = queue.try_send(hash.clone());
        }
    }

    /// Replaces a masked file by its zstd form if that saves at least 1/[`COMPACTION_MIN_SAVING`]
    /// of it. The masked file is read and verified first, so a damaged file is never laundered
    /// into a valid-looking one. Returns whether the file was replaced; a file gone meanwhile
    /// (retention), already compressed or not worth compressing is left as it is.
    pub(crate) fn compact(&self, hash: &SampleHash) -> Result<bool, StoreError> {
        let path = self.path_of(hash);
        let contents = match fs::read(&path) {
            Ok(contents) => contents,
            Err(error) if error.kind() == ErrorKind::NotFound => return Ok(false),
            Err(error) => return Err(StoreError::Io { path, source: error }),
        };
        let corrupt = |reason: String| StoreError::CorruptVaultFile { path: path.clone(), reason };
        let masked = match format_version(&contents).and_then(parse_format_version) {
            Some((false, Codec::Masked)) => contents.get(HEADER_LEN..).unwrap_or_default().to_vec(),
            Some((true, Codec::Masked)) => {
                let cipher =
                    self.cipher.as_ref().ok_or_else(|| corrupt("encrypted, and no store key".into()))?;
                let mut plaintext = cipher.open(MAGIC, &contents, hash).map_err(corrupt)?;
                plaintext.drain(..8.min(plaintext.len()));
                plaintext
            }
            _ => return Ok(false),
        };
        // Packed executables do not compress: a few slices tell, for a small part of the cost,
        // before the whole file is unmasked and its hash checked.
        let probe = probe_slices(&masked, hash);
        let compressed_probe =
            zstd::bulk::compress(&probe, self.compression_level).map_err(StoreError::io(&path))?;
        if !saves_enough(probe.len(), compressed_probe.len()) {
            return Ok(false);
        }
        let original = decode(&contents, hash, self.cipher.as_ref()).map_err(corrupt)?;
        let compressed = self.encode_file(hash, &original, Codec::Zstd)?;
        if !saves_enough(contents.len(), compressed.len()) {
            return Ok(false);
        }
        self.place_if(hash, &compressed, || self.contains(hash), || {})
    }

    /// Writes `contents`, a vault file of `hash`, to a temporary file and moves it into place
    /// only if `wanted` still says so under the `replacing` lock (so that a file deleted
    /// meanwhile is not put back); `placed` runs under the same lock once it is in place.
    /// Returns whether it was placed.
    fn place_if(
        &self,
        hash: &SampleHash,
        contents: &[u8],
        wanted: impl FnOnce() -> Result<bool, StoreError>,
        placed: impl FnOnce(),
    ) -> Result<bool, StoreError> {
        let temporary = self.temporary_path(hash.as_str());
        let moved = self.write_temporary(&temporary, contents, true).and_then(|()| {
            let _replacing = self.replacing.lock().unwrap_or_else(PoisonError::into_inner);
            if !wanted()? {
                return Ok(false);
            }
            self.move_into_place(&temporary, hash)?;
            placed();
            Ok(true)
        });
        if !matches!(moved, Ok(true)) {
            let _ = fs::remove_file(&temporary);
        }
        moved
    }

    /// Reads back the original bytes of a sample, verified against its hash: from its file, or
    /// from its journal record while it has one.
    pub(crate) fn load(&self, hash: &SampleHash) -> Result<Vec<u8>, StoreError> {
        if let Some(journal) = self.journal.get()
            && let Some(contents) = journal.read(hash)?
        {
            return decode(&contents, hash, self.cipher.as_ref()).map_err(|reason| {
                StoreError::CorruptVaultFile { path: self.root.join(JOURNAL_DIR), reason }
            });
        }
        let path = self.path_of(hash);
        let contents = match fs::read(&path) {
            Ok(contents) => contents,
            Err(error) if error.kind() == ErrorKind::NotFound => {
                return Err(StoreError::MissingVaultFile { path });
            }
            Err(error) => return Err(StoreError::Io { path, source: error }),
        };
        decode(&contents, hash, self.cipher.as_ref())
            .map_err(|reason| StoreError::CorruptVaultFile { path, reason })
    }

    /// Reads a sample file named by a dataset being imported: either a vault file (exported by
    /// this or another store; an encrypted one must be under this store's key), decoded and
    /// verified against `hash`, or the raw sample, returned as it is for the caller to check its
    /// hash.
    pub(crate) fn read_external(&self, path: &Path, hash: &SampleHash) -> Result<Vec<u8>, StoreError> {
        let contents = fs::read(path).map_err(StoreError::io(path))?;
        if !contents.starts_with(MAGIC) {
            return Ok(contents);
        }
        decode(&contents, hash, self.cipher.as_ref())
            .map_err(|reason| StoreError::CorruptVaultFile { path: path.to_owned(), reason })
    }

    /// Rewrites every vault file under this vault's cipher: unencrypted files, and files under
    /// `current` (the key being replaced). Files already under this vault's key are left alone,
    /// so an interrupted run is finished by running it again. Each file is replaced as on
    /// [`Vault::store`] (new file, fsync, rename, directory fsync): a crash leaves it whole under
    /// one key or the other. Returns how many files were rewritten and how many were already
    /// done.
    pub(crate) fn reseal_all(&self, current: Option<&VaultCipher>) -> Result<(u64, u64), StoreError> {
        let Some(target) = &self.cipher else {
            return Err(StoreError::InvalidStoreKey("re-encrypting the vault needs the new key".into()));
        };
        let (mut rewritten, mut already) = (0, 0);
        for path in self.files()? {
            let corrupt = |reason: String| StoreError::CorruptVaultFile { path: path.clone(), reason };
            let hash = path
                .file_stem()
                .and_then(|stem| stem.to_str())
                .ok_or_else(|| corrupt("not named after a SHA-256".into()))
                .and_then(|stem| {
                    SampleHash::parse(stem).map_err(|_| corrupt("not named after a SHA-256".into()))
                })?;
            let contents = fs::read(&path).map_err(StoreError::io(&path))?;
            let encrypted = format_version(&contents).and_then(parse_format_version).is_some_and(|(e, _)| e);
            if encrypted && vault_cipher::encrypted_key_id(MAGIC, &contents) == Some(target.key_id()) {
                already += 1;
                continue;
            }
            let original = decode(&contents, &hash, current).map_err(corrupt)?;
            // Offline work: every file is compressed on the way.
            self.write_file(&hash, &original, Codec::Zstd)?;
            rewritten += 1;
        }
        Ok((rewritten, already))
    }

    /// Every sample file of the vault (`ab/cd/*.zst`), in no particular order.
    fn files(&self) -> Result<Vec<PathBuf>, StoreError> {
        let mut files = Vec::new();
        for first in read_dir_paths(&self.root)? {
            if first == self.incoming || first == self.root.join(JOURNAL_DIR) || !first.is_dir() {
                continue;
            }
            for leaf in read_dir_paths(&first)?.into_iter().filter(|leaf| leaf.is_dir()) {
                let samples = read_dir_paths(&leaf)?;
                files.extend(
                    samples
                        .into_iter()
                        .filter(|file| file.extension().is_some_and(|extension| extension == "zst")),
                );
            }
        }
        Ok(files)
    }

    /// Deletes a sample's file durably. Returns its size on disk, or `None` if it was not there.
    pub(crate) fn remove(&self, hash: &SampleHash) -> Result<Option<u64>, StoreError> {
        let path = self.path_of(hash);
        let _replacing = self.replacing.lock().unwrap_or_else(PoisonError::into_inner);
        // A journaled sample has no file yet: releasing its record is deleting it (its segment
        // is retired once its other records are settled).
        if let Some(journaled) = self.journal.get().and_then(|journal| journal.release(hash)) {
            return Ok(Some(journaled));
        }
        let size = match fs::symlink_metadata(&path) {
            Ok(metadata) => metadata.len(),
            Err(error) if error.kind() == ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(StoreError::Io { path, source: error }),
        };
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(error) if error.kind() == ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(StoreError::Io { path, source: error }),
        }
        if let Some(leaf) = path.parent() {
            sync_dir(leaf)?;
        }
        Ok(Some(size))
    }

    /// Writes, fsyncs and deletes a small file, proving the vault's file system takes writes.
    pub(crate) fn probe_writable(&self) -> Result<(), StoreError> {
        let probe = self.temporary_path("probe");
        let result = create_private_file(&probe)
            .and_then(|mut file| file.write_all(b"probe").and_then(|()| file.sync_all()))
            .map_err(StoreError::io(&probe));
        let removed = fs::remove_file(&probe).map_err(StoreError::io(&probe));
        result.and(removed)
    }

    fn temporary_path(&self, stem: &str) -> PathBuf {
        let sequence = TEMPORARY_COUNTER.fetch_add(1, Ordering::Relaxed);
        self.incoming.join(format!("{stem}.{}.{sequence}.tmp", std::process::id()))
    }

    /// The whole vault file of a sample in `codec`: header, then the content, sealed when the
    /// vault has a cipher. Built in memory: samples are at most `max_sample_size`.
    fn encode_file(&self, hash: &SampleHash, bytes: &[u8], codec: Codec) -> Result<Vec<u8>, StoreError> {
        let encrypted = self.cipher.is_some();
        let version = format_version_of(encrypted, codec);
        // Encoding into memory fails only by running out of it.
        let encoding_failed = |error| StoreError::Io { path: self.path_of(hash), source: error };
        if let Some(cipher) = &self.cipher {
            let mut plaintext = Vec::with_capacity(8 + bytes.len());
            plaintext.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
            self.encode_content(bytes, hash, codec, &mut plaintext).map_err(encoding_failed)?;
            return cipher.seal(MAGIC, version, hash, plaintext);
        }
        let mut file = Vec::with_capacity(HEADER_LEN + bytes.len());
        file.extend_from_slice(MAGIC);
        file.extend_from_slice(&version.to_le_bytes());
        file.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        file.extend_from_slice(hash.raw());
        self.encode_content(bytes, hash, codec, &mut file).map_err(encoding_failed)?;
        Ok(file)
    }

    /// Writes `contents` to a new temporary file and fsyncs it. A `background` write (the
    /// settling and compaction threads') is sent to the disk a piece at a time, resting while
    /// requests are journaling samples (`background_writes.rs`); a request's own is written whole.
    fn write_temporary(&self, temporary: &Path, contents: &[u8], background: bool) -> Result<(), StoreError> {
        let write = || -> io::Result<()> {
            let mut file = create_private_file(temporary)?;
            match background {
                true => background_writes::write_at(&file, 0, contents, &|| self.journal_busy())?,
                false => file.write_all(contents)?,
            }
            file.sync_all()
        };
        write().map_err(StoreError::io(temporary))
    }

    /// Whether requests are journaling samples now ([`SampleJournal::is_busy`]).
    fn journal_busy(&self) -> bool {
        self.journal.get().is_some_and(SampleJournal::is_busy)
    }

    /// Writes the sample's content in `codec`: one zstd frame with its checksum, or the bytes
    /// masked with the hash. (Encrypted files hold the same content, sealed with AES-256-GCM as
    /// a whole message, so they are built in memory: samples are at most `max_sample_size`.)
    fn encode_content(
        &self,
        bytes: &[u8],
        hash: &SampleHash,
        codec: Codec,
        out: &mut impl Write,
    ) -> io::Result<()> {
        match codec {
            Codec::Zstd => {
                let mut encoder = zstd::stream::write::Encoder::new(out, self.compression_level)?;
                encoder.include_checksum(true)?;
                encoder.set_pledged_src_size(Some(bytes.len() as u64))?;
                encoder.write_all(bytes)?;
                encoder.finish().map(drop)
            }
            Codec::Masked => {
                let mut chunk = vec![0u8; MASK_CHUNK.min(bytes.len())];
                for (index, part) in bytes.chunks(MASK_CHUNK).enumerate() {
                    // Chunks are a multiple of the mask's length, so the mask restarts with each.
                    debug_assert_eq!(index * MASK_CHUNK % MASK_LEN, 0);
                    let chunk = &mut chunk[..part.len()];
                    chunk.copy_from_slice(part);
                    mask(chunk, hash);
                    out.write_all(chunk)?;
                }
                Ok(())
            }
        }
    }

    /// Creates `ab/` and `ab/cd/` for the hash and returns the leaf. The parents are fsynced
    /// whether or not this call created the directories: another thread, or a process that
    /// crashed, may have created one without its entry being durable yet. Only once that is
    /// done is the leaf remembered as durable.
    fn create_fan_out(&self, hash: &SampleHash) -> Result<PathBuf, StoreError> {
        let text = hash.as_str();
        let first = self.root.join(&text[0..2]);
        let leaf = first.join(&text[2..4]);
        if !self.durable_leaves().contains(&leaf_key(hash)) {
            create_private_dir(&first, &self.root)?;
            create_private_dir(&leaf, &first)?;
            self.durable_leaves().insert(leaf_key(hash));
        }
        Ok(leaf)
    }

    fn durable_leaves(&self) -> std::sync::MutexGuard<'_, HashSet<u16>> {
        // The set is only ever inserted into, so a panic elsewhere cannot leave it inconsistent.
        self.durable_leaves.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Renames the finished temporary file to its place. If the leaf directory vanished (an
    /// operator cleaned the vault by hand), it is created again once.
    fn move_into_place(&self, temporary: &Path, hash: &SampleHash) -> Result<(), StoreError> {
        let destination = self.path_of(hash);
        let leaf = self.create_fan_out(hash)?;
        match fs::rename(temporary, &destination) {
            Err(error) if error.kind() == ErrorKind::NotFound && temporary.exists() => {
                self.durable_leaves().remove(&leaf_key(hash));
                self.create_fan_out(hash)?;
                fs::rename(temporary, &destination).map_err(StoreError::io(&destination))?;
            }
            renamed => renamed.map_err(StoreError::io(&destination))?,
        }
        sync_dir(&leaf)
    }

    fn remove_stale_temporaries(&self) -> Result<(), StoreError> {
        let entries = fs::read_dir(&self.incoming).map_err(StoreError::io(&self.incoming))?;
        let now = SystemTime::now();
        for entry in entries {
            let entry = entry.map_err(StoreError::io(&self.incoming))?;
            let path = entry.path();
            let stale = entry
                .metadata()
                .and_then(|metadata| metadata.modified())
                .is_ok_and(|modified| now.duration_since(modified).unwrap_or_default() > STALE_TEMPORARY_AGE);
            if stale && path.extension().is_some_and(|extension| extension == "tmp") {
                tracing::warn!(path = %path.display(), "removing temporary vault file left by a crash");
                fs::remove_file(&path).map_err(StoreError::io(&path))?;
            }
        }
        Ok(())
    }
}

fn leaf_key(hash: &SampleHash) -> u16 {
    u16::from_be_bytes([hash.raw()[0], hash.raw()[1]])
}

/// How a vault file holds the sample's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Codec {
    /// One zstd frame with its content checksum.
    Zstd,
    /// The bytes as they are, each XORed with the sample's SHA-256 (byte `i` with byte `i mod
    /// 32` of the raw hash): costs next to nothing to write, and no signature of the sample
    /// appears in the file. The SHA-256 of the unmasked bytes is checked on every read.
    Masked,
}

/// Slices of the sample tried before compressing all of it, and their size.
const PROBE_SLICES: usize = 4;
const PROBE_SLICE_LEN: usize = 16 * 1024;

/// Whether compressing `original` bytes to `compressed` saves at least 1/[`COMPACTION_MIN_SAVING`].
fn saves_enough(original: usize, compressed: usize) -> bool {
    compressed <= original - original / COMPACTION_MIN_SAVING
}

/// [`PROBE_SLICES`] slices spread over masked content (all of it when it is small), unmasked
/// and put end to end.
fn probe_slices(masked: &[u8], hash: &SampleHash) -> Vec<u8> {
    let mut probe = Vec::with_capacity(PROBE_SLICES * PROBE_SLICE_LEN);
    if masked.len() <= PROBE_SLICES * PROBE_SLICE_LEN {
        probe.extend_from_slice(masked);
        mask(&mut probe, hash);
        return probe;
    }
    // Slices start at multiples of the mask's length, where the mask starts over.
    let step = masked.len() / PROBE_SLICES / MASK_LEN * MASK_LEN;
    for slice in 0..PROBE_SLICES {
        let start = probe.len();
        probe.extend_from_slice(&masked[slice * step..slice * step + PROBE_SLICE_LEN]);
        mask(&mut probe[start..], hash);
    }
    probe
}

/// Bytes of the mask (the raw SHA-256).
const MASK_LEN: usize = 32;
/// Masked content is written in pieces of this size (a multiple of [`MASK_LEN`]).
const MASK_CHUNK: usize = 64 * 1024;

/// XORs `bytes` with the repeated hash, starting at mask offset 0: applying it twice gives the
/// bytes back.
fn mask(bytes: &mut [u8], hash: &SampleHash) {
    let key = hash.raw();
    for block in bytes.chunks_mut(MASK_LEN) {
        for (byte, key) in block.iter_mut().zip(key) {
            *byte ^= key;
        }
    }
}

/// The format version of a file in `codec`, encrypted or not: 1 unencrypted zstd, 2 encrypted
/// zstd (`vault_cipher.rs`), 3 unencrypted masked, 4 encrypted masked.
fn format_version_of(encrypted: bool, codec: Codec) -> u32 {
    match (encrypted, codec) {
        (false, Codec::Zstd) => 1,
        (true, Codec::Zstd) => 2,
        (false, Codec::Masked) => 3,
        (true, Codec::Masked) => 4,
    }
}

/// Whether a format version is encrypted, and its codec; `None` for an unknown version.
fn parse_format_version(version: u32) -> Option<(bool, Codec)> {
    match version {
        1 => Some((false, Codec::Zstd)),
        2 => Some((true, Codec::Zstd)),
        3 => Some((false, Codec::Masked)),
        4 => Some((true, Codec::Masked)),
        _ => None,
    }
}

/// The format version of a file that starts with the vault's magic.
fn format_version(contents: &[u8]) -> Option<u32> {
    let version = contents.strip_prefix(MAGIC)?.first_chunk::<4>()?;
    Some(u32::from_le_bytes(*version))
}

/// Checks the header of a vault file of any format and returns the verified original bytes,
/// or why not. Encrypted files need `cipher`, under the key they were written with.
fn decode(contents: &[u8], hash: &SampleHash, cipher: Option<&VaultCipher>) -> Result<Vec<u8>, String> {
    let Some((true, codec)) = format_version(contents).and_then(parse_format_version) else {
        return decode_unencrypted(contents, hash);
    };
    let Some(cipher) = cipher else {
        let key_id = vault_cipher::encrypted_key_id(MAGIC, contents).map_or_else(|| "?".into(), hex::encode);
        return Err(format!("encrypted under store key {key_id}, and no store key is configured"));
    };
    let mut plaintext = cipher.open(MAGIC, contents, hash)?;
    let Some((size, _)) = plaintext.split_first_chunk::<8>() else {
        return Err("the decrypted content is shorter than its size field".into());
    };
    let size = u64::from_le_bytes(*size);
    match codec {
        Codec::Zstd => decompress(size, &plaintext[8..], hash),
        Codec::Masked => {
            plaintext.drain(..8);
            unmask(size, plaintext, hash)
        }
    }
}

/// Checks the header of an unencrypted vault file and returns the verified original bytes.
fn decode_unencrypted(contents: &[u8], hash: &SampleHash) -> Result<Vec<u8>, String> {
    let Some((header, content)) = contents.split_first_chunk::<HEADER_LEN>() else {
        return Err(format!("{} bytes, shorter than the {HEADER_LEN}-byte header", contents.len()));
    };
    let (magic, rest) = header.split_at(MAGIC.len());
    let (version, rest) = rest.split_at(4);
    let (size, recorded_hash) = rest.split_at(8);
    if magic != MAGIC {
        return Err("no Sentinel vault header".into());
    }
    let version = u32::from_le_bytes(version.try_into().map_err(|_| "truncated header")?);
    let codec = match parse_format_version(version) {
        Some((false, codec)) => codec,
        _ => return Err(format!("unknown format version {version}")),
    };
    if recorded_hash != hash.raw() {
        return Err(format!("header names sample {}, not {}", hex::encode(recorded_hash), hash.as_str()));
    }
    let size = u64::from_le_bytes(size.try_into().map_err(|_| "truncated header")?);
    match codec {
        Codec::Zstd => decompress(size, content, hash),
        Codec::Masked => unmask(size, content.to_vec(), hash),
    }
}

/// The original bytes of masked content, checked against the recorded size and the hash.
fn unmask(size: u64, mut content: Vec<u8>, hash: &SampleHash) -> Result<Vec<u8>, String> {
    if content.len() as u64 != size {
        return Err(format!("holds {} bytes, header says {size}", content.len()));
    }
    mask(&mut content, hash);
    if SampleHash::of(&content) != *hash {
        return Err("content does not hash to the sample's SHA-256".into());
    }
    Ok(content)
}

/// The original bytes of a zstd stream, checked against the recorded size and the sample's hash.
fn decompress(size: u64, compressed: &[u8], hash: &SampleHash) -> Result<Vec<u8>, String> {
    let mut original = Vec::with_capacity(size.min(MAX_PREALLOCATION) as usize);
    zstd::stream::read::Decoder::with_buffer(compressed)
        .and_then(|decoder| decoder.take(size.saturating_add(1)).read_to_end(&mut original))
        .map_err(|error| format!("cannot decompress: {error}"))?;
    if original.len() as u64 != size {
        return Err(format!("decompresses to {} bytes, header says {size}", original.len()));
    }
    if SampleHash::of(&original) != *hash {
        return Err("content does not hash to the sample's SHA-256".into());
    }
    Ok(original)
}

fn read_dir_paths(dir: &Path) -> Result<Vec<PathBuf>, StoreError> {
    let entries = fs::read_dir(dir).map_err(StoreError::io(dir))?;
    entries.map(|entry| entry.map(|entry| entry.path()).map_err(StoreError::io(dir))).collect()
}

fn create_private_file(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

/// Creates `dir` (mode 0700) if missing and fsyncs `parent` so the entry is durable.
pub(crate) fn create_private_dir(dir: &Path, parent: &Path) -> Result<(), StoreError> {
    let mut builder = DirBuilder::new();
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    match builder.create(dir) {
        Ok(()) => {}
        Err(error) if error.kind() == ErrorKind::AlreadyExists => {}
        Err(error) => return Err(StoreError::Io { path: dir.to_owned(), source: error }),
    }
    sync_dir(parent)
}

/// Makes the entries of `dir` (files created, renamed or removed in it) durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    #[cfg(unix)]
    File::open(dir).and_then(|handle| handle.sync_all()).map_err(StoreError::io(dir))?;
    // Elsewhere std cannot open a directory to fsync it; the server targets Unix.
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::store_key::StoreKey;

    const SAMPLE: &[u8] =
        b"MZ\x90\x00 a sample whose bytes must not be readable in its vault file, repeated: \
        a sample whose bytes must not be readable in its vault file";

    fn cipher(byte: u8) -> VaultCipher {
        VaultCipher::new(&StoreKey::from_hex(&format!("{byte:02x}").repeat(32)).unwrap())
    }

    fn encrypted_vault(dir: &Path) -> (Vault, SampleHash) {
        let vault = Vault::open(dir, 3, Codec::Zstd, Some(cipher(1))).unwrap();
        let hash = SampleHash::of(SAMPLE);
        vault.store(&hash, SAMPLE).unwrap();
        (vault, hash)
    }

    fn corrupt_reason(result: Result<Vec<u8>, StoreError>) -> String {
        match result {
            Err(StoreError::CorruptVaultFile { reason, .. }) => reason,
            other => panic!("expected a corrupt vault file, got {other:?}"),
        }
    }

    #[test]
    fn encrypted_files_hide_the_sample_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let (vault, hash) = encrypted_vault(dir.path());
        let contents = fs::read(vault.path_of(&hash)).unwrap();
        assert!(contents.starts_with(MAGIC));
        assert_eq!(format_version(&contents), Some(2));
        assert!(!contents.windows(16).any(|window| SAMPLE.windows(16).any(|part| part == window)));
        assert_eq!(vault.load(&hash).unwrap(), SAMPLE);

        let without_key = Vault::open(dir.path(), 3, Codec::Zstd, None).unwrap();
        assert!(corrupt_reason(without_key.load(&hash)).contains("no store key is configured"));
        let other_key = Vault::open(dir.path(), 3, Codec::Zstd, Some(cipher(2))).unwrap();
        assert!(corrupt_reason(other_key.load(&hash)).contains("encrypted under store key"));
    }

    #[test]
    fn every_altered_byte_of_header_or_ciphertext_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let (vault, hash) = encrypted_vault(dir.path());
        let path = vault.path_of(&hash);
        let original = fs::read(&path).unwrap();
        // Version, key id, nonce, ciphertext, tag: each altered in turn.
        let header = MAGIC.len() + 4 + 8 + 12;
        for position in
            [MAGIC.len() + 4, MAGIC.len() + 12, header - 1, header, original.len() / 2, original.len() - 1]
        {
            let mut altered = original.clone();
            altered[position] ^= 0x01;
            fs::write(&path, &altered).unwrap();
            let reason = corrupt_reason(vault.load(&hash));
            assert!(!reason.is_empty(), "byte {position}");
        }
        fs::write(&path, &original[..original.len() - 20]).unwrap();
        assert!(corrupt_reason(vault.load(&hash)).contains("authentication failed"));
        fs::write(&path, &original[..MAGIC.len() + 6]).unwrap();
        corrupt_reason(vault.load(&hash));
        fs::write(&path, &original).unwrap();
        assert_eq!(vault.load(&hash).unwrap(), SAMPLE);
    }

    #[test]
    fn a_file_moved_to_another_samples_name_fails_authentication() {
        let dir = tempfile::tempdir().unwrap();
        let (vault, hash) = encrypted_vault(dir.path());
        let other = b"another sample";
        let other_hash = SampleHash::of(other);
        vault.store(&other_hash, other).unwrap();
        fs::copy(vault.path_of(&hash), vault.path_of(&other_hash)).unwrap();
        assert!(corrupt_reason(vault.load(&other_hash)).contains("authentication failed"));
    }

    #[test]
    fn resealing_moves_plain_and_old_key_files_to_the_new_key_and_resumes() {
        let dir = tempfile::tempdir().unwrap();
        let plain = Vault::open(dir.path(), 3, Codec::Zstd, None).unwrap();
        let hashes: Vec<_> = (0..5u8)
            .map(|index| {
                let bytes = vec![index; 1000];
                let hash = SampleHash::of(&bytes);
                plain.store(&hash, &bytes).unwrap();
                hash
            })
            .collect();

        let first = Vault::open(dir.path(), 3, Codec::Zstd, Some(cipher(1))).unwrap();
        assert_eq!(first.reseal_all(None).unwrap(), (5, 0));
        assert_eq!(first.reseal_all(None).unwrap(), (0, 5), "a second run has nothing left to do");
        let second = Vault::open(dir.path(), 3, Codec::Zstd, Some(cipher(2))).unwrap();
        assert!(matches!(second.reseal_all(Some(&cipher(3))), Err(StoreError::CorruptVaultFile { .. })));
        assert_eq!(second.reseal_all(Some(&cipher(1))).unwrap(), (5, 0));
        for (index, hash) in (0..5u8).zip(&hashes) {
            assert_eq!(second.load(hash).unwrap(), vec![index; 1000]);
            corrupt_reason(first.load(hash));
        }
        assert_eq!(fs::read_dir(dir.path().join("samples/incoming")).unwrap().count(), 0);
    }

    /// Bytes zstd shrinks a lot (a PE's zero-filled sections): compaction replaces their file.
    fn compressible(seed: u8) -> Vec<u8> {
        let mut bytes = b"MZ\x90\x00".to_vec();
        bytes.extend((0..200_000u32).map(|index| if index % 97 == 0 { seed } else { (index % 7) as u8 }));
        bytes
    }

    /// Bytes zstd cannot shrink (a packed executable); seeds differing only in their lowest bit
    /// give the same bytes.
    fn incompressible(seed: u64) -> Vec<u8> {
        let mut state = seed | 1;
        (0..200_000)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect()
    }

    /// The file as an older Sentinel wrote it (format version 1), built here byte by byte so the
    /// test does not depend on today's writer.
    fn version_1_file(bytes: &[u8]) -> Vec<u8> {
        let mut file = MAGIC.to_vec();
        file.extend_from_slice(&1u32.to_le_bytes());
        file.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        file.extend_from_slice(SampleHash::of(bytes).raw());
        let mut encoder = zstd::stream::write::Encoder::new(&mut file, 3).unwrap();
        encoder.include_checksum(true).unwrap();
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap();
        file
    }

    #[test]
    fn masked_files_read_back_and_never_show_the_sample() {
        for (cipher, version) in [(None, 3), (Some(cipher(1)), 4)] {
            let dir = tempfile::tempdir().unwrap();
            let vault = Vault::open(dir.path(), 3, Codec::Masked, cipher).unwrap();
            for sample in [SAMPLE.to_vec(), Vec::new(), incompressible(5), vec![0u8; MASK_CHUNK * 2 + 33]] {
                let hash = SampleHash::of(&sample);
                vault.store(&hash, &sample).unwrap();
                let contents = fs::read(vault.path_of(&hash)).unwrap();
                assert!(contents.starts_with(MAGIC));
                assert_eq!(format_version(&contents), Some(version));
                if sample.len() >= 32 {
                    // No 32 bytes of the sample appear anywhere in its file (a set of the
                    // sample's windows: comparing each pair took minutes on a debug build).
                    let windows: HashSet<&[u8]> = sample.windows(32).collect();
                    assert!(!contents.windows(32).any(|window| windows.contains(window)));
                }
                assert_eq!(vault.load(&hash).unwrap(), sample);
            }
        }
    }

    #[test]
    fn damaged_masked_files_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let vault = Vault::open(dir.path(), 3, Codec::Masked, None).unwrap();
        let hash = SampleHash::of(SAMPLE);
        vault.store(&hash, SAMPLE).unwrap();
        let path = vault.path_of(&hash);
        let original = fs::read(&path).unwrap();
        // A version altered to 2 or 4 reads as encrypted: 3 ^ 8 = 11 is no version at all.
        for (position, flip, reason) in [
            (HEADER_LEN + 3, 0x01, "does not hash"),
            (original.len() - 1, 0x01, "does not hash"),
            (MAGIC.len(), 0x08, "unknown format version"),
            (MAGIC.len(), 0x01, "no store key"),
            (MAGIC.len() + 4, 0x01, "header says"),
        ] {
            let mut altered = original.clone();
            altered[position] ^= flip;
            fs::write(&path, &altered).unwrap();
            assert!(corrupt_reason(vault.load(&hash)).contains(reason), "byte {position}");
        }
        fs::write(&path, &original[..original.len() - 1]).unwrap();
        assert!(corrupt_reason(vault.load(&hash)).contains("header says"));
    }

    #[test]
    fn files_of_every_earlier_format_are_still_read() {
        let dir = tempfile::tempdir().unwrap();
        // Version 1, as written before the store had keys or codecs.
        let plain = Vault::open(dir.path(), 3, Codec::Masked, None).unwrap();
        let hash = SampleHash::of(SAMPLE);
        plain.create_fan_out(&hash).unwrap();
        fs::write(plain.path_of(&hash), version_1_file(SAMPLE)).unwrap();
        assert_eq!(plain.load(&hash).unwrap(), SAMPLE);
        // Version 2, as written by an encrypted store before codecs.
        let (encrypted, other) = (Vault::open(dir.path(), 3, Codec::Zstd, Some(cipher(1))).unwrap(), b"v2");
        let other_hash = SampleHash::of(other);
        encrypted.store(&other_hash, other).unwrap();
        let masked_reader = Vault::open(dir.path(), 3, Codec::Masked, Some(cipher(1))).unwrap();
        assert_eq!(masked_reader.load(&other_hash).unwrap(), other);
        assert_eq!(masked_reader.load(&hash).unwrap(), SAMPLE);
    }

    #[test]
    fn compaction_compresses_masked_files_worth_it_and_leaves_the_rest() {
        for cipher_byte in [None, Some(1)] {
            let dir = tempfile::tempdir().unwrap();
            let vault = Vault::open(dir.path(), 3, Codec::Masked, cipher_byte.map(cipher)).unwrap();
            let (small, packed) = (compressible(9), incompressible(9));
            let (small_hash, packed_hash) = (SampleHash::of(&small), SampleHash::of(&packed));
            vault.store(&small_hash, &small).unwrap();
            vault.store(&packed_hash, &packed).unwrap();
            let masked_len = fs::metadata(vault.path_of(&small_hash)).unwrap().len();

            assert!(vault.compact(&small_hash).unwrap());
            let contents = fs::read(vault.path_of(&small_hash)).unwrap();
            let zstd_version = if cipher_byte.is_some() { 2 } else { 1 };
            assert_eq!(format_version(&contents), Some(zstd_version));
            assert!((contents.len() as u64) < masked_len / 4, "{} of {masked_len}", contents.len());
            assert_eq!(vault.load(&small_hash).unwrap(), small);
            assert!(!vault.compact(&small_hash).unwrap(), "already compressed");

            let packed_before = fs::read(vault.path_of(&packed_hash)).unwrap();
            assert!(!vault.compact(&packed_hash).unwrap());
            assert_eq!(fs::read(vault.path_of(&packed_hash)).unwrap(), packed_before, "left masked");
            assert_eq!(vault.load(&packed_hash).unwrap(), packed);
            assert_eq!(fs::read_dir(dir.path().join("samples/incoming")).unwrap().count(), 0);
        }
    }

    #[test]
    fn compaction_never_launders_a_damaged_file_nor_restores_a_deleted_one() {
        let dir = tempfile::tempdir().unwrap();
        let vault = Vault::open(dir.path(), 3, Codec::Masked, None).unwrap();
        let sample = compressible(3);
        let hash = SampleHash::of(&sample);
        vault.store(&hash, &sample).unwrap();
        let path = vault.path_of(&hash);
        let mut damaged = fs::read(&path).unwrap();
        damaged[HEADER_LEN + 100] ^= 0x01;
        fs::write(&path, &damaged).unwrap();
        assert!(matches!(vault.compact(&hash), Err(StoreError::CorruptVaultFile { .. })));
        assert_eq!(fs::read(&path).unwrap(), damaged, "left for investigation");

        assert!(vault.remove(&hash).unwrap().is_some());
        assert!(!vault.compact(&hash).unwrap());
        assert!(!path.exists());
        assert_eq!(fs::read_dir(dir.path().join("samples/incoming")).unwrap().count(), 0);
    }

    /// A vault whose journal is started and prepared, with no settling thread: journaled
    /// samples stay in the journal, as when the process is killed before settling them.
    fn journaling_vault(
        dir: &Path,
        cipher: Option<VaultCipher>,
    ) -> (Vault, std::sync::mpsc::Receiver<SettlingWork>) {
        let vault = Vault::open(dir, 3, Codec::Masked, cipher).unwrap();
        let (queue, work) = std::sync::mpsc::channel();
        assert!(vault.start_journal(queue).unwrap());
        while vault.prepare_journal().unwrap() {}
        (vault, work)
    }

    /// `count` distinct incompressible samples from `first_seed` on, with their hashes.
    fn distinct_samples(count: u64, first_seed: u64) -> (Vec<Vec<u8>>, Vec<SampleHash>) {
        let samples: Vec<Vec<u8>> = (0..count).map(|seed| incompressible(2 * seed + first_seed)).collect();
        let hashes = samples.iter().map(|sample| SampleHash::of(sample)).collect();
        (samples, hashes)
    }

    /// A vault with its settling thread that has journaled `count` distinct samples (seeds from
    /// `first_seed + 2` on), once a first sample (`first_seed`) has made it ready a journal
    /// segment: before one is, a sample's file is written directly.
    fn settling_vault(
        dir: &Path,
        first_seed: u64,
        count: u64,
    ) -> (Arc<Vault>, crate::vault_settling::VaultSettling, Vec<Vec<u8>>, Vec<SampleHash>) {
        let vault = Arc::new(Vault::open(dir, 3, Codec::Masked, None).unwrap());
        let settling = crate::vault_settling::VaultSettling::start(Arc::clone(&vault)).unwrap().unwrap();
        let first = incompressible(first_seed);
        let first_hash = SampleHash::of(&first);
        vault.keep_new(&first_hash, &first).unwrap();
        assert!(vault.path_of(&first_hash).exists(), "no segment was ready: written directly");
        let journal = vault.journal.get().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !journal.is_ready() {
            assert!(std::time::Instant::now() < deadline, "no journal segment was prepared");
            std::thread::sleep(Duration::from_millis(5));
        }
        let (samples, hashes) = distinct_samples(count, first_seed + 2);
        for (sample, hash) in samples.iter().zip(&hashes) {
            vault.keep_new(hash, sample).unwrap();
        }
        (vault, settling, samples, hashes)
    }

    #[test]
    fn journaled_samples_are_read_before_settling_and_recovered_after_a_stop() {
        for cipher_byte in [None, Some(1)] {
            let dir = tempfile::tempdir().unwrap();
            let (samples, hashes) = distinct_samples(3, 21);
            {
                let (vault, work) = journaling_vault(dir.path(), cipher_byte.map(cipher));
                for (sample, hash) in samples.iter().zip(&hashes) {
                    vault.keep_new(hash, sample).unwrap();
                    assert!(!vault.path_of(hash).exists(), "journaled, not written");
                    assert!(vault.contains(hash).unwrap());
                    assert_eq!(&vault.load(hash).unwrap(), sample);
                }
                assert_eq!(work.try_iter().filter(|work| matches!(work, SettlingWork::Settle(_))).count(), 3);
                // Dropped without settling, as a killed process would leave it.
            }
            let reopened = Vault::open(dir.path(), 3, Codec::Masked, cipher_byte.map(cipher)).unwrap();
            for (sample, hash) in samples.iter().zip(&hashes) {
                assert!(reopened.path_of(hash).exists(), "recovered at open");
                assert_eq!(&reopened.load(hash).unwrap(), sample);
            }
            // The segments were retired: a file deleted now is not written again at the next open.
            fs::remove_file(reopened.path_of(&hashes[0])).unwrap();
            drop(reopened);
            let again = Vault::open(dir.path(), 3, Codec::Masked, None).unwrap();
            assert!(!again.path_of(&hashes[0]).exists());
        }
    }

    #[test]
    fn a_record_cut_short_is_skipped_and_the_records_after_it_recovered() {
        for cipher_byte in [None, Some(1)] {
            let dir = tempfile::tempdir().unwrap();
            let (samples, hashes) = distinct_samples(3, 41);
            {
                let (vault, _work) = journaling_vault(dir.path(), cipher_byte.map(cipher));
                for (sample, hash) in samples.iter().zip(&hashes) {
                    vault.keep_new(hash, sample).unwrap();
                }
            }
            // The first record's content loses a byte in the middle, as a write cut short would.
            let segment = dir.path().join("samples/journal/segment-0.journal");
            let mut contents = fs::read(&segment).unwrap();
            contents[4096 + 20_000] ^= 0x40;
            fs::write(&segment, &contents).unwrap();

            let reopened = Vault::open(dir.path(), 3, Codec::Masked, cipher_byte.map(cipher)).unwrap();
            assert!(!reopened.path_of(&hashes[0]).exists());
            for (sample, hash) in samples.iter().zip(&hashes).skip(1) {
                assert_eq!(&reopened.load(hash).unwrap(), sample);
            }
        }
    }

    #[test]
    fn the_settling_thread_writes_journaled_files_and_frees_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let (vault, settling, samples, hashes) = settling_vault(dir.path(), 59, 10);
        let journal = vault.journal.get().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let segment = fs::read(dir.path().join("samples/journal/segment-0.journal")).unwrap();
        assert!(segment.windows(32).any(|window| window == hashes[0].raw()), "the first was journaled");
        while !hashes.iter().all(|hash| vault.path_of(hash).exists() && !journal.contains(hash)) {
            assert!(std::time::Instant::now() < deadline, "journaled samples were never settled");
            std::thread::sleep(Duration::from_millis(5));
        }
        for (sample, hash) in samples.iter().zip(&hashes) {
            assert_eq!(&vault.load(hash).unwrap(), sample);
        }
        // Another process cannot take the journal while this one has it.
        let other = Vault::open(dir.path(), 3, Codec::Masked, None).unwrap();
        assert!(!other.start_journal(std::sync::mpsc::channel().0).unwrap());
        drop(settling);
        assert!(journal.unsettled().is_empty());
        // Closed: the records are voided and their bytes wiped, the samples' files remain.
        let segment = fs::read(dir.path().join("samples/journal/segment-0.journal")).unwrap();
        assert!(hashes.iter().all(|hash| !segment.windows(32).any(|window| window == hash.raw())));
        assert!(segment[4096..].iter().all(|&byte| byte == 0));
        for (sample, hash) in samples.iter().zip(&hashes) {
            assert_eq!(&vault.load(hash).unwrap(), sample);
        }
    }

    #[test]
    fn settled_records_are_voided_soon_after_requests_pause_with_the_store_still_open() {
        let dir = tempfile::tempdir().unwrap();
        let (vault, _settling, samples, hashes) = settling_vault(dir.path(), 91, 3);
        let journal = vault.journal.get().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let segments = || {
            fs::read_dir(dir.path().join("samples/journal"))
                .unwrap()
                .map(|entry| entry.unwrap().path())
                .filter(|path| path.extension().is_some_and(|extension| extension == "journal"))
                .map(|path| fs::read(path).unwrap())
                .collect::<Vec<_>>()
        };
        assert!(segments().iter().any(|segment| segment.windows(32).any(|window| window == hashes[0].raw())));
        // Settled, then the segment that took them is swapped for a fresh one and wiped: the
        // next burst finds every segment empty, and no sample's bytes stay in the journal.
        while !segments().iter().all(|segment| segment[4096..].iter().all(|&byte| byte == 0)) {
            assert!(std::time::Instant::now() < deadline, "the records were not voided while idle");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(journal.unsettled().is_empty());
        for (sample, hash) in samples.iter().zip(&hashes) {
            assert_eq!(&vault.load(hash).unwrap(), sample);
        }
    }

    #[test]
    fn deleting_a_journaled_sample_releases_its_record() {
        let dir = tempfile::tempdir().unwrap();
        let (vault, _work) = journaling_vault(dir.path(), None);
        let sample = incompressible(81);
        let hash = SampleHash::of(&sample);
        vault.keep_new(&hash, &sample).unwrap();
        assert!(vault.remove(&hash).unwrap().is_some());
        assert!(!vault.contains(&hash).unwrap());
        assert!(matches!(vault.load(&hash), Err(StoreError::MissingVaultFile { .. })));
        vault.settle(&hash).unwrap();
        assert!(!vault.path_of(&hash).exists(), "settling a deleted sample writes nothing");
    }

    #[test]
    fn the_compaction_thread_compresses_what_the_vault_queues_and_stops_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let vault = Arc::new(Vault::open(dir.path(), 3, Codec::Masked, None).unwrap());
        let compaction = crate::vault_compaction::VaultCompaction::start(Arc::clone(&vault)).unwrap();
        let sample = compressible(4);
        let hash = SampleHash::of(&sample);
        vault.store(&hash, &sample).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while format_version(&fs::read(vault.path_of(&hash)).unwrap()) != Some(1) {
            assert!(std::time::Instant::now() < deadline, "the file was never compressed");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(vault.load(&hash).unwrap(), sample);
        drop(compaction);
        // With the thread gone, a new file stays masked.
        let other = compressible(5);
        let other_hash = SampleHash::of(&other);
        vault.store(&other_hash, &other).unwrap();
        assert_eq!(format_version(&fs::read(vault.path_of(&other_hash)).unwrap()), Some(3));
    }
}
