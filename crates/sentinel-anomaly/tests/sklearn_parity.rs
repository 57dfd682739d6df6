//! The engine against scikit-learn 1.9 on the same inputs: the expected values
//! come from `fixtures/make_fixtures.py` (committed with its output), so these
//! tests need no Python at run time.

use sentinel_anomaly::{
    ColumnKind, Detector, IsolationForest, IsolationForestParams, LocalOutlierFactor, LofParams, Matrix,
    MissingPolicy, OneClassSvm, OneClassSvmParams, PreprocessParams, Preprocessor, Scaling, Value,
};
use sentinel_metrics::{Confusion, average_precision, roc_auc};
use serde_json::Value as Json;

fn fixtures() -> Json {
    serde_json::from_str(include_str!("fixtures/sklearn_fixtures.json")).expect("fixture file is JSON")
}

fn matrix(value: &Json) -> Matrix {
    let rows: Vec<Vec<f64>> = serde_json::from_value(value.clone()).expect("a list of rows");
    Matrix::from_rows(&rows).expect("finite rows")
}

fn floats(value: &Json) -> Vec<f64> {
    serde_json::from_value(value.clone()).expect("a list of numbers")
}

fn labels(value: &Json) -> Vec<bool> {
    floats(value).into_iter().map(|v| v != 0.0).collect()
}

#[test]
fn lof_novelty_scores_match_scikit_learn() {
    let f = fixtures();
    let lof = LocalOutlierFactor::fit(&matrix(&f["train"]), &LofParams::default()).unwrap();
    let ours = lof.score(&matrix(&f["test"])).unwrap();
    for (ours, theirs) in ours.iter().zip(floats(&f["lof_score_samples"])) {
        // scikit-learn's score_samples is the negated LOF.
        assert!((ours + theirs).abs() < 1e-9, "LOF {ours} vs scikit-learn {}", -theirs);
    }
}

#[test]
fn lof_contamination_threshold_matches_scikit_learn_offset() {
    let f = fixtures();
    let params =
        LofParams { contamination: sentinel_anomaly::Contamination::Fraction(0.1), ..LofParams::default() };
    let lof = LocalOutlierFactor::fit(&matrix(&f["train"]), &params).unwrap();
    let offset = f["lof_contaminated_offset"].as_f64().unwrap();
    assert!((lof.threshold() + offset).abs() < 1e-9, "threshold {} vs offset {offset}", lof.threshold());
}

fn assert_svm_matches(nu: f64, expected: &[f64]) {
    let f = fixtures();
    let params = OneClassSvmParams { nu, ..OneClassSvmParams::default() };
    let svm = OneClassSvm::fit(&matrix(&f["train"]), &params).unwrap();
    let ours = svm.score(&matrix(&f["test"])).unwrap();
    for (ours, theirs) in ours.iter().zip(expected) {
        // Both solvers stop at the same KKT tolerance (1e-3), not at the exact optimum.
        assert!((ours + theirs).abs() < 2e-3, "SVM {ours} vs scikit-learn {}", -theirs);
    }
}

#[test]
fn one_class_svm_decision_function_matches_scikit_learn() {
    let f = fixtures();
    assert_svm_matches(0.5, &floats(&f["svm_decision_function"]));
    assert_svm_matches(0.1, &floats(&f["svm_nu01_decision_function"]));
    let svm = OneClassSvm::fit(&matrix(&f["train"]), &OneClassSvmParams::default()).unwrap();
    let expected = f["svm_n_support"].as_u64().unwrap() as usize;
    assert!(svm.n_support_vectors().abs_diff(expected) <= 2, "{} vs {expected}", svm.n_support_vectors());
}

#[test]
fn isolation_forest_ranks_like_scikit_learn() {
    let f = fixtures();
    let (train, test, labels) = (matrix(&f["train"]), matrix(&f["test"]), labels(&f["labels"]));
    let aucs: Vec<f64> = (0..10)
        .map(|seed| {
            let params = IsolationForestParams { seed, ..IsolationForestParams::default() };
            roc_auc(&IsolationForest::fit(&train, &params).unwrap().score(&test).unwrap(), &labels).unwrap()
        })
        .collect();
    let mean = aucs.iter().sum::<f64>() / aucs.len() as f64;
    let expected = f["forest_auc_mean"].as_f64().unwrap();
    assert!((mean - expected).abs() < 0.01, "mean AUC over 10 seeds {mean} vs scikit-learn {expected}");
    // The score scale is scikit-learn's too (2^(−E[h]/c(ψ))), not just the ranking.
    let forest = IsolationForest::fit(&train, &IsolationForestParams::default()).unwrap();
    let mean_score = forest.score(&train).unwrap().iter().sum::<f64>() / train.rows() as f64;
    let expected = f["forest_mean_train_score"].as_f64().unwrap();
    assert!((mean_score - expected).abs() < 0.01, "mean training score {mean_score} vs {expected}");
}

#[test]
fn metrics_match_scikit_learn() {
    let f = fixtures();
    let (scores, labels) = (floats(&f["metric_scores"]), labels(&f["metric_labels"]));
    let close = |ours: f64, key: &str| {
        let theirs = f[key].as_f64().unwrap();
        assert!((ours - theirs).abs() < 1e-12, "{key}: {ours} vs scikit-learn {theirs}");
    };
    close(roc_auc(&scores, &labels).unwrap(), "roc_auc");
    close(average_precision(&scores, &labels).unwrap(), "average_precision");
    let confusion =
        Confusion::at_threshold(&scores, &labels, f["metric_threshold"].as_f64().unwrap()).unwrap();
    close(confusion.precision(), "precision");
    close(confusion.recall(), "recall");
    close(confusion.f1(), "f1");
    close(confusion.accuracy(), "accuracy");
    close(confusion.false_positive_rate(), "false_positive_rate");
}

fn table<'a>(numeric: &[Vec<f64>], categories: &'a [String]) -> Vec<Vec<Value<'a>>> {
    numeric
        .iter()
        .zip(categories)
        .map(|(n, c)| vec![Value::Number(n[0]), Value::Number(n[1]), Value::Category(c)])
        .collect()
}

#[test]
fn preprocessing_matches_scikit_learn_scalers_and_one_hot() {
    let f = fixtures();
    let numeric_train: Vec<Vec<f64>> = serde_json::from_value(f["table_numeric_train"].clone()).unwrap();
    let categories_train: Vec<String> = serde_json::from_value(f["table_categories_train"].clone()).unwrap();
    let numeric_test: Vec<Vec<f64>> = serde_json::from_value(f["table_numeric_test"].clone()).unwrap();
    let categories_test: Vec<String> = serde_json::from_value(f["table_categories_test"].clone()).unwrap();
    let (train, test) = (table(&numeric_train, &categories_train), table(&numeric_test, &categories_test));
    let one_hot: Vec<Vec<f64>> = serde_json::from_value(f["one_hot"].clone()).unwrap();
    let cases = [
        (Scaling::Standard, ColumnKind::Numeric, "standard_scaled"),
        (Scaling::MinMax, ColumnKind::Numeric, "minmax_scaled"),
        (Scaling::Robust, ColumnKind::Numeric, "robust_scaled"),
        (Scaling::MinMax, ColumnKind::LogNumeric, "log_minmax_scaled"),
    ];
    for (scaling, kind, key) in cases {
        let schema = [kind, kind, ColumnKind::Categorical];
        let params = PreprocessParams { scaling, missing: MissingPolicy::Reject };
        let preprocessor = Preprocessor::fit(&schema, &train, &params).unwrap();
        let encoded = preprocessor.transform(&test).unwrap();
        let expected: Vec<Vec<f64>> = serde_json::from_value(f[key].clone()).unwrap();
        for (row, (numeric, categories)) in expected.iter().zip(&one_hot).enumerate() {
            let ours = encoded.row(row);
            let theirs: Vec<f64> = numeric.iter().chain(categories).copied().collect();
            for (a, b) in ours.iter().zip(&theirs) {
                assert!((a - b).abs() < 1e-9, "{key} row {row}: {ours:?} vs {theirs:?}");
            }
        }
    }
}
