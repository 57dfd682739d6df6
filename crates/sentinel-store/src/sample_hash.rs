//! SHA-256 identifiers of samples: the one place that validates and normalises the hashes that
//! arrive from the network, so every table and vault path uses the same lowercase form.

use sha2::{Digest, Sha256};

use crate::StoreError;

/// A SHA-256, kept both as 64 lowercase hexadecimal characters and as its 32 raw bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct SampleHash {
    text: String,
    raw: [u8; 32],
}

impl SampleHash {
    /// Accepts exactly 64 hexadecimal characters in either case.
    pub(crate) fn parse(text: &str) -> Result<SampleHash, StoreError> {
        let mut raw = [0u8; 32];
        match hex::decode_to_slice(text, &mut raw) {
            Ok(()) => Ok(SampleHash { text: text.to_ascii_lowercase(), raw }),
            Err(_) => {
                // Debug-escape and truncate: the text is attacker-controlled and ends up in logs.
                let preview: String = text.chars().take(80).collect();
                Err(StoreError::InvalidSha256(format!("{preview:?} ({} bytes)", text.len())))
            }
        }
    }

    /// The hash of these raw bytes (as read back from a file the store wrote).
    pub(crate) fn from_raw(raw: [u8; 32]) -> SampleHash {
        SampleHash { text: hex::encode(raw), raw }
    }

    pub(crate) fn of(bytes: &[u8]) -> SampleHash {
        let raw: [u8; 32] = Sha256::digest(bytes).into();
        SampleHash { text: hex::encode(raw), raw }
    }

    /// Parses `claimed` and checks that `bytes` hash to it.
    pub(crate) fn verify(claimed: &str, bytes: &[u8]) -> Result<SampleHash, StoreError> {
        SampleHash::of(bytes).matches(claimed)
    }

    /// Parses `claimed` and checks that it is this hash.
    pub(crate) fn matches(self, claimed: &str) -> Result<SampleHash, StoreError> {
        let claimed = SampleHash::parse(claimed)?;
        if self == claimed {
            Ok(claimed)
        } else {
            Err(StoreError::HashMismatch { claimed: claimed.text, actual: self.text })
        }
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.text
    }

    pub(crate) fn raw(&self) -> &[u8; 32] {
        &self.raw
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parse_normalises_case_and_rejects_malformed() {
        assert_eq!(SampleHash::parse(&EMPTY.to_uppercase()).unwrap().as_str(), EMPTY);
        for bad in
            ["", "abc", &EMPTY[..63], &format!("{EMPTY}0"), &EMPTY.replace('e', "g"), "é".repeat(32).as_str()]
        {
            assert!(matches!(SampleHash::parse(bad), Err(StoreError::InvalidSha256(_))), "{bad:?}");
        }
    }

    #[test]
    fn verify_detects_mismatch() {
        assert!(SampleHash::verify(EMPTY, b"").is_ok());
        assert!(matches!(SampleHash::verify(EMPTY, b"x"), Err(StoreError::HashMismatch { .. })));
    }
}
