//! Alerts inside the real `sentinel serve` process: a malware verdict raises an alert whose
//! webhook delivery waits in the outbox through a channel outage and a `kill -9`, and is
//! delivered, signed, once both are back; an agent's anomalous connection raises an alert on
//! the webhook; the alert API lists, acknowledges and tests channels under its scopes.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sentinel_testkit::connection_records::{connection_record as record, snapshot};
use sentinel_testkit::fake_virustotal::FakeVt;
use sentinel_testkit::http_client::{ApiClient, send_with_headers};
use sentinel_testkit::serve_process::{QUICK_NETWORK, ServeCommand, ServeProcess};
use sentinel_testkit::synthetic_pe;
use sentinel_testkit::webhook_receiver::WebhookReceiver;
use serde_json::{Value, json};
use sha2::Sha256;

const SENTINEL: &str = env!("CARGO_BIN_EXE_sentinel");
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// Every malware verdict raises an alert (threshold 0); quick retries; one webhook channel.
fn config(webhook_port: u16, network: &str) -> String {
    format!(
        "{network}
[alerts.delivery]
initial_backoff = \"1s\"
max_backoff = \"2s\"

[alerts.rules.malware]
threshold = 0.0

[alerts.rules.overload]
enabled = false

[alerts.channels.soc-hook]
kind = \"webhook\"
url = \"http://127.0.0.1:{webhook_port}/hooks/sentinel\"
secret = \"{SECRET}\"
min_severity = \"info\"
"
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn create_token(data_dir: &Path, name: &str, scopes: &str) -> String {
    sentinel_testkit::serve_process::create_token(SENTINEL, data_dir, name, scopes)
}

fn signature_is_valid(call: &sentinel_testkit::webhook_receiver::ReceivedCall) -> bool {
    let (Some(id), Some(timestamp), Some(signature)) =
        (call.header("webhook-id"), call.header("webhook-timestamp"), call.header("webhook-signature"))
    else {
        return false;
    };
    let key = STANDARD.decode(SECRET.trim_start_matches("whsec_")).unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(&call.body);
    signature == format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

/// Polls the alert list until `found` accepts it.
async fn wait_for_alerts(api: &ApiClient, what: &str, found: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = api.get_json("/api/v1/alerts?state=all").await;
        assert_eq!(status, 200, "{body}");
        let alerts = body["alerts"].as_array().unwrap().clone();
        if found(&alerts) {
            return alerts;
        }
        assert!(Instant::now() < deadline, "{what}: {alerts:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn an_alert_raised_during_an_outage_survives_kill_9_and_is_delivered_signed() {
    let data_dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = config(port, "[network]\nenabled = false\n");
    let mut served = ServeCommand::new(SENTINEL, data_dir.path()).config(&config).start();
    let admin = served.api();

    // A file analysed over HTTP: its verdict raises an alert; the channel is down.
    let sample = synthetic_pe(4096, 7);
    let token = format!("Bearer {}", served.admin_token());
    let headers = [("content-type", "application/octet-stream"), ("authorization", token.as_str())];
    let answer =
        send_with_headers(served.http, "POST", "/api/v1/files?analyses=static", &headers, Some(&sample))
            .await
            .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.body);
    let sha256 = answer.json()["sha256"].as_str().unwrap().to_owned();
    let alerts = wait_for_alerts(&admin, "a tried, pending delivery", |alerts| {
        alerts.iter().any(|alert| alert["deliveries"][0]["attempts"].as_u64() >= Some(1))
    })
    .await;
    let alert = &alerts[0];
    assert_eq!(
        (alert["rule"].as_str(), alert["key"].as_str()),
        (Some("malware_verdict"), Some(sha256.as_str()))
    );
    assert_eq!(alert["deliveries"][0]["state"], "pending", "{alert:#}");
    let id = alert["id"].as_i64().unwrap();

    // The process dies without a chance to clean up; the channel comes back; it restarts.
    served.signal("-KILL");
    served.wait_exit(Duration::from_secs(10));
    let receiver = WebhookReceiver::start_on(port).await;
    let served = ServeCommand::new(SENTINEL, data_dir.path()).config(&config).start();
    let admin = served.api();
    let calls = receiver.wait_for(1, Duration::from_secs(30)).await;
    let call = &calls[0];
    assert_eq!(call.path, "/hooks/sentinel");
    assert!(signature_is_valid(call), "{:?}", call.headers);
    assert_eq!(call.header("webhook-id"), Some(format!("sentinel-alert-{id}").as_str()));
    let body = call.json();
    assert_eq!(body["event"]["category"][0], "malware");
    assert_eq!(body["sentinel"]["alert"]["details"]["sha256"], sha256.as_str());
    wait_for_alerts(&admin, "delivered", |alerts| alerts[0]["deliveries"][0]["state"] == "delivered").await;
    let metrics = admin.send("GET", "/metrics", None).await.body;
    assert!(
        metrics
            .lines()
            .any(|line| line == "alert_deliveries_total{channel=\"soc-hook\",outcome=\"delivered\"} 1"),
        "{metrics}"
    );

    // Reading needs alerts:read, acknowledging alerts:write.
    let reader = ApiClient::new(served.http, Some(create_token(data_dir.path(), "reader", "alerts:read")));
    let network_only =
        ApiClient::new(served.http, Some(create_token(data_dir.path(), "net", "network:read")));
    assert_eq!(network_only.send("GET", "/api/v1/alerts", None).await.status, 403);
    assert_eq!(ApiClient::new(served.http, None).send("GET", "/api/v1/alerts", None).await.status, 401);
    let path = format!("/api/v1/alerts/{id}/acknowledge");
    let refused = reader.send("POST", &path, Some(br#"{"note": "seen"}"#)).await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert_eq!(reader.get_json(&format!("/api/v1/alerts/{id}")).await.1["acknowledged_at"], Value::Null);
    let analyst = ApiClient::new(
        served.http,
        Some(create_token(data_dir.path(), "analyst", "alerts:read,alerts:write")),
    );
    let acknowledged = analyst.send("POST", &path, Some(br#"{"note": "known test sample"}"#)).await;
    assert_eq!(acknowledged.status, 200, "{}", acknowledged.body);
    let acknowledged = acknowledged.json();
    assert!(
        acknowledged["acknowledged_by"].as_str().unwrap().starts_with("token:analyst#"),
        "{acknowledged:#}"
    );
    assert_eq!(acknowledged["acknowledgement_note"], "known test sample");
    assert_eq!(analyst.get_json("/api/v1/alerts?state=open").await.1["alerts"], json!([]));
    assert_eq!(analyst.get_json("/api/v1/alerts?state=acknowledged").await.1["alerts"][0]["id"], id);
    assert_eq!(analyst.send("POST", "/api/v1/alerts/999/acknowledge", None).await.status, 404);
    assert_eq!(analyst.send("GET", "/api/v1/alerts?state=closed", None).await.status, 400);

    // A test notification goes out at once; an unknown channel is a 404.
    let tested = analyst.send("POST", "/api/v1/alerts/test?channel=soc-hook", None).await;
    assert_eq!(tested.status, 200, "{}", tested.body);
    let calls = receiver.wait_for(2, Duration::from_secs(10)).await;
    assert_eq!(calls[1].json()["rule"]["name"], "test");
    assert!(signature_is_valid(&calls[1]));
    assert_eq!(analyst.send("POST", "/api/v1/alerts/test?channel=pager", None).await.status, 404);
    // Both are in the audit table.
    let audit = admin.get_json("/api/v1/audit?limit=10").await.1;
    let actions: Vec<&str> =
        audit["events"].as_array().unwrap().iter().filter_map(|event| event["action"].as_str()).collect();
    assert!(actions.contains(&"alert.acknowledge") && actions.contains(&"alert.test"), "{audit:#}");
}

#[tokio::test]
async fn an_agent_s_anomalous_connection_raises_an_alert_on_the_webhook() {
    let data_dir = tempfile::tempdir().unwrap();
    let receiver = WebhookReceiver::start().await;
    let port: u16 = receiver.url.rsplit(':').next().unwrap().parse().unwrap();
    // Quick models, no collector: the anomaly comes from an agent's snapshot.
    let served: ServeProcess = ServeCommand::new(SENTINEL, data_dir.path())
        .config(&config(port, &format!("[network]\ncollect = false\n{QUICK_NETWORK}")))
        .start();
    let admin = served.api();

    admin.train_network_model("web-1").await;

    // A process of the host sends almost a gigabyte to a port nobody uses.
    let now = SystemTime::now();
    let connections = vec![record("web-1", "dropper", 4444, 51_000, 900_000_000, 10, now)];
    admin.ingest(&snapshot("web-1", now, connections)).await;
    // (The web client's connections, absent from this snapshot, are scored as closed too.)
    let is_dropper = |alert: &Value| alert["rule"] == "anomaly" && alert["details"]["process"] == "dropper";
    let alerts = wait_for_alerts(&admin, "an anomaly alert", |alerts| alerts.iter().any(&is_dropper)).await;
    let alert = alerts.iter().find(|alert| is_dropper(alert)).unwrap();
    assert!(alert["key"].as_str().unwrap().starts_with("web-1/"), "{alert:#}");
    assert!(alert["details"]["prediction_id"].as_i64().is_some(), "feedback can label it: {alert:#}");
    let id = alert["id"].clone();
    let deadline = Instant::now() + Duration::from_secs(30);
    let anomaly = loop {
        let calls = receiver.calls();
        if let Some(call) = calls.into_iter().find(|call| call.json()["sentinel"]["alert"]["id"] == id) {
            break call;
        }
        assert!(Instant::now() < deadline, "the anomaly's alert was not delivered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(signature_is_valid(&anomaly));
    assert_eq!(anomaly.json()["event"]["category"][0], "network");
}

#[tokio::test]
async fn a_rejected_virustotal_key_and_an_unreachable_sandbox_are_failures_that_alert() {
    let data_dir = tempfile::tempdir().unwrap();
    let receiver = WebhookReceiver::start().await;
    let port: u16 = receiver.url.rsplit(':').next().unwrap().parse().unwrap();
    let virustotal = FakeVt::start().await;
    // Nobody listens where the sandbox should be.
    let sandbox = format!("http://127.0.0.1:{}", free_port());
    let served = ServeCommand::new(SENTINEL, data_dir.path())
        .config(&config(port, "[network]\nenabled = false\n"))
        .args(["--vt-base-url", virustotal.base_url.as_str(), "--cape-base-url", sandbox.as_str()])
        .env("SENTINEL_CAPE_TOKEN", "cape-token")
        .start();
    let admin = served.api();
    let token = format!("Bearer {}", served.admin_token());
    let upload = |query: &'static str, key: Option<&'static str>| {
        let token = token.clone();
        let http = served.http;
        async move {
            let mut headers =
                vec![("content-type", "application/octet-stream"), ("authorization", token.as_str())];
            headers.extend(key.map(|key| ("x-virustotal-key", key)));
            send_with_headers(
                http,
                "POST",
                &format!("/api/v1/files?analyses={query}"),
                &headers,
                Some(&synthetic_pe(4096, 11)),
            )
            .await
            .unwrap()
        }
    };
    // VirusTotal refuses the key (it knows none); the sandbox cannot be reached.
    let refused =
        upload("vt", Some("f11e5ec0f11e5ec0f11e5ec0f11e5ec0f11e5ec0f11e5ec0f11e5ec0f11e5ec0")).await;
    assert_ne!(refused.status, 200, "{}", refused.body);
    let unreachable = upload("dynamic", None).await;
    assert_ne!(unreachable.status, 200, "{}", unreachable.body);

    let alerts = wait_for_alerts(&admin, "two failure alerts", |alerts| {
        alerts.iter().filter(|alert| alert["rule"] == "failure").count() >= 2
    })
    .await;
    let failures: Vec<&str> = alerts
        .iter()
        .filter(|alert| alert["rule"] == "failure")
        .map(|alert| alert["details"]["failure"].as_str().unwrap())
        .collect();
    assert!(
        failures.contains(&"virustotal_key_rejected") && failures.contains(&"sandbox_unreachable"),
        "{alerts:#?}"
    );
    assert!(alerts.iter().all(|alert| alert["rule"] != "failure" || alert["severity"] == "critical"));
    // The client's key is never in the alert, nor in what the webhook received.
    let calls = receiver.wait_for(2, Duration::from_secs(30)).await;
    for text in alerts
        .iter()
        .map(Value::to_string)
        .chain(calls.iter().map(|call| String::from_utf8_lossy(&call.body).into_owned()))
    {
        assert!(!text.contains("f11e5ec0"), "a VirusTotal key leaked: {text}");
    }
}
