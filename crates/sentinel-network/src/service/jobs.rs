//! Training jobs: the state machine (running → succeeded, failed or cancelled), their progress
//! and stage as the fit reports them, cancellation, and the one-job-at-a-time rule.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::Serialize;

use super::{NetworkService, TrainError, lock};
use crate::model::{FitError, FitObserver};

/// State of a training job.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum JobState {
    Running,
    Succeeded { version: i64, training_rows: usize },
    Failed { error: String },
    Cancelled,
}

/// A training job: progress, stage and cancellation.
pub struct TrainingJob {
    pub id: u64,
    pub trigger: &'static str,
    started_at: SystemTime,
    progress_bits: AtomicU64,
    stage: Mutex<&'static str>,
    state: Mutex<JobState>,
    cancel: AtomicBool,
}

/// A job as reported by the API.
#[derive(Debug, Clone, Serialize)]
pub struct JobReport {
    pub id: u64,
    pub trigger: &'static str,
    pub started_at: String,
    pub progress: f64,
    pub stage: &'static str,
    #[serde(flatten)]
    pub state: JobState,
}

impl TrainingJob {
    pub(super) fn new(id: u64, trigger: &'static str) -> TrainingJob {
        TrainingJob {
            id,
            trigger,
            started_at: SystemTime::now(),
            progress_bits: AtomicU64::new(0f64.to_bits()),
            stage: Mutex::new("loading history"),
            state: Mutex::new(JobState::Running),
            cancel: AtomicBool::new(false),
        }
    }

    pub fn report(&self) -> JobReport {
        JobReport {
            id: self.id,
            trigger: self.trigger,
            started_at: humantime::format_rfc3339_seconds(self.started_at).to_string(),
            progress: f64::from_bits(self.progress_bits.load(Ordering::Relaxed)),
            stage: *lock(&self.stage),
            state: lock(&self.state).clone(),
        }
    }

    pub(super) fn is_running(&self) -> bool {
        matches!(*lock(&self.state), JobState::Running)
    }

    pub(super) fn is_cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }

    /// Asks the job to stop at its next stage.
    pub(super) fn cancel(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }

    /// Ends the job: `Succeeded` also sets the stage to `done` and the progress to 1.
    pub(super) fn finish(&self, state: JobState) {
        if matches!(state, JobState::Succeeded { .. }) {
            *lock(&self.stage) = "done";
            self.progress_bits.store(1f64.to_bits(), Ordering::Relaxed);
        }
        *lock(&self.state) = state;
    }
}

impl FitObserver for TrainingJob {
    fn stage(&self, name: &'static str, progress: f64) -> Result<(), FitError> {
        if self.is_cancelled() {
            return Err(FitError::Cancelled);
        }
        *lock(&self.stage) = name;
        self.progress_bits.store(progress.to_bits(), Ordering::Relaxed);
        Ok(())
    }
}

impl NetworkService {
    /// Registers a new job unless one is running; the caller runs it.
    pub(super) fn new_job(&self, trigger: &'static str) -> Result<Arc<TrainingJob>, TrainError> {
        let mut current = lock(&self.job);
        if let Some(job) = current.as_ref()
            && job.is_running()
        {
            return Err(TrainError::AlreadyRunning(job.id));
        }
        let job = Arc::new(TrainingJob::new(self.next_job.fetch_add(1, Ordering::Relaxed), trigger));
        *current = Some(Arc::clone(&job));
        Ok(job)
    }

    /// The job with this id, if it is the current or last one.
    pub fn job(&self, id: u64) -> Result<JobReport, TrainError> {
        match lock(&self.job).as_ref() {
            Some(job) if job.id == id => Ok(job.report()),
            _ => Err(TrainError::NoSuchJob(id)),
        }
    }

    /// Asks a running job to stop at its next stage.
    pub fn cancel_job(&self, id: u64) -> Result<JobReport, TrainError> {
        match lock(&self.job).as_ref() {
            Some(job) if job.id == id => {
                if !job.is_running() {
                    return Err(TrainError::Finished(id));
                }
                job.cancel();
                Ok(job.report())
            }
            _ => Err(TrainError::NoSuchJob(id)),
        }
    }

    /// Whether a training job is running now.
    pub(super) fn training_running(&self) -> bool {
        lock(&self.job).as_ref().is_some_and(|job| job.is_running())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_reports_its_stages_and_stops_at_the_next_one_once_cancelled() {
        let job = TrainingJob::new(3, "api");
        assert!(job.is_running());
        job.stage("fitting", 0.4).unwrap();
        let report = job.report();
        assert_eq!((report.id, report.stage, report.progress), (3, "fitting", 0.4));
        job.cancel();
        assert!(matches!(job.stage("saving", 0.9), Err(FitError::Cancelled)));
        assert_eq!(job.report().stage, "fitting", "a cancelled job does not move on");
        job.finish(JobState::Cancelled);
        assert!(!job.is_running());
        assert_eq!(job.report().state, JobState::Cancelled);
    }

    #[test]
    fn a_succeeded_job_is_done_at_full_progress() {
        let job = TrainingJob::new(1, "schedule");
        job.finish(JobState::Succeeded { version: 7, training_rows: 500 });
        let report = job.report();
        assert_eq!((report.stage, report.progress), ("done", 1.0));
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["state"], "succeeded");
        assert_eq!(json["version"], 7);
    }
}
