//! Clients' VirusTotal API keys and the keyed hash that stands in for them.
//!
//! A key belongs to the client that sent it and pays that client's quota, so it
//! is only ever held in memory for the request that carries it: its `Debug` is
//! redacted, it has no `Display` or `Serialize`, and everything that must outlive
//! the request (rate-limiter state, per-key tiers in the settings, logs) uses its
//! [`KeyId`], an HMAC-SHA256 of the key under a server secret. Without the secret
//! a key id cannot be tested against guessed keys.

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::Path;

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

use crate::error::{SettingsError, VtError};

/// Longest key accepted. VirusTotal keys are 64 hex digits; the margin allows
/// other formats without letting a client send a header of arbitrary size.
const MAX_KEY_LEN: usize = 256;

/// Shortest server secret accepted for the key hash: 128 bits.
const MIN_SECRET_LEN: usize = 16;

/// A client's VirusTotal API key.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// Checks that `key` can be sent as an HTTP header: 1 to 256 printable ASCII
    /// characters without spaces. The error does not repeat the key.
    pub fn new(key: &str) -> Result<ApiKey, VtError> {
        if key.is_empty() || key.len() > MAX_KEY_LEN || !key.bytes().all(|byte| byte.is_ascii_graphic()) {
            return Err(VtError::InvalidKey);
        }
        Ok(ApiKey(key.to_owned()))
    }

    /// The key itself, for the `x-apikey` header and for redacting upstream text.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

/// The HMAC-SHA256 of an API key under the server secret: the identity of a key
/// wherever one must be remembered. Displayed as 64 lower-case hex digits, the
/// form used in the `key_tiers` setting.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId([u8; 32]);

impl KeyId {
    /// Parses the hex form (either case), as written in the settings.
    pub fn from_hex(text: &str) -> Option<KeyId> {
        let mut digest = [0u8; 32];
        hex::decode_to_slice(text, &mut digest).ok()?;
        Some(KeyId(digest))
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// Computes [`KeyId`]s with the server secret.
#[derive(Clone)]
pub struct KeyHasher {
    mac: Hmac<Sha256>,
}

impl KeyHasher {
    /// A hasher keyed with `secret`, at least 16 bytes (32 random bytes advised).
    /// The same secret must be used across restarts for `key_tiers` to match.
    pub fn new(secret: &[u8]) -> Result<KeyHasher, SettingsError> {
        if secret.len() < MIN_SECRET_LEN {
            return Err(SettingsError::new(format!(
                "the key-hash secret must be at least {MIN_SECRET_LEN} bytes"
            )));
        }
        let mac = Hmac::<Sha256>::new_from_slice(secret)
            .map_err(|_| SettingsError::new("the key-hash secret was refused".to_owned()))?;
        Ok(KeyHasher { mac })
    }

    /// The hasher keyed with the secret kept in `path`, creating that file on
    /// first use (32 random bytes, mode 0600) so that key ids, and with them
    /// `key_tiers`, stay the same across restarts. The file is written aside
    /// and linked into place, so a crash never leaves a truncated secret and
    /// two processes starting at once agree on one secret.
    pub fn load_or_create(path: &Path) -> Result<KeyHasher, SettingsError> {
        let failed = |error: io::Error| {
            SettingsError::new(format!("the key-hash secret file {}: {error}", path.display()))
        };
        match fs::read(path) {
            Ok(secret) => return KeyHasher::new(&secret),
            Err(error) if error.kind() != io::ErrorKind::NotFound => return Err(failed(error)),
            Err(_) => {}
        }
        let mut secret = [0u8; 32];
        rand::rng().fill_bytes(&mut secret);
        let staging = path.with_extension(format!("{}.tmp", std::process::id()));
        let written = write_private(&staging, &secret).and_then(|()| fs::hard_link(&staging, path));
        let _ = fs::remove_file(&staging);
        match written {
            Ok(()) => {
                if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
                    fs::File::open(dir).and_then(|dir| dir.sync_all()).map_err(failed)?;
                }
                KeyHasher::new(&secret)
            }
            // Another process created it first: use its secret.
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {
                KeyHasher::new(&fs::read(path).map_err(failed)?)
            }
            Err(error) => Err(failed(error)),
        }
    }

    /// The id of `key`.
    pub fn key_id(&self, key: &ApiKey) -> KeyId {
        let mut mac = self.mac.clone();
        mac.update(key.expose().as_bytes());
        KeyId(mac.finalize().into_bytes().into())
    }
}

/// Writes `bytes` to a new file readable by its owner only, durably.
fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

impl fmt::Debug for KeyHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyHasher(<secret>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_never_shows_the_key() {
        let key = ApiKey::new("0123456789abcdef-secret").unwrap();
        assert!(!format!("{key:?}").contains("secret"));
        let hasher = KeyHasher::new(b"a server secret of some length").unwrap();
        assert!(!format!("{hasher:?}").contains("server secret"));
    }

    #[test]
    fn keys_that_cannot_be_a_header_are_refused() {
        for bad in ["", "with space", "new\nline", "é", &"k".repeat(MAX_KEY_LEN + 1)] {
            assert!(matches!(ApiKey::new(bad), Err(VtError::InvalidKey)), "{bad:?}");
        }
    }

    #[test]
    fn the_secret_file_is_created_once_private_and_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key-secret");
        let key = ApiKey::new("key-a").unwrap();
        let first = KeyHasher::load_or_create(&path).unwrap().key_id(&key);
        assert_eq!(fs::read(&path).unwrap().len(), 32);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        assert_eq!(KeyHasher::load_or_create(&path).unwrap().key_id(&key), first, "stable across restarts");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1, "no staging file left behind");
        fs::write(&path, b"short").unwrap();
        assert!(KeyHasher::load_or_create(&path).is_err(), "a damaged secret is an error, not replaced");
    }

    #[test]
    fn key_ids_depend_on_key_and_secret_and_round_trip_through_hex() {
        let first = KeyHasher::new(&[1; 32]).unwrap();
        let second = KeyHasher::new(&[2; 32]).unwrap();
        let key = ApiKey::new("key-a").unwrap();
        let id = first.key_id(&key);
        assert_eq!(id, first.key_id(&ApiKey::new("key-a").unwrap()));
        assert_ne!(id, first.key_id(&ApiKey::new("key-b").unwrap()));
        assert_ne!(id, second.key_id(&key));
        assert_eq!(KeyId::from_hex(&id.to_string()), Some(id));
        assert_eq!(KeyId::from_hex(&id.to_string().to_uppercase()), Some(id));
        assert!(KeyHasher::new(&[0; 8]).is_err());
    }
}
