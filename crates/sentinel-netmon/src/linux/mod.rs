//! The Linux collector: what `ss -tuanpi` and `/proc` show, as one [`Snapshot`].
//!
//! Sockets come from netlink sock_diag (TCP and UDP, IPv4 and IPv6, every state), plus the
//! failed connection attempts the kernel announced since the previous collection
//! (`failed_attempts.rs`: refused connects are over before any snapshot sees them), owners from
//! the cached socket-inode map of `/proc/<pid>/fd`, process details from `/proc/<pid>`, interface
//! counters from `/proc/net/dev`. It sees the network namespace it runs in; run as root (or with
//! CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH) to see the owners of other users' sockets.

mod failed_attempts;
mod interfaces;
mod processes;
mod sock_diag;

use std::collections::{HashMap, HashSet};
use std::time::SystemTime;

use crate::collection_loop::CollectorSettings;
use crate::collector::{CollectError, Collector};
use crate::record::{
    ConnectionRecord, Family, ProcessInfo, ProcessNetworkRecord, Protocol, SCHEMA_VERSION, Snapshot,
    SocketState,
};
use failed_attempts::FailedAttempts;
use processes::{ProcessTable, SocketOwners};
use sock_diag::{DiagSocket, SockDiag};

/// Collects the sockets, interfaces and socket-owning processes of this host.
pub struct LinuxCollector {
    host: String,
    sock_diag: SockDiag,
    /// `None` where the kernel offers no destroy notifications: refused attempts go unseen.
    failed_attempts: Option<FailedAttempts>,
    owners: SocketOwners,
    processes: ProcessTable,
    /// Reused from one collection to the next to avoid reallocating thousands of entries.
    sockets: Vec<DiagSocket>,
}

impl LinuxCollector {
    /// A collector whose records carry `host` as their agent id.
    pub fn new(host: impl Into<String>) -> Result<LinuxCollector, CollectError> {
        let failed_attempts = FailedAttempts::subscribe()
            .inspect_err(|error| tracing::warn!(%error, "refused connection attempts will not be seen"))
            .ok();
        Ok(LinuxCollector {
            host: host.into(),
            sock_diag: SockDiag::open()?,
            failed_attempts,
            owners: SocketOwners::default(),
            processes: ProcessTable::new(),
            sockets: Vec::new(),
        })
    }

    /// A collector for the loop's settings: agent id `settings.host`, or the kernel's host name.
    pub fn from_settings(settings: &CollectorSettings) -> Result<LinuxCollector, CollectError> {
        match &settings.host {
            Some(host) => LinuxCollector::new(host.clone()),
            None => LinuxCollector::new(LinuxCollector::kernel_hostname()?),
        }
    }

    /// The kernel's host name, the default agent id.
    pub fn kernel_hostname() -> Result<String, CollectError> {
        const PATH: &str = "/proc/sys/kernel/hostname";
        std::fs::read_to_string(PATH)
            .map(|name| name.trim().to_owned())
            .map_err(|source| CollectError::Proc { path: PATH.into(), source })
    }

    fn dump_sockets(&mut self) -> Result<(), CollectError> {
        self.sockets.clear();
        for protocol in [Protocol::Tcp, Protocol::Udp] {
            for family in [Family::V4, Family::V6] {
                match self.sock_diag.dump(protocol, family, &mut self.sockets) {
                    Ok(()) => {}
                    // A kernel booted with IPv6 disabled has no IPv6 sockets to show.
                    Err(CollectError::Netlink { source, .. })
                        if family == Family::V6
                            && matches!(source.raw_os_error(), Some(libc::EAFNOSUPPORT | libc::ENOENT)) => {}
                    Err(error) => return Err(error),
                }
            }
        }
        if let Some(failed_attempts) = &mut self.failed_attempts
            && let Err(error) = failed_attempts.drain(&mut self.sockets)
        {
            tracing::warn!(%error, "refused connection attempts could not be read");
        }
        Ok(())
    }
}

impl Collector for LinuxCollector {
    fn collect(&mut self) -> Result<Snapshot, CollectError> {
        let timestamp = SystemTime::now();
        self.dump_sockets()?;

        let inodes: HashSet<u64> =
            self.sockets.iter().map(|socket| socket.inode).filter(|&inode| inode != 0).collect();
        self.owners.refresh(&inodes);

        // Each owning process is read once, however many sockets it has.
        let mut owners: HashMap<u32, Option<ProcessInfo>> = HashMap::new();
        for socket in &self.sockets {
            if let Some(pid) = self.owners.owner(socket.inode) {
                owners.entry(pid).or_insert_with(|| self.processes.lookup(pid, &self.host).cloned());
            }
        }
        for (&pid, info) in &owners {
            if info.is_none() {
                self.owners.forget(pid);
            }
        }
        self.processes.retain(&owners.keys().copied().collect());

        let mut usage: HashMap<u32, ProcessNetworkRecord> = HashMap::new();
        let mut connections = Vec::with_capacity(self.sockets.len());
        for socket in &self.sockets {
            let owner = self.owners.owner(socket.inode).and_then(|pid| owners.get(&pid)?.as_ref());
            let tcp = socket.tcp;
            let record = ConnectionRecord {
                timestamp,
                host: self.host.clone(),
                pid: owner.map(|info| info.pid),
                process_name: owner.map(|info| info.name.clone()),
                process_path: owner.and_then(|info| info.path.clone()),
                user: owner.and_then(|info| info.user.clone()),
                local_ip: socket.local.ip(),
                local_port: socket.local.port(),
                remote_ip: socket.remote.ip(),
                remote_port: socket.remote.port(),
                protocol: socket.protocol,
                family: socket.family,
                state: socket.state,
                bytes_sent: tcp.and_then(|tcp| tcp.bytes_sent),
                bytes_received: tcp.and_then(|tcp| tcp.bytes_received),
                rtt_us: tcp.and_then(|tcp| tcp.rtt_us),
                retransmits: tcp.and_then(|tcp| tcp.retransmits),
                segs_in: tcp.and_then(|tcp| tcp.segs_in),
                segs_out: tcp.and_then(|tcp| tcp.segs_out),
                socket_id: Some(socket.cookie),
            };
            if let Some(info) = owner {
                add_usage(&mut usage, info, &record);
            }
            connections.push(record);
        }

        let mut processes: Vec<ProcessNetworkRecord> = usage.into_values().collect();
        processes.sort_by_key(|record| record.pid);
        let mut process_info: Vec<ProcessInfo> = owners.into_values().flatten().collect();
        process_info.sort_by_key(|info| info.pid);
        Ok(Snapshot {
            schema_version: SCHEMA_VERSION,
            host: self.host.clone(),
            timestamp,
            connections,
            interfaces: interfaces::read_interfaces(&self.host, timestamp)?,
            processes,
            process_info,
        })
    }
}

fn add_usage(usage: &mut HashMap<u32, ProcessNetworkRecord>, owner: &ProcessInfo, record: &ConnectionRecord) {
    let entry = usage.entry(owner.pid).or_insert_with(|| ProcessNetworkRecord {
        timestamp: record.timestamp,
        host: record.host.clone(),
        pid: owner.pid,
        name: Some(owner.name.clone()),
        tcp_connections: 0,
        tcp_listeners: 0,
        udp_sockets: 0,
        bytes_sent: 0,
        bytes_received: 0,
    });
    match (record.protocol, record.state) {
        (Protocol::Tcp, SocketState::Listen) => entry.tcp_listeners += 1,
        (Protocol::Tcp, _) => entry.tcp_connections += 1,
        (Protocol::Udp, _) => entry.udp_sockets += 1,
    }
    entry.bytes_sent = entry.bytes_sent.saturating_add(record.bytes_sent.unwrap_or(0));
    entry.bytes_received = entry.bytes_received.saturating_add(record.bytes_received.unwrap_or(0));
}
