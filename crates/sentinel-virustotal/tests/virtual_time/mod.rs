//! What the client's tests plug into it instead of the real world: a virtual clock, so that
//! minutes of queueing, back-off and polling take no real time, and the results dataset in
//! memory.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sentinel_virustotal::{CacheError, Clock, FileHash, ReportCache, Sleep, Verdict};

/// A clock whose `sleep` moves virtual time forward at once.
pub struct VirtualClock {
    millis: AtomicU64,
}

impl VirtualClock {
    /// 12:00 UTC on 2024-01-01.
    pub fn new() -> Arc<VirtualClock> {
        Arc::new(VirtualClock { millis: AtomicU64::new(1_704_110_400_000) })
    }

    pub fn advance(&self, by: Duration) {
        self.millis.fetch_add(by.as_millis() as u64, Ordering::SeqCst);
    }
}

impl Clock for VirtualClock {
    fn now(&self) -> Duration {
        Duration::from_millis(self.millis.load(Ordering::SeqCst))
    }

    fn sleep(&self, duration: Duration) -> Sleep {
        let target = self.millis.load(Ordering::SeqCst) + duration.as_millis() as u64;
        self.millis.fetch_max(target, Ordering::SeqCst);
        Box::pin(std::future::ready(()))
    }
}

/// The results dataset in memory.
#[derive(Default)]
pub struct MemoryDataset {
    pub reports: Mutex<HashMap<FileHash, Verdict>>,
}

impl ReportCache for MemoryDataset {
    fn lookup(&self, sha256: FileHash) -> Result<Option<Verdict>, CacheError> {
        Ok(self.reports.lock().unwrap().get(&sha256).cloned())
    }

    fn insert(&self, verdict: &Verdict) -> Result<(), CacheError> {
        self.reports.lock().unwrap().insert(verdict.sha256, verdict.clone());
        Ok(())
    }
}
