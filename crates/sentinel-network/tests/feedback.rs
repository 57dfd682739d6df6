//! Analysts' feedback over real sockets on 127.0.0.1: labels on stored predictions, the figures
//! measured from them (checked against the verdicts the API gave), `model_metrics`, the model
//! status, the ensemble learning from the labels (and again after a restart), and every
//! malformed request refused with nothing labelled.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use sentinel_store::{MetricsSource, NetworkStore, WriterSettings};
use sentinel_testkit::connection_records::{connection_record as record, web_client_history};
use serde_json::{Value, json};

/// Quick models that combine by stacking, store `/api/v1/analyze` results (so that they have ids)
/// and measure feedback from 10 labels, learning from 5 of each class.
fn settings() -> sentinel_network::NetworkSettings {
    let mut settings = common::quiet_settings();
    settings.model.combination = sentinel_anomaly::Combination::Stacking;
    settings.storage.store_analyze_requests = true;
    settings.feedback.min_labels = 10;
    settings.feedback.min_labels_to_learn = 5;
    settings.feedback.max_batch = 50;
    settings.feedback.max_note_chars = 40;
    settings
}

/// Two minutes of an ordinary web client, ingested and stored, then a model trained on it.
async fn trained(address: SocketAddr) {
    let start = SystemTime::now() - Duration::from_secs(125);
    for snapshot in web_client_history("history", start, 120) {
        let (status, body) = common::post(address, "/api/v1/ingest", &snapshot).await;
        assert_eq!(status, 202, "{body}");
    }
    common::wait_for_status(address, Duration::from_secs(30), |status| {
        status["storage"]["pending_snapshots"] == 0 && status["warmup"]["rows"].as_u64().unwrap() >= 300
    })
    .await;
    let (status, job) = common::post(address, "/api/v1/train", &json!({})).await;
    assert_eq!(status, 202, "{job}");
    common::wait_for_status(address, Duration::from_secs(60), |status| status["state"] == "ready").await;
}

/// Scores 12 ordinary connections and 12 bulk uploads from an unknown process: their results,
/// ordinary ones first.
async fn analysed(address: SocketAddr) -> Vec<Value> {
    let now = SystemTime::now();
    // As the history has them: 400 bytes out and 2,500 in per second of age.
    let ordinary = (0..12u64).map(|slot| {
        let age = slot % 3 + 1;
        record("history", "webclient", 443, 41_000 + slot as u16, age * 400, age * 2500, now)
    });
    let odd = (0..12u64).map(|n| {
        record("history", "dropper", 4444 + n as u16, 50_000 + n as u16, 800_000_000 + n * 1000, 100, now)
    });
    let records: Vec<Value> = ordinary.chain(odd).collect();
    let (status, body) = common::post(address, "/api/v1/analyze", &json!({ "records": records })).await;
    assert_eq!(status, 200, "{body}");
    let results = body["results"].as_array().unwrap().clone();
    assert_eq!(results.len(), 24);
    results
}

/// The accuracy, precision, recall and false-positive rate of `flags` against `truth`.
fn figures(flags: &[bool], truth: &[bool]) -> (f64, f64, f64, f64) {
    let count = |flag: bool, label: bool| {
        flags.iter().zip(truth).filter(|&(&f, &t)| f == flag && t == label).count() as f64
    };
    let (tp, fp, tn, fn_) = (count(true, true), count(true, false), count(false, false), count(false, true));
    let ratio = |a: f64, b: f64| if b == 0.0 { 0.0 } else { a / b };
    (ratio(tp + tn, tp + fp + tn + fn_), ratio(tp, tp + fp), ratio(tp, tp + fn_), ratio(fp, fp + tn))
}

fn labels(results: &[Value], truth: &[bool]) -> Vec<Value> {
    results
        .iter()
        .zip(truth)
        .map(|(result, &anomalous)| {
            json!({
                "id": result["id"],
                "verdict": if anomalous { "true_anomaly" } else { "false_positive" },
                "note": "checked by hand",
            })
        })
        .collect()
}

#[tokio::test]
async fn labelled_predictions_are_measured_stored_and_learned_from() {
    let dir = tempfile::tempdir().unwrap();
    let (service, address) = common::serve(settings(), dir.path()).await;
    trained(address).await;
    let before = common::get(address, "/api/v1/models/status").await.1;
    assert_eq!(before["feedback"]["labelled"], 0, "{:#}", before["feedback"]);
    assert_eq!(before["feedback"]["metrics"], json!([]));
    assert!(before["model"]["learned_from_feedback"].is_null());

    let results = analysed(address).await;
    let ids: Vec<i64> =
        results.iter().map(|result| result["id"].as_i64().expect("a stored result has an id")).collect();
    assert!(ids.windows(2).all(|pair| pair[1] == pair[0] + 1), "{ids:?}");
    let truth: Vec<bool> = (0..24).map(|index| index >= 12).collect();

    // Nine labels: below the minimum of ten, no figure yet.
    let (status, answer) =
        common::post(address, "/api/v1/feedback", &json!({ "labels": labels(&results[..9], &truth[..9]) }))
            .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["labelled"], 9);
    assert_eq!(answer["feedback"]["labelled"], 9);
    assert_eq!(answer["feedback"]["required"], 10);
    assert_eq!(answer["feedback"]["metrics"], json!([]));

    // All 24 (the nine again, replaced): figures for each model and the ensemble.
    let (status, answer) =
        common::post(address, "/api/v1/feedback", &json!({ "labels": labels(&results, &truth) })).await;
    assert_eq!(status, 200, "{answer}");
    let feedback = &answer["feedback"];
    assert_eq!(
        (feedback["labelled"].as_u64(), feedback["anomalies"].as_u64()),
        (Some(24), Some(12)),
        "{feedback:#}"
    );
    let metrics = feedback["metrics"].as_array().unwrap();
    let names: Vec<&str> = metrics.iter().map(|metric| metric["model"].as_str().unwrap()).collect();
    assert_eq!(names, ["isolation_forest", "local_outlier_factor", "one_class_svm", "ensemble"]);
    // The ensemble's figures are those of the verdicts the API gave, against the labels.
    let flags: Vec<bool> = results.iter().map(|result| result["is_anomaly"].as_bool().unwrap()).collect();
    let (accuracy, precision, recall, false_positive_rate) = figures(&flags, &truth);
    let ensemble = &metrics[3];
    assert_eq!(ensemble["samples"], 24);
    assert_eq!(ensemble["accuracy"].as_f64().unwrap(), accuracy, "{ensemble}");
    assert_eq!(ensemble["precision"].as_f64().unwrap(), precision, "{ensemble}");
    assert_eq!(ensemble["recall"].as_f64().unwrap(), recall, "{ensemble}");
    assert_eq!(ensemble["false_positive_rate"].as_f64().unwrap(), false_positive_rate, "{ensemble}");
    let auc = ensemble["auc_roc"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&auc), "{ensemble}");
    // And each member's, from its own decisions.
    for (index, metric) in metrics[..3].iter().enumerate() {
        let member: Vec<bool> =
            results.iter().map(|result| result["models"][index]["is_anomaly"].as_bool().unwrap()).collect();
        assert_eq!(metric["model"], results[0]["models"][index]["model"]);
        assert_eq!(metric["accuracy"].as_f64().unwrap(), figures(&member, &truth).0, "{metric}");
    }

    // 12 of each class, at least 5 needed: the stacked ensemble learned its combiner.
    let learning = &feedback["learning"];
    assert_eq!(
        (learning["applied"].as_bool(), learning["labels"].as_u64()),
        (Some(true), Some(24)),
        "{learning:#}"
    );
    let status = common::get(address, "/api/v1/models/status").await.1;
    assert_eq!(status["model"]["learned_from_feedback"], json!({"labels": 24, "anomalies": 12}));
    let threshold = |status: &Value| status["model"]["thresholds"]["ensemble"].as_f64().unwrap();
    assert_ne!(threshold(&status), threshold(&before), "the combiner, and so its threshold, changed");
    assert_eq!(status["feedback"]["metrics"], feedback["metrics"]);
    let learned_threshold = threshold(&status);
    service.shutdown().await;

    // Durable: the rows are in network.db, and a restart measures and learns again from them.
    let writer = WriterSettings {
        batch: 100,
        flush_interval: Duration::from_millis(50),
        queue: 100,
        retention: Duration::from_secs(30 * 86_400),
    };
    {
        let store = NetworkStore::open(dir.path(), writer).unwrap();
        assert_eq!(store.row_counts().unwrap().feedback, 24);
        let rows = store.model_metrics(MetricsSource::Feedback, 4).unwrap();
        let ensemble = rows.iter().find(|row| row.model_name == "ensemble").unwrap();
        assert_eq!((ensemble.samples, ensemble.anomalies, ensemble.accuracy), (24, 12, accuracy));
        store.close();
    }
    let (service, address) = common::serve(settings(), dir.path()).await;
    let status = common::wait_for_status(address, Duration::from_secs(10), |status| {
        !status["model"]["learned_from_feedback"].is_null()
    })
    .await;
    assert_eq!(status["feedback"]["labelled"], 24);
    assert_eq!(threshold(&status), learned_threshold, "the same labels, the same ensemble");
    service.shutdown().await;
}

#[tokio::test]
async fn bad_feedback_is_refused_and_labels_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (service, address) = common::serve(settings(), dir.path()).await;
    // No model and no result yet: any id is unknown.
    let (status, answer) =
        common::post(address, "/api/v1/feedback", &json!({"labels": [{"id": 1, "verdict": "anomaly"}]}))
            .await;
    assert_eq!(status, 404, "{answer}");
    trained(address).await;
    let results = analysed(address).await;
    let id = results[12]["id"].as_i64().unwrap();

    let long_note = "x".repeat(41);
    let too_many: Vec<Value> = (0..51).map(|n| json!({"id": id + n, "verdict": "normal"})).collect();
    let cases: Vec<(Value, u16, String)> = vec![
        (json!({"labels": []}), 400, "no label".into()),
        (json!({}), 400, "missing field `labels`".into()),
        (json!({"labels": [{"id": id, "verdict": "maybe"}]}), 400, "unknown variant".into()),
        (json!({"labels": [{"id": id}]}), 400, "missing field `verdict`".into()),
        (json!({"labels": [{"id": id, "verdict": "anomaly", "colour": 1}]}), 400, "unknown field".into()),
        (json!({"labels": [{"id": "x", "verdict": "anomaly"}]}), 400, "invalid type".into()),
        (
            json!({"labels": [{"id": 0, "verdict": "anomaly"}]}),
            400,
            "labels[0]: id must be at least 1".into(),
        ),
        (
            json!({"labels": [{"id": id, "verdict": "anomaly"}, {"id": id, "verdict": "normal"}]}),
            400,
            format!("labels[1]: id {id} is labelled twice"),
        ),
        (
            json!({"labels": [{"id": id, "verdict": "anomaly", "note": long_note}]}),
            400,
            "longer than 40".into(),
        ),
        (json!({ "labels": too_many }), 413, "more than the limit of 50".into()),
        // One unknown id among good ones: a 404 naming it, and nothing labelled.
        (
            json!({"labels": [{"id": id, "verdict": "anomaly"}, {"id": id + 1_000_000, "verdict": "normal"}]}),
            404,
            format!("{}", id + 1_000_000),
        ),
    ];
    for (body, expected, message) in cases {
        let (status, answer) = common::post(address, "/api/v1/feedback", &body).await;
        assert_eq!(status, expected, "{body}: {answer}");
        let error = answer["error"].as_str().unwrap_or_else(|| panic!("no JSON error: {answer}"));
        assert!(error.contains(&message), "{body}: {error:?} lacks {message:?}");
    }
    let (status, answer) = common::request(address, "POST", "/api/v1/feedback", Some(b"{not json")).await;
    assert_eq!((status, answer["error"].as_str().unwrap().contains("invalid JSON")), (400, true), "{answer}");
    let status = common::get(address, "/api/v1/models/status").await.1;
    assert_eq!(status["feedback"]["labelled"], 0, "{:#}", status["feedback"]);

    let (status, answer) =
        common::post(address, "/api/v1/feedback", &json!({"labels": [{"id": id, "verdict": "anomaly"}]}))
            .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["feedback"]["labelled"], 1);
    service.shutdown().await;
}
