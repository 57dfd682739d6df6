//! Feature extraction on hand-made events whose features can be worked out by hand.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sentinel_netmon::{ConnectionChange, ConnectionEvent, ConnectionRecord, Family, Protocol, SocketState};
use serde_json::json;

use super::*;

const WINDOW: f64 = 10.0;

fn at(seconds: f64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_800_000_000) + Duration::from_secs_f64(seconds)
}

fn event(seconds: f64, process: &str, remote: [u8; 4], port: u16, state: SocketState) -> ConnectionEvent {
    ConnectionEvent {
        change: ConnectionChange::New,
        record: ConnectionRecord {
            timestamp: at(seconds),
            host: "host-a".to_owned(),
            pid: Some(7),
            process_name: Some(process.to_owned()),
            process_path: None,
            user: None,
            local_ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 5)),
            local_port: 40_000,
            remote_ip: IpAddr::V4(Ipv4Addr::from(remote)),
            remote_port: port,
            protocol: Protocol::Tcp,
            family: Family::V4,
            state,
            bytes_sent: Some(1000),
            bytes_received: Some(5000),
            rtt_us: Some(12_500),
            retransmits: Some(1),
            segs_in: None,
            segs_out: None,
            socket_id: None,
        },
        bytes_sent_delta: Some(1000),
        bytes_received_delta: Some(5000),
        interval_ms: Some(2000),
    }
}

fn number(features: &RawFeatures, name: &str) -> Option<f64> {
    features.numbers[NUMERIC_FEATURES.iter().position(|known| *known == name).unwrap()]
}

fn category<'a>(features: &'a RawFeatures, name: &str) -> &'a str {
    &features.categories[CATEGORICAL_FEATURES.iter().position(|known| *known == name).unwrap()]
}

fn extractor() -> FeatureExtractor {
    FeatureExtractor::new(WindowSettings { window_secs: WINDOW, max_entries_per_key: 1000, max_keys: 1000 })
}

#[test]
fn a_connection_gives_its_own_bytes_rates_round_trip_and_categories() {
    let features =
        standalone_features(&event(0.0, "curl", [93, 184, 216, 34], 443, SocketState::Established));
    assert_eq!(number(&features, "bytes_sent_delta"), Some(1000.0));
    assert_eq!(number(&features, "bytes_received_total"), Some(5000.0));
    assert_eq!(number(&features, "send_rate"), Some(500.0), "1000 bytes over 2 s");
    assert_eq!(number(&features, "receive_rate"), Some(2500.0));
    assert_eq!(number(&features, "rtt_ms"), Some(12.5));
    assert_eq!(number(&features, "retransmits"), Some(1.0));
    assert_eq!(number(&features, "remote_is_loopback"), Some(0.0));
    assert_eq!(number(&features, "process_connection_rate"), None, "no stream, no windows");
    assert_eq!(number(&features, "host_receive_rate"), None);
    assert_eq!(category(&features, "protocol"), "tcp");
    assert_eq!(category(&features, "state"), "ESTABLISHED");
    assert_eq!(category(&features, "change"), "new");
    assert_eq!(category(&features, "remote_port_class"), "well_known");
    let loopback = standalone_features(&event(0.0, "db", [127, 0, 0, 1], 50_000, SocketState::Established));
    assert_eq!(number(&loopback, "remote_is_loopback"), Some(1.0));
    assert_eq!(number(&loopback, "rtt_ms"), None, "a loopback round trip is the scheduler's, not a path's");
    assert_eq!(category(&loopback, "remote_port_class"), "dynamic");
    // Linux gives client ports from 32768: below IANA's 49152 they are client ports all the same.
    for (port, class) in
        [(32_767, "registered"), (32_768, "dynamic"), (40_000, "dynamic"), (65_535, "dynamic")]
    {
        let client = standalone_features(&event(0.0, "db", [127, 0, 0, 1], port, SocketState::Established));
        assert_eq!(category(&client, "remote_port_class"), class, "port {port}");
    }
}

#[test]
fn the_windows_count_a_process_s_connections_ports_hosts_and_failures_and_forget_old_ones() {
    let mut extractor = extractor();
    extractor.observe(&event(0.0, "scanner", [10, 0, 0, 9], 22, SocketState::SynSent));
    extractor.observe(&event(1.0, "scanner", [10, 0, 0, 9], 23, SocketState::SynSent));
    let third = extractor.observe(&event(2.0, "scanner", [10, 0, 0, 8], 80, SocketState::Established));
    assert_eq!(number(&third, "process_connection_rate"), Some(3.0 / WINDOW));
    assert_eq!(number(&third, "process_distinct_remote_ports"), Some(3.0));
    assert_eq!(number(&third, "process_distinct_remote_hosts"), Some(2.0));
    assert_eq!(number(&third, "process_failed_connects"), Some(2.0), "two attempts still unanswered");
    assert_eq!(number(&third, "process_send_rate"), Some(3000.0 / WINDOW));
    // The remote host 10.0.0.8 has seen one connection; 10.0.0.9 two.
    assert_eq!(number(&third, "host_connection_rate"), Some(1.0 / WINDOW));
    assert_eq!(number(&third, "host_distinct_remote_ports"), Some(1.0));
    // Another process is counted apart.
    let other = extractor.observe(&event(2.5, "browser", [10, 0, 0, 7], 443, SocketState::Established));
    assert_eq!(number(&other, "process_connection_rate"), Some(1.0 / WINDOW));

    // Past the window, the old events are gone.
    let later = extractor.observe(&event(30.0, "scanner", [10, 0, 0, 9], 24, SocketState::Established));
    assert_eq!(number(&later, "process_connection_rate"), Some(1.0 / WINDOW));
    assert_eq!(number(&later, "process_failed_connects"), Some(0.0));
}

#[test]
fn a_listener_is_not_counted_as_a_connection() {
    let mut extractor = extractor();
    let listening = extractor.observe(&event(0.0, "nginx", [0, 0, 0, 0], 0, SocketState::Listen));
    assert_eq!(number(&listening, "process_connection_rate"), Some(0.0));
    assert_eq!(category(&listening, "remote_port_class"), "none");
}

/// A socket on 127.0.0.1:`local_port` to 127.0.0.1:`remote_port`, owned by `owner` or by none.
fn loopback_socket(
    seconds: f64,
    owner: Option<&str>,
    local_port: u16,
    remote_port: u16,
    state: SocketState,
) -> ConnectionEvent {
    let mut event = event(seconds, owner.unwrap_or_default(), [127, 0, 0, 1], remote_port, state);
    event.record.local_ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
    event.record.local_port = local_port;
    if owner.is_none() {
        (event.record.pid, event.record.process_name) = (None, None);
    }
    if state == SocketState::TimeWait {
        (event.bytes_sent_delta, event.bytes_received_delta) = (None, None);
    }
    event
}

#[test]
fn an_ownerless_accepted_socket_takes_the_windows_of_its_listener_s_owner() {
    let mut extractor = extractor();
    // Another program's ownerless sockets: a connection caught open after its owner exited,
    // with its bytes.
    extractor.observe(&loopback_socket(0.0, None, 41_000, 9999, SocketState::Established));
    // The web server's listener, on every IPv6 and IPv4 address; its accepted connections are
    // first seen in TIME_WAIT, with no owner.
    let mut listener = loopback_socket(0.0, Some("python3"), 8080, 0, SocketState::Listen);
    listener.record.local_ip = IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED);
    extractor.observe(&listener);
    extractor.observe(&loopback_socket(0.5, Some("python3"), 8080, 50_000, SocketState::Established));
    let accepted = extractor.observe(&loopback_socket(1.0, None, 8080, 50_001, SocketState::TimeWait));
    assert_eq!(number(&accepted, "process_connection_rate"), Some(2.0 / WINDOW), "the server's two");
    assert_eq!(number(&accepted, "process_send_rate"), Some(1000.0 / WINDOW), "the server's bytes only");
    assert_eq!(number(&accepted, "host_connection_rate"), Some(2.0 / WINDOW));

    // A client's side (an ephemeral local port, no listener) stays with the ownerless sockets.
    let client = extractor.observe(&loopback_socket(1.5, None, 50_002, 8080, SocketState::TimeWait));
    assert_eq!(number(&client, "process_connection_rate"), Some(2.0 / WINDOW));
    assert_eq!(number(&client, "process_send_rate"), Some(1000.0 / WINDOW), "the caught connection's");

    // Once the listener is closed, its port means nothing any more.
    let mut closed = listener.clone();
    closed.change = ConnectionChange::Closed;
    extractor.observe(&closed);
    let late = extractor.observe(&loopback_socket(2.0, None, 8080, 50_003, SocketState::TimeWait));
    assert_eq!(number(&late, "process_connection_rate"), Some(3.0 / WINDOW), "back with the ownerless");
}

#[test]
fn a_vector_goes_to_json_and_back_and_bad_values_are_named() {
    let features =
        standalone_features(&event(0.0, "curl", [93, 184, 216, 34], 8080, SocketState::Established));
    let Json::Object(object) = features.to_json() else { panic!("not an object") };
    assert_eq!(object.len(), NUMERIC_FEATURES.len() + CATEGORICAL_FEATURES.len());
    assert_eq!(object["process_connection_rate"], Json::Null);
    assert_eq!(RawFeatures::from_json(&object).unwrap(), features);

    let parse = |value: Json| RawFeatures::from_json(value.as_object().unwrap());
    // Absent features are missing; the process name is accepted beside them.
    let sparse = parse(json!({"rtt_ms": 3.0, "process_name": "curl"})).unwrap();
    assert_eq!(number(&sparse, "rtt_ms"), Some(3.0));
    assert_eq!(number(&sparse, "bytes_sent_delta"), None);
    let error = parse(json!({"rtt_ms": -1.0})).unwrap_err().to_string();
    assert!(error.contains("rtt_ms"), "{error}");
    assert!(parse(json!({"rtt_ms": "fast"})).is_err());
    assert!(parse(json!({"protocol": "x".repeat(65)})).is_err());
    let unknown = parse(json!({"rtt": 1.0})).unwrap_err().to_string();
    assert!(unknown.contains("rtt"), "a typo is an error, not a missing value: {unknown}");
}
