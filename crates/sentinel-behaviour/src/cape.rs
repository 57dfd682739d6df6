//! Reading the API calls out of a CAPE v2 JSON report.
//!
//! CAPE (like Cuckoo before it) lists, for each monitored process,
//! `behavior.processes[].calls[]`, each call with `api`, `timestamp`
//! (`"2025-11-21 16:00:35,851"`), `arguments`, `category`, `status`,
//! `return`, `repeated`… Only `api` and `timestamp` are kept: the rest of a
//! report (often hundreds of megabytes of arguments, strings and dumps) is
//! skipped by the parser without being stored.
//!
//! **Order.** The calls of all processes are merged into one sequence by
//! timestamp. Ties (CAPE's timestamps have millisecond resolution) keep the
//! order of the processes in the report (the order CAPE saw them start), then
//! the order of the calls within the process. A call without a timestamp takes
//! the timestamp of the call before it in its process (the first calls of a
//! process without any take the earliest possible time), so it stays where the
//! monitor logged it. Timestamps are compared as text, which is chronological
//! for CAPE's fixed-width format.
//!
//! **Tolerance.** A report without `behavior`, without processes or without
//! calls gives an empty or partial sequence and a [`ReportNote`] saying what
//! was missing; a call entry that is not an object, or has no usable `api`, is
//! skipped and counted. Only a report that is not JSON, is too large, or is an
//! error answer from CAPE's API (`{"error": true, "error_value": …}`) is an
//! error.
//!
//! **Bounds.** The report size is limited before parsing
//! ([`CapeLimits::max_report_bytes`]); what the parser keeps is a small
//! fraction of the input; the merged sequence keeps at most
//! [`CapeLimits::max_calls`] calls.

use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use crate::error::CapeReportError;
use crate::sequence::{ApiCallSequence, MAX_CALLS};

/// Limits applied to one report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapeLimits {
    /// Largest report accepted, in bytes.
    pub max_report_bytes: usize,
    /// Calls kept after merging (at most [`MAX_CALLS`]).
    pub max_calls: usize,
}

impl Default for CapeLimits {
    fn default() -> Self {
        CapeLimits { max_report_bytes: 256 << 20, max_calls: MAX_CALLS }
    }
}

/// Something missing or cut from a report, worth telling the operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ReportNote {
    /// The report has no `behavior` section (behavioural analysis disabled or failed).
    NoBehaviourSection,
    /// `behavior.processes` is missing or empty.
    NoProcesses,
    /// Processes listed without any call (not monitored, or exited at once).
    ProcessesWithoutCalls { count: usize },
    /// Call entries without a usable `api` name.
    CallsWithoutApi { count: usize },
    /// Calls without a timestamp, placed after the call before them.
    CallsWithoutTimestamp { count: usize },
    /// Only the first `kept` of `total` calls (in time order) were kept.
    Truncated { kept: usize, total: usize },
}

impl fmt::Display for ReportNote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReportNote::NoBehaviourSection => write!(f, "the report has no behaviour section"),
            ReportNote::NoProcesses => write!(f, "the report lists no monitored process"),
            ReportNote::ProcessesWithoutCalls { count } => write!(f, "{count} process(es) without any call"),
            ReportNote::CallsWithoutApi { count } => {
                write!(f, "{count} call(s) without a usable API name skipped")
            }
            ReportNote::CallsWithoutTimestamp { count } => {
                write!(f, "{count} call(s) without a timestamp kept in process order")
            }
            ReportNote::Truncated { kept, total } => write!(f, "only the first {kept} of {total} calls kept"),
        }
    }
}

/// The behaviour read from a report.
#[derive(Debug, Clone, PartialEq)]
pub struct CapeBehaviour {
    /// All processes' calls merged in time order.
    pub sequence: ApiCallSequence,
    /// Processes listed in the report.
    pub processes: usize,
    /// Call entries in the report.
    pub calls_in_report: usize,
    pub notes: Vec<ReportNote>,
}

#[derive(Deserialize)]
struct RawReport {
    behavior: Option<RawBehaviour>,
    error: Option<serde_json::Value>,
    error_value: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct RawBehaviour {
    processes: Option<Vec<RawProcess>>,
}

#[derive(Deserialize)]
struct RawProcess {
    calls: Option<Vec<RawCall>>,
}

/// The two fields kept of a call. Any other JSON value in the `calls` list
/// (a number, a string, null…) becomes an empty call instead of an error.
#[derive(Default)]
struct RawCall {
    api: Option<String>,
    timestamp: Option<String>,
}

impl<'de> Deserialize<'de> for RawCall {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct CallVisitor;

        /// A field value kept only when it is a string.
        struct MaybeString(Option<String>);
        impl<'de> Deserialize<'de> for MaybeString {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let value = serde_json::Value::deserialize(deserializer)?;
                Ok(MaybeString(match value {
                    serde_json::Value::String(s) => Some(s),
                    _ => None,
                }))
            }
        }

        impl<'de> Visitor<'de> for CallVisitor {
            type Value = RawCall;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a CAPE call")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawCall, A::Error> {
                let mut call = RawCall::default();
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    match key.as_ref() {
                        "api" => call.api = map.next_value::<MaybeString>()?.0,
                        "timestamp" => call.timestamp = map.next_value::<MaybeString>()?.0,
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(call)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawCall, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(RawCall::default())
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<RawCall, E> {
                Ok(RawCall::default())
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<RawCall, E> {
                Ok(RawCall::default())
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<RawCall, E> {
                Ok(RawCall::default())
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<RawCall, E> {
                Ok(RawCall::default())
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<RawCall, E> {
                Ok(RawCall::default())
            }
            fn visit_unit<E: de::Error>(self) -> Result<RawCall, E> {
                Ok(RawCall::default())
            }
        }
        deserializer.deserialize_any(CallVisitor)
    }
}

/// Reads the API-call sequence of a CAPE v2 JSON report.
pub fn parse_cape_report(json: &[u8], limits: &CapeLimits) -> Result<CapeBehaviour, CapeReportError> {
    if json.len() > limits.max_report_bytes {
        return Err(CapeReportError::TooLarge { size: json.len(), limit: limits.max_report_bytes });
    }
    let report: RawReport = serde_json::from_slice(json)?;
    if report.error.as_ref().and_then(serde_json::Value::as_bool) == Some(true) {
        let message = match report.error_value {
            Some(serde_json::Value::String(s)) => s.chars().take(300).collect(),
            Some(other) => other.to_string().chars().take(300).collect(),
            None => "no message".to_owned(),
        };
        return Err(CapeReportError::SandboxError(message));
    }
    let mut notes = Vec::new();
    let Some(behaviour) = report.behavior else {
        notes.push(ReportNote::NoBehaviourSection);
        return Ok(CapeBehaviour {
            sequence: ApiCallSequence::new(),
            processes: 0,
            calls_in_report: 0,
            notes,
        });
    };
    let processes = behaviour.processes.unwrap_or_default();
    if processes.is_empty() {
        notes.push(ReportNote::NoProcesses);
    }

    // (timestamp, process, position, api) for every call with an API name.
    let mut timeline: Vec<(&str, usize, usize, &str)> = Vec::new();
    let (mut without_calls, mut without_api, mut without_time, mut total) = (0, 0, 0, 0);
    for (process_index, process) in processes.iter().enumerate() {
        let calls = process.calls.as_deref().unwrap_or_default();
        if calls.is_empty() {
            without_calls += 1;
        }
        total += calls.len();
        let mut last_time = "";
        for (position, call) in calls.iter().enumerate() {
            let time = match call.timestamp.as_deref() {
                Some(t) => {
                    last_time = t;
                    t
                }
                None => {
                    without_time += 1;
                    last_time
                }
            };
            match call.api.as_deref().map(str::trim) {
                Some(api) if !api.is_empty() => timeline.push((time, process_index, position, api)),
                _ => without_api += 1,
            }
        }
    }
    // Stable on (time, process, position): the tie rules of the module documentation.
    timeline.sort_by(|a, b| (a.0, a.1, a.2).cmp(&(b.0, b.1, b.2)));

    let keep = limits.max_calls.min(MAX_CALLS);
    let mut sequence = ApiCallSequence::new();
    for &(_, _, _, api) in timeline.iter().take(keep) {
        sequence.push(api);
    }
    if sequence.rejected() > 0 {
        without_api += sequence.rejected();
    }
    if without_calls > 0 && !processes.is_empty() {
        notes.push(ReportNote::ProcessesWithoutCalls { count: without_calls });
    }
    if without_api > 0 {
        notes.push(ReportNote::CallsWithoutApi { count: without_api });
    }
    if without_time > 0 {
        notes.push(ReportNote::CallsWithoutTimestamp { count: without_time });
    }
    if timeline.len() > keep {
        notes.push(ReportNote::Truncated { kept: keep, total: timeline.len() });
    }
    Ok(CapeBehaviour { sequence, processes: processes.len(), calls_in_report: total, notes })
}

/// Reads a behaviour report as a client may send it: either a CAPE v2 JSON
/// report (an object) or a JSON array of API names in call order.
pub fn parse_behaviour_report(json: &[u8], limits: &CapeLimits) -> Result<CapeBehaviour, CapeReportError> {
    if json.len() > limits.max_report_bytes {
        return Err(CapeReportError::TooLarge { size: json.len(), limit: limits.max_report_bytes });
    }
    let first = json.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'[') {
        return parse_cape_report(json, limits);
    }
    let names: Vec<MaybeName> = serde_json::from_slice(json)?;
    let total = names.len();
    let keep = limits.max_calls.min(MAX_CALLS);
    let mut without_api = 0;
    let mut sequence = ApiCallSequence::new();
    for name in names.iter().take(keep) {
        match name.0.as_deref() {
            Some(api) => {
                sequence.push(api);
            }
            None => without_api += 1,
        }
    }
    without_api += sequence.rejected();
    let mut notes = Vec::new();
    if without_api > 0 {
        notes.push(ReportNote::CallsWithoutApi { count: without_api });
    }
    if total > keep {
        notes.push(ReportNote::Truncated { kept: keep, total });
    }
    Ok(CapeBehaviour { sequence, processes: 0, calls_in_report: total, notes })
}

/// An element of a call list: kept when it is a string.
struct MaybeName(Option<String>);

impl<'de> Deserialize<'de> for MaybeName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(MaybeName(match serde_json::Value::deserialize(deserializer)? {
            serde_json::Value::String(name) => Some(name),
            _ => None,
        }))
    }
}
