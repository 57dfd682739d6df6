//! Generic webhooks, signed as the Standard Webhooks specification says: each POST carries
//! `webhook-id` (the same for every retry of a delivery, so a receiver can drop duplicates),
//! `webhook-timestamp` (unix seconds, so a receiver can refuse replays) and
//! `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">` under the channel's
//! secret (`whsec_` then base64). The body is one alert as an ECS-style JSON document
//! (`@timestamp`, `message`, `event.*`, `rule.name`, `observer.*`), with Sentinel's own view of
//! the alert under `sentinel.alert`.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use reqwest::Url;
use serde_json::{Value, json};
use sha2::Sha256;

use super::{DeliveryError, post};
use crate::alert::{AlertView, Severity};

/// The prefix of a Standard Webhooks secret.
const SECRET_PREFIX: &str = "whsec_";

/// A signing secret. Not `Debug`: it must not reach a log.
#[derive(Clone)]
pub(crate) struct WebhookSecret(Vec<u8>);

impl WebhookSecret {
    /// `whsec_` then the base64 of 24 to 64 random bytes, as Standard Webhooks secrets are.
    pub fn parse(text: &str) -> Result<WebhookSecret, String> {
        let encoded = text.strip_prefix(SECRET_PREFIX).ok_or("`secret` must start with whsec_")?;
        let bytes = STANDARD.decode(encoded.trim()).map_err(|_| "`secret` is not base64 after whsec_")?;
        if !(24..=64).contains(&bytes.len()) {
            return Err(format!(
                "`secret` holds {} bytes: a Standard Webhooks secret has 24 to 64",
                bytes.len()
            ));
        }
        Ok(WebhookSecret(bytes))
    }

    /// The `webhook-signature` value of a message.
    pub fn sign(&self, id: &str, timestamp: u64, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes a key of any length");
        mac.update(format!("{id}.{timestamp}.").as_bytes());
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }
}

pub(crate) struct WebhookChannel {
    url: Url,
    secret: WebhookSecret,
    client: reqwest::Client,
}

impl WebhookChannel {
    pub fn new(url: Url, secret: WebhookSecret, client: reqwest::Client) -> WebhookChannel {
        WebhookChannel { url, secret, client }
    }

    pub async fn send(&self, alerts: &[AlertView], message_id: &str) -> Result<(), DeliveryError> {
        // One alert per message (the batch size is 1): receivers key on one event.
        let Some(alert) = alerts.first() else { return Ok(()) };
        let body = serde_json::to_vec(&ecs_document(alert))
            .map_err(|error| DeliveryError::new(error.to_string()))?;
        let timestamp = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_secs());
        let signature = self.secret.sign(message_id, timestamp, &body);
        let request = self
            .client
            .post(self.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("webhook-id", message_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body);
        post(request).await
    }
}

/// An alert as an ECS-style event.
pub(crate) fn ecs_document(alert: &AlertView) -> Value {
    let rule = alert.rule();
    let category = rule.map_or("host", |rule| rule.ecs_category());
    let severity = Severity::parse(&alert.severity);
    json!({
        "@timestamp": alert.last_raised_at,
        "message": alert.summary,
        "event": {
            "kind": "alert",
            "category": [category],
            "type": ["info"],
            "id": alert.id.to_string(),
            "action": alert.rule,
            "created": alert.raised_at,
            "severity": severity.ecs_number(),
            "reason": alert.summary,
            "dataset": "sentinel.alerts",
            "module": "sentinel",
        },
        "rule": { "name": alert.rule },
        "observer": { "vendor": "Sentinel", "product": "Sentinel", "version": env!("CARGO_PKG_VERSION") },
        "sentinel": { "alert": alert },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks specification's reference libraries: this secret,
    /// id, timestamp and body sign to this value.
    #[test]
    fn signatures_match_the_specification_s_example() {
        let secret = WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            secret.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn secrets_must_be_whsec_base64_of_a_real_key() {
        assert!(WebhookSecret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err());
        assert!(WebhookSecret::parse("whsec_not base64!").is_err());
        assert!(WebhookSecret::parse("whsec_c2hvcnQ=").err().unwrap().contains("bytes"));
    }
}
