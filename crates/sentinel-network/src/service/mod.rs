//! The running network service: live collectors and agents' snapshots flow through one pipeline
//! thread (connection tracking, features, the active model) to the WebSocket stream, the recent
//! results kept in memory and the store's results writer; `/api/v1/analyze` scores posted
//! batches on the blocking pool; a scheduler trains the first model after the warm-up and
//! retrains on schedule.
//!
//! Models are swapped atomically (`ArcSwap`): a retraining or a rollback never blocks or
//! disturbs a prediction in flight, which keeps the model it started with. Each concern has its
//! module: `pipeline` (the thread and ingestion), `journal` (the form of a journalled snapshot),
//! `replay` (the journal after a restart), `analyze`, `training` (training and rollback), `jobs`, `schedule`, `status`,
//! `metrics`, `health` (what alert rules watch), `results` (what is streamed and stored), `feedback` (analysts' labels, what they
//! measure and what the ensemble learns from them) and `errors`.

mod analyze;
mod errors;
mod feedback;
mod health;
mod jobs;
mod journal;
mod metrics;
mod pipeline;
mod relay;
mod replay;
mod results;
mod scale_out;
mod schedule;
mod status;
mod training;

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use arc_swap::ArcSwapOption;
use sentinel_netmon::{CollectionHandle, Observation};
use sentinel_privacy::{PrivacySettings, Pseudonymiser};
use sentinel_store::{NetworkStore, Store, WriterSettings};
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;

pub use analyze::AnalyzeItem;
pub use errors::{AnalyzeError, NetworkError, StorageError, TrainError};
pub use feedback::{FeedbackError, FeedbackSummary};
pub use health::{AccuracyFigures, ServiceHealth};
pub use jobs::{JobReport, JobState, TrainingJob};
pub(crate) use metrics::ModelFigures;
pub use results::{ConnectionSummary, DetectionResult, Source};
pub use scale_out::ScaleOut;

use crate::model::ModelBundle;
use crate::saved_model::{self, ModelVersion};
use crate::settings::NetworkSettings;
use pipeline::PipelineInput;

/// The active model and its registry entry.
pub(crate) struct ActiveModel {
    pub info: ModelVersion,
    pub bundle: ModelBundle,
    /// Set when the bundle's ensemble learned from analysts' feedback (`feedback`).
    pub adapted: Option<feedback::Adaptation>,
}

impl ActiveModel {
    /// A model as the registry holds it, before any feedback.
    pub(crate) fn trained(info: ModelVersion, bundle: ModelBundle) -> ActiveModel {
        ActiveModel { info, bundle, adapted: None }
    }
}

/// Counters shown in the status and the metrics.
#[derive(Default)]
struct Counters {
    predictions: AtomicU64,
    anomalies: AtomicU64,
    events: AtomicU64,
    /// WebSocket subscribers closed for falling behind the stream.
    websocket_dropped: AtomicU64,
}

/// The network AI service. Start it with [`NetworkService::start`], serve [`crate::router`],
/// stop it with [`NetworkService::shutdown`].
pub struct NetworkService {
    settings: NetworkSettings,
    /// The model registry (in `sentinel.db`).
    registry: Arc<Store>,
    /// The network tables (`network.db`).
    store: NetworkStore,
    /// The form of the addresses stored and shown to callers without `network:pii`. Features
    /// are computed from the clear addresses before any of them is pseudonymised.
    addresses: Pseudonymiser,
    model: ArcSwapOption<ActiveModel>,
    results: broadcast::Sender<Arc<DetectionResult>>,
    recent: Mutex<VecDeque<Arc<DetectionResult>>>,
    /// Set while snapshots journalled before a restart are replayed: new ones wait (503), so
    /// that each host's snapshots reach the pipeline in order.
    replaying: AtomicBool,
    pipeline: Mutex<Option<mpsc::Sender<PipelineInput>>>,
    pipeline_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    collection: Mutex<Option<CollectionHandle>>,
    /// Why this host's connections are not watched although `collect` is on.
    collector_unavailable: OnceLock<String>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    job: Mutex<Option<Arc<TrainingJob>>>,
    next_job: AtomicU64,
    counters: Counters,
    /// What the labelled items of the window measured, as last measured.
    feedback: Mutex<feedback::FeedbackSummary>,
    /// Held while the window is measured: one measurement at a time.
    feedback_refresh: Mutex<()>,
    /// Set in the scale-out mode (`--broker`).
    scale_out: Option<scale_out::ScaleOutState>,
}

/// The locks guard plain values that a panic cannot leave half-updated: a poisoned lock is
/// taken over, not propagated.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl NetworkService {
    /// Opens (or creates) `<data_dir>/network.db`, loads the active network model from the model
    /// registry (`registry`, the store of `sentinel.db`) if there is one, and starts the
    /// collectors (unless `collect = false`), the pipeline, the results writer and the training
    /// scheduler on the current tokio runtime. Where this host cannot be watched (no collector
    /// for the platform, netlink refused) it starts without the collectors, logs why and shows
    /// it in the status (`collector.unavailable`). Blocking (opens and migrates the database).
    ///
    /// Addresses are stored as the default `[privacy]` settings say: prefix-preserving
    /// pseudonyms under the key of `SENTINEL_PRIVACY_KEY` or `<data_dir>/privacy.key` (created
    /// if absent). [`NetworkService::start_with`] takes another pseudonymiser.
    pub fn start(
        settings: NetworkSettings,
        data_dir: &Path,
        registry: Arc<Store>,
    ) -> Result<Arc<NetworkService>, NetworkError> {
        settings.validate()?;
        let addresses = Pseudonymiser::open(&PrivacySettings::default(), data_dir)?;
        NetworkService::start_with(settings, data_dir, registry, addresses)
    }

    /// [`NetworkService::start`], storing addresses in the form `addresses` gives them.
    pub fn start_with(
        settings: NetworkSettings,
        data_dir: &Path,
        registry: Arc<Store>,
        addresses: Pseudonymiser,
    ) -> Result<Arc<NetworkService>, NetworkError> {
        NetworkService::start_scaled(settings, data_dir, registry, addresses, None)
    }

    /// [`NetworkService::start_with`], in the scale-out mode when `scale_out` is given: agents'
    /// snapshots go through its broker to the scoring workers, results come back through it
    /// (see `scale_out`), and this replica runs the roles it says.
    pub fn start_scaled(
        settings: NetworkSettings,
        data_dir: &Path,
        registry: Arc<Store>,
        addresses: Pseudonymiser,
        scale_out: Option<ScaleOut>,
    ) -> Result<Arc<NetworkService>, NetworkError> {
        settings.validate()?;
        // Where the registry's tables are: network.db beside sentinel.db (encrypted exactly when
        // it is), or the shared PostgreSQL database.
        let store = NetworkStore::open_beside(
            &registry,
            data_dir,
            WriterSettings {
                batch: settings.storage.write_batch,
                flush_interval: settings.storage.flush_interval,
                queue: settings.storage.write_queue,
                retention: settings.storage.retention,
            },
        )?;
        saved_model::adopt_legacy(&registry, &store)?;
        let active = saved_model::active(&registry)?;
        let unfinished = store.journalled_snapshots()?;
        let (outgoing, outgoing_receiver) = mpsc::channel(scale_out::OUTGOING_RESULTS);
        let scale_out = scale_out.map(|config| scale_out::ScaleOutState { config, outgoing });
        let (results, _) = broadcast::channel(settings.api.websocket_buffer);
        let (pipeline_sender, pipeline_receiver) =
            mpsc::channel(settings.api.ingest_queue + settings.collector.buffer_capacity);
        let service = Arc::new(NetworkService {
            model: ArcSwapOption::from(
                active.map(|(info, bundle)| Arc::new(ActiveModel::trained(info, bundle))),
            ),
            results,
            recent: Mutex::new(VecDeque::with_capacity(settings.api.recent_predictions)),
            registry,
            store,
            addresses,
            replaying: AtomicBool::new(!unfinished.is_empty()),
            pipeline: Mutex::new(Some(pipeline_sender.clone())),
            pipeline_thread: Mutex::new(None),
            collection: Mutex::new(None),
            collector_unavailable: OnceLock::new(),
            tasks: Mutex::new(Vec::new()),
            job: Mutex::new(None),
            next_job: AtomicU64::new(1),
            counters: Counters::default(),
            feedback: Mutex::new(feedback::FeedbackSummary::default()),
            feedback_refresh: Mutex::new(()),
            scale_out,
            settings,
        });

        let pipeline_service = Arc::clone(&service);
        let thread = std::thread::Builder::new()
            .name("network-pipeline".into())
            .spawn(move || pipeline_service.run_pipeline(pipeline_receiver))
            .map_err(NetworkError::Thread)?;
        *lock(&service.pipeline_thread) = Some(thread);
        if !unfinished.is_empty() {
            let replay = tokio::spawn(Arc::clone(&service).replay(unfinished, pipeline_sender.clone()));
            lock(&service.tasks).push(replay);
        }

        // Without a collector (another platform, a container refusing netlink) the service still
        // has work: agents' snapshots and /api/v1/analyze. It says so rather than not starting.
        if service.settings.collect
            && let Err(error) = service.start_collection(pipeline_sender.clone())
        {
            tracing::warn!(
                %error,
                "this host's connections are not watched; the network service serves agents' records and /api/v1/analyze"
            );
            let _ = service.collector_unavailable.set(error.to_string());
        }
        service.start_scale_out(outgoing_receiver, pipeline_sender);
        let scheduler = tokio::spawn(Arc::clone(&service).schedule());
        lock(&service.tasks).push(scheduler);
        let measuring = tokio::spawn(Arc::clone(&service).measure_feedback());
        lock(&service.tasks).push(measuring);
        Ok(service)
    }

    #[cfg(target_os = "linux")]
    fn start_collection(&self, pipeline: mpsc::Sender<PipelineInput>) -> Result<(), NetworkError> {
        use sentinel_netmon::Collector;
        let mut collector = sentinel_netmon::LinuxCollector::from_settings(&self.settings.collector)
            .map_err(|error| NetworkError::Collector(error.to_string()))?;
        // A sandbox may allow the netlink socket yet refuse the dump: one collection now finds
        // out at start-up, instead of a failure logged every second. It also fills the owner
        // cache, so the loop's first collection is a warm one.
        collector.collect().map_err(|error| NetworkError::Collector(error.to_string()))?;
        let (handle, mut observations) =
            sentinel_netmon::spawn_collection(&self.settings.collector, collector)
                .map_err(|error| NetworkError::Collector(error.to_string()))?;
        let forward = tokio::spawn(async move {
            while let Some(observation) = observations.recv().await {
                if let Observation::Connection(event) = observation
                    && pipeline.send(PipelineInput::Event(Box::new(event))).await.is_err()
                {
                    return;
                }
            }
        });
        *lock(&self.collection) = Some(handle);
        lock(&self.tasks).push(forward);
        Ok(())
    }

    #[cfg(not(target_os = "linux"))]
    fn start_collection(&self, _pipeline: mpsc::Sender<PipelineInput>) -> Result<(), NetworkError> {
        Err(NetworkError::Collector("no collector for this platform: set network.collect = false".into()))
    }

    /// Stops the collectors, the pipeline and the scheduler, and writes what is queued.
    pub async fn shutdown(self: &Arc<Self>) {
        lock(&self.collection).take();
        for task in lock(&self.tasks).drain(..) {
            task.abort();
        }
        if let Some(job) = lock(&self.job).as_ref() {
            job.cancel();
        }
        // The pipeline ends when its last sender is gone: this one and the aborted forwarder's.
        lock(&self.pipeline).take();
        let thread = lock(&self.pipeline_thread).take();
        let service = Arc::clone(self);
        let joined = tokio::task::spawn_blocking(move || {
            if let Some(thread) = thread {
                let _ = thread.join();
            }
            service.release_leases();
            service.store.close();
        });
        if let Err(error) = joined.await {
            tracing::error!(%error, "network service did not stop cleanly");
        }
    }

    pub(crate) fn settings(&self) -> &NetworkSettings {
        &self.settings
    }

    /// Records an administrative action in the audit table of `sentinel.db`. A failure to
    /// record is logged: the action has happened either way.
    pub(crate) async fn audit(&self, event: sentinel_store::NewAuditEvent) {
        let registry = Arc::clone(&self.registry);
        let action = event.action.clone();
        let recorded = tokio::task::spawn_blocking(move || registry.record_audit_event(event)).await;
        match recorded {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => tracing::error!(%error, action, "cannot record an audit event"),
            Err(error) => tracing::error!(%error, action, "the audit event's writer failed"),
        }
    }

    /// The form of stored addresses, and of those shown to callers without `network:pii`.
    pub fn addresses(&self) -> &Pseudonymiser {
        &self.addresses
    }

    /// Counts a WebSocket subscriber closed for falling behind the stream.
    pub(crate) fn count_dropped_subscriber(&self) {
        self.counters.websocket_dropped.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// The stream of results of live and ingested connections.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<DetectionResult>> {
        self.results.subscribe()
    }

    /// The most recent results, newest last.
    pub(crate) fn recent(&self) -> Vec<Arc<DetectionResult>> {
        lock(&self.recent).iter().cloned().collect()
    }

    /// Publishes a result scored here: to this replica's stream, or to the broker, from
    /// which every front end shows it (`scale_out`).
    fn publish(&self, result: Arc<DetectionResult>) {
        match &self.scale_out {
            // At most once, as the live stream: a full queue drops it rather than wait.
            Some(state) => {
                if state.outgoing.try_send(result).is_err() {
                    tracing::debug!("a result was not published: the broker is behind");
                }
            }
            None => self.show(result),
        }
    }

    /// Shows a result to this replica's WebSocket clients and keeps it among the recent ones.
    fn show(&self, result: Arc<DetectionResult>) {
        self.count_and_keep(&result);
        // No subscriber is not an error: results are streamed to whoever listens.
        let _ = self.results.send(result);
    }

    /// Counts a published result and keeps it among the recent ones.
    fn count_and_keep(&self, result: &Arc<DetectionResult>) {
        self.counters.predictions.fetch_add(1, Ordering::Relaxed);
        if result.verdict.is_anomaly {
            self.counters.anomalies.fetch_add(1, Ordering::Relaxed);
        }
        let mut recent = lock(&self.recent);
        if recent.len() >= self.settings.api.recent_predictions {
            recent.pop_front();
        }
        recent.push_back(Arc::clone(result));
    }
}
