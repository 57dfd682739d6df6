//! The form of an agent's snapshot in the ingest journal, where it waits (durably) until its
//! results are stored, and from where it is replayed after a crash.
//!
//! Replay must compute the features the live path would have: features read the clear
//! addresses (`remote_is_loopback`, the windows per remote host), which a pseudonym would change.
//! And the journal is storage: it must not hold a clear address when `[privacy]` says otherwise.
//! So in both keyed modes an entry holds the Crypto-PAn pseudonyms of its addresses under the
//! privacy key (reversible, which an HMAC is not), and names that key by its id; replay reverses
//! them with the key and feeds the pipeline the snapshot as it arrived. In `clear` mode an entry
//! is the plain snapshot, as before pseudonymisation existed, and such an entry is read as clear
//! whatever the mode.
//!
//! An entry keeps what the pipeline reads — host, time, connections — and not the processes'
//! command lines or the interface counters, which nothing replays.

use std::net::IpAddr;

use sentinel_netmon::Snapshot;
use sentinel_privacy::Pseudonymiser;
use serde::{Deserialize, Serialize};

/// A journal entry whose addresses are pseudonyms.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PseudonymisedEntry {
    /// The id of the key that reverses the addresses ([`Pseudonymiser::key_id`]).
    address_key: String,
    snapshot: Snapshot,
}

/// What a journal entry is: one of the two forms.
#[derive(Deserialize)]
#[serde(untagged)]
enum Entry {
    Pseudonymised(PseudonymisedEntry),
    Clear(Snapshot),
}

/// Why a journalled entry cannot be replayed.
#[derive(Debug, thiserror::Error)]
pub(super) enum UnreadableEntry {
    #[error("not a journal entry: {0}")]
    Format(serde_json::Error),
    #[error(
        "its addresses are pseudonyms under the privacy key {0}, not the key in use, and cannot be restored"
    )]
    OtherKey(String),
}

/// The journal entry of `snapshot`.
pub(super) fn entry(addresses: &Pseudonymiser, snapshot: &Snapshot) -> Result<Vec<u8>, serde_json::Error> {
    let mut kept = Snapshot {
        schema_version: snapshot.schema_version,
        host: snapshot.host.clone(),
        timestamp: snapshot.timestamp,
        connections: snapshot.connections.clone(),
        interfaces: Vec::new(),
        processes: Vec::new(),
        process_info: Vec::new(),
    };
    let Some(address_key) = addresses.key_id() else { return serde_json::to_vec(&kept) };
    map_addresses(&mut kept, |address| addresses.prefix_preserving(address));
    serde_json::to_vec(&PseudonymisedEntry { address_key: address_key.to_owned(), snapshot: kept })
}

/// The snapshot of a journal entry, with its clear addresses.
pub(super) fn read(addresses: &Pseudonymiser, entry: &[u8]) -> Result<Snapshot, UnreadableEntry> {
    match serde_json::from_slice(entry).map_err(UnreadableEntry::Format)? {
        Entry::Clear(snapshot) => Ok(snapshot),
        Entry::Pseudonymised(PseudonymisedEntry { address_key, mut snapshot }) => {
            if addresses.key_id() != Some(address_key.as_str()) {
                return Err(UnreadableEntry::OtherKey(address_key));
            }
            map_addresses(&mut snapshot, |address| addresses.reveal(address));
            Ok(snapshot)
        }
    }
}

/// Replaces each connection's addresses by `map`'s (kept when it gives none).
fn map_addresses(snapshot: &mut Snapshot, map: impl Fn(IpAddr) -> Option<IpAddr>) {
    for connection in &mut snapshot.connections {
        connection.local_ip = map(connection.local_ip).unwrap_or(connection.local_ip);
        connection.remote_ip = map(connection.remote_ip).unwrap_or(connection.remote_ip);
    }
}

#[cfg(test)]
mod tests {
    use sentinel_privacy::{IpStorage, PrivacyKey};

    use super::*;

    fn snapshot() -> Snapshot {
        let at = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000);
        let record: sentinel_netmon::ConnectionRecord =
            serde_json::from_value(sentinel_testkit::connection_records::connection_record(
                "laptop-7", "curl", 443, 40_000, 10, 20, at,
            ))
            .unwrap();
        let mut loopback = record.clone();
        loopback.remote_ip = "127.0.0.1".parse().unwrap();
        Snapshot {
            schema_version: sentinel_netmon::SCHEMA_VERSION,
            host: "laptop-7".to_owned(),
            timestamp: record.timestamp,
            connections: vec![record, loopback],
            interfaces: Vec::new(),
            processes: Vec::new(),
            process_info: Vec::new(),
        }
    }

    #[test]
    fn a_keyed_entry_holds_no_clear_address_and_reads_back_clear() {
        let snapshot = snapshot();
        for storage in [IpStorage::PrefixPreserving, IpStorage::Hmac] {
            let addresses = Pseudonymiser::new(storage, &PrivacyKey::from_bytes([1; 32])).unwrap();
            let bytes = entry(&addresses, &snapshot).unwrap();
            let text = String::from_utf8(bytes.clone()).unwrap();
            for connection in &snapshot.connections {
                for address in [connection.local_ip, connection.remote_ip] {
                    assert!(!text.contains(&format!("\"{address}\"")), "{address} in {text}");
                }
            }
            assert_eq!(read(&addresses, &bytes).unwrap(), snapshot, "replay sees the addresses as they came");

            let other = Pseudonymiser::new(storage, &PrivacyKey::from_bytes([2; 32])).unwrap();
            assert!(matches!(read(&other, &bytes), Err(UnreadableEntry::OtherKey(_))));
            assert!(matches!(read(&Pseudonymiser::clear(), &bytes), Err(UnreadableEntry::OtherKey(_))));
        }
    }

    #[test]
    fn a_clear_entry_is_the_plain_snapshot_read_in_any_mode() {
        let snapshot = snapshot();
        let bytes = entry(&Pseudonymiser::clear(), &snapshot).unwrap();
        assert_eq!(serde_json::from_slice::<Snapshot>(&bytes).unwrap(), snapshot);
        let keyed =
            Pseudonymiser::new(IpStorage::PrefixPreserving, &PrivacyKey::from_bytes([1; 32])).unwrap();
        assert_eq!(read(&keyed, &bytes).unwrap(), snapshot, "an entry journalled before pseudonymisation");
        assert!(matches!(read(&keyed, b"{\"host\": 3}"), Err(UnreadableEntry::Format(_))));
    }
}
