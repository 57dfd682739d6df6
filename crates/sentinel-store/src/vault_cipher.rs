//! The encrypted form of a vault file (format version 2, or 4 for masked content), written when
//! the store has a key:
//!
//! ```text
//! magic (16) | format version 2 or 4 (u32 LE) | key id (8) | nonce (12) | AES-256-GCM ciphertext + tag (16)
//! ```
//!
//! The plaintext is what an unencrypted file holds after its header: the original size (u64 LE)
//! and the content (the zstd stream, or the masked bytes), so compression happens before
//! encryption (ciphertext does not compress).
//! The associated data is the header and the sample's SHA-256: a file moved to another sample's
//! name, or with any header byte changed, fails authentication instead of being served. The key
//! is the vault's own subkey of the store key; the key id in the header (the store key's
//! fingerprint) says which key a file is under, so a `rekey` that was interrupted knows which
//! files it has done. The nonce is random (96 bits) for each file written.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};

use crate::StoreError;
use crate::sample_hash::SampleHash;
use crate::store_key::{KEY_ID_LEN, KeyPurpose, StoreKey};

/// Bytes of the AES-GCM tag at the end of an encrypted file.
const TAG_LEN: usize = 16;

/// Encrypts and decrypts vault files under one store key.
pub(crate) struct VaultCipher {
    key: LessSafeKey,
    key_id: [u8; KEY_ID_LEN],
}

impl VaultCipher {
    pub(crate) fn new(store_key: &StoreKey) -> VaultCipher {
        let subkey = store_key.derive(KeyPurpose::Vault);
        let key = UnboundKey::new(&AES_256_GCM, subkey.as_slice())
            .expect("a derived subkey has AES-256's key length, 32 bytes");
        VaultCipher { key: LessSafeKey::new(key), key_id: store_key.key_id() }
    }

    pub(crate) fn key_id(&self) -> [u8; KEY_ID_LEN] {
        self.key_id
    }

    /// The whole encrypted file for `plaintext` (size and content): `magic` then the header
    /// described in the module's documentation (with `version`, which says the codec), then the
    /// ciphertext and tag.
    pub(crate) fn seal(
        &self,
        magic: &[u8],
        version: u32,
        hash: &SampleHash,
        plaintext: Vec<u8>,
    ) -> Result<Vec<u8>, StoreError> {
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce)
            .map_err(|_| StoreError::Encryption("the system random number generator failed"))?;
        let mut file = Vec::with_capacity(header_len(magic) + plaintext.len() + TAG_LEN);
        file.extend_from_slice(magic);
        file.extend_from_slice(&version.to_le_bytes());
        file.extend_from_slice(&self.key_id);
        file.extend_from_slice(&nonce);
        let associated_data = associated_data(&file, hash);
        let mut sealed = plaintext;
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&associated_data),
                &mut sealed,
            )
            .map_err(|_| StoreError::Encryption("AES-256-GCM refused to encrypt a vault file"))?;
        file.extend_from_slice(&sealed);
        Ok(file)
    }

    /// The plaintext of an encrypted file whose magic and version the caller has checked, or why
    /// not: another key, a truncated file, or a failed authentication (tampering, corruption, or
    /// a file that is not this sample's).
    pub(crate) fn open(&self, magic: &[u8], contents: &[u8], hash: &SampleHash) -> Result<Vec<u8>, String> {
        let header_len = header_len(magic);
        if contents.len() < header_len + TAG_LEN {
            return Err(format!("{} bytes, shorter than an encrypted file's header and tag", contents.len()));
        }
        let (header, sealed) = contents.split_at(header_len);
        let file_key_id = encrypted_key_id(magic, contents).ok_or("truncated header")?;
        if file_key_id != self.key_id {
            return Err(format!(
                "encrypted under store key {}, not under the configured key {}",
                hex::encode(file_key_id),
                hex::encode(self.key_id)
            ));
        }
        let nonce = Nonce::try_assume_unique_for_key(&header[header_len - NONCE_LEN..])
            .map_err(|_| "truncated header".to_string())?;
        let associated_data = associated_data(header, hash);
        let mut plaintext = sealed.to_vec();
        let opened =
            self.key.open_in_place(nonce, Aad::from(&associated_data), &mut plaintext).map_err(|_| {
                "authentication failed: the file was altered, or is not this sample's".to_string()
            })?;
        let length = opened.len();
        plaintext.truncate(length);
        Ok(plaintext)
    }
}

/// The key id in an encrypted file's header, if `contents` is long enough to hold one.
pub(crate) fn encrypted_key_id(magic: &[u8], contents: &[u8]) -> Option<[u8; KEY_ID_LEN]> {
    let start = magic.len() + 4;
    contents.get(start..start + KEY_ID_LEN)?.try_into().ok()
}

fn header_len(magic: &[u8]) -> usize {
    magic.len() + 4 + KEY_ID_LEN + NONCE_LEN
}

fn associated_data(header: &[u8], hash: &SampleHash) -> Vec<u8> {
    let mut data = Vec::with_capacity(header.len() + hash.raw().len());
    data.extend_from_slice(header);
    data.extend_from_slice(hash.raw());
    data
}
