//! The scale-out mode (`--broker nats://…`): front ends hand agents' snapshots to a NATS
//! JetStream work queue instead of scoring them, scoring workers on any host score them, and
//! results come back to every front end over the broker.
//!
//! - **Front end** (`ingest`): a snapshot becomes its journal entry (addresses pseudonymised as
//!   `[privacy]` says, `journal`) and is published with its host as the partition key and the
//!   SHA-256 of the entry as the message id, so an agent's retry of the same snapshot is stored
//!   once by JetStream. The agent is answered once JetStream stored it; a failed publish answers
//!   503 and the agent retries.
//! - **Worker**: owns partitions through leases in the shared store (`network-partition/<p>`,
//!   at most ceil(partitions / live workers) each, live workers being those holding a
//!   `network-worker/<replica>` lease), fetches their records, feeds them to the pipeline thread
//!   (which keeps each host's connection tracker and feature windows: a partition keeps a host on
//!   one worker at a time) and acknowledges a record only once its items are committed together
//!   with its message id (`NetworkStore::store_delivery`), so a record delivered again after a
//!   worker died is stored once. A lease not renewed in time stops the partition's fetching.
//! - **Results** go to the broker's results subject; every front end relays them to its
//!   WebSocket clients, recent list and counters: one path, whichever replica scored them.
//! - **Models**: every replica follows the registry's active network model, so a model trained
//!   or rolled back on one replica scores on all; training runs on one replica at a time (the
//!   `network-training` lease).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sentinel_broker::{Broker, BrokerError, Delivery};
use sentinel_netmon::Snapshot;
use sentinel_store::{ModelKind, Store, StoreError};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::pipeline::PipelineInput;
use super::{ActiveModel, DetectionResult, NetworkService, StorageError, journal, relay};
use crate::saved_model;

/// What a replica runs in the scale-out mode, and through which broker.
pub struct ScaleOut {
    pub broker: Broker,
    /// This replica's name among those sharing the store: the owner of its leases. Unique per
    /// running process.
    pub replica: String,
    /// Accepts agents' snapshots (publishing them) and relays results to its API.
    pub frontend: bool,
    /// Scores records of the partitions it holds.
    pub worker: bool,
}

/// How long a lease lasts unless renewed: a dead worker's partitions move after at most this.
pub(super) const LEASE_TTL: Duration = Duration::from_secs(15);
/// How often leases are renewed and the partitions shared out again.
const RENEW_EVERY: Duration = Duration::from_secs(5);
/// How often the registry's active model is checked.
const MODEL_POLL_EVERY: Duration = Duration::from_secs(3);
const WORKER_LEASES: &str = "network-worker/";
const PARTITION_LEASES: &str = "network-partition/";
const TRAINING_LEASE: &str = "network-training";
/// Records fetched at once: their items are committed in about one transaction.
const FETCH_BATCH: usize = 256;
/// How long a fetch waits for a first record.
const FETCH_WAIT: Duration = Duration::from_secs(1);
/// A record whose items could not be stored is delivered again after this.
const NAK_DELAY: Duration = Duration::from_secs(2);
/// The pause after a broker error before trying again.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// Results waiting to be published; beyond, new ones are dropped (the live view is at most once).
pub(super) const OUTGOING_RESULTS: usize = 4096;

/// The scale-out part of a running service.
pub(super) struct ScaleOutState {
    pub(super) config: ScaleOut,
    /// Results scored here, to be published on the broker.
    pub(super) outgoing: mpsc::Sender<Arc<DetectionResult>>,
}

/// The most partitions one of `workers` live workers holds: all are covered, none holds more
/// than its share.
pub(super) fn share(partitions: u32, workers: usize) -> usize {
    let workers = workers.max(1);
    (partitions as usize).div_ceil(workers)
}

/// Which partitions a worker holding `mine` gives up (beyond its `share`, highest first) and
/// which it tries to take (free ones, starting from `start` so that workers starting together
/// try different ones first), given those `others` hold.
pub(super) fn plan(
    partitions: u32,
    share: usize,
    mine: &BTreeSet<u32>,
    others: &BTreeSet<u32>,
    start: u32,
) -> (Vec<u32>, Vec<u32>) {
    if mine.len() > share {
        return (mine.iter().rev().take(mine.len() - share).copied().collect(), Vec::new());
    }
    let wanted = share - mine.len();
    let free = (0..partitions)
        .map(|offset| (start + offset) % partitions.max(1))
        .filter(|partition| !mine.contains(partition) && !others.contains(partition))
        .take(wanted)
        .collect();
    (Vec::new(), free)
}

/// What one round of leases found.
#[derive(Default)]
struct LeaseRound {
    /// Held partitions renewed.
    renewed: Vec<u32>,
    /// Held partitions another worker took (ours had expired).
    lost: Vec<u32>,
    /// Partitions beyond the share, to give up.
    extras: Vec<u32>,
    /// Partitions newly taken.
    gained: Vec<u32>,
}

/// A partition being scored here; dropped (the worker stopping, the lease lost or given up),
/// its scoring stops at once.
struct Owned {
    task: JoinHandle<()>,
    renewed: Instant,
}

impl Drop for Owned {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The `network-training` lease while held: renewed in the background, released when dropped.
pub(super) struct TrainingLease {
    registry: Arc<Store>,
    owner: String,
    renewal: JoinHandle<()>,
}

impl Drop for TrainingLease {
    fn drop(&mut self) {
        self.renewal.abort();
        if let Err(error) = self.registry.release_lease(TRAINING_LEASE, &self.owner) {
            tracing::warn!(%error, "the training lease could not be released: it expires by itself");
        }
    }
}

impl NetworkService {
    fn scale_out(&self) -> Option<&ScaleOut> {
        self.scale_out.as_ref().map(|state| &state.config)
    }

    /// Starts the scale-out tasks: publishing results, relaying them (front end), following
    /// the active model, and scoring (worker).
    pub(super) fn start_scale_out(
        self: &Arc<Self>,
        outgoing: mpsc::Receiver<Arc<DetectionResult>>,
        pipeline: mpsc::Sender<PipelineInput>,
    ) {
        let Some(config) = self.scale_out() else { return };
        let mut tasks = vec![
            tokio::spawn(Arc::clone(self).publish_results(outgoing)),
            tokio::spawn(Arc::clone(self).follow_active_model()),
        ];
        if config.frontend {
            tasks.push(tokio::spawn(Arc::clone(self).relay_results()));
        }
        if config.worker {
            tasks.push(tokio::spawn(Arc::clone(self).run_worker(pipeline)));
        }
        super::lock(&self.tasks).extend(tasks);
    }

    /// Publishes an agent's snapshot to the broker; `Ok(false)` when the broker did not store
    /// it (an outage, a full stream): the agent retries.
    pub(super) async fn publish_snapshot(&self, snapshot: &Snapshot) -> Result<bool, StorageError> {
        let Some(config) = self.scale_out() else { return Ok(false) };
        let entry = journal::entry(&self.addresses, snapshot)
            .map_err(|error| StorageError::Journal(error.to_string()))?;
        let msg_id = hex::encode(Sha256::digest(&entry));
        match config.broker.publish_record(&snapshot.host, &msg_id, Bytes::from(entry)).await {
            Ok(published) => {
                tracing::debug!(
                    partition = published.partition,
                    duplicate = published.duplicate,
                    "snapshot published"
                );
                Ok(true)
            }
            Err(error) => {
                tracing::warn!(%error, "a snapshot could not be handed to the broker: the agent will retry");
                Ok(false)
            }
        }
    }

    async fn publish_results(self: Arc<Self>, mut outgoing: mpsc::Receiver<Arc<DetectionResult>>) {
        let Some(config) = self.scale_out() else { return };
        while let Some(result) = outgoing.recv().await {
            let payload = match relay::encode(&result, &self.addresses) {
                Ok(payload) => payload,
                Err(error) => {
                    tracing::error!(%error, "a result could not be encoded");
                    continue;
                }
            };
            if let Err(error) = config.broker.publish_result(Bytes::from(payload)).await {
                tracing::debug!(%error, "a result could not be published: live viewers miss it");
            }
        }
    }

    /// Relays every replica's results to this one's stream, recent list and counters.
    async fn relay_results(self: Arc<Self>) {
        let Some(config) = self.scale_out() else { return };
        let mut subscription = loop {
            match config.broker.results().await {
                Ok(subscription) => break subscription,
                Err(error) => {
                    tracing::warn!(%error, "cannot subscribe to the results: retrying");
                    tokio::time::sleep(RETRY_AFTER).await;
                }
            }
        };
        while let Some(payload) = subscription.next().await {
            match relay::decode(&payload, &self.addresses) {
                Ok(result) => self.show(Arc::new(result)),
                Err(error) => tracing::warn!(%error, "a relayed result was dropped"),
            }
        }
    }

    async fn follow_active_model(self: Arc<Self>) {
        let mut ticks = tokio::time::interval(MODEL_POLL_EVERY);
        loop {
            ticks.tick().await;
            let service = Arc::clone(&self);
            match tokio::task::spawn_blocking(move || service.follow_registry()).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::warn!(%error, "the active network model could not be checked"),
                Err(error) => tracing::error!(%error, "checking the active network model failed"),
            }
        }
    }

    /// Puts the registry's active model in service if another replica changed it. Blocking.
    pub(super) fn follow_registry(&self) -> Result<(), StorageError> {
        let active = self.registry.active_model_id(ModelKind::Network)?;
        let current = self.model.load().as_ref().map(|model| model.info.version);
        if active.is_none() || active == current {
            return Ok(());
        }
        let Some((info, bundle)) = saved_model::active(&self.registry)? else { return Ok(()) };
        tracing::info!(version = info.version, "network model activated by another replica put in service");
        self.model.store(Some(Arc::new(ActiveModel::trained(info, bundle))));
        if let Err(error) = self.refresh_feedback() {
            tracing::warn!(%error, "the network feedback could not be measured");
        }
        Ok(())
    }

    /// Takes the training lease (renewed from `runtime` while held); `Ok(None)` without a
    /// broker, where nothing is shared. Blocking.
    pub(super) fn training_lease(
        &self,
        runtime: &tokio::runtime::Handle,
    ) -> Result<Option<TrainingLease>, String> {
        let Some(config) = self.scale_out() else { return Ok(None) };
        let owner = config.replica.clone();
        match self.registry.acquire_lease(TRAINING_LEASE, &owner, LEASE_TTL) {
            Ok(true) => {}
            Ok(false) => return Err("another replica is training a network model".to_owned()),
            Err(error) => return Err(format!("the training lease could not be taken: {error}")),
        }
        let registry = Arc::clone(&self.registry);
        let renewal = {
            let (registry, owner) = (Arc::clone(&registry), owner.clone());
            runtime.spawn(async move {
                let mut ticks = tokio::time::interval(RENEW_EVERY);
                ticks.tick().await;
                loop {
                    ticks.tick().await;
                    let (registry, owner) = (Arc::clone(&registry), owner.clone());
                    let renewed = tokio::task::spawn_blocking(move || {
                        registry.acquire_lease(TRAINING_LEASE, &owner, LEASE_TTL)
                    })
                    .await;
                    if !matches!(renewed, Ok(Ok(true))) {
                        tracing::warn!("the training lease could not be renewed");
                    }
                }
            })
        };
        Ok(Some(TrainingLease { registry, owner, renewal }))
    }

    /// The worker: shares out the partitions through leases, and scores those it holds.
    async fn run_worker(self: Arc<Self>, pipeline: mpsc::Sender<PipelineInput>) {
        let Some(config) = self.scale_out() else { return };
        let partitions = config.broker.partitions();
        // Workers starting together try different partitions first.
        let start = config.broker.partition_of(&config.replica);
        let mut owned: BTreeMap<u32, Owned> = BTreeMap::new();
        let mut ticks = tokio::time::interval(RENEW_EVERY);
        loop {
            ticks.tick().await;
            let service = Arc::clone(&self);
            let mine: BTreeSet<u32> = owned.keys().copied().collect();
            let round =
                tokio::task::spawn_blocking(move || service.lease_round(partitions, &mine, start)).await;
            let round = match round {
                Ok(Ok(round)) => round,
                Ok(Err(error)) => {
                    tracing::warn!(%error, "the partition leases could not be renewed");
                    LeaseRound::default()
                }
                Err(error) => {
                    tracing::error!(%error, "renewing the partition leases failed");
                    LeaseRound::default()
                }
            };
            let now = Instant::now();
            for partition in &round.renewed {
                if let Some(owned) = owned.get_mut(partition) {
                    owned.renewed = now;
                }
            }
            // A lease not renewed for its time to live may be another worker's by now.
            let expired: Vec<u32> = owned
                .iter()
                .filter(|(_, owned)| now.duration_since(owned.renewed) + RENEW_EVERY > LEASE_TTL)
                .map(|(&partition, _)| partition)
                .collect();
            for partition in round.lost.iter().chain(&expired).chain(&round.extras) {
                if owned.remove(partition).is_some() {
                    tracing::info!(partition, "stopped scoring a partition");
                }
            }
            if !round.extras.is_empty() {
                let (service, extras) = (Arc::clone(&self), round.extras.clone());
                let released = tokio::task::spawn_blocking(move || service.release_partitions(&extras)).await;
                if !matches!(released, Ok(Ok(()))) {
                    tracing::warn!(
                        "partitions given up could not be released: their leases expire by themselves"
                    );
                }
            }
            for partition in round.gained {
                tracing::info!(partition, "scoring a partition");
                let task = tokio::spawn(Arc::clone(&self).score_partition(partition, pipeline.clone()));
                owned.insert(partition, Owned { task, renewed: now });
            }
        }
    }

    /// Renews this worker's leases and takes or gives up partitions. Blocking.
    fn lease_round(
        &self,
        partitions: u32,
        mine: &BTreeSet<u32>,
        start: u32,
    ) -> Result<LeaseRound, StoreError> {
        let Some(config) = self.scale_out() else { return Ok(LeaseRound::default()) };
        let replica = config.replica.as_str();
        let registry = &self.registry;
        registry.acquire_lease(&format!("{WORKER_LEASES}{replica}"), replica, LEASE_TTL)?;
        let workers = registry.live_leases(WORKER_LEASES)?.len();
        let mut round = LeaseRound::default();
        for &partition in mine {
            match registry.acquire_lease(&partition_lease(partition), replica, LEASE_TTL)? {
                true => round.renewed.push(partition),
                false => round.lost.push(partition),
            }
        }
        let held: BTreeSet<u32> = round.renewed.iter().copied().collect();
        let others: BTreeSet<u32> = registry
            .live_leases(PARTITION_LEASES)?
            .into_iter()
            .filter(|(_, owner)| owner != replica)
            .filter_map(|(name, _)| name.strip_prefix(PARTITION_LEASES)?.parse().ok())
            .collect();
        let (extras, candidates) = plan(partitions, share(partitions, workers), &held, &others, start);
        round.extras = extras;
        for partition in candidates {
            if registry.acquire_lease(&partition_lease(partition), replica, LEASE_TTL)? {
                round.gained.push(partition);
            }
        }
        Ok(round)
    }

    fn release_partitions(&self, partitions: &[u32]) -> Result<(), StoreError> {
        let Some(config) = self.scale_out() else { return Ok(()) };
        for &partition in partitions {
            self.registry.release_lease(&partition_lease(partition), &config.replica)?;
        }
        Ok(())
    }

    /// Gives up this replica's leases at shutdown, so other workers take its partitions at
    /// once rather than after the leases expire. Blocking.
    pub(super) fn release_leases(&self) {
        let Some(config) = self.scale_out().filter(|config| config.worker) else { return };
        let released = self.registry.live_leases("network-").and_then(|leases| {
            leases
                .iter()
                .filter(|(_, owner)| *owner == config.replica)
                .try_for_each(|(name, owner)| self.registry.release_lease(name, owner).map(drop))
        });
        if let Err(error) = released {
            tracing::warn!(%error, "the worker's leases could not be released: they expire by themselves");
        }
    }

    /// Scores one partition's records until aborted (its lease lost or given up).
    async fn score_partition(self: Arc<Self>, partition: u32, pipeline: mpsc::Sender<PipelineInput>) {
        let Some(config) = self.scale_out() else { return };
        let consumer = loop {
            match config.broker.consumer(partition).await {
                Ok(consumer) => break consumer,
                Err(error) => {
                    tracing::warn!(%error, partition, "no consumer for the partition yet: retrying");
                    tokio::time::sleep(RETRY_AFTER).await;
                }
            }
        };
        loop {
            let batch = match consumer.fetch(FETCH_BATCH, FETCH_WAIT).await {
                Ok(batch) => batch,
                Err(BrokerError::Disconnected) => {
                    tokio::time::sleep(RETRY_AFTER).await;
                    continue;
                }
                Err(error) => {
                    tracing::warn!(%error, partition, "fetching records failed: retrying");
                    tokio::time::sleep(RETRY_AFTER).await;
                    continue;
                }
            };
            // The whole batch goes to the pipeline before the first answer is awaited: its
            // items are then committed together, not one writer flush per record.
            let mut pending = Vec::with_capacity(batch.len());
            for delivery in batch {
                match self.decode(&delivery) {
                    Ok((snapshot, msg_id)) => {
                        let (stored, outcome) = oneshot::channel();
                        let input = PipelineInput::Record {
                            snapshot: Box::new(snapshot),
                            msg_id,
                            redelivered: delivery.delivered > 1,
                            stored,
                        };
                        if pipeline.send(input).await.is_err() {
                            return;
                        }
                        pending.push((delivery, outcome));
                    }
                    Err(reason) => {
                        tracing::error!(partition, sequence = delivery.sequence, %reason, "a record that can never be scored is dropped");
                        if let Err(error) = delivery.term().await {
                            tracing::warn!(%error, "the record could not be dropped: it will be delivered again");
                        }
                    }
                }
            }
            for (delivery, outcome) in pending {
                match outcome.await {
                    Ok(Ok(_written)) => {
                        if let Err(error) = delivery.ack().await {
                            // Delivered again after `ack_wait`, and then recognised as stored.
                            tracing::warn!(%error, partition, "a stored record could not be acknowledged");
                        }
                    }
                    Ok(Err(error)) => {
                        tracing::warn!(%error, partition, "a record's results could not be stored: it will be scored again");
                        if let Err(error) = delivery.nak(NAK_DELAY).await {
                            tracing::warn!(%error, "the record could not be handed back: it is delivered again after ack_wait");
                        }
                    }
                    // The pipeline stopped: the service is shutting down.
                    Err(_) => return,
                }
            }
        }
    }

    /// The snapshot of a record and its message id, or why it can never be scored.
    fn decode(&self, delivery: &Delivery) -> Result<(Snapshot, String), String> {
        let msg_id = delivery.msg_id.clone().ok_or("it has no message id")?;
        let snapshot =
            journal::read(&self.addresses, &delivery.payload).map_err(|error| error.to_string())?;
        Ok((snapshot, msg_id))
    }
}

fn partition_lease(partition: u32) -> String {
    format!("{PARTITION_LEASES}{partition}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(partitions: &[u32]) -> BTreeSet<u32> {
        partitions.iter().copied().collect()
    }

    #[test]
    fn each_worker_holds_at_most_its_share_and_all_partitions_are_covered() {
        assert_eq!(share(16, 1), 16);
        assert_eq!(share(16, 2), 8);
        assert_eq!(share(16, 3), 6);
        assert_eq!(share(16, 16), 1);
        assert_eq!(share(16, 40), 1, "more workers than partitions: some idle");
        assert_eq!(share(16, 0), 16, "no live worker seen yet counts as this one");
        for partitions in 1..=64u32 {
            for workers in 1..=70usize {
                assert!(share(partitions, workers) * workers >= partitions as usize);
                assert!((share(partitions, workers) - 1) * workers < partitions as usize, "ceil, not more");
            }
        }
    }

    #[test]
    fn a_worker_gives_up_its_extras_and_takes_free_partitions_from_its_start() {
        // Alone at first: all of them, from its start.
        let (release, take) = plan(4, share(4, 1), &set(&[]), &set(&[]), 2);
        assert_eq!((release, take), (vec![], vec![2, 3, 0, 1]));
        // A second worker appears: the first gives up the highest beyond its share.
        let (release, take) = plan(4, share(4, 2), &set(&[0, 1, 2, 3]), &set(&[]), 2);
        assert_eq!((release, take), (vec![3, 2], vec![]));
        // The second takes what is free, skipping those held.
        let (release, take) = plan(4, share(4, 2), &set(&[]), &set(&[0, 1]), 0);
        assert_eq!((release, take), (vec![], vec![2, 3]));
        // A worker at its share neither gives up nor takes.
        assert_eq!(plan(4, 2, &set(&[1, 3]), &set(&[0]), 0), (vec![], vec![]));
        // Nothing free: nothing to take.
        assert_eq!(plan(2, 1, &set(&[]), &set(&[0, 1]), 1), (vec![], vec![]));
    }
}
