//! Turns successive snapshots of one host's sockets into connection events: a connection is
//! `New` once, `Ongoing` whenever its byte counters or state change, and `Closed` once, with the
//! bytes moved since the previous event so a consumer gets rates without keeping history.
//!
//! A connection is followed by protocol, addresses and `socket_id` (the kernel socket cookie on
//! Linux, which a TCP socket keeps when it moves to TIME_WAIT). It is closed when it reaches
//! TIME_WAIT or CLOSE, or when it is no longer in the snapshot. A connection that opened and
//! closed between two snapshots is first seen in TIME_WAIT: it gets `New` then `Closed` at once,
//! so every connection has exactly one of each.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::record::{ConnectionRecord, Protocol};

/// What happened to a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConnectionChange {
    New,
    Ongoing,
    Closed,
}

/// One step in a connection's life.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnectionEvent {
    pub change: ConnectionChange,
    /// The connection as last observed. Once its socket no longer belongs to a process
    /// (TIME_WAIT), the owner and byte counters are those last known.
    pub record: ConnectionRecord,
    /// Payload bytes since the previous event of this connection; for `New`, since it opened.
    /// `None` where the platform does not count, and for a `Closed` connection that vanished
    /// (its last bytes are not known).
    pub bytes_sent_delta: Option<u64>,
    pub bytes_received_delta: Option<u64>,
    /// Milliseconds covered by the deltas; `None` for `New`.
    pub interval_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ConnectionKey {
    protocol: Protocol,
    local: SocketAddr,
    remote: SocketAddr,
    socket_id: Option<u64>,
}

impl ConnectionKey {
    fn of(record: &ConnectionRecord) -> ConnectionKey {
        ConnectionKey {
            protocol: record.protocol,
            local: SocketAddr::new(record.local_ip, record.local_port),
            remote: SocketAddr::new(record.remote_ip, record.remote_port),
            socket_id: record.socket_id,
        }
    }
}

struct Tracked {
    record: ConnectionRecord,
    closed: bool,
}

/// Follows the connections of one host from snapshot to snapshot (use one tracker per host).
#[derive(Default)]
pub struct ConnectionTracker {
    live: HashMap<ConnectionKey, Tracked>,
}

impl ConnectionTracker {
    pub fn new() -> ConnectionTracker {
        ConnectionTracker::default()
    }

    /// Number of connections followed (including closed ones still in TIME_WAIT).
    pub fn len(&self) -> usize {
        self.live.len()
    }

    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    /// Compares a new snapshot, taken at `timestamp`, with the previous one.
    pub fn update(
        &mut self,
        timestamp: SystemTime,
        connections: &[ConnectionRecord],
    ) -> Vec<ConnectionEvent> {
        let mut events = Vec::new();
        let mut seen = HashSet::with_capacity(connections.len());
        for record in connections {
            let key = ConnectionKey::of(record);
            seen.insert(key.clone());
            let Some(tracked) = self.live.get_mut(&key) else {
                events.push(ConnectionEvent {
                    change: ConnectionChange::New,
                    record: record.clone(),
                    bytes_sent_delta: record.bytes_sent,
                    bytes_received_delta: record.bytes_received,
                    interval_ms: None,
                });
                let closed = record.state.is_terminal();
                if closed {
                    // The `new` event carries every byte known; nothing more moved, as far as
                    // the counters tell (none at all in TIME_WAIT: then nothing is known).
                    let (sent, received) = (record.bytes_sent.map(|_| 0), record.bytes_received.map(|_| 0));
                    events.push(closed_event(record.clone(), sent, received, Some(0)));
                }
                self.live.insert(key, Tracked { record: record.clone(), closed });
                continue;
            };
            let current = inherit(record.clone(), &tracked.record);
            let previous = std::mem::replace(&mut tracked.record, current.clone());
            if tracked.closed {
                continue;
            }
            // From this observation's own counters, not the inherited ones: a socket that reached
            // TIME_WAIT carries none, and what it moved since the previous collection is
            // unknown, not 0 (a 0 would describe every closing connection as idle at its end).
            let sent = delta(record.bytes_sent, previous.bytes_sent);
            let received = delta(record.bytes_received, previous.bytes_received);
            let interval_ms = current
                .timestamp
                .duration_since(previous.timestamp)
                .ok()
                .map(|elapsed| u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX));
            if current.state.is_terminal() {
                tracked.closed = true;
                events.push(closed_event(current, sent, received, interval_ms));
            } else if current.state != previous.state || sent.unwrap_or(0) > 0 || received.unwrap_or(0) > 0 {
                events.push(ConnectionEvent {
                    change: ConnectionChange::Ongoing,
                    record: current,
                    bytes_sent_delta: sent,
                    bytes_received_delta: received,
                    interval_ms,
                });
            }
        }
        self.live.retain(|key, tracked| {
            if seen.contains(key) {
                return true;
            }
            if !tracked.closed {
                let mut record = tracked.record.clone();
                record.timestamp = timestamp;
                events.push(closed_event(record, None, None, None));
            }
            false
        });
        events
    }
}

fn closed_event(
    record: ConnectionRecord,
    bytes_sent_delta: Option<u64>,
    bytes_received_delta: Option<u64>,
    interval_ms: Option<u64>,
) -> ConnectionEvent {
    ConnectionEvent {
        change: ConnectionChange::Closed,
        record,
        bytes_sent_delta,
        bytes_received_delta,
        interval_ms,
    }
}

/// Counters only grow while a socket lives; a smaller value means the platform reset it, and the
/// new value is all that is known to have moved since.
fn delta(current: Option<u64>, previous: Option<u64>) -> Option<u64> {
    let current = current?;
    Some(previous.map_or(current, |previous| current.checked_sub(previous).unwrap_or(current)))
}

/// Keeps the owner and counters of a socket that has lost them (TIME_WAIT sockets belong to no
/// process and carry no `tcp_info`): they still describe the connection.
fn inherit(mut record: ConnectionRecord, previous: &ConnectionRecord) -> ConnectionRecord {
    if record.pid.is_none() && previous.pid.is_some() {
        record.pid = previous.pid;
        record.process_name.clone_from(&previous.process_name);
        record.process_path.clone_from(&previous.process_path);
        record.user.clone_from(&previous.user);
    }
    record.bytes_sent = record.bytes_sent.or(previous.bytes_sent);
    record.bytes_received = record.bytes_received.or(previous.bytes_received);
    record.rtt_us = record.rtt_us.or(previous.rtt_us);
    record.retransmits = record.retransmits.or(previous.retransmits);
    record.segs_in = record.segs_in.or(previous.segs_in);
    record.segs_out = record.segs_out.or(previous.segs_out);
    record
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::record::{Family, SocketState};

    fn record(at: u64, state: SocketState, sent: Option<u64>, pid: Option<u32>) -> ConnectionRecord {
        ConnectionRecord {
            timestamp: SystemTime::UNIX_EPOCH + Duration::from_secs(at),
            host: "h".into(),
            pid,
            process_name: pid.map(|_| "curl".into()),
            process_path: None,
            user: None,
            local_ip: "10.0.0.1".parse().unwrap(),
            local_port: 40000,
            remote_ip: "192.0.2.1".parse().unwrap(),
            remote_port: 443,
            protocol: Protocol::Tcp,
            family: Family::V4,
            state,
            bytes_sent: sent,
            bytes_received: sent,
            rtt_us: None,
            retransmits: None,
            segs_in: None,
            segs_out: None,
            socket_id: Some(7),
        }
    }

    fn at(seconds: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(seconds)
    }

    #[test]
    fn a_connection_is_new_then_ongoing_on_traffic_then_closed_in_time_wait() {
        let mut tracker = ConnectionTracker::new();
        let events = tracker.update(at(1), &[record(1, SocketState::Established, Some(100), Some(5))]);
        assert_eq!(events.len(), 1);
        assert_eq!((events[0].change, events[0].bytes_sent_delta), (ConnectionChange::New, Some(100)));

        assert!(tracker.update(at(2), &[record(2, SocketState::Established, Some(100), Some(5))]).is_empty());

        let events = tracker.update(at(3), &[record(3, SocketState::Established, Some(350), Some(5))]);
        assert_eq!(events[0].change, ConnectionChange::Ongoing);
        assert_eq!((events[0].bytes_sent_delta, events[0].interval_ms), (Some(250), Some(1000)));

        let events = tracker.update(at(4), &[record(4, SocketState::TimeWait, None, None)]);
        assert_eq!(events[0].change, ConnectionChange::Closed);
        assert_eq!(events[0].record.pid, Some(5), "the owner is kept after TIME_WAIT");
        assert_eq!(events[0].record.bytes_sent, Some(350));
        assert_eq!(
            events[0].bytes_sent_delta, None,
            "TIME_WAIT carries no counters: the last bytes are unknown"
        );

        assert!(tracker.update(at(5), &[record(5, SocketState::TimeWait, None, None)]).is_empty());
        assert!(tracker.update(at(6), &[]).is_empty(), "closed once only");
        assert!(tracker.is_empty());
    }

    #[test]
    fn a_vanished_connection_is_closed_and_a_short_one_is_new_and_closed() {
        let mut tracker = ConnectionTracker::new();
        tracker.update(at(1), &[record(1, SocketState::Established, Some(1), Some(5))]);
        let events = tracker.update(at(2), &[]);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].change, ConnectionChange::Closed);
        assert_eq!(events[0].record.timestamp, at(2));
        assert_eq!(events[0].bytes_sent_delta, None);

        let events = tracker.update(at(3), &[record(3, SocketState::TimeWait, None, None)]);
        let changes: Vec<_> = events.iter().map(|event| event.change).collect();
        assert_eq!(changes, [ConnectionChange::New, ConnectionChange::Closed]);
        assert_eq!(events[1].bytes_sent_delta, None);

        let mut short = record(4, SocketState::Close, Some(70), None);
        (short.local_port, short.socket_id) = (40001, Some(8));
        let events = tracker.update(at(4), &[short]);
        assert_eq!(events[0].bytes_sent_delta, Some(70), "a short connection's bytes are on its `new` event");
        assert_eq!(events[1].bytes_sent_delta, Some(0));
    }
}
