//! The cost of a pseudonym per address, in each mode: every address new (the cache misses), then
//! a working set of a few thousand hosts seen again and again (the ingest path's usual case).
//!
//! `cargo run --release -p sentinel-privacy --example pseudonymise_speed`; a debug build prints
//! numbers only fit to check that it runs.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Instant;

use sentinel_privacy::{IpStorage, PrivacyKey, Pseudonymiser};

fn measure(label: &str, pseudonymiser: &Pseudonymiser, addresses: &[IpAddr]) {
    let start = Instant::now();
    for address in addresses {
        black_box(pseudonymiser.display(*address));
    }
    let nanos = start.elapsed().as_nanos() as f64 / addresses.len() as f64;
    println!("{label:<44} {nanos:>9.0} ns/address");
}

fn main() {
    let key = PrivacyKey::from_bytes([0x5a; 32]);
    // A multiplicative sequence: distinct, spread over the whole space, no generator needed.
    let fresh_v4: Vec<IpAddr> =
        (0..20_000u32).map(|n| IpAddr::V4(Ipv4Addr::from(n.wrapping_mul(2_654_435_761)))).collect();
    let fresh_v6: Vec<IpAddr> = (0..5_000u128)
        .map(|n| {
            IpAddr::V6(Ipv6Addr::from((n.wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835)) | 1 << 127))
        })
        .collect();
    let repeated: Vec<IpAddr> = (0..100_000usize).map(|n| fresh_v4[n % 2_000]).collect();
    for storage in [IpStorage::PrefixPreserving, IpStorage::Hmac, IpStorage::Clear] {
        let pseudonymiser = Pseudonymiser::new(storage, &key).unwrap();
        let mode = storage.as_str();
        measure(&format!("{mode}: IPv4, each new"), &pseudonymiser, &fresh_v4);
        measure(&format!("{mode}: IPv6, each new"), &pseudonymiser, &fresh_v6);
        measure(&format!("{mode}: IPv4, 2,000 hosts repeated (cached)"), &pseudonymiser, &repeated);
    }
}
