//! The store key: one random 256-bit secret that encrypts the store at rest (docs/security.md,
//! "Encryption at rest"). It comes from `SENTINEL_STORE_KEY` or from the file named by
//! `[store] key_file`, as 64 hexadecimal characters, and is never used as it is: HKDF-SHA256
//! derives one subkey per purpose (each database, the vault, the key's public id), so one key
//! never serves two ciphers and a subkey that leaks tells nothing of the others.
//!
//! Keys are raw 256-bit values rather than passphrases: SQLCipher takes them in its raw-key
//! form (`x'…'`) and skips its PBKDF2 step, which would otherwise run on every connection the
//! store opens (read connections are opened on demand). Key bytes are wiped when dropped and
//! never shown: [`StoreKey`]'s `Debug` and every error print only its fingerprint.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;

use aws_lc_rs::hkdf;
use zeroize::Zeroizing;

use crate::{StoreError, StoreSettings};

/// The environment variable that can hold the store key (64 hexadecimal characters).
pub const STORE_KEY_ENV: &str = "SENTINEL_STORE_KEY";

/// Bytes of a store key and of each subkey.
const KEY_LEN: usize = 32;

/// Bytes of a key's id, written in vault file headers and shown (in hex) as its fingerprint.
pub(crate) const KEY_ID_LEN: usize = 8;

/// What a subkey is for; its HKDF info label. Changing a label changes the subkey, so labels
/// are part of the on-disk format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyPurpose {
    /// The SQLCipher key of `sentinel.db`.
    MalwareDatabase,
    /// The SQLCipher key of `network.db`.
    NetworkDatabase,
    /// The AES-256-GCM key of the sample vault's files.
    Vault,
    /// The key's public id: names the key in vault headers and messages without revealing it.
    KeyId,
}

impl KeyPurpose {
    fn label(self) -> &'static [u8] {
        match self {
            KeyPurpose::MalwareDatabase => b"sentinel store v1: sentinel.db sqlcipher key",
            KeyPurpose::NetworkDatabase => b"sentinel store v1: network.db sqlcipher key",
            KeyPurpose::Vault => b"sentinel store v1: sample vault aes-256-gcm key",
            KeyPurpose::KeyId => b"sentinel store v1: key id",
        }
    }
}

/// A store key. Cloning copies the secret (wiped on drop like the original).
#[derive(Clone)]
pub struct StoreKey {
    bytes: Zeroizing<[u8; KEY_LEN]>,
}

impl StoreKey {
    /// A new random key from the operating system's generator.
    pub fn generate() -> Result<StoreKey, StoreError> {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        aws_lc_rs::rand::fill(bytes.as_mut_slice())
            .map_err(|_| StoreError::Encryption("the system random number generator failed"))?;
        Ok(StoreKey { bytes })
    }

    /// Parses 64 hexadecimal characters (surrounding whitespace, such as a file's final newline,
    /// is ignored). The error never repeats the text: it may be a mistyped key.
    pub fn from_hex(text: &str) -> Result<StoreKey, StoreError> {
        let text = text.trim();
        if text.len() != 2 * KEY_LEN {
            return Err(StoreError::InvalidStoreKey(format!(
                "a store key is {} hexadecimal characters, this one has {}",
                2 * KEY_LEN,
                text.chars().count()
            )));
        }
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        hex::decode_to_slice(text, bytes.as_mut_slice()).map_err(|_| {
            StoreError::InvalidStoreKey("a store key holds hexadecimal characters only".into())
        })?;
        Ok(StoreKey { bytes })
    }

    /// Reads a key file. The file must be private to its owner (no permission for group or
    /// others): a key readable by other users is refused rather than used.
    pub fn read_file(path: &Path) -> Result<StoreKey, StoreError> {
        let metadata = fs::metadata(path).map_err(StoreError::io(path))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = metadata.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(StoreError::KeyFileNotPrivate { path: path.to_owned(), mode });
            }
        }
        if !metadata.is_file() {
            return Err(StoreError::InvalidStoreKey(format!("{} is not a file", path.display())));
        }
        let text = Zeroizing::new(fs::read_to_string(path).map_err(StoreError::io(path))?);
        StoreKey::from_hex(&text).map_err(|error| match error {
            StoreError::InvalidStoreKey(reason) => {
                StoreError::InvalidStoreKey(format!("in {}: {reason}", path.display()))
            }
            other => other,
        })
    }

    /// Writes the key to a new file (mode 0600, refused if the file exists), as 64 hexadecimal
    /// characters and a newline, durably.
    pub fn write_new_file(&self, path: &Path) -> Result<(), StoreError> {
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(path).map_err(StoreError::io(path))?;
        let mut text = self.to_hex();
        text.push('\n');
        file.write_all(text.as_bytes()).and_then(|()| file.sync_all()).map_err(StoreError::io(path))?;
        match path.parent().filter(|parent| !parent.as_os_str().is_empty()) {
            Some(parent) => crate::vault::sync_dir(parent),
            None => crate::vault::sync_dir(Path::new(".")),
        }
    }

    /// The key configured for a store: `SENTINEL_STORE_KEY`, else `[store] key_file`, else
    /// none (a plain store). Both at once is an error: which one is meant is not obvious, and
    /// the wrong one would be refused by an encrypted store anyway.
    pub fn configured(settings: &StoreSettings) -> Result<Option<StoreKey>, StoreError> {
        let from_environment =
            std::env::var_os(STORE_KEY_ENV).map(|value| Zeroizing::new(value.into_encoded_bytes()));
        match (from_environment, &settings.key_file) {
            (Some(_), Some(key_file)) => Err(StoreError::StoreKeyConflict { key_file: key_file.clone() }),
            (Some(value), None) => {
                let text = std::str::from_utf8(&value).map_err(|_| {
                    StoreError::InvalidStoreKey(format!("{STORE_KEY_ENV} holds hexadecimal characters only"))
                })?;
                StoreKey::from_hex(text).map(Some).map_err(|error| match error {
                    StoreError::InvalidStoreKey(reason) => {
                        StoreError::InvalidStoreKey(format!("in {STORE_KEY_ENV}: {reason}"))
                    }
                    other => other,
                })
            }
            (None, Some(key_file)) => StoreKey::read_file(key_file).map(Some),
            (None, None) => Ok(None),
        }
    }

    /// The key as 64 lowercase hexadecimal characters, for `sentinel store keygen --print`.
    pub fn to_hex(&self) -> Zeroizing<String> {
        Zeroizing::new(hex::encode(self.bytes.as_slice()))
    }

    /// The key's public id in hexadecimal (16 characters): tells keys apart in messages, key
    /// files and vault headers. Derived one way from the key, so it reveals nothing of it.
    pub fn fingerprint(&self) -> String {
        hex::encode(self.key_id())
    }

    pub(crate) fn key_id(&self) -> [u8; KEY_ID_LEN] {
        let subkey = self.derive(KeyPurpose::KeyId);
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&subkey[..KEY_ID_LEN]);
        id
    }

    /// The subkey for `purpose`: HKDF-SHA256 (RFC 5869) of the key, with the purpose's label as
    /// info and no salt (the key is uniformly random already).
    pub(crate) fn derive(&self, purpose: KeyPurpose) -> Zeroizing<[u8; KEY_LEN]> {
        let pseudo_random_key = hkdf::Salt::new(hkdf::HKDF_SHA256, &[]).extract(self.bytes.as_slice());
        let mut subkey = Zeroizing::new([0u8; KEY_LEN]);
        let info = [purpose.label()];
        // HKDF-SHA256 can expand to 255 × 32 bytes: 32 always fits, so neither step can fail.
        pseudo_random_key
            .expand(&info, hkdf::HKDF_SHA256)
            .and_then(|material| material.fill(subkey.as_mut_slice()))
            .expect("32 bytes are within HKDF-SHA256's output limit");
        subkey
    }
}

impl PartialEq for StoreKey {
    /// Compares ids, not secrets: equal ids mean equal keys (a collision of 64-bit HKDF outputs
    /// between an operator's keys is not a concern), and no secret-dependent comparison runs.
    fn eq(&self, other: &StoreKey) -> bool {
        self.key_id() == other.key_id()
    }
}

impl Eq for StoreKey {}

impl fmt::Debug for StoreKey {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "StoreKey(fingerprint {})", self.fingerprint())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subkeys_differ_per_purpose_and_are_stable() {
        let key = StoreKey::from_hex(&"11".repeat(32)).unwrap();
        let purposes =
            [KeyPurpose::MalwareDatabase, KeyPurpose::NetworkDatabase, KeyPurpose::Vault, KeyPurpose::KeyId];
        let subkeys: Vec<_> = purposes.iter().map(|purpose| *key.derive(*purpose)).collect();
        for (index, subkey) in subkeys.iter().enumerate() {
            assert_ne!(subkey, &[0x11; 32], "a subkey is never the key itself");
            assert!(subkeys[index + 1..].iter().all(|other| other != subkey));
        }
        assert_eq!(*key.derive(KeyPurpose::Vault), subkeys[2]);
    }

    #[test]
    fn malformed_keys_are_refused_without_echoing_them() {
        for text in [String::new(), "abc".into(), "zz".repeat(32), "1".repeat(65)] {
            let error = StoreKey::from_hex(&text).unwrap_err();
            assert!(matches!(error, StoreError::InvalidStoreKey(_)), "{error}");
            assert!(text.len() < 4 || !error.to_string().contains(&text), "{error}");
        }
        assert!(StoreKey::from_hex(&format!("  {}\n", "Ab".repeat(32))).is_ok());
    }

    #[cfg(unix)]
    #[test]
    fn key_files_are_written_private_and_shared_ones_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.key");
        let key = StoreKey::generate().unwrap();
        key.write_new_file(&path).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(StoreKey::read_file(&path).unwrap(), key);
        assert!(key.write_new_file(&path).is_err(), "an existing key file is never overwritten");

        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        let error = StoreKey::read_file(&path).unwrap_err();
        assert!(matches!(error, StoreError::KeyFileNotPrivate { mode: 0o640, .. }), "{error}");
        assert!(!error.to_string().contains(key.to_hex().as_str()));
    }
}
