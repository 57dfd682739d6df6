//! The settling thread of the sample journal (`sample_journal.rs`): writes the vault file of
//! each sample a request journaled, the usual way (new file, fsync, rename, directory fsync),
//! then releases its record; and keeps a journal segment prepared for the next records. Files
//! are written between bursts of requests (or when the journal fills up), so that their flushes
//! do not delay the requests'.
//!
//! Nothing acknowledged depends on it: a journaled sample is durable in its record and read
//! from there until settled, and a stop before it is settled leaves the record for the next
//! start to write ([`crate::vault::Vault::open`]). When the store closes the thread settles what
//! is left, so a clean stop leaves the journal empty.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError, channel};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::StoreError;
use crate::sample_hash::SampleHash;
use crate::vault::{SettlingWork, Vault};
use crate::vault_compaction::lower_priority;

/// How often the thread looks at the journal's segments when no work comes: a settled, idle
/// segment is retired within this of its rotation time.
const TICK: Duration = Duration::from_secs(1);
/// Files are written once no sample has been journaled for this long, or when the journal is
/// filling up: a vault file costs several flushes of the disk, and a request's own flush waits
/// behind them. Between bursts the disk is free.
const SETTLE_WHEN_IDLE: Duration = Duration::from_millis(50);

/// The settling thread of a store; it settles what is left and stops when dropped.
pub(crate) struct VaultSettling {
    vault: Arc<Vault>,
    thread: Option<JoinHandle<()>>,
}

impl VaultSettling {
    /// Starts the vault's journal and its thread, or returns `None` when another process
    /// journals this vault.
    pub(crate) fn start(vault: Arc<Vault>) -> Result<Option<VaultSettling>, StoreError> {
        let (queue, work) = channel();
        if !vault.start_journal(queue)? {
            return Ok(None);
        }
        let worker = Arc::clone(&vault);
        let thread = std::thread::Builder::new()
            .name("vault-settling".into())
            .spawn(move || settle_queued(&worker, &work))
            .map_err(|error| StoreError::Io { path: "vault-settling thread".into(), source: error })?;
        Ok(Some(VaultSettling { vault, thread: Some(thread) }))
    }
}

impl Drop for VaultSettling {
    fn drop(&mut self) {
        // Closing the queue ends the thread once it has taken everything in it.
        self.vault.stop_settling();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        if let Err(error) = self.vault.settle_all() {
            tracing::warn!(%error, "cannot write the vault files of journaled samples; the next start will");
        }
    }
}

/// Below the requests, which it must not slow, but above compression: it has to keep up with
/// them, or the journal fills and requests write their files themselves.
const SETTLING_NICE: i32 = 10;

fn settle_queued(vault: &Vault, work: &Receiver<SettlingWork>) {
    lower_priority(SETTLING_NICE);
    // Journaled samples not yet settled, oldest first: bounded by the journal's records.
    let mut waiting = VecDeque::new();
    loop {
        prepare_segments(vault);
        let due = match vault.journal_load() {
            Some((idle, pressed)) => pressed || idle >= SETTLE_WHEN_IDLE,
            None => true,
        };
        if due && let Some(hash) = waiting.pop_front() {
            settle(vault, &hash);
            // Take new work, and look again at the journal, before the next file.
            match work.try_recv() {
                Ok(SettlingWork::Settle(hash)) => waiting.push_back(hash),
                Ok(SettlingWork::Prepare) | Err(TryRecvError::Empty) => {}
                Err(TryRecvError::Disconnected) => break,
            }
            continue;
        }
        let wait = if waiting.is_empty() { TICK } else { SETTLE_WHEN_IDLE };
        match work.recv_timeout(wait) {
            Ok(SettlingWork::Settle(hash)) => waiting.push_back(hash),
            Ok(SettlingWork::Prepare) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    // The store is closing: everything left is settled now.
    for hash in waiting.into_iter().chain(work.try_iter().filter_map(|work| match work {
        SettlingWork::Settle(hash) => Some(hash),
        SettlingWork::Prepare => None,
    })) {
        settle(vault, &hash);
    }
}

fn settle(vault: &Vault, hash: &SampleHash) {
    if let Err(error) = vault.settle(hash) {
        // The record stays: it is read from the journal, settled at the next start.
        tracing::warn!(sha256 = hash.as_str(), %error, "cannot write a journaled sample's vault file");
    }
}

/// Does every step of keeping a journal segment ready that there is to do.
fn prepare_segments(vault: &Vault) {
    loop {
        match vault.prepare_journal() {
            Ok(true) => {}
            Ok(false) => return,
            Err(error) => {
                // Appends find no room meanwhile and write files directly.
                tracing::warn!(%error, "cannot prepare a sample journal segment");
                return;
            }
        }
    }
}
