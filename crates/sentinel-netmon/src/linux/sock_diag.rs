//! Dumps every TCP and UDP socket of the host's network namespace through netlink
//! `NETLINK_SOCK_DIAG` (the interface `ss` uses), with `tcp_info` for TCP sockets.
//!
//! The messages are built and parsed by hand over a raw `libc` socket rather than with
//! `netlink-packet-sock-diag`: that crate hands `tcp_info` over as raw bytes unless its
//! `rich_nlas` feature is on, and then it rejects any `tcp_info` shorter than the struct it was
//! written against (older kernels send shorter ones). `tcp_info` grows at the end with each kernel
//! release, so it is read here by offset, and a field the kernel did not send is `None`. Every
//! length is checked before it is used: a truncated or odd message is an error or is skipped,
//! never a panic.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::collector::CollectError;
use crate::record::{Family, Protocol, SocketState};

pub(super) const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
pub(super) const NLMSG_HEADER_LEN: usize = 16;
/// `struct inet_diag_msg`.
const INET_DIAG_MSG_LEN: usize = 72;
/// `struct inet_diag_req_v2`.
const INET_DIAG_REQ_LEN: usize = 56;
const INET_DIAG_INFO: u16 = 2;
/// A reply datagram is at most about 32 KiB on current kernels; a larger buffer costs nothing.
const RECEIVE_BUFFER_LEN: usize = 256 * 1024;

/// One socket as the kernel describes it.
#[derive(Debug, Clone)]
pub(crate) struct DiagSocket {
    pub protocol: Protocol,
    pub family: Family,
    pub state: SocketState,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// Inode of the socket, the link to `/proc/<pid>/fd`; 0 when no file refers to it.
    pub inode: u64,
    pub cookie: u64,
    pub tcp: Option<TcpCounters>,
}

/// The parts of `struct tcp_info` the records carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TcpCounters {
    pub bytes_sent: Option<u64>,
    pub bytes_received: Option<u64>,
    pub rtt_us: Option<u32>,
    pub retransmits: Option<u32>,
    pub segs_in: Option<u32>,
    pub segs_out: Option<u32>,
}

/// An open `NETLINK_SOCK_DIAG` socket, reused across collections.
pub(crate) struct SockDiag {
    socket: OwnedFd,
    buffer: Vec<u8>,
    sequence: u32,
}

impl SockDiag {
    pub fn open() -> Result<SockDiag, CollectError> {
        let netlink = |context| move |source| CollectError::Netlink { context, source };
        // SAFETY: plain socket(2) call; the result is checked before it is wrapped.
        let fd = unsafe {
            libc::socket(libc::AF_NETLINK, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, libc::NETLINK_SOCK_DIAG)
        };
        if fd < 0 {
            return Err(netlink("opening the socket")(io::Error::last_os_error()));
        }
        // SAFETY: `fd` is a freshly opened descriptor that nothing else owns.
        let socket = unsafe { OwnedFd::from_raw_fd(fd) };
        // A kernel that never answers must not hang the collection thread forever.
        let timeout = libc::timeval { tv_sec: 5, tv_usec: 0 };
        // SAFETY: `timeout` is a valid timeval and its size is passed along.
        let status = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const timeout).cast(),
                size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if status < 0 {
            return Err(netlink("setting the receive timeout")(io::Error::last_os_error()));
        }
        Ok(SockDiag { socket, buffer: vec![0; RECEIVE_BUFFER_LEN], sequence: 0 })
    }

    /// Appends every socket of `protocol` in `family` to `out`.
    pub fn dump(
        &mut self,
        protocol: Protocol,
        family: Family,
        out: &mut Vec<DiagSocket>,
    ) -> Result<(), CollectError> {
        self.sequence = self.sequence.wrapping_add(1);
        self.send_request(protocol, family)?;
        loop {
            // MSG_TRUNC makes recv return the datagram's real length, so a reply larger than the
            // buffer is detected instead of being parsed cut short.
            // SAFETY: the buffer is valid for `len` bytes and outlives the call.
            let received = unsafe {
                libc::recv(
                    self.socket.as_raw_fd(),
                    self.buffer.as_mut_ptr().cast(),
                    self.buffer.len(),
                    libc::MSG_TRUNC,
                )
            };
            if received < 0 {
                let error = io::Error::last_os_error();
                if error.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(CollectError::Netlink { context: "receiving the dump", source: error });
            }
            let received = received as usize;
            if received > self.buffer.len() {
                return Err(CollectError::MalformedReply(format!(
                    "a datagram of {received} bytes does not fit the {}-byte buffer",
                    self.buffer.len()
                )));
            }
            if parse_datagram(&self.buffer[..received], self.sequence, protocol, out)? {
                return Ok(());
            }
        }
    }

    fn send_request(&self, protocol: Protocol, family: Family) -> Result<(), CollectError> {
        let mut request = [0u8; NLMSG_HEADER_LEN + INET_DIAG_REQ_LEN];
        let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
        request[0..4].copy_from_slice(&((NLMSG_HEADER_LEN + INET_DIAG_REQ_LEN) as u32).to_ne_bytes());
        request[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        request[6..8].copy_from_slice(&flags.to_ne_bytes());
        request[8..12].copy_from_slice(&self.sequence.to_ne_bytes());
        let body = &mut request[NLMSG_HEADER_LEN..];
        body[0] = match family {
            Family::V4 => libc::AF_INET as u8,
            Family::V6 => libc::AF_INET6 as u8,
        };
        body[1] = match protocol {
            Protocol::Tcp => libc::IPPROTO_TCP as u8,
            Protocol::Udp => libc::IPPROTO_UDP as u8,
        };
        body[2] = 1 << (INET_DIAG_INFO - 1);
        // Every state, listeners and TIME_WAIT included, as `ss -a`.
        body[4..8].copy_from_slice(&u32::MAX.to_ne_bytes());

        // SAFETY: zeroed sockaddr_nl is valid; pid 0 addresses the kernel.
        let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: the request and address are valid for the lengths passed.
        let sent = unsafe {
            libc::sendto(
                self.socket.as_raw_fd(),
                request.as_ptr().cast(),
                request.len(),
                0,
                (&raw const kernel).cast(),
                size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(CollectError::Netlink {
                context: "sending the request",
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }
}

/// Parses one reply datagram into `out`; returns whether the dump is complete.
fn parse_datagram(
    mut datagram: &[u8],
    sequence: u32,
    protocol: Protocol,
    out: &mut Vec<DiagSocket>,
) -> Result<bool, CollectError> {
    while datagram.len() >= NLMSG_HEADER_LEN {
        let length = read_u32(datagram, 0).unwrap_or(0) as usize;
        if length < NLMSG_HEADER_LEN || length > datagram.len() {
            return Err(CollectError::MalformedReply(format!(
                "message length {length} with {} bytes left in the datagram",
                datagram.len()
            )));
        }
        let kind = read_u16(datagram, 4).unwrap_or(0);
        let message_sequence = read_u32(datagram, 8).unwrap_or(0);
        let payload = &datagram[NLMSG_HEADER_LEN..length];
        datagram = &datagram[align4(length).min(datagram.len())..];
        // Replies to an earlier request that timed out are stale: skip them.
        if message_sequence != sequence {
            continue;
        }
        match kind {
            NLMSG_DONE => return Ok(true),
            NLMSG_ERROR => {
                let errno = payload
                    .get(0..4)
                    .map_or(0, |bytes| i32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]));
                if errno == 0 {
                    continue;
                }
                return Err(CollectError::Netlink {
                    context: "the kernel refused the dump",
                    source: io::Error::from_raw_os_error(-errno),
                });
            }
            SOCK_DIAG_BY_FAMILY => {
                if let Some(socket) = parse_socket(payload, protocol) {
                    out.push(socket);
                }
            }
            _ => {}
        }
    }
    Ok(false)
}

/// Parses one `inet_diag_msg` and its attributes; `None` for a message too short or of an
/// unknown family, which is skipped rather than failing the whole dump.
pub(super) fn parse_socket(message: &[u8], protocol: Protocol) -> Option<DiagSocket> {
    if message.len() < INET_DIAG_MSG_LEN {
        return None;
    }
    let (family, local_ip, remote_ip) = match i32::from(message[0]) {
        libc::AF_INET => (Family::V4, IpAddr::V4(ipv4_at(message, 8)?), IpAddr::V4(ipv4_at(message, 24)?)),
        libc::AF_INET6 => (Family::V6, IpAddr::V6(ipv6_at(message, 8)?), IpAddr::V6(ipv6_at(message, 24)?)),
        _ => return None,
    };
    let local_port = u16::from_be_bytes([message[4], message[5]]);
    let remote_port = u16::from_be_bytes([message[6], message[7]]);
    let cookie = u64::from(read_u32(message, 44)?) | u64::from(read_u32(message, 48)?) << 32;
    let inode = u64::from(read_u32(message, 68)?);
    let state = socket_state(protocol, message[1]);

    let mut tcp = None;
    let mut attributes = &message[INET_DIAG_MSG_LEN..];
    while attributes.len() >= 4 {
        let length = usize::from(read_u16(attributes, 0)?);
        if length < 4 || length > attributes.len() {
            break;
        }
        if read_u16(attributes, 2)? == INET_DIAG_INFO && protocol == Protocol::Tcp {
            tcp = Some(tcp_counters(&attributes[4..length], state));
        }
        attributes = &attributes[align4(length).min(attributes.len())..];
    }

    Some(DiagSocket {
        protocol,
        family,
        state,
        local: SocketAddr::new(local_ip, local_port),
        remote: SocketAddr::new(remote_ip, remote_port),
        inode,
        cookie,
        tcp,
    })
}

fn socket_state(protocol: Protocol, state: u8) -> SocketState {
    match (protocol, state) {
        (Protocol::Udp, 7) => SocketState::Unconn,
        (_, 1) => SocketState::Established,
        (_, 2) => SocketState::SynSent,
        (_, 3) => SocketState::SynRecv,
        (_, 4) => SocketState::FinWait1,
        (_, 5) => SocketState::FinWait2,
        (_, 6) => SocketState::TimeWait,
        (_, 7) => SocketState::Close,
        (_, 8) => SocketState::CloseWait,
        (_, 9) => SocketState::LastAck,
        (_, 10) => SocketState::Listen,
        (_, 11) => SocketState::Closing,
        (_, 12) => SocketState::NewSynRecv,
        _ => SocketState::Unknown,
    }
}

/// Offsets in `struct tcp_info` (include/uapi/linux/tcp.h); each field exists only if the
/// kernel's struct reaches that far.
mod tcp_info_offset {
    pub const RTT: usize = 68;
    pub const TOTAL_RETRANS: usize = 100;
    pub const BYTES_RECEIVED: usize = 128;
    pub const SEGS_OUT: usize = 136;
    pub const SEGS_IN: usize = 140;
    /// Linux 4.19.
    pub const BYTES_SENT: usize = 200;
    pub const BYTES_RETRANS: usize = 208;
}

/// Payload byte counters from `tcp_info`.
///
/// `tcpi_bytes_acked` and `tcpi_bytes_received` count sequence space, which includes the SYN
/// (on the side that opened the connection) and the FIN. Payload sent is therefore taken as
/// `tcpi_bytes_sent - tcpi_bytes_retrans` (every payload byte once, acknowledged or still in
/// flight), and payload received as `tcpi_bytes_received` less the peer's FIN once the state
/// shows it arrived.
fn tcp_counters(info: &[u8], state: SocketState) -> TcpCounters {
    use tcp_info_offset::*;
    let peer_fin_received = matches!(
        state,
        SocketState::CloseWait | SocketState::LastAck | SocketState::Closing | SocketState::TimeWait
    );
    let bytes_received =
        read_u64(info, BYTES_RECEIVED).map(|bytes| bytes.saturating_sub(u64::from(peer_fin_received)));
    let bytes_sent = read_u64(info, BYTES_SENT)
        .zip(read_u64(info, BYTES_RETRANS))
        .map(|(sent, retransmitted)| sent.saturating_sub(retransmitted));
    TcpCounters {
        bytes_sent,
        bytes_received,
        rtt_us: read_u32(info, RTT),
        retransmits: read_u32(info, TOTAL_RETRANS),
        segs_in: read_u32(info, SEGS_IN),
        segs_out: read_u32(info, SEGS_OUT),
    }
}

pub(super) fn align4(length: usize) -> usize {
    (length + 3) & !3
}

pub(super) fn read_u16(bytes: &[u8], offset: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(bytes.get(offset..offset + 2)?.try_into().ok()?))
}

pub(super) fn read_u32(bytes: &[u8], offset: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(bytes.get(offset..offset + 4)?.try_into().ok()?))
}

fn read_u64(bytes: &[u8], offset: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(bytes.get(offset..offset + 8)?.try_into().ok()?))
}

fn ipv4_at(bytes: &[u8], offset: usize) -> Option<Ipv4Addr> {
    let octets: [u8; 4] = bytes.get(offset..offset + 4)?.try_into().ok()?;
    Some(Ipv4Addr::from(octets))
}

fn ipv6_at(bytes: &[u8], offset: usize) -> Option<Ipv6Addr> {
    let octets: [u8; 16] = bytes.get(offset..offset + 16)?.try_into().ok()?;
    Some(Ipv6Addr::from(octets))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(kind: u16, sequence: u32, payload: &[u8]) -> Vec<u8> {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&((NLMSG_HEADER_LEN + payload.len()) as u32).to_ne_bytes());
        bytes.extend_from_slice(&kind.to_ne_bytes());
        bytes.extend_from_slice(&0u16.to_ne_bytes());
        bytes.extend_from_slice(&sequence.to_ne_bytes());
        bytes.extend_from_slice(&0u32.to_ne_bytes());
        bytes.extend_from_slice(payload);
        while bytes.len() % 4 != 0 {
            bytes.push(0);
        }
        bytes
    }

    fn ipv4_socket(tcp_info: Option<&[u8]>) -> Vec<u8> {
        let mut body = vec![0u8; INET_DIAG_MSG_LEN];
        body[0] = libc::AF_INET as u8;
        body[1] = 1;
        body[4..6].copy_from_slice(&8080u16.to_be_bytes());
        body[6..8].copy_from_slice(&443u16.to_be_bytes());
        body[8..12].copy_from_slice(&[127, 0, 0, 1]);
        body[24..28].copy_from_slice(&[192, 0, 2, 7]);
        body[68..72].copy_from_slice(&4242u32.to_ne_bytes());
        if let Some(info) = tcp_info {
            body.extend_from_slice(&((4 + info.len()) as u16).to_ne_bytes());
            body.extend_from_slice(&INET_DIAG_INFO.to_ne_bytes());
            body.extend_from_slice(info);
        }
        body
    }

    #[test]
    fn a_short_tcp_info_leaves_the_newer_counters_empty() {
        // A 4.9-era tcp_info stops before tcpi_bytes_sent.
        let mut info = vec![0u8; 160];
        info[128..136].copy_from_slice(&1000u64.to_ne_bytes());
        let datagram = message(SOCK_DIAG_BY_FAMILY, 9, &ipv4_socket(Some(&info)));
        let mut out = Vec::new();
        assert!(!parse_datagram(&datagram, 9, Protocol::Tcp, &mut out).unwrap());
        let socket = &out[0];
        assert_eq!(socket.local, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(socket.remote, "192.0.2.7:443".parse().unwrap());
        assert_eq!(socket.inode, 4242);
        let tcp = socket.tcp.unwrap();
        assert_eq!(tcp.bytes_received, Some(1000));
        assert_eq!(tcp.bytes_sent, None);
    }

    #[test]
    fn truncated_and_stale_messages_do_not_panic() {
        let whole = message(SOCK_DIAG_BY_FAMILY, 1, &ipv4_socket(Some(&[0u8; 232])));
        for cut in 0..whole.len() {
            let mut out = Vec::new();
            let _ = parse_datagram(&whole[..cut], 1, Protocol::Tcp, &mut out);
        }
        let mut out = Vec::new();
        assert!(!parse_datagram(&whole, 2, Protocol::Tcp, &mut out).unwrap());
        assert!(out.is_empty(), "a reply with another sequence number is ignored");
        let mut short_body = message(SOCK_DIAG_BY_FAMILY, 1, &[0u8; 10]);
        short_body.extend(message(NLMSG_DONE, 1, &[0; 4]));
        assert!(parse_datagram(&short_body, 1, Protocol::Tcp, &mut out).unwrap());
        assert!(out.is_empty());
    }

    #[test]
    fn a_kernel_error_is_reported_with_its_errno() {
        let datagram = message(NLMSG_ERROR, 3, &(-libc::EACCES).to_ne_bytes());
        let error = parse_datagram(&datagram, 3, Protocol::Udp, &mut Vec::new()).unwrap_err();
        assert!(
            matches!(error, CollectError::Netlink { ref source, .. } if source.raw_os_error() == Some(libc::EACCES))
        );
    }
}
