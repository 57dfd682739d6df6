//! Behaviour of the engine's public API: errors on bad input, determinism,
//! persistence, thresholds, the ensemble.

use sentinel_anomaly::threshold::{AdaptiveThreshold, at_false_positive_rate, by_contamination};
use sentinel_anomaly::{
    AnomalyError, ColumnKind, Combination, Contamination, Detector, Ensemble, EnsembleParams,
    IsolationForest, IsolationForestParams, LocalOutlierFactor, LofParams, Matrix, MissingPolicy, Model,
    OneClassSvm, OneClassSvmParams, PreprocessParams, Preprocessor, RandomFeatureOneClassSvm,
    RandomFeatureParams, Scaling, Value, Weighting, load, save,
};
use sentinel_metrics::roc_auc;

/// A small deterministic data set: a Gaussian-like cloud (normal) and far points.
fn cloud(rows: usize, seed: u64, centre: f64, spread: f64) -> Matrix {
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut next = || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        // The sum of three uniforms is bell-shaped enough here.
        (0..3).map(|i| ((state >> (11 + i * 7)) & 0xFFFF) as f64 / 65536.0).sum::<f64>() - 1.5
    };
    let values: Vec<f64> = (0..rows * 3).map(|_| centre + spread * next()).collect();
    Matrix::new(values, 3).unwrap()
}

fn labelled_test() -> (Matrix, Vec<bool>) {
    let normal = cloud(80, 2, 0.0, 1.0);
    let anomalies = cloud(20, 3, 3.0, 1.0);
    let values: Vec<f64> = normal.values().iter().chain(anomalies.values()).copied().collect();
    let labels = (0..100).map(|i| i >= 80).collect();
    (Matrix::new(values, 3).unwrap(), labels)
}

fn all_models(train: &Matrix) -> Vec<Model> {
    vec![
        Model::IsolationForest(IsolationForest::fit(train, &IsolationForestParams::default()).unwrap()),
        Model::LocalOutlierFactor(LocalOutlierFactor::fit(train, &LofParams::default()).unwrap()),
        Model::OneClassSvm(OneClassSvm::fit(train, &OneClassSvmParams::default()).unwrap()),
        Model::RandomFeatureOneClassSvm(
            RandomFeatureOneClassSvm::fit(train, &RandomFeatureParams { epochs: 5, ..Default::default() })
                .unwrap(),
        ),
    ]
}

#[test]
fn every_model_separates_far_points_and_agrees_with_itself() {
    let train = cloud(300, 1, 0.0, 1.0);
    let (test, labels) = labelled_test();
    for model in all_models(&train) {
        let scores = model.score(&test).unwrap();
        let auc = roc_auc(&scores, &labels).unwrap();
        assert!(auc > 0.9, "{}: AUC {auc}", model.name());
        for (row, score) in test.iter_rows().zip(&scores) {
            let one = model.score_one(row).unwrap();
            if model.name() == "one_class_svm_random_features" {
                // Batches are projected by a matrix product, which sums in another order.
                assert!(
                    (one - score).abs() <= 1e-12 * score.abs().max(1.0),
                    "{}: {one} vs batch {score}",
                    model.name()
                );
            } else {
                assert_eq!(one, *score, "{}: one vector vs batch", model.name());
            }
        }
    }
}

#[test]
fn bad_input_is_a_clear_error() {
    assert!(matches!(
        Matrix::new(vec![1.0, f64::NAN], 2),
        Err(AnomalyError::NotFinite { row: 0, column: 1, .. })
    ));
    assert!(matches!(
        Matrix::new(vec![1.0, 2.0, f64::INFINITY], 1),
        Err(AnomalyError::NotFinite { row: 2, .. })
    ));
    assert!(matches!(Matrix::new(vec![1.0, 2.0, 3.0], 2), Err(AnomalyError::Parameter(_))));
    let empty = Matrix::new(Vec::new(), 3).unwrap();
    assert!(matches!(IsolationForest::fit(&empty, &Default::default()), Err(AnomalyError::Empty(_))));
    assert!(matches!(LocalOutlierFactor::fit(&empty, &Default::default()), Err(AnomalyError::Empty(_))));
    assert!(matches!(OneClassSvm::fit(&empty, &Default::default()), Err(AnomalyError::Empty(_))));
    assert!(matches!(
        RandomFeatureOneClassSvm::fit(&empty, &Default::default()),
        Err(AnomalyError::Empty(_))
    ));

    let train = cloud(50, 1, 0.0, 1.0);
    for model in all_models(&train) {
        assert!(matches!(
            model.score_one(&[0.0, 0.0]),
            Err(AnomalyError::Dimension { expected: 3, actual: 2 })
        ));
        assert!(matches!(
            model.score_one(&[0.0, f64::NAN, 0.0]),
            Err(AnomalyError::NotFinite { column: 1, .. })
        ));
        let wide = Matrix::new(vec![0.0; 8], 4).unwrap();
        assert!(matches!(model.score(&wide), Err(AnomalyError::Dimension { expected: 3, actual: 4 })));
    }
    let bad = IsolationForestParams { contamination: Contamination::Fraction(0.9), ..Default::default() };
    assert!(matches!(IsolationForest::fit(&train, &bad), Err(AnomalyError::Parameter(_))));
    let bad = OneClassSvmParams { nu: 0.0, ..Default::default() };
    assert!(matches!(OneClassSvm::fit(&train, &bad), Err(AnomalyError::Parameter(_))));
}

#[test]
fn isolation_forest_is_deterministic_under_a_seed_and_small() {
    let train = cloud(1000, 1, 0.0, 1.0);
    let (test, _) = labelled_test();
    let params = IsolationForestParams { seed: 7, ..Default::default() };
    let a = IsolationForest::fit(&train, &params).unwrap().score(&test).unwrap();
    let b = IsolationForest::fit(&train, &params).unwrap().score(&test).unwrap();
    assert_eq!(a, b);
    // The same on one thread as on many: trees have their own seeds.
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    let c = pool.install(|| IsolationForest::fit(&train, &params).unwrap().score(&test).unwrap());
    assert_eq!(a, c);
    let other = IsolationForest::fit(&train, &IsolationForestParams { seed: 8, ..params }).unwrap();
    assert_ne!(a, other.score(&test).unwrap());
    let forest = IsolationForest::fit(&train, &params).unwrap();
    assert!(forest.model_bytes() < 400 * 1024, "{} bytes", forest.model_bytes());
}

#[test]
fn contamination_sets_the_fraction_flagged_on_training_data() {
    let train = cloud(400, 1, 0.0, 1.0);
    let params = IsolationForestParams { contamination: Contamination::Fraction(0.1), ..Default::default() };
    let forest = IsolationForest::fit(&train, &params).unwrap();
    let flagged = forest.decide(&train).unwrap().iter().filter(|&&d| d).count();
    assert!((38..=42).contains(&flagged), "{flagged} of 400 flagged");
    // "auto" is scikit-learn's fixed offset: a score of 0.5.
    assert_eq!(IsolationForest::fit(&train, &Default::default()).unwrap().threshold(), 0.5);
}

#[test]
fn models_survive_a_save_and_load_round_trip() {
    let train = cloud(100, 1, 0.0, 1.0);
    let (test, _) = labelled_test();
    for model in all_models(&train) {
        let mut file = Vec::new();
        save(&model, &mut file).unwrap();
        let loaded: Model = load(file.as_slice()).unwrap();
        assert_eq!(model.score(&test).unwrap(), loaded.score(&test).unwrap(), "{}", model.name());
        assert_eq!(model.threshold(), loaded.threshold());
    }
}

#[test]
fn incompatible_or_tampered_files_are_refused() {
    let train = cloud(100, 1, 0.0, 1.0);
    let forest = IsolationForest::fit(&train, &Default::default()).unwrap();
    let mut file = Vec::new();
    save(&forest, &mut file).unwrap();
    let text = String::from_utf8(file).unwrap();

    let newer = text.replacen("\"version\":1", "\"version\":2", 1);
    assert!(
        matches!(load::<IsolationForest>(newer.as_bytes()), Err(AnomalyError::IncompatibleModel(m)) if m.contains("version 2"))
    );
    assert!(matches!(load::<OneClassSvm>(text.as_bytes()), Err(AnomalyError::IncompatibleModel(_))));
    assert!(matches!(load::<IsolationForest>(&b"not json"[..]), Err(AnomalyError::IncompatibleModel(_))));
    let foreign = text.replacen("sentinel-anomaly", "other-program", 1);
    assert!(matches!(load::<IsolationForest>(foreign.as_bytes()), Err(AnomalyError::IncompatibleModel(_))));

    // A split feature beyond the model's dimension would index out of bounds when scoring.
    let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
    json["body"]["features"][0] = serde_json::json!(99);
    let tampered = serde_json::to_vec(&json).unwrap();
    assert!(matches!(load::<IsolationForest>(tampered.as_slice()), Err(AnomalyError::CorruptModel(_))));

    let lof = LocalOutlierFactor::fit(&train, &Default::default()).unwrap();
    let mut file = Vec::new();
    save(&lof, &mut file).unwrap();
    let mut json: serde_json::Value = serde_json::from_slice(&file).unwrap();
    json["body"]["k"] = serde_json::json!(1000);
    let tampered = serde_json::to_vec(&json).unwrap();
    assert!(matches!(load::<LocalOutlierFactor>(tampered.as_slice()), Err(AnomalyError::CorruptModel(_))));
}

#[test]
fn thresholds_by_contamination_and_false_positive_rate() {
    let scores: Vec<f64> = (0..100).map(f64::from).collect();
    // numpy: np.percentile(range(100), 90) = 89.1.
    assert!((by_contamination(&scores, 0.1).unwrap() - 89.1).abs() < 1e-12);
    let threshold = at_false_positive_rate(&scores, 0.05).unwrap();
    assert_eq!(scores.iter().filter(|&&s| s >= threshold).count(), 5);
    assert!(matches!(at_false_positive_rate(&[], 0.05), Err(AnomalyError::Empty(_))));
    assert!(matches!(
        at_false_positive_rate(&[1.0, f64::NAN], 0.05),
        Err(AnomalyError::NotFinite { row: 1, .. })
    ));
}

#[test]
fn adaptive_threshold_follows_drift_within_its_band() {
    let calibration: Vec<f64> = (0..1000).map(|i| f64::from(i) / 1000.0).collect();
    let mut threshold = AdaptiveThreshold::new(&calibration, 0.05, 0.01, 2.0).unwrap();
    let start = threshold.threshold();
    assert!((start - 0.95).abs() < 0.002);
    // The normal scores drift up by 0.3: the threshold follows, flagging about 5 % again.
    // In a scrambled order, as a live stream would be (7919 is prime to 1000).
    let drifted: Vec<f64> = (0..20_000).map(|i| 0.3 + f64::from((i * 7919) % 1000) / 1000.0).collect();
    for &score in &drifted {
        threshold.observe(score);
    }
    assert!((threshold.threshold() - 1.25).abs() < 0.05, "{}", threshold.threshold());
    let flagged = drifted[..1000].iter().filter(|&&s| s >= threshold.threshold()).count();
    assert!((30..=70).contains(&flagged), "{flagged} of 1000 flagged after drift");
    // A flood of extreme scores cannot lift it beyond its band (2 interdecile spreads).
    for _ in 0..100_000 {
        threshold.observe(1e6);
    }
    assert!(threshold.threshold() <= start + 2.0 * 0.8 + 1e-9);
}

#[test]
fn ensemble_combines_and_learns_from_feedback() {
    let train = cloud(300, 1, 0.0, 1.0);
    let (test, labels) = labelled_test();
    // One useful member and one that scores at random.
    let good = Model::IsolationForest(IsolationForest::fit(&train, &Default::default()).unwrap());
    let noise = Matrix::new((0..900).map(|i| ((i * 7919) % 1000) as f64).collect(), 3).unwrap();
    let useless = Model::IsolationForest(IsolationForest::fit(&noise, &Default::default()).unwrap());
    for combination in [Combination::Average, Combination::Vote, Combination::Stacking] {
        // From equal weights, so that only the feedback tells the members apart.
        let params = EnsembleParams { combination, weighting: Weighting::Equal, ..Default::default() };
        let mut ensemble = Ensemble::new(vec![good.clone(), useless.clone()], &train, params).unwrap();
        ensemble.learn_from_feedback(&test, &labels).unwrap();
        let weights = ensemble.weights();
        assert!(weights[0] > 2.0 * weights[1], "{combination:?}: weights {weights:?}");
        let auc = roc_auc(&ensemble.score(&test).unwrap(), &labels).unwrap();
        assert!(auc > 0.9, "{combination:?}: AUC {auc}");
        let mut file = Vec::new();
        save(&ensemble, &mut file).unwrap();
        let loaded: Ensemble = load(file.as_slice()).unwrap();
        assert_eq!(loaded.score(&test).unwrap(), ensemble.score(&test).unwrap());
    }
    let one_class = vec![false; test.rows()];
    let mut ensemble = Ensemble::new(vec![good], &train, EnsembleParams::default()).unwrap();
    assert!(ensemble.learn_from_feedback(&test, &one_class).is_err());
}

#[test]
fn the_default_ensemble_leaves_out_a_member_blind_to_clustered_anomalies() {
    // Unlabelled training data holding a tight cluster of anomalies: each clustered row has
    // enough close neighbours to look dense to LOF (k = 20 < 60), so LOF ranks the cluster as
    // normal, while the forest and the SVM find it unusual.
    let join = |a: Matrix, b: Matrix| Matrix::new([a.values(), b.values()].concat(), 3).unwrap();
    let train = join(cloud(600, 1, 0.0, 1.0), cloud(60, 4, 5.0, 0.05));
    let test = join(cloud(200, 2, 0.0, 1.0), cloud(30, 5, 5.0, 0.05));
    let labels: Vec<bool> = (0..230).map(|row| row >= 200).collect();
    let members = vec![
        Model::IsolationForest(IsolationForest::fit(&train, &Default::default()).unwrap()),
        Model::LocalOutlierFactor(LocalOutlierFactor::fit(&train, &Default::default()).unwrap()),
        Model::OneClassSvm(OneClassSvm::fit(&train, &Default::default()).unwrap()),
    ];
    let auc = |scores: Vec<f64>| roc_auc(&scores, &labels).unwrap();
    let member_auc: Vec<f64> = members.iter().map(|member| auc(member.score(&test).unwrap())).collect();
    assert!(member_auc[1] < 0.6 && member_auc[0] > 0.9 && member_auc[2] > 0.9, "premise: {member_auc:?}");

    let central = Ensemble::new(members.clone(), &train, EnsembleParams::default()).unwrap();
    let weights = central.weights();
    assert_eq!(weights[1], 0.0, "weights {weights:?}");
    assert!(weights[0] > 0.0 || weights[2] > 0.0, "weights {weights:?}");
    assert!((weights.iter().sum::<f64>() - 1.0).abs() < 1e-9);
    let params = EnsembleParams { weighting: Weighting::Equal, ..EnsembleParams::default() };
    let average = Ensemble::new(members, &train, params).unwrap();
    assert_eq!(average.weights(), [1.0 / 3.0; 3]);
    let (plain, chosen) = (auc(average.score(&test).unwrap()), auc(central.score(&test).unwrap()));
    assert!(chosen > plain + 0.02, "average {plain}, central members {chosen}");
    let best = member_auc.iter().copied().fold(0.0, f64::max);
    assert!(chosen >= best - 0.01, "central members {chosen}, best member {best}");
}

#[test]
fn ensemble_combines_member_scores_or_reports_a_wrong_count() {
    let train = cloud(300, 1, 0.0, 1.0);
    let forest = Model::IsolationForest(IsolationForest::fit(&train, &Default::default()).unwrap());
    let lof = Model::LocalOutlierFactor(LocalOutlierFactor::fit(&train, &Default::default()).unwrap());
    let ensemble = Ensemble::new(vec![forest, lof], &train, EnsembleParams::default()).unwrap();
    let row = [4.0, -3.0, 5.0];
    let members: Vec<f64> = ensemble.members().iter().map(|m| m.score_one(&row).unwrap()).collect();
    assert_eq!(ensemble.combine_member_scores(&members).unwrap(), ensemble.score_one(&row).unwrap());
    for wrong in [&members[..1], &[members[0], members[1], members[1]][..], &[][..]] {
        assert!(matches!(
            ensemble.combine_member_scores(wrong),
            Err(AnomalyError::Dimension { expected: 2, actual }) if actual == wrong.len()
        ));
    }
}

#[test]
fn ensemble_is_not_dominated_by_one_members_scale() {
    // Far outliers get LOF scores in the hundreds but Isolation Forest scores below 1: after
    // normalisation each counts as "above every normal row", whatever its raw size, so the
    // ensemble's score of a row no member finds unusual stays below that of a row all find
    // unusual, and a far outlier is not ranked above rows both members rank highly.
    let train = cloud(300, 1, 0.0, 1.0);
    let forest = Model::IsolationForest(IsolationForest::fit(&train, &Default::default()).unwrap());
    let lof = Model::LocalOutlierFactor(LocalOutlierFactor::fit(&train, &Default::default()).unwrap());
    let ensemble = Ensemble::new(vec![forest, lof], &train, EnsembleParams::default()).unwrap();
    let scores = |row: &[f64]| ensemble.score_one(row).unwrap();
    let (near, far, farther) =
        (scores(&[0.0, 0.0, 0.0]), scores(&[50.0, 50.0, 50.0]), scores(&[1e6, 1e6, 1e6]));
    assert!(near < far && far <= farther, "{near} {far} {farther}");
    // Above (nearly) every calibration row for both members, and never more than one
    // quantile step above 1.
    assert!(far > 0.99 && farther < 1.0 + 1e-3, "{far} {farther}");
}

#[test]
fn preprocessing_handles_missing_and_unknown_values() {
    let rows = vec![
        vec![Value::Number(1.0), Value::Category("tcp")],
        vec![Value::Missing, Value::Category("udp")],
        vec![Value::Number(3.0), Value::Missing],
    ];
    let schema = [ColumnKind::Numeric, ColumnKind::Categorical];
    let reject = PreprocessParams { scaling: Scaling::None, missing: MissingPolicy::Reject };
    assert!(
        matches!(Preprocessor::fit(&schema, &rows, &reject), Err(AnomalyError::Parameter(m)) if m.contains("column 0"))
    );
    let median = PreprocessParams { scaling: Scaling::None, missing: MissingPolicy::Median };
    let preprocessor = Preprocessor::fit(&schema, &rows, &median).unwrap();
    assert_eq!(preprocessor.output_width(), 3);
    let mut out = [0.0; 3];
    preprocessor.transform_row(&[Value::Missing, Value::Category("udp")], &mut out).unwrap();
    assert_eq!(out, [2.0, 0.0, 1.0]);
    preprocessor.transform_row(&[Value::Number(5.0), Value::Category("never seen")], &mut out).unwrap();
    assert_eq!(out, [5.0, 0.0, 0.0]);
    let wrong_type = preprocessor.transform_row(&[Value::Category("x"), Value::Category("tcp")], &mut out);
    assert!(matches!(wrong_type, Err(AnomalyError::Parameter(_))));
    let infinite = preprocessor.transform_row(&[Value::Number(f64::INFINITY), Value::Missing], &mut out);
    assert!(matches!(infinite, Err(AnomalyError::NotFinite { column: 0, .. })));
    let log = [ColumnKind::LogNumeric, ColumnKind::Categorical];
    let negative = vec![vec![Value::Number(-1.0), Value::Category("tcp")]];
    assert!(Preprocessor::fit(&log, &negative, &median).is_err());
    let mut file = Vec::new();
    save(&preprocessor, &mut file).unwrap();
    let loaded: Preprocessor = load(file.as_slice()).unwrap();
    loaded.transform_row(&[Value::Missing, Value::Category("tcp")], &mut out).unwrap();
    assert_eq!(out, [2.0, 1.0, 0.0]);
}
