//! Training: hyper-parameters chosen by grouped cross-validation; for the
//! detector, the linear model's and the boosted trees' out-of-fold decision
//! values stacked (and so calibrated) by a logistic fit, the decision
//! threshold at 1 % out-of-fold false positives; then a final fit on all the
//! data given.
//!
//! Every step is deterministic for a given seed: splits come from a seeded
//! SplitMix64, the solver is full-batch L-BFGS from zero, and parallel work
//! (rayon) only runs independent fits whose results are collected in order.

use rayon::prelude::*;

use crate::dataset::{FamilySample, LabelledSequence, grouped_folds, split_grouped};
use crate::error::TrainError;
use crate::evaluation::ClassificationReport;
use crate::features::{NgramSpace, SparseVector};
use crate::linear::{Solver, fit_binary, fit_multinomial, fit_stacking, softmax};
use crate::model::{
    BehaviourModel, BlendWeights, Detector, DetectorParts, FamilyClassifier, MAX_DISTINCT_APIS,
    MAX_FAMILY_CALLS, PrefixModel, TrainingRecord,
};
use crate::profile::{FamilyProfile, ProfileSpace};

/// Settings of a training run.
#[derive(Debug, Clone)]
pub struct TrainingOptions {
    pub seed: u64,
    /// Longest n-gram of the detector's linear model (1..=5).
    pub max_n: usize,
    /// Longest n-gram of the family classifier (1..=5).
    pub family_max_n: usize,
    /// Calls (runs collapsed) read by the family classifier's start-up model.
    pub family_prefix_calls: usize,
    /// An n-gram enters the vocabulary when it occurs in this many sequences.
    pub min_df: u32,
    /// Most n-grams kept by the detector and by the family classifier (the
    /// most frequent ones): bounds the model file and the scoring work.
    pub max_features: usize,
    pub family_max_features: usize,
    /// Candidate values of the inverse regularisation strength `C`.
    pub c_grid: Vec<f64>,
    /// Cross-validation folds used to choose `C` and to calibrate.
    pub folds: usize,
    /// Fraction of the data held out to measure the model.
    pub test_fraction: f64,
    /// L-BFGS iterations per fit.
    pub max_iterations: usize,
    /// APIs and bigrams given their own feature in the trees' behaviour
    /// profile (the most frequent, seen in at least `profile_min_df` rows).
    pub profile_apis: usize,
    pub profile_bigrams: usize,
    pub profile_min_df: u32,
    /// The detector's boosted trees.
    pub trees: sentinel_gbdt::Params,
    /// The family classifier's boosted trees (one per family).
    pub family_trees: sentinel_gbdt::Params,
}

impl Default for TrainingOptions {
    fn default() -> Self {
        TrainingOptions {
            seed: 42,
            max_n: 3,
            family_max_n: 3,
            family_prefix_calls: 50,
            min_df: 2,
            max_features: 50_000,
            family_max_features: 8_000,
            c_grid: vec![1.0, 3.0, 10.0, 30.0, 100.0],
            folds: 5,
            test_fraction: 0.2,
            max_iterations: 300,
            profile_apis: 400,
            profile_bigrams: 1_500,
            profile_min_df: 5,
            trees: sentinel_gbdt::Params {
                learning_rate: 0.05,
                max_iter: 400,
                max_leaf_nodes: Some(15),
                min_samples_leaf: 10,
                l2_regularization: 1.0,
                seed: 42,
                ..sentinel_gbdt::Params::default()
            },
            family_trees: sentinel_gbdt::Params {
                learning_rate: 0.05,
                max_iter: 200,
                max_leaf_nodes: Some(15),
                min_samples_leaf: 5,
                l2_regularization: 1.0,
                early_stopping: None,
                seed: 42,
                ..sentinel_gbdt::Params::default()
            },
        }
    }
}

impl TrainingOptions {
    fn solver(&self) -> Solver {
        Solver { max_iterations: self.max_iterations, ..Solver::default() }
    }
}

/// The detector's view of a labelled sequence.
fn detector_tokens(row: &LabelledSequence) -> Vec<&str> {
    row.calls.distinct_in_order(MAX_DISTINCT_APIS)
}

fn family_tokens(sample: &FamilySample) -> Vec<&str> {
    sample.classifier_view()
}

impl FamilySample {
    /// The calls as the family classifier sees them: runs of the same API
    /// collapsed, at most the first 20,000 (what the benchmark hands to its
    /// peer too).
    pub fn classifier_view(&self) -> Vec<&str> {
        let mut tokens = self.calls.collapsed();
        tokens.truncate(MAX_FAMILY_CALLS);
        tokens
    }
}

/// Out-of-fold predictions for every `C` of the grid, indexed `[C][row]`: for
/// each (C, fold) pair, fits on the other folds and predicts the fold's rows.
/// The vocabulary and IDF are fitted inside each fold too, as in deployment,
/// where the sequences to score were never part of the vocabulary. Fits run in
/// parallel; results are collected in job order, so the outcome is the same
/// whatever the scheduling.
#[allow(clippy::too_many_arguments)]
fn cross_validate<L, M, P>(
    docs: &[Vec<&str>],
    labels: &[L],
    folds: &[usize],
    options: &TrainingOptions,
    max_features: usize,
    max_n: usize,
    c_grid: &[f64],
    fit: impl Fn(&[SparseVector], &[L], usize, f64) -> M + Sync,
    predict: impl Fn(&M, &SparseVector) -> P + Sync,
) -> Vec<Vec<P>>
where
    L: Clone + Sync,
    P: Clone + Default + Send,
{
    let fold_data: Vec<(NgramSpace, Vec<SparseVector>)> = (0..options.folds)
        .into_par_iter()
        .map(|fold| {
            let train_docs: Vec<Vec<&str>> =
                docs.iter().zip(folds).filter(|(_, f)| **f != fold).map(|(d, _)| d.clone()).collect();
            let space = NgramSpace::fit(&train_docs, max_n, options.min_df, max_features);
            let vectors = docs.iter().map(|d| space.transform(d).0).collect();
            (space, vectors)
        })
        .collect();
    let jobs: Vec<(usize, usize)> =
        (0..c_grid.len()).flat_map(|c| (0..options.folds).map(move |f| (c, f))).collect();
    let results: Vec<Vec<(usize, P)>> = jobs
        .par_iter()
        .map(|&(c_index, fold)| {
            let (space, vectors) = &fold_data[fold];
            let (train_x, train_y): (Vec<SparseVector>, Vec<L>) = vectors
                .iter()
                .zip(labels)
                .zip(folds)
                .filter(|(_, f)| **f != fold)
                .map(|((x, y), _)| (x.clone(), y.clone()))
                .unzip();
            let model = fit(&train_x, &train_y, space.dimension(), c_grid[c_index]);
            (0..docs.len())
                .filter(|&row| folds[row] == fold)
                .map(|row| (row, predict(&model, &vectors[row])))
                .collect()
        })
        .collect();
    let mut out_of_fold = vec![vec![P::default(); docs.len()]; c_grid.len()];
    for (&(c_index, _), predictions) in jobs.iter().zip(results) {
        for (row, prediction) in predictions {
            out_of_fold[c_index][row] = prediction;
        }
    }
    out_of_fold
}

/// A fitted detector and the regularisation it was fitted with.
pub(crate) struct DetectorFit {
    pub detector: Detector,
    pub c: f64,
}

/// Fits a detector on `rows`.
pub(crate) fn fit_detector(
    rows: &[&LabelledSequence],
    options: &TrainingOptions,
) -> Result<DetectorFit, TrainError> {
    let positives = rows.iter().filter(|r| r.malicious).count();
    if rows.len() < 2 * options.folds.max(2) || positives == 0 || positives == rows.len() {
        return Err(TrainError::Data(format!(
            "need malicious and benign sequences, at least {} in all (have {} of which {positives} malicious)",
            2 * options.folds.max(2),
            rows.len()
        )));
    }
    let docs: Vec<Vec<&str>> = rows.iter().map(|r| detector_tokens(r)).collect();
    let labels: Vec<bool> = rows.iter().map(|r| r.malicious).collect();
    let folds = grouped_folds(&docs, &labels, options.folds, options.seed);
    let out_of_fold = cross_validate(
        &docs,
        &labels,
        &folds,
        options,
        options.max_features,
        options.max_n,
        &options.c_grid,
        |x, y, dim, c| fit_binary(x, y, dim, c, options.solver()),
        |model, vector| model.decision(vector),
    );

    let mut best: Option<(f64, usize, Vec<f64>)> = None;
    for (c_index, decisions) in out_of_fold.into_iter().enumerate() {
        let auc = sentinel_metrics::roc_auc(&decisions, &labels)?;
        // Strictly better only, so ties keep the smaller (more regularised) C.
        if best.as_ref().is_none_or(|(best_auc, _, _)| auc > *best_auc + 1e-9) {
            best = Some((auc, c_index, decisions));
        }
    }
    let (_, c_index, linear_decisions) =
        best.ok_or_else(|| TrainError::Data("the C grid is empty".into()))?;
    let c = options.c_grid[c_index];

    // The trees' out-of-fold margins, on the same folds (profile fitted inside each fold).
    let tree_folds: Vec<Vec<(usize, f64)>> = (0..options.folds)
        .into_par_iter()
        .map(|fold| {
            let train: Vec<usize> = (0..docs.len()).filter(|&r| folds[r] != fold).collect();
            let (profile, trees) = fit_trees(&docs, &labels, &train, options)?;
            Ok((0..docs.len())
                .filter(|&r| folds[r] == fold)
                .map(|r| (r, trees.predict_margin(&profile.transform(&docs[r])).unwrap_or(0.0)))
                .collect())
        })
        .collect::<Result<_, TrainError>>()?;
    let mut tree_decisions = vec![0.0; docs.len()];
    for (row, margin) in tree_folds.into_iter().flatten() {
        tree_decisions[row] = margin;
    }
    let inputs: Vec<[f64; 2]> = linear_decisions.iter().zip(&tree_decisions).map(|(&l, &t)| [l, t]).collect();
    let stacking = fit_stacking(&inputs, &labels);
    let probabilities: Vec<f64> = inputs
        .iter()
        .map(|[l, t]| crate::linear::sigmoid(stacking[0] * l + stacking[1] * t + stacking[2]))
        .collect();
    let threshold =
        sentinel_metrics::detection_at_fpr(&probabilities, &labels, 0.01)?.threshold.clamp(0.0, 1.0);

    let space = NgramSpace::fit(&docs, options.max_n, options.min_df, options.max_features);
    let vectors: Vec<SparseVector> = docs.iter().map(|d| space.transform(d).0).collect();
    let model = fit_binary(&vectors, &labels, space.dimension(), c, options.solver());
    let all: Vec<usize> = (0..docs.len()).collect();
    let (profile, trees) = fit_trees(&docs, &labels, &all, options)?;
    let parts = DetectorParts { space, weights: model.weights, bias: model.bias, profile, trees };
    Ok(DetectorFit { detector: Detector::new(parts, stacking, threshold), c })
}

/// Fits the behaviour profile and the boosted trees on the rows `train`.
fn fit_trees(
    docs: &[Vec<&str>],
    labels: &[bool],
    train: &[usize],
    options: &TrainingOptions,
) -> Result<(ProfileSpace, sentinel_gbdt::Booster), TrainError> {
    let train_docs: Vec<Vec<&str>> = train.iter().map(|&r| docs[r].clone()).collect();
    let profile =
        ProfileSpace::fit(&train_docs, options.profile_min_df, options.profile_apis, options.profile_bigrams);
    let values: Vec<f64> = train_docs.iter().flat_map(|d| profile.transform(d)).collect();
    let train_labels: Vec<bool> = train.iter().map(|&r| labels[r]).collect();
    let data = sentinel_gbdt::Dataset {
        values: &values,
        n_features: profile.dimension(),
        labels: &train_labels,
        weights: None,
    };
    let trees = sentinel_gbdt::Booster::fit(&data, &options.trees)
        .map_err(|e| TrainError::Data(format!("boosted trees: {e}")))?;
    Ok((profile, trees))
}

/// A fitted family classifier with its measured accuracy.
pub(crate) struct FamilyFit {
    pub classifier: FamilyClassifier,
    pub c: f64,
    /// The start-up model's C.
    pub prefix_c: f64,
    /// The blend weights, chosen out of fold.
    pub blend: BlendWeights,
    /// Out-of-fold accuracy of the blend (at the chosen C and weight).
    pub cv_accuracy: f64,
}

fn class_index(samples: &[&FamilySample]) -> (Vec<String>, Vec<usize>) {
    let mut classes: Vec<String> = samples.iter().map(|s| s.family.clone()).collect();
    classes.sort();
    classes.dedup();
    let labels = samples.iter().map(|s| classes.binary_search(&s.family).unwrap_or(0)).collect();
    (classes, labels)
}

fn fit_families(samples: &[&FamilySample], options: &TrainingOptions) -> Result<FamilyFit, TrainError> {
    let (classes, labels) = class_index(samples);
    if classes.len() < 2 || samples.len() < 2 * options.folds.max(2) {
        return Err(TrainError::Data(
            "the family data needs at least two families and a few samples each".into(),
        ));
    }
    let k = classes.len();
    let docs: Vec<Vec<&str>> = samples.iter().map(|s| family_tokens(s)).collect();
    let all_calls: Vec<&[String]> = samples.iter().map(|s| s.calls.calls()).collect();
    let folds = grouped_folds(&docs, &labels, options.folds, options.seed);
    let prefix_calls = options.family_prefix_calls.clamp(1, MAX_FAMILY_CALLS);
    let heads: Vec<Vec<&str>> = docs.iter().map(|d| d[..d.len().min(prefix_calls)].to_vec()).collect();
    let multinomial_out_of_fold = |docs: &[Vec<&str>]| {
        cross_validate(
            docs,
            &labels,
            &folds,
            options,
            options.family_max_features,
            options.family_max_n,
            &options.c_grid,
            |x, y, dim, c| fit_multinomial(x, y, dim, k, c, options.solver()),
            |model, vector| {
                let mut z: Vec<f64> =
                    model.weights.iter().zip(&model.biases).map(|(w, b)| vector.dot(w) + b).collect();
                softmax(&mut z);
                z
            },
        )
    };
    let (c_index, linear_out_of_fold) = most_accurate(multinomial_out_of_fold(&docs), &labels);
    let c = options.c_grid[c_index];
    let (prefix_c_index, prefix_out_of_fold) = most_accurate(multinomial_out_of_fold(&heads), &labels);
    let prefix_c = options.c_grid[prefix_c_index];

    // The trees' out-of-fold probabilities on the same folds (profile fitted
    // inside each fold), to weigh the models on rows none of them has seen.
    let tree_folds: Vec<Vec<(usize, Vec<f64>)>> = (0..options.folds)
        .into_par_iter()
        .map(|fold| {
            let train: Vec<usize> = (0..docs.len()).filter(|&r| folds[r] != fold).collect();
            let (profile, trees) = fit_family_trees(&docs, &all_calls, &labels, k, &train, options)?;
            Ok((0..docs.len())
                .filter(|&r| folds[r] == fold)
                .map(|r| (r, tree_probabilities(&trees, &profile.transform(all_calls[r], &docs[r]))))
                .collect())
        })
        .collect::<Result<_, TrainError>>()?;
    let mut tree_out_of_fold = vec![Vec::new(); docs.len()];
    for (row, probabilities) in tree_folds.into_iter().flatten() {
        tree_out_of_fold[row] = probabilities;
    }
    let parts = [linear_out_of_fold.as_slice(), prefix_out_of_fold.as_slice(), tree_out_of_fold.as_slice()];
    let blend = choose_blend(parts, &labels, k);
    let blended_correct = (0..docs.len())
        .filter(|&r| {
            argmax(&blend.mix(&linear_out_of_fold[r], &prefix_out_of_fold[r], &tree_out_of_fold[r]))
                == labels[r]
        })
        .count();

    let fit_all = |docs: &[Vec<&str>], c: f64| {
        let space = NgramSpace::fit(docs, options.family_max_n, options.min_df, options.family_max_features);
        let vectors: Vec<SparseVector> = docs.iter().map(|d| space.transform(d).0).collect();
        let model = fit_multinomial(&vectors, &labels, space.dimension(), k, c, options.solver());
        (space, model)
    };
    let (space, model) = fit_all(&docs, c);
    let (prefix_space, prefix_model) = fit_all(&heads, prefix_c);
    let prefix = PrefixModel::new(prefix_calls, prefix_space, &prefix_model.weights, prefix_model.biases);
    let all: Vec<usize> = (0..docs.len()).collect();
    let (profile, trees) = fit_family_trees(&docs, &all_calls, &labels, k, &all, options)?;
    Ok(FamilyFit {
        classifier: FamilyClassifier::new(
            space,
            classes,
            (&model.weights, model.biases),
            profile,
            trees,
            prefix,
            blend,
        ),
        c,
        prefix_c,
        blend,
        cv_accuracy: blended_correct as f64 / samples.len() as f64,
    })
}

/// The index of the first candidate (of out-of-fold probabilities, one list
/// per C) with the most correct answers, so ties keep the smaller C, and that
/// candidate's probabilities.
fn most_accurate(mut candidates: Vec<Vec<Vec<f64>>>, labels: &[usize]) -> (usize, Vec<Vec<f64>>) {
    let mut best = (0usize, 0usize);
    for (index, probabilities) in candidates.iter().enumerate() {
        let correct = probabilities.iter().zip(labels).filter(|(p, y)| argmax(p) == **y).count();
        if index == 0 || correct > best.1 {
            best = (index, correct);
        }
    }
    (best.0, candidates.swap_remove(best.0))
}

/// The family profile and one booster per family (that family against the
/// others), fitted on the rows `train`.
fn fit_family_trees(
    docs: &[Vec<&str>],
    all_calls: &[&[String]],
    labels: &[usize],
    classes: usize,
    train: &[usize],
    options: &TrainingOptions,
) -> Result<(FamilyProfile, Vec<sentinel_gbdt::Booster>), TrainError> {
    let train_docs: Vec<Vec<&str>> = train.iter().map(|&r| docs[r].clone()).collect();
    let profile = FamilyProfile::fit(&train_docs, options.min_df);
    let values: Vec<f64> = train.iter().flat_map(|&r| profile.transform(all_calls[r], &docs[r])).collect();
    let trees = (0..classes)
        .into_par_iter()
        .map(|class| {
            let positive: Vec<bool> = train.iter().map(|&r| labels[r] == class).collect();
            let data = sentinel_gbdt::Dataset {
                values: &values,
                n_features: profile.dimension(),
                labels: &positive,
                weights: None,
            };
            sentinel_gbdt::Booster::fit(&data, &options.family_trees)
                .map_err(|e| TrainError::Data(format!("family trees: {e}")))
        })
        .collect::<Result<Vec<_>, TrainError>>()?;
    Ok((profile, trees))
}

/// The one-against-the-rest boosters' probabilities of a profile row,
/// normalised to sum to 1.
pub(crate) fn tree_probabilities(trees: &[sentinel_gbdt::Booster], row: &[f64]) -> Vec<f64> {
    let probabilities: Vec<f64> =
        trees.iter().map(|t| crate::linear::sigmoid(t.predict_margin(row).unwrap_or(0.0))).collect();
    let total: f64 = probabilities.iter().sum::<f64>().max(f64::MIN_POSITIVE);
    probabilities.into_iter().map(|p| p / total).collect()
}

/// Steps of the blend weights: tenths.
const BLEND_STEPS: u32 = 10;

/// The blend weights (linear, start-up; the trees get the rest), in tenths:
/// the candidate with the best out-of-fold accuracy plus macro F1 (both
/// targets of the classifier), ties broken by the lower log-loss, then by the
/// weights closer to an even blend of the three.
fn choose_blend(parts: [&[Vec<f64>]; 3], labels: &[usize], classes: usize) -> BlendWeights {
    let names: Vec<String> = (0..classes).map(|c| c.to_string()).collect();
    let truth: Vec<&str> = labels.iter().map(|&y| names[y].as_str()).collect();
    let third = 1.0 / 3.0;
    let mut best: Option<(f64, f64, f64, BlendWeights)> = None;
    for linear in 0..=BLEND_STEPS {
        for prefix in 0..=BLEND_STEPS - linear {
            let weights = BlendWeights {
                linear: f64::from(linear) / f64::from(BLEND_STEPS),
                prefix: f64::from(prefix) / f64::from(BLEND_STEPS),
            };
            let blended: Vec<Vec<f64>> =
                (0..labels.len()).map(|r| weights.mix(&parts[0][r], &parts[1][r], &parts[2][r])).collect();
            let predicted: Vec<&str> = blended.iter().map(|p| names[argmax(p)].as_str()).collect();
            let score =
                ClassificationReport::new(&truth, &predicted).map_or(0.0, |r| r.accuracy + r.macro_f1);
            let log_loss: f64 = blended.iter().zip(labels).map(|(p, &y)| -p[y].max(1e-12).ln()).sum();
            let spread = (weights.linear - third).powi(2)
                + (weights.prefix - third).powi(2)
                + (weights.trees() - third).powi(2);
            let better = best.is_none_or(|(best_score, best_loss, best_spread, _)| {
                if (score - best_score).abs() > 1e-9 {
                    score > best_score
                } else if (log_loss - best_loss).abs() > 1e-9 {
                    log_loss < best_loss
                } else {
                    spread < best_spread - 1e-12
                }
            });
            if better {
                best = Some((score, log_loss, spread, weights));
            }
        }
    }
    best.map_or(BlendWeights { linear: 1.0, prefix: 0.0 }, |(_, _, _, weights)| weights)
}

pub(crate) fn argmax(values: &[f64]) -> usize {
    values.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i)
}

/// The figures of a training run, measured on held-out data.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TrainingReport {
    /// Detector on the held-out sequences (none of them seen in training).
    pub holdout: sentinel_metrics::Report,
    pub train_rows: usize,
    pub test_rows: usize,
    pub detector_c: f64,
    pub families: Option<FamilyReport>,
}

/// The family classifier's figures.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FamilyReport {
    pub train_samples: usize,
    pub test_samples: usize,
    /// Accuracy, macro F1 and confusion on the held-out samples.
    pub holdout: ClassificationReport,
    /// Accuracy of the blend by grouped 5-fold cross-validation on the
    /// training part, at the C and the weight it chose.
    pub cv_accuracy: f64,
    pub c: f64,
    /// C of the start-up model (n-grams of the first calls).
    pub prefix_c: f64,
    /// Calls read by the start-up model.
    pub prefix_calls: usize,
    /// The blend weights of the linear model, the start-up model and the
    /// trees, chosen out of fold.
    pub linear_weight: f64,
    pub prefix_weight: f64,
    pub trees_weight: f64,
}

/// Trains a family classifier on `samples` only (C chosen by grouped
/// cross-validation, no hold-out): what the benchmark compares with
/// scikit-learn on splits it made itself.
pub fn train_family_classifier(
    samples: &[&FamilySample],
    options: &TrainingOptions,
) -> Result<FamilyClassifier, TrainError> {
    Ok(fit_families(samples, options)?.classifier)
}

/// Trains a detector on `rows` only (no hold-out, no families): what the
/// benchmark compares with scikit-learn on a split it made itself.
pub fn train_detector_only(
    rows: &[&LabelledSequence],
    options: &TrainingOptions,
) -> Result<BehaviourModel, TrainError> {
    let fit = fit_detector(rows, options)?;
    let record = TrainingRecord {
        data: vec![],
        seed: options.seed,
        detector_c: fit.c,
        holdout_roc_auc: None,
        holdout_tpr_at_1pct_fpr: None,
        families_c: None,
        families_holdout_accuracy: None,
        families_holdout_macro_f1: None,
        families_cv_accuracy: None,
    };
    BehaviourModel::from_parts("behaviour", record, fit.detector, None)
        .map_err(|e| TrainError::Data(e.to_string()))
}

/// The full training run behind `sentinel train dynamic`: measure on a split
/// by sequence, then refit on all the data with the settings chosen.
pub fn train(
    labelled: &[LabelledSequence],
    families: Option<&[FamilySample]>,
    data_names: Vec<String>,
    options: &TrainingOptions,
) -> Result<(BehaviourModel, TrainingReport), TrainError> {
    let keys: Vec<Vec<&str>> = labelled.iter().map(detector_tokens).collect();
    let labels: Vec<bool> = labelled.iter().map(|r| r.malicious).collect();
    let (train_rows, test_rows) = split_grouped(&keys, &labels, options.test_fraction, options.seed);
    let train_set: Vec<&LabelledSequence> = train_rows.iter().map(|&i| &labelled[i]).collect();
    let measured = fit_detector(&train_set, options)?;
    let test_scores: Vec<f64> = test_rows
        .iter()
        .map(|&i| {
            let detector = &measured.detector;
            detector.probability(detector.decisions(&detector.features(&labelled[i].calls)))
        })
        .collect();
    let test_labels: Vec<bool> = test_rows.iter().map(|&i| labels[i]).collect();
    let holdout = sentinel_metrics::Report::new(&test_scores, &test_labels, measured.detector.threshold)?;

    let all: Vec<&LabelledSequence> = labelled.iter().collect();
    let final_fit = fit_detector(&all, options)?;

    let (family_fit, family_report) = match families {
        Some(samples) => {
            let (fit, report) = train_families(samples, options)?;
            (Some(fit), Some(report))
        }
        None => (None, None),
    };
    let record = TrainingRecord {
        data: data_names,
        seed: options.seed,
        detector_c: final_fit.c,
        holdout_roc_auc: Some(holdout.roc_auc),
        holdout_tpr_at_1pct_fpr: Some(holdout.tpr_at_1pct_fpr),
        families_c: family_fit.as_ref().map(|f| f.c),
        families_holdout_accuracy: family_report.as_ref().map(|r| r.holdout.accuracy),
        families_holdout_macro_f1: family_report.as_ref().map(|r| r.holdout.macro_f1),
        families_cv_accuracy: family_report.as_ref().map(|r| r.cv_accuracy),
    };
    let model =
        BehaviourModel::from_parts("behaviour", record, final_fit.detector, family_fit.map(|f| f.classifier))
            .map_err(|e| TrainError::Data(e.to_string()))?;
    let report = TrainingReport {
        holdout,
        train_rows: train_rows.len(),
        test_rows: test_rows.len(),
        detector_c: measured.c,
        families: family_report,
    };
    Ok((model, report))
}

/// Measures the family classifier on a held-out split (and by
/// cross-validation on the rest), then refits it on all samples.
fn train_families(
    samples: &[FamilySample],
    options: &TrainingOptions,
) -> Result<(FamilyFit, FamilyReport), TrainError> {
    let keys: Vec<Vec<&str>> = samples.iter().map(family_tokens).collect();
    let strata: Vec<&str> = samples.iter().map(|s| s.family.as_str()).collect();
    let (train_rows, test_rows) = split_grouped(&keys, &strata, options.test_fraction, options.seed);
    let train_set: Vec<&FamilySample> = train_rows.iter().map(|&i| &samples[i]).collect();
    let measured = fit_families(&train_set, options)?;
    let truth: Vec<&str> = test_rows.iter().map(|&i| samples[i].family.as_str()).collect();
    let predicted: Vec<String> = test_rows
        .iter()
        .map(|&i| measured.classifier.guess(&samples[i].calls).map_or_else(String::new, |g| g.family))
        .collect();
    let predicted: Vec<&str> = predicted.iter().map(String::as_str).collect();
    let holdout = ClassificationReport::new(&truth, &predicted)
        .ok_or_else(|| TrainError::Data("the family hold-out split is empty".into()))?;
    let all: Vec<&FamilySample> = samples.iter().collect();
    let final_fit = fit_families(&all, options)?;
    let report = FamilyReport {
        train_samples: train_rows.len(),
        test_samples: test_rows.len(),
        holdout,
        cv_accuracy: measured.cv_accuracy,
        c: measured.c,
        prefix_c: measured.prefix_c,
        prefix_calls: options.family_prefix_calls.clamp(1, MAX_FAMILY_CALLS),
        linear_weight: measured.blend.linear,
        prefix_weight: measured.blend.prefix,
        trees_weight: measured.blend.trees(),
    };
    Ok((final_fit, report))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_blend_follows_the_models_that_are_right_out_of_fold() {
        // Three classes; a "good" model puts 0.6 on the true class, a "bad"
        // one 0.6 on the next class.
        let labels: Vec<usize> = (0..30).map(|i| i % 3).collect();
        let put = |class: usize| {
            let mut p = vec![0.2; 3];
            p[class] = 0.6;
            p
        };
        let good: Vec<Vec<f64>> = labels.iter().map(|&y| put(y)).collect();
        let bad: Vec<Vec<f64>> = labels.iter().map(|&y| put((y + 1) % 3)).collect();
        let chosen = |parts: [&[Vec<f64>]; 3]| {
            let w = choose_blend(parts, &labels, 3);
            (w.linear, w.prefix)
        };
        // All weight on the one good model, wherever it is.
        assert_eq!(chosen([&good, &bad, &bad]), (1.0, 0.0));
        assert_eq!(chosen([&bad, &good, &bad]), (0.0, 1.0));
        assert_eq!(chosen([&bad, &bad, &good]), (0.0, 0.0));
        // Three equally good models: the log-loss ties too, so the blend
        // closest to even thirds wins.
        assert_eq!(chosen([&good, &good, &good]), (0.3, 0.3));
        let w = BlendWeights { linear: 0.25, prefix: 0.5 };
        assert_eq!(w.mix(&[1.0, 0.0], &[0.0, 1.0], &[1.0, 1.0]), vec![0.5, 0.75]);
    }

    #[test]
    fn the_start_up_model_reads_only_the_first_calls() {
        // Two families that differ only in their first calls and share a long
        // tail: the start-up model separates them from the first calls alone.
        let tail: Vec<String> = (0..200).map(|i| format!("api{}", i % 7)).collect();
        let sample = |family: &str, first: &str, i: usize| {
            let mut calls = vec![first.to_owned(), format!("setup{}", i % 3)];
            calls.extend(tail.iter().cloned());
            FamilySample { family: family.to_owned(), calls: crate::ApiCallSequence::from_calls(calls) }
        };
        let samples: Vec<FamilySample> =
            (0..24)
                .map(|i| {
                    if i % 2 == 0 {
                        sample("alpha", "ntopenfile", i)
                    } else {
                        sample("beta", "regopenkeyw", i)
                    }
                })
                .collect();
        let refs: Vec<&FamilySample> = samples.iter().collect();
        let options =
            TrainingOptions { family_prefix_calls: 2, c_grid: vec![10.0], ..TrainingOptions::default() };
        let fit = fit_families(&refs, &options).unwrap();
        let prefix = fit.classifier.prefix.as_ref().unwrap();
        assert_eq!(prefix.calls, 2);
        // Its vocabulary holds n-grams of the first two calls only: the two
        // first calls, the setup calls, and their bigrams.
        let head = ["ntopenfile", "setup0", "api0", "api1"];
        let alpha = prefix.probabilities(&head);
        assert!(alpha[0] > 0.8, "{alpha:?}");
        let beta = prefix.probabilities(&["regopenkeyw", "setup1", "api0"]);
        assert!(beta[1] > 0.8, "{beta:?}");
        // The tail is beyond the prefix: alone it tells nothing.
        let tail_only: Vec<&str> = tail.iter().map(String::as_str).collect();
        let neither = prefix.probabilities(&tail_only);
        assert!((neither[0] - neither[1]).abs() < 0.2, "{neither:?}");
        assert!(fit.cv_accuracy > 0.9, "{}", fit.cv_accuracy);
    }
}
