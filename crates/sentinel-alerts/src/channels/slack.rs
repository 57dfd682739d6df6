//! Slack incoming webhooks: a JSON `{"text": …}` POSTed to the webhook's URL, which answers
//! `200 ok`. Slack accepts about one message a second per webhook: the outbox waits
//! [`MIN_INTERVAL`] between two, and when several alerts are due it sends them grouped in one
//! message (at most [`MAX_GROUPED`]). A 429 answer's `Retry-After` is obeyed.

use std::time::Duration;

use reqwest::Url;
use serde_json::json;

use super::{DeliveryError, post};
use crate::alert::AlertView;

/// Shortest time between two messages to one webhook.
pub(crate) const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// Most alerts grouped into one message.
pub(crate) const MAX_GROUPED: usize = 20;

/// Not `Debug`: the URL is the webhook's credential.
pub(crate) struct SlackChannel {
    url: Url,
    client: reqwest::Client,
}

impl SlackChannel {
    pub fn new(url: Url, client: reqwest::Client) -> SlackChannel {
        SlackChannel { url, client }
    }

    pub async fn send(&self, alerts: &[AlertView]) -> Result<(), DeliveryError> {
        if alerts.is_empty() {
            return Ok(());
        }
        post(self.client.post(self.url.clone()).json(&json!({ "text": message(alerts) }))).await
    }
}

/// The message's text, in Slack's mrkdwn: one alert, or a count and a line per alert.
pub(crate) fn message(alerts: &[AlertView]) -> String {
    let line = |alert: &AlertView| {
        let repeats = match alert.repeats {
            0 => String::new(),
            n => format!(" (+{n} repeats)"),
        };
        format!(
            "*[{}]* {} — rule `{}`, {}{} (alert {})",
            escape(&alert.severity),
            escape(&alert.summary),
            escape(&alert.rule),
            escape(&alert.key),
            repeats,
            alert.id
        )
    };
    match alerts {
        [alert] => format!("Sentinel alert: {}", line(alert)),
        _ => {
            let lines: Vec<String> = alerts.iter().map(|alert| format!("• {}", line(alert))).collect();
            format!("Sentinel: {} alerts\n{}", alerts.len(), lines.join("\n"))
        }
    }
}

/// Slack's escaping of `&`, `<` and `>`, so a key or summary cannot make a link or a mention.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(id: i64, summary: &str) -> AlertView {
        AlertView {
            id,
            rule: "anomaly".into(),
            key: "host-a/10.0.0.5".into(),
            severity: "warning".into(),
            summary: summary.into(),
            details: Default::default(),
            raised_at: "2026-12-06T17:00:00Z".into(),
            last_raised_at: "2026-12-06T17:00:00Z".into(),
            repeats: 0,
            acknowledged_at: None,
            acknowledged_by: None,
            acknowledgement_note: None,
            deliveries: Vec::new(),
        }
    }

    #[test]
    fn several_alerts_make_one_grouped_message_and_markup_is_escaped() {
        let text = message(&[alert(1, "scan from <!channel>"), alert(2, "second")]);
        assert!(text.starts_with("Sentinel: 2 alerts\n"), "{text}");
        assert_eq!(text.lines().count(), 3);
        assert!(text.contains("&lt;!channel&gt;") && !text.contains("<!channel>"), "{text}");
        assert!(message(&[alert(7, "one")]).contains("(alert 7)"));
    }
}
