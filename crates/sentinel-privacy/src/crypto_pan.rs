//! Crypto-PAn (Xu, Fan, Ammar, Moon, 2002): a keyed, prefix-preserving bijection on addresses.
//!
//! Bit `i` of the output is bit `i` of the input XOR one bit of a pseudorandom function of the
//! input's first `i` bits, so two addresses that share exactly an `n`-bit prefix share exactly an
//! `n`-bit prefix after, and each output bit can be undone in order, knowing the bits undone
//! before it: the inverse exists for whoever holds the key. The function is AES-128 as in the
//! reference implementation: the first 16 bytes of the 32-byte key are the AES key, the last 16
//! encrypted under it are the pad that fills the block after the prefix. The outputs match the
//! reference distribution's sample trace (IPv4) and the usual 128-bit extension (IPv6).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use aws_lc_rs::cipher::{AES_128, EncryptingKey, UnboundCipherKey};

use crate::PrivacyError;

/// The keyed permutation. Cheap to share: the AES key schedule is computed once.
pub(crate) struct CryptoPan {
    cipher: EncryptingKey,
    /// The block's bits after the prefix.
    pad: u128,
}

impl CryptoPan {
    pub(crate) fn new(key: &[u8; 32]) -> Result<CryptoPan, PrivacyError> {
        let unbound = UnboundCipherKey::new(&AES_128, &key[..16]).map_err(|_| PrivacyError::Cipher)?;
        let cipher = EncryptingKey::ecb(unbound).map_err(|_| PrivacyError::Cipher)?;
        let mut pad = [0u8; 16];
        pad.copy_from_slice(&key[16..]);
        let mut crypto_pan = CryptoPan { cipher, pad: 0 };
        crypto_pan.pad = crypto_pan.encrypt(u128::from_be_bytes(pad));
        Ok(crypto_pan)
    }

    fn encrypt(&self, block: u128) -> u128 {
        let mut bytes = block.to_be_bytes();
        // ECB on exactly one block has no failure case (no IV, a whole block).
        self.cipher.encrypt(&mut bytes).expect("AES-128 ECB encrypts a whole block");
        u128::from_be_bytes(bytes)
    }

    /// The pseudorandom bit for position `position` given the address's first `position` bits
    /// (`prefix` is the address aligned to the most significant bit).
    fn flip(&self, prefix: u128, position: u32) -> u128 {
        let kept = prefix_mask(position);
        let block = (prefix & kept) | (self.pad & !kept);
        self.encrypt(block) >> 127
    }

    /// Pseudonymises the first `width` bits of `address` (aligned to the most significant bit).
    fn forward(&self, address: u128, width: u32) -> u128 {
        let mut flips = 0u128;
        for position in 0..width {
            flips |= self.flip(address, position) << (127 - position);
        }
        address ^ flips
    }

    /// Undoes [`CryptoPan::forward`]: each bit needs the clear bits before it, so in order.
    fn backward(&self, pseudonym: u128, width: u32) -> u128 {
        let mut clear = 0u128;
        for position in 0..width {
            let bit = ((pseudonym >> (127 - position)) & 1) ^ self.flip(clear, position);
            clear |= bit << (127 - position);
        }
        clear
    }

    /// The pseudonym of `address`: IPv4 stays IPv4, IPv6 stays IPv6, and an IPv4-mapped IPv6
    /// address is pseudonymised as its IPv4 address, then mapped again (so that a host has one
    /// pseudonym whichever form a socket table gives it).
    pub(crate) fn pseudonymise(&self, address: IpAddr) -> IpAddr {
        self.apply(address, CryptoPan::forward)
    }

    /// The address whose pseudonym is `pseudonym`.
    pub(crate) fn reveal(&self, pseudonym: IpAddr) -> IpAddr {
        self.apply(pseudonym, CryptoPan::backward)
    }

    fn apply(&self, address: IpAddr, map: fn(&CryptoPan, u128, u32) -> u128) -> IpAddr {
        let v4 = |v4: Ipv4Addr| {
            let bits = map(self, u128::from(u32::from(v4)) << 96, 32);
            Ipv4Addr::from((bits >> 96) as u32)
        };
        match address {
            IpAddr::V4(address) => IpAddr::V4(v4(address)),
            IpAddr::V6(address) => match address.to_ipv4_mapped() {
                Some(mapped) => IpAddr::V6(v4(mapped).to_ipv6_mapped()),
                None => IpAddr::V6(Ipv6Addr::from(map(self, u128::from(address), 128))),
            },
        }
    }
}

/// The `bits` most significant bits set.
fn prefix_mask(bits: u32) -> u128 {
    match bits {
        0 => 0,
        bits => u128::MAX << (128 - bits),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The key of the reference distribution's sample (`sample.cpp`).
    const REFERENCE_KEY: [u8; 32] = [
        21, 34, 23, 141, 51, 164, 207, 128, 19, 10, 91, 22, 73, 144, 125, 16, 216, 152, 143, 131, 121, 121,
        101, 39, 98, 87, 76, 45, 42, 132, 34, 2,
    ];

    #[test]
    fn the_first_reference_vectors_match_and_reverse() {
        let crypto_pan = CryptoPan::new(&REFERENCE_KEY).unwrap();
        for (clear, pseudonym) in
            [("128.11.68.132", "135.242.180.132"), ("2001:db8::1", "4401:2bc:603f:d91d:27f:ff8e:e6f1:dc1e")]
        {
            let (clear, pseudonym): (IpAddr, IpAddr) = (clear.parse().unwrap(), pseudonym.parse().unwrap());
            assert_eq!(crypto_pan.pseudonymise(clear), pseudonym);
            assert_eq!(crypto_pan.reveal(pseudonym), clear);
        }
    }

    #[test]
    fn a_mapped_address_is_pseudonymised_as_its_ipv4_address() {
        let crypto_pan = CryptoPan::new(&REFERENCE_KEY).unwrap();
        let mapped: IpAddr = "::ffff:128.11.68.132".parse().unwrap();
        assert_eq!(crypto_pan.pseudonymise(mapped), "::ffff:135.242.180.132".parse::<IpAddr>().unwrap());
        assert_eq!(crypto_pan.reveal(crypto_pan.pseudonymise(mapped)), mapped);
    }

    #[test]
    fn masks_keep_the_leading_bits() {
        assert_eq!(prefix_mask(0), 0);
        assert_eq!(prefix_mask(1), 1 << 127);
        assert_eq!(prefix_mask(128), u128::MAX);
    }
}
