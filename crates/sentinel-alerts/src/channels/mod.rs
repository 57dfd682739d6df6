//! The channels alerts are delivered on — generic webhooks signed as the Standard Webhooks
//! specification says (`webhook`), Slack incoming webhooks (`slack`) and e-mail over SMTP
//! (`email`) — behind one [`Channel`] the outbox calls without knowing which it is.
//!
//! A channel says how many due alerts it takes in one delivery (Slack groups them into one
//! message) and how long it waits between two (Slack's one message a second per webhook).

mod email;
mod slack;
mod webhook;

use std::net::IpAddr;
use std::time::Duration;

use reqwest::Url;

use crate::alert::AlertView;
use crate::settings::{ChannelKind, ChannelSettings, DeliverySettings};

pub(crate) use webhook::WebhookSecret;

/// A configured channel, ready to send.
pub(crate) enum Channel {
    Webhook(webhook::WebhookChannel),
    Slack(slack::SlackChannel),
    Email(email::EmailChannel),
}

/// Why a channel could not be set up from its settings.
#[derive(Debug, thiserror::Error)]
#[error("[alerts.channels.{channel}] {message}")]
pub struct ChannelError {
    pub channel: String,
    pub message: String,
}

/// Why a delivery failed; it is retried with back-off, or after `retry_after` when the
/// receiver said so (HTTP 429 and `Retry-After`).
#[derive(Debug)]
pub(crate) struct DeliveryError {
    pub message: String,
    pub retry_after: Option<Duration>,
}

impl DeliveryError {
    pub fn new(message: impl Into<String>) -> DeliveryError {
        DeliveryError { message: message.into(), retry_after: None }
    }
}

impl Channel {
    /// The channel `name` as `settings` describe it.
    pub fn new(
        name: &str,
        settings: &ChannelSettings,
        delivery: &DeliverySettings,
    ) -> Result<Channel, ChannelError> {
        let error = |message: String| ChannelError { channel: name.to_owned(), message };
        let url = || settings.url.as_deref().map(http_url).transpose().map_err(&error);
        let client = || {
            reqwest::Client::builder()
                .timeout(delivery.timeout)
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .map_err(|cause| error(format!("cannot build the HTTP client: {cause}")))
        };
        Ok(match settings.kind {
            ChannelKind::Webhook => {
                let secret =
                    settings.secret.as_deref().map(WebhookSecret::parse).transpose().map_err(&error)?;
                let (Some(url), Some(secret)) = (url()?, secret) else {
                    return Err(error("a webhook channel needs `url` and `secret`".into()));
                };
                Channel::Webhook(webhook::WebhookChannel::new(url, secret, client()?))
            }
            ChannelKind::Slack => {
                let Some(url) = url()? else { return Err(error("a slack channel needs `url`".into())) };
                Channel::Slack(slack::SlackChannel::new(url, client()?))
            }
            ChannelKind::Email => {
                Channel::Email(email::EmailChannel::new(settings, delivery).map_err(error)?)
            }
        })
    }

    /// Most due alerts one delivery takes.
    pub fn batch_size(&self) -> usize {
        match self {
            Channel::Slack(_) => slack::MAX_GROUPED,
            Channel::Webhook(_) | Channel::Email(_) => 1,
        }
    }

    /// Shortest time between two deliveries.
    pub fn min_interval(&self) -> Duration {
        match self {
            Channel::Slack(_) => slack::MIN_INTERVAL,
            Channel::Webhook(_) | Channel::Email(_) => Duration::ZERO,
        }
    }

    /// Delivers `alerts` (at most [`Channel::batch_size`]); `message_id` names the delivery for
    /// receivers that deduplicate (the same for every retry of it).
    pub async fn send(&self, alerts: &[AlertView], message_id: &str) -> Result<(), DeliveryError> {
        match self {
            Channel::Webhook(channel) => channel.send(alerts, message_id).await,
            Channel::Slack(channel) => channel.send(alerts).await,
            Channel::Email(channel) => channel.send(alerts, message_id).await,
        }
    }
}

/// A webhook URL: `https`, or `http` only to this host (a loopback address or `localhost`),
/// since alerts carry hosts, addresses and hashes that must not cross a network in clear.
fn http_url(text: &str) -> Result<Url, String> {
    let url = Url::parse(text).map_err(|error| format!("`url` is not a URL: {error}"))?;
    match url.scheme() {
        "https" => Ok(url),
        "http" if is_loopback(&url) => Ok(url),
        "http" => Err("`url` must be https (http only to a loopback address)".into()),
        scheme => Err(format!("`url` has scheme {scheme:?}: expected https")),
    }
}

pub(crate) fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(address)) => IpAddr::V4(address).is_loopback(),
        Some(url::Host::Ipv6(address)) => IpAddr::V6(address).is_loopback(),
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

/// Sends an HTTP delivery: any 2xx answer is success; otherwise the error holds the start of
/// the answer and, for a 429 or 503, its `Retry-After`.
pub(crate) async fn post(request: reqwest::RequestBuilder) -> Result<(), DeliveryError> {
    let response = request.send().await.map_err(request_failure)?;
    if response.status().is_success() {
        return Ok(());
    }
    let retry_after = retry_after(&response);
    Err(DeliveryError { message: answer_excerpt(response).await, retry_after })
}

/// The start of a receiver's answer, for the delivery's error: enough to diagnose, bounded.
async fn answer_excerpt(response: reqwest::Response) -> String {
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    let excerpt: String = body.chars().filter(|c| !c.is_control()).take(200).collect();
    format!("HTTP {status}: {excerpt}")
}

/// The `Retry-After` of a 429 or 503 answer, in seconds (at most an hour).
fn retry_after(response: &reqwest::Response) -> Option<Duration> {
    let seconds: u64 =
        response.headers().get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim().parse().ok()?;
    Some(Duration::from_secs(seconds.min(3600)))
}

/// A request that failed before an answer: the cause, without the URL (a Slack URL is its
/// credential).
fn request_failure(error: reqwest::Error) -> DeliveryError {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    let cause = std::error::Error::source(&error).map(|source| format!(": {source}")).unwrap_or_default();
    DeliveryError::new(format!("{kind}{cause}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_urls_are_https_or_loopback_http() {
        assert!(http_url("https://soar.example/hooks").is_ok());
        assert!(http_url("http://127.0.0.1:8080/hook").is_ok());
        assert!(http_url("http://[::1]:8080/hook").is_ok());
        assert!(http_url("http://localhost/hook").is_ok());
        assert!(http_url("http://soar.example/hooks").unwrap_err().contains("https"));
        assert!(http_url("ftp://soar.example/").is_err());
        assert!(http_url("not a url").is_err());
    }
}
