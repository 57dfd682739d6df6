//! Golden files: a fixed key and a list of addresses against the pseudonyms expected.
//!
//! `crypto_pan_reference.txt` holds the vectors of Crypto-PAn's reference distribution, so the
//! prefix-preserving mode is the published algorithm, not merely stable. `hmac.txt` pins the
//! `hmac` form (family byte, 16 bytes of HMAC-SHA256, `h:` and hex): a change would make every
//! stored pseudonym unmatched by new ones, so it must be deliberate — rewrite the file with
//! `SENTINEL_BLESS_GOLDEN=1 cargo test -p sentinel-privacy --test golden` and say why.

use std::net::IpAddr;
use std::path::PathBuf;

use sentinel_privacy::{IpStorage, PrivacyKey, Pseudonymiser};

struct Golden {
    key: PrivacyKey,
    pairs: Vec<(String, String)>,
}

fn path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(name)
}

/// `key HEX` then `clear expected` lines; `#` starts a comment line.
fn read(name: &str) -> Golden {
    let text = std::fs::read_to_string(path(name)).unwrap();
    let mut key = None;
    let mut pairs = Vec::new();
    for line in text.lines().filter(|line| !line.trim().is_empty() && !line.starts_with('#')) {
        let (first, second) = line.split_once(' ').unwrap();
        match first {
            "key" => key = Some(PrivacyKey::from_hex(second).unwrap()),
            _ => pairs.push((first.to_owned(), second.trim().to_owned())),
        }
    }
    Golden { key: key.expect("a key line"), pairs }
}

#[test]
fn prefix_preserving_pseudonyms_are_crypto_pan_s_reference_vectors_and_reverse() {
    let golden = read("crypto_pan_reference.txt");
    assert!(golden.pairs.len() > 70);
    let pseudonymiser = Pseudonymiser::new(IpStorage::PrefixPreserving, &golden.key).unwrap();
    for (clear, expected) in &golden.pairs {
        let clear: IpAddr = clear.parse().unwrap();
        let expected: IpAddr = expected.parse().unwrap();
        assert_eq!(pseudonymiser.display(clear), expected.to_string(), "{clear}");
        assert_eq!(pseudonymiser.reveal(expected), Some(clear), "{expected}");
    }
}

#[test]
fn hmac_pseudonyms_are_those_of_the_golden_file() {
    let golden = read("hmac.txt");
    let pseudonymiser = Pseudonymiser::new(IpStorage::Hmac, &golden.key).unwrap();
    let computed: Vec<(String, String)> = golden
        .pairs
        .iter()
        .map(|(clear, _)| (clear.clone(), pseudonymiser.display(clear.parse().unwrap())))
        .collect();
    if std::env::var_os("SENTINEL_BLESS_GOLDEN").is_some() {
        let text = std::fs::read_to_string(path("hmac.txt")).unwrap();
        let header: String = text
            .lines()
            .filter(|line| line.starts_with('#') || line.starts_with("key "))
            .map(|line| format!("{line}\n"))
            .collect();
        let body: String =
            computed.iter().map(|(clear, pseudonym)| format!("{clear} {pseudonym}\n")).collect();
        std::fs::write(path("hmac.txt"), header + &body).unwrap();
        return;
    }
    assert_eq!(computed, golden.pairs);
}
