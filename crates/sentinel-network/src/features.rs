//! Feature engineering: turns a connection event into the raw feature vector the models score.
//!
//! A vector has per-connection features (bytes moved, rates, round-trip time, retransmits,
//! state), temporal features over a sliding window per process and per remote host (connection
//! rate, distinct remote ports and hosts, failed connection attempts, byte rates) and one
//! statistical feature computed by the model against its training data (how rare the process
//! is). Values stay raw here (bytes, counts, per second); the fitted normalisation (log, scaling,
//! missing values) belongs to the model, so stored vectors can train any later model.
//! `docs/network.md` documents every field.

use std::collections::HashMap;
use std::collections::VecDeque;
use std::hash::Hash;
use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use sentinel_netmon::{ConnectionChange, ConnectionEvent, ConnectionRecord, Protocol, SocketState};
use serde_json::{Map, Value as Json};

/// Numeric features, in the order of `RawFeatures::numbers`.
pub const NUMERIC_FEATURES: [&str; 20] = [
    "bytes_sent_delta",
    "bytes_received_delta",
    "bytes_sent_total",
    "bytes_received_total",
    "send_rate",
    "receive_rate",
    "rtt_ms",
    "retransmits",
    "remote_is_loopback",
    "process_connection_rate",
    "process_distinct_remote_ports",
    "process_distinct_remote_hosts",
    "process_failed_connects",
    "process_send_rate",
    "process_receive_rate",
    "host_connection_rate",
    "host_distinct_remote_ports",
    "host_failed_connects",
    "host_send_rate",
    "host_receive_rate",
];

/// Categorical features, in the order of `RawFeatures::categories`.
pub const CATEGORICAL_FEATURES: [&str; 4] = ["protocol", "state", "change", "remote_port_class"];

/// The feature the model adds from its training data: −ln of the share of training rows that
/// came from the same process name (a name never seen in training gets the largest value).
pub const PROCESS_RARITY: &str = "process_rarity";

/// Features whose scale is logarithmic (bytes, counts, rates): the model applies ln(1 + x).
pub(crate) fn is_heavy_tailed(index: usize) -> bool {
    // remote_is_loopback is 0/1; rtt is already compact but spans orders of magnitude.
    NUMERIC_FEATURES[index] != "remote_is_loopback"
}

/// One raw feature vector: numbers (`None` = missing) and categories.
#[derive(Debug, Clone, PartialEq)]
pub struct RawFeatures {
    pub numbers: [Option<f64>; NUMERIC_FEATURES.len()],
    pub categories: [String; CATEGORICAL_FEATURES.len()],
}

/// Why a posted feature object is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FeatureError {
    #[error("unknown feature {0:?} (see docs/network.md for the feature names)")]
    Unknown(String),
    #[error("feature {name:?} must be {expected}")]
    WrongType { name: String, expected: &'static str },
}

impl RawFeatures {
    /// The vector as a JSON object `{name: value}`, missing numbers as `null`: the format stored
    /// in `network_features.feature_vector` and accepted by `/api/v1/analyze`.
    pub fn to_json(&self) -> Json {
        let mut object = Map::with_capacity(NUMERIC_FEATURES.len() + CATEGORICAL_FEATURES.len());
        for (name, value) in NUMERIC_FEATURES.iter().zip(&self.numbers) {
            object.insert((*name).to_owned(), value.map_or(Json::Null, Json::from));
        }
        for (name, value) in CATEGORICAL_FEATURES.iter().zip(&self.categories) {
            object.insert((*name).to_owned(), Json::from(value.as_str()));
        }
        Json::Object(object)
    }

    /// Reads a vector from a JSON object. Absent features are missing values; unknown names and
    /// wrong types are errors (a typo must not silently become a missing value).
    pub fn from_json(object: &Map<String, Json>) -> Result<RawFeatures, FeatureError> {
        let mut features =
            RawFeatures { numbers: [None; NUMERIC_FEATURES.len()], categories: Default::default() };
        for (name, value) in object {
            if let Some(index) = NUMERIC_FEATURES.iter().position(|known| known == name) {
                features.numbers[index] = match value {
                    Json::Null => None,
                    Json::Number(number) => match number.as_f64() {
                        Some(number) if number.is_finite() && number >= 0.0 => Some(number),
                        _ => {
                            return Err(FeatureError::WrongType {
                                name: name.clone(),
                                expected: "a finite number ≥ 0 or null",
                            });
                        }
                    },
                    _ => {
                        return Err(FeatureError::WrongType {
                            name: name.clone(),
                            expected: "a finite number ≥ 0 or null",
                        });
                    }
                };
            } else if let Some(index) = CATEGORICAL_FEATURES.iter().position(|known| known == name) {
                features.categories[index] = match value {
                    Json::String(text) if text.len() <= 64 => text.clone(),
                    _ => {
                        return Err(FeatureError::WrongType {
                            name: name.clone(),
                            expected: "a string of at most 64 bytes",
                        });
                    }
                };
            } else if name != "process_name" {
                return Err(FeatureError::Unknown(name.clone()));
            }
        }
        Ok(features)
    }
}

/// What the sliding windows remember of one connection event.
struct WindowEntry {
    at: f64,
    port: u16,
    host: IpAddr,
    new_connection: bool,
    failed: bool,
    sent: f64,
    received: f64,
}

/// Sums and distinct counts over the events of one key in the last `window` seconds, kept up to
/// date incrementally so that each event costs O(1) however busy the key is.
struct Window {
    entries: VecDeque<WindowEntry>,
    ports: HashMap<u16, u32>,
    hosts: HashMap<IpAddr, u32>,
    new_connections: u32,
    failed: u32,
    sent: f64,
    received: f64,
    latest: f64,
}

fn add<K: Hash + Eq>(counts: &mut HashMap<K, u32>, key: K) {
    *counts.entry(key).or_default() += 1;
}

fn remove<K: Hash + Eq>(counts: &mut HashMap<K, u32>, key: &K) {
    if let Some(count) = counts.get_mut(key) {
        *count -= 1;
        if *count == 0 {
            counts.remove(key);
        }
    }
}

impl Window {
    fn new() -> Window {
        Window {
            entries: VecDeque::new(),
            ports: HashMap::new(),
            hosts: HashMap::new(),
            new_connections: 0,
            failed: 0,
            sent: 0.0,
            received: 0.0,
            latest: f64::MIN,
        }
    }

    fn push(&mut self, entry: WindowEntry, window: f64, max_entries: usize) {
        self.latest = self.latest.max(entry.at);
        add(&mut self.ports, entry.port);
        add(&mut self.hosts, entry.host);
        self.new_connections += u32::from(entry.new_connection);
        self.failed += u32::from(entry.failed);
        self.sent += entry.sent;
        self.received += entry.received;
        self.entries.push_back(entry);
        let horizon = self.latest - window;
        while let Some(front) = self.entries.front() {
            if front.at >= horizon && self.entries.len() <= max_entries {
                break;
            }
            let Some(old) = self.entries.pop_front() else { break };
            remove(&mut self.ports, &old.port);
            remove(&mut self.hosts, &old.host);
            self.new_connections -= u32::from(old.new_connection);
            self.failed -= u32::from(old.failed);
            self.sent = (self.sent - old.sent).max(0.0);
            self.received = (self.received - old.received).max(0.0);
        }
    }
}

/// Settings of the sliding windows.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WindowSettings {
    pub window_secs: f64,
    pub max_entries_per_key: usize,
    pub max_keys: usize,
}

/// Where a listener waits: host, protocol, local address and port.
type ListenerKey = (String, Protocol, IpAddr, u16);

/// Keeps the sliding windows of one stream of events (the live host and ingested agents share
/// one; each `/api/v1/analyze` request gets its own) and computes feature vectors.
pub(crate) struct FeatureExtractor {
    settings: WindowSettings,
    processes: HashMap<(String, String), Window>,
    remote_hosts: HashMap<(String, IpAddr), Window>,
    /// The owner of each listener seen in the stream, to give an ownerless accepted socket the
    /// window of the server that accepted it (see [`FeatureExtractor::window_owner`]).
    listeners: HashMap<ListenerKey, String>,
}

impl FeatureExtractor {
    pub(crate) fn new(settings: WindowSettings) -> FeatureExtractor {
        FeatureExtractor {
            settings,
            processes: HashMap::new(),
            remote_hosts: HashMap::new(),
            listeners: HashMap::new(),
        }
    }

    /// Follows the listeners of the stream: a listener is announced (`new`) once with its owner
    /// and `closed` when it goes away. Bounded like the windows: past `max_keys` listeners the
    /// map starts over, and ownerless sockets then share the empty name until the listeners are
    /// seen again (the stream re-announces every socket after a restart).
    fn follow_listener(&mut self, event: &ConnectionEvent) {
        let record = &event.record;
        if record.state != SocketState::Listen {
            return;
        }
        let key = (record.host.clone(), record.protocol, record.local_ip, record.local_port);
        match (&record.process_name, event.change) {
            (_, ConnectionChange::Closed) | (None, _) => {
                self.listeners.remove(&key);
            }
            (Some(owner), _) => {
                if self.listeners.len() >= self.settings.max_keys && !self.listeners.contains_key(&key) {
                    self.listeners.clear();
                }
                self.listeners.insert(key, owner.clone());
            }
        }
    }

    /// The process whose windows an event belongs to: its owner, or for a socket whose owner is
    /// unknown, the owner of the listener on its local port.
    ///
    /// A server's connections are mostly first seen in TIME_WAIT, which no process owns: pooled
    /// under the empty name with every other ownerless socket of the host (other processes'
    /// TIME_WAIT sockets, connections caught open whose owner exited before `/proc` was read,
    /// refused attempts), their window features followed whatever that pool did. One
    /// connection caught open with its bytes gave every TIME_WAIT row of an ordinary web
    /// server a send rate for a whole window, and a model that had learned those rows as a
    /// tight cluster flagged them all (the go-live burst of issue #17, `docs/network.md`). An
    /// accepted socket shares its local port with the listener that accepted it, so its server
    /// is known.
    fn window_owner<'a>(&'a self, record: &'a ConnectionRecord) -> &'a str {
        if let Some(name) = record.process_name.as_deref() {
            return name;
        }
        if record.state == SocketState::Listen {
            return "";
        }
        let unspecified = match record.local_ip {
            IpAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
        };
        let listener =
            |ip: IpAddr| self.listeners.get(&(record.host.clone(), record.protocol, ip, record.local_port));
        // A listener on the socket's own address, else on every address of its family, else a
        // dual-stack `[::]` one, which also accepts IPv4 connections.
        listener(record.local_ip)
            .or_else(|| listener(unspecified))
            .or_else(|| listener(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)))
            .map_or("", String::as_str)
    }

    /// Adds the event to the windows and returns its features, windows included.
    pub(crate) fn observe(&mut self, event: &ConnectionEvent) -> RawFeatures {
        let record = &event.record;
        let at = seconds(record.timestamp);
        let window = self.settings.window_secs;
        let max_entries = self.settings.max_entries_per_key;
        self.evict_idle(at);
        let new_connection = event.change == ConnectionChange::New && is_connection(record);
        let failed = new_connection && is_failed_attempt(record);
        let sent = event.bytes_sent_delta.unwrap_or(0) as f64;
        let received = event.bytes_received_delta.unwrap_or(0) as f64;

        let counted = is_connection(record);
        let entry = || WindowEntry {
            at,
            port: record.remote_port,
            host: record.remote_ip,
            new_connection,
            failed,
            sent,
            received,
        };
        self.follow_listener(event);
        let process_name = self.window_owner(record).to_owned();
        let loopback = is_loopback(record.remote_ip);
        let process_key = (record.host.clone(), process_name.clone());
        let process = self.processes.entry(process_key).or_insert_with(Window::new);
        if counted {
            process.push(entry(), window, max_entries);
        }
        let process_numbers = [
            Some(f64::from(process.new_connections) / window),
            Some(process.ports.len() as f64),
            Some(process.hosts.len() as f64),
            Some(f64::from(process.failed)),
            Some(process.sent / window),
            Some(process.received / window),
        ];

        // Loopback is this host itself, shared by every local process: one process's burst to it
        // would make every local connection look anomalous, so a loopback peer is followed per
        // local process.
        let remote_key =
            if loopback { format!("{}\0{}", record.host, process_name) } else { record.host.clone() };
        let remote = self.remote_hosts.entry((remote_key, record.remote_ip)).or_insert_with(Window::new);
        if counted {
            remote.push(entry(), window, max_entries);
        }
        let host_numbers = [
            Some(f64::from(remote.new_connections) / window),
            Some(remote.ports.len() as f64),
            Some(f64::from(remote.failed)),
            Some(remote.sent / window),
            Some(remote.received / window),
        ];
        connection_features(event, WindowValues { process: process_numbers, host: host_numbers })
    }

    /// Drops keys whose windows went quiet, so that memory follows the active keys; when there
    /// are still too many keys, the windows start over (features are then computed as if fresh)
    /// rather than growing without bound.
    fn evict_idle(&mut self, now: f64) {
        if self.processes.len() + self.remote_hosts.len() <= self.settings.max_keys {
            return;
        }
        let horizon = now - self.settings.window_secs;
        self.processes.retain(|_, window| window.latest >= horizon);
        self.remote_hosts.retain(|_, window| window.latest >= horizon);
        if self.processes.len() + self.remote_hosts.len() > self.settings.max_keys {
            tracing::warn!(keys = self.settings.max_keys, "too many feature windows: starting over");
            self.processes.clear();
            self.remote_hosts.clear();
        }
    }
}

/// A connection attempt nobody answered yet (SYN_SENT), or one refused: closed having received
/// no payload and at most one segment, the peer's reset (the Linux collector reports refused
/// attempts from the kernel's destroyed-socket notifications, as no snapshot catches them).
fn is_failed_attempt(record: &ConnectionRecord) -> bool {
    match record.state {
        SocketState::SynSent => true,
        SocketState::Close => {
            record.bytes_received == Some(0) && record.segs_in.is_some_and(|segments| segments <= 1)
        }
        _ => false,
    }
}

/// Whether the socket is a connection (not a listener or an unconnected UDP socket).
fn is_connection(record: &ConnectionRecord) -> bool {
    !matches!(record.state, SocketState::Listen | SocketState::Unconn)
}

fn seconds(time: SystemTime) -> f64 {
    time.duration_since(UNIX_EPOCH).map_or(0.0, |elapsed| elapsed.as_secs_f64())
}

/// The features of a record judged on its own, outside any stream: the window features are
/// missing (the model fills them with their training medians).
pub(crate) fn standalone_features(event: &ConnectionEvent) -> RawFeatures {
    connection_features(event, WindowValues::default())
}

/// The temporal features of one event, in the order of [`NUMERIC_FEATURES`]: the six
/// `process_*` ones, then the five `host_*` ones; `None` where not measured. The sliding windows
/// fill them; a data set that measured its own windows (NSL-KDD's two-second counts) gives them
/// to `evaluation` directly.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct WindowValues {
    pub process: [Option<f64>; 6],
    pub host: [Option<f64>; 5],
}

/// The feature vector of an event with the given window features: the code every path (live,
/// ingested, analysed, evaluated) shares.
pub(crate) fn connection_features(event: &ConnectionEvent, windows: WindowValues) -> RawFeatures {
    let WindowValues { process, host } = windows;
    let record = &event.record;
    let interval = event.interval_ms.filter(|&ms| ms > 0).map(|ms| ms as f64 / 1000.0);
    let loopback = is_loopback(record.remote_ip);
    // A loopback connection has no path: its round-trip time is how soon the host's scheduler ran
    // the kernel's acknowledgement, microseconds that grow tenfold whenever the host is busy. Kept,
    // it flags every local connection (an application and its database on 127.0.0.1) of a loaded
    // host; left missing, it is the training median, as for a platform that does not measure it.
    let rtt_ms = record.rtt_us.filter(|_| !loopback).map(|us| f64::from(us) / 1000.0);
    let rate = |delta: Option<u64>| Some(delta? as f64 / interval?);
    let numbers = [
        event.bytes_sent_delta.map(|v| v as f64),
        event.bytes_received_delta.map(|v| v as f64),
        record.bytes_sent.map(|v| v as f64),
        record.bytes_received.map(|v| v as f64),
        rate(event.bytes_sent_delta),
        rate(event.bytes_received_delta),
        rtt_ms,
        record.retransmits.map(f64::from),
        Some(f64::from(u8::from(loopback))),
        process[0],
        process[1],
        process[2],
        process[3],
        process[4],
        process[5],
        host[0],
        host[1],
        host[2],
        host[3],
        host[4],
    ];
    let protocol = match record.protocol {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    };
    let change = match event.change {
        ConnectionChange::New => "new",
        ConnectionChange::Ongoing => "ongoing",
        ConnectionChange::Closed => "closed",
    };
    let state = serde_json::to_value(record.state)
        .ok()
        .and_then(|value| value.as_str().map(str::to_owned))
        .unwrap_or_else(|| "UNKNOWN".to_owned());
    RawFeatures {
        numbers,
        categories: [
            protocol.to_owned(),
            state,
            change.to_owned(),
            port_class(record.remote_port).to_owned(),
        ],
    }
}

fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V6(v6) => v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
        IpAddr::V4(v4) => v4.is_loopback(),
    }
}

/// A scan or a connection to an odd service shows in the class. `dynamic` starts at 32768, not at
/// IANA's 49152: it is every port an operating system picks client ports from (Linux 32768–60999,
/// Windows and IANA 49152–65535), so the remote side of an accepted connection is `dynamic`
/// whichever port the kernel gave the client. With IANA's boundary, a server's ordinary clients
/// changed class when Linux's allocator crossed 49152 — a category the model had not seen for
/// them, and a burst of false alarms on unchanged traffic.
fn port_class(port: u16) -> &'static str {
    match port {
        0 => "none",
        1..=1023 => "well_known",
        1024..=32767 => "registered",
        _ => "dynamic",
    }
}

#[cfg(test)]
mod tests;
