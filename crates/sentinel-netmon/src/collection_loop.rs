//! The collection loop: a tokio task that takes a snapshot every interval, turns it into
//! [`Observation`]s and pushes them into a bounded channel for the network AI service.
//!
//! The collector's blocking netlink and `/proc` work runs on tokio's blocking pool, never on the
//! reactor. The channel holds at most `buffer_capacity` observations: when the consumer falls
//! behind, the loop waits for room until the next collection is due, then drops what is left of
//! the batch and counts it ([`CollectionHandle::dropped`]), so a slow consumer costs data, never
//! memory or a growing lag.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use crate::collector::Collector;
use crate::lifecycle::{ConnectionEvent, ConnectionTracker};
use crate::record::{InterfaceRecord, ProcessInfo, ProcessNetworkRecord, Snapshot};

/// Settings of the collection loop. Every field has a default; see
/// [`CollectorSettings::default`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CollectorSettings {
    /// Time between two collections (`interval = "1s"`), 100 ms to 1 hour. Default: 1 s.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Observations buffered for a slow consumer before new ones are dropped, at least 1.
    /// Default: 1000.
    pub buffer_capacity: usize,
    /// Agent id put in every record (read by `LinuxCollector::from_settings`). `None`: the
    /// kernel's host name. Default: `None`.
    pub host: Option<String>,
}

impl Default for CollectorSettings {
    fn default() -> CollectorSettings {
        CollectorSettings { interval: Duration::from_secs(1), buffer_capacity: 1000, host: None }
    }
}

/// Settings that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    #[error("interval {} is not in 100ms..=1h", humantime::format_duration(*.0))]
    Interval(Duration),
    #[error("buffer_capacity must be at least 1")]
    BufferCapacity,
    #[error("host must not be empty")]
    EmptyHost,
}

impl CollectorSettings {
    pub fn validate(&self) -> Result<(), SettingsError> {
        if !(Duration::from_millis(100)..=Duration::from_secs(3600)).contains(&self.interval) {
            return Err(SettingsError::Interval(self.interval));
        }
        if self.buffer_capacity == 0 {
            return Err(SettingsError::BufferCapacity);
        }
        if self.host.as_deref() == Some("") {
            return Err(SettingsError::EmptyHost);
        }
        Ok(())
    }
}

/// One item of the collection stream. In each collection, the details of processes not seen
/// before come first, then connection events, then per-process usage, then interfaces.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "data", rename_all = "snake_case")]
pub enum Observation {
    /// A process that owns sockets, sent when it is first seen with sockets (again after a
    /// collection in which it had none, or when its pid is reused).
    Process(ProcessInfo),
    Connection(ConnectionEvent),
    /// Every collection, for each process with sockets.
    ProcessNetwork(ProcessNetworkRecord),
    /// Every collection, for each interface.
    Interface(InterfaceRecord),
}

#[derive(Default)]
struct Counters {
    collections: AtomicU64,
    failures: AtomicU64,
    dropped: AtomicU64,
}

/// Control of a running collection loop. Dropping it stops the loop.
pub struct CollectionHandle {
    counters: Arc<Counters>,
    task: JoinHandle<()>,
}

impl CollectionHandle {
    /// Observations dropped because the buffer was full.
    pub fn dropped(&self) -> u64 {
        self.counters.dropped.load(Ordering::Relaxed)
    }

    /// Collections that succeeded.
    pub fn collections(&self) -> u64 {
        self.counters.collections.load(Ordering::Relaxed)
    }

    /// Collections that failed (logged with `tracing`); the loop carries on.
    pub fn failures(&self) -> u64 {
        self.counters.failures.load(Ordering::Relaxed)
    }

    /// Whether the loop has ended (the receiver was dropped, or the collector panicked).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

impl Drop for CollectionHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts the loop on the current tokio runtime with `collector`. The loop ends when the
/// receiver or the handle is dropped.
pub fn spawn_collection<C: Collector>(
    settings: &CollectorSettings,
    collector: C,
) -> Result<(CollectionHandle, mpsc::Receiver<Observation>), SettingsError> {
    settings.validate()?;
    let (sender, receiver) = mpsc::channel(settings.buffer_capacity);
    let counters = Arc::new(Counters::default());
    let period = settings.interval;
    let task = tokio::spawn(run(collector, period, sender, Arc::clone(&counters)));
    Ok((CollectionHandle { counters, task }, receiver))
}

async fn run<C: Collector>(
    collector: C,
    period: Duration,
    sender: mpsc::Sender<Observation>,
    counters: Arc<Counters>,
) {
    let mut ticks = tokio::time::interval(period);
    // After a slow collection or a long wait for the consumer, start afresh rather than firing
    // the missed collections back to back.
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut collector = collector;
    let mut stream = ObservationStream::default();
    loop {
        ticks.tick().await;
        let deadline = Instant::now() + period;
        let (returned, result) = match tokio::task::spawn_blocking(move || {
            let result = collector.collect();
            (collector, result)
        })
        .await
        {
            Ok(outcome) => outcome,
            Err(error) => {
                tracing::error!(%error, "network collector panicked; collection stopped");
                return;
            }
        };
        collector = returned;
        let snapshot = match result {
            Ok(snapshot) => snapshot,
            Err(error) => {
                counters.failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%error, "network collection failed");
                continue;
            }
        };
        counters.collections.fetch_add(1, Ordering::Relaxed);
        let mut observations = stream.observe(snapshot).into_iter();
        while let Some(observation) = observations.next() {
            match tokio::time::timeout_at(deadline, sender.reserve()).await {
                Ok(Ok(permit)) => permit.send(observation),
                Ok(Err(_closed)) => return,
                Err(_elapsed) => {
                    let dropped = 1 + observations.len() as u64;
                    counters.dropped.fetch_add(dropped, Ordering::Relaxed);
                    tracing::warn!(dropped, "network observations dropped: the consumer is too slow");
                    break;
                }
            }
        }
    }
}

/// State kept between snapshots to turn them into observations.
#[derive(Default)]
struct ObservationStream {
    connections: ConnectionTracker,
    /// Start time of each process already announced, to announce a reused pid again.
    announced: HashMap<u32, Option<SystemTime>>,
}

impl ObservationStream {
    fn observe(&mut self, snapshot: Snapshot) -> Vec<Observation> {
        let Snapshot { timestamp, connections, interfaces, processes, process_info, .. } = snapshot;
        let events = self.connections.update(timestamp, &connections);
        let mut observations =
            Vec::with_capacity(process_info.len() + events.len() + processes.len() + interfaces.len());
        let mut announced = HashMap::with_capacity(process_info.len());
        for info in process_info {
            announced.insert(info.pid, info.start_time);
            if self.announced.get(&info.pid) != Some(&info.start_time) {
                observations.push(Observation::Process(info));
            }
        }
        self.announced = announced;
        observations.extend(events.into_iter().map(Observation::Connection));
        observations.extend(processes.into_iter().map(Observation::ProcessNetwork));
        observations.extend(interfaces.into_iter().map(Observation::Interface));
        observations
    }
}
