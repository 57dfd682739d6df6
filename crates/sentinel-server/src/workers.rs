//! The analysis workers: CPU-bound work (hashing, parsing, scoring,
//! compressing samples) runs on tokio's blocking threads, at most
//! `analysis_workers` jobs at once, so the reactor threads only move bytes.
//!
//! Back-pressure: a job waits for a free worker at most `analysis_queue_wait`,
//! then fails as busy. The number of waiting jobs is bounded too, since each
//! connection has at most one request in progress and connections are capped.
//! A job keeps its worker until it really ends, even when the request gave up
//! on it (timeout), so the bound on parallel work always holds.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

/// Why a job did not produce its result.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("no analysis worker became free within {0:?}")]
    Busy(Duration),
    /// The job panicked: a bug, reported as an internal error; the server goes on.
    #[error("the analysis job failed unexpectedly")]
    Panicked,
}

/// A bounded pool of analysis jobs.
#[derive(Debug)]
pub struct AnalysisWorkers {
    permits: Arc<Semaphore>,
    queue_wait: Duration,
}

impl AnalysisWorkers {
    pub fn new(workers: usize, queue_wait: Duration) -> AnalysisWorkers {
        AnalysisWorkers { permits: Arc::new(Semaphore::new(workers)), queue_wait }
    }

    /// Runs `job` on a blocking thread once a worker is free.
    pub async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, WorkerError> {
        let permit = tokio::time::timeout(self.queue_wait, Arc::clone(&self.permits).acquire_owned())
            .await
            .map_err(|_| WorkerError::Busy(self.queue_wait))?
            // The semaphore is never closed.
            .map_err(|_| WorkerError::Panicked)?;
        tokio::task::spawn_blocking(move || {
            let _worker = permit;
            job()
        })
        .await
        .map_err(|_| WorkerError::Panicked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_job_that_cannot_get_a_worker_in_time_is_busy() {
        let workers = Arc::new(AnalysisWorkers::new(1, Duration::from_millis(50)));
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let holder = {
            let workers = Arc::clone(&workers);
            tokio::spawn(async move {
                workers
                    .run(move || {
                        started_tx.send(()).unwrap();
                        release_rx.recv().unwrap();
                    })
                    .await
            })
        };
        tokio::task::spawn_blocking(move || started_rx.recv().unwrap()).await.unwrap();
        assert!(matches!(workers.run(|| 1).await, Err(WorkerError::Busy(_))));
        release_tx.send(()).unwrap();
        holder.await.unwrap().unwrap();
        assert_eq!(workers.run(|| 2).await.unwrap(), 2);
    }

    #[tokio::test]
    async fn a_panicking_job_is_an_error_not_a_crash() {
        let workers = AnalysisWorkers::new(1, Duration::from_secs(1));
        assert!(matches!(workers.run(|| panic!("bug")).await, Err::<(), _>(WorkerError::Panicked)));
        assert_eq!(workers.run(|| 3).await.unwrap(), 3);
    }
}
