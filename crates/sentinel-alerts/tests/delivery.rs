//! The alert service against real receivers on 127.0.0.1: a webhook receiver (the signature
//! checked as a receiver would), a Slack-style endpoint (grouping and pace), a real SMTP
//! server with STARTTLS (aiosmtpd), retries through an outage, and the outbox kept across a
//! restart of the service.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sentinel_alerts::{
    Alert, AlertSettings, Alerts, ChannelKind, ChannelSettings, DeliverySettings, Raised, Rule, Severity,
};
use sentinel_store::{AlertQuery, DeliveryState, Store, StoreSettings};
use sentinel_testkit::Prerequisite;
use sentinel_testkit::smtp_server::{self, SmtpServer};
use sentinel_testkit::webhook_receiver::WebhookReceiver;
use sha2::Sha256;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn channel(kind: ChannelKind) -> ChannelSettings {
    ChannelSettings {
        kind,
        url: None,
        secret: None,
        smtp_url: None,
        from: None,
        to: Vec::new(),
        ca_file: None,
        min_severity: Severity::Info,
        rules: Vec::new(),
    }
}

fn webhook(url: &str) -> ChannelSettings {
    ChannelSettings {
        url: Some(format!("{url}/hooks/sentinel")),
        secret: Some(SECRET.into()),
        ..channel(ChannelKind::Webhook)
    }
}

fn settings(channels: BTreeMap<String, ChannelSettings>) -> AlertSettings {
    AlertSettings {
        channels,
        delivery: DeliverySettings {
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(2),
            give_up_after: Duration::from_secs(3600),
            timeout: Duration::from_secs(5),
        },
        ..AlertSettings::default()
    }
}

fn open_store(dir: &std::path::Path) -> Arc<Store> {
    Arc::new(Store::open(dir, StoreSettings::default()).unwrap())
}

fn alert(key: &str) -> Alert {
    Alert::new(Rule::Anomaly, key, Severity::Warning, format!("anomalous connection to {key}"))
        .with_details(serde_json::json!({ "score": 0.97 }))
}

/// Checks a Standard Webhooks signature as a receiver does: HMAC-SHA256 under the secret's
/// bytes of `id.timestamp.body`, base64, after `v1,`.
fn signature_is_valid(id: &str, timestamp: &str, body: &[u8], signature: &str) -> bool {
    let key = STANDARD.decode(SECRET.trim_start_matches("whsec_")).unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    let expected = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
    signature.split(' ').any(|candidate| candidate == expected)
}

async fn wait_delivered(alerts: &Alerts, id: i64, channel: &str) -> sentinel_alerts::AlertView {
    for _ in 0..200 {
        let alert = alerts.get(id).await.unwrap().unwrap();
        if alert
            .deliveries
            .iter()
            .any(|delivery| delivery.channel == channel && delivery.state == "delivered")
        {
            return alert;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("alert {id} was not delivered on {channel}");
}

#[tokio::test]
async fn webhooks_are_signed_ecs_documents_and_repeats_in_the_cooldown_are_counted_not_sent() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = WebhookReceiver::start().await;
    let alerts = Alerts::start(
        settings([("soc-hook".to_owned(), webhook(&receiver.url))].into()),
        open_store(dir.path()),
    )
    .await
    .unwrap();
    let Raised::New(id) = alerts.raise(alert("web-1/203.0.113.9")).await.unwrap() else {
        panic!("a new alert")
    };
    assert_eq!(alerts.raise(alert("web-1/203.0.113.9")).await.unwrap(), Raised::Repeat(id));
    wait_delivered(&alerts, id, "soc-hook").await;

    let calls = receiver.wait_for(1, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.calls().len(), 1, "the repeat within the cooldown is not sent");
    let call = &calls[0];
    assert_eq!(call.path, "/hooks/sentinel");
    let (message_id, timestamp, signature) = (
        call.header("webhook-id").unwrap(),
        call.header("webhook-timestamp").unwrap(),
        call.header("webhook-signature").unwrap(),
    );
    assert!(signature_is_valid(message_id, timestamp, &call.body, signature), "{signature}");
    assert!(!signature_is_valid(message_id, "1", &call.body, signature), "the timestamp is signed");
    let age = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
        - timestamp.parse::<i64>().unwrap();
    assert!((0..60).contains(&age), "the timestamp is now: {age} s off");
    let body = call.json();
    assert_eq!(body["event"]["kind"], "alert");
    assert_eq!(body["event"]["category"][0], "network");
    assert_eq!(body["rule"]["name"], "anomaly");
    assert_eq!(body["message"], "anomalous connection to web-1/203.0.113.9");
    assert_eq!(body["sentinel"]["alert"]["details"]["score"], 0.97);
    assert_eq!(body["sentinel"]["alert"]["id"], id);
    assert!(body["@timestamp"].as_str().unwrap().ends_with('Z'));
    alerts.shutdown();
}

#[tokio::test]
async fn a_failing_receiver_is_retried_with_backoff_under_the_same_message_id() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = WebhookReceiver::start().await;
    receiver.answer_with(&[503, 500]);
    let alerts = Alerts::start(
        settings([("soc-hook".to_owned(), webhook(&receiver.url))].into()),
        open_store(dir.path()),
    )
    .await
    .unwrap();
    let Raised::New(id) = alerts.raise(alert("web-2/198.51.100.7")).await.unwrap() else { panic!("new") };
    let delivered = wait_delivered(&alerts, id, "soc-hook").await;
    let calls = receiver.calls();
    assert_eq!(calls.len(), 3);
    assert_eq!(delivered.deliveries[0].attempts, 3);
    let ids: Vec<&str> = calls.iter().map(|call| call.header("webhook-id").unwrap()).collect();
    assert!(ids.iter().all(|message_id| *message_id == ids[0]), "{ids:?}");
    // The first retry waits the initial back-off (1 s), the second twice that (at most 2 s).
    assert!(calls[1].at - calls[0].at >= Duration::from_millis(900), "{:?}", calls[1].at - calls[0].at);
    assert!(calls[2].at - calls[1].at >= Duration::from_millis(900));
    alerts.shutdown();
}

#[tokio::test]
async fn an_alert_raised_during_an_outage_is_delivered_after_a_restart_once_the_channel_is_back() {
    let dir = tempfile::tempdir().unwrap();
    // A port with nobody listening: the channel is down.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}");
    let channels: BTreeMap<_, _> = [("soc-hook".to_owned(), webhook(&url))].into();
    let id = {
        let store = open_store(dir.path());
        let alerts = Alerts::start(settings(channels.clone()), Arc::clone(&store)).await.unwrap();
        let Raised::New(id) = alerts.raise(alert("web-3/192.0.2.1")).await.unwrap() else { panic!("new") };
        // Tried and failed: pending in the outbox, with why.
        let mut pending = None;
        for _ in 0..100 {
            let alert = alerts.get(id).await.unwrap().unwrap();
            if alert.deliveries[0].attempts >= 1 {
                pending = Some(alert);
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let pending = pending.expect("the delivery was tried");
        assert_eq!(pending.deliveries[0].state, "pending");
        assert!(pending.deliveries[0].last_error.as_deref().unwrap().contains("connect"), "{pending:?}");
        alerts.shutdown();
        id
    };
    // The service stops (the store with it); the channel comes back; the service starts again.
    let receiver = WebhookReceiver::start_on(port).await;
    let store = open_store(dir.path());
    let alerts = Alerts::start(settings(channels), Arc::clone(&store)).await.unwrap();
    wait_delivered(&alerts, id, "soc-hook").await;
    let calls = receiver.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(calls[0].json()["sentinel"]["alert"]["id"], id);
    alerts.shutdown();
}

#[tokio::test]
async fn slack_gets_one_message_a_second_with_the_alerts_due_grouped() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = WebhookReceiver::start().await;
    let slack = ChannelSettings {
        url: Some(format!("{}/services/T0/B0/XXXX", receiver.url)),
        ..channel(ChannelKind::Slack)
    };
    let alerts =
        Alerts::start(settings([("slack".to_owned(), slack)].into()), open_store(dir.path())).await.unwrap();
    alerts.raise(alert("host-0/10.0.0.1")).await.unwrap();
    receiver.wait_for(1, Duration::from_secs(10)).await;
    // Four more inside the second after the first message: one grouped message.
    for index in 1..5 {
        alerts.raise(alert(&format!("host-{index}/10.0.0.1"))).await.unwrap();
    }
    let calls = receiver.wait_for(2, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let calls_after = receiver.calls();
    assert_eq!(calls_after.len(), 2, "{:?}", calls_after.iter().map(|call| call.json()).collect::<Vec<_>>());
    assert!(calls[1].at - calls[0].at >= Duration::from_millis(950), "Slack's pace: one message a second");
    let first = calls[0].json()["text"].as_str().unwrap().to_owned();
    let grouped = calls[1].json()["text"].as_str().unwrap().to_owned();
    assert!(first.starts_with("Sentinel alert:") && first.contains("host-0"), "{first}");
    assert!(grouped.starts_with("Sentinel: 4 alerts"), "{grouped}");
    assert!((1..5).all(|index| grouped.contains(&format!("host-{index}/"))), "{grouped}");
    let listed = alerts.list(AlertQuery { acknowledged: None, before: None, limit: 10 }).await.unwrap();
    assert_eq!(listed.len(), 5);
    assert!(listed.iter().all(|alert| alert.deliveries[0].state == "delivered"));
    alerts.shutdown();
}

#[tokio::test]
async fn email_goes_over_starttls_to_a_real_smtp_server() {
    if !smtp_server::available() {
        Prerequisite::Peers
            .missing("Debian's python3-aiosmtpd is not installed (apt-get install python3-aiosmtpd)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let smtp = SmtpServer::start(dir.path());
    let email = ChannelSettings {
        smtp_url: Some(format!("smtp://127.0.0.1:{}", smtp.port)),
        from: Some("Sentinel <sentinel@example.org>".into()),
        to: vec!["soc@example.org".into(), "oncall@example.org".into()],
        ca_file: Some(smtp.ca_file.clone()),
        min_severity: Severity::Critical,
        ..channel(ChannelKind::Email)
    };
    let alerts =
        Alerts::start(settings([("mail".to_owned(), email)].into()), open_store(dir.path())).await.unwrap();
    // Below the channel's minimum severity: recorded, not sent.
    let Raised::New(quiet) = alerts.raise(alert("host-q/10.0.0.9")).await.unwrap() else { panic!("new") };
    let critical = Alert::new(Rule::MalwareVerdict, "ab".repeat(32), Severity::Critical, "malicious sample");
    let Raised::New(id) = alerts.raise(critical).await.unwrap() else { panic!("new") };
    wait_delivered(&alerts, id, "mail").await;
    let messages = smtp.wait_for(1, Duration::from_secs(20));
    assert_eq!(messages.len(), 1);
    let message = &messages[0];
    assert!(message.contains("X-Was-Tls: True"), "{message}");
    assert!(message.contains("X-Envelope-To: soc@example.org,oncall@example.org"), "{message}");
    assert!(message.contains("Subject: [Sentinel] critical: malicious sample"), "{message}");
    assert!(message.contains(&format!("Alert: {id}")), "{message}");
    assert!(alerts.get(quiet).await.unwrap().unwrap().deliveries.is_empty());

    // A relay that does not know the CA is refused (the certificate is checked), and a test
    // notification says so.
    let untrusted = ChannelSettings { ca_file: None, ..alerts.settings().channels["mail"].clone() };
    let dir2 = tempfile::tempdir().unwrap();
    let strict = Alerts::start(settings([("mail".to_owned(), untrusted)].into()), open_store(dir2.path()))
        .await
        .unwrap();
    let refused = strict.send_test("mail", "token:test#1").await.unwrap_err();
    assert!(refused.to_string().contains("SMTP"), "{refused}");
    assert_eq!(smtp.messages().len(), 1);
    strict.shutdown();
    alerts.send_test("mail", "token:test#1").await.unwrap();
    assert!(smtp.wait_for(2, Duration::from_secs(20))[1].contains("Test notification"));
    alerts.shutdown();
}

#[tokio::test]
async fn deliveries_to_a_channel_removed_from_the_configuration_are_given_up() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let channels: BTreeMap<_, _> =
        [("old-hook".to_owned(), webhook(&format!("http://127.0.0.1:{port}")))].into();
    let alerts = Alerts::start(settings(channels), Arc::clone(&store)).await.unwrap();
    let Raised::New(id) = alerts.raise(alert("x/1")).await.unwrap() else { panic!("new") };
    alerts.shutdown();
    let alerts = Alerts::start(settings(BTreeMap::new()), store).await.unwrap();
    let stored = alerts.get(id).await.unwrap().unwrap();
    assert_eq!(stored.deliveries[0].state, DeliveryState::Failed.as_str());
    assert_eq!(stored.deliveries[0].last_error.as_deref(), Some("the channel is no longer configured"));
}

#[tokio::test]
async fn alerts_past_max_per_minute_are_recorded_not_sent_and_one_failure_alert_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = WebhookReceiver::start().await;
    let alerts = Alerts::start(
        AlertSettings {
            max_per_minute: 3,
            ..settings([("soc-hook".to_owned(), webhook(&receiver.url))].into())
        },
        open_store(dir.path()),
    )
    .await
    .unwrap();
    // A scan of ten addresses: ten keys, ten new alerts, within a second.
    let mut ids = Vec::new();
    for address in 0..10 {
        let Raised::New(id) = alerts.raise(alert(&format!("web-1/203.0.113.{address}"))).await.unwrap()
        else {
            panic!("a new alert")
        };
        ids.push(id);
        // A repeat within the cooldown sends nothing and takes nothing from the limit.
        assert_eq!(alerts.raise(alert("web-1/203.0.113.0")).await.unwrap(), Raised::Repeat(ids[0]));
    }

    // The first three, then the notice: nothing else reaches the channel.
    let calls = receiver.wait_for(4, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        receiver.calls().len(),
        4,
        "{:#?}",
        receiver.calls().iter().map(|c| c.json()).collect::<Vec<_>>()
    );
    let mut sent: Vec<String> = calls
        .iter()
        .map(|call| call.json()["sentinel"]["alert"]["key"].as_str().unwrap().to_owned())
        .collect();
    sent.sort();
    assert_eq!(
        sent,
        ["alerts_held_back/alerts", "web-1/203.0.113.0", "web-1/203.0.113.1", "web-1/203.0.113.2"]
    );
    let notice = calls.iter().map(|call| call.json()).find(|body| body["rule"]["name"] == "failure").unwrap();
    assert_eq!(notice["sentinel"]["alert"]["severity"], "critical");
    assert_eq!(notice["sentinel"]["alert"]["details"]["max_per_minute"], 3);

    // Nothing is lost: every alert is listed, the held-back ones marked and without deliveries,
    // and the notice's repeats count the ones held back after it.
    let listed = alerts.list(AlertQuery { acknowledged: None, before: None, limit: 100 }).await.unwrap();
    assert_eq!(listed.len(), 11);
    for (index, id) in ids.iter().enumerate() {
        let view = listed.iter().find(|view| view.id == *id).unwrap();
        let held_back = index >= 3;
        assert_eq!(view.details.get("held_back").is_some(), held_back, "{view:?}");
        assert_eq!(view.deliveries.is_empty(), held_back, "{view:?}");
    }
    let notice = listed.iter().find(|view| view.rule == "failure").unwrap();
    assert_eq!(notice.repeats, 6, "seven held back: the first raised the notice");
    alerts.shutdown();
}
