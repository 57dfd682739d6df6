//! CAPE report parsing: the real fixture reports and hand-made damaged ones.

use sentinel_behaviour::{
    CapeLimits, CapeReportError, ReportNote, parse_behaviour_report, parse_cape_report,
};
use sentinel_testkit::cape_fixtures::fixture_reports;

#[test]
fn real_reports_give_every_call_of_every_process_in_time_order() {
    for (path, bytes) in fixture_reports() {
        let parsed = parse_cape_report(&bytes, &CapeLimits::default()).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        let processes = json["behavior"]["processes"].as_array().unwrap();
        let mut expected: Vec<(String, usize, usize, String)> = Vec::new();
        for (p, process) in processes.iter().enumerate() {
            for (i, call) in process["calls"].as_array().unwrap().iter().enumerate() {
                expected.push((
                    call["timestamp"].as_str().unwrap().to_owned(),
                    p,
                    i,
                    call["api"].as_str().unwrap().to_ascii_lowercase(),
                ));
            }
        }
        expected.sort();
        assert_eq!(parsed.processes, processes.len(), "{}", path.display());
        assert_eq!(parsed.calls_in_report, expected.len());
        assert_eq!(parsed.sequence.len(), expected.len());
        for (got, want) in parsed.sequence.calls().iter().zip(&expected) {
            // The only renamed calls are the CAPE-only aliases.
            if want.3 != "ldrgetprocedureaddressforcaller" && want.3 != "ntunmapviewofsectionex" {
                assert_eq!(got, &want.3, "{}", path.display());
            }
        }
        assert!(parsed.notes.is_empty(), "{}: {:?}", path.display(), parsed.notes);
    }
}

#[test]
fn processes_merge_by_timestamp_with_documented_ties() {
    let report = br#"{"behavior": {"processes": [
        {"calls": [{"timestamp": "2025-01-01 10:00:00,002", "api": "A1"},
                   {"api": "A2"},
                   {"timestamp": "2025-01-01 10:00:00,005", "api": "A3"}]},
        {"calls": [{"timestamp": "2025-01-01 10:00:00,001", "api": "B1"},
                   {"timestamp": "2025-01-01 10:00:00,002", "api": "B2"}]}]}}"#;
    let parsed = parse_cape_report(report, &CapeLimits::default()).unwrap();
    // B1 first; at ,002 process 0 (A1, then A2 which inherits ,002) before process 1 (B2).
    assert_eq!(parsed.sequence.calls(), ["b1", "a1", "a2", "b2", "a3"]);
    assert_eq!(parsed.notes, [ReportNote::CallsWithoutTimestamp { count: 1 }]);
}

#[test]
fn missing_parts_give_partial_sequences_with_notes() {
    let limits = CapeLimits::default();
    let none = parse_cape_report(br#"{"info": {"id": 3}}"#, &limits).unwrap();
    assert!(none.sequence.is_empty());
    assert_eq!(none.notes, [ReportNote::NoBehaviourSection]);

    let empty = parse_cape_report(br#"{"behavior": {"processes": null}}"#, &limits).unwrap();
    assert_eq!(empty.notes, [ReportNote::NoProcesses]);

    let damaged = br#"{"behavior": {"processes": [
        {"process_id": 1},
        {"calls": [7, "x", null, {"api": 12}, {"api": "bad name!"}, {"timestamp": "t"}, {"api": "NtClose", "timestamp": "t"}]}]}}"#;
    let parsed = parse_cape_report(damaged, &limits).unwrap();
    assert_eq!(parsed.sequence.calls(), ["ntclose"]);
    assert!(parsed.notes.contains(&ReportNote::ProcessesWithoutCalls { count: 1 }));
    assert!(parsed.notes.contains(&ReportNote::CallsWithoutApi { count: 6 }), "{:?}", parsed.notes);
}

#[test]
fn limits_and_errors() {
    let report = br#"{"behavior": {"processes": [{"calls": [
        {"timestamp": "1", "api": "A"}, {"timestamp": "2", "api": "B"}, {"timestamp": "3", "api": "C"}]}]}}"#;
    let parsed = parse_cape_report(report, &CapeLimits { max_calls: 2, ..CapeLimits::default() }).unwrap();
    assert_eq!(parsed.sequence.calls(), ["a", "b"]);
    assert_eq!(parsed.notes, [ReportNote::Truncated { kept: 2, total: 3 }]);

    let small = CapeLimits { max_report_bytes: 10, ..CapeLimits::default() };
    assert!(matches!(parse_cape_report(report, &small), Err(CapeReportError::TooLarge { .. })));
    assert!(matches!(
        parse_cape_report(b"{\"behavior\": [", &CapeLimits::default()),
        Err(CapeReportError::Json(_))
    ));
    assert!(matches!(parse_cape_report(b"", &CapeLimits::default()), Err(CapeReportError::Json(_))));
    let error = parse_cape_report(
        br#"{"error": true, "error_value": "Task is still being analyzed"}"#,
        &CapeLimits::default(),
    );
    assert!(matches!(error, Err(CapeReportError::SandboxError(m)) if m.contains("still being analyzed")));
}

#[test]
fn deeply_nested_reports_are_rejected_not_overflowing_the_stack() {
    let mut hostile = String::from(r#"{"behavior": {"processes": [{"calls": [{"arguments": "#);
    hostile.push_str(&"[".repeat(100_000));
    let result = parse_cape_report(hostile.as_bytes(), &CapeLimits::default());
    assert!(matches!(result, Err(CapeReportError::Json(_))));
}

#[test]
fn client_reports_may_be_plain_call_lists() {
    let parsed =
        parse_behaviour_report(br#" ["NtOpenFile", "NtReadFile", 5, "NtClose"]"#, &CapeLimits::default())
            .unwrap();
    assert_eq!(parsed.sequence.calls(), ["ntopenfile", "ntreadfile", "ntclose"]);
    assert_eq!(parsed.notes, [ReportNote::CallsWithoutApi { count: 1 }]);
    let cape = parse_behaviour_report(br#"{"behavior": {"processes": []}}"#, &CapeLimits::default()).unwrap();
    assert_eq!(cape.notes, [ReportNote::NoProcesses]);
}
