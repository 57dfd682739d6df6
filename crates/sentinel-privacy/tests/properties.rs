//! Properties of the prefix-preserving mode over random keys and addresses (a seeded generator,
//! so a failure repeats): the shared prefix of two addresses is exactly the shared prefix of
//! their pseudonyms, the family is kept, and the key reverses every pseudonym.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use sentinel_privacy::{IpStorage, PrivacyKey, Pseudonymiser};

fn pseudonymisers(rng: &mut Xoshiro256PlusPlus) -> Vec<Pseudonymiser> {
    (0..4)
        .map(|_| {
            Pseudonymiser::new(IpStorage::PrefixPreserving, &PrivacyKey::from_bytes(rng.random())).unwrap()
        })
        .collect()
}

/// The bits of an address, aligned to the most significant bit, and its width.
fn bits(address: IpAddr) -> (u128, u32) {
    match address {
        IpAddr::V4(v4) => (u128::from(u32::from(v4)) << 96, 32),
        IpAddr::V6(v6) => (u128::from(v6), 128),
    }
}

fn shared_prefix(one: IpAddr, other: IpAddr) -> u32 {
    let ((one, width), (other, _)) = (bits(one), bits(other));
    (one ^ other).leading_zeros().min(width)
}

/// An address sharing exactly `shared` leading bits with `address` (all of them when `shared`
/// is the width).
fn sibling(address: IpAddr, shared: u32, rng: &mut Xoshiro256PlusPlus) -> IpAddr {
    let (value, width) = bits(address);
    let mut other = value;
    if shared < width {
        let flipped = 1u128 << (127 - shared);
        let below = flipped - 1;
        // The address's own bits only: an IPv4 address is the top 32 of the 128.
        let within = u128::MAX.checked_shr(width).map_or(u128::MAX, |outside| !outside);
        let tail = rng.random::<u128>() & below & within;
        other = (value & !below & !flipped) | (!value & flipped) | tail;
    }
    match address {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from((other >> 96) as u32)),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(other)),
    }
}

fn random_address(rng: &mut Xoshiro256PlusPlus) -> IpAddr {
    if rng.random_bool(0.5) {
        IpAddr::V4(Ipv4Addr::from(rng.random::<u32>()))
    } else {
        // Not IPv4-mapped (those are pseudonymised as IPv4): a random top half avoids ::ffff:0:0/96.
        IpAddr::V6(Ipv6Addr::from(rng.random::<u128>() | (1 << 127)))
    }
}

#[test]
fn two_addresses_sharing_exactly_n_bits_have_pseudonyms_sharing_exactly_n_bits() {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(13);
    for pseudonymiser in pseudonymisers(&mut rng) {
        for _ in 0..500 {
            let address = random_address(&mut rng);
            let width = bits(address).1;
            let shared = rng.random_range(0..=width);
            let other = sibling(address, shared, &mut rng);
            assert_eq!(shared_prefix(address, other), shared, "{address} {other}");
            let (one, two) = (
                pseudonymiser.prefix_preserving(address).unwrap(),
                pseudonymiser.prefix_preserving(other).unwrap(),
            );
            assert_eq!(shared_prefix(one, two), shared, "{address} {other} -> {one} {two}");
        }
    }
}

#[test]
fn the_family_is_kept_and_the_key_reverses_every_pseudonym() {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(7);
    for pseudonymiser in pseudonymisers(&mut rng) {
        for _ in 0..500 {
            let address = random_address(&mut rng);
            let pseudonym = pseudonymiser.prefix_preserving(address).unwrap();
            assert_eq!(pseudonym.is_ipv4(), address.is_ipv4());
            assert_eq!(pseudonymiser.reveal(pseudonym), Some(address));
            assert_eq!(pseudonymiser.display(address), pseudonym.to_string());
            // A bijection: whatever is revealed pseudonymises back.
            let any = random_address(&mut rng);
            assert_eq!(pseudonymiser.prefix_preserving(pseudonymiser.reveal(any).unwrap()), Some(any));
        }
    }
}

#[test]
fn a_subnet_s_addresses_stay_in_one_pseudonymised_subnet() {
    let pseudonymiser =
        Pseudonymiser::new(IpStorage::PrefixPreserving, &PrivacyKey::from_bytes([42; 32])).unwrap();
    let subnet: Vec<IpAddr> =
        (1..=254u8).map(|host| pseudonymiser.prefix_preserving([10, 20, 30, host].into()).unwrap()).collect();
    let first = match subnet[0] {
        IpAddr::V4(v4) => v4.octets(),
        IpAddr::V6(_) => unreachable!("IPv4 stays IPv4"),
    };
    for address in &subnet {
        assert!(matches!(address, IpAddr::V4(v4) if v4.octets()[..3] == first[..3]), "{address}");
    }
    let distinct: std::collections::HashSet<&IpAddr> = subnet.iter().collect();
    assert_eq!(distinct.len(), subnet.len(), "distinct hosts keep distinct pseudonyms");
}
