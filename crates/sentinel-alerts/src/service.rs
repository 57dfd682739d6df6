//! The running alert service, [`Alerts`]: rules hand it [`Alert`]s, it records each (with its
//! deduplication and its deliveries) in the store before saying it was raised, and wakes the
//! delivery loops of the channels the alert goes to. It also answers the API: listings,
//! acknowledgements and test notifications.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use sentinel_store::{AlertQuery, NewAlert, Raised, Store, StoreError};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::alert::{Alert, AlertView, Rule, Severity, rfc3339};
use crate::channels::{Channel, ChannelError};
use crate::metrics::AlertMetrics;
use crate::outbox::{ChannelLoop, unix_now};
use crate::rules::Failure;
use crate::settings::{AlertSettings, SettingsError};

/// Why the alert service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error(transparent)]
    Channel(#[from] ChannelError),
    #[error("cannot read the alert outbox: {0}")]
    Store(#[from] StoreError),
}

/// A failure of the service's store, or of the task that ran it.
#[derive(Debug, thiserror::Error)]
pub enum AlertError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the store task failed: {0}")]
    Task(String),
}

/// Why a test notification was not delivered.
#[derive(Debug, thiserror::Error)]
pub enum TestError {
    #[error("no channel named {0:?} in [alerts.channels]")]
    UnknownChannel(String),
    #[error("the channel refused or could not be reached: {0}")]
    Delivery(String),
}

/// A channel and what wakes its delivery loop.
struct ChannelEntry {
    channel: Arc<Channel>,
    wake: Arc<Notify>,
}

/// The alert service; cheap to clone.
#[derive(Clone)]
pub struct Alerts {
    inner: Arc<Inner>,
}

struct Inner {
    settings: AlertSettings,
    store: Arc<Store>,
    channels: BTreeMap<String, ChannelEntry>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    metrics: AlertMetrics,
    budget: Mutex<SendingBudget>,
}

/// How many new alerts may go to the channels now: a bucket of `[alerts] max_per_minute`
/// tokens, refilled continuously at that rate. One replica's alone: with several, each sends
/// up to the limit.
struct SendingBudget {
    per_minute: u32,
    tokens: f64,
    refilled: Instant,
}

impl SendingBudget {
    fn new(per_minute: u32) -> SendingBudget {
        SendingBudget { per_minute, tokens: f64::from(per_minute), refilled: Instant::now() }
    }

    /// Takes one token; false when there is none left (never without a limit).
    fn take(&mut self, now: Instant) -> bool {
        if self.per_minute == 0 {
            return true;
        }
        let capacity = f64::from(self.per_minute);
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * capacity / 60.0).min(capacity);
        self.refilled = now;
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }

    /// Returns a token taken for an alert that turned out a repeat, which sends nothing.
    fn give_back(&mut self) {
        self.tokens = (self.tokens + 1.0).min(f64::from(self.per_minute));
    }
}

impl Alerts {
    /// Checks the settings, sets up every channel, gives up the pending deliveries of channels
    /// no longer configured and starts one delivery loop per channel on the current tokio
    /// runtime. Deliveries left pending by an earlier run are sent first.
    pub async fn start(settings: AlertSettings, store: Arc<Store>) -> Result<Alerts, StartError> {
        settings.validate()?;
        let mut channels = BTreeMap::new();
        for (name, channel_settings) in &settings.channels {
            let channel = Channel::new(name, channel_settings, &settings.delivery)?;
            channels.insert(
                name.clone(),
                ChannelEntry { channel: Arc::new(channel), wake: Arc::new(Notify::new()) },
            );
        }
        let names: Vec<String> = channels.keys().cloned().collect();
        let metrics = AlertMetrics::default();
        let abandoned = {
            let store = Arc::clone(&store);
            tokio::task::spawn_blocking(move || store.abandon_alert_deliveries(&names))
                .await
                .map_err(|error| StoreError::InvalidAlert(format!("task failed: {error}")))??
        };
        if abandoned > 0 {
            tracing::warn!(
                deliveries = abandoned,
                "alert deliveries on channels no longer configured were given up"
            );
        }
        let tasks = channels
            .iter()
            .map(|(name, entry)| {
                let delivery = ChannelLoop {
                    name: name.clone(),
                    channel: Arc::clone(&entry.channel),
                    store: Arc::clone(&store),
                    wake: Arc::clone(&entry.wake),
                    settings: settings.delivery.clone(),
                    metrics: metrics.clone(),
                };
                tokio::spawn(delivery.run())
            })
            .collect();
        tracing::info!(channels = ?settings.channels.keys().collect::<Vec<_>>(), "alerts enabled");
        let budget = Mutex::new(SendingBudget::new(settings.max_per_minute));
        Ok(Alerts {
            inner: Arc::new(Inner { settings, store, channels, tasks: Mutex::new(tasks), metrics, budget }),
        })
    }

    /// Registers `alerts_raised_total`, `alerts_held_back_total` and `alert_deliveries_total` in the
    /// process's registry.
    pub fn register_metrics(&self, registry: &mut sentinel_api::prometheus_client::registry::Registry) {
        self.inner.metrics.register(registry);
    }

    pub fn settings(&self) -> &AlertSettings {
        &self.inner.settings
    }

    /// Raises `alert`: recorded durably with its deliveries (or counted as a repeat within the
    /// cooldown) before this returns. A new alert past `[alerts] max_per_minute` is recorded
    /// without deliveries, and the `alerts_held_back` failure alert, which the limit does not
    /// hold back, says so (once per cooldown; its repeats count the alerts held back since).
    pub async fn raise(&self, alert: Alert) -> Result<Raised, AlertError> {
        let (raised, held_back) = self.record(alert, true).await?;
        if held_back {
            let notice = Failure::AlertsHeldBack { max_per_minute: self.inner.settings.max_per_minute };
            if let Some(notice) = notice.alert(&self.inner.settings.rules.failures) {
                self.record(notice, false).await?;
            }
        }
        Ok(raised)
    }

    /// Records `alert`, sent to the channels that want it unless `limited` and the sending
    /// budget is spent; says whether it was a new alert held back.
    async fn record(&self, mut alert: Alert, limited: bool) -> Result<(Raised, bool), AlertError> {
        let settings = &self.inner.settings;
        let budget = || self.inner.budget.lock().unwrap_or_else(PoisonError::into_inner);
        let sent = !limited || budget().take(Instant::now());
        if !sent {
            alert.details.insert("held_back".to_owned(), serde_json::Value::Bool(true));
        }
        let channels: Vec<String> = match sent {
            true => settings
                .channels
                .iter()
                .filter(|(_, channel)| channel.wants(alert.rule.as_str(), alert.severity))
                .map(|(name, _)| name.clone())
                .collect(),
            false => Vec::new(),
        };
        let cooldown_seconds = settings.cooldown.as_secs() as i64;
        let rule = alert.rule.as_str();
        let store = Arc::clone(&self.inner.store);
        let queued = channels.clone();
        let raised = tokio::task::spawn_blocking(move || {
            store.raise_alert(&NewAlert {
                rule: alert.rule.as_str(),
                key: &alert.key,
                severity: alert.severity.as_str(),
                summary: &alert.summary,
                details: &alert.details,
                channels: &queued,
                cooldown_seconds,
            })
        })
        .await
        .map_err(|error| AlertError::Task(error.to_string()))??;
        match raised {
            Raised::New(id) => {
                self.inner.metrics.raised(rule);
                if !sent {
                    self.inner.metrics.held_back(rule);
                    tracing::warn!(
                        alert = id,
                        rule,
                        "alert recorded but not sent: over [alerts] max_per_minute"
                    );
                    return Ok((raised, true));
                }
                tracing::info!(alert = id, channels = ?channels, "alert raised");
                for name in &channels {
                    if let Some(entry) = self.inner.channels.get(name) {
                        entry.wake.notify_one();
                    }
                }
            }
            // A repeat sends nothing: its token goes back.
            Raised::Repeat(_) if sent && limited => budget().give_back(),
            Raised::Repeat(_) => {}
        }
        Ok((raised, false))
    }

    /// Alerts, newest first.
    pub async fn list(&self, query: AlertQuery) -> Result<Vec<AlertView>, AlertError> {
        let store = Arc::clone(&self.inner.store);
        let alerts = tokio::task::spawn_blocking(move || store.alerts(&query))
            .await
            .map_err(|error| AlertError::Task(error.to_string()))??;
        Ok(alerts.into_iter().map(AlertView::from).collect())
    }

    /// One alert.
    pub async fn get(&self, id: i64) -> Result<Option<AlertView>, AlertError> {
        let store = Arc::clone(&self.inner.store);
        let alert = tokio::task::spawn_blocking(move || store.alert(id))
            .await
            .map_err(|error| AlertError::Task(error.to_string()))??;
        Ok(alert.map(AlertView::from))
    }

    /// Acknowledges an alert for `by`; `None` when there is no such alert.
    pub async fn acknowledge(
        &self,
        id: i64,
        by: String,
        note: Option<String>,
    ) -> Result<Option<AlertView>, AlertError> {
        let store = Arc::clone(&self.inner.store);
        let alert = tokio::task::spawn_blocking(move || store.acknowledge_alert(id, &by, note.as_deref()))
            .await
            .map_err(|error| AlertError::Task(error.to_string()))??;
        Ok(alert.map(AlertView::from))
    }

    /// Sends a test notification on `channel` now, outside the outbox, and says whether the
    /// channel took it.
    pub async fn send_test(&self, channel: &str, by: &str) -> Result<(), TestError> {
        let entry =
            self.inner.channels.get(channel).ok_or_else(|| TestError::UnknownChannel(channel.to_owned()))?;
        let now = unix_now();
        let alert = Alert::new(
            Rule::Test,
            channel,
            Severity::Info,
            format!("Test notification from Sentinel, asked by {by}"),
        );
        let view = AlertView {
            id: 0,
            rule: alert.rule.as_str().to_owned(),
            key: alert.key,
            severity: alert.severity.as_str().to_owned(),
            summary: alert.summary,
            details: alert.details,
            raised_at: rfc3339(now),
            last_raised_at: rfc3339(now),
            repeats: 0,
            acknowledged_at: None,
            acknowledged_by: None,
            acknowledgement_note: None,
            deliveries: Vec::new(),
        };
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_nanos());
        entry
            .channel
            .send(&[view], &format!("sentinel-test-{nanos}"))
            .await
            .map_err(|error| TestError::Delivery(error.message))
    }

    /// Records an action of the API in the audit table; a failure is logged, not returned (the
    /// action itself is done).
    pub(crate) async fn audit(&self, event: sentinel_store::NewAuditEvent) {
        let store = Arc::clone(&self.inner.store);
        match tokio::task::spawn_blocking(move || store.record_audit_event(event)).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => tracing::error!(%error, "cannot record an audit event"),
            Err(error) => tracing::error!(%error, "audit task failed"),
        }
    }

    /// Stops the delivery loops; what is pending stays in the outbox for the next start.
    pub fn shutdown(&self) {
        for task in self.inner.tasks.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).drain(..) {
            task.abort();
        }
    }
}
