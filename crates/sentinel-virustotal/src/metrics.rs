//! Counters of what the VirusTotal client did, for the service's metrics
//! endpoint: requests sent, answers from the results dataset, upstream calls
//! saved by single flight, and errors by kind.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::error::ErrorKind;

#[derive(Default)]
pub(crate) struct Metrics {
    upstream_requests: AtomicU64,
    retries: AtomicU64,
    uploads: AtomicU64,
    cache_hits: AtomicU64,
    stale_answers: AtomicU64,
    single_flight_saved: AtomicU64,
    errors: [AtomicU64; ErrorKind::ALL.len()],
}

/// The counters at one moment; every figure counts since the client was built.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetricsSnapshot {
    /// HTTP requests sent to VirusTotal (each retry and each analysis poll is one).
    pub upstream_requests: u64,
    /// Requests repeated after a transient failure.
    pub retries: u64,
    /// Files uploaded.
    pub uploads: u64,
    /// Lookups answered from the results dataset with a fresh report.
    pub cache_hits: u64,
    /// Lookups answered with a stale stored report because VirusTotal could
    /// not be asked (quota, outage, missing key).
    pub stale_answers: u64,
    /// Lookups answered by another request's upstream call to the same hash.
    pub single_flight_saved: u64,
    /// Errors by kind, every kind listed.
    pub errors: BTreeMap<ErrorKind, u64>,
}

impl Metrics {
    pub(crate) fn upstream_request(&self) {
        self.upstream_requests.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn retry(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn upload(&self) {
        self.uploads.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn cache_hit(&self) {
        self.cache_hits.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn stale_answer(&self) {
        self.stale_answers.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn single_flight_saved(&self) {
        self.single_flight_saved.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn error(&self, kind: ErrorKind) {
        let index = ErrorKind::ALL.iter().position(|&listed| listed == kind).unwrap_or_default();
        self.errors[index].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> MetricsSnapshot {
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        MetricsSnapshot {
            upstream_requests: read(&self.upstream_requests),
            retries: read(&self.retries),
            uploads: read(&self.uploads),
            cache_hits: read(&self.cache_hits),
            stale_answers: read(&self.stale_answers),
            single_flight_saved: read(&self.single_flight_saved),
            errors: ErrorKind::ALL
                .iter()
                .zip(&self.errors)
                .map(|(&kind, count)| (kind, read(count)))
                .collect(),
        }
    }
}
