//! NSL-KDD rows as the network service's connection events, for `sentinel eval network`.
//!
//! A row is one finished connection seen from the host that opened it: `src_bytes` is what that
//! host sent, the service becomes the remote port (and stands for the process: a client program
//! talks to one service), the flag becomes the socket state. NSL-KDD has no timestamps or
//! addresses to replay through the sliding windows, so the temporal features come from its own
//! two-second windows (`count`, `srv_count` and their error and diversity rates).
//! `docs/network.md` has the whole mapping and what it leaves missing.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use sentinel_netmon::{ConnectionChange, ConnectionEvent, ConnectionRecord, Family, Protocol, SocketState};
use sentinel_network::WindowValues;
use sentinel_network::evaluation::LabelledConnection;

/// NSL-KDD's 41 features, then the label, then the difficulty.
const COLUMNS: usize = 43;
/// The length of NSL-KDD's time-based windows (`count`, `srv_count`…), seconds.
const KDD_WINDOW_SECS: f64 = 2.0;
/// Addresses from the documentation ranges (RFC 5737): the data set has none.
const LOCAL: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const REMOTE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);

/// Reads an NSL-KDD file (`KDDTrain+.txt`, `KDDTest+.txt`), keeping the rows whose difficulty is
/// below `difficulty_below` when given (KDDTest-21 is KDDTest+ below 21).
pub fn read(path: &Path, difficulty_below: Option<u32>) -> anyhow::Result<Vec<LabelledConnection>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut rows = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        let row = parse(&fields).with_context(|| format!("{} line {}", path.display(), index + 1))?;
        if difficulty_below.is_none_or(|limit| row.1 < limit) {
            rows.push(row.0);
        }
    }
    if rows.is_empty() {
        bail!("{} has no rows (after the difficulty filter)", path.display());
    }
    Ok(rows)
}

fn number(fields: &[&str], column: usize) -> anyhow::Result<f64> {
    let value: f64 = fields[column]
        .parse()
        .with_context(|| format!("column {} is not a number: {:?}", column + 1, fields[column]))?;
    if !value.is_finite() || value < 0.0 {
        bail!("column {} must be a finite number ≥ 0, not {value}", column + 1);
    }
    Ok(value)
}

fn parse(fields: &[&str]) -> anyhow::Result<(LabelledConnection, u32)> {
    if fields.len() != COLUMNS {
        bail!("{} columns, NSL-KDD has {COLUMNS} (41 features, label, difficulty)", fields.len());
    }
    let [duration, src_bytes, dst_bytes, land] = [0, 4, 5, 6].map(|column| number(fields, column));
    let (duration, src_bytes, dst_bytes, land) = (duration?, src_bytes?, dst_bytes?, land?);
    let [count, srv_count, serror, srv_serror, rerror, srv_rerror, diff_srv, srv_diff_host] =
        [22, 23, 24, 25, 26, 27, 29, 30].map(|column| number(fields, column));
    let (count, srv_count) = (count?, srv_count?);
    let (serror, srv_serror, rerror, srv_rerror) = (serror?, srv_serror?, rerror?, srv_rerror?);
    let (diff_srv, srv_diff_host) = (diff_srv?, srv_diff_host?);
    let difficulty: u32 = fields[42].parse().with_context(|| format!("difficulty {:?}", fields[42]))?;
    let service = fields[2];

    let (protocol, protocol_label) = match fields[1] {
        "tcp" => (Protocol::Tcp, None),
        "udp" => (Protocol::Udp, None),
        // The collectors report TCP and UDP sockets only; ICMP keeps its own category.
        "icmp" => (Protocol::Udp, Some("icmp".to_owned())),
        other => bail!("unknown protocol {other:?}"),
    };
    let state = if protocol == Protocol::Tcp { tcp_state(fields[3])? } else { SocketState::Established };
    // `land`: source and destination are the same host and port — the host talking to itself.
    let remote_ip = IpAddr::V4(if land > 0.0 { Ipv4Addr::LOCALHOST } else { REMOTE });
    let record = ConnectionRecord {
        timestamp: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        host: "nsl-kdd".to_owned(),
        pid: None,
        process_name: Some(service.to_owned()),
        process_path: None,
        user: None,
        local_ip: IpAddr::V4(LOCAL),
        local_port: 40_000,
        remote_ip,
        remote_port: service_port(service),
        protocol,
        family: Family::V4,
        state,
        bytes_sent: Some(src_bytes as u64),
        bytes_received: Some(dst_bytes as u64),
        rtt_us: None,
        retransmits: None,
        segs_in: None,
        segs_out: None,
        socket_id: None,
    };
    // A connection over within a collection interval is first seen finished: a `new` event
    // without rates, as the tracker reports it. A longer one is `closed` with its rates over
    // its duration.
    let (change, interval_ms) = if duration > 0.0 {
        (ConnectionChange::Closed, Some((duration * 1000.0) as u64))
    } else {
        (ConnectionChange::New, None)
    };
    let event = ConnectionEvent {
        change,
        bytes_sent_delta: record.bytes_sent,
        bytes_received_delta: record.bytes_received,
        interval_ms,
        record,
    };
    let windows = WindowValues {
        process: [
            Some(srv_count / KDD_WINDOW_SECS),
            None,
            Some(1.0 + srv_count * srv_diff_host),
            Some(srv_count * (srv_serror + srv_rerror)),
            None,
            None,
        ],
        host: [
            Some(count / KDD_WINDOW_SECS),
            Some(1.0 + count * diff_srv),
            Some(count * (serror + rerror)),
            None,
            None,
        ],
    };
    let anomalous = fields[41] != "normal";
    Ok((LabelledConnection { event, windows: Some(windows), protocol_label, anomalous }, difficulty))
}

/// The socket state a connection of this Bro/Zeek connection flag leaves on the host that
/// opened it.
fn tcp_state(flag: &str) -> anyhow::Result<SocketState> {
    Ok(match flag {
        // Established and closed normally: the closing side keeps TIME_WAIT.
        "SF" => SocketState::TimeWait,
        // A SYN nobody answered.
        "S0" => SocketState::SynSent,
        // Refused or reset: the socket is closed at once.
        "REJ" | "RSTO" | "RSTR" | "RSTOS0" => SocketState::Close,
        // Established, no close seen.
        "S1" | "OTH" => SocketState::Established,
        // The opener closed, the peer did not answer the close.
        "S2" => SocketState::FinWait2,
        // The peer closed, the opener did not.
        "S3" => SocketState::CloseWait,
        // SYN then FIN without an answer (a stealth probe).
        "SH" => SocketState::FinWait1,
        other => bail!("unknown connection flag {other:?}"),
    })
}

/// The IANA port of an NSL-KDD service name. ICMP "services" have no port; `private` (a port
/// without a name) is taken as a dynamic port, `other` and unknown names as a registered one.
fn service_port(service: &str) -> u16 {
    match service {
        "eco_i" | "ecr_i" | "urp_i" | "tim_i" | "urh_i" | "red_i" => 0,
        "harvest" => 2,
        "echo" => 7,
        "discard" => 9,
        "systat" => 11,
        "daytime" => 13,
        "netstat" => 15,
        "ftp_data" => 20,
        "ftp" => 21,
        "ssh" => 22,
        "telnet" => 23,
        "smtp" => 25,
        "time" => 37,
        "name" => 42,
        "whois" => 43,
        "domain" | "domain_u" => 53,
        "mtp" => 57,
        "tftp_u" => 69,
        "gopher" => 70,
        "remote_job" => 71,
        "rje" => 77,
        "finger" => 79,
        "http" => 80,
        "ctf" => 84,
        "supdup" => 95,
        "hostnames" => 101,
        "iso_tsap" => 102,
        "csnet_ns" => 105,
        "pop_2" => 109,
        "pop_3" => 110,
        "sunrpc" => 111,
        "auth" => 113,
        "uucp_path" => 117,
        "nntp" => 119,
        "ntp_u" => 123,
        "netbios_ns" => 137,
        "netbios_dgm" => 138,
        "netbios_ssn" => 139,
        "imap4" => 143,
        "sql_net" => 150,
        "vmnet" => 175,
        "bgp" => 179,
        "IRC" => 194,
        "Z39_50" => 210,
        "link" => 245,
        "ldap" => 389,
        "nnsp" => 433,
        "http_443" => 443,
        "exec" => 512,
        "login" => 513,
        "shell" => 514,
        "printer" => 515,
        "efs" => 520,
        "courier" => 530,
        "uucp" => 540,
        "klogin" => 543,
        "kshell" => 544,
        "http_2784" => 2784,
        "aol" => 5190,
        "X11" => 6000,
        "http_8001" => 8001,
        "private" => 49_152,
        _ => 1024,
    }
}
