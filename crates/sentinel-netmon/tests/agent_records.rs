//! Records from remote agents: the JSON format round-trips, and what a buggy or hostile agent
//! could send is rejected with an error that says where.

use std::time::{Duration, SystemTime};

use sentinel_netmon::{SCHEMA_VERSION, Snapshot, ValidationError, ValidationLimits};

const AGENT_SNAPSHOT: &str = r#"{
  "schema_version": 1,
  "host": "win-endpoint-17",
  "timestamp": "2026-11-23T08:31:00.250000Z",
  "connections": [{
    "timestamp": "2026-11-23T08:31:00.250000Z",
    "host": "win-endpoint-17",
    "pid": 4242,
    "process_name": "chrome.exe",
    "process_path": "C:\\Program Files\\Google\\Chrome\\Application\\chrome.exe",
    "user": "CORP\\alice",
    "local_ip": "10.1.2.3", "local_port": 50123,
    "remote_ip": "142.250.1.1", "remote_port": 443,
    "protocol": "tcp", "family": "v4", "state": "ESTABLISHED",
    "bytes_sent": 1200, "bytes_received": 48000,
    "rtt_us": null, "retransmits": null, "segs_in": null, "segs_out": null
  }],
  "interfaces": [{
    "timestamp": "2026-11-23T08:31:00.250000Z", "host": "win-endpoint-17", "name": "Ethernet 2",
    "rx_bytes": 1, "rx_packets": 1, "rx_errors": 0, "rx_drops": 0,
    "tx_bytes": 1, "tx_packets": 1, "tx_errors": 0, "tx_drops": 0
  }],
  "processes": [{
    "timestamp": "2026-11-23T08:31:00.250000Z", "host": "win-endpoint-17", "pid": 4242, "name": "chrome.exe",
    "tcp_connections": 1, "tcp_listeners": 0, "udp_sockets": 0, "bytes_sent": 1200, "bytes_received": 48000
  }],
  "process_info": [{
    "host": "win-endpoint-17", "pid": 4242, "ppid": 4000, "name": "chrome.exe", "path": null, "user": null,
    "cmdline": ["chrome.exe", "--type=renderer"], "cmdline_truncated": false,
    "start_time": "2026-11-23T08:00:00Z"
  }]
}"#;

fn edited(from: &str, to: &str) -> Vec<u8> {
    assert!(AGENT_SNAPSHOT.contains(from), "{from} is in the sample");
    AGENT_SNAPSHOT.replacen(from, to, 1).into_bytes()
}

fn rejected(body: &[u8]) -> ValidationError {
    Snapshot::from_json(body, &ValidationLimits::default()).expect_err("the snapshot is rejected")
}

#[test]
fn a_windows_agent_snapshot_is_accepted_and_round_trips() {
    let snapshot = Snapshot::from_json(AGENT_SNAPSHOT.as_bytes(), &ValidationLimits::default()).unwrap();
    assert_eq!(snapshot.schema_version, SCHEMA_VERSION);
    assert_eq!(snapshot.connections[0].socket_id, None, "socket_id is optional");
    assert_eq!(snapshot.connections[0].remote_ip.to_string(), "142.250.1.1");
    let again = serde_json::to_vec(&snapshot).unwrap();
    assert_eq!(Snapshot::from_json(&again, &ValidationLimits::default()).unwrap(), snapshot);
    let text = String::from_utf8(again).unwrap();
    assert!(text.contains(r#""timestamp":"2026-11-23T08:31:00.250000Z""#), "{text}");
}

#[test]
fn malformed_fields_are_rejected_by_name() {
    let error = rejected(&edited(r#""remote_ip": "142.250.1.1""#, r#""remote_ip": "142.250.1.999""#));
    assert!(matches!(error, ValidationError::Json(_)), "{error}");
    assert!(error.to_string().contains("invalid IP address"), "{error}");

    let error = rejected(&edited(r#""local_port": 50123"#, r#""local_port": 70000"#));
    assert!(error.to_string().contains("70000"), "{error}");

    let error = rejected(&edited(r#""state": "ESTABLISHED""#, r#""state": "HALF_OPEN""#));
    assert!(error.to_string().contains("HALF_OPEN"), "{error}");

    let error = rejected(&edited("2026-11-23T08:00:00Z", "2026-11-23T09:00:00+01:00"));
    assert!(error.to_string().contains("RFC 3339 UTC"), "{error}");
}

/// Found with the `connection_snapshot` fuzz target's timestamp check: humantime, which reads
/// the timestamps, accepts a `+00:00` offset and ignores what follows a `+` after a fraction or
/// a second `Z`, so these malformed timestamps used to be accepted.
#[test]
fn timestamps_other_than_the_documented_utc_form_are_rejected() {
    for bad in [
        "2026-11-23T08:31:00.250000+00:00",
        "2026-11-23T08:31:00.2+abcdZ",
        "2026-11-23T08:31:00ZjunkZ",
        "2026-11-23T08:31:00.Z",
        "2026-11-23T08:31:00.25x0Z",
        "2026-11-23 08:31:00.250000Z",
    ] {
        let error = rejected(&edited("2026-11-23T08:31:00.250000Z", bad));
        assert!(matches!(error, ValidationError::Json(_)), "{bad}: {error}");
        assert!(error.to_string().contains("RFC 3339 UTC"), "{bad}: {error}");
        let error = rejected(&edited("2026-11-23T08:00:00Z", bad));
        assert!(error.to_string().contains("RFC 3339 UTC"), "start_time {bad}: {error}");
    }
    for good in ["2026-11-23T08:31:00Z", "2026-11-23T08:31:00.2Z", "2026-11-23T08:31:00.123456789Z"] {
        let body = edited("2026-11-23T08:31:00.250000Z", good);
        Snapshot::from_json(&body, &ValidationLimits::default()).expect(good);
    }
}

#[test]
fn inconsistent_or_oversized_records_are_rejected_with_their_location() {
    let error = rejected(&edited(r#""family": "v4""#, r#""family": "v6""#));
    assert_eq!(error.to_string(), "connections[0].local_ip: family V6 does not match address 10.1.2.3");

    let error = rejected(&edited(
        r#""host": "win-endpoint-17", "name": "Ethernet 2""#,
        r#""host": "other", "name": "Ethernet 2""#,
    ));
    assert!(
        matches!(error, ValidationError::HostMismatch { ref location, .. } if location == "interfaces[0].host"),
        "{error}"
    );

    let long_path = format!(r#""process_path": "C:\\{}""#, "a".repeat(5000));
    let error = rejected(&edited(
        r#""process_path": "C:\\Program Files\\Google\\Chrome\\Application\\chrome.exe""#,
        &long_path,
    ));
    assert!(
        matches!(error, ValidationError::TooLong { ref location, limit: 4096, .. } if location == "connections[0].process_path"),
        "{error}"
    );

    let error = rejected(&edited(r#""schema_version": 1"#, r#""schema_version": 2"#));
    assert!(matches!(error, ValidationError::UnsupportedVersion { found: 2, supported: 1 }), "{error}");

    let small = ValidationLimits { max_body_bytes: 100, ..ValidationLimits::default() };
    let error = Snapshot::from_json(AGENT_SNAPSHOT.as_bytes(), &small).unwrap_err();
    assert!(matches!(error, ValidationError::BodyTooLarge { limit: 100, .. }), "{error}");

    let one_record = ValidationLimits { max_records: 0, ..ValidationLimits::default() };
    let error = Snapshot::from_json(AGENT_SNAPSHOT.as_bytes(), &one_record).unwrap_err();
    assert!(
        matches!(error, ValidationError::TooManyRecords { kind: "connections", count: 1, limit: 0 }),
        "{error}"
    );
}

#[test]
fn timestamps_far_in_the_future_are_rejected() {
    let snapshot = Snapshot::from_json(AGENT_SNAPSHOT.as_bytes(), &ValidationLimits::default()).unwrap();
    let an_hour_before = snapshot.timestamp - Duration::from_secs(3600);
    let error = snapshot.validate(&ValidationLimits::default(), an_hour_before).unwrap_err();
    assert!(
        matches!(error, ValidationError::FutureTimestamp { ref location, .. } if location == "timestamp"),
        "{error}"
    );
    assert!(snapshot.validate(&ValidationLimits::default(), SystemTime::now()).is_ok());
}

#[cfg(target_os = "linux")]
#[test]
fn a_snapshot_of_this_host_passes_the_checks_applied_to_agents() {
    use sentinel_netmon::{Collector, LinuxCollector};

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let snapshot = LinuxCollector::new("this-host").unwrap().collect().unwrap();
    assert!(!snapshot.connections.is_empty());
    let body = serde_json::to_vec(&snapshot).unwrap();
    let parsed = Snapshot::from_json(&body, &ValidationLimits::default()).unwrap();
    assert_eq!(parsed.connections.len(), snapshot.connections.len());
    drop(listener);
}
