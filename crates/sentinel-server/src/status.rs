//! Counters of what the server did, for `GET /status`: connections, requests
//! by command and outcome, and model reloads.
//!
//! Requests are counted under a mutex: one uncontended lock per request is
//! noise next to reading a frame and analysing an executable.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use crate::analysis::VirusTotalReport;

/// The outcome name counted for a `Yes`.
pub const OUTCOME_YES: &str = "yes";
/// The command name counted for frames that are not a known command.
pub const COMMAND_INVALID: &str = "invalid_frame";

/// Live counters, shared by every connection.
#[derive(Debug, Default)]
pub struct Status {
    connections_open: AtomicU64,
    connections_accepted: AtomicU64,
    connections_refused: AtomicU64,
    reloads_succeeded: AtomicU64,
    reloads_failed: AtomicU64,
    requests: Mutex<BTreeMap<&'static str, BTreeMap<&'static str, u64>>>,
    last_reload_error: Mutex<Option<String>>,
}

/// A point-in-time copy of the counters, as served in JSON.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct StatusReport {
    pub connections: ConnectionCounts,
    /// Command name → outcome (`yes` or a reason name) → count.
    pub requests: BTreeMap<String, BTreeMap<String, u64>>,
    pub reloads: ReloadCounts,
    pub models: ModelReport,
    /// The VirusTotal step's counters; `null` when the step is not enabled.
    #[serde(default)]
    pub virustotal: Option<VirusTotalReport>,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct ConnectionCounts {
    pub open: u64,
    pub accepted: u64,
    /// Closed before being served: from outside `allowed_clients`, over a connection cap,
    /// a failed TLS handshake or nothing sent within `first_byte_timeout`.
    pub refused: u64,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct ReloadCounts {
    pub succeeded: u64,
    pub failed: u64,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct ModelReport {
    pub static_version: String,
    pub static_source: String,
    pub behaviour_version: String,
    pub behaviour_source: String,
}

impl Status {
    pub(crate) fn connection_opened(&self) {
        self.connections_accepted.fetch_add(1, Ordering::Relaxed);
        self.connections_open.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn connection_closed(&self) {
        self.connections_open.fetch_sub(1, Ordering::Relaxed);
    }

    pub(crate) fn connection_refused(&self) {
        self.connections_refused.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn request_done(&self, command: &'static str, outcome: &'static str) {
        let mut requests = self.requests.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        *requests.entry(command).or_default().entry(outcome).or_default() += 1;
    }

    pub(crate) fn reload_done(&self, result: Result<(), String>) {
        let counter = if result.is_ok() { &self.reloads_succeeded } else { &self.reloads_failed };
        counter.fetch_add(1, Ordering::Relaxed);
        *self.last_reload_error.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = result.err();
    }

    pub(crate) fn report(&self, models: ModelReport, virustotal: Option<VirusTotalReport>) -> StatusReport {
        let requests = self.requests.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let requests = requests
            .iter()
            .map(|(command, outcomes)| {
                let outcomes = outcomes.iter().map(|(outcome, n)| ((*outcome).to_owned(), *n)).collect();
                ((*command).to_owned(), outcomes)
            })
            .collect();
        StatusReport {
            connections: ConnectionCounts {
                open: self.connections_open.load(Ordering::Relaxed),
                accepted: self.connections_accepted.load(Ordering::Relaxed),
                refused: self.connections_refused.load(Ordering::Relaxed),
            },
            requests,
            reloads: ReloadCounts {
                succeeded: self.reloads_succeeded.load(Ordering::Relaxed),
                failed: self.reloads_failed.load(Ordering::Relaxed),
                last_error: self
                    .last_reload_error
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .clone(),
            },
            models,
            virustotal,
        }
    }
}
