//! The seam between the collection loop and a platform: anything that can take a [`Snapshot`] of
//! the host's sockets, interfaces and processes. The Linux implementation is
//! [`crate::LinuxCollector`]; other platforms, and test doubles, implement the same trait.

use std::path::PathBuf;

use crate::record::Snapshot;

/// Takes snapshots of one host. Called from a blocking thread (the collection loop runs it with
/// `spawn_blocking`), so implementations may do blocking I/O.
pub trait Collector: Send + 'static {
    /// Observes the host now. Fails only when nothing useful can be observed (the socket
    /// diagnostics interface is unavailable); a process exiting mid-read or an unreadable
    /// `/proc` entry only leaves the affected fields empty.
    fn collect(&mut self) -> Result<Snapshot, CollectError>;
}

/// Why a collection failed.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    #[error("netlink socket diagnostics: {context}: {source}")]
    Netlink {
        context: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("netlink socket diagnostics: malformed reply: {0}")]
    MalformedReply(String),
    #[error("cannot read {path}: {source}")]
    Proc {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}
