//! The sample vault: defanged copies of samples on disk, content-addressed by SHA-256 under
//! `samples/ab/cd/<sha256>.zst` (two levels of fan-out keep directories small).
//!
//! Defanged means nobody runs or opens one by mistake: each file starts with a Sentinel header
//! (never `MZ`), holds the sample zstd-compressed, and is created with mode 0600 (no exec bit).
//!
//! A file is written to `samples/incoming/`, fsynced, renamed into place and its directory
//! fsynced, so once [`Vault::store`] returns the file survives a crash or power loss, and a
//! reader never sees a partial file. Reads check the header, the zstd checksum, the size and
//! the SHA-256 of the content, so corruption or tampering is reported instead of served.

use std::collections::HashSet;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, BufWriter, ErrorKind, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use crate::StoreError;
use crate::sample_hash::SampleHash;

/// First bytes of every vault file.
const MAGIC: &[u8; 16] = b"SENTINEL-SAMPLE\0";
const FORMAT_VERSION: u32 = 1;
/// Magic, format version (u32 LE), original size (u64 LE), raw SHA-256 of the original.
const HEADER_LEN: usize = MAGIC.len() + 4 + 8 + 32;
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
    /// Leaf directories (`ab/cd`, keyed by the hash's first two bytes) this process has made
    /// durable, so their parents are fsynced once per process instead of on every write.
    durable_leaves: Mutex<HashSet<u16>>,
}

impl Vault {
    /// Creates the vault directories if needed and removes temporary files left by a crash.
    pub(crate) fn open(data_dir: &Path, compression_level: i32) -> Result<Vault, StoreError> {
        let root = data_dir.join(VAULT_DIR);
        let incoming = root.join(INCOMING_DIR);
        create_private_dir(&root, data_dir)?;
        create_private_dir(&incoming, &root)?;
        let vault = Vault {
            data_dir: data_dir.to_owned(),
            root,
            incoming,
            compression_level,
            durable_leaves: Mutex::new(HashSet::new()),
        };
        vault.remove_stale_temporaries()?;
        Ok(vault)
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

    pub(crate) fn contains(&self, hash: &SampleHash) -> Result<bool, StoreError> {
        let path = self.path_of(hash);
        path.try_exists().map_err(StoreError::io(path))
    }

    /// Stores `bytes`, which the caller has checked hash to `hash`. Does nothing if the file is
    /// already there: the name is the content's hash, so the content is the same.
    pub(crate) fn store(&self, hash: &SampleHash, bytes: &[u8]) -> Result<(), StoreError> {
        if self.contains(hash)? {
            return Ok(());
        }
        let temporary = self.temporary_path(hash.as_str());
        let written = self
            .write_temporary(&temporary, hash, bytes)
            .and_then(|()| self.move_into_place(&temporary, hash));
        if written.is_err() {
            // Best effort: a leftover is removed at the next open anyway.
            let _ = fs::remove_file(&temporary);
        }
        written
    }

    /// Reads back the original bytes of a sample, verified against its hash.
    pub(crate) fn load(&self, hash: &SampleHash) -> Result<Vec<u8>, StoreError> {
        let path = self.path_of(hash);
        let contents = match fs::read(&path) {
            Ok(contents) => contents,
            Err(error) if error.kind() == ErrorKind::NotFound => {
                return Err(StoreError::MissingVaultFile { path });
            }
            Err(error) => return Err(StoreError::Io { path, source: error }),
        };
        decode(&contents, hash).map_err(|reason| StoreError::CorruptVaultFile { path, reason })
    }

    /// Deletes a sample's file durably. Returns its size on disk, or `None` if it was not there.
    pub(crate) fn remove(&self, hash: &SampleHash) -> Result<Option<u64>, StoreError> {
        let path = self.path_of(hash);
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

    fn write_temporary(&self, temporary: &Path, hash: &SampleHash, bytes: &[u8]) -> Result<(), StoreError> {
        let write = || -> io::Result<()> {
            let mut writer = BufWriter::new(create_private_file(temporary)?);
            writer.write_all(MAGIC)?;
            writer.write_all(&FORMAT_VERSION.to_le_bytes())?;
            writer.write_all(&(bytes.len() as u64).to_le_bytes())?;
            writer.write_all(hash.raw())?;
            let mut encoder = zstd::stream::write::Encoder::new(writer, self.compression_level)?;
            encoder.include_checksum(true)?;
            encoder.set_pledged_src_size(Some(bytes.len() as u64))?;
            encoder.write_all(bytes)?;
            let file = encoder.finish()?.into_inner().map_err(io::IntoInnerError::into_error)?;
            file.sync_all()
        };
        write().map_err(StoreError::io(temporary))
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

/// Reads a sample file named by a dataset being imported: either a vault file (exported by this
/// or another store), decoded and verified against `hash`, or the raw sample, returned as it is
/// for the caller to check its hash.
pub(crate) fn read_external(path: &Path, hash: &SampleHash) -> Result<Vec<u8>, StoreError> {
    let contents = fs::read(path).map_err(StoreError::io(path))?;
    if !contents.starts_with(MAGIC) {
        return Ok(contents);
    }
    decode(&contents, hash).map_err(|reason| StoreError::CorruptVaultFile { path: path.to_owned(), reason })
}

fn leaf_key(hash: &SampleHash) -> u16 {
    u16::from_be_bytes([hash.raw()[0], hash.raw()[1]])
}

/// Checks the header of a vault file and returns the verified original bytes, or why not.
fn decode(contents: &[u8], hash: &SampleHash) -> Result<Vec<u8>, String> {
    let Some((header, compressed)) = contents.split_first_chunk::<HEADER_LEN>() else {
        return Err(format!("{} bytes, shorter than the {HEADER_LEN}-byte header", contents.len()));
    };
    let (magic, rest) = header.split_at(MAGIC.len());
    let (version, rest) = rest.split_at(4);
    let (size, recorded_hash) = rest.split_at(8);
    if magic != MAGIC {
        return Err("no Sentinel vault header".into());
    }
    let version = u32::from_le_bytes(version.try_into().map_err(|_| "truncated header")?);
    if version != FORMAT_VERSION {
        return Err(format!("unknown format version {version}"));
    }
    if recorded_hash != hash.raw() {
        return Err(format!("header names sample {}, not {}", hex::encode(recorded_hash), hash.as_str()));
    }
    let size = u64::from_le_bytes(size.try_into().map_err(|_| "truncated header")?);
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

fn create_private_file(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

/// Creates `dir` (mode 0700) if missing and fsyncs `parent` so the entry is durable.
fn create_private_dir(dir: &Path, parent: &Path) -> Result<(), StoreError> {
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
