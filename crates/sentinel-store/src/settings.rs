//! Operator settings of the store, read from the server's configuration file. Unknown keys are
//! rejected so that a misspelt retention setting fails loudly instead of keeping samples forever.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::StoreError;

/// How the store keeps samples. Every field has a default; see [`StoreSettings::default`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreSettings {
    /// Keep a defanged (compressed, non-executable) copy of every sample in the vault, so models
    /// can be retrained on it. When false only the hash, size and dates are recorded.
    /// Default: true.
    pub keep_samples: bool,

    /// Delete vault files of samples not seen for this long (`sample_retention = "90days"`,
    /// [`crate::Store::apply_retention`]); the database rows and verdicts are kept. `None` keeps
    /// files forever. Must be at least a day: use `keep_samples = false` to keep none.
    /// Default: `None`.
    #[serde(with = "humantime_serde")]
    pub sample_retention: Option<Duration>,

    /// Samples larger than this many bytes are recorded but their bytes are not kept in the vault.
    /// Default: 64 MiB.
    pub max_sample_size: u64,

    /// zstd level for vault files, 1 (fastest) to 19 (smallest). Default: 3.
    pub compression_level: i32,

    /// When vault files are compressed: in the background after the answer (a new sample's file
    /// is first written masked, uncompressed), or inline, before the answer. Either way the file
    /// is durable before the request is answered. Default: background.
    pub vault_compression: VaultCompression,

    /// Idle read-only database connections kept open for reuse. More concurrent readers than
    /// this still work; the extra connections are opened on demand and closed after use.
    /// Default: 4.
    pub read_connections: usize,

    /// How long a database call waits for a lock held by another process before failing.
    /// Default: 5 s.
    #[serde(with = "humantime_serde")]
    pub busy_timeout: Duration,

    /// File holding the store key (64 hexadecimal characters, mode 0600): the databases and the
    /// vault are then encrypted at rest. `SENTINEL_STORE_KEY` gives the key instead; setting
    /// both is an error. Default: none (a plain store).
    pub key_file: Option<PathBuf>,

    /// The PostgreSQL database holding the tables instead of the data directory's SQLite files
    /// (`postgres://user@host:5432/sentinel`, or libpq's `key=value` form), for replicas that
    /// share one store (docs/scale-out.md). `--store` and `SENTINEL_STORE_URL` give it too. The
    /// vault stays in the data directory. A URL may not carry a password — it would show in
    /// process listings and logs —: the password goes in `password_file`. Default: none (SQLite).
    pub url: Option<String>,

    /// File holding the PostgreSQL password (its first line), private to its owner (mode 0600).
    /// Default: none (the server needs no password, e.g. a peer or certificate login).
    pub password_file: Option<PathBuf>,
}

impl Default for StoreSettings {
    fn default() -> StoreSettings {
        StoreSettings {
            keep_samples: true,
            sample_retention: None,
            max_sample_size: 64 * 1024 * 1024,
            compression_level: 3,
            vault_compression: VaultCompression::Background,
            read_connections: 4,
            busy_timeout: Duration::from_secs(5),
            key_file: None,
            url: None,
            password_file: None,
        }
    }
}

/// When a new sample's vault file is compressed (`[store] vault_compression`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VaultCompression {
    /// The file is written masked (uncompressed, each byte XORed with the sample's SHA-256) and
    /// fsynced before the answer; a background thread then replaces it by its zstd form when
    /// that saves at least an eighth. A request waits for the write, not for zstd.
    Background,
    /// The file is written zstd-compressed before the answer, as Sentinel did before
    /// `vault_compression` existed: the request waits for zstd too.
    Inline,
}

impl VaultCompression {
    /// The setting's value in the configuration file.
    pub fn name(self) -> &'static str {
        match self {
            VaultCompression::Background => "background",
            VaultCompression::Inline => "inline",
        }
    }
}

impl StoreSettings {
    pub(crate) fn validate(&self) -> Result<(), StoreError> {
        let invalid = |reason: String| Err(StoreError::InvalidSettings(reason));
        if self.sample_retention.is_some_and(|retention| retention < Duration::from_secs(86_400)) {
            return invalid("sample_retention must be at least 1day (use keep_samples = false)".into());
        }
        if !(1..=19).contains(&self.compression_level) {
            return invalid(format!("compression_level {} is not in 1..=19", self.compression_level));
        }
        if self.password_file.is_some() && self.url.is_none() {
            return invalid("password_file is set but url is not: the password is PostgreSQL's".into());
        }
        Ok(())
    }
}
