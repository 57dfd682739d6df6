//! Pseudonymised IP addresses: what `[privacy] ip_storage` turns an address into before it
//! reaches the store (the network tables, the ingest journal, the malware verdicts' `client`)
//! or a caller without the `network:pii` scope.
//!
//! - [`Pseudonymiser`]: the mode and the key; [`Pseudonymiser::display`] gives an address's
//!   stored form, [`Pseudonymiser::reveal`] undoes a prefix-preserving pseudonym.
//! - Prefix-preserving mode is Crypto-PAn (`crypto_pan`), AES-128 as the reference
//!   implementation, from aws-lc-rs; `hmac` mode is HMAC-SHA256, from aws-lc-rs too.
//! - [`PrivacyKey`]: 256 bits from `SENTINEL_PRIVACY_KEY` or a key file of the data directory.
//! - [`PrivacySettings`]: the `[privacy]` table.

mod cache;
mod crypto_pan;
mod key;
mod pseudonymiser;
mod settings;

use std::path::PathBuf;

pub use key::{PRIVACY_KEY_ENV, PRIVACY_KEY_FILE, PrivacyKey};
pub use pseudonymiser::{HMAC_PREFIX, Pseudonymiser};
pub use settings::{IpStorage, PrivacySettings};

/// Why the key could not be had.
#[derive(Debug, thiserror::Error)]
pub enum PrivacyError {
    #[error("the privacy key file {path}: {reason}")]
    KeyFile { path: PathBuf, reason: String },
    #[error("{} must be 64 hex digits (256 bits)", key::PRIVACY_KEY_ENV)]
    EnvKey,
    #[error("the system's random number generator failed")]
    Random,
    #[error("the AES key could not be set up")]
    Cipher,
}
