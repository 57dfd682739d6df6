//! Connection records and agent snapshots as JSON, in the shape an agent posts to
//! `/api/v1/ingest` and a client to `/api/v1/analyze` (`docs/collectors.md`), for the tests of
//! the network service and of the binary that serves it.

use std::time::SystemTime;

use serde_json::{Value, json};

/// A time as the API writes and reads it: RFC 3339 with microseconds, in UTC.
pub fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_micros(at).to_string()
}

/// One established TCP connection of `process` (pid 4242, user `svc`) on `host`, from
/// 10.0.0.5:`local_port` to 10.0.0.9:`remote_port`, having sent and received so many bytes by
/// `at`. The local port doubles as the socket id, so that one port is one connection from one
/// snapshot to the next.
pub fn connection_record(
    host: &str,
    process: &str,
    remote_port: u16,
    local_port: u16,
    sent: u64,
    received: u64,
    at: SystemTime,
) -> Value {
    json!({
        "timestamp": rfc3339(at),
        "host": host,
        "pid": 4242,
        "process_name": process,
        "process_path": null,
        "user": "svc",
        "local_ip": "10.0.0.5",
        "local_port": local_port,
        "remote_ip": "10.0.0.9",
        "remote_port": remote_port,
        "protocol": "tcp",
        "family": "v4",
        "state": "ESTABLISHED",
        "bytes_sent": sent,
        "bytes_received": received,
        "rtt_us": 400,
        "retransmits": 0,
        "segs_in": 10,
        "segs_out": 10,
        "socket_id": local_port,
    })
}

/// An agent's snapshot of `host` taken at `at` (schema version 1).
pub fn snapshot(host: &str, at: SystemTime, connections: Vec<Value>) -> Value {
    json!({"schema_version": 1, "host": host, "timestamp": rfc3339(at), "connections": connections})
}

/// `seconds` snapshots of host `host`, one a second from `start`, of an ordinary web client:
/// ten HTTPS connections at a time, each living three seconds and sending 400 and receiving
/// 2,500 bytes a second, then replaced by a new one (a new local port).
pub fn web_client_history(host: &str, start: SystemTime, seconds: u64) -> Vec<Value> {
    (0..seconds)
        .map(|second| {
            let at = start + std::time::Duration::from_secs(second);
            let connections = (0..10u64)
                .map(|slot| {
                    let age = (second + slot) % 3 + 1;
                    let local_port = 40_000 + (slot * 100 + (second + slot) / 3) as u16;
                    connection_record(host, "webclient", 443, local_port, age * 400, age * 2500, at)
                })
                .collect();
            snapshot(host, at, connections)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn records_carry_their_arguments_and_snapshots_their_records() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456);
        let record = connection_record("h", "curl", 443, 40_001, 10, 20, at);
        assert_eq!(record["timestamp"], "2023-11-14T22:13:20.123456Z");
        assert_eq!((&record["process_name"], &record["remote_port"]), (&json!("curl"), &json!(443)));
        assert_eq!((&record["bytes_sent"], &record["bytes_received"]), (&json!(10), &json!(20)));
        assert_eq!(record["socket_id"], 40_001);
        let snapshot = snapshot("h", at, vec![record.clone()]);
        assert_eq!(snapshot["connections"][0], record);
        assert_eq!(snapshot["timestamp"], record["timestamp"]);
    }
}
