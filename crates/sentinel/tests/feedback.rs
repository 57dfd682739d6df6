//! Analysts' feedback on the network service inside the real `sentinel serve` process: a token
//! made by `sentinel token create` with `network:feedback` labels predictions, others are
//! refused (401 without a token, 403 without the scope), and `/metrics` then exposes the figures
//! measured on the labels (`model_accuracy{source="feedback"}`) beside those of training.

use std::path::Path;
use std::time::SystemTime;

use sentinel_testkit::connection_records::connection_record as record;
use sentinel_testkit::http_client::ApiClient;
use sentinel_testkit::serve_process::{QUICK_NETWORK, ServeCommand};
use serde_json::{Value, json};

const SENTINEL: &str = env!("CARGO_BIN_EXE_sentinel");

/// No collector, quick models, stored `/api/v1/analyze` results (so that they have ids, set from
/// the environment beside the quick models' `[network.storage]`), and figures from 6 labels.
fn config() -> String {
    format!("[network]\ncollect = false\n{QUICK_NETWORK}\n[network.feedback]\nmin_labels = 6\n")
}

fn create_token(data_dir: &Path, name: &str, scopes: &str) -> String {
    sentinel_testkit::serve_process::create_token(SENTINEL, data_dir, name, scopes)
}

/// The value of the first line of `metrics` that starts with `name`.
fn metric(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|line| line.starts_with(name))
        .map(|line| line.rsplit(' ').next().unwrap().parse().unwrap())
}

#[tokio::test]
async fn a_feedback_token_labels_predictions_and_metrics_show_the_figures() {
    let data_dir = tempfile::tempdir().unwrap();
    let served = ServeCommand::new(SENTINEL, data_dir.path())
        .config(&config())
        .env("SENTINEL_NETWORK__STORAGE__STORE_ANALYZE_REQUESTS", "true")
        .start();
    let admin = served.api();

    // Two minutes of an ordinary web client, then a model trained on it.
    admin.train_network_model("history").await;

    // Four ordinary connections and four bulk uploads, scored and stored.
    let now = SystemTime::now();
    let mut records: Vec<Value> = (1..=4u64)
        .map(|age| record("history", "webclient", 443, 41_000 + age as u16, age * 400, age * 2500, now))
        .collect();
    records.extend(
        (0..4u64).map(|n| record("history", "dropper", 4444, 50_000 + n as u16, 900_000_000, 10, now)),
    );
    let (status, answer) = admin.post_json("/api/v1/analyze", &json!({ "records": records })).await;
    assert_eq!(status, 200, "{answer}");
    let results = answer["results"].as_array().unwrap();
    let labels: Vec<Value> = results
        .iter()
        .enumerate()
        .map(|(index, result)| {
            json!({"id": result["id"], "verdict": if index >= 4 { "anomaly" } else { "false_positive" }, "note": "triage"})
        })
        .collect();
    let body = json!({ "labels": labels }).to_string();

    let anonymous =
        ApiClient::new(served.http, None).send("POST", "/api/v1/feedback", Some(body.as_bytes())).await;
    assert_eq!(anonymous.status, 401, "{}", anonymous.body);
    let reader = ApiClient::new(
        served.http,
        Some(create_token(data_dir.path(), "reader", "network:read,network:train")),
    );
    let refused = reader.send("POST", "/api/v1/feedback", Some(body.as_bytes())).await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert!(refused.json()["error"].as_str().unwrap().contains("network:feedback"), "{}", refused.body);
    assert_eq!(
        reader.get_json("/api/v1/models/status").await.1["feedback"]["labelled"],
        0,
        "nothing labelled"
    );

    let analyst =
        ApiClient::new(served.http, Some(create_token(data_dir.path(), "analyst", "network:feedback")));
    let accepted = analyst.send("POST", "/api/v1/feedback", Some(body.as_bytes())).await;
    assert_eq!(accepted.status, 200, "{}", accepted.body);
    let feedback = &accepted.json()["feedback"];
    assert_eq!(
        (feedback["labelled"].as_u64(), feedback["anomalies"].as_u64()),
        (Some(8), Some(4)),
        "{feedback:#}"
    );
    let flagged = results.iter().map(|result| result["is_anomaly"] == true);
    let correct = flagged.zip(0..).filter(|&(flag, index)| flag == (index >= 4)).count();
    let accuracy = correct as f64 / 8.0;

    // Prometheus scrapes the figures measured on the labels beside those of training.
    let answer = admin.send("GET", "/metrics", None).await;
    assert_eq!(answer.status, 200);
    let metrics = answer.body;
    assert_eq!(
        metric(&metrics, "model_accuracy{model=\"ensemble\",source=\"feedback\"}"),
        Some(accuracy),
        "{metrics}"
    );
    let held_out = metric(&metrics, "model_accuracy{model=\"ensemble\",source=\"held_out\"}").unwrap();
    assert!((0.5..=1.0).contains(&held_out), "{metrics}");
    assert!(metric(&metrics, "model_roc_auc{model=\"ensemble\",source=\"feedback\"}").is_some(), "{metrics}");
    assert_eq!(metric(&metrics, "network_feedback_labelled "), Some(8.0), "{metrics}");

    // Who labelled is in the audit table.
    let (status, audit) = admin.get_json("/api/v1/audit?action=model.feedback").await;
    assert_eq!(status, 200, "{audit}");
    let events = audit["events"].as_array().unwrap();
    assert!(
        events.iter().any(|event| event["principal"].as_str().unwrap().starts_with("token:analyst")
            && event["outcome"] == "ok"),
        "{audit:#}"
    );
}
