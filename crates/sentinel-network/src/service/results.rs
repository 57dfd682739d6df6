//! What the service hands out and stores for each scored item: the result streamed on
//! `/ws/realtime` and returned by the API, and the store's rows made from it.

use std::time::SystemTime;

use sentinel_netmon::{ConnectionChange, ConnectionRecord};
use sentinel_store::{ConnectionRow, PredictionRow, ScoredItem};
use serde::Serialize;

use crate::features::RawFeatures;
use crate::model::Verdict;

/// Where a result comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
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
}

/// One scored item, as streamed on `/ws/realtime` and returned by the API.
#[derive(Debug, Clone, Serialize)]
pub struct DetectionResult {
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
}

pub(super) fn summary(record: &ConnectionRecord, change: Option<ConnectionChange>) -> ConnectionSummary {
    ConnectionSummary {
        host: record.host.clone(),
        pid: record.pid,
        process_name: record.process_name.clone(),
        local: std::net::SocketAddr::new(record.local_ip, record.local_port).to_string(),
        remote: std::net::SocketAddr::new(record.remote_ip, record.remote_port).to_string(),
        protocol: record.protocol,
        state: record.state,
        change,
    }
}

/// The item to store for a connection record (or a posted feature vector, without `record`).
pub(super) fn scored_item(
    observed: SystemTime,
    record: Option<&ConnectionRecord>,
    features: &RawFeatures,
    source: Source,
    verdict: Option<&Verdict>,
) -> ScoredItem {
    let session = match (source, record) {
        (Source::Analyze, _) | (_, None) => source.as_str().to_owned(),
        (_, Some(record)) => format!("{}:{}", source.as_str(), record.host),
    };
    ScoredItem {
        observed,
        connection: record.map(connection_row),
        features: match features.to_json() {
            serde_json::Value::Object(object) => object,
            _ => serde_json::Map::new(),
        },
        session,
        predictions: verdict.map(predictions_of).unwrap_or_default(),
    }
}

fn connection_row(record: &ConnectionRecord) -> ConnectionRow {
    // The wire names of the protocol and state (`tcp`, `ESTABLISHED`), as agents send them.
    let name = |value: serde_json::Result<serde_json::Value>| {
        value.ok().and_then(|value| value.as_str().map(str::to_owned))
    };
    ConnectionRow {
        timestamp: record.timestamp,
        process_id: record.pid,
        process_name: record.process_name.clone(),
        local_ip: record.local_ip,
        local_port: record.local_port,
        remote_ip: record.remote_ip,
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
            model: model.model.to_owned(),
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

    fn verdict() -> Verdict {
        Verdict {
            models: vec![
                ModelScore { model: "isolation_forest", score: 0.7, threshold: 0.6, is_anomaly: true },
                ModelScore { model: "lof", score: 1.1, threshold: 1.5, is_anomaly: false },
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
        let features = crate::features::standalone_features(&sentinel_netmon::ConnectionEvent {
            change: ConnectionChange::New,
            record: record.clone(),
            bytes_sent_delta: Some(10),
            bytes_received_delta: None,
            interval_ms: None,
        });
        let item = scored_item(record.timestamp, Some(&record), &features, Source::Agent, Some(&verdict()));
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
        let features = crate::features::standalone_features(&sentinel_netmon::ConnectionEvent {
            change: ConnectionChange::New,
            record: record.clone(),
            bytes_sent_delta: None,
            bytes_received_delta: None,
            interval_ms: None,
        });
        let live = scored_item(record.timestamp, Some(&record), &features, Source::Live, None);
        assert_eq!(live.session, "live:laptop-7");
        assert!(live.predictions.is_empty(), "while learning nothing is predicted");
        let posted = scored_item(record.timestamp, None, &features, Source::Analyze, Some(&verdict()));
        assert_eq!(posted.session, "analyze");
        assert!(posted.connection.is_none());
        let summary = summary(&record, Some(ConnectionChange::Closed));
        assert_eq!(
            (summary.local.as_str(), summary.remote.as_str()),
            ("10.0.0.5:40000", "93.184.216.34:443")
        );
    }
}
