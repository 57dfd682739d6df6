//! The training scheduler: trains the first model once the warm-up is over (enough time and rows
//! of history), then retrains every `training.retrain_every_hours` after the active model's
//! training time, so the schedule survives restarts.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use sentinel_store::HistoryExtent;

use super::NetworkService;
use super::feedback::REFRESH_EVERY;

/// After a failed attempt (too few rows), how long to wait before reading the history again.
const RETRY_AFTER: Duration = Duration::from_secs(10);

/// Whether the warm-up is complete: at least `min_rows` rows, the oldest at least `warmup` old.
pub(super) fn warmed_up(extent: &HistoryExtent, warmup: Duration, min_rows: u64, now: SystemTime) -> bool {
    extent.rows >= min_rows
        && extent.oldest.is_some_and(|oldest| now.duration_since(oldest).is_ok_and(|age| age >= warmup))
}

/// Whether a model trained at `trained` is due for retraining `every` period (zero: never).
fn retraining_due(trained: Option<SystemTime>, every: Duration, now: SystemTime) -> bool {
    !every.is_zero()
        && trained.is_some_and(|trained| now.duration_since(trained).is_ok_and(|age| age >= every))
}

impl NetworkService {
    /// Measures the feedback of the window at start-up (which also lets the loaded model learn
    /// from it again), then every [`REFRESH_EVERY`], since the window slides.
    pub(super) async fn measure_feedback(self: Arc<Self>) {
        let mut ticks = tokio::time::interval(REFRESH_EVERY);
        loop {
            ticks.tick().await;
            let service = Arc::clone(&self);
            match tokio::task::spawn_blocking(move || service.refresh_feedback()).await {
                Ok(Ok(_)) => {}
                Ok(Err(error)) => tracing::warn!(%error, "the network feedback could not be measured"),
                Err(error) => tracing::error!(%error, "measuring the network feedback failed"),
            }
        }
    }

    pub(super) async fn schedule(self: Arc<Self>) {
        let mut ticks = tokio::time::interval(Duration::from_secs(1));
        let mut last_attempt: Option<Instant> = None;
        loop {
            ticks.tick().await;
            if self.training_running() || last_attempt.is_some_and(|at| at.elapsed() < RETRY_AFTER) {
                continue;
            }
            let due = match self.model.load_full() {
                None => {
                    let service = Arc::clone(&self);
                    let warmup = self.settings.training.warmup;
                    let min_rows = self.settings.model.min_training_rows as u64;
                    tokio::task::spawn_blocking(move || {
                        service
                            .store
                            .history_extent()
                            .is_ok_and(|extent| warmed_up(&extent, warmup, min_rows, SystemTime::now()))
                    })
                    .await
                    .unwrap_or(false)
                    .then_some("warm-up complete")
                }
                Some(model) => retraining_due(
                    model.info.created(),
                    self.settings.training.retrain_every,
                    SystemTime::now(),
                )
                .then_some("schedule"),
            };
            if let Some(trigger) = due {
                last_attempt = Some(Instant::now());
                if let Err(error) = self.train(trigger) {
                    tracing::debug!(%error, "scheduled training not started");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_warm_up_needs_both_enough_rows_and_enough_time() {
        let now = SystemTime::now();
        let hour = Duration::from_secs(3600);
        let extent = |rows, age: Duration| HistoryExtent { rows, oldest: Some(now - age) };
        assert!(warmed_up(&extent(1000, hour), hour, 1000, now));
        assert!(!warmed_up(&extent(999, 2 * hour), hour, 1000, now), "too few rows");
        assert!(!warmed_up(&extent(5000, hour / 2), hour, 1000, now), "too recent");
        assert!(!warmed_up(&HistoryExtent { rows: 10, oldest: None }, hour, 1, now), "no history time");
    }

    #[test]
    fn retraining_is_due_a_period_after_the_last_training_unless_disabled() {
        let now = SystemTime::now();
        let hours = |n: u64| Duration::from_secs(n * 3600);
        assert!(retraining_due(Some(now - hours(25)), hours(24), now));
        assert!(!retraining_due(Some(now - hours(23)), hours(24), now));
        assert!(!retraining_due(Some(now - hours(1000)), Duration::ZERO, now), "zero disables");
        assert!(!retraining_due(None, hours(24), now), "an unknown training time is not a reason to retrain");
    }
}
