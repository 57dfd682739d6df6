//! Connection attempts too short for any socket table: the kernel's notifications of destroyed
//! TCP sockets (sock_diag's `SKNLGRP_INET_TCP_DESTROY` and `SKNLGRP_INET6_TCP_DESTROY`
//! multicast groups, Linux 4.9+), kept when the socket was an attempt that never got an answer.
//!
//! A connect to a closed port is refused within microseconds, on loopback and on a LAN alike:
//! a snapshot taken every second almost never catches it in SYN_SENT, so the commonest scan, of
//! closed ports, left no trace. The kernel announces every destroyed TCP socket, with its
//! addresses and `tcp_info`, to whoever joined these groups; joining needs no privilege. Other
//! sources were weighed: conntrack events need CAP_NET_ADMIN and the conntrack module loaded,
//! eBPF needs CAP_BPF and a loader; this one runs as any user.
//!
//! Only failed attempts are kept: a socket destroyed while still in SYN_SENT or CLOSE that
//! received nothing (no payload, at most one segment: the peer's RST). Every other destroyed
//! socket is left to the snapshots, which follow connections through their states. A refused
//! attempt's socket belongs to no file any more when it is destroyed, so its owner is unknown.
//! One caveat: a *blocking* connect that fails has its remote port cleared by the kernel before
//! the socket is destroyed; those attempts (remote port 0) are dropped, as the port is what a
//! scan is recognised by. Scanners and asynchronous clients connect without blocking.
//!
//! The notifications queue in the socket's receive buffer between two collections; when a burst
//! overflows it, the kernel drops notifications and says so (`ENOBUFS`), which is counted and
//! logged, never fatal.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::sock_diag::{
    DiagSocket, NLMSG_HEADER_LEN, SOCK_DIAG_BY_FAMILY, align4, parse_socket, read_u16, read_u32,
};
use crate::collector::CollectError;
use crate::record::{Protocol, SocketState};

/// `SKNLGRP_INET_TCP_DESTROY` and `SKNLGRP_INET6_TCP_DESTROY` (include/uapi/linux/sock_diag.h).
const INET_TCP_DESTROY: u32 = 1;
const INET6_TCP_DESTROY: u32 = 3;
/// The two groups as the bit mask of `sockaddr_nl.nl_groups`, where group n is bit n − 1.
const TCP_DESTROY_GROUPS: u32 = 1 << (INET_TCP_DESTROY - 1) | 1 << (INET6_TCP_DESTROY - 1);
/// Room for about 10,000 notifications between two collections.
const RECEIVE_BUFFER_BYTES: libc::c_int = 4 << 20;
/// Datagrams read per collection at most, so one collection's work stays bounded whatever the
/// rate of destroyed sockets; the rest waits for the next collection (or overflows, counted).
const MAX_DATAGRAMS_PER_DRAIN: usize = 100_000;
/// One notification is about 400 bytes; the kernel sends one per datagram.
const DATAGRAM_BUFFER_LEN: usize = 64 * 1024;

/// A subscription to the kernel's notifications of destroyed TCP sockets.
pub(crate) struct FailedAttempts {
    socket: OwnedFd,
    buffer: Vec<u8>,
    /// Times the receive buffer overflowed (notifications lost) since the subscription opened.
    overflows: u64,
}

impl FailedAttempts {
    /// Joins the destroy groups. Fails on a kernel without them (before 4.9) or where netlink is
    /// not allowed; the snapshots still work then.
    pub fn subscribe() -> Result<FailedAttempts, CollectError> {
        let netlink = |context| move |source| CollectError::Netlink { context, source };
        // SAFETY: plain socket(2) call; the result is checked before it is wrapped.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                libc::NETLINK_SOCK_DIAG,
            )
        };
        if fd < 0 {
            return Err(netlink("opening the notification socket")(io::Error::last_os_error()));
        }
        // SAFETY: `fd` is a freshly opened descriptor that nothing else owns.
        let socket = unsafe { OwnedFd::from_raw_fd(fd) };
        // A larger buffer is best effort: the kernel caps it at net.core.rmem_max.
        let buffer_bytes = RECEIVE_BUFFER_BYTES;
        // SAFETY: the value is a valid c_int and its size is passed along.
        unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&raw const buffer_bytes).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        // SAFETY: zeroed sockaddr_nl is valid; the groups are set before bind.
        let mut address: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        address.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        address.nl_groups = TCP_DESTROY_GROUPS;
        // SAFETY: the address is valid for the length passed.
        let status = unsafe {
            libc::bind(
                socket.as_raw_fd(),
                (&raw const address).cast(),
                size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if status < 0 {
            return Err(netlink("joining the destroyed-socket groups")(io::Error::last_os_error()));
        }
        Ok(FailedAttempts { socket, buffer: vec![0; DATAGRAM_BUFFER_LEN], overflows: 0 })
    }

    /// Appends the failed attempts announced since the previous call to `out`.
    pub fn drain(&mut self, out: &mut Vec<DiagSocket>) -> Result<(), CollectError> {
        for _ in 0..MAX_DATAGRAMS_PER_DRAIN {
            // SAFETY: the buffer is valid for `len` bytes and outlives the call.
            let received = unsafe {
                libc::recv(self.socket.as_raw_fd(), self.buffer.as_mut_ptr().cast(), self.buffer.len(), 0)
            };
            if received < 0 {
                let error = io::Error::last_os_error();
                match error.raw_os_error() {
                    Some(libc::EAGAIN) => return Ok(()),
                    Some(libc::EINTR) => continue,
                    Some(libc::ENOBUFS) => {
                        self.overflows += 1;
                        tracing::warn!(
                            overflows = self.overflows,
                            "destroyed-socket notifications were lost: too many between two collections"
                        );
                        continue;
                    }
                    _ => {
                        return Err(CollectError::Netlink {
                            context: "receiving destroyed-socket notifications",
                            source: error,
                        });
                    }
                }
            }
            let received = (received as usize).min(self.buffer.len());
            parse_notifications(&self.buffer[..received], out);
        }
        Ok(())
    }
}

/// Parses one datagram of notifications, keeping the failed attempts.
fn parse_notifications(mut datagram: &[u8], out: &mut Vec<DiagSocket>) {
    while datagram.len() >= NLMSG_HEADER_LEN {
        let length = read_u32(datagram, 0).unwrap_or(0) as usize;
        if length < NLMSG_HEADER_LEN || length > datagram.len() {
            return;
        }
        let kind = read_u16(datagram, 4).unwrap_or(0);
        let payload = &datagram[NLMSG_HEADER_LEN..length];
        datagram = &datagram[align4(length).min(datagram.len())..];
        if kind == SOCK_DIAG_BY_FAMILY
            && let Some(socket) = parse_socket(payload, Protocol::Tcp)
            && is_failed_attempt(&socket)
        {
            out.push(socket);
        }
    }
}

/// A connection attempt that never got an answer, or got a reset: destroyed before it was
/// established, having received at most one segment and no payload.
fn is_failed_attempt(socket: &DiagSocket) -> bool {
    let never_established = matches!(socket.state, SocketState::SynSent | SocketState::Close);
    let silent = socket.tcp.is_some_and(|tcp| {
        tcp.bytes_received == Some(0) && tcp.segs_in.is_some_and(|segments| segments <= 1)
    });
    never_established && silent && socket.remote.port() != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A destroy notification as the kernel sends it: an `inet_diag_msg` of a TCP socket in
    /// `state`, from 10.0.0.5:40000 to 192.0.2.7:`remote_port`, with a `tcp_info` attribute.
    fn notification(state: u8, remote_port: u16, segs_in: u32, bytes_received: u64) -> Vec<u8> {
        let mut body = vec![0u8; 72];
        body[0] = libc::AF_INET as u8;
        body[1] = state;
        body[4..6].copy_from_slice(&40000u16.to_be_bytes());
        body[6..8].copy_from_slice(&remote_port.to_be_bytes());
        body[8..12].copy_from_slice(&[10, 0, 0, 5]);
        body[24..28].copy_from_slice(&[192, 0, 2, 7]);
        let mut info = vec![0u8; 232];
        info[128..136].copy_from_slice(&bytes_received.to_ne_bytes());
        info[140..144].copy_from_slice(&segs_in.to_ne_bytes());
        body.extend_from_slice(&((4 + info.len()) as u16).to_ne_bytes());
        body.extend_from_slice(&2u16.to_ne_bytes());
        body.extend_from_slice(&info);
        let mut message = Vec::new();
        message.extend_from_slice(&((NLMSG_HEADER_LEN + body.len()) as u32).to_ne_bytes());
        message.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        message.extend_from_slice(&[0; 10]);
        message.extend_from_slice(&body);
        message
    }

    #[test]
    fn only_attempts_that_got_nothing_back_are_kept() {
        let refused = notification(7, 8081, 1, 0);
        let unanswered = notification(2, 8082, 0, 0);
        let finished = notification(7, 8083, 6, 1200);
        let listener = notification(7, 0, 0, 0);
        let datagram = [refused, unanswered, finished, listener].concat();
        let mut out = Vec::new();
        parse_notifications(&datagram, &mut out);
        let ports: Vec<u16> = out.iter().map(|socket| socket.remote.port()).collect();
        assert_eq!(ports, [8081, 8082]);
        assert_eq!(out[0].local, "10.0.0.5:40000".parse().unwrap());
    }

    #[test]
    fn truncated_notifications_do_not_panic() {
        let whole = notification(7, 8081, 1, 0);
        for cut in 0..whole.len() {
            parse_notifications(&whole[..cut], &mut Vec::new());
        }
    }

    #[tokio::test]
    async fn a_refused_connect_is_announced_with_its_port() {
        let mut attempts = FailedAttempts::subscribe().unwrap();
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        // Without blocking, as scanners connect: the kernel keeps the remote port.
        let refused = tokio::net::TcpStream::connect(closed).await;
        assert!(refused.is_err());
        let mut out = Vec::new();
        for _ in 0..100 {
            attempts.drain(&mut out).unwrap();
            if out.iter().any(|socket| socket.remote == closed) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("no notification of the refused connect to {closed}: {out:?}");
    }
}
