//! The behaviour model: training on a slice of MalBehavD, determinism, file
//! round trip, bad model files, and the committed model on real reports.

use std::path::PathBuf;

use sentinel_behaviour::{
    ApiCallSequence, BehaviourModel, CapeLimits, LabelledSequence, ModelError, TrainingOptions,
    load_labelled_csv, parse_cape_report, train, train_detector_only,
};
use sentinel_testkit::Prerequisite;

fn shared(path: &str) -> Option<PathBuf> {
    let full = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data").join(path);
    if full.exists() {
        return Some(full);
    }
    Prerequisite::Data.missing(format!("{} is absent (../shared/data not mounted)", full.display()));
    None
}

/// A quick configuration for tests: the real pipeline with a small search.
fn quick() -> TrainingOptions {
    let defaults = TrainingOptions::default();
    TrainingOptions {
        c_grid: vec![1.0, 10.0],
        folds: 3,
        max_iterations: 150,
        trees: sentinel_gbdt::Params { max_iter: 100, learning_rate: 0.1, ..defaults.trees.clone() },
        ..defaults
    }
}

/// Every third row of MalBehavD: a small but real slice.
fn slice() -> Option<Vec<LabelledSequence>> {
    let path = shared("malware/dynamic/malbehavd/malbehavd_v1_train.csv")?;
    Some(load_labelled_csv(&path).unwrap().into_iter().step_by(3).collect())
}

#[test]
fn training_on_a_slice_is_accurate_deterministic_and_round_trips() {
    let Some(rows) = slice() else { return };
    let (model, report) = train(&rows, None, vec!["slice".into()], &quick()).unwrap();
    assert!(report.holdout.roc_auc > 0.93, "held-out AUC {}", report.holdout.roc_auc);
    assert!(report.test_rows > 50);

    let (again, _) = train(&rows, None, vec!["slice".into()], &quick()).unwrap();
    assert_eq!(model.to_json(), again.to_json(), "same data and seed, same model");
    assert_eq!(model.version(), again.version());
    let other_seed = TrainingOptions { seed: 7, ..quick() };
    let (different, _) = train(&rows, None, vec!["slice".into()], &other_seed).unwrap();
    assert_ne!(model.version(), different.version());

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("behaviour.json");
    model.save(&path).unwrap();
    let loaded = BehaviourModel::load(&path).unwrap();
    assert_eq!(loaded.version(), model.version());
    assert_eq!(loaded.threshold(), model.threshold());
    for row in rows.iter().take(50) {
        let a = model.score(&row.calls);
        let b = loaded.score(&row.calls);
        // serde_json's float parsing may differ from the written value by one ulp.
        assert!((a.score - b.score).abs() < 1e-12);
        assert_eq!(a.malicious, b.malicious);
        assert_eq!(a.top_ngrams.len(), b.top_ngrams.len());
        assert!((0.0..=1.0).contains(&a.score));
        assert_eq!(a.malicious, a.score >= model.threshold());
        assert!(a.top_ngrams.len() <= 5 && a.family.is_none());
    }
}

#[test]
fn training_refuses_one_class_data() {
    let Some(rows) = slice() else { return };
    let benign: Vec<&LabelledSequence> = rows.iter().filter(|r| !r.malicious).collect();
    let error = train_detector_only(&benign, &quick()).unwrap_err();
    assert!(error.to_string().contains("malicious and benign"), "{error}");
}

fn valid_model_json() -> serde_json::Value {
    serde_json::from_slice(&BehaviourModel::builtin().unwrap().to_json()).unwrap()
}

#[test]
fn bad_model_files_are_clear_errors() {
    let check = |bytes: &[u8], expected: &str| {
        let error = BehaviourModel::from_json(bytes).unwrap_err();
        assert!(error.to_string().contains(expected), "expected `{expected}` in `{error}`");
    };
    check(b"", "not valid JSON");
    check(b"\x00\xff garbage", "not valid JSON");
    check(br#"{"format": "sentinel-static", "format_version": 1}"#, "not a behaviour model");
    check(br#"{"format": "sentinel-behaviour", "format_version": 99}"#, "not a behaviour model");
    // A model of the previous format (linear detector only) is refused by version, with both versions named.
    check(
        br#"{"format": "sentinel-behaviour", "format_version": 1}"#,
        "version 1); expected \"sentinel-behaviour\" version 2",
    );

    let mut json = valid_model_json();
    let text = json.to_string();
    check(&text.as_bytes()[..text.len() / 2], "not valid JSON");

    json["detector"]["weights"].as_array_mut().unwrap().pop();
    check(json.to_string().as_bytes(), "weights for");

    let mut json = valid_model_json();
    json["detector"]["threshold"] = serde_json::json!(1.5);
    check(json.to_string().as_bytes(), "threshold");

    let mut json = valid_model_json();
    json["detector"]["space"]["max_n"] = serde_json::json!(9);
    check(json.to_string().as_bytes(), "max_n");

    let mut json = valid_model_json();
    json["detector"]["surprise"] = serde_json::json!(1);
    check(json.to_string().as_bytes(), "unknown field");

    let mut json = valid_model_json();
    json["detector"]["profile"]["apis"].as_array_mut().unwrap().pop();
    check(json.to_string().as_bytes(), "the trees read");

    let mut json = valid_model_json();
    json["detector"]["stacking"] = serde_json::json!([1.0, 1.0]);
    check(json.to_string().as_bytes(), "not valid JSON");

    let mut json = valid_model_json();
    json["detector"]["trees"]["version"] = serde_json::json!(7);
    check(json.to_string().as_bytes(), "format version 7 is not supported");

    let mut json = valid_model_json();
    if json["families"].is_object() {
        json["families"]["classes"] = serde_json::json!(["only-one"]);
        check(json.to_string().as_bytes(), "at least 2 classes");

        let mut json = valid_model_json();
        json["families"]["linear_weight"] = serde_json::json!(1.5);
        check(json.to_string().as_bytes(), "linear_weight");

        let mut json = valid_model_json();
        json["families"]["linear_weight"] = serde_json::json!(0.6);
        json["families"]["prefix_weight"] = serde_json::json!(0.6);
        check(json.to_string().as_bytes(), "sum to at most 1");

        let mut json = valid_model_json();
        json["families"]["linear_weight"] = serde_json::json!(0.5);
        json["families"]["prefix_weight"] = serde_json::json!(0.2);
        json["families"]["prefix"] = serde_json::Value::Null;
        check(json.to_string().as_bytes(), "prefix_weight without a prefix model");
    }
    let mut json = valid_model_json();
    if json["families"]["prefix"].is_object() {
        json["families"]["prefix"]["calls"] = serde_json::json!(0);
        check(json.to_string().as_bytes(), "calls must be");

        let mut json = valid_model_json();
        json["families"]["prefix"]["biases"].as_array_mut().unwrap().pop();
        check(json.to_string().as_bytes(), "one weight row and bias per class");
    }

    let dir = tempfile::tempdir().unwrap();
    let huge = dir.path().join("huge.json");
    std::fs::File::create(&huge).unwrap().set_len(65 << 20).unwrap();
    assert!(matches!(BehaviourModel::load(&huge), Err(ModelError::TooLarge { .. })));
    assert!(matches!(BehaviourModel::load(&dir.path().join("absent.json")), Err(ModelError::Io { .. })));
}

#[test]
fn family_files_without_a_blend_weight_blend_evenly() {
    // Files written before the weight was chosen out of fold averaged the two
    // models: they still load, and give that average. Such files had no start-up model either.
    let mut json = valid_model_json();
    if !json["families"].is_object() {
        return;
    }
    let families = json["families"].as_object_mut().unwrap();
    families.remove("prefix");
    families.remove("prefix_weight");
    let calls = ApiCallSequence::from_calls(["ntcreatefile", "regopenkeyexw", "ntclose", "ldrloaddll"]);
    json["families"]["linear_weight"] = serde_json::json!(0.5);
    let even = BehaviourModel::from_json(json.to_string().as_bytes()).unwrap().family(&calls).unwrap();
    json["families"].as_object_mut().unwrap().remove("linear_weight");
    let old = BehaviourModel::from_json(json.to_string().as_bytes()).unwrap().family(&calls).unwrap();
    assert_eq!(old, even);
    json["families"]["linear_weight"] = serde_json::json!(1.0);
    let linear = BehaviourModel::from_json(json.to_string().as_bytes()).unwrap().family(&calls).unwrap();
    assert_ne!(linear.probabilities, even.probabilities, "the weight is used");
}

#[test]
fn the_committed_model_scores_real_reports_and_edge_cases() {
    let model = BehaviourModel::builtin().unwrap();
    assert!(model.version().starts_with("behaviour-"));
    assert!(model.training().holdout_roc_auc.unwrap() > 0.97);
    // The committed model has the family classifier trained on families.csv.
    assert_eq!(
        model.families(),
        ["Adware", "Backdoor", "Downloader", "Dropper", "Spyware", "Trojan", "Virus", "Worms"]
    );
    assert!(model.training().families_holdout_macro_f1.unwrap() > 0.3);

    let empty = model.score(&ApiCallSequence::new());
    assert!(empty.family.is_none() && empty.known_ngrams == 0 && empty.score.is_finite());
    let unknown = model.score(&ApiCallSequence::from_calls(["NoSuchApiAtAll", "NorThisOne"]));
    assert_eq!(unknown.known_ngrams, 0);

    let Some(dir) = shared("malware/dynamic/cape-reports") else { return };
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if !path.to_string_lossy().ends_with(".lite.json") {
            continue;
        }
        let behaviour = parse_cape_report(&std::fs::read(&path).unwrap(), &CapeLimits::default()).unwrap();
        let verdict = model.score(&behaviour.sequence);
        assert!((0.0..=1.0).contains(&verdict.score), "{}", path.display());
        assert!(verdict.known_ngrams > 5, "{}: the CAPE names should hit the vocabulary", path.display());
        let family = verdict.family.unwrap();
        assert_eq!(family.probabilities.len(), 8);
        assert!((family.probabilities.values().sum::<f64>() - 1.0).abs() < 1e-9);
        assert_eq!(family.probabilities[&family.family], family.confidence);
        assert!(family.probabilities.values().all(|&p| p <= family.confidence));
        // The explanation names n-grams or profile features, strongest first.
        assert!(!verdict.top_ngrams.is_empty() && verdict.top_ngrams.len() <= 5);
        assert!(verdict.top_ngrams.windows(2).all(|w| w[0].contribution.abs() >= w[1].contribution.abs()));
    }
}
