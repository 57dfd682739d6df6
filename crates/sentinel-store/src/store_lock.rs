//! Who has a data directory's store open: a lock file, `<data_dir>/store.lock`, which every open
//! [`crate::Store`] and [`crate::NetworkStore`] holds shared (so a server and the dataset or token
//! commands still work side by side) and which changing the store's encryption holds exclusive.
//! Re-encrypting a file while a server writes to it would lose the server's writes, and a
//! server opening a half-rewritten store would fail: the lock makes each refuse while the other
//! runs, with a message saying why. The kernel releases the lock when its process ends, so a
//! crash never leaves the store locked.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};

use crate::StoreError;

/// Name of the lock file inside the data directory (empty; only its lock matters).
const LOCK_FILE: &str = "store.lock";

/// A held lock on a data directory's store; released when dropped.
#[derive(Debug)]
pub(crate) struct StoreLock {
    _file: File,
}

impl StoreLock {
    /// A shared lock, held by a store for as long as it is open. Refused while the store's
    /// encryption is being changed.
    pub(crate) fn shared(data_dir: &Path) -> Result<StoreLock, StoreError> {
        let file = open(data_dir)?;
        match file.try_lock_shared() {
            Ok(()) => Ok(StoreLock { _file: file }),
            Err(TryLockError::WouldBlock) => Err(StoreError::StoreInUse {
                data_dir: data_dir.to_owned(),
                activity: "its encryption is being changed (sentinel store encrypt or rekey); open it once that is done",
            }),
            Err(TryLockError::Error(error)) => {
                Err(StoreError::Io { path: lock_path(data_dir), source: error })
            }
        }
    }

    /// The exclusive lock: nothing else has the store open, and nothing can open it until this is
    /// dropped.
    pub(crate) fn exclusive(data_dir: &Path) -> Result<StoreLock, StoreError> {
        let file = open(data_dir)?;
        match file.try_lock() {
            Ok(()) => Ok(StoreLock { _file: file }),
            Err(TryLockError::WouldBlock) => Err(StoreError::StoreInUse {
                data_dir: data_dir.to_owned(),
                activity: "stop `sentinel serve` (and any other command using this data directory) first",
            }),
            Err(TryLockError::Error(error)) => {
                Err(StoreError::Io { path: lock_path(data_dir), source: error })
            }
        }
    }
}

fn lock_path(data_dir: &Path) -> PathBuf {
    data_dir.join(LOCK_FILE)
}

fn open(data_dir: &Path) -> Result<File, StoreError> {
    let path = lock_path(data_dir);
    let mut options = OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(&path).map_err(StoreError::io(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_locks_coexist_and_exclude_the_exclusive_one() {
        let dir = tempfile::tempdir().unwrap();
        let first = StoreLock::shared(dir.path()).unwrap();
        let second = StoreLock::shared(dir.path()).unwrap();
        assert!(matches!(StoreLock::exclusive(dir.path()), Err(StoreError::StoreInUse { .. })));
        drop((first, second));
        let exclusive = StoreLock::exclusive(dir.path()).unwrap();
        assert!(matches!(StoreLock::shared(dir.path()), Err(StoreError::StoreInUse { .. })));
        drop(exclusive);
        StoreLock::shared(dir.path()).unwrap();
    }
}
