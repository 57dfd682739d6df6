//! Network collectors for Sentinel's network AI service: which sockets are open on a host, who
//! owns them, how many bytes they move, and how much traffic each interface carries.
//!
//! - [`record`]: the records ([`ConnectionRecord`], [`InterfaceRecord`],
//!   [`ProcessNetworkRecord`], [`ProcessInfo`]) grouped in a [`Snapshot`]; also the versioned JSON
//!   that remote agents post, checked with [`Snapshot::from_json`].
//! - [`Collector`]: takes a snapshot of one host; [`LinuxCollector`] is the Linux implementation
//!   (netlink sock_diag and `/proc`, the data of `ss -tuanpi`).
//! - [`ConnectionTracker`]: turns successive snapshots into new / ongoing / closed connection
//!   events with byte deltas.
//! - [`spawn_collection`]: the loop that runs a collector every interval on tokio and streams
//!   [`Observation`]s through a bounded channel, counting what a slow consumer made it drop.
//!
//! ```no_run
//! # async fn start() -> Result<(), Box<dyn std::error::Error>> {
//! use sentinel_netmon::{CollectorSettings, LinuxCollector, Observation, spawn_collection};
//!
//! let settings = CollectorSettings::default();
//! let collector = LinuxCollector::from_settings(&settings)?;
//! let (handle, mut observations) = spawn_collection(&settings, collector)?;
//! while let Some(observation) = observations.recv().await {
//!     if let Observation::Connection(event) = observation {
//!         println!("{:?} {:?} dropped so far: {}", event.change, event.record, handle.dropped());
//!     }
//! }
//! # Ok(())
//! # }
//! ```

mod collection_loop;
mod collector;
mod lifecycle;
#[cfg(target_os = "linux")]
mod linux;
pub mod record;
mod validation;

pub use collection_loop::{
    CollectionHandle, CollectorSettings, Observation, SettingsError, spawn_collection,
};
pub use collector::{CollectError, Collector};
pub use lifecycle::{ConnectionChange, ConnectionEvent, ConnectionTracker};
#[cfg(target_os = "linux")]
pub use linux::LinuxCollector;
pub use record::{
    ConnectionRecord, Family, InterfaceRecord, ProcessInfo, ProcessNetworkRecord, Protocol, SCHEMA_VERSION,
    Snapshot, SocketState,
};
pub use validation::{ValidationError, ValidationLimits};
