//! `[privacy]` settings: in which form IP addresses are stored, and where the key is.
//! Documented in `docs/security.md` ("Anonymised addresses").

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::key::PRIVACY_KEY_FILE;

/// The `[privacy]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct PrivacySettings {
    /// The form of the addresses that reach the store. Default `prefix-preserving`.
    pub ip_storage: IpStorage,
    /// The key file; default `DATA_DIR/privacy.key`, created (mode 0600) on first start.
    /// `SENTINEL_PRIVACY_KEY` (64 hex digits), when set, is the key instead.
    pub key_file: Option<PathBuf>,
}

impl PrivacySettings {
    /// The key file of a data directory.
    pub fn key_path(&self, data_dir: &Path) -> PathBuf {
        self.key_file.clone().unwrap_or_else(|| data_dir.join(PRIVACY_KEY_FILE))
    }
}

/// How addresses are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum IpStorage {
    /// Crypto-PAn pseudonyms: still addresses of the same family, and two addresses sharing an
    /// n-bit prefix share an n-bit prefix after, so subnets and scans stay visible. Reversible
    /// with the key (`sentinel privacy reveal`).
    #[default]
    PrefixPreserving,
    /// `h:` and 32 hex digits, a keyed HMAC-SHA256 of the address: equal addresses stay equal,
    /// nothing else is kept, and it cannot be reversed (only tested against a guessed address).
    Hmac,
    /// The addresses as observed.
    Clear,
}

impl IpStorage {
    pub fn as_str(self) -> &'static str {
        match self {
            IpStorage::PrefixPreserving => "prefix-preserving",
            IpStorage::Hmac => "hmac",
            IpStorage::Clear => "clear",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_reads_each_mode_and_refuses_unknown_keys_and_modes() {
        let read = |text: &str| toml::from_str::<PrivacySettings>(text);
        assert_eq!(read("").unwrap(), PrivacySettings::default());
        assert_eq!(read("").unwrap().ip_storage, IpStorage::PrefixPreserving);
        assert_eq!(read("ip_storage = \"hmac\"").unwrap().ip_storage, IpStorage::Hmac);
        assert_eq!(read("ip_storage = \"clear\"").unwrap().ip_storage, IpStorage::Clear);
        let settings = read("key_file = \"/etc/sentinel/privacy.key\"").unwrap();
        assert_eq!(settings.key_path(Path::new("/data")), Path::new("/etc/sentinel/privacy.key"));
        assert_eq!(PrivacySettings::default().key_path(Path::new("/data")), Path::new("/data/privacy.key"));
        assert!(read("ip_storage = \"hashed\"").is_err());
        assert!(read("ip-storage = \"hmac\"").is_err());
    }
}
