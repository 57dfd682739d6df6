//! The HTTP API over real sockets on 127.0.0.1: warm-up, error handling, ingestion of agents'
//! snapshots, training jobs, the model store with rollback, and analysis with explanations.

mod common;

use std::time::{Duration, SystemTime};

use sentinel_store::{ModelKind, NetworkStore, Store, StoreSettings, WriterSettings};
use sentinel_testkit::connection_records::connection_record as record;
use serde_json::json;

/// Snapshots of an ordinary web client: 20 connections to port 443 whose counters grow, a
/// third of them replaced each second.
fn ordinary_snapshots(count: u64) -> Vec<serde_json::Value> {
    let start = SystemTime::now() - Duration::from_secs(count + 5);
    (0..count)
        .map(|second| {
            let at = start + Duration::from_secs(second);
            let connections: Vec<serde_json::Value> = (0..20u64)
                .map(|slot| {
                    let generation = (second + slot) / 3;
                    let age = (second + slot) % 3 + 1;
                    let local_port = 40_000 + (slot * 100 + generation) as u16;
                    let sent = age * (300 + (slot * 37) % 200);
                    let received = age * (2000 + (slot * 131) % 1500);
                    record("agent-1", "webclient", 443, local_port, sent, received, at)
                })
                .collect();
            json!({
                "schema_version": 1,
                "host": "agent-1",
                "timestamp": humantime::format_rfc3339_micros(at).to_string(),
                "connections": connections,
            })
        })
        .collect()
}

/// Ingests 40 snapshots of 20 connections and waits until all 800 rows are stored: a training
/// started earlier would learn from whichever part had been written, a different model each run.
async fn ingest_history(address: std::net::SocketAddr) {
    for snapshot in ordinary_snapshots(40) {
        let (status, body) = common::post(address, "/api/v1/ingest", &snapshot).await;
        assert_eq!(status, 202, "{body}");
    }
    // Every snapshot stored (none left in the journal): the model is trained on all of them.
    common::wait_for_status(address, Duration::from_secs(20), |status| {
        status["storage"]["pending_snapshots"] == 0 && status["warmup"]["rows"].as_u64().unwrap() >= 800
    })
    .await;
}

async fn train(address: std::net::SocketAddr) -> serde_json::Value {
    let (status, job) = common::post(address, "/api/v1/train", &json!({})).await;
    assert_eq!(status, 202, "{job}");
    let id = job["id"].as_u64().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (status, job) = common::get(address, &format!("/api/v1/train/{id}")).await;
        assert_eq!(status, 200, "{job}");
        if job["state"] != "running" {
            return job;
        }
        assert!(tokio::time::Instant::now() < deadline, "training did not finish");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_fresh_service_says_it_is_learning_and_raises_no_verdict() {
    let dir = tempfile::tempdir().unwrap();
    let (service, address) = common::serve(common::quiet_settings(), dir.path()).await;
    let (status, body) = common::get(address, "/api/v1/models/status").await;
    assert_eq!(status, 200);
    assert_eq!(body["state"], "learning");
    assert!(body["model"].is_null());
    assert_eq!(body["warmup"]["required_secs"], 3600);
    assert_eq!(body["warmup"]["complete"], false);
    let (status, body) =
        common::post(address, "/api/v1/analyze", &json!({"features": [{"rtt_ms": 1.0}]})).await;
    assert_eq!(status, 409);
    assert!(body["error"].as_str().unwrap().contains("learning"), "{body}");
    // Training on no history fails with a reason, not a model trained on nothing.
    let job = train(address).await;
    assert_eq!(job["state"], "failed");
    assert!(job["error"].as_str().unwrap().contains("not enough history"), "{job}");
    service.shutdown().await;
}

#[tokio::test]
async fn malformed_requests_get_a_clear_json_4xx() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = common::quiet_settings();
    settings.api.max_batch_items = 10;
    settings.api.max_body_bytes = 64 * 1024;
    let (service, address) = common::serve(settings, dir.path()).await;
    let big = vec![b' '; 70 * 1024];
    let eleven = json!({"features": vec![json!({}); 11]}).to_string();
    let cases: Vec<(&str, &str, &[u8], u16, &str)> = vec![
        ("POST", "/api/v1/analyze", b"{not json", 400, "invalid JSON"),
        ("POST", "/api/v1/analyze", b"{\"records\": 5}", 400, "invalid type"),
        ("POST", "/api/v1/analyze", b"{\"recordz\": []}", 400, "unknown field"),
        ("POST", "/api/v1/analyze", b"{}", 400, "nothing to analyse"),
        ("POST", "/api/v1/analyze", b"[]", 400, "nothing to analyse"),
        ("POST", "/api/v1/analyze", b"null", 400, "invalid type"),
        ("POST", "/api/v1/ingest", b"{not json", 400, ""),
        ("POST", "/api/v1/ingest", b"null", 400, ""),
        ("POST", "/api/v1/analyze", eleven.as_bytes(), 413, "more than the limit of 10"),
        ("POST", "/api/v1/analyze", &big, 413, "larger than"),
        ("POST", "/api/v1/analyze", b"{\"features\": [{\"rtt_msec\": 1}]}", 400, "unknown feature"),
        ("POST", "/api/v1/analyze", b"{\"features\": [{\"rtt_ms\": \"fast\"}]}", 400, "rtt_ms"),
        ("POST", "/api/v1/analyze", b"{\"features\": [{\"rtt_ms\": -1}]}", 400, "rtt_ms"),
        ("POST", "/api/v1/analyze", b"{\"records\": [{\"host\": \"h\"}]}", 400, "records[0]"),
        (
            "POST",
            "/api/v1/ingest",
            b"{\"schema_version\": 2, \"host\": \"h\", \"timestamp\": \"2026-01-01T00:00:00Z\"}",
            400,
            "schema",
        ),
        ("POST", "/api/v1/ingest", b"[]", 400, ""),
        ("POST", "/api/v1/train", b"[1]", 400, "invalid"),
        ("GET", "/api/v1/train/abc", b"", 400, "not a number"),
        ("GET", "/api/v1/train/99", b"", 404, "no training job 99"),
        ("DELETE", "/api/v1/train/99", b"", 404, "no training job 99"),
        ("POST", "/api/v1/models/rollback", b"{\"version\": 99}", 404, "no model version 99"),
        ("POST", "/api/v1/models/rollback", b"{\"version\": \"x\"}", 400, "invalid"),
        ("GET", "/api/v1/predictions/recent?min_score=abc", b"", 400, "invalid query"),
        ("GET", "/api/v1/predictions/recent?colour=red", b"", 400, "invalid query"),
    ];
    for (method, path, body, expected, message) in cases {
        let (status, answer) = common::request(address, method, path, Some(body)).await;
        assert_eq!(
            status,
            expected,
            "{method} {path} {}: {answer}",
            String::from_utf8_lossy(&body[..body.len().min(80)])
        );
        let error =
            answer["error"].as_str().unwrap_or_else(|| panic!("{method} {path}: no JSON error: {answer}"));
        assert!(error.contains(message), "{method} {path}: {error:?} lacks {message:?}");
    }
    service.shutdown().await;
}

#[tokio::test]
async fn history_trains_versioned_models_that_explain_their_verdicts() {
    let dir = tempfile::tempdir().unwrap();
    let (service, address) = common::serve(common::quiet_settings(), dir.path()).await;
    ingest_history(address).await;

    let job = train(address).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["version"], 1);
    assert_eq!(job["progress"], 1.0);
    let status = common::get(address, "/api/v1/models/status").await.1;
    assert_eq!(status["state"], "ready", "{status:#}");
    let model = &status["model"];
    assert_eq!(model["version"], 1);
    assert!(model["training_rows"].as_u64().unwrap() >= 500);
    assert!(model["trained_at"].as_str().unwrap().ends_with('Z'));
    for name in ["isolation_forest", "local_outlier_factor", "one_class_svm", "ensemble"] {
        assert!(model["thresholds"][name].is_number(), "{name}: {model:#}");
    }
    let metrics = model["metrics"].as_array().unwrap();
    assert_eq!(metrics.len(), 4);
    for metric in metrics {
        let rate = metric["false_positive_rate"].as_f64().unwrap();
        assert!(rate <= 0.1, "{metric}");
    }

    // Ordinary records and one bulk upload from a process never seen before.
    let now = SystemTime::now();
    // A first sighting as the history has them (slot 3's counters at one second of age).
    let ordinary = record("agent-1", "webclient", 443, 40_001, 411, 2393, now);
    let odd = record("agent-1", "dropper", 4444, 50_000, 800_000_000, 100, now);
    let (status, body) = common::post(
        address,
        "/api/v1/analyze",
        &json!({"records": [ordinary, odd], "features": [{"bytes_sent_delta": 5e9, "process_name": "dropper", "state": "ESTABLISHED"}]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["model_version"], 1);
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    for result in results {
        let models = result["models"].as_array().unwrap();
        assert_eq!(models.len(), 3);
        assert!(models.iter().all(|model| model["score"].is_number() && model["threshold"].is_number()));
        let confidence = result["confidence"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&confidence));
    }
    assert_eq!(results[0]["is_anomaly"], false, "{:#}", results[0]);
    assert_eq!(results[1]["is_anomaly"], true, "{:#}", results[1]);
    assert_eq!(results[2]["is_anomaly"], true, "{:#}", results[2]);
    assert!(results[1]["score"].as_f64().unwrap() > results[0]["score"].as_f64().unwrap());
    let explained: Vec<&str> = results[1]["explanation"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item["feature"].as_str().unwrap())
        .collect();
    assert!(
        explained.iter().any(|feature| feature.starts_with("bytes_sent") || *feature == "process_rarity"),
        "{explained:?}"
    );
    // Compact: each result is the verdict alone, the connection being the one posted.
    for echoed in ["connection", "source", "observed_at", "model_version"] {
        assert!(results[1].get(echoed).is_none(), "{echoed} in {:#}", results[1]);
    }

    // A second version, then back to the first.
    let job = train(address).await;
    assert_eq!(job["version"], 2, "{job}");
    let (status, body) = common::post(address, "/api/v1/models/rollback", &json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["active"]["version"], 1);
    let status = common::get(address, "/api/v1/models/status").await.1;
    assert_eq!(status["model"]["version"], 1);
    let versions = status["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 2);
    assert!(versions.iter().any(|version| version["version"] == 1 && version["active"] == true));
    let (_, body) = common::post(address, "/api/v1/analyze", &json!({"features": [{"rtt_ms": 0.4}]})).await;
    assert_eq!(body["model_version"], 1);

    // A job cannot be cancelled once finished.
    let (status, finished) = common::request(address, "DELETE", "/api/v1/train/2", None).await;
    assert_eq!(status, 409, "{finished}");
    assert!(finished["error"].as_str().unwrap().contains("already finished"), "{finished}");
    service.shutdown().await;

    // A restart loads the active model from the store.
    let (service, address) = common::serve(common::quiet_settings(), dir.path()).await;
    let status = common::get(address, "/api/v1/models/status").await.1;
    assert_eq!(status["state"], "ready");
    service.shutdown().await;

    // The SPEC §2.3 tables hold what was ingested, trained and predicted.
    let network = NetworkStore::open(dir.path(), writer_settings()).unwrap();
    let counts = network.row_counts().unwrap();
    assert!(counts.connections >= 500, "{counts:?}");
    assert_eq!(counts.connections, counts.features);
    assert!(counts.model_metrics >= 8, "{counts:?}");
    // The registry keeps each trained version with where it came from and its activation.
    let registry = Store::open(dir.path(), StoreSettings::default()).unwrap();
    let versions = registry.model_versions(ModelKind::Network).unwrap();
    assert!(!versions.is_empty());
    assert!(versions[0].provenance.data["training_rows"].as_u64().unwrap() >= 500, "{versions:?}");
    assert!(versions.iter().filter(|version| version.active).count() == 1, "{versions:?}");
}

fn writer_settings() -> WriterSettings {
    WriterSettings {
        batch: 100,
        flush_interval: Duration::from_millis(50),
        queue: 1000,
        retention: Duration::from_secs(30 * 86_400),
    }
}

#[tokio::test]
async fn a_cancelled_training_job_ends_cancelled_and_activates_no_model() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = common::quiet_settings();
    // A forest this large takes seconds to fit: far longer than the cancellation takes to
    // arrive, so the job is certainly running when it does.
    settings.model.isolation_forest_trees = 20_000;
    let (service, address) = common::serve(settings, dir.path()).await;
    ingest_history(address).await;

    let (status, job) = common::post(address, "/api/v1/train", &json!({})).await;
    assert_eq!(status, 202, "{job}");
    let id = job["id"].as_u64().unwrap();
    let (status, cancelling) = common::request(address, "DELETE", &format!("/api/v1/train/{id}"), None).await;
    assert_eq!(status, 202, "the job is running: {cancelling}");
    assert_eq!(cancelling["state"], "running", "{cancelling}");

    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let job = loop {
        let (_, job) = common::get(address, &format!("/api/v1/train/{id}")).await;
        if job["state"] != "running" {
            break job;
        }
        assert!(tokio::time::Instant::now() < deadline, "the cancelled job never stopped: {job}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(job["state"], "cancelled", "{job}");
    assert!(job["progress"].as_f64().unwrap() < 1.0, "{job}");
    assert!(job.get("version").is_none(), "{job}");

    // No version was saved and none is active: the service is still learning.
    let status = common::get(address, "/api/v1/models/status").await.1;
    assert_eq!(status["state"], "learning", "{status:#}");
    assert!(status["model"].is_null(), "{status:#}");
    assert_eq!(status["versions"], json!([]), "{status:#}");
    service.shutdown().await;
}

#[tokio::test]
async fn ingested_records_are_scored_and_streamed_on_the_websocket() {
    use futures_util::StreamExt;

    let dir = tempfile::tempdir().unwrap();
    let (service, address) = common::serve(common::quiet_settings(), dir.path()).await;
    ingest_history(address).await;
    assert_eq!(train(address).await["state"], "succeeded");
    let (mut socket, _) =
        tokio_tungstenite::connect_async(format!("ws://{address}/ws/realtime?process=dropper"))
            .await
            .unwrap();
    let now = SystemTime::now();
    let snapshot = json!({
        "schema_version": 1,
        "host": "agent-1",
        "timestamp": humantime::format_rfc3339_micros(now).to_string(),
        "connections": [
            record("agent-1", "webclient", 443, 41_000, 300, 2000, now),
            record("agent-1", "dropper", 4444, 51_000, 900_000_000, 10, now),
        ],
    });
    let (status, body) = common::post(address, "/api/v1/ingest", &snapshot).await;
    assert_eq!(status, 202, "{body}");
    let message =
        tokio::time::timeout(Duration::from_secs(5), socket.next()).await.unwrap().unwrap().unwrap();
    let result: serde_json::Value = serde_json::from_str(message.to_text().unwrap()).unwrap();
    assert_eq!(result["source"], "agent");
    assert_eq!(result["connection"]["process_name"], "dropper");
    assert_eq!(result["is_anomaly"], true, "{result:#}");
    service.shutdown().await;
}

#[tokio::test]
async fn a_history_that_never_shows_a_feature_still_trains() {
    // A Windows agent without RTT or retransmit counters, whose connections are each seen once:
    // `rtt_ms`, `retransmits`, `send_rate` and `receive_rate` are missing from every row.
    let dir = tempfile::tempdir().unwrap();
    let (service, address) = common::serve(common::quiet_settings(), dir.path()).await;
    let start = SystemTime::now() - Duration::from_secs(60);
    for second in 0..40u64 {
        let at = start + Duration::from_secs(second);
        let connections: Vec<serde_json::Value> = (0..10u64)
            .map(|slot| {
                let mut record =
                    record("win-1", "outlook.exe", 443, (41_000 + second * 10 + slot) as u16, 900, 7000, at);
                record["rtt_us"] = serde_json::Value::Null;
                record["retransmits"] = serde_json::Value::Null;
                record
            })
            .collect();
        let snapshot = json!({
            "schema_version": 1,
            "host": "win-1",
            "timestamp": humantime::format_rfc3339_micros(at).to_string(),
            "connections": connections,
        });
        let (status, body) = common::post(address, "/api/v1/ingest", &snapshot).await;
        assert_eq!(status, 202, "{body}");
    }
    common::wait_for_status(address, Duration::from_secs(20), |status| {
        status["storage"]["pending_snapshots"] == 0 && status["warmup"]["rows"].as_u64().unwrap() >= 400
    })
    .await;
    let job = train(address).await;
    assert_eq!(job["state"], "succeeded", "{job:#}");
    let (status, body) = common::post(
        address,
        "/api/v1/analyze",
        &json!({"features": [{"rtt_ms": 3.0, "bytes_sent_delta": 900}]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    service.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analyses_beyond_max_items_in_flight_are_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = common::quiet_settings();
    settings.api.max_batch_items = 3000;
    settings.api.max_items_in_flight = 3000;
    let (service, address) = common::serve(settings, dir.path()).await;
    ingest_history(address).await;
    assert_eq!(train(address).await["state"], "succeeded");
    // Six full batches at once: one fits at a time, the others are refused, not queued.
    let batch = json!({"features": vec![json!({"rtt_ms": 3.0, "bytes_sent_delta": 900}); 3000]});
    let answers =
        futures_util::future::join_all((0..6).map(|_| common::post(address, "/api/v1/analyze", &batch)))
            .await;
    let refused: Vec<&serde_json::Value> =
        answers.iter().filter(|(status, _)| *status == 503).map(|(_, body)| body).collect();
    assert!(!refused.is_empty(), "all six ran at once");
    assert!(refused.iter().all(|body| body["error"].as_str().unwrap().contains("max_items_in_flight")));
    assert!(answers.iter().all(|(status, _)| *status == 200 || *status == 503), "{answers:?}");
    assert!(answers.iter().any(|(status, _)| *status == 200), "{answers:?}");
    // Their permits are back once they are answered.
    let (status, body) = common::post(address, "/api/v1/analyze", &batch).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"].as_array().unwrap().len(), 3000);
    service.shutdown().await;
}
