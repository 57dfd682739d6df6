//! `/api/v1/analyze`: scoring a posted batch of connection records and feature vectors with the
//! active model, in parallel on rayon's pool.

use std::sync::atomic::Ordering;
use std::time::SystemTime;

use rayon::prelude::*;
use sentinel_netmon::{ConnectionChange, ConnectionEvent, ConnectionRecord};

use super::results::{scored_item, summary};
use super::{AnalyzeError, DetectionResult, NetworkService, Source};
use crate::features::{RawFeatures, standalone_features};

/// An item of an analysis request.
pub enum AnalyzeItem {
    Record(ConnectionRecord),
    Features { features: RawFeatures, process_name: Option<String> },
}

/// An analysis item with its features computed.
struct Prepared {
    features: RawFeatures,
    /// The process of a posted feature vector; a record carries its own.
    process_name: Option<String>,
    record: Option<ConnectionRecord>,
}

impl Prepared {
    fn new(item: AnalyzeItem) -> Prepared {
        match item {
            AnalyzeItem::Record(record) => {
                let event = ConnectionEvent {
                    change: ConnectionChange::New,
                    bytes_sent_delta: record.bytes_sent,
                    bytes_received_delta: record.bytes_received,
                    interval_ms: None,
                    record,
                };
                let features = standalone_features(&event);
                Prepared { features, process_name: None, record: Some(event.record) }
            }
            AnalyzeItem::Features { features, process_name } => {
                Prepared { features, process_name, record: None }
            }
        }
    }

    fn process_name(&self) -> Option<&str> {
        match &self.record {
            Some(record) => record.process_name.as_deref(),
            None => self.process_name.as_deref(),
        }
    }
}

impl NetworkService {
    /// Scores a batch, in parallel on rayon's pool: CPU work of up to a second for a large
    /// batch, to call from a blocking thread. Each record is judged on its own: its window
    /// features are missing (filled with the training medians), since a posted record belongs to
    /// no stream; streams with windows come in through the collectors and `ingest`.
    pub(crate) fn analyze(
        &self,
        items: Vec<AnalyzeItem>,
    ) -> Result<(i64, Vec<DetectionResult>), AnalyzeError> {
        let Some(model) = self.model.load_full() else { return Err(AnalyzeError::NoModel) };
        let prepared: Vec<Prepared> = items.into_par_iter().map(Prepared::new).collect();
        let verdicts = model
            .bundle
            .judge_batch(&prepared, |item| (&item.features, item.process_name()))
            .map_err(|error| AnalyzeError::Model(error.to_string()))?;
        let now = SystemTime::now();
        let now_text = humantime::format_rfc3339_micros(now).to_string();
        let version = model.info.version;
        let stored = self.settings.storage.store_analyze_requests;
        // Stored results get their ids now, so that the answer can name them.
        let first_id = match stored {
            true => Some(
                self.store
                    .reserve_item_ids(prepared.len())
                    .map_err(|error| AnalyzeError::Storage(error.to_string()))?,
            ),
            false => None,
        };
        let results: Vec<DetectionResult> = prepared
            .par_iter()
            .zip(verdicts)
            .enumerate()
            .map(|(index, (item, verdict))| DetectionResult {
                id: first_id.map(|first| first + index as i64),
                source: Source::Analyze,
                observed_at: item.record.as_ref().map_or_else(
                    || now_text.clone(),
                    |record| humantime::format_rfc3339_micros(record.timestamp).to_string(),
                ),
                model_version: version,
                connection: item.record.as_ref().map(|record| summary(record, None)),
                verdict,
            })
            .collect();
        self.counters.predictions.fetch_add(results.len() as u64, Ordering::Relaxed);
        self.counters.anomalies.fetch_add(
            results.iter().filter(|result| result.verdict.is_anomaly).count() as u64,
            Ordering::Relaxed,
        );
        if let Some(first_id) = first_id {
            for (index, (item, result)) in prepared.iter().zip(&results).enumerate() {
                let observed = item.record.as_ref().map_or(now, |record| record.timestamp);
                self.store.store(scored_item(
                    first_id + index as i64,
                    observed,
                    item.record.as_ref(),
                    &item.features,
                    Source::Analyze,
                    Some(&result.verdict),
                    &self.addresses,
                ));
            }
        }
        Ok((version, results))
    }
}
