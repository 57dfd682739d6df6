//! What the service hands out and stores for each scored item: the result streamed on
//! `/ws/realtime` and returned by the API, and the store's rows made from it.
//!
//! Results keep clear addresses in memory; the rows get the stored form `[privacy]` says, and
//! a caller without `network:pii` gets a copy of a result with the same form
//! ([`DetectionResult::shown`]).

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::time::SystemTime;

use sentinel_netmon::{ConnectionChange, ConnectionRecord};
use sentinel_privacy::Pseudonymiser;
use sentinel_store::{ConnectionRow, PredictionRow, ScoredItem};
use serde::Serialize;

use crate::features::RawFeatures;
use crate::model::Verdict;

/// Where a result comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// This host's collectors.
    Live,
    /// A snapshot posted to `/api/v1/ingest`.
    Agent,
    /// A batch posted to `/api/v1/analyze`.
    Analyze,
}

impl Source {
    fn as_str(self) -> &'static str {
        match self {
            Source::Live => "live",
            Source::Agent => "agent",
            Source::Analyze => "analyze",
        }
    }
}

/// The connection a result is about.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectionSummary {
    pub host: String,
    pub pid: Option<u32>,
    pub process_name: Option<String>,
    pub local: String,
    pub remote: String,
    pub protocol: sentinel_netmon::Protocol,
    pub state: sentinel_netmon::SocketState,
    pub change: Option<ConnectionChange>,
    /// The clear ends, to show them in another form and to filter on them.
    #[serde(skip)]
    pub local_address: SocketAddr,
    #[serde(skip)]
    pub remote_address: SocketAddr,
}

impl ConnectionSummary {
    /// Whether `query` (an address, or its stored form: a pseudonym) names the remote address.
    pub(crate) fn remote_is(&self, query: &str, addresses: &Pseudonymiser) -> bool {
        let remote = self.remote_address.ip();
        match query.parse::<IpAddr>() {
            Ok(address) if address.to_canonical() == remote.to_canonical() => true,
            _ => addresses.display(remote) == query,
        }
    }
}

/// One scored item, as streamed on `/ws/realtime` and returned by the API.
#[derive(Debug, Clone, Serialize)]
pub struct DetectionResult {
    /// The stored item's id (`network_features.id`), which `POST /api/v1/feedback` takes;
    /// absent when the result is not stored (`/api/v1/analyze` without
    /// `storage.store_analyze_requests`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<i64>,
    pub source: Source,
    pub observed_at: String,
    pub model_version: i64,
    pub connection: Option<ConnectionSummary>,
    #[serde(flatten)]
    pub verdict: Verdict,
}

impl DetectionResult {
    pub(crate) fn process_name(&self) -> Option<&str> {
        self.connection.as_ref().and_then(|connection| connection.process_name.as_deref())
    }

    /// The result as a caller sees it: as it is when `clear` (the caller holds `network:pii`,
    /// or addresses are stored in clear), else a copy with the addresses in their stored form.
    pub(crate) fn shown(&self, addresses: &Pseudonymiser, clear: bool) -> Cow<'_, DetectionResult> {
        match &self.connection {
            Some(connection) if !clear && !addresses.is_clear() => {
                let (local, remote) = (connection.local_address, connection.remote_address);
                let connection = ConnectionSummary {
                    local: addresses.display_socket(local.ip(), local.port()),
                    remote: addresses.display_socket(remote.ip(), remote.port()),
                    ..connection.clone()
                };
                Cow::Owned(DetectionResult { connection: Some(connection), ..self.clone() })
            }
            _ => Cow::Borrowed(self),
        }
    }
}

pub(super) fn summary(record: &ConnectionRecord, change: Option<ConnectionChange>) -> ConnectionSummary {
    let local_address = SocketAddr::new(record.local_ip, record.local_port);
    let remote_address = SocketAddr::new(record.remote_ip, record.remote_port);
    ConnectionSummary {
        host: record.host.clone(),
        pid: record.pid,
        process_name: record.process_name.clone(),
        local: local_address.to_string(),
        remote: remote_address.to_string(),
        protocol: record.protocol,
        state: record.state,
        change,
        local_address,
        remote_address,
    }
}

/// The item to store for a connection record (or a posted feature vector, without `record`),
/// its addresses in the form `addresses` gives them, under the reserved id `id`.
pub(super) fn scored_item(
    id: i64,
    observed: SystemTime,
    record: Option<&ConnectionRecord>,
    features: &RawFeatures,
    source: Source,
    verdict: Option<&Verdict>,
    addresses: &Pseudonymiser,
) -> ScoredItem {
    let session = match (source, record) {
        (Source::Analyze, _) | (_, None) => source.as_str().to_owned(),
        (_, Some(record)) => format!("{}:{}", source.as_str(), record.host),
    };
    ScoredItem {
        id,
        observed,
        connection: record.map(|record| connection_row(record, addresses)),
        features: match features.to_json() {
            serde_json::Value::Object(object) => object,
            _ => serde_json::Map::new(),
        },
        session,
        predictions: verdict.map(predictions_of).unwrap_or_default(),
    }
}

fn connection_row(record: &ConnectionRecord, addresses: &Pseudonymiser) -> ConnectionRow {
    // The wire names of the protocol and state (`tcp`, `ESTABLISHED`), as agents send them.
    let name = |value: serde_json::Result<serde_json::Value>| {
        value.ok().and_then(|value| value.as_str().map(str::to_owned))
    };
    ConnectionRow {
        timestamp: record.timestamp,
        process_id: record.pid,
        process_name: record.process_name.clone(),
        local_ip: addresses.display(record.local_ip),
        local_port: record.local_port,
        remote_ip: addresses.display(record.remote_ip),
        remote_port: record.remote_port,
        protocol: name(serde_json::to_value(record.protocol)),
        state: name(serde_json::to_value(record.state)),
        bytes_sent: record.bytes_sent,
        bytes_received: record.bytes_received,
    }
}

/// The `predictions` rows of a verdict: one per model, then the ensemble's with the explanation.
fn predictions_of(verdict: &Verdict) -> Vec<PredictionRow> {
    let mut rows: Vec<PredictionRow> = verdict
        .models
        .iter()
        .map(|model| PredictionRow {
            model: model.model.clone().into_owned(),
            score: model.score,
            is_anomaly: model.is_anomaly,
            confidence: verdict.confidence,
            explanation: None,
        })
        .collect();
    rows.push(PredictionRow {
        model: "ensemble".to_owned(),
        score: verdict.score,
        is_anomaly: verdict.is_anomaly,
        confidence: verdict.confidence,
        explanation: serde_json::to_string(&verdict.explanation).ok(),
    });
    rows
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use sentinel_netmon::{Family, Protocol, SocketState};

    use super::*;
    use crate::model::{FeatureExplanation, ModelScore};

    fn record() -> ConnectionRecord {
        ConnectionRecord {
            timestamp: SystemTime::UNIX_EPOCH,
            host: "laptop-7".to_owned(),
            pid: Some(42),
            process_name: Some("curl".to_owned()),
            process_path: None,
            user: None,
            local_ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 5)),
            local_port: 40_000,
            remote_ip: IpAddr::V4(Ipv4Addr::new(93, 184, 216, 34)),
            remote_port: 443,
            protocol: Protocol::Tcp,
            family: Family::V4,
            state: SocketState::Established,
            bytes_sent: Some(10),
            bytes_received: None,
            rtt_us: None,
            retransmits: None,
            segs_in: None,
            segs_out: None,
            socket_id: None,
        }
    }

    /// The features of `record` seen as a new connection, with `bytes_sent_delta`.
    fn new_connection_features(
        record: &ConnectionRecord,
        bytes_sent_delta: Option<u64>,
    ) -> crate::features::RawFeatures {
        crate::features::standalone_features(&sentinel_netmon::ConnectionEvent {
            change: ConnectionChange::New,
            record: record.clone(),
            bytes_sent_delta,
            bytes_received_delta: None,
            interval_ms: None,
        })
    }

    fn verdict() -> Verdict {
        Verdict {
            models: vec![
                ModelScore { model: "isolation_forest".into(), score: 0.7, threshold: 0.6, is_anomaly: true },
                ModelScore { model: "lof".into(), score: 1.1, threshold: 1.5, is_anomaly: false },
            ],
            score: 0.9,
            threshold: 0.8,
            is_anomaly: true,
            confidence: 0.5,
            explanation: vec![FeatureExplanation {
                feature: "bytes_sent_delta".into(),
                value: serde_json::json!(1e9),
                baseline: Some(500.0),
                deviation: 8.0,
            }],
        }
    }

    #[test]
    fn an_agent_s_item_keeps_its_connection_host_session_and_one_row_per_model_then_the_ensemble() {
        let record = record();
        let features = new_connection_features(&record, Some(10));
        let item = scored_item(
            1,
            record.timestamp,
            Some(&record),
            &features,
            Source::Agent,
            Some(&verdict()),
            &Pseudonymiser::clear(),
        );
        assert_eq!(item.session, "agent:laptop-7");
        let connection = item.connection.unwrap();
        assert_eq!(
            (connection.protocol.as_deref(), connection.state.as_deref()),
            (Some("tcp"), Some("ESTABLISHED"))
        );
        assert_eq!((connection.process_id, connection.remote_port), (Some(42), 443));
        assert_eq!(item.features["bytes_sent_delta"], 10.0);
        let models: Vec<&str> = item.predictions.iter().map(|row| row.model.as_str()).collect();
        assert_eq!(models, ["isolation_forest", "lof", "ensemble"]);
        assert!(item.predictions[..2].iter().all(|row| row.explanation.is_none() && row.confidence == 0.5));
        let ensemble = &item.predictions[2];
        assert_eq!((ensemble.score, ensemble.is_anomaly), (0.9, true));
        assert!(ensemble.explanation.as_deref().unwrap().contains("bytes_sent_delta"));
    }

    #[test]
    fn an_unscored_item_has_no_prediction_rows_and_analyze_items_share_one_session() {
        let record = record();
        let features = new_connection_features(&record, None);
        let live = scored_item(
            1,
            record.timestamp,
            Some(&record),
            &features,
            Source::Live,
            None,
            &Pseudonymiser::clear(),
        );
        assert_eq!(live.session, "live:laptop-7");
        assert!(live.predictions.is_empty(), "while learning nothing is predicted");
        let posted = scored_item(
            2,
            record.timestamp,
            None,
            &features,
            Source::Analyze,
            Some(&verdict()),
            &Pseudonymiser::clear(),
        );
        assert_eq!(posted.session, "analyze");
        assert!(posted.connection.is_none());
        let summary = summary(&record, Some(ConnectionChange::Closed));
        assert_eq!(
            (summary.local.as_str(), summary.remote.as_str()),
            ("10.0.0.5:40000", "93.184.216.34:443")
        );
    }

    #[test]
    fn rows_hold_pseudonyms_and_results_show_them_to_callers_without_the_pii_scope() {
        use sentinel_privacy::{IpStorage, PrivacyKey};
        let record = record();
        let features = new_connection_features(&record, None);
        let key = PrivacyKey::from_bytes([3; 32]);
        for storage in [IpStorage::PrefixPreserving, IpStorage::Hmac] {
            let addresses = Pseudonymiser::new(storage, &key).unwrap();
            let item =
                scored_item(1, record.timestamp, Some(&record), &features, Source::Live, None, &addresses);
            let row = item.connection.unwrap();
            assert_eq!(row.remote_ip, addresses.display(record.remote_ip));
            assert_ne!(row.remote_ip, "93.184.216.34");
            assert_eq!(row.local_ip, addresses.display(record.local_ip));

            let result = DetectionResult {
                id: Some(1),
                source: Source::Live,
                observed_at: String::new(),
                model_version: 1,
                connection: Some(summary(&record, None)),
                verdict: verdict(),
            };
            let hidden = serde_json::to_string(&*result.shown(&addresses, false)).unwrap();
            assert!(!hidden.contains("93.184.216.34") && !hidden.contains("10.0.0.5"), "{hidden}");
            assert!(hidden.contains(&addresses.display_socket(record.remote_ip, 443)), "{hidden}");
            let clear = serde_json::to_string(&*result.shown(&addresses, true)).unwrap();
            assert!(clear.contains("\"remote\":\"93.184.216.34:443\""), "{clear}");
            let connection = result.connection.as_ref().unwrap();
            assert!(connection.remote_is("93.184.216.34", &addresses));
            assert!(connection.remote_is(&addresses.display(record.remote_ip), &addresses));
            assert!(!connection.remote_is("93.184.216.35", &addresses));
        }
        let result = DetectionResult {
            id: Some(1),
            source: Source::Live,
            observed_at: String::new(),
            model_version: 1,
            connection: Some(summary(&record, None)),
            verdict: verdict(),
        };
        let shown = serde_json::to_string(&*result.shown(&Pseudonymiser::clear(), false)).unwrap();
        assert!(shown.contains("93.184.216.34:443"), "in clear mode everyone sees clear: {shown}");
    }
}
