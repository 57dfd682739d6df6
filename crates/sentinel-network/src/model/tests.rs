//! Fitting the ensemble on synthetic normal traffic and judging normal and anomalous items.

use std::cell::RefCell;

use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

use super::*;
use crate::features::{CATEGORICAL_FEATURES, NUMERIC_FEATURES, RawFeatures};

/// A web client's ordinary connection: a few KB each way, a short round trip, port 443.
fn normal_row(rng: &mut impl Rng) -> RawFeatures {
    let mut numbers = [None; NUMERIC_FEATURES.len()];
    for (index, value) in numbers.iter_mut().enumerate() {
        *value = Some(match NUMERIC_FEATURES[index] {
            "remote_is_loopback" => 0.0,
            "rtt_ms" => rng.random_range(10.0..30.0),
            "retransmits" | "process_failed_connects" | "host_failed_connects" => 0.0,
            _ => rng.random_range(500.0..5000.0),
        });
    }
    let categories = ["tcp", "ESTABLISHED", "ongoing", "well_known"].map(str::to_owned);
    RawFeatures { numbers, categories }
}

fn training_rows(count: usize) -> Vec<TrainingRow> {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(11);
    (0..count)
        .map(|_| TrainingRow {
            features: normal_row(&mut rng),
            process_name: Some("webclient".into()),
            anomalous: false,
        })
        .collect()
}

pub(crate) fn small_settings() -> ModelSettings {
    ModelSettings {
        min_training_rows: 200,
        isolation_forest_trees: 30,
        lof_max_rows: 200,
        svm_max_rows: 200,
        ..ModelSettings::default()
    }
}

/// Records the stages it is told about; refuses to go on past `stop_at`.
struct Stages {
    seen: RefCell<Vec<&'static str>>,
    stop_at: Option<&'static str>,
}

impl FitObserver for Stages {
    fn stage(&self, name: &'static str, _progress: f64) -> Result<(), FitError> {
        if self.stop_at == Some(name) {
            return Err(FitError::Cancelled);
        }
        self.seen.borrow_mut().push(name);
        Ok(())
    }
}

/// An ordinary item of the kind the fitted model was trained on.
pub(crate) fn fitted_rows_example() -> RawFeatures {
    normal_row(&mut Xoshiro256PlusPlus::seed_from_u64(5))
}

/// A model fitted on 600 normal rows.
pub(crate) fn fitted_bundle() -> ModelBundle {
    let stages = Stages { seen: RefCell::new(Vec::new()), stop_at: None };
    ModelBundle::fit(&training_rows(600), &small_settings(), &stages).unwrap()
}

#[test]
fn the_model_passes_ordinary_traffic_and_flags_a_burst_it_never_saw() {
    let bundle = fitted_bundle();
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(99);
    let mut buffer = Vec::new();
    let flagged = (0..200)
        .filter(|_| bundle.judge(&normal_row(&mut rng), Some("webclient"), &mut buffer).unwrap().is_anomaly)
        .count();
    assert!(flagged <= 10, "{flagged} of 200 ordinary connections flagged");

    // An exfiltration: a hundred megabytes out, to an odd port, from a process never seen.
    let mut burst = normal_row(&mut rng);
    for name in ["bytes_sent_delta", "bytes_sent_total", "send_rate", "process_send_rate", "host_send_rate"] {
        burst.numbers[NUMERIC_FEATURES.iter().position(|known| *known == name).unwrap()] = Some(1e8);
    }
    burst.categories[CATEGORICAL_FEATURES.iter().position(|known| *known == "remote_port_class").unwrap()] =
        "dynamic".into();
    let verdict = bundle.judge(&burst, Some("dropper"), &mut buffer).unwrap();
    assert!(verdict.is_anomaly, "{verdict:?}");
    assert!(verdict.score >= verdict.threshold);
    assert_eq!(verdict.models.len(), 3);
    assert!(!verdict.explanation.is_empty(), "an anomaly is explained");
    assert!(verdict.explanation.len() <= 3);

    // A batch gives the same verdicts as one at a time.
    let items = [normal_row(&mut rng), burst.clone()];
    let batch = bundle.judge_batch(&items, |features| (features, Some("webclient"))).unwrap();
    for (item, verdict) in items.iter().zip(&batch) {
        let single = bundle.judge(item, Some("webclient"), &mut buffer).unwrap();
        assert_eq!((single.score, single.is_anomaly), (verdict.score, verdict.is_anomaly));
    }
}

#[test]
fn the_fit_reports_its_stages_measures_every_model_and_stops_when_cancelled() {
    let stages = Stages { seen: RefCell::new(Vec::new()), stop_at: None };
    let bundle = ModelBundle::fit(&training_rows(600), &small_settings(), &stages).unwrap();
    let seen = stages.seen.into_inner();
    assert_eq!(seen.first(), Some(&"preprocessing"));
    assert!(seen.contains(&"isolation_forest") && seen.contains(&"one_class_svm"), "{seen:?}");
    let names: Vec<&str> =
        bundle.facts.evaluations.iter().map(|evaluation| evaluation.model_name.as_str()).collect();
    assert!(names.contains(&"ensemble"), "{names:?}");
    for evaluation in &bundle.facts.evaluations {
        assert!((0.0..=1.0).contains(&evaluation.false_positive_rate), "{evaluation:?}");
        assert_eq!(evaluation.precision, None, "no labelled anomalies, no precision");
    }
    assert!(bundle.thresholds().contains_key("ensemble"));

    let cancelling = Stages { seen: RefCell::new(Vec::new()), stop_at: Some("local_outlier_factor") };
    let cancelled = ModelBundle::fit(&training_rows(600), &small_settings(), &cancelling);
    assert!(matches!(cancelled, Err(FitError::Cancelled)));
    assert!(!cancelling.seen.into_inner().contains(&"one_class_svm"));
}

#[test]
fn too_little_history_is_refused_with_the_numbers() {
    let stages = Stages { seen: RefCell::new(Vec::new()), stop_at: None };
    match ModelBundle::fit(&training_rows(150), &small_settings(), &stages) {
        Err(FitError::TooFewRows { rows: 150, required: 200 }) => {}
        other => panic!("{:?}", other.map(|_| "a model")),
    }
}

/// Traffic repeats itself: here half the history is one idle socket seen over and over. LOF must
/// still have a threshold on the scale of the data, and see a burst of refused connects from a
/// socket with no owner (a scan of closed ports) that the forest cannot, as failed connects
/// were 0 throughout training.
#[test]
fn repeated_rows_leave_lof_a_threshold_it_can_use() {
    let mut rows = training_rows(400);
    let idle = rows[0].features.clone();
    for row in rows.iter_mut().skip(200) {
        row.features = idle.clone();
    }
    let stages = Stages { seen: RefCell::new(Vec::new()), stop_at: None };
    let bundle = ModelBundle::fit(&rows, &small_settings(), &stages).unwrap();
    let lof_threshold = bundle.thresholds()["local_outlier_factor"];
    assert!(lof_threshold < 10.0, "LOF's threshold is {lof_threshold}");

    let mut refused = normal_row(&mut Xoshiro256PlusPlus::seed_from_u64(3));
    for name in ["process_failed_connects", "host_failed_connects"] {
        refused.numbers[NUMERIC_FEATURES.iter().position(|known| *known == name).unwrap()] = Some(60.0);
    }
    let verdict = bundle.judge(&refused, None, &mut Vec::new()).unwrap();
    let lof = verdict.models.iter().find(|model| model.model == "local_outlier_factor").unwrap();
    assert!(lof.is_anomaly, "{verdict:?}");
}
