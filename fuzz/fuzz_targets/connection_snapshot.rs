//! Fuzzes the JSON that agents post to the network service: a `sentinel_netmon::Snapshot` as
//! `/api/v1/ingest` reads it (`Snapshot::from_json`, the exact call the handler makes) and as
//! `serde_json::from_slice` + `Snapshot::validate` at a fixed clock, and a lone
//! `ConnectionRecord` as `/api/v1/analyze` reads each of its records (`serde_json` +
//! `ConnectionRecord::validate`), with small limits (4 KiB bodies, 3 records of a kind, 16-byte
//! names, 32-byte paths, no clock skew, so every check is reached) and with the default ones.
//! Nothing may panic; `from_json` must agree with parse + `validate`; whatever validates must
//! respect every limit (checked here field by field), must carry timestamps of the documented form
//! (`YYYY-MM-DDTHH:MM:SS[.fraction]Z`), and must re-serialise and re-parse to an equal value (up
//! to the microsecond precision of the format) that validates again and serialises to the same
//! bytes.

#![no_main]

use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use libfuzzer_sys::fuzz_target;
use sentinel_netmon::record::MAX_CMDLINE_BYTES;
use sentinel_netmon::{
    ConnectionRecord, Family, SCHEMA_VERSION, Snapshot, ValidationError, ValidationLimits,
};
use serde::Deserialize;

/// The receiver's clock for the deterministic checks: 2026-12-02T00:00:00Z.
const NOW_SECS: u64 = 1_796_169_600;

fuzz_target!(|data: &[u8]| {
    let now = UNIX_EPOCH + Duration::from_secs(NOW_SECS);
    let small = ValidationLimits {
        max_body_bytes: 4096,
        max_records: 3,
        max_name_bytes: 16,
        max_path_bytes: 32,
        max_clock_skew_secs: 0,
    };
    for limits in [small, ValidationLimits::default()] {
        // The ingest handler's own call, at the real clock; then the same checks at a clock
        // read afterwards, which accepts at least what `from_json` accepted.
        let ingested = Snapshot::from_json(data, &limits);
        let later = SystemTime::now();
        let parsed = serde_json::from_slice::<Snapshot>(data);
        if data.len() > limits.max_body_bytes {
            assert!(matches!(ingested, Err(ValidationError::BodyTooLarge { .. })));
        } else {
            match (&ingested, &parsed) {
                (Ok(snapshot), Ok(parsed)) => {
                    assert_eq!(snapshot, parsed);
                    parsed.validate(&limits, later).expect("from_json accepted it");
                }
                (Ok(_), Err(error)) => panic!("from_json accepted what serde refuses: {error}"),
                (Err(_), Ok(parsed)) => {
                    if let Ok(()) = parsed.validate(&limits, later) {
                        // Only a timestamp that came within the clock skew between the two
                        // clock reads may be refused by one and not the other.
                        assert!(
                            matches!(ingested, Err(ValidationError::FutureTimestamp { .. })),
                            "from_json refused a valid snapshot: {ingested:?}"
                        );
                    }
                }
                (Err(_), Err(_)) => {}
            }
        }
        if let Ok(snapshot) = &parsed
            && snapshot.validate(&limits, now).is_ok()
        {
            check_snapshot(snapshot, data, &limits, now);
        }
        if let Ok(record) = serde_json::from_slice::<ConnectionRecord>(data)
            && record.validate(&limits, now).is_ok()
        {
            check_connection(&record, &limits, now);
            let stamp: Stamp = serde_json::from_slice(data).expect("accepted above");
            assert!(documented_form(&stamp.timestamp), "timestamp {:?} accepted", stamp.timestamp);
            let json = serde_json::to_vec(&record).expect("serialisable");
            let again: ConnectionRecord = serde_json::from_slice(&json).expect("re-parses");
            let mut expected = record.clone();
            expected.timestamp = micros(expected.timestamp);
            assert_eq!(again, expected);
            again.validate(&limits, now).expect("still valid");
            assert_eq!(serde_json::to_vec(&again).unwrap(), json);
        }
    }
});

/// Everything a validated snapshot promises, checked field by field, and its round trip.
fn check_snapshot(snapshot: &Snapshot, data: &[u8], limits: &ValidationLimits, now: SystemTime) {
    assert_eq!(snapshot.schema_version, SCHEMA_VERSION);
    check_name(&snapshot.host, limits);
    check_time(snapshot.timestamp, limits, now);
    for count in [
        snapshot.connections.len(),
        snapshot.interfaces.len(),
        snapshot.processes.len(),
        snapshot.process_info.len(),
    ] {
        assert!(count <= limits.max_records);
    }
    for record in &snapshot.connections {
        assert_eq!(record.host, snapshot.host);
        check_connection(record, limits, now);
    }
    for record in &snapshot.interfaces {
        assert_eq!(record.host, snapshot.host);
        check_time(record.timestamp, limits, now);
        check_name(&record.name, limits);
    }
    for record in &snapshot.processes {
        assert_eq!(record.host, snapshot.host);
        check_time(record.timestamp, limits, now);
        assert!(record.name.as_ref().is_none_or(|name| name.len() <= limits.max_name_bytes));
    }
    for record in &snapshot.process_info {
        assert_eq!(record.host, snapshot.host);
        check_name(&record.name, limits);
        assert!(record.path.as_ref().is_none_or(|path| path.len() <= limits.max_path_bytes));
        assert!(record.user.as_ref().is_none_or(|user| user.len() <= limits.max_name_bytes));
        assert!(record.cmdline.iter().map(String::len).sum::<usize>() <= MAX_CMDLINE_BYTES);
    }
    check_snapshot_timestamps(data);

    // Round trip: equal up to the format's microseconds, still valid, and stable.
    let json = serde_json::to_vec(snapshot).expect("serialisable");
    let again: Snapshot = serde_json::from_slice(&json).expect("re-parses");
    let mut expected = snapshot.clone();
    expected.timestamp = micros(expected.timestamp);
    for record in &mut expected.connections {
        record.timestamp = micros(record.timestamp);
    }
    for record in &mut expected.interfaces {
        record.timestamp = micros(record.timestamp);
    }
    for record in &mut expected.processes {
        record.timestamp = micros(record.timestamp);
    }
    for record in &mut expected.process_info {
        record.start_time = record.start_time.map(micros);
    }
    assert_eq!(again, expected);
    again.validate(limits, now).expect("a re-serialised valid snapshot is valid");
    assert_eq!(serde_json::to_vec(&again).unwrap(), json, "serialisation is not stable");
}

fn check_connection(record: &ConnectionRecord, limits: &ValidationLimits, now: SystemTime) {
    check_name(&record.host, limits);
    check_time(record.timestamp, limits, now);
    for name in [&record.process_name, &record.user] {
        assert!(name.as_ref().is_none_or(|name| name.len() <= limits.max_name_bytes));
    }
    assert!(record.process_path.as_ref().is_none_or(|path| path.len() <= limits.max_path_bytes));
    for ip in [record.local_ip, record.remote_ip] {
        let family = match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        };
        assert_eq!(family, record.family);
    }
}

fn check_name(name: &str, limits: &ValidationLimits) {
    assert!(!name.is_empty() && name.len() <= limits.max_name_bytes);
}

fn check_time(time: SystemTime, limits: &ValidationLimits, now: SystemTime) {
    assert!(time <= now + Duration::from_secs(limits.max_clock_skew_secs));
}

/// The time truncated to the microsecond, as the format writes it.
fn micros(time: SystemTime) -> SystemTime {
    let since = time.duration_since(UNIX_EPOCH).expect("parsed times are after 1970");
    UNIX_EPOCH + Duration::new(since.as_secs(), since.subsec_micros() * 1000)
}

/// The timestamp strings of an accepted body, read again as text, at the places the typed
/// parse reads them (unknown fields are ignored by both).
#[derive(Deserialize)]
struct Times {
    timestamp: String,
    #[serde(default)]
    connections: Vec<Stamp>,
    #[serde(default)]
    interfaces: Vec<Stamp>,
    #[serde(default)]
    processes: Vec<Stamp>,
    #[serde(default)]
    process_info: Vec<StartTime>,
}

#[derive(Deserialize)]
struct Stamp {
    timestamp: String,
}

#[derive(Deserialize)]
struct StartTime {
    #[serde(default)]
    start_time: Option<String>,
}

/// Every timestamp of an accepted snapshot has the documented form: RFC 3339 in UTC with a `Z`
/// suffix, fractional seconds optional, no other offset.
fn check_snapshot_timestamps(data: &[u8]) {
    let times: Times = serde_json::from_slice(data).expect("accepted above");
    let texts = std::iter::once(&times.timestamp)
        .chain(times.connections.iter().map(|r| &r.timestamp))
        .chain(times.interfaces.iter().map(|r| &r.timestamp))
        .chain(times.processes.iter().map(|r| &r.timestamp))
        .chain(times.process_info.iter().filter_map(|r| r.start_time.as_ref()));
    for text in texts {
        assert!(documented_form(text), "timestamp {text:?} accepted");
    }
}

fn documented_form(text: &str) -> bool {
    let b = text.as_bytes();
    let digits = |range: std::ops::Range<usize>| b[range].iter().all(u8::is_ascii_digit);
    b.len() >= 20
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19)
        && b[b.len() - 1] == b'Z'
        && (b.len() == 20 || (b[19] == b'.' && b.len() > 21 && digits(20..b.len() - 1)))
}
