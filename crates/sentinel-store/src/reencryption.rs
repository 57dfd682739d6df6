//! Changing a store's encryption while it is closed: [`encrypt_store`] turns a plain store into
//! an encrypted one, [`rekey_store`] moves an encrypted store to a new key. Both rewrite each
//! database file with `sqlcipher_export` into a new file renamed over the old one
//! (`sqlcipher.rs`), then every vault file the same way (`Vault::reseal_all`), holding the
//! store's exclusive lock so that no server or command has it open meanwhile.
//!
//! Why not SQLCipher's `PRAGMA rekey`: it rewrites the pages of the file in place, which in WAL
//! mode (the store's) is not supported by every SQLCipher build and leaves nothing to fall back
//! to if it is interrupted; a new file and an atomic rename leave each file wholly under the old
//! key or wholly under the new one at any moment.
//!
//! Interrupted (crash, power loss, Ctrl-C), a run leaves some files under the new key and the
//! rest under the old one (or plain). Running the same command again finishes it: a database
//! the new key opens is done, and each vault file names its key in its header. Until it has
//! finished, the store cannot be opened with either key alone.

use std::fmt;
use std::path::Path;

use crate::network::NETWORK_DATABASE_FILE;
use crate::sqlcipher::{self, DatabaseKey, Reencryption};
use crate::store_key::{KeyPurpose, StoreKey};
use crate::store_lock::StoreLock;
use crate::vault::{Codec, Vault};
use crate::vault_cipher::VaultCipher;
use crate::{DATABASE_FILE, StoreError, StoreSettings};

/// What a run of [`encrypt_store`] or [`rekey_store`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReencryptionReport {
    /// Database files rewritten under the new key.
    pub databases_rewritten: Vec<String>,
    /// Database files already under the new key (a resumed run), or absent.
    pub databases_already_done: Vec<String>,
    /// Vault files rewritten under the new key.
    pub vault_files_rewritten: u64,
    /// Vault files already under the new key.
    pub vault_files_already_done: u64,
}

impl fmt::Display for ReencryptionReport {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |names: &[String]| if names.is_empty() { "none".to_string() } else { names.join(", ") };
        write!(
            formatter,
            "databases rewritten: {}; already under the new key: {}; vault files rewritten: {}, already under the new key: {}",
            list(&self.databases_rewritten),
            list(&self.databases_already_done),
            self.vault_files_rewritten,
            self.vault_files_already_done
        )
    }
}

/// Encrypts the plain store in `data_dir` under `key`: both databases and every vault file.
/// Parts already encrypted under `key` (an interrupted earlier run) are left as they are.
pub fn encrypt_store(
    data_dir: &Path,
    settings: &StoreSettings,
    key: &StoreKey,
) -> Result<ReencryptionReport, StoreError> {
    reencrypt_store(data_dir, settings, None, key)
}

/// Moves the encrypted store in `data_dir` from `current` to `new`: both databases and every
/// vault file. Parts already under `new` (an interrupted earlier run) are left as they are.
pub fn rekey_store(
    data_dir: &Path,
    settings: &StoreSettings,
    current: &StoreKey,
    new: &StoreKey,
) -> Result<ReencryptionReport, StoreError> {
    if current == new {
        return Err(StoreError::InvalidStoreKey(format!(
            "the new key is the current key (fingerprint {})",
            new.fingerprint()
        )));
    }
    reencrypt_store(data_dir, settings, Some(current), new)
}

fn reencrypt_store(
    data_dir: &Path,
    settings: &StoreSettings,
    current: Option<&StoreKey>,
    target: &StoreKey,
) -> Result<ReencryptionReport, StoreError> {
    settings.validate()?;
    // An existing store only: a mistyped directory must not become a new, empty store.
    if !data_dir.join(DATABASE_FILE).is_file() {
        return Err(StoreError::Io {
            path: data_dir.join(DATABASE_FILE),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no store in this data directory"),
        });
    }
    let _lock = StoreLock::exclusive(data_dir)?;
    let mut report = ReencryptionReport::default();
    // sentinel.db first: a wrong current key is found there, before anything is rewritten.
    for (file, purpose) in
        [(DATABASE_FILE, KeyPurpose::MalwareDatabase), (NETWORK_DATABASE_FILE, KeyPurpose::NetworkDatabase)]
    {
        let current = current.map(|key| DatabaseKey::new(key, purpose));
        let target = DatabaseKey::new(target, purpose);
        let path = data_dir.join(file);
        match sqlcipher::reencrypt(&path, current.as_ref(), &target)? {
            Reencryption::Rewritten => report.databases_rewritten.push(file.to_owned()),
            Reencryption::AlreadyDone => report.databases_already_done.push(file.to_owned()),
        }
    }
    let vault =
        Vault::open(data_dir, settings.compression_level, Codec::Zstd, Some(VaultCipher::new(target)))?;
    let current = current.map(VaultCipher::new);
    (report.vault_files_rewritten, report.vault_files_already_done) = vault.reseal_all(current.as_ref())?;
    crate::vault::sync_dir(data_dir)?;
    Ok(report)
}
