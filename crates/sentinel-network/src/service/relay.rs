//! The form of a result relayed between replicas on the broker's results subject (scale-out
//! mode): a scoring worker publishes it, every front end turns it back into the result its
//! WebSocket clients and recent list see.
//!
//! The broker is outside the replica: as in the journal, a connection's addresses travel as
//! Crypto-PAn pseudonyms under the privacy key (reversible, so that a front end shows them in
//! clear to callers with `network:pii` and filters on them), named by the key's id; in `clear`
//! mode they travel clear.

use std::net::SocketAddr;

use sentinel_netmon::{ConnectionChange, Protocol, SocketState};
use sentinel_privacy::Pseudonymiser;
use serde::{Deserialize, Serialize};

use super::{ConnectionSummary, DetectionResult, Source};
use crate::model::Verdict;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RelayedResult {
    /// The id of the key under which `connection`'s addresses are pseudonyms; none: clear.
    address_key: Option<String>,
    id: Option<i64>,
    source: Source,
    observed_at: String,
    model_version: i64,
    connection: Option<RelayedConnection>,
    verdict: Verdict,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RelayedConnection {
    host: String,
    pid: Option<u32>,
    process_name: Option<String>,
    local: SocketAddr,
    remote: SocketAddr,
    protocol: Protocol,
    state: SocketState,
    change: Option<ConnectionChange>,
}

/// Why a relayed result cannot be shown.
#[derive(Debug, thiserror::Error)]
pub(super) enum UnreadableResult {
    #[error("not a relayed result: {0}")]
    Format(serde_json::Error),
    #[error("its addresses are pseudonyms under the privacy key {0}, not the key in use")]
    OtherKey(String),
}

/// The relayed form of `result`.
pub(super) fn encode(
    result: &DetectionResult,
    addresses: &Pseudonymiser,
) -> Result<Vec<u8>, serde_json::Error> {
    let address_key = addresses.key_id().map(str::to_owned);
    let hide = |address: SocketAddr| {
        SocketAddr::new(addresses.prefix_preserving(address.ip()).unwrap_or(address.ip()), address.port())
    };
    let connection = result.connection.as_ref().map(|connection| RelayedConnection {
        host: connection.host.clone(),
        pid: connection.pid,
        process_name: connection.process_name.clone(),
        local: hide(connection.local_address),
        remote: hide(connection.remote_address),
        protocol: connection.protocol,
        state: connection.state,
        change: connection.change,
    });
    serde_json::to_vec(&RelayedResult {
        address_key,
        id: result.id,
        source: result.source,
        observed_at: result.observed_at.clone(),
        model_version: result.model_version,
        connection,
        verdict: result.verdict.clone(),
    })
}

/// The result a relayed form stands for, with its clear addresses.
pub(super) fn decode(bytes: &[u8], addresses: &Pseudonymiser) -> Result<DetectionResult, UnreadableResult> {
    let relayed: RelayedResult = serde_json::from_slice(bytes).map_err(UnreadableResult::Format)?;
    if let Some(key) = &relayed.address_key
        && addresses.key_id() != Some(key.as_str())
    {
        return Err(UnreadableResult::OtherKey(key.clone()));
    }
    let reveal = |address: SocketAddr| match relayed.address_key {
        Some(_) => SocketAddr::new(addresses.reveal(address.ip()).unwrap_or(address.ip()), address.port()),
        None => address,
    };
    let connection = relayed.connection.map(|connection| {
        let (local_address, remote_address) = (reveal(connection.local), reveal(connection.remote));
        ConnectionSummary {
            host: connection.host,
            pid: connection.pid,
            process_name: connection.process_name,
            local: local_address.to_string(),
            remote: remote_address.to_string(),
            protocol: connection.protocol,
            state: connection.state,
            change: connection.change,
            local_address,
            remote_address,
        }
    });
    Ok(DetectionResult {
        id: relayed.id,
        source: relayed.source,
        observed_at: relayed.observed_at,
        model_version: relayed.model_version,
        connection,
        verdict: relayed.verdict,
    })
}

#[cfg(test)]
mod tests {
    use sentinel_privacy::{IpStorage, PrivacyKey};

    use super::*;
    use crate::model::ModelScore;

    fn result() -> DetectionResult {
        let (local, remote): (SocketAddr, SocketAddr) =
            ("10.1.2.3:40000".parse().unwrap(), "203.0.113.9:443".parse().unwrap());
        DetectionResult {
            id: Some(17),
            source: Source::Agent,
            observed_at: "2027-01-15T08:00:00.000000Z".into(),
            model_version: 3,
            connection: Some(ConnectionSummary {
                host: "laptop-7".into(),
                pid: Some(42),
                process_name: Some("curl".into()),
                local: local.to_string(),
                remote: remote.to_string(),
                protocol: Protocol::Tcp,
                state: SocketState::Established,
                change: Some(ConnectionChange::New),
                local_address: local,
                remote_address: remote,
            }),
            verdict: Verdict {
                models: vec![ModelScore {
                    model: "lof".into(),
                    score: 1.1,
                    threshold: 1.5,
                    is_anomaly: false,
                }],
                score: 0.9,
                threshold: 0.8,
                is_anomaly: true,
                confidence: 0.5,
                explanation: Vec::new(),
            },
        }
    }

    #[test]
    fn a_relayed_result_holds_no_clear_address_and_reads_back_as_it_was() {
        let addresses = Pseudonymiser::new(IpStorage::Hmac, &PrivacyKey::from_bytes([5; 32])).unwrap();
        let bytes = encode(&result(), &addresses).unwrap();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(!text.contains("10.1.2.3") && !text.contains("203.0.113.9"), "{text}");
        let back = decode(&bytes, &addresses).unwrap();
        assert_eq!(serde_json::to_value(&back).unwrap(), serde_json::to_value(result()).unwrap());
        let connection = back.connection.unwrap();
        assert_eq!(connection.remote_address, "203.0.113.9:443".parse().unwrap());

        let other = Pseudonymiser::new(IpStorage::Hmac, &PrivacyKey::from_bytes([6; 32])).unwrap();
        assert!(matches!(decode(&bytes, &other), Err(UnreadableResult::OtherKey(_))));
        assert!(matches!(decode(b"[1, 2]", &addresses), Err(UnreadableResult::Format(_))));
    }

    #[test]
    fn in_clear_mode_the_addresses_travel_clear() {
        let bytes = encode(&result(), &Pseudonymiser::clear()).unwrap();
        assert!(String::from_utf8_lossy(&bytes).contains("203.0.113.9:443"));
        let back = decode(&bytes, &Pseudonymiser::clear()).unwrap();
        assert_eq!(back.connection.unwrap().local, "10.1.2.3:40000");
    }
}
