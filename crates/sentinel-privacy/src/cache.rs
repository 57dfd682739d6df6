//! A bounded cache of pseudonyms: a fixed array of slots, each address in the one slot its hash
//! picks, replacing whatever was there.
//!
//! A pseudonym costs 32 AES blocks (IPv4) or 128 (IPv6), or one HMAC; the addresses of a
//! network repeat (the same hosts, servers and gateways), so most are found here. The memory is
//! fixed whatever the traffic: an address stream that never repeats only evicts, and costs the
//! computation. Each slot has its own lock, so threads contend only on the same slot. The hash
//! is seeded per process, so that no one can choose addresses that fall in one slot.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};

/// Slots of a cache: a few hundred kilobytes at most.
pub(crate) const CACHE_SLOTS: usize = 4096;

/// One slot: the address it holds, with its value.
type Slot<V> = Mutex<Option<(IpAddr, V)>>;

pub(crate) struct AddressCache<V> {
    slots: Box<[Slot<V>]>,
    hasher: RandomState,
}

impl<V: Copy> AddressCache<V> {
    pub(crate) fn new() -> AddressCache<V> {
        AddressCache {
            slots: (0..CACHE_SLOTS).map(|_| Mutex::new(None)).collect(),
            hasher: RandomState::new(),
        }
    }

    /// The value of `address`, computed by `compute` when it is not cached.
    pub(crate) fn get_or_compute(&self, address: IpAddr, compute: impl FnOnce() -> V) -> V {
        let slot = &self.slots[(self.hasher.hash_one(address) as usize) % self.slots.len()];
        // A slot holds a plain value that a panic cannot leave half-written.
        if let Some((cached, value)) = *slot.lock().unwrap_or_else(PoisonError::into_inner)
            && cached == address
        {
            return value;
        }
        // Computed outside the lock: another thread may compute the same value meanwhile, which
        // costs time, never correctness.
        let value = compute();
        *slot.lock().unwrap_or_else(PoisonError::into_inner) = Some((address, value));
        value
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::net::Ipv4Addr;

    use super::*;

    #[test]
    fn a_cached_address_is_not_computed_again_and_the_cache_stays_bounded() {
        let cache = AddressCache::<u32>::new();
        let computed = Cell::new(0);
        let value_of = |address: u32| {
            cache.get_or_compute(IpAddr::V4(Ipv4Addr::from(address)), || {
                computed.set(computed.get() + 1);
                address.wrapping_mul(3)
            })
        };
        assert_eq!(value_of(7), 21);
        assert_eq!(value_of(7), 21);
        assert_eq!(computed.get(), 1);
        for address in 0..100_000u32 {
            assert_eq!(
                value_of(address),
                address.wrapping_mul(3),
                "an evicted value is computed again, right"
            );
        }
        assert_eq!(cache.slots.len(), CACHE_SLOTS);
    }
}
