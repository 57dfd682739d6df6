//! The outbox's delivery loop: one task per channel, so a slow or unreachable channel never
//! holds back another. Each loop takes its channel's due deliveries from the store (oldest
//! first, as many as the channel groups), sends them, and records the outcome before taking
//! more: delivered, or retried after an exponential back-off (or the receiver's
//! `Retry-After`), or given up once the alert is older than `delivery.give_up_after`.
//!
//! Deliveries are at least once: a crash between a channel's answer and the store's record of
//! it sends that alert again after the restart, under the same message id, by which webhook
//! receivers deduplicate.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sentinel_store::{DueDelivery, Store};
use tokio::sync::Notify;

use crate::alert::AlertView;
use crate::channels::Channel;
use crate::metrics::AlertMetrics;
use crate::settings::DeliverySettings;

/// Longest sleep of an idle loop before it looks at the store again (a delivery due later is
/// woken for at its time; a new alert wakes it at once).
const IDLE_POLL: Duration = Duration::from_secs(60);

/// Wait after the store could not be read, before trying again.
const STORE_RETRY: Duration = Duration::from_secs(5);

pub(crate) struct ChannelLoop {
    pub name: String,
    pub channel: Arc<Channel>,
    pub store: Arc<Store>,
    pub wake: Arc<Notify>,
    pub settings: DeliverySettings,
    pub metrics: AlertMetrics,
}

impl ChannelLoop {
    pub async fn run(self) {
        let mut last_sent: Option<Instant> = None;
        loop {
            if let Some(last) = last_sent {
                tokio::time::sleep_until((last + self.channel.min_interval()).into()).await;
            }
            let now = unix_now();
            let due = {
                let (store, name, batch) =
                    (Arc::clone(&self.store), self.name.clone(), self.channel.batch_size());
                tokio::task::spawn_blocking(move || store.due_alert_deliveries(&name, now, batch)).await
            };
            let due = match due {
                Ok(Ok(due)) => due,
                Ok(Err(error)) => {
                    tracing::error!(channel = %self.name, %error, "cannot read the alert outbox");
                    tokio::time::sleep(STORE_RETRY).await;
                    continue;
                }
                Err(error) => {
                    tracing::error!(channel = %self.name, %error, "alert outbox task failed");
                    tokio::time::sleep(STORE_RETRY).await;
                    continue;
                }
            };
            if due.is_empty() {
                self.idle(now).await;
                continue;
            }
            let alerts: Vec<AlertView> =
                due.iter().map(|delivery| AlertView::from(delivery.alert.clone())).collect();
            let outcome = self.channel.send(&alerts, &message_id(&alerts)).await;
            last_sent = Some(Instant::now());
            if let Err(error) = self.record(due, outcome).await {
                tracing::error!(channel = %self.name, %error, "cannot record alert deliveries");
                tokio::time::sleep(STORE_RETRY).await;
            }
        }
    }

    /// Sleeps until the channel's next delivery is due, a new alert arrives, or [`IDLE_POLL`].
    async fn idle(&self, now: i64) {
        let next = {
            let (store, name) = (Arc::clone(&self.store), self.name.clone());
            tokio::task::spawn_blocking(move || store.next_alert_delivery_at(&name)).await
        };
        let wait = match next {
            Ok(Ok(Some(at))) => {
                Duration::from_secs(at.saturating_sub(now).clamp(1, IDLE_POLL.as_secs() as i64) as u64)
            }
            _ => IDLE_POLL,
        };
        tokio::select! {
            _ = self.wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }

    async fn record(
        &self,
        due: Vec<DueDelivery>,
        outcome: Result<(), crate::channels::DeliveryError>,
    ) -> Result<(), sentinel_store::StoreError> {
        let (store, name, settings) = (Arc::clone(&self.store), self.name.clone(), self.settings.clone());
        let metrics = self.metrics.clone();
        match &outcome {
            Ok(()) => tracing::info!(channel = %name, alerts = due.len(), "alerts delivered"),
            Err(error) => {
                tracing::warn!(channel = %name, alerts = due.len(), error = %error.message, "alert delivery failed")
            }
        }
        tokio::task::spawn_blocking(move || {
            let now = unix_now();
            for delivery in due {
                match &outcome {
                    Ok(()) => {
                        store.alert_delivered(delivery.alert.id, &name)?;
                        metrics.delivery(&name, "delivered");
                    }
                    Err(error) => {
                        let retry_at = retry_time(&settings, &delivery, error.retry_after, now);
                        if retry_at.is_none() {
                            tracing::error!(channel = %name, alert = delivery.alert.id, "alert delivery given up");
                        }
                        metrics.delivery(&name, if retry_at.is_some() { "retry" } else { "failed" });
                        store.alert_delivery_failed(delivery.alert.id, &name, &error.message, retry_at)?;
                    }
                }
            }
            Ok(())
        })
        .await
        .unwrap_or_else(|error| Err(sentinel_store::StoreError::InvalidAlert(format!("task failed: {error}"))))
    }
}

/// When to try a failed delivery again: after `initial_backoff` doubled for each earlier
/// failure, at most `max_backoff`, or after the receiver's `Retry-After` if longer; `None` (give
/// up) when that is past the alert's `give_up_after`.
fn retry_time(
    settings: &DeliverySettings,
    delivery: &DueDelivery,
    retry_after: Option<Duration>,
    now: i64,
) -> Option<i64> {
    let doublings = delivery.attempts.min(20);
    let backoff = settings.initial_backoff.saturating_mul(1 << doublings).min(settings.max_backoff);
    let wait = retry_after.map_or(backoff, |asked| asked.max(backoff));
    let at = now.saturating_add(wait.as_secs().max(1) as i64);
    let deadline = delivery.alert.raised_at.saturating_add(settings.give_up_after.as_secs() as i64);
    (at <= deadline).then_some(at)
}

/// The id receivers deduplicate on: the alert's (the first one's, with the count, for a group).
fn message_id(alerts: &[AlertView]) -> String {
    match alerts {
        [alert] => format!("sentinel-alert-{}", alert.id),
        [first, ..] => format!("sentinel-alert-{}-{}", first.id, alerts.len()),
        [] => "sentinel-alert-none".to_owned(),
    }
}

pub(crate) fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sentinel_store::AlertRecord;

    fn due(attempts: u32, raised_at: i64) -> DueDelivery {
        let alert = AlertRecord {
            id: 1,
            rule: "anomaly".into(),
            key: "k".into(),
            severity: "warning".into(),
            summary: "s".into(),
            details: Default::default(),
            raised_at,
            last_raised_at: raised_at,
            repeats: 0,
            acknowledged_at: None,
            acknowledged_by: None,
            acknowledgement_note: None,
            deliveries: Vec::new(),
        };
        DueDelivery { alert, channel: "hook".into(), attempts }
    }

    #[test]
    fn backoff_doubles_up_to_its_cap_and_gives_up_after_the_deadline() {
        let settings = DeliverySettings {
            initial_backoff: Duration::from_secs(5),
            max_backoff: Duration::from_secs(60),
            give_up_after: Duration::from_secs(3600),
            timeout: Duration::from_secs(5),
        };
        let now = 10_000;
        assert_eq!(retry_time(&settings, &due(0, now), None, now), Some(now + 5));
        assert_eq!(retry_time(&settings, &due(2, now), None, now), Some(now + 20));
        assert_eq!(retry_time(&settings, &due(10, now), None, now), Some(now + 60));
        // A receiver's longer Retry-After wins; a shorter one does not.
        assert_eq!(retry_time(&settings, &due(0, now), Some(Duration::from_secs(30)), now), Some(now + 30));
        assert_eq!(retry_time(&settings, &due(3, now), Some(Duration::from_secs(1)), now), Some(now + 40));
        // An alert raised an hour ago is given up.
        assert_eq!(retry_time(&settings, &due(3, now - 3590), None, now), None);
    }
}
