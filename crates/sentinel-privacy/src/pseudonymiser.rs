//! [`Pseudonymiser`]: the one object the rest of the process asks for the form of an address,
//! as `[privacy] ip_storage` says.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use aws_lc_rs::hmac;

use crate::PrivacyError;
use crate::cache::AddressCache;
use crate::crypto_pan::CryptoPan;
use crate::key::PrivacyKey;
use crate::settings::{IpStorage, PrivacySettings};

/// The prefix of `hmac` pseudonyms, which are not addresses.
pub const HMAC_PREFIX: &str = "h:";

/// Bytes of the HMAC-SHA256 kept in an `hmac` pseudonym (32 hex digits): collisions stay out of
/// reach (2^64 addresses for an even chance), the text stays short.
const HMAC_BYTES: usize = 16;

/// Turns addresses into their stored form. Cheap to clone (an `Arc`); share one per process.
#[derive(Clone)]
pub struct Pseudonymiser {
    inner: Arc<Inner>,
}

struct Inner {
    storage: IpStorage,
    /// Absent in `clear` mode, which needs no key.
    keyed: Option<Keyed>,
}

struct Keyed {
    crypto_pan: CryptoPan,
    hmac: hmac::Key,
    /// Names the key without revealing it, for records that must be read back with the same key.
    key_id: String,
    prefix_preserving: AddressCache<IpAddr>,
    hashed: AddressCache<[u8; HMAC_BYTES]>,
}

impl Pseudonymiser {
    /// Addresses stay as they are (`ip_storage = "clear"`).
    pub fn clear() -> Pseudonymiser {
        Pseudonymiser { inner: Arc::new(Inner { storage: IpStorage::Clear, keyed: None }) }
    }

    /// A pseudonymiser of mode `storage` under `key` (unused in `clear` mode).
    pub fn new(storage: IpStorage, key: &PrivacyKey) -> Result<Pseudonymiser, PrivacyError> {
        if storage == IpStorage::Clear {
            return Ok(Pseudonymiser::clear());
        }
        let hmac = hmac::Key::new(hmac::HMAC_SHA256, key.bytes());
        let key_id = hex::encode(&hmac::sign(&hmac, b"sentinel privacy key id").as_ref()[..8]);
        let keyed = Keyed {
            crypto_pan: CryptoPan::new(key.bytes())?,
            hmac,
            key_id,
            prefix_preserving: AddressCache::new(),
            hashed: AddressCache::new(),
        };
        Ok(Pseudonymiser { inner: Arc::new(Inner { storage, keyed: Some(keyed) }) })
    }

    /// The pseudonymiser of `[privacy]` for `data_dir`: in a keyed mode the key comes from
    /// `SENTINEL_PRIVACY_KEY`, else from the key file, which is created on first start.
    pub fn open(settings: &PrivacySettings, data_dir: &Path) -> Result<Pseudonymiser, PrivacyError> {
        if settings.ip_storage == IpStorage::Clear {
            return Ok(Pseudonymiser::clear());
        }
        let key = match PrivacyKey::from_env()? {
            Some(key) => key,
            None => PrivacyKey::load_or_create(&settings.key_path(data_dir))?,
        };
        Pseudonymiser::new(settings.ip_storage, &key)
    }

    /// The mode.
    pub fn storage(&self) -> IpStorage {
        self.inner.storage
    }

    /// Whether addresses are stored and shown as they are.
    pub fn is_clear(&self) -> bool {
        self.inner.storage == IpStorage::Clear
    }

    /// `address` in the form the store keeps and callers without `network:pii` see: its
    /// Crypto-PAn pseudonym, `h:` and 32 hex digits, or the address itself.
    pub fn display(&self, address: IpAddr) -> String {
        match (self.inner.storage, &self.inner.keyed) {
            (IpStorage::Hmac, Some(keyed)) => {
                let digest = keyed.hashed.get_or_compute(address, || keyed.hash(address));
                format!("{HMAC_PREFIX}{}", hex::encode(digest))
            }
            (IpStorage::PrefixPreserving, Some(keyed)) => keyed.pseudonymise(address).to_string(),
            _ => address.to_string(),
        }
    }

    /// `address:port` with the address as [`Pseudonymiser::display`] gives it (`[v6]:port` for
    /// IPv6 addresses, `h:…:port` for HMAC pseudonyms).
    pub fn display_socket(&self, address: IpAddr, port: u16) -> String {
        match (self.inner.storage, &self.inner.keyed) {
            (IpStorage::Hmac, Some(_)) => format!("{}:{port}", self.display(address)),
            (IpStorage::PrefixPreserving, Some(keyed)) => {
                SocketAddr::new(keyed.pseudonymise(address), port).to_string()
            }
            _ => SocketAddr::new(address, port).to_string(),
        }
    }

    /// The Crypto-PAn pseudonym of `address` whatever the mode, or `None` in `clear` mode: the
    /// reversible form of records that must be read back (the ingest journal).
    pub fn prefix_preserving(&self, address: IpAddr) -> Option<IpAddr> {
        self.inner.keyed.as_ref().map(|keyed| keyed.pseudonymise(address))
    }

    /// The address whose Crypto-PAn pseudonym is `pseudonym`, or `None` in `clear` mode.
    pub fn reveal(&self, pseudonym: IpAddr) -> Option<IpAddr> {
        self.inner.keyed.as_ref().map(|keyed| keyed.crypto_pan.reveal(pseudonym))
    }

    /// A short id of the key (16 hex digits of an HMAC under it), or `None` in `clear` mode: a
    /// reversible record names the key it needs.
    pub fn key_id(&self) -> Option<&str> {
        self.inner.keyed.as_ref().map(|keyed| keyed.key_id.as_str())
    }
}

impl Keyed {
    fn pseudonymise(&self, address: IpAddr) -> IpAddr {
        self.prefix_preserving.get_or_compute(address, || self.crypto_pan.pseudonymise(address))
    }

    /// The HMAC of the address's bytes: 4 for IPv4 (and IPv4-mapped IPv6, the same host), 16
    /// for IPv6, after a byte naming the family so that no IPv6 address shares an IPv4 input.
    fn hash(&self, address: IpAddr) -> [u8; HMAC_BYTES] {
        let mut context = hmac::Context::with_key(&self.hmac);
        match address.to_canonical() {
            IpAddr::V4(v4) => {
                context.update(&[4]);
                context.update(&v4.octets());
            }
            IpAddr::V6(v6) => {
                context.update(&[6]);
                context.update(&v6.octets());
            }
        }
        let mut digest = [0u8; HMAC_BYTES];
        digest.copy_from_slice(&context.sign().as_ref()[..HMAC_BYTES]);
        digest
    }
}

impl fmt::Debug for Pseudonymiser {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.debug_struct("Pseudonymiser").field("storage", &self.inner.storage).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> PrivacyKey {
        PrivacyKey::from_bytes(*b"0123456789abcdef0123456789abcdef")
    }

    #[test]
    fn each_mode_has_its_own_form() {
        let address: IpAddr = "192.0.2.17".parse().unwrap();
        let clear = Pseudonymiser::clear();
        assert_eq!(clear.display(address), "192.0.2.17");
        assert_eq!(clear.display_socket(address, 443), "192.0.2.17:443");
        assert_eq!(
            (clear.prefix_preserving(address), clear.reveal(address), clear.key_id()),
            (None, None, None)
        );

        let prefix = Pseudonymiser::new(IpStorage::PrefixPreserving, &key()).unwrap();
        let pseudonym: IpAddr = prefix.display(address).parse().expect("an IPv4 address");
        assert!(pseudonym.is_ipv4() && pseudonym != address);
        assert_eq!(prefix.display_socket(address, 443), format!("{pseudonym}:443"));
        assert_eq!(prefix.reveal(pseudonym), Some(address));
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert!(prefix.display_socket(v6, 80).starts_with('['));

        let hashed = Pseudonymiser::new(IpStorage::Hmac, &key()).unwrap();
        let text = hashed.display(address);
        assert!(text.starts_with(HMAC_PREFIX) && text.len() == 2 + 32, "{text}");
        assert!(text.parse::<IpAddr>().is_err(), "not an address");
        assert_eq!(hashed.display(address), text, "the same address, the same pseudonym");
        assert_eq!(hashed.display("::ffff:192.0.2.17".parse().unwrap()), text, "one host, one pseudonym");
        assert_ne!(hashed.display("192.0.2.18".parse().unwrap()), text);
        assert_eq!(hashed.display_socket(address, 22), format!("{text}:22"));
        assert_eq!(
            hashed.prefix_preserving(address),
            Some(pseudonym),
            "the journal's form under the same key"
        );
        assert_eq!(hashed.key_id(), prefix.key_id());
    }

    #[test]
    fn another_key_gives_other_pseudonyms_and_another_key_id() {
        let address: IpAddr = "198.51.100.4".parse().unwrap();
        let one = Pseudonymiser::new(IpStorage::PrefixPreserving, &key()).unwrap();
        let other =
            Pseudonymiser::new(IpStorage::PrefixPreserving, &PrivacyKey::from_bytes([9; 32])).unwrap();
        assert_ne!(one.display(address), other.display(address));
        assert_ne!(one.key_id(), other.key_id());
        assert_eq!(one.key_id().unwrap().len(), 16);
    }

    #[test]
    fn opening_a_data_directory_creates_its_key_once() {
        let dir = tempfile::tempdir().unwrap();
        let settings = PrivacySettings::default();
        let first = Pseudonymiser::open(&settings, dir.path()).unwrap();
        assert!(dir.path().join("privacy.key").exists());
        let again = Pseudonymiser::open(&settings, dir.path()).unwrap();
        let address: IpAddr = "203.0.113.9".parse().unwrap();
        assert_eq!(first.display(address), again.display(address));
        let clear = PrivacySettings { ip_storage: IpStorage::Clear, key_file: None };
        let empty = tempfile::tempdir().unwrap();
        assert!(Pseudonymiser::open(&clear, empty.path()).unwrap().is_clear());
        assert_eq!(std::fs::read_dir(empty.path()).unwrap().count(), 0, "clear mode needs no key");
    }
}
