//! Alerts: the rules that raise them (`rules`), their deduplication and durable outbox in the
//! store, the channels that deliver them — e-mail over SMTP, Slack incoming webhooks, generic
//! webhooks signed as Standard Webhooks says (`channels`) — the per-channel delivery loops
//! with retries and back-off (`outbox`), the running service (`service`), its HTTP routes (`http`) and
//! its metrics (`metrics`). `settings` is the `[alerts]` table; docs/alerts.md describes it all.
//!
//! An alert is written, with one pending delivery per channel it goes to, in one transaction
//! before it counts as raised: one raised before a crash or during a channel's outage is
//! delivered once the process or the channel is back.

mod alert;
mod channels;
mod http;
mod metrics;
mod outbox;
pub mod rules;
mod service;
mod settings;

pub use alert::{Alert, AlertView, DeliveryView, Rule, Severity};
pub use channels::ChannelError;
pub use http::router;
pub use sentinel_store::Raised;
pub use service::{AlertError, Alerts, StartError, TestError};
pub use settings::{
    AccuracyDropRule, AlertSettings, AnomalyRateRule, AnomalyRule, ChannelKind, ChannelSettings,
    DeliverySettings, FailureRule, MalwareRule, OverloadRule, RuleSettings, SettingsError,
};
