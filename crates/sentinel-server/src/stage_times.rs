//! Where the time of a malware request goes: `malware_request_stage_seconds{stage}`, a histogram
//! per stage of the analysis pipeline, and `malware_request_seconds{command}`, the whole request
//! on the protocol from its first byte to its answer written.
//!
//! An operator whose clients see slow answers needs to know whether the disk (the sample's
//! write, the verdict's commit), the CPU (hashing, the models) or a remote service is the cause,
//! without a profiler on the production host; `sentinel bench server` prints the same breakdown
//! from these series. Stages run partly side by side (the static analysis runs while the sample
//! is hashed and written), so their times do not add up to the request's.

use std::time::{Duration, Instant};

use sentinel_api::prometheus_client::metrics::family::Family;
use sentinel_api::prometheus_client::metrics::histogram::Histogram;
use sentinel_api::prometheus_client::registry::Registry;

/// Upper bounds of the buckets, seconds: fine below a few milliseconds, where a static
/// request's stages are, coarse up to a sandbox run's minutes.
const BUCKETS: [f64; 20] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 120.0, 600.0,
];

/// A stage of a request, named in the `stage` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    /// The request frame, from its first byte to its last (protocol only).
    Receive,
    /// SHA-256 of the executable, checked against the hash the client sent.
    Hash,
    /// The sample made durable: its journal record or vault file (with its row, for requests
    /// whose verdicts are recorded apart).
    SampleWrite,
    /// Static features, the static model and the YARA rules.
    Static,
    /// The behaviour model on a report sent with the request, or a sandbox run and its report.
    Dynamic,
    /// The VirusTotal lookup (and upload).
    VirusTotal,
    /// The safelist and badlist lookup.
    List,
    /// The verdicts committed to the store.
    Record,
    /// The answer frame written to the connection (protocol only).
    Answer,
}

impl Stage {
    fn name(self) -> &'static str {
        match self {
            Stage::Receive => "receive",
            Stage::Hash => "hash",
            Stage::SampleWrite => "sample_write",
            Stage::Static => "static",
            Stage::Dynamic => "dynamic",
            Stage::VirusTotal => "virustotal",
            Stage::List => "list",
            Stage::Record => "record",
            Stage::Answer => "answer",
        }
    }
}

type Label = [(&'static str, &'static str); 1];

fn new_histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

/// The two histograms; clones share them.
#[derive(Debug, Clone)]
pub(crate) struct StageTimes {
    stages: Family<Label, Histogram, fn() -> Histogram>,
    requests: Family<Label, Histogram, fn() -> Histogram>,
}

impl StageTimes {
    pub fn new() -> StageTimes {
        StageTimes {
            stages: Family::new_with_constructor(new_histogram),
            requests: Family::new_with_constructor(new_histogram),
        }
    }

    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "malware_request_stage_seconds",
            "Time of each stage of the malware requests (protocol and HTTP), by stage: receive, \
             hash, sample_write, static, dynamic, virustotal, list, record, answer. Stages overlap.",
            self.stages.clone(),
        );
        registry.register(
            "malware_request_seconds",
            "Protocol requests from their first byte to their answer written, by command.",
            self.requests.clone(),
        );
    }

    pub fn observe(&self, stage: Stage, time: Duration) {
        self.stages.get_or_create(&[("stage", stage.name())]).observe(time.as_secs_f64());
    }

    /// Observes the time since `started` for `stage`.
    pub fn since(&self, stage: Stage, started: Instant) {
        self.observe(stage, started.elapsed());
    }

    /// A whole protocol request; `command` is one of the protocol's command names.
    pub fn request(&self, command: &'static str, time: Duration) {
        self.requests.get_or_create(&[("command", command)]).observe(time.as_secs_f64());
    }
}
