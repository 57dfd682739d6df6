//! The pipeline thread: every connection event, from this host's collectors or an agent's
//! snapshot, goes through connection tracking (per agent host), the feature windows and the
//! active model, then to the stream, the recent results and the store. And ingestion: an
//! agent's snapshot is journalled, then queued for this thread.
//!
//! The pipeline is a thread of its own, not a tokio task: scoring a collection of thousands of
//! connections is CPU work that would otherwise hold a reactor thread.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use sentinel_netmon::{ConnectionEvent, ConnectionTracker, Snapshot};
use sentinel_store::{ScoredItem, StoreError};
use tokio::sync::{mpsc, oneshot};

use super::journal;
use super::results::{scored_item, summary};
use super::{ActiveModel, DetectionResult, NetworkService, Source, StorageError, lock};
use crate::features::{FeatureExtractor, RawFeatures, WindowSettings};
use crate::model::Verdict;

pub(super) enum PipelineInput {
    Event(Box<ConnectionEvent>),
    /// An agent's snapshot, with its id in the ingest journal.
    Snapshot(Box<Snapshot>, i64),
    /// An agent's snapshot delivered by the broker (scale-out mode), with its message id;
    /// `stored` is told once its items are committed, or why they are not.
    Record {
        snapshot: Box<Snapshot>,
        msg_id: String,
        /// Delivered before (its items were not stored, or not acknowledged): the host's
        /// tracker may have seen it already, and would find nothing new in it.
        redelivered: bool,
        stored: oneshot::Sender<Result<bool, StoreError>>,
    },
}

impl NetworkService {
    fn window_settings(&self) -> WindowSettings {
        WindowSettings {
            window_secs: self.settings.features.window.as_secs_f64(),
            max_entries_per_key: self.settings.features.max_events_per_key,
            max_keys: self.settings.features.max_keys,
        }
    }

    pub(super) fn run_pipeline(&self, mut receiver: mpsc::Receiver<PipelineInput>) {
        let mut extractor = FeatureExtractor::new(self.window_settings());
        let mut trackers: HashMap<String, ConnectionTracker> = HashMap::new();
        let mut buffer = Vec::new();
        while let Some(input) = receiver.blocking_recv() {
            match input {
                PipelineInput::Event(event) => {
                    self.process_event(&mut extractor, &event, &mut buffer);
                }
                PipelineInput::Snapshot(snapshot, journal_id) => {
                    let tracker = trackers.entry(snapshot.host.clone()).or_default();
                    let events = tracker.update(snapshot.timestamp, &snapshot.connections);
                    // Its items and the deletion of its journal entry are one transaction, so a
                    // crash can neither lose nor duplicate them. Without ids for all of them
                    // (the shared database is unreachable, so their transaction would fail
                    // too), it stays journalled and is replayed at the next start.
                    if let Some((items, results)) = self.process_snapshot(&mut extractor, events) {
                        self.store.store_snapshot(journal_id, items);
                        for result in results {
                            self.publish(result);
                        }
                    }
                }
                PipelineInput::Record { snapshot, msg_id, redelivered, stored } => {
                    // A record delivered again (its first delivery failed to store, or was not
                    // acknowledged) may already be in its host's tracker, which would turn it
                    // into no event and store nothing for it: it is scored from a fresh tracker,
                    // every connection in it new, so that no accepted connection goes unstored.
                    if redelivered {
                        trackers.remove(&snapshot.host);
                    }
                    let tracker = trackers.entry(snapshot.host.clone()).or_default();
                    let events = tracker.update(snapshot.timestamp, &snapshot.connections);
                    let Some((items, results)) = self.process_snapshot(&mut extractor, events) else {
                        // No ids for its items (the shared database is unreachable): neither
                        // stored nor acknowledged, so the broker delivers it again.
                        let _ = stored.send(Err(StoreError::DeliveryNotStored(
                            "no item ids could be reserved: the store is unreachable".into(),
                        )));
                        continue;
                    };
                    // Published once stored, and only by the delivery that stored them: a
                    // record delivered again after a worker died is not shown twice.
                    let outgoing = self.scale_out.as_ref().map(|state| state.outgoing.clone());
                    self.store.store_delivery(msg_id, items, move |outcome| {
                        if matches!(outcome, Ok(true))
                            && let Some(outgoing) = outgoing
                        {
                            for result in results {
                                let _ = outgoing.try_send(result);
                            }
                        }
                        let _ = stored.send(outcome);
                    });
                }
            }
        }
    }

    /// A live event: stored (dropped and counted when the writer is behind) and published.
    fn process_event(
        &self,
        extractor: &mut FeatureExtractor,
        event: &ConnectionEvent,
        buffer: &mut Vec<f64>,
    ) {
        self.counters.events.fetch_add(1, Ordering::Relaxed);
        let features = extractor.observe(event);
        let model = self.model.load_full();
        let verdict = model.as_ref().and_then(|model| {
            scored(model.bundle.judge(&features, event.record.process_name.as_deref(), buffer))
        });
        let (item, result) = self.conclude(model.as_deref(), event, &features, Source::Live, verdict);
        if let Some(item) = item {
            self.store.store(item);
        }
        if let Some(result) = result {
            self.publish(result);
        }
    }

    /// The events of one agent snapshot (up to its whole socket table on the first one): their
    /// features in order, since each event's windows include the ones before it, then one
    /// batch verdict, where each model scores them all in one call. Returns the items to store
    /// and the results to publish, or `None` when an item got no id.
    fn process_snapshot(
        &self,
        extractor: &mut FeatureExtractor,
        events: Vec<ConnectionEvent>,
    ) -> Option<(Vec<ScoredItem>, Vec<Arc<DetectionResult>>)> {
        if events.is_empty() {
            return Some((Vec::new(), Vec::new()));
        }
        self.counters.events.fetch_add(events.len() as u64, Ordering::Relaxed);
        let observed: Vec<(ConnectionEvent, RawFeatures)> = events
            .into_iter()
            .map(|event| {
                let features = extractor.observe(&event);
                (event, features)
            })
            .collect();
        let model = self.model.load_full();
        let verdicts =
            model.as_ref().and_then(|model| {
                scored(model.bundle.judge_batch(&observed, |(event, features)| {
                    (features, event.record.process_name.as_deref())
                }))
            });
        let mut verdicts = verdicts.into_iter().flatten();
        let mut items = Vec::with_capacity(observed.len());
        let mut results = Vec::new();
        for (event, features) in &observed {
            let (item, result) =
                self.conclude(model.as_deref(), event, features, Source::Agent, verdicts.next());
            items.push(item);
            results.extend(result);
        }
        Some((items.into_iter().collect::<Option<Vec<_>>>()?, results))
    }

    /// The item to store for an event (none when no id could be reserved for it: logged), and
    /// the result to publish when a model gave a verdict.
    fn conclude(
        &self,
        model: Option<&ActiveModel>,
        event: &ConnectionEvent,
        features: &RawFeatures,
        source: Source,
        verdict: Option<Verdict>,
    ) -> (Option<ScoredItem>, Option<Arc<DetectionResult>>) {
        let id = self
            .store
            .reserve_item_ids(1)
            .inspect_err(|error| tracing::error!(%error, "no id for a scored item: it is not stored"))
            .ok();
        let result = model.zip(verdict).map(|(model, verdict)| {
            Arc::new(DetectionResult {
                id,
                source,
                observed_at: humantime::format_rfc3339_micros(event.record.timestamp).to_string(),
                model_version: model.info.version,
                connection: Some(summary(&event.record, Some(event.change))),
                verdict,
            })
        });
        let item = id.map(|id| {
            scored_item(
                id,
                event.record.timestamp,
                Some(&event.record),
                features,
                source,
                result.as_ref().map(|result| &result.verdict),
                &self.addresses,
            )
        });
        (item, result)
    }

    /// Accepts an agent's snapshot: in the scale-out mode, publishes it to the broker
    /// (`scale_out`); else journals and queues it ([`NetworkService::ingest`]). `Ok(false)`:
    /// the agent should retry.
    pub(crate) async fn accept(self: &Arc<Self>, snapshot: Snapshot) -> Result<bool, StorageError> {
        if self.scale_out.is_some() {
            return self.publish_snapshot(&snapshot).await;
        }
        let service = Arc::clone(self);
        tokio::task::spawn_blocking(move || service.ingest(snapshot))
            .await
            .map_err(|error| StorageError::Task(error.to_string()))?
    }

    /// Accepts an agent's snapshot: journals it (its addresses pseudonymised, `journal`), then
    /// queues it for the pipeline. `Ok(false)` when the queue is full or journalled snapshots
    /// are being replayed after a restart: the agent should retry. Blocking (one durable commit).
    pub(crate) fn ingest(&self, snapshot: Snapshot) -> Result<bool, StorageError> {
        if self.replaying.load(Ordering::Acquire) {
            return Ok(false);
        }
        let entry = journal::entry(&self.addresses, &snapshot)
            .map_err(|error| StorageError::Journal(error.to_string()))?;
        let id = self.store.journal_snapshot(entry)?;
        let queued = lock(&self.pipeline)
            .as_ref()
            .is_some_and(|sender| sender.try_send(PipelineInput::Snapshot(Box::new(snapshot), id)).is_ok());
        if !queued {
            self.store.forget_snapshot(id)?;
        }
        Ok(queued)
    }
}

/// The verdict, or `None` with the error logged: only a model inconsistent with itself fails to
/// score, and the event is then stored without a verdict rather than given a made-up one.
fn scored<T>(verdict: Result<T, sentinel_anomaly::AnomalyError>) -> Option<T> {
    verdict.map_err(|error| tracing::error!(%error, "the network model could not score an event")).ok()
}
