//! The records a collector produces: connections, interface counters, per-process network usage
//! and process details, grouped in a [`Snapshot`].
//!
//! These types are also the wire format that remote agents (the Windows endpoint application,
//! `sentinel agent`) post to the server as JSON, so they are versioned ([`SCHEMA_VERSION`]) and
//! every field is documented in `docs/collectors.md`. Fields a platform cannot measure are `null`
//! (`Option`), never a made-up zero: UDP sockets have no byte counters on Linux, a socket in
//! TIME_WAIT no longer belongs to any process.

use std::net::IpAddr;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// Version of the JSON format of [`Snapshot`] and the records in it. A change that removes or
/// reinterprets a field increments it; adding an optional field does not.
pub const SCHEMA_VERSION: u32 = 1;

/// Transport protocol of a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

/// Address family of a socket. A dual-stack IPv6 socket talking to an IPv4 peer is `V6` and shows
/// IPv4-mapped addresses (`::ffff:192.0.2.1`), as the kernel reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    V4,
    V6,
}

impl Family {
    /// The family an address belongs to.
    pub fn of(ip: IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }
}

/// State of a socket, with the names `ss` prints (underscores instead of dashes). UDP sockets are
/// `UNCONN` or, once `connect()`ed, `ESTABLISHED`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SocketState {
    Established,
    SynSent,
    SynRecv,
    FinWait1,
    FinWait2,
    TimeWait,
    Close,
    CloseWait,
    LastAck,
    Listen,
    Closing,
    /// A connection request received by a listener and not yet accepted by the handshake.
    NewSynRecv,
    /// A UDP socket with no fixed peer.
    Unconn,
    /// A state number this collector does not know (a newer kernel).
    Unknown,
}

impl SocketState {
    /// Whether the connection is over: what is left is kernel bookkeeping that no process owns.
    pub fn is_terminal(self) -> bool {
        matches!(self, SocketState::TimeWait | SocketState::Close)
    }
}

/// One socket: a TCP connection or listener, or a UDP socket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnectionRecord {
    /// When the socket was observed.
    #[serde(with = "rfc3339")]
    pub timestamp: SystemTime,
    /// Identifier of the machine (agent id).
    pub host: String,
    /// Owning process; `None` when no process holds the socket (TIME_WAIT, orphaned) or it could
    /// not be found (permissions, the process exited between reads).
    pub pid: Option<u32>,
    pub process_name: Option<String>,
    /// Executable of the owning process.
    pub process_path: Option<String>,
    /// User the owning process runs as (effective user).
    pub user: Option<String>,
    pub local_ip: IpAddr,
    pub local_port: u16,
    /// Unspecified address and port 0 for listeners and unconnected UDP sockets.
    pub remote_ip: IpAddr,
    pub remote_port: u16,
    pub protocol: Protocol,
    pub family: Family,
    pub state: SocketState,
    /// Payload bytes sent on this socket since it was opened, counted once even if retransmitted.
    /// `None` where the platform does not count (UDP on Linux, TIME_WAIT).
    pub bytes_sent: Option<u64>,
    /// Payload bytes received in order since the socket was opened.
    pub bytes_received: Option<u64>,
    /// Smoothed round-trip time in microseconds (TCP).
    pub rtt_us: Option<u32>,
    /// Segments retransmitted since the socket was opened (TCP).
    pub retransmits: Option<u32>,
    /// Segments received and sent, including pure ACKs (TCP).
    pub segs_in: Option<u32>,
    pub segs_out: Option<u32>,
    /// Opaque identifier of the socket, stable while it exists on this host (the kernel's socket
    /// cookie on Linux). Lets a consumer follow one socket across snapshots even when addresses
    /// repeat.
    #[serde(default)]
    pub socket_id: Option<u64>,
}

/// Traffic counters of one network interface since it came up (or the counters wrapped).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceRecord {
    #[serde(with = "rfc3339")]
    pub timestamp: SystemTime,
    pub host: String,
    pub name: String,
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub rx_errors: u64,
    pub rx_drops: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub tx_errors: u64,
    pub tx_drops: u64,
}

/// Network usage of one process: its sockets in the snapshot, counted and summed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessNetworkRecord {
    #[serde(with = "rfc3339")]
    pub timestamp: SystemTime,
    pub host: String,
    pub pid: u32,
    pub name: Option<String>,
    /// TCP sockets that are not listeners (established, opening or closing).
    pub tcp_connections: u32,
    /// TCP listeners.
    pub tcp_listeners: u32,
    /// UDP sockets, connected or not.
    pub udp_sockets: u32,
    /// Sum of `bytes_sent` over the process's sockets that have a counter. Sockets the process
    /// closed are no longer in the sum: per-connection deltas give the traffic over time.
    pub bytes_sent: u64,
    pub bytes_received: u64,
}

/// Longest command line kept in a [`ProcessInfo`], in bytes; longer ones are cut and flagged.
pub const MAX_CMDLINE_BYTES: usize = 4096;

/// Details of a process that owns sockets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessInfo {
    pub host: String,
    pub pid: u32,
    /// Parent process; `None` for the first process and where unknown.
    pub ppid: Option<u32>,
    pub name: String,
    pub path: Option<String>,
    pub user: Option<String>,
    /// Arguments, at most [`MAX_CMDLINE_BYTES`] in all.
    pub cmdline: Vec<String>,
    /// Whether `cmdline` was cut to fit.
    pub cmdline_truncated: bool,
    #[serde(default, with = "rfc3339::option")]
    pub start_time: Option<SystemTime>,
}

/// Everything one collection observed on one host. Also the body a remote agent posts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// [`SCHEMA_VERSION`] of the producer.
    pub schema_version: u32,
    pub host: String,
    #[serde(with = "rfc3339")]
    pub timestamp: SystemTime,
    #[serde(default)]
    pub connections: Vec<ConnectionRecord>,
    #[serde(default)]
    pub interfaces: Vec<InterfaceRecord>,
    #[serde(default)]
    pub processes: Vec<ProcessNetworkRecord>,
    #[serde(default)]
    pub process_info: Vec<ProcessInfo>,
}

/// Serde of `SystemTime` as RFC 3339 in UTC with microseconds (`2026-11-23T08:31:00.123456Z`).
/// Parsing accepts only UTC (`Z`): agents must send UTC, so that timestamps compare as strings in
/// the database.
pub(crate) mod rfc3339 {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(time: &SystemTime, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&humantime::format_rfc3339_micros(*time))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<SystemTime, D::Error> {
        let text = String::deserialize(deserializer)?;
        if !is_utc_form(&text) {
            return Err(D::Error::custom(format!(
                "invalid RFC 3339 UTC timestamp {text:?}: expected YYYY-MM-DDTHH:MM:SS[.fraction]Z"
            )));
        }
        humantime::parse_rfc3339(&text)
            .map_err(|error| D::Error::custom(format!("invalid RFC 3339 UTC timestamp {text:?}: {error}")))
    }

    /// Whether `text` has the documented shape `YYYY-MM-DDTHH:MM:SS`, then optionally `.` and
    /// one or more digits, then `Z`, and nothing else. Checked before humantime, which reads the
    /// numbers but also accepts a `+00:00` offset and ignores what follows a `+` (after a
    /// fraction) or a `Z` (in short strings), so `2026-12-01T08:31:00.2+abcdZ` and
    /// `2026-12-01T08:31:00ZjunkZ` would pass (found with the `connection_snapshot` fuzz
    /// target's timestamp check).
    fn is_utc_form(text: &str) -> bool {
        let b = text.as_bytes();
        let digits = |bytes: &[u8]| bytes.iter().all(u8::is_ascii_digit);
        let fraction_ok = match &b[19.min(b.len())..] {
            [b'Z'] => true,
            [b'.', fraction @ .., b'Z'] => !fraction.is_empty() && digits(fraction),
            _ => false,
        };
        b.len() >= 20
            && fraction_ok
            && digits(&b[0..4])
            && b[4] == b'-'
            && digits(&b[5..7])
            && b[7] == b'-'
            && digits(&b[8..10])
            && b[10] == b'T'
            && digits(&b[11..13])
            && b[13] == b':'
            && digits(&b[14..16])
            && b[16] == b':'
            && digits(&b[17..19])
    }

    pub mod option {
        use std::time::SystemTime;

        use serde::{Deserialize, Deserializer, Serializer};

        pub fn serialize<S: Serializer>(time: &Option<SystemTime>, serializer: S) -> Result<S::Ok, S::Error> {
            match time {
                Some(time) => super::serialize(time, serializer),
                None => serializer.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(
            deserializer: D,
        ) -> Result<Option<SystemTime>, D::Error> {
            #[derive(Deserialize)]
            struct Wrapped(#[serde(with = "super")] SystemTime);
            Ok(Option::<Wrapped>::deserialize(deserializer)?.map(|Wrapped(time)| time))
        }
    }
}
