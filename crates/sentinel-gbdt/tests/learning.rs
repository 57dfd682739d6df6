//! Behaviour of the booster on data whose answer is known: it must learn
//! non-linear functions, handle missing values, honour weights, be reproducible
//! under a seed, and survive a trip through its file format.

use sentinel_gbdt::{Booster, Dataset, EarlyStopping, GbdtError, Params, PlattScaling};
use sentinel_metrics::roc_auc;

/// A small deterministic generator so the tests need no extra dependency.
struct Lcg(u64);

impl Lcg {
    fn uniform(&mut self) -> f64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// `rows` rows of `features` uniform features in [-1, 1] labelled by `label`,
/// with `noise` of the labels flipped.
fn sample(
    rows: usize,
    features: usize,
    seed: u64,
    noise: f64,
    label: impl Fn(&[f64]) -> bool,
) -> (Vec<f64>, Vec<bool>) {
    let mut rng = Lcg(seed);
    let mut values = Vec::with_capacity(rows * features);
    let mut labels = Vec::with_capacity(rows);
    for _ in 0..rows {
        let row: Vec<f64> = (0..features).map(|_| rng.uniform() * 2.0 - 1.0).collect();
        let flip = rng.uniform() < noise;
        labels.push(label(&row) != flip);
        values.extend(row);
    }
    (values, labels)
}

fn xor(row: &[f64]) -> bool {
    (row[0] > 0.0) != (row[1] > 0.0)
}

fn auc_of(model: &Booster, values: &[f64], labels: &[bool]) -> f64 {
    roc_auc(&model.predict_margins(values).unwrap(), labels).unwrap()
}

#[test]
fn learns_xor_which_no_single_feature_explains() {
    let (values, labels) = sample(4000, 4, 1, 0.05, xor);
    let (test_values, test_labels) = sample(2000, 4, 2, 0.0, xor);
    let data = Dataset { values: &values, n_features: 4, labels: &labels, weights: None };
    let model = Booster::fit(&data, &Params { max_iter: 60, ..Params::default() }).unwrap();
    let auc = auc_of(&model, &test_values, &test_labels);
    assert!(auc > 0.97, "AUC {auc}");
    // The trivial baseline (any single feature as the score) is at chance level on XOR.
    let single: Vec<f64> = test_values.chunks(4).map(|r| r[0]).collect();
    let baseline = roc_auc(&single, &test_labels).unwrap();
    assert!((baseline - 0.5).abs() < 0.05 && auc > baseline + 0.4, "baseline {baseline}");
}

#[test]
fn respects_max_depth_and_max_leaf_nodes() {
    let (values, labels) = sample(2000, 3, 3, 0.0, |r| r[0] + r[1] * r[2] > 0.1);
    let data = Dataset { values: &values, n_features: 3, labels: &labels, weights: None };
    let params = Params {
        max_iter: 5,
        max_depth: Some(2),
        max_leaf_nodes: None,
        early_stopping: None,
        ..Params::default()
    };
    let model = Booster::fit(&data, &params).unwrap();
    assert_eq!(model.n_trees(), 5);
    let json: serde_json::Value = serde_json::from_slice(&model.to_json()).unwrap();
    for tree in json["trees"].as_array().unwrap() {
        // Depth 2: at most 4 leaves, 7 nodes.
        assert!(tree["left"].as_array().unwrap().len() <= 7);
    }
    let params = Params { max_iter: 5, max_leaf_nodes: Some(5), early_stopping: None, ..Params::default() };
    let model = Booster::fit(&data, &params).unwrap();
    let json: serde_json::Value = serde_json::from_slice(&model.to_json()).unwrap();
    for tree in json["trees"].as_array().unwrap() {
        let leaves = tree["left"].as_array().unwrap().iter().filter(|l| l.as_u64() == Some(0)).count();
        assert!((2..=5).contains(&leaves), "{leaves} leaves");
    }
}

#[test]
fn same_seed_same_model_and_other_seed_other_split() {
    let (values, labels) = sample(3000, 5, 4, 0.1, |r| r[0] * r[3] > 0.0);
    let data = Dataset { values: &values, n_features: 5, labels: &labels, weights: None };
    let params = Params { max_iter: 30, seed: 7, ..Params::default() };
    let first = Booster::fit(&data, &params).unwrap();
    let second = Booster::fit(&data, &params).unwrap();
    assert_eq!(first.to_json(), second.to_json());
    // The seed picks the early-stopping validation rows, so another seed trains on other rows.
    let other = Booster::fit(&data, &Params { seed: 8, ..params }).unwrap();
    assert_ne!(first.to_json(), other.to_json());
}

#[test]
fn round_trip_preserves_predictions_and_contributions_explain_them() {
    let (values, labels) = sample(2000, 3, 5, 0.05, xor);
    let data = Dataset { values: &values, n_features: 3, labels: &labels, weights: None };
    let model = Booster::fit(&data, &Params { max_iter: 20, ..Params::default() }).unwrap();
    let loaded = Booster::from_json(&model.to_json()).unwrap();
    assert!(loaded == model, "the loaded model differs");
    for row in values.chunks(3).take(50) {
        let margin = model.predict_margin(row).unwrap();
        assert_eq!(loaded.predict_margin(row).unwrap(), margin);
        let explained = model.contributions(row).unwrap();
        let total = explained.bias + explained.per_feature.iter().sum::<f64>();
        assert!((total - margin).abs() < 1e-9);
        // Feature 2 is irrelevant to XOR: it should explain far less than features 0 and 1.
        assert!(
            explained.per_feature[2].abs() < explained.per_feature[0].abs() + explained.per_feature[1].abs()
        );
    }
}

#[test]
fn incompatible_or_corrupt_files_are_clear_errors() {
    let (values, labels) = sample(500, 2, 6, 0.0, xor);
    let data = Dataset { values: &values, n_features: 2, labels: &labels, weights: None };
    let model =
        Booster::fit(&data, &Params { max_iter: 3, early_stopping: None, ..Params::default() }).unwrap();
    let mut json: serde_json::Value = serde_json::from_slice(&model.to_json()).unwrap();
    json["version"] = 99.into();
    match Booster::from_json(&serde_json::to_vec(&json).unwrap()) {
        Err(GbdtError::Format(message)) => assert!(message.contains("version 99"), "{message}"),
        other => panic!("expected a version error, got {other:?}"),
    }
    json["version"] = 1.into();
    json["n_features"] = (1u64 << 40).into();
    assert!(Booster::from_json(&serde_json::to_vec(&json).unwrap()).is_err());
    json["n_features"] = 2.into();
    json["trees"][0]["left"][0] = 0.into(); // A split without children: now a leaf, still valid.
    assert!(Booster::from_json(&serde_json::to_vec(&json).unwrap()).is_ok());
    json["trees"][0]["feature"][0] = 5.into();
    json["trees"][0]["left"][0] = 1000.into();
    assert!(Booster::from_json(&serde_json::to_vec(&json).unwrap()).is_err());
    assert!(Booster::from_json(b"not json").is_err());
    assert!(Booster::from_json(br#"{"format":"other","version":1}"#).is_err());
    assert!(matches!(model.predict_margin(&[1.0]), Err(GbdtError::WrongWidth { expected: 2, got: 1 })));
}

#[test]
fn learns_from_missing_values() {
    // The label is "feature 0 is missing or above 0.5": only the missing-value
    // direction of the splits can express it.
    let (mut values, _) = sample(3000, 2, 7, 0.0, |_| false);
    let mut rng = Lcg(70);
    let mut labels = Vec::new();
    for row in values.chunks_mut(2) {
        if rng.uniform() < 0.3 {
            row[0] = f64::NAN;
        }
        labels.push(row[0].is_nan() || row[0] > 0.5);
    }
    let data = Dataset { values: &values, n_features: 2, labels: &labels, weights: None };
    let model = Booster::fit(&data, &Params { max_iter: 30, ..Params::default() }).unwrap();
    assert!(model.predict_probability(&[f64::NAN, 0.0]).unwrap() > 0.9);
    assert!(model.predict_probability(&[0.0, 0.0]).unwrap() < 0.1);
    assert!(model.predict_probability(&[0.9, 0.0]).unwrap() > 0.9);
    // Missing values never seen in training still get a prediction.
    let p = model.predict_probability(&[0.2, f64::NAN]).unwrap();
    assert!((0.0..=1.0).contains(&p));
}

#[test]
fn weights_shift_the_decision() {
    // Pure noise: the model can only learn the weighted class balance.
    let (values, labels) = sample(2000, 2, 8, 0.0, |r| r[0] > 2.0);
    let mut rng = Lcg(80);
    let labels: Vec<bool> = labels.iter().map(|_| rng.uniform() < 0.5).collect();
    let weights: Vec<f64> = labels.iter().map(|&l| if l { 4.0 } else { 1.0 }).collect();
    let params = Params { max_iter: 10, early_stopping: None, ..Params::default() };
    let plain =
        Booster::fit(&Dataset { values: &values, n_features: 2, labels: &labels, weights: None }, &params)
            .unwrap();
    let weighted = Booster::fit(
        &Dataset { values: &values, n_features: 2, labels: &labels, weights: Some(&weights) },
        &params,
    )
    .unwrap();
    let mean =
        |m: &Booster| values.chunks(2).map(|r| m.predict_probability(r).unwrap()).sum::<f64>() / 2000.0;
    assert!((mean(&plain) - 0.5).abs() < 0.05);
    assert!((mean(&weighted) - 0.8).abs() < 0.05, "{}", mean(&weighted));
}

#[test]
fn early_stopping_stops_on_noise() {
    let (values, _) = sample(2000, 3, 9, 0.0, |_| false);
    let mut rng = Lcg(90);
    let labels: Vec<bool> = (0..2000).map(|_| rng.uniform() < 0.5).collect();
    let data = Dataset { values: &values, n_features: 3, labels: &labels, weights: None };
    let stopping = EarlyStopping { validation_fraction: 0.2, patience: 5, tolerance: 1e-7 };
    let model =
        Booster::fit(&data, &Params { max_iter: 200, early_stopping: Some(stopping), ..Params::default() })
            .unwrap();
    assert!(model.n_trees() < 50, "{} trees on noise", model.n_trees());
}

#[test]
fn bad_input_is_rejected() {
    let params = Params::default();
    let fit = |values: &[f64], labels: &[bool], weights: Option<&[f64]>| {
        Booster::fit(&Dataset { values, n_features: 2, labels, weights }, &params)
    };
    assert!(matches!(fit(&[1.0, 2.0, 3.0], &[true, false], None), Err(GbdtError::InvalidData(_))));
    assert!(matches!(fit(&[1.0; 4], &[true, true], None), Err(GbdtError::InvalidData(_))));
    assert!(matches!(fit(&[1.0; 4], &[true, false], Some(&[1.0, -1.0])), Err(GbdtError::InvalidData(_))));
    let bad = Params { learning_rate: 0.0, ..Params::default() };
    let data = Dataset { values: &[1.0; 4], n_features: 2, labels: &[true, false], weights: None };
    assert!(matches!(Booster::fit(&data, &bad), Err(GbdtError::InvalidParams(_))));
}

#[test]
fn platt_scaling_calibrates_booster_margins() {
    let (values, labels) = sample(4000, 2, 10, 0.2, |r| r[0] > 0.0);
    let (held_values, held_labels) = sample(4000, 2, 11, 0.2, |r| r[0] > 0.0);
    let data = Dataset { values: &values, n_features: 2, labels: &labels, weights: None };
    let model = Booster::fit(&data, &Params { max_iter: 30, ..Params::default() }).unwrap();
    let margins = model.predict_margins(&held_values).unwrap();
    let platt = PlattScaling::fit(&margins, &held_labels).unwrap();
    // 20 % label noise: a calibrated model says about 0.8 where it is sure.
    let p = platt.probability(model.predict_margin(&[0.9, 0.0]).unwrap());
    assert!((p - 0.8).abs() < 0.06, "{p}");
}
