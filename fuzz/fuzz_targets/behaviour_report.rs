//! Fuzzes the behaviour-report parsers that read what network clients send in a protocol field
//! (`sentinel_behaviour::parse_behaviour_report`, a CAPE v2 JSON report or a JSON array of API
//! names, and `parse_cape_report`, the CAPE report alone), with small limits (4 KiB reports, 5
//! calls, so the limit checks are reached) and with the default ones. Any bytes must give a
//! behaviour or a `CapeReportError`, never a panic; a report over the size limit is refused; the
//! two parsers agree exactly on everything that is not an array; an accepted report keeps at most
//! `max_calls` calls, each a normalised API name (at most `MAX_API_NAME_LEN` bytes), with notes
//! consistent with the counts; and the sequence equals the one an independent reading of the same
//! JSON (through `serde_json::Value`) predicts: the array's string elements in order, or the
//! calls of all processes merged by timestamp, then process, then position.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sentinel_behaviour::{
    CapeBehaviour, CapeLimits, CapeReportError, MAX_API_NAME_LEN, MAX_CALLS, ReportNote, normalise_api_name,
    parse_behaviour_report, parse_cape_report,
};
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let small = CapeLimits { max_report_bytes: 4096, max_calls: 5 };
    for limits in [small, CapeLimits::default()] {
        let either = parse_behaviour_report(data, &limits);
        let cape = parse_cape_report(data, &limits);
        if data.len() > limits.max_report_bytes {
            assert!(matches!(either, Err(CapeReportError::TooLarge { .. })));
            assert!(matches!(cape, Err(CapeReportError::TooLarge { .. })));
            continue;
        }
        let is_array = data.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[');
        if !is_array {
            match (&either, &cape) {
                (Ok(a), Ok(b)) => assert_eq!(a, b, "the parsers disagree on an object"),
                (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
                _ => panic!("one parser accepted what the other refused: {either:?} / {cape:?}"),
            }
        }
        let keep = limits.max_calls.min(MAX_CALLS);
        for behaviour in [&either, &cape].into_iter().flatten() {
            check_bounds(behaviour, keep);
        }
        // An independent reading of the same JSON.
        let Ok(value) = serde_json::from_slice::<Value>(data) else { continue };
        if is_array {
            let expected = expected_from_array(&value, keep);
            let got = either.as_ref().expect("a JSON array is a valid call list");
            assert_eq!(got.sequence.calls(), expected.as_slice());
        } else {
            match expected_from_report(&value, keep) {
                Expected::Error => assert!(either.is_err(), "a CAPE error answer was accepted"),
                Expected::Calls(expected) => {
                    if let Ok(got) = &either {
                        assert_eq!(got.sequence.calls(), expected.as_slice(), "wrong call order");
                    }
                }
                Expected::Unknown => {}
            }
        }
    }
});

/// What the limits and the notes promise about an accepted report.
fn check_bounds(behaviour: &CapeBehaviour, keep: usize) {
    let sequence = &behaviour.sequence;
    assert!(sequence.len() <= keep, "{} calls kept, limit {keep}", sequence.len());
    assert!(!sequence.truncated());
    assert!(sequence.len() <= behaviour.calls_in_report);
    for call in sequence.calls() {
        assert!(call.len() <= MAX_API_NAME_LEN && !call.is_empty());
        assert_eq!(normalise_api_name(call).as_deref(), Some(call.as_str()), "not normalised");
    }
    let mut kinds = Vec::new();
    for note in &behaviour.notes {
        let kind = std::mem::discriminant(note);
        assert!(!kinds.contains(&kind), "note twice: {:?}", behaviour.notes);
        kinds.push(kind);
        match *note {
            ReportNote::Truncated { kept, total } => {
                assert!(kept == keep && kept < total && total <= behaviour.calls_in_report)
            }
            ReportNote::CallsWithoutApi { count } | ReportNote::CallsWithoutTimestamp { count } => {
                assert!(count > 0 && count <= behaviour.calls_in_report)
            }
            ReportNote::ProcessesWithoutCalls { count } => {
                assert!(count > 0 && count <= behaviour.processes)
            }
            ReportNote::NoBehaviourSection | ReportNote::NoProcesses => {
                assert!(sequence.is_empty())
            }
        }
    }
}

/// A JSON array of API names: its string elements among the first `keep`, normalised.
fn expected_from_array(value: &Value, keep: usize) -> Vec<String> {
    let items = value.as_array().expect("starts with [");
    items.iter().take(keep).filter_map(Value::as_str).filter_map(normalise_api_name).collect()
}

enum Expected {
    Error,
    Calls(Vec<String>),
    /// A shape this reading does not predict (fields of the wrong JSON type, which the parser
    /// may refuse or read its own way).
    Unknown,
}

/// A CAPE report as documented in `cape.rs`: the calls of all processes merged by timestamp
/// (compared as text; a call without one takes the one before it in its process), then by
/// process, then by position; calls without a string `api` skipped.
fn expected_from_report(value: &Value, keep: usize) -> Expected {
    let Some(report) = value.as_object() else { return Expected::Unknown };
    if report.get("error").and_then(Value::as_bool) == Some(true) {
        return Expected::Error;
    }
    let behaviour = match report.get("behavior") {
        None | Some(Value::Null) => return Expected::Calls(Vec::new()),
        Some(Value::Object(behaviour)) => behaviour,
        Some(_) => return Expected::Unknown,
    };
    let processes = match behaviour.get("processes") {
        None | Some(Value::Null) => return Expected::Calls(Vec::new()),
        Some(Value::Array(processes)) => processes,
        Some(_) => return Expected::Unknown,
    };
    let mut timeline: Vec<(&str, usize, usize, &str)> = Vec::new();
    for (p, process) in processes.iter().enumerate() {
        let Some(process) = process.as_object() else { return Expected::Unknown };
        let calls = match process.get("calls") {
            None | Some(Value::Null) => continue,
            Some(Value::Array(calls)) => calls,
            Some(_) => return Expected::Unknown,
        };
        let mut last = "";
        for (i, call) in calls.iter().enumerate() {
            let (api, time) = match call {
                Value::Object(call) => {
                    (call.get("api").and_then(Value::as_str), call.get("timestamp").and_then(Value::as_str))
                }
                _ => (None, None),
            };
            if let Some(time) = time {
                last = time;
            }
            if let Some(api) = api.filter(|api| !api.trim().is_empty()) {
                timeline.push((last, p, i, api));
            }
        }
    }
    timeline.sort();
    Expected::Calls(
        timeline.into_iter().take(keep).filter_map(|(_, _, _, api)| normalise_api_name(api)).collect(),
    )
}
