//! E-mail over SMTP (lettre's tokio transport on rustls). `smtp://` requires STARTTLS: the
//! session is upgraded before any credential or message is sent, and fails closed when the
//! relay does not offer it; `smtps://` speaks TLS from the first byte. A relay on this host may
//! be reached without TLS by saying so (`?tls=none`), nothing else. The relay's certificate is
//! checked against the system's roots, plus `ca_file` for a private CA.
//!
//! One message per alert: a subject with the severity and the summary, and a plain-text body
//! with the rule, the key, the times and the details.

use std::time::Duration;

use lettre::message::{Mailbox, header::ContentType};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use reqwest::Url;

use super::{DeliveryError, is_loopback};
use crate::alert::AlertView;
use crate::settings::{ChannelSettings, DeliverySettings};

/// Not `Debug`: the transport holds the relay's credentials.
pub(crate) struct EmailChannel {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    to: Vec<Mailbox>,
}

impl EmailChannel {
    pub fn new(settings: &ChannelSettings, delivery: &DeliverySettings) -> Result<EmailChannel, String> {
        let text = settings.smtp_url.as_deref().ok_or("an email channel needs `smtp_url`")?;
        // The URL's own text is never in an error: it may hold a password.
        let url = Url::parse(text).map_err(|error| format!("`smtp_url` is not a URL: {error}"))?;
        let host = url.host_str().ok_or("`smtp_url` has no host")?.trim_matches(['[', ']']).to_owned();
        let tls_mode = url.query_pairs().find(|(key, _)| key == "tls").map(|(_, value)| value.into_owned());
        if let Some((key, _)) = url.query_pairs().find(|(key, _)| key != "tls") {
            return Err(format!("`smtp_url` has an unknown parameter {key:?} (only tls=)"));
        }
        let parameters = || -> Result<TlsParameters, String> {
            let mut builder = TlsParameters::builder(host.clone());
            if let Some(path) = &settings.ca_file {
                let pem = std::fs::read(path)
                    .map_err(|error| format!("cannot read `ca_file` {}: {error}", path.display()))?;
                let certificate = Certificate::from_pem(&pem).map_err(|error| {
                    format!("`ca_file` {} holds no usable certificate: {error}", path.display())
                })?;
                builder = builder.add_root_certificate(certificate);
            }
            builder.build().map_err(|error| format!("TLS settings of the relay: {error}"))
        };
        let (port, tls) = match (url.scheme(), tls_mode.as_deref()) {
            ("smtps", None) => (465, Tls::Wrapper(parameters()?)),
            ("smtp", None | Some("required")) => (587, Tls::Required(parameters()?)),
            ("smtp", Some("none")) if is_loopback(&url) => (25, Tls::None),
            ("smtp", Some("none")) => {
                return Err("`smtp_url`: tls=none only to a relay on a loopback address".into());
            }
            ("smtp", Some(mode)) => {
                return Err(format!("`smtp_url`: tls={mode:?}, expected required or none"));
            }
            (scheme, _) => return Err(format!("`smtp_url` has scheme {scheme:?}: expected smtp or smtps")),
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
            .port(url.port().unwrap_or(port))
            .tls(tls)
            .timeout(Some(delivery.timeout));
        if !url.username().is_empty() {
            let decode = |text: &str| {
                percent_decode(text)
                    .ok_or_else(|| "`smtp_url`: the user or password is not valid UTF-8".to_owned())
            };
            let password = decode(url.password().unwrap_or_default())?;
            builder = builder.credentials(Credentials::new(decode(url.username())?, password));
        }
        let mailbox = |text: &str, key: &str| {
            text.parse::<Mailbox>().map_err(|error| format!("`{key}` {text:?} is not an address: {error}"))
        };
        let from = mailbox(settings.from.as_deref().unwrap_or_default(), "from")?;
        let to = settings.to.iter().map(|address| mailbox(address, "to")).collect::<Result<_, _>>()?;
        Ok(EmailChannel { transport: builder.build(), from, to })
    }

    pub async fn send(&self, alerts: &[AlertView], message_id: &str) -> Result<(), DeliveryError> {
        let Some(alert) = alerts.first() else { return Ok(()) };
        let mut builder = Message::builder()
            .from(self.from.clone())
            .subject(subject(alert))
            .message_id(Some(format!("<{message_id}@sentinel>")))
            .header(ContentType::TEXT_PLAIN);
        for recipient in &self.to {
            builder = builder.to(recipient.clone());
        }
        let message =
            builder.body(body(alert)).map_err(|error| DeliveryError::new(format!("message: {error}")))?;
        match self.transport.send(message).await {
            Ok(_) => Ok(()),
            Err(error) => {
                // A relay's temporary refusal (4xx) asks for a later try; so does anything else.
                let retry_after = error.is_transient().then_some(Duration::from_secs(60));
                Err(DeliveryError { message: format!("SMTP: {error}"), retry_after })
            }
        }
    }
}

/// `[Sentinel] critical: summary`, on one line.
fn subject(alert: &AlertView) -> String {
    let summary: String = alert.summary.chars().filter(|c| !c.is_control()).take(150).collect();
    format!("[Sentinel] {}: {summary}", alert.severity)
}

fn body(alert: &AlertView) -> String {
    let details = serde_json::to_string_pretty(&alert.details).unwrap_or_default();
    let repeats = match alert.repeats {
        0 => String::new(),
        n => format!("Repeats: {n} within the cooldown, the last at {}\n", alert.last_raised_at),
    };
    format!(
        "{summary}\n\nAlert: {id}\nRule: {rule}\nAbout: {key}\nSeverity: {severity}\nRaised: {raised}\n{repeats}\nDetails:\n{details}\n",
        summary = alert.summary,
        id = alert.id,
        rule = alert.rule,
        key = alert.key,
        severity = alert.severity,
        raised = alert.raised_at,
    )
}

/// Percent-decoding of a URL's user or password (`%40` for `@`).
fn percent_decode(text: &str) -> Option<String> {
    percent_encoding::percent_decode_str(text).decode_utf8().ok().map(|text| text.into_owned())
}
