//! The access log: one JSON line for every HTTP request, every protocol request and every
//! connection refused before it could send one (`[access_log]`, docs/security.md "Access and
//! audit log").
//!
//! Request handling never waits on the disk: [`AccessLog::record`] puts the entry in a bounded
//! queue that one writer thread empties into the file (rotated by size, `rotating_file`) or
//! stdout. When the queue is full the line is dropped and counted in `access_log_dropped_total`
//! rather than blocking the request or letting memory grow. [`AccessLogWriter::finish`] (or its
//! drop) writes out what was queued and flushes, so a clean stop loses no accepted line.
//!
//! Client addresses are written as the [`AddressRendering`] given says — clear by default; the
//! process plugs in its pseudonymiser so the log stores what the tables store.

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};

use crate::rotating_file::RotatingFile;

/// Where the lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessLogDestination {
    /// `path`, rotated by size.
    File,
    /// The process's standard output, one line each (for a collector reading it).
    Stdout,
    /// Nowhere.
    Off,
}

/// The `[access_log]` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AccessLogSettings {
    /// `"file"` (default), `"stdout"` or `"off"`.
    pub destination: AccessLogDestination,
    /// The file; default `access.log` in the data directory.
    pub path: Option<PathBuf>,
    /// Size in bytes past which the file is rotated. Default 64 MiB.
    pub max_size: u64,
    /// Rotated files kept (`access.log.1` … `access.log.N`), the oldest dropped. Default 10.
    pub max_files: usize,
}

/// The file name of the log in the data directory.
pub const ACCESS_LOG_FILE: &str = "access.log";

/// Lines waiting for the writer at most; beyond, lines are dropped and counted.
const QUEUE_LINES: usize = 16_384;

impl Default for AccessLogSettings {
    fn default() -> AccessLogSettings {
        AccessLogSettings {
            destination: AccessLogDestination::File,
            path: None,
            max_size: 64 * 1024 * 1024,
            max_files: 10,
        }
    }
}

/// Settings that cannot work, or a log that cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum AccessLogError {
    #[error("[access_log] max_size must be more than 0")]
    ZeroSize,
    #[error("cannot open the access log {path}: {source}")]
    Open { path: PathBuf, source: std::io::Error },
    #[error("cannot start the access log's writer: {0}")]
    Thread(std::io::Error),
}

impl AccessLogSettings {
    pub fn validate(&self) -> Result<(), AccessLogError> {
        if self.max_size == 0 {
            return Err(AccessLogError::ZeroSize);
        }
        Ok(())
    }

    /// The file lines go to for a process whose data directory is `data_dir`.
    pub fn file(&self, data_dir: &Path) -> PathBuf {
        self.path.clone().unwrap_or_else(|| data_dir.join(ACCESS_LOG_FILE))
    }
}

/// How a client address is written: in clear by default, or as the privacy setting says.
pub type AddressRendering = Arc<dyn Fn(IpAddr) -> String + Send + Sync>;

/// What produced a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessKind {
    /// An HTTP request (WebSocket upgrades included: one line for the upgrade).
    Http,
    /// A request of the malware server's TCP protocol.
    Protocol,
    /// A connection refused before any request (connection caps, allow-list, handshake).
    Connection,
}

/// The status of a line: an HTTP status code, or an outcome word (`yes`, `no`, `refused`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum AccessStatus {
    Code(u16),
    Outcome(String),
}

/// One request, as the listener saw it. Never holds a credential: `principal` is the
/// credential's name (`token:NAME#ID`, `jwt:SUBJECT`, `cert:SUBJECT`).
#[derive(Debug, Clone, PartialEq)]
pub struct AccessEntry {
    pub kind: AccessKind,
    pub principal: Option<String>,
    /// The client's address, already rendered ([`AccessLog::render`]).
    pub client: Option<String>,
    /// HTTP method; `None` for the protocol.
    pub method: Option<String>,
    /// The matched route template (`/api/v1/train/{job}`), `None` when none matched.
    pub route: Option<String>,
    /// The protocol command.
    pub command: Option<String>,
    pub status: AccessStatus,
    /// Why a request was refused or failed (`invalid_token`, `rate_limited`…).
    pub reason: Option<String>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub latency: Duration,
}

/// The line as written.
#[derive(Serialize)]
struct Line<'a> {
    time: String,
    kind: AccessKind,
    principal: Option<&'a str>,
    client: Option<&'a str>,
    method: Option<&'a str>,
    route: Option<&'a str>,
    command: Option<&'a str>,
    status: &'a AccessStatus,
    reason: Option<&'a str>,
    bytes_in: u64,
    bytes_out: u64,
    latency_ms: f64,
}

/// An entry with the time it was recorded.
struct Queued {
    at: SystemTime,
    entry: AccessEntry,
}

impl Queued {
    fn to_line(&self) -> Vec<u8> {
        let entry = &self.entry;
        let line = Line {
            time: humantime::format_rfc3339_millis(self.at).to_string(),
            kind: entry.kind,
            principal: entry.principal.as_deref(),
            client: entry.client.as_deref(),
            method: entry.method.as_deref(),
            route: entry.route.as_deref(),
            command: entry.command.as_deref(),
            status: &entry.status,
            reason: entry.reason.as_deref(),
            bytes_in: entry.bytes_in,
            bytes_out: entry.bytes_out,
            // Microsecond precision is plenty, and keeps the lines short.
            latency_ms: (entry.latency.as_secs_f64() * 1e6).round() / 1e3,
        };
        let mut bytes = serde_json::to_vec(&line).unwrap_or_default();
        bytes.push(b'\n');
        bytes
    }
}

enum Message {
    Entry(Box<Queued>),
    /// Write what came before, flush, and stop.
    Stop,
}

/// The handle every listener records through; clones share the queue and the counter.
#[derive(Clone)]
pub struct AccessLog {
    queue: Option<SyncSender<Message>>,
    rendering: AddressRendering,
    dropped: Counter,
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("AccessLog").field("enabled", &self.queue.is_some()).finish_non_exhaustive()
    }
}

impl Default for AccessLog {
    fn default() -> AccessLog {
        AccessLog::off()
    }
}

/// The writer thread, to stop at shutdown.
#[derive(Debug)]
pub struct AccessLogWriter {
    queue: Option<SyncSender<Message>>,
    thread: Option<JoinHandle<()>>,
}

/// Where the writer thread writes.
enum Output {
    File(RotatingFile),
    Stdout,
}

impl AccessLog {
    /// A log that records nothing (`destination = "off"`, and tests).
    pub fn off() -> AccessLog {
        AccessLog { queue: None, rendering: Arc::new(clear_address), dropped: Counter::default() }
    }

    /// Opens the destination of `settings` (the file under `data_dir` by default) and starts
    /// the writer thread. Fails when the file cannot be opened.
    pub fn start(
        settings: &AccessLogSettings,
        data_dir: &Path,
    ) -> Result<(AccessLog, AccessLogWriter), AccessLogError> {
        AccessLog::start_with_queue(settings, data_dir, QUEUE_LINES)
    }

    fn start_with_queue(
        settings: &AccessLogSettings,
        data_dir: &Path,
        queue_lines: usize,
    ) -> Result<(AccessLog, AccessLogWriter), AccessLogError> {
        settings.validate()?;
        let output = match settings.destination {
            AccessLogDestination::Off => {
                return Ok((AccessLog::off(), AccessLogWriter { queue: None, thread: None }));
            }
            AccessLogDestination::Stdout => Output::Stdout,
            AccessLogDestination::File => {
                let path = settings.file(data_dir);
                let file = RotatingFile::open(&path, settings.max_size, settings.max_files)
                    .map_err(|source| AccessLogError::Open { path, source })?;
                Output::File(file)
            }
        };
        let (sender, receiver) = sync_channel(queue_lines);
        let thread = std::thread::Builder::new()
            .name("access-log".to_owned())
            .spawn(move || write_lines(&receiver, output))
            .map_err(AccessLogError::Thread)?;
        let log = AccessLog { queue: Some(sender.clone()), ..AccessLog::off() };
        Ok((log, AccessLogWriter { queue: Some(sender), thread: Some(thread) }))
    }

    /// The same log, writing client addresses with `rendering` (the privacy setting's
    /// pseudonymiser) instead of in clear.
    pub fn with_address_rendering(mut self, rendering: AddressRendering) -> AccessLog {
        self.rendering = rendering;
        self
    }

    /// `address` as this log writes it.
    pub fn render(&self, address: IpAddr) -> String {
        (self.rendering)(address.to_canonical())
    }

    /// Whether lines go anywhere.
    pub fn is_on(&self) -> bool {
        self.queue.is_some()
    }

    /// Queues one line; never waits. A full queue drops it and counts it.
    pub fn record(&self, entry: AccessEntry) {
        let Some(queue) = &self.queue else { return };
        let queued = Box::new(Queued { at: SystemTime::now(), entry });
        match queue.try_send(Message::Entry(queued)) {
            Ok(()) => {}
            // Disconnected: the writer has stopped (the process is stopping).
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped.inc();
            }
        }
    }

    /// Lines dropped so far because the writer fell behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.get()
    }

    /// Registers `access_log_dropped_total`.
    pub fn register_metrics(&self, registry: &mut Registry) {
        registry.register(
            "access_log_dropped",
            "Access-log lines dropped because the writer fell behind (its queue was full).",
            self.dropped.clone(),
        );
    }
}

fn clear_address(address: IpAddr) -> String {
    address.to_string()
}

impl AccessLogWriter {
    /// Writes every line queued so far, flushes and stops the writer thread.
    pub fn finish(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(queue) = self.queue.take() {
            // Waits for room: at shutdown, the lines already accepted come first.
            let _ = queue.send(Message::Stop);
        }
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the access log's writer failed");
        }
    }
}

impl Drop for AccessLogWriter {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The writer thread: writes what arrives, flushing whenever the queue is empty.
fn write_lines(receiver: &Receiver<Message>, mut output: Output) {
    let mut failing = false;
    while let Ok(message) = receiver.recv() {
        let mut next = Some(message);
        let mut stop = false;
        while let Some(message) = next.take() {
            match message {
                Message::Entry(queued) => {
                    let written = output.write(&queued.to_line());
                    report(&mut failing, written);
                }
                Message::Stop => {
                    stop = true;
                    break;
                }
            }
            next = receiver.try_recv().ok();
        }
        report(&mut failing, output.flush());
        if stop {
            return;
        }
    }
    report(&mut failing, output.flush());
}

/// Logs the first of a run of write failures and the recovery, not every failed line.
fn report(failing: &mut bool, outcome: std::io::Result<()>) {
    match outcome {
        Err(error) if !*failing => {
            *failing = true;
            tracing::error!(%error, "cannot write the access log; lines are lost until it recovers");
        }
        Ok(()) if *failing => {
            *failing = false;
            tracing::info!("the access log is written again");
        }
        _ => {}
    }
}

impl Output {
    fn write(&mut self, line: &[u8]) -> std::io::Result<()> {
        match self {
            Output::File(file) => file.write_line(line),
            Output::Stdout => std::io::stdout().lock().write_all(line),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Output::File(file) => file.flush(),
            Output::Stdout => std::io::stdout().lock().flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(number: u64) -> AccessEntry {
        AccessEntry {
            kind: AccessKind::Http,
            principal: Some("token:reader#3".to_owned()),
            client: Some("127.0.0.1".to_owned()),
            method: Some("GET".to_owned()),
            route: Some("/api/v1/train/{job}".to_owned()),
            command: None,
            status: AccessStatus::Code(200),
            reason: None,
            bytes_in: number,
            bytes_out: 17,
            latency: Duration::from_micros(1500),
        }
    }

    fn file_settings(dir: &Path) -> AccessLogSettings {
        AccessLogSettings { path: Some(dir.join("access.log")), ..AccessLogSettings::default() }
    }

    #[test]
    fn settings_read_from_toml_with_defaults() {
        let settings: AccessLogSettings =
            toml::from_str("destination = \"stdout\"\nmax_files = 3\n").unwrap();
        assert_eq!(settings.destination, AccessLogDestination::Stdout);
        assert_eq!((settings.max_size, settings.max_files), (64 * 1024 * 1024, 3));
        assert_eq!(settings.file(Path::new("/data")), PathBuf::from("/data/access.log"));
        assert!(toml::from_str::<AccessLogSettings>("destination = \"syslog\"\n").is_err());
        assert!(toml::from_str::<AccessLogSettings>("max_bytes = 3\n").is_err());
        let zero = AccessLogSettings { max_size: 0, ..AccessLogSettings::default() };
        assert!(zero.validate().unwrap_err().to_string().contains("max_size"));
    }

    #[test]
    fn every_recorded_line_is_written_as_json_by_a_clean_stop() {
        let dir = tempfile::tempdir().unwrap();
        let (log, writer) = AccessLog::start(&file_settings(dir.path()), dir.path()).unwrap();
        for number in 0..1000 {
            log.record(entry(number));
        }
        writer.finish();
        let text = std::fs::read_to_string(dir.path().join("access.log")).unwrap();
        let lines: Vec<serde_json::Value> =
            text.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
        assert_eq!(lines.len(), 1000);
        assert_eq!(log.dropped(), 0);
        let first = &lines[0];
        assert_eq!(first["kind"], "http");
        assert_eq!(first["principal"], "token:reader#3");
        assert_eq!(first["route"], "/api/v1/train/{job}");
        assert_eq!(first["status"], 200);
        assert_eq!(first["latency_ms"], 1.5);
        assert!(first["reason"].is_null() && first["command"].is_null());
        let time = first["time"].as_str().unwrap();
        assert!(humantime::parse_rfc3339(time).is_ok() && time.ends_with('Z'), "{time}");
        assert_eq!(lines[999]["bytes_in"], 999);
        // After the stop, nothing is written and nothing blocks.
        log.record(entry(1000));
        assert_eq!(log.dropped(), 1);
    }

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let settings = file_settings(dir.path());
        // A queue of one line, recorded into much faster than any disk.
        let (log, writer) = AccessLog::start_with_queue(&settings, dir.path(), 1).unwrap();
        let started = std::time::Instant::now();
        for number in 0..100_000 {
            log.record(entry(number));
        }
        assert!(started.elapsed() < Duration::from_secs(10));
        writer.finish();
        let written = std::fs::read_to_string(dir.path().join("access.log")).unwrap().lines().count() as u64;
        assert!(log.dropped() > 0);
        assert_eq!(written + log.dropped(), 100_000);
    }

    #[test]
    fn addresses_are_rendered_as_told_and_off_records_nothing() {
        let log = AccessLog::off();
        assert!(!log.is_on());
        assert_eq!(log.render("::ffff:10.1.2.3".parse().unwrap()), "10.1.2.3");
        let hidden =
            log.with_address_rendering(Arc::new(|address: IpAddr| format!("anon-{}", address.is_ipv4())));
        assert_eq!(hidden.render("10.1.2.3".parse().unwrap()), "anon-true");
        let dir = tempfile::tempdir().unwrap();
        let settings =
            AccessLogSettings { destination: AccessLogDestination::Off, ..file_settings(dir.path()) };
        let (log, writer) = AccessLog::start(&settings, dir.path()).unwrap();
        log.record(entry(1));
        writer.finish();
        assert!(!dir.path().join("access.log").exists());
    }
}
