//! The running network service: live collectors and agents' snapshots flow through one pipeline
//! thread (connection tracking, features, the active model) to the WebSocket stream, the recent
//! results kept in memory and the writer; `/api/v1/analyze` scores posted batches on the
//! blocking pool; a supervisor trains the first model after the warm-up and retrains on
//! schedule.
//!
//! The pipeline is a thread of its own, not a tokio task: scoring a collection of thousands of
//! connections is CPU work that would otherwise hold a reactor thread. Models are swapped
//! atomically (`ArcSwap`): a retraining or a rollback never blocks or disturbs a prediction in
//! flight, which keeps the model it started with.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwapOption;
use rayon::prelude::*;
use sentinel_netmon::{
    CollectionHandle, ConnectionChange, ConnectionEvent, ConnectionRecord, ConnectionTracker, Observation,
    Snapshot,
};
use serde::Serialize;
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;

use crate::features::{FeatureExtractor, RawFeatures, WindowSettings, standalone_features};
use crate::model::{FitError, FitObserver, ModelBundle, Verdict};
use crate::settings::{NetworkSettings, SettingsError};
use crate::store::{
    self, Journal, ModelVersion, PredictionRow, StoreError, StoredResult, Writer, WriterSettings,
};

/// Why the service could not start or an operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot create the data directory {path}: {source}")]
    DataDir { path: PathBuf, source: std::io::Error },
    #[error("network collector: {0}")]
    Collector(String),
    #[error("the pipeline thread could not start: {0}")]
    Thread(std::io::Error),
}

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

/// The active model and its store entry.
pub(crate) struct ActiveModel {
    pub info: ModelVersion,
    pub bundle: ModelBundle,
}

/// State of a training job.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum JobState {
    Running,
    Succeeded { version: i64, training_rows: usize },
    Failed { error: String },
    Cancelled,
}

/// A training job: progress, stage and cancellation.
pub struct TrainingJob {
    pub id: u64,
    pub trigger: &'static str,
    started_at: SystemTime,
    progress_bits: AtomicU64,
    stage: Mutex<&'static str>,
    state: Mutex<JobState>,
    cancel: AtomicBool,
}

/// A job as reported by the API.
#[derive(Debug, Clone, Serialize)]
pub struct JobReport {
    pub id: u64,
    pub trigger: &'static str,
    pub started_at: String,
    pub progress: f64,
    pub stage: &'static str,
    #[serde(flatten)]
    pub state: JobState,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl TrainingJob {
    pub fn report(&self) -> JobReport {
        JobReport {
            id: self.id,
            trigger: self.trigger,
            started_at: humantime::format_rfc3339_seconds(self.started_at).to_string(),
            progress: f64::from_bits(self.progress_bits.load(Ordering::Relaxed)),
            stage: *lock(&self.stage),
            state: lock(&self.state).clone(),
        }
    }

    fn is_running(&self) -> bool {
        matches!(*lock(&self.state), JobState::Running)
    }
}

impl FitObserver for TrainingJob {
    fn stage(&self, name: &'static str, progress: f64) -> Result<(), FitError> {
        if self.cancel.load(Ordering::Relaxed) {
            return Err(FitError::Cancelled);
        }
        *lock(&self.stage) = name;
        self.progress_bits.store(progress.to_bits(), Ordering::Relaxed);
        Ok(())
    }
}

/// Why a training could not be started or changed.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("training job {0} is already running")]
    AlreadyRunning(u64),
    #[error("no training job {0}")]
    NoSuchJob(u64),
    #[error("training job {0} has already finished")]
    Finished(u64),
}

/// Why an analysis could not be done.
#[derive(Debug, thiserror::Error)]
pub enum AnalyzeError {
    #[error(
        "no model yet: the service is learning this network's normal traffic (see /api/v1/models/status)"
    )]
    NoModel,
    #[error("the analysis task failed: {0}")]
    Task(String),
    #[error("the model could not score the batch: {0}")]
    Model(String),
}

/// Counters shown in the status.
#[derive(Default)]
struct Counters {
    predictions: AtomicU64,
    anomalies: AtomicU64,
    events: AtomicU64,
}

enum PipelineInput {
    Event(Box<ConnectionEvent>),
    /// An agent's snapshot, with its id in the ingest journal.
    Snapshot(Box<Snapshot>, i64),
}

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
    fn process_name(&self) -> Option<&str> {
        match &self.record {
            Some(record) => record.process_name.as_deref(),
            None => self.process_name.as_deref(),
        }
    }
}

/// The network AI service. Start it with [`NetworkService::start`], serve [`crate::router`],
/// stop it with [`NetworkService::shutdown`].
pub struct NetworkService {
    settings: NetworkSettings,
    db_path: PathBuf,
    model: ArcSwapOption<ActiveModel>,
    results: broadcast::Sender<Arc<DetectionResult>>,
    recent: Mutex<VecDeque<Arc<DetectionResult>>>,
    writer: Writer,
    journal: Journal,
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
}

impl NetworkService {
    /// Opens (or creates) `<data_dir>/network.db`, loads the active model if there is one, and
    /// starts the collectors (unless `collect = false`), the pipeline, the writer and the training
    /// supervisor on the current tokio runtime. Where this host cannot be watched (no collector
    /// for the platform, netlink refused) it starts without the collectors, logs why and shows
    /// it in the status (`collector.unavailable`).
    pub fn start(settings: NetworkSettings, data_dir: &Path) -> Result<Arc<NetworkService>, NetworkError> {
        settings.validate()?;
        std::fs::create_dir_all(data_dir)
            .map_err(|source| NetworkError::DataDir { path: data_dir.to_owned(), source })?;
        let db_path = data_dir.join("network.db");
        store::initialise(&db_path)?;
        let active = store::load_model(&store::open(&db_path)?, None)?;
        let writer = Writer::start(
            &db_path,
            WriterSettings {
                batch: settings.storage.write_batch,
                flush_interval: settings.storage.flush_interval,
                queue: settings.storage.write_queue,
                retention: settings.storage.retention,
            },
        )?;
        let journal = Journal::open(&db_path)?;
        let unfinished = journal.pending()?;
        let (results, _) = broadcast::channel(settings.api.websocket_buffer);
        let (pipeline_sender, pipeline_receiver) =
            mpsc::channel(settings.api.ingest_queue + settings.collector.buffer_capacity);
        let service = Arc::new(NetworkService {
            model: ArcSwapOption::from(active.map(|(info, bundle)| Arc::new(ActiveModel { info, bundle }))),
            results,
            recent: Mutex::new(VecDeque::with_capacity(settings.api.recent_predictions)),
            writer,
            journal,
            replaying: AtomicBool::new(!unfinished.is_empty()),
            pipeline: Mutex::new(Some(pipeline_sender.clone())),
            pipeline_thread: Mutex::new(None),
            collection: Mutex::new(None),
            collector_unavailable: OnceLock::new(),
            tasks: Mutex::new(Vec::new()),
            job: Mutex::new(None),
            next_job: AtomicU64::new(1),
            counters: Counters::default(),
            db_path,
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
            && let Err(error) = service.start_collection(pipeline_sender)
        {
            tracing::warn!(
                %error,
                "this host's connections are not watched; the network service serves agents' records and /api/v1/analyze"
            );
            let _ = service.collector_unavailable.set(error.to_string());
        }
        let supervisor = tokio::spawn(Arc::clone(&service).supervise());
        lock(&service.tasks).push(supervisor);
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

    /// Stops the collectors, the pipeline and the supervisor, and writes what is queued.
    pub async fn shutdown(self: &Arc<Self>) {
        lock(&self.collection).take();
        for task in lock(&self.tasks).drain(..) {
            task.abort();
        }
        if let Some(job) = lock(&self.job).as_ref() {
            job.cancel.store(true, Ordering::Relaxed);
        }
        // The pipeline ends when its last sender is gone: this one and the aborted forwarder's.
        lock(&self.pipeline).take();
        let thread = lock(&self.pipeline_thread).take();
        let service = Arc::clone(self);
        let joined = tokio::task::spawn_blocking(move || {
            if let Some(thread) = thread {
                let _ = thread.join();
            }
            service.writer.close();
        });
        if let Err(error) = joined.await {
            tracing::error!(%error, "network service did not stop cleanly");
        }
    }

    pub(crate) fn settings(&self) -> &NetworkSettings {
        &self.settings
    }

    fn window_settings(&self) -> WindowSettings {
        WindowSettings {
            window_secs: self.settings.features.window.as_secs_f64(),
            max_entries_per_key: self.settings.features.max_events_per_key,
            max_keys: self.settings.features.max_keys,
        }
    }

    /// The stream of results of live and ingested connections.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<DetectionResult>> {
        self.results.subscribe()
    }

    /// The most recent results, newest last.
    pub(crate) fn recent(&self) -> Vec<Arc<DetectionResult>> {
        lock(&self.recent).iter().cloned().collect()
    }

    fn run_pipeline(&self, mut receiver: mpsc::Receiver<PipelineInput>) {
        let mut extractor = FeatureExtractor::new(self.window_settings());
        let mut trackers: HashMap<String, ConnectionTracker> = HashMap::new();
        let mut buffer = Vec::new();
        while let Some(input) = receiver.blocking_recv() {
            match input {
                PipelineInput::Event(event) => {
                    self.process_event(&mut extractor, &event, Source::Live, &mut buffer);
                }
                PipelineInput::Snapshot(snapshot, journal_id) => {
                    let tracker = trackers.entry(snapshot.host.clone()).or_default();
                    let events = tracker.update(snapshot.timestamp, &snapshot.connections);
                    self.process_snapshot(&mut extractor, events);
                    self.writer.journalled(journal_id);
                }
            }
        }
    }

    fn process_event(
        &self,
        extractor: &mut FeatureExtractor,
        event: &ConnectionEvent,
        source: Source,
        buffer: &mut Vec<f64>,
    ) {
        self.counters.events.fetch_add(1, Ordering::Relaxed);
        let features = extractor.observe(event);
        let model = self.model.load_full();
        let verdict = model.as_ref().and_then(|model| {
            scored(model.bundle.judge(&features, event.record.process_name.as_deref(), buffer))
        });
        self.conclude(model.as_deref(), event, features, source, verdict);
    }

    /// The events of one agent snapshot (up to its whole socket table on the first one): their
    /// features in order, since each event's windows include the ones before it, then one
    /// batch verdict, where each model scores them all in one call.
    fn process_snapshot(&self, extractor: &mut FeatureExtractor, events: Vec<ConnectionEvent>) {
        if events.is_empty() {
            return;
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
        for (event, features) in observed {
            self.conclude(model.as_deref(), &event, features, Source::Agent, verdicts.next());
        }
    }

    /// Stores an event with its verdict (if a model gave one) and publishes the result.
    fn conclude(
        &self,
        model: Option<&ActiveModel>,
        event: &ConnectionEvent,
        features: RawFeatures,
        source: Source,
        verdict: Option<Verdict>,
    ) {
        let result = model.zip(verdict).map(|(model, verdict)| {
            Arc::new(DetectionResult {
                source,
                observed_at: humantime::format_rfc3339_micros(event.record.timestamp).to_string(),
                model_version: model.info.version,
                connection: Some(summary(&event.record, Some(event.change))),
                verdict,
            })
        });
        let session = match source {
            Source::Live => "live",
            Source::Agent => "agent",
            Source::Analyze => "analyze",
        };
        let stored = StoredResult {
            observed: event.record.timestamp,
            record: Some(event.record.clone()),
            features,
            session: format!("{session}:{}", event.record.host),
            predictions: result.as_ref().map(|result| predictions_of(&result.verdict)).unwrap_or_default(),
        };
        match source {
            // An agent's snapshot was accepted (202): its results wait for room rather than be
            // dropped when the disk falls behind. The live collector's are dropped and counted.
            Source::Agent => self.writer.store_waiting(stored),
            Source::Live | Source::Analyze => self.writer.store(stored),
        }
        if let Some(result) = result {
            self.publish(result);
        }
    }

    fn publish(&self, result: Arc<DetectionResult>) {
        self.counters.predictions.fetch_add(1, Ordering::Relaxed);
        if result.verdict.is_anomaly {
            self.counters.anomalies.fetch_add(1, Ordering::Relaxed);
        }
        {
            let mut recent = lock(&self.recent);
            if recent.len() >= self.settings.api.recent_predictions {
                recent.pop_front();
            }
            recent.push_back(Arc::clone(&result));
        }
        // No subscriber is not an error: results are streamed to whoever listens.
        let _ = self.results.send(result);
    }

    /// Accepts an agent's snapshot (`json`, the body it was parsed from): journals it, then
    /// queues it for the pipeline. `Ok(false)` when the queue is full or journalled snapshots
    /// are being replayed after a restart: the agent should retry. Blocking (one SQLite commit).
    pub(crate) fn ingest(&self, snapshot: Snapshot, json: &[u8]) -> Result<bool, StoreError> {
        if self.replaying.load(Ordering::Acquire) {
            return Ok(false);
        }
        let id = self.journal.append(json)?;
        let queued = lock(&self.pipeline)
            .as_ref()
            .is_some_and(|sender| sender.try_send(PipelineInput::Snapshot(Box::new(snapshot), id)).is_ok());
        if !queued {
            self.journal.remove(id)?;
        }
        Ok(queued)
    }

    /// Feeds the snapshots journalled before a restart to the pipeline, oldest first, then lets
    /// new ones in. They were validated when accepted; one that no longer parses (a newer
    /// format) is logged and dropped.
    async fn replay(self: Arc<Self>, unfinished: Vec<(i64, Vec<u8>)>, pipeline: mpsc::Sender<PipelineInput>) {
        tracing::info!(
            snapshots = unfinished.len(),
            "replaying agents' snapshots accepted before the restart"
        );
        for (id, json) in unfinished {
            match serde_json::from_slice::<Snapshot>(&json) {
                Ok(snapshot) => {
                    if pipeline.send(PipelineInput::Snapshot(Box::new(snapshot), id)).await.is_err() {
                        return;
                    }
                }
                Err(error) => {
                    tracing::error!(%error, id, "a journalled snapshot cannot be read; dropped");
                    if let Err(error) = self.journal.remove(id) {
                        tracing::error!(%error, id, "the unreadable snapshot stays in the journal");
                    }
                }
            }
        }
        self.replaying.store(false, Ordering::Release);
    }

    /// Scores a batch, in parallel on rayon's pool: CPU work of up to a second for a large
    /// batch, to call from a blocking thread. Each record is judged on its own: its window
    /// features are missing (filled with the training medians), since a posted record belongs to
    /// no stream; streams with windows come in through the collectors and `ingest`.
    pub(crate) fn analyze(
        &self,
        items: Vec<AnalyzeItem>,
    ) -> Result<(i64, Vec<DetectionResult>), AnalyzeError> {
        let Some(model) = self.model.load_full() else { return Err(AnalyzeError::NoModel) };
        let prepared: Vec<Prepared> = items
            .into_par_iter()
            .map(|item| match item {
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
            })
            .collect();
        let verdicts = model
            .bundle
            .judge_batch(&prepared, |item| (&item.features, item.process_name()))
            .map_err(|error| AnalyzeError::Model(error.to_string()))?;
        let now = humantime::format_rfc3339_micros(SystemTime::now()).to_string();
        let version = model.info.version;
        let results: Vec<DetectionResult> = prepared
            .par_iter()
            .zip(verdicts)
            .map(|(item, verdict)| DetectionResult {
                source: Source::Analyze,
                observed_at: item.record.as_ref().map_or_else(
                    || now.clone(),
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
        if self.settings.storage.store_analyze_requests {
            for (item, result) in prepared.into_iter().zip(&results) {
                self.writer.store(StoredResult {
                    observed: item.record.as_ref().map_or_else(SystemTime::now, |record| record.timestamp),
                    record: item.record,
                    features: item.features,
                    session: "analyze".to_owned(),
                    predictions: predictions_of(&result.verdict),
                });
            }
        }
        Ok((version, results))
    }

    /// Starts a training job from stored history, unless one is running.
    pub fn train(self: &Arc<Self>, trigger: &'static str) -> Result<Arc<TrainingJob>, TrainError> {
        let mut current = lock(&self.job);
        if let Some(job) = current.as_ref()
            && job.is_running()
        {
            return Err(TrainError::AlreadyRunning(job.id));
        }
        let job = Arc::new(TrainingJob {
            id: self.next_job.fetch_add(1, Ordering::Relaxed),
            trigger,
            started_at: SystemTime::now(),
            progress_bits: AtomicU64::new(0f64.to_bits()),
            stage: Mutex::new("loading history"),
            state: Mutex::new(JobState::Running),
            cancel: AtomicBool::new(false),
        });
        *current = Some(Arc::clone(&job));
        let service = Arc::clone(self);
        let running = Arc::clone(&job);
        tokio::task::spawn_blocking(move || {
            let outcome = service.run_training(&running);
            let state = match outcome {
                Ok((version, rows)) => {
                    *lock(&running.stage) = "done";
                    running.progress_bits.store(1f64.to_bits(), Ordering::Relaxed);
                    tracing::info!(version, rows, "network model trained");
                    JobState::Succeeded { version, training_rows: rows }
                }
                Err(TrainingFailure::Fit(FitError::Cancelled)) => JobState::Cancelled,
                Err(error) => {
                    tracing::warn!(%error, "network model training failed");
                    JobState::Failed { error: error.to_string() }
                }
            };
            *lock(&running.state) = state;
        });
        Ok(job)
    }

    fn run_training(&self, job: &TrainingJob) -> Result<(i64, usize), TrainingFailure> {
        let mut connection = store::open(&self.db_path)?;
        let rows = store::training_rows(&connection, self.settings.model.max_training_rows, &|| {
            job.cancel.load(Ordering::Relaxed)
        })?;
        // Stopping the read early leaves a partial history: a cancellation, not too few rows.
        job.stage("fitting", 0.05)?;
        let bundle = ModelBundle::fit(&rows, &self.settings.model, job)?;
        job.stage("saving", 0.95)?;
        let created = SystemTime::now();
        let version = store::save_model(
            &mut connection,
            &bundle,
            rows.len(),
            created,
            self.settings.training.versions_kept,
        )?;
        self.writer.store_metrics(created, bundle.facts.evaluations.clone());
        let info = store::model_versions(&connection)?
            .into_iter()
            .find(|info| info.version == version)
            .ok_or(StoreError::NoSuchVersion(version))?;
        self.model.store(Some(Arc::new(ActiveModel { info, bundle })));
        Ok((version, rows.len()))
    }

    /// The job with this id, if it is the current or last one.
    pub fn job(&self, id: u64) -> Result<JobReport, TrainError> {
        match lock(&self.job).as_ref() {
            Some(job) if job.id == id => Ok(job.report()),
            _ => Err(TrainError::NoSuchJob(id)),
        }
    }

    /// Asks a running job to stop at its next stage.
    pub fn cancel_job(&self, id: u64) -> Result<JobReport, TrainError> {
        match lock(&self.job).as_ref() {
            Some(job) if job.id == id => {
                if !job.is_running() {
                    return Err(TrainError::Finished(id));
                }
                job.cancel.store(true, Ordering::Relaxed);
                Ok(job.report())
            }
            _ => Err(TrainError::NoSuchJob(id)),
        }
    }

    /// Makes a stored version active: `version`, or the one before the active one.
    pub async fn rollback(&self, version: Option<i64>) -> Result<ModelVersion, StoreError> {
        let path = self.db_path.clone();
        let current = self.model.load_full().map(|model| model.info.version);
        let loaded =
            tokio::task::spawn_blocking(move || -> Result<(ModelVersion, ModelBundle), StoreError> {
                let mut connection = store::open(&path)?;
                let target = match version {
                    Some(version) => version,
                    None => store::model_versions(&connection)?
                        .into_iter()
                        .map(|info| info.version)
                        .find(|&candidate| current.is_none_or(|current| candidate < current))
                        .ok_or(StoreError::NoSuchVersion(current.unwrap_or(0) - 1))?,
                };
                let Some((mut info, bundle)) = store::load_model(&connection, Some(target))? else {
                    return Err(StoreError::NoSuchVersion(target));
                };
                store::activate(&mut connection, target)?;
                info.active = true;
                Ok((info, bundle))
            })
            .await
            .map_err(|error| StoreError::Model {
                version: version.unwrap_or(0),
                reason: error.to_string(),
            })??;
        let (info, bundle) = loaded;
        self.model.store(Some(Arc::new(ActiveModel { info: info.clone(), bundle })));
        Ok(info)
    }

    /// The status document of `/api/v1/models/status`.
    pub async fn status(&self) -> Result<serde_json::Value, StoreError> {
        let path = self.db_path.clone();
        let (extent, versions) = tokio::task::spawn_blocking(move || -> Result<_, StoreError> {
            let connection = store::open(&path)?;
            Ok((store::history_extent(&connection)?, store::model_versions(&connection)?))
        })
        .await
        .map_err(|error| StoreError::Model { version: 0, reason: error.to_string() })??;
        let model = self.model.load_full();
        let job = lock(&self.job).as_ref().map(|job| job.report());
        let collected_secs = extent
            .oldest
            .and_then(|oldest| SystemTime::now().duration_since(oldest).ok())
            .map_or(0, |elapsed| elapsed.as_secs());
        let warmup = &self.settings.training;
        let state = match (&model, &job) {
            (_, Some(job)) if matches!(job.state, JobState::Running) => "training",
            (Some(_), _) => "ready",
            (None, _) => "learning",
        };
        let collection = lock(&self.collection).as_ref().map(|handle| {
            serde_json::json!({
                "collections": handle.collections(),
                "failures": handle.failures(),
                "dropped": handle.dropped(),
            })
        });
        let writer = &self.writer.counters;
        Ok(serde_json::json!({
            "state": state,
            "model": model.as_ref().map(|model| serde_json::json!({
                "version": model.info.version,
                "trained_at": model.info.created_at,
                "training_rows": model.info.training_rows,
                "combination": self.settings.model.combination,
                "target_false_positive_rate": self.settings.model.false_positive_rate,
                "thresholds": model.bundle.thresholds(),
                "metrics": model.bundle.facts.evaluations,
            })),
            "warmup": {
                "required_secs": warmup.warmup.as_secs(),
                "collected_secs": collected_secs,
                "rows": extent.rows,
                "required_rows": self.settings.model.min_training_rows,
                "complete": model.is_some() || (collected_secs >= warmup.warmup.as_secs()
                    && extent.rows >= self.settings.model.min_training_rows as u64),
            },
            "retrain_every_hours": warmup.retrain_every.as_secs() / 3600,
            "training_job": job,
            "versions": versions,
            "collector": {
                "enabled": self.settings.collect,
                "unavailable": self.collector_unavailable.get(),
                "loop": collection,
            },
            "storage": {
                "written": writer.written.load(Ordering::Relaxed),
                "dropped": writer.dropped.load(Ordering::Relaxed),
                "failed": writer.failures.load(Ordering::Relaxed),
            },
            "events_total": self.counters.events.load(Ordering::Relaxed),
            "predictions_total": self.counters.predictions.load(Ordering::Relaxed),
            "anomalies_total": self.counters.anomalies.load(Ordering::Relaxed),
        }))
    }

    /// Appends the service's Prometheus metrics (text exposition format) to `out`, for the
    /// server's `GET /metrics`.
    pub fn write_metrics(&self, out: &mut String) {
        use std::fmt::Write;
        let writer = &self.writer.counters;
        let dropped_by_collector = lock(&self.collection).as_ref().map_or(0, CollectionHandle::dropped);
        let counters = [
            (
                "predictions_total",
                "Items scored by the network model (live, agents, analyze).",
                self.counters.predictions.load(Ordering::Relaxed),
            ),
            (
                "anomalies_detected",
                "Scored items the network model flagged as anomalous.",
                self.counters.anomalies.load(Ordering::Relaxed),
            ),
            (
                "network_events_total",
                "Connection events from this host's collector and agents.",
                self.counters.events.load(Ordering::Relaxed),
            ),
            (
                "network_collector_dropped_total",
                "Observations the collector dropped for a slow pipeline.",
                dropped_by_collector,
            ),
            (
                "network_storage_dropped_total",
                "Results not stored because the writer's queue was full.",
                writer.dropped.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}");
        }
        let _ = writeln!(
            out,
            "# HELP model_accuracy Accuracy of the active network model on held-out normal rows, by model.\n# TYPE model_accuracy gauge"
        );
        if let Some(model) = self.model.load_full() {
            for evaluation in &model.bundle.facts.evaluations {
                let _ = writeln!(
                    out,
                    "model_accuracy{{model=\"{}\"}} {}",
                    evaluation.model_name, evaluation.accuracy
                );
            }
        }
    }

    /// Trains the first model once the warm-up is over, then retrains on schedule.
    async fn supervise(self: Arc<Self>) {
        let mut ticks = tokio::time::interval(Duration::from_secs(1));
        let mut last_attempt: Option<Instant> = None;
        loop {
            ticks.tick().await;
            let running = lock(&self.job).as_ref().is_some_and(|job| job.is_running());
            // After a failed attempt (too few rows), wait before reading the history again.
            if running || last_attempt.is_some_and(|at| at.elapsed() < Duration::from_secs(10)) {
                continue;
            }
            let due = match self.model.load_full() {
                None => {
                    let path = self.db_path.clone();
                    let warmup = self.settings.training.warmup;
                    let min_rows = self.settings.model.min_training_rows as u64;
                    tokio::task::spawn_blocking(move || {
                        let extent =
                            store::open(&path).and_then(|connection| store::history_extent(&connection));
                        extent.is_ok_and(|extent| {
                            extent.rows >= min_rows
                                && extent.oldest.is_some_and(|oldest| {
                                    SystemTime::now().duration_since(oldest).is_ok_and(|age| age >= warmup)
                                })
                        })
                    })
                    .await
                    .unwrap_or(false)
                    .then_some("warm-up complete")
                }
                Some(model) => {
                    let every = self.settings.training.retrain_every;
                    let trained = humantime::parse_rfc3339(&model.info.created_at).ok();
                    (!every.is_zero()
                        && trained.is_some_and(|trained| {
                            SystemTime::now().duration_since(trained).is_ok_and(|age| age >= every)
                        }))
                    .then_some("schedule")
                }
            };
            if let Some(trigger) = due {
                last_attempt = Some(Instant::now());
                if let Err(error) = self.train(trigger) {
                    tracing::debug!(%error, "scheduled training not started");
                }
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum TrainingFailure {
    #[error(transparent)]
    Fit(#[from] FitError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The verdict, or `None` with the error logged: only a model inconsistent with itself fails to
/// score, and the event is then stored without a verdict rather than given a made-up one.
fn scored<T>(verdict: Result<T, sentinel_anomaly::AnomalyError>) -> Option<T> {
    verdict.map_err(|error| tracing::error!(%error, "the network model could not score an event")).ok()
}

fn summary(record: &ConnectionRecord, change: Option<ConnectionChange>) -> ConnectionSummary {
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
