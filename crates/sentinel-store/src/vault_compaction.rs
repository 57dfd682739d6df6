//! Compression of masked vault files in the background (`[store] vault_compression =
//! "background"`): a new sample's file is written masked, which costs next to nothing, so the
//! answer to a request does not wait for zstd; this thread then replaces each such file by its
//! zstd form when that is worth it ([`Vault::compact`]).
//!
//! Nothing depends on it for durability or correctness: a masked file is a whole, verified vault
//! file, and the replacement is atomic (new file, fsync, rename, directory fsync). What it can
//! lose — its queue, when the process stops or the queue is full — only leaves files masked,
//! which costs disk space, not data. The queue holds hashes, never sample bytes, so its memory
//! is bounded whatever the load.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, sync_channel};
use std::thread::JoinHandle;

use crate::StoreError;
use crate::sample_hash::SampleHash;
use crate::vault::Vault;

/// Files waiting for compression; more are left masked.
const QUEUE_LEN: usize = 4096;

/// The compaction thread of a store; stopped and joined when dropped.
pub(crate) struct VaultCompaction {
    vault: Arc<Vault>,
    /// Set when the store closes: the files still queued are left masked.
    stopping: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl VaultCompaction {
    /// Starts the thread; from now on `vault` queues the masked files it writes.
    pub(crate) fn start(vault: Arc<Vault>) -> Result<VaultCompaction, StoreError> {
        let (queue, files) = sync_channel(QUEUE_LEN);
        let (worker, stopping) = (Arc::clone(&vault), Arc::new(AtomicBool::new(false)));
        let stop = Arc::clone(&stopping);
        let thread = std::thread::Builder::new()
            .name("vault-compaction".into())
            .spawn(move || compact_queued(&worker, &files, &stop))
            .map_err(|error| StoreError::Io { path: "vault-compaction thread".into(), source: error })?;
        vault.start_compaction(queue);
        Ok(VaultCompaction { vault, stopping, thread: Some(thread) })
    }
}

impl Drop for VaultCompaction {
    fn drop(&mut self) {
        // The thread ends after the file it is on.
        self.stopping.store(true, Ordering::Relaxed);
        self.vault.stop_compaction();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Compression is never urgent: the lowest priority.
const COMPACTION_NICE: i32 = 19;

fn compact_queued(vault: &Vault, files: &Receiver<SampleHash>, stopping: &AtomicBool) {
    lower_priority(COMPACTION_NICE);
    while let Ok(hash) = files.recv() {
        if stopping.load(Ordering::Relaxed) {
            return;
        }
        match vault.compact(&hash) {
            Ok(replaced) => tracing::trace!(sha256 = hash.as_str(), replaced, "vault file compaction"),
            // The file stays as it is; a damaged one is reported when it is read, too.
            Err(error) => tracing::warn!(sha256 = hash.as_str(), %error, "cannot compress a vault file"),
        }
    }
}

/// Runs the calling thread at CPU priority `nice` (19 is the lowest): background work must
/// not take a core from the requests being answered.
pub(crate) fn lower_priority(nice: i32) {
    #[cfg(target_os = "linux")]
    // SAFETY: setpriority with PRIO_PROCESS and a thread id changes only this thread's nice
    // value (Linux threads are scheduled entities with their own), reads no memory of ours, and
    // its failure leaves the priority as it was.
    unsafe {
        let thread = libc::gettid();
        let _ = libc::setpriority(libc::PRIO_PROCESS, thread as libc::id_t, nice);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = nice;
}
