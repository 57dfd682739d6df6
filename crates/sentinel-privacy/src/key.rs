//! The pseudonymisation key: 256 random bits, from the environment (`SENTINEL_PRIVACY_KEY`, 64
//! hex digits) or from a key file of the data directory, created on first start.
//!
//! The key file holds the 64 hex digits and a newline (the form the environment variable takes,
//! so that a backup can be handed to either), is created with mode 0600 and refused when others
//! may read it. It is written aside and linked into place, so a crash never leaves a truncated
//! key and two processes starting at once agree on one key. The key never appears in a message:
//! errors name the file, not what it holds.

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::PrivacyError;

/// The environment variable that gives the key instead of the key file (64 hex digits).
pub const PRIVACY_KEY_ENV: &str = "SENTINEL_PRIVACY_KEY";

/// The key file's name in the data directory, by default.
pub const PRIVACY_KEY_FILE: &str = "privacy.key";

/// The 256-bit key of the pseudonyms. Its `Debug` is redacted; it has no `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct PrivacyKey([u8; 32]);

impl PrivacyKey {
    /// A key from its bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> PrivacyKey {
        PrivacyKey(bytes)
    }

    /// A key from 64 hex digits (either case; surrounding white space ignored).
    pub fn from_hex(text: &str) -> Option<PrivacyKey> {
        let mut key = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut key).ok()?;
        Some(PrivacyKey(key))
    }

    /// A fresh random key.
    pub fn generate() -> Result<PrivacyKey, PrivacyError> {
        let mut key = [0u8; 32];
        aws_lc_rs::rand::fill(&mut key).map_err(|_| PrivacyError::Random)?;
        Ok(PrivacyKey(key))
    }

    pub(crate) fn bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The key of `SENTINEL_PRIVACY_KEY`, when it is set.
    pub fn from_env() -> Result<Option<PrivacyKey>, PrivacyError> {
        match std::env::var(PRIVACY_KEY_ENV) {
            Ok(text) => PrivacyKey::from_hex(&text).map(Some).ok_or(PrivacyError::EnvKey),
            Err(std::env::VarError::NotUnicode(_)) => Err(PrivacyError::EnvKey),
            Err(std::env::VarError::NotPresent) => Ok(None),
        }
    }

    /// The key in `path`, or a new one written there (mode 0600) when the file does not exist.
    pub fn load_or_create(path: &Path) -> Result<PrivacyKey, PrivacyError> {
        match fs::symlink_metadata(path) {
            Ok(_) => return PrivacyKey::load(path),
            Err(error) if error.kind() != io::ErrorKind::NotFound => return Err(key_file_error(path, error)),
            Err(_) => {}
        }
        let key = PrivacyKey::generate()?;
        let failed = |error: io::Error| key_file_error(path, error);
        let staging = path.with_extension(format!("{}.tmp", std::process::id()));
        let written = write_private(&staging, &key).and_then(|()| fs::hard_link(&staging, path));
        let _ = fs::remove_file(&staging);
        match written {
            Ok(()) => {
                if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
                    fs::File::open(dir).and_then(|dir| dir.sync_all()).map_err(failed)?;
                }
                Ok(key)
            }
            // Another process created it first: its key is the one.
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => PrivacyKey::load(path),
            Err(error) => Err(failed(error)),
        }
    }

    /// The key in `path`, which must exist, be private to its owner and hold 64 hex digits.
    pub fn load(path: &Path) -> Result<PrivacyKey, PrivacyError> {
        let text = fs::read_to_string(path).map_err(|error| key_file_error(path, error))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(path).map_err(|error| key_file_error(path, error))?.permissions().mode();
            if mode & 0o077 != 0 {
                return Err(PrivacyError::KeyFile {
                    path: path.to_owned(),
                    reason: format!("others may read it (mode {:o}): chmod 600 it", mode & 0o777),
                });
            }
        }
        PrivacyKey::from_hex(&text).ok_or_else(|| PrivacyError::KeyFile {
            path: path.to_owned(),
            reason: "it does not hold 64 hex digits".to_owned(),
        })
    }
}

impl fmt::Debug for PrivacyKey {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("PrivacyKey(<redacted>)")
    }
}

fn key_file_error(path: &Path, error: io::Error) -> PrivacyError {
    PrivacyError::KeyFile { path: PathBuf::from(path), reason: error.to_string() }
}

/// Writes the key's hex digits to a new file only its owner may read.
fn write_private(path: &Path, key: &PrivacyKey) -> io::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(format!("{}\n", hex::encode(key.0)).as_bytes())?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_file_is_created_private_once_then_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(PRIVACY_KEY_FILE);
        let created = PrivacyKey::load_or_create(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(text.trim().len(), 64, "64 hex digits");
        assert_eq!(PrivacyKey::load_or_create(&path).unwrap(), created, "the same key after a restart");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1, "no staging file left");
    }

    #[test]
    fn a_readable_or_malformed_key_file_is_refused_without_showing_its_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(PRIVACY_KEY_FILE);
        fs::write(&path, "secret-words-not-hex\n").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
            let error = PrivacyKey::load(&path).unwrap_err().to_string();
            assert!(error.contains("chmod 600"), "{error}");
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        }
        let error = PrivacyKey::load_or_create(&path).unwrap_err().to_string();
        assert!(error.contains("64 hex digits") && !error.contains("secret-words"), "{error}");
        assert_eq!(format!("{:?}", PrivacyKey::from_bytes([7; 32])), "PrivacyKey(<redacted>)");
    }

    #[test]
    fn hex_keys_need_exactly_64_digits() {
        assert!(PrivacyKey::from_hex(&"ab".repeat(32)).is_some());
        assert!(PrivacyKey::from_hex(&format!(" {}\n", "AB".repeat(32))).is_some());
        assert!(PrivacyKey::from_hex(&"ab".repeat(31)).is_none());
        assert!(PrivacyKey::from_hex(&"zz".repeat(32)).is_none());
    }
}
