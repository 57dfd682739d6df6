//! The `[alerts]` table: the rules with their thresholds, the cooldown, how deliveries are
//! retried, and the channels, each a table named by the channel (`[alerts.channels.soc-hook]`).
//! Every threshold has a documented default (docs/alerts.md); unknown keys are errors, so a
//! misspelt threshold is found at start-up rather than silently ignored.
//!
//! A channel's secrets (a webhook's signing secret, a Slack webhook URL, which is itself the
//! credential, an SMTP URL's password) never appear in `Debug` output, and so never in logs.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::alert::Severity;

/// Everything `[alerts]` can say.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlertSettings {
    /// Raise and deliver alerts at all. Off: nothing is recorded, `/api/v1/alerts` answers 404.
    pub enabled: bool,
    /// After an alert, how long another of the same rule and identifier is only counted as a
    /// repeat of it, not raised (nor delivered) again.
    #[serde(with = "humantime_serde")]
    pub cooldown: Duration,
    /// New alerts sent to the channels per minute, all rules together, in bursts of as many;
    /// past it an alert is recorded (the API lists it) but not sent, and one `failure` alert
    /// says so. A scan of thousands of addresses, or a malware corpus run through the server,
    /// would otherwise bury a channel (Slack answers it with 429s for minutes) and every alert
    /// after it. 0: no limit.
    pub max_per_minute: u32,
    pub delivery: DeliverySettings,
    pub rules: RuleSettings,
    pub channels: BTreeMap<String, ChannelSettings>,
}

impl Default for AlertSettings {
    fn default() -> AlertSettings {
        AlertSettings {
            enabled: true,
            cooldown: Duration::from_secs(600),
            max_per_minute: 60,
            delivery: DeliverySettings::default(),
            rules: RuleSettings::default(),
            channels: BTreeMap::new(),
        }
    }
}

/// How deliveries are tried and retried.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeliverySettings {
    /// Wait before the first retry; each further retry waits twice as long, up to `max_backoff`.
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// A delivery still failing this long after its alert was raised is given up (`failed`).
    #[serde(with = "humantime_serde")]
    pub give_up_after: Duration,
    /// Time allowed for one try (a connection, a request, an SMTP session).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for DeliverySettings {
    fn default() -> DeliverySettings {
        DeliverySettings {
            initial_backoff: Duration::from_secs(5),
            max_backoff: Duration::from_secs(600),
            give_up_after: Duration::from_secs(24 * 3600),
            timeout: Duration::from_secs(15),
        }
    }
}

/// The rules and their thresholds.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuleSettings {
    pub anomaly: AnomalyRule,
    pub anomaly_rate: AnomalyRateRule,
    pub accuracy_drop: AccuracyDropRule,
    pub overload: OverloadRule,
    pub malware: MalwareRule,
    pub failures: FailureRule,
}

/// An anomalous connection: the ensemble's verdict is an anomaly and its score at least
/// `min_score`. Identified by host and remote address.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AnomalyRule {
    pub enabled: bool,
    pub min_score: f64,
}

impl Default for AnomalyRule {
    fn default() -> AnomalyRule {
        AnomalyRule { enabled: true, min_score: 0.0 }
    }
}

/// SPEC §2.4: more than `threshold` of the predictions of the last `window` are anomalies
/// (once at least `min_predictions` were made in it).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AnomalyRateRule {
    pub enabled: bool,
    pub threshold: f64,
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    pub min_predictions: u64,
}

impl Default for AnomalyRateRule {
    fn default() -> AnomalyRateRule {
        AnomalyRateRule {
            enabled: true,
            threshold: 0.1,
            window: Duration::from_secs(300),
            min_predictions: 50,
        }
    }
}

/// SPEC §2.4: a model's accuracy on analysts' feedback is `drop` or more below its accuracy
/// when it was promoted (measured on its validation rows).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AccuracyDropRule {
    pub enabled: bool,
    pub drop: f64,
}

impl Default for AccuracyDropRule {
    fn default() -> AccuracyDropRule {
        AccuracyDropRule { enabled: true, drop: 0.05 }
    }
}

/// SPEC §2.4: CPU, memory or a queue above `threshold` of its capacity, checked every
/// `interval`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OverloadRule {
    pub enabled: bool,
    pub threshold: f64,
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
}

impl Default for OverloadRule {
    fn default() -> OverloadRule {
        OverloadRule { enabled: true, threshold: 0.8, interval: Duration::from_secs(30) }
    }
}

/// A malware verdict `y` at or above `threshold` (or the client's own threshold in
/// `clients`, by the client's name as the verdicts record it). Identified by the sample's hash.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MalwareRule {
    pub enabled: bool,
    pub threshold: f64,
    pub clients: BTreeMap<String, f64>,
}

impl Default for MalwareRule {
    fn default() -> MalwareRule {
        MalwareRule { enabled: true, threshold: 0.9, clients: BTreeMap::new() }
    }
}

/// Failures that need a person: a collector unavailable, a VirusTotal key rejected, the
/// sandbox unreachable, a model training failed.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FailureRule {
    pub enabled: bool,
}

impl Default for FailureRule {
    fn default() -> FailureRule {
        FailureRule { enabled: true }
    }
}

/// Which kind of channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelKind {
    /// A generic webhook, signed as the Standard Webhooks specification says.
    Webhook,
    /// A Slack incoming webhook.
    Slack,
    /// E-mail over SMTP.
    Email,
}

/// One channel. Which fields apply depends on `kind`; [`ChannelSettings::validate`] says when
/// one is missing or does not belong.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelSettings {
    pub kind: ChannelKind,
    /// Webhook and Slack: where to POST. `https`, or `http` to a loopback address.
    pub url: Option<String>,
    /// Webhook: the Standard Webhooks secret, `whsec_` then base64.
    pub secret: Option<String>,
    /// E-mail: `smtp://[user:password@]host[:port]` (STARTTLS required, port 587 by default),
    /// `smtps://…` (TLS from the start, port 465), or `smtp://…?tls=none` to a loopback relay.
    pub smtp_url: Option<String>,
    /// E-mail: the sender.
    pub from: Option<String>,
    /// E-mail: the recipients.
    #[serde(default)]
    pub to: Vec<String>,
    /// E-mail: a PEM file of CA certificates trusted besides the system's (a private relay).
    pub ca_file: Option<PathBuf>,
    /// Alerts below this severity are not sent on this channel.
    #[serde(default = "default_min_severity")]
    pub min_severity: Severity,
    /// Only these rules' alerts are sent on this channel (empty: every rule's).
    #[serde(default)]
    pub rules: Vec<String>,
}

fn default_min_severity() -> Severity {
    Severity::Warning
}

/// A setting that cannot work; names the key.
#[derive(Debug, thiserror::Error)]
#[error("[alerts] {0}")]
pub struct SettingsError(pub String);

impl AlertSettings {
    /// Checks every threshold and channel.
    pub fn validate(&self) -> Result<(), SettingsError> {
        let error = |message: String| Err(SettingsError(message));
        let fraction = |value: f64| value.is_finite() && (0.0..=1.0).contains(&value);
        let rules = &self.rules;
        if !fraction(rules.anomaly.min_score) {
            return error("rules.anomaly.min_score must be within 0 and 1".into());
        }
        if !fraction(rules.anomaly_rate.threshold) || rules.anomaly_rate.window.is_zero() {
            return error("rules.anomaly_rate needs a threshold within 0 and 1 and a window above 0".into());
        }
        if !fraction(rules.accuracy_drop.drop) {
            return error("rules.accuracy_drop.drop must be within 0 and 1".into());
        }
        if !fraction(rules.overload.threshold) || rules.overload.interval < Duration::from_secs(1) {
            return error(
                "rules.overload needs a threshold within 0 and 1 and an interval of 1 s or more".into(),
            );
        }
        if !fraction(rules.malware.threshold) {
            return error("rules.malware.threshold must be within 0 and 1".into());
        }
        if let Some((client, _)) = rules.malware.clients.iter().find(|(_, threshold)| !fraction(**threshold))
        {
            return error(format!("rules.malware.clients.{client:?} must be within 0 and 1"));
        }
        let delivery = &self.delivery;
        if delivery.initial_backoff.is_zero()
            || delivery.max_backoff < delivery.initial_backoff
            || delivery.timeout.is_zero()
        {
            return error(
                "delivery needs initial_backoff and timeout above 0, max_backoff >= initial_backoff".into(),
            );
        }
        for (name, channel) in &self.channels {
            let valid_name = !name.is_empty()
                && name.len() <= 64
                && name.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_');
            if !valid_name {
                return error(format!("channels.{name:?}: a name is 1 to 64 of A-Z, a-z, 0-9, - and _"));
            }
            channel.validate().map_err(|message| SettingsError(format!("channels.{name}: {message}")))?;
        }
        Ok(())
    }
}

impl ChannelSettings {
    /// Whether an alert of `rule` and `severity` goes on this channel.
    pub fn wants(&self, rule: &str, severity: Severity) -> bool {
        severity >= self.min_severity && (self.rules.is_empty() || self.rules.iter().any(|name| name == rule))
    }

    fn validate(&self) -> Result<(), String> {
        let present = [
            ("url", self.url.is_some()),
            ("secret", self.secret.is_some()),
            ("smtp_url", self.smtp_url.is_some()),
            ("from", self.from.is_some()),
            ("to", !self.to.is_empty()),
            ("ca_file", self.ca_file.is_some()),
        ];
        let needed: &[&str] = match self.kind {
            ChannelKind::Webhook => &["url", "secret"],
            ChannelKind::Slack => &["url"],
            ChannelKind::Email => &["smtp_url", "from", "to"],
        };
        let allowed: &[&str] = match self.kind {
            ChannelKind::Webhook => &["url", "secret"],
            ChannelKind::Slack => &["url"],
            ChannelKind::Email => &["smtp_url", "from", "to", "ca_file"],
        };
        let kind = format!("{:?}", self.kind).to_lowercase();
        for (key, given) in present {
            if given && !allowed.contains(&key) {
                return Err(format!("`{key}` is not a setting of a {kind} channel"));
            }
            if !given && needed.contains(&key) {
                return Err(format!("a {kind} channel needs `{key}`"));
            }
        }
        Ok(())
    }
}

/// Never prints a secret: the URL of a Slack webhook is its credential, an SMTP URL may hold a
/// password, a webhook secret signs.
impl fmt::Debug for ChannelSettings {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redacted = |value: &Option<String>| value.as_ref().map(|_| "<redacted>");
        let url = match self.kind {
            ChannelKind::Slack => redacted(&self.url).map(str::to_owned),
            _ => self.url.clone(),
        };
        formatter
            .debug_struct("ChannelSettings")
            .field("kind", &self.kind)
            .field("url", &url)
            .field("secret", &redacted(&self.secret))
            .field("smtp_url", &redacted(&self.smtp_url))
            .field("from", &self.from)
            .field("to", &self.to)
            .field("ca_file", &self.ca_file)
            .field("min_severity", &self.min_severity)
            .field("rules", &self.rules)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<AlertSettings, String> {
        let settings: AlertSettings = toml::from_str(text).map_err(|error| error.to_string())?;
        settings.validate().map_err(|error| error.to_string())?;
        Ok(settings)
    }

    #[test]
    fn the_issue_s_channel_form_parses_and_defaults_hold() {
        let settings = parse(
            r#"
            [channels.soc-hook]
            kind = "webhook"
            url = "https://soar.example/hooks/sentinel"
            secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
            [channels.mail]
            kind = "email"
            smtp_url = "smtp://alerts:hunter2@mail.example"
            from = "sentinel@example.org"
            to = ["soc@example.org"]
            min_severity = "critical"
            "#,
        )
        .unwrap();
        assert_eq!(settings.channels.len(), 2);
        assert_eq!(settings.rules.anomaly_rate.threshold, 0.1);
        assert_eq!(settings.rules.accuracy_drop.drop, 0.05);
        assert_eq!(settings.rules.overload.threshold, 0.8);
        let mail = &settings.channels["mail"];
        assert!(mail.wants("anomaly", Severity::Critical) && !mail.wants("anomaly", Severity::Warning));
        // Neither the secret nor the SMTP password is printed.
        let printed = format!("{settings:?}");
        assert!(!printed.contains("MfKQ9r8") && !printed.contains("hunter2"), "{printed}");
    }

    #[test]
    fn a_channel_missing_or_misplacing_a_field_is_refused() {
        let webhook_without_secret = "[channels.a]\nkind = \"webhook\"\nurl = \"https://x.example\"\n";
        assert!(parse(webhook_without_secret).unwrap_err().contains("needs `secret`"));
        let slack_with_to = "[channels.a]\nkind = \"slack\"\nurl = \"https://x.example\"\nto = [\"a@b\"]\n";
        assert!(parse(slack_with_to).unwrap_err().contains("`to` is not a setting"));
        assert!(parse("[channels.a]\nkind = \"pager\"\n").is_err());
        assert!(parse("[channels.\"a b\"]\nkind = \"slack\"\nurl = \"https://x\"\n").is_err());
        assert!(parse("[rules.anomaly_rate]\nthreshold = 1.5\n").is_err());
        assert!(parse("[rules.anomaly_rate]\ntreshold = 0.2\n").is_err());
    }
}
