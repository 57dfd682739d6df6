//! The training pipeline behind `sentinel train static`: header data set rows
//! (deduplicated, so no row is both trained on and tested on) plus benign corpus
//! files, split into train / calibration / test — stratified for the data set,
//! by whole package for the corpus — then boosting with class-balancing weights,
//! Platt calibration and the choice of the decision threshold on the calibration
//! split, and the held-out evaluation recorded in the model file.
//!
//! The threshold is the lowest score that keeps the false-positive rate at or
//! under `target_fpr` on *both* benign populations of the calibration split: the
//! data set's benign rows (mostly Microsoft software) and the corpus packages
//! (other toolchains), because production traffic looks like neither alone.

use std::collections::HashMap;

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_xoshiro::Xoshiro256PlusPlus;
use sentinel_gbdt::{Booster, Dataset, Params, PlattScaling};
use sentinel_metrics::{Report, detection_at_fpr};
use sentinel_pe::PE_HEADER_COLUMNS as FEATURE_NAMES;
use serde::{Deserialize, Serialize};

use crate::TrainError;
use crate::corpus::Corpus;
use crate::header_csv::{FEATURES, LabelledRows};
use crate::model::StaticModel;
use crate::transfer::{EXCLUDED_FEATURES, feature_mask};

/// Settings of a training run.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainingOptions {
    pub seed: u64,
    /// Boosting parameters (their seed is replaced by `seed`).
    pub params: Params,
    /// Share of the data set's unique rows kept for the test figures.
    pub test_fraction: f64,
    /// Share of the remaining rows used to calibrate and choose the threshold.
    pub calibration_fraction: f64,
    /// Share of corpus packages kept out for the benign false-positive figure.
    pub corpus_test_fraction: f64,
    /// Share of corpus packages used for calibration and the threshold.
    pub corpus_calibration_fraction: f64,
    /// Largest false-positive rate the threshold may give on calibration benign files.
    pub target_fpr: f64,
    /// Extra weight of each corpus file relative to a data set benign row.
    pub corpus_weight: f64,
    /// Also train a model on the data set alone and report its figures.
    pub header_only_baseline: bool,
    /// `pe-header` columns the trees may not split on (they stay in every row,
    /// so the extraction and the file schema do not change): by default the
    /// fields that record how a file was built rather than what it does, which
    /// do not transfer from one source of executables to another
    /// ([`crate::EXCLUDED_FEATURES`], docs/static-model.md).
    pub excluded_features: Vec<String>,
}

impl Default for TrainingOptions {
    fn default() -> Self {
        TrainingOptions {
            seed: 42,
            params: Params {
                learning_rate: 0.1,
                max_iter: 300,
                max_leaf_nodes: Some(31),
                min_samples_leaf: 10,
                l2_regularization: 1.0,
                ..Params::default()
            },
            test_fraction: 0.25,
            calibration_fraction: 0.2,
            corpus_test_fraction: 0.25,
            corpus_calibration_fraction: 0.2,
            target_fpr: 0.01,
            corpus_weight: 1.0,
            header_only_baseline: true,
            excluded_features: EXCLUDED_FEATURES.iter().map(|f| (*f).to_owned()).collect(),
        }
    }
}

/// What the model was trained on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingSummary {
    pub seed: u64,
    pub params: Params,
    pub target_fpr: f64,
    pub corpus_weight: f64,
    /// Rows of the data set as read.
    pub header_rows: usize,
    /// Distinct feature rows kept (duplicates removed).
    pub header_unique_rows: usize,
    /// Rows dropped because the same features carry both labels.
    pub header_conflicting_rows: usize,
    pub header_train_rows: usize,
    pub header_calibration_rows: usize,
    pub header_test_rows: usize,
    pub corpus: Option<CorpusSplit>,
    pub trees: usize,
    /// Columns the trees were not allowed to use (absent in models trained before
    /// the exclusion existed: they used all columns).
    #[serde(default)]
    pub excluded_features: Vec<String>,
}

/// How the corpus was divided (by package).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CorpusSplit {
    pub files: usize,
    pub packages: usize,
    pub train_files: usize,
    pub train_packages: usize,
    pub calibration_files: usize,
    pub calibration_packages: usize,
    pub test_files: usize,
    pub test_packages: usize,
    /// Test files left out because a file with the same features was trained on.
    pub test_files_seen_in_training: usize,
}

/// Held-out figures of a model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// The data set's held-out rows, confusion at the shipped threshold.
    pub header_test: Report,
    /// Benign files of packages kept out of training.
    pub held_out_packages: Option<BenignEvaluation>,
    /// The data set's held-out rows plus the held-out packages' files as benign.
    pub combined_test: Option<Report>,
    /// The same pipeline without corpus files: what the corpus changes.
    pub header_only_baseline: Option<BaselineEvaluation>,
}

/// False positives on benign files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenignEvaluation {
    pub packages: usize,
    pub files: usize,
    pub flagged: usize,
    pub false_positive_rate: f64,
    /// Files scoring at least 0.5, the naive threshold of a probability.
    pub flagged_at_half: usize,
    pub false_positive_rate_at_half: f64,
    /// Flagged files per package (`source/package` → count), for the packages with any.
    pub flagged_by_package: Vec<(String, usize)>,
}

/// The header-only model's figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BaselineEvaluation {
    pub threshold: f64,
    pub header_test: Report,
    pub held_out_packages: BenignEvaluation,
}

/// The data set's unique rows (first occurrence kept; rows whose features
/// appear with both labels dropped) and the number of conflicting rows.
pub fn deduplicate(rows: &LabelledRows) -> (LabelledRows, usize) {
    let key = |i: usize| -> Vec<u64> { rows.row(i).iter().map(|v| v.to_bits()).collect() };
    let mut first: HashMap<Vec<u64>, (usize, bool)> = HashMap::new();
    for i in 0..rows.len() {
        first
            .entry(key(i))
            .and_modify(|(j, conflict)| *conflict |= rows.labels[*j] != rows.labels[i])
            .or_insert((i, false));
    }
    let mut kept: Vec<usize> = Vec::new();
    let mut conflicting = 0;
    for i in 0..rows.len() {
        let (j, conflict) = first[&key(i)];
        if conflict {
            conflicting += 1;
        } else if j == i {
            kept.push(i);
        }
    }
    (rows.select(&kept), conflicting)
}

/// Indices split into (first, second), stratified by label, with `fraction` of
/// each class in `second`.
fn stratified_split(
    labels: &[bool],
    fraction: f64,
    rng: &mut Xoshiro256PlusPlus,
) -> (Vec<usize>, Vec<usize>) {
    let (mut first, mut second) = (Vec::new(), Vec::new());
    for class in [false, true] {
        let mut rows: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == class).collect();
        rows.shuffle(rng);
        let held = (rows.len() as f64 * fraction).round() as usize;
        second.extend_from_slice(&rows[..held]);
        first.extend_from_slice(&rows[held..]);
    }
    first.sort_unstable();
    second.sort_unstable();
    (first, second)
}

/// The data set's rows split in two, stratified by label and seeded: `fraction`
/// of each class goes to the second part (the held-out test rows).
pub fn holdout_split(rows: &LabelledRows, fraction: f64, seed: u64) -> (LabelledRows, LabelledRows) {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let (first, second) = stratified_split(&rows.labels, fraction, &mut rng);
    (rows.select(&first), rows.select(&second))
}

/// Sample weights giving each class half of the total weight, so that the
/// majority class (malware, in the data set) does not dominate the loss.
pub fn balanced_weights(labels: &[bool]) -> Vec<f64> {
    let total = labels.len() as f64;
    let positives = labels.iter().filter(|&&l| l).count() as f64;
    let negatives = total - positives;
    labels.iter().map(|&l| if l { total / (2.0 * positives) } else { total / (2.0 * negatives) }).collect()
}

/// The data set's unique rows split into train / calibration / test, stratified.
pub(crate) struct HeaderSplit {
    pub(crate) train: LabelledRows,
    pub(crate) calibration: LabelledRows,
    pub(crate) test: LabelledRows,
}

/// The split every run of the pipeline makes first (so the same seed gives the
/// same data set rows to `train` and to the cross-source evaluation).
pub(crate) fn split_header(
    unique: &LabelledRows,
    options: &TrainingOptions,
    rng: &mut Xoshiro256PlusPlus,
) -> HeaderSplit {
    let (rest, test) = stratified_split(&unique.labels, options.test_fraction, rng);
    let rest = unique.select(&rest);
    let test = unique.select(&test);
    let (train, calibration) = stratified_split(&rest.labels, options.calibration_fraction, rng);
    HeaderSplit { train: rest.select(&train), calibration: rest.select(&calibration), test }
}

/// Corpus files divided by package into (train, calibration, test) rows, all benign.
struct CorpusParts {
    train: LabelledRows,
    calibration: LabelledRows,
    test: LabelledRows,
    test_packages: Vec<String>,
    split: CorpusSplit,
}

fn split_corpus(
    corpus: &Corpus,
    options: &TrainingOptions,
    rng: &mut Xoshiro256PlusPlus,
    header_train: &LabelledRows,
) -> Result<CorpusParts, TrainError> {
    let mut packages: Vec<&str> = corpus.files.iter().map(|f| f.package.as_str()).collect();
    packages.sort_unstable();
    packages.dedup();
    if packages.len() < 3 {
        return Err(TrainError::TooFew(format!(
            "the corpus has {} usable packages; train, calibration and test need one each",
            packages.len()
        )));
    }
    packages.shuffle(rng);
    let count = |fraction: f64| ((packages.len() as f64 * fraction).round() as usize).max(1);
    let test_count = count(options.corpus_test_fraction);
    let calibration_count = count(options.corpus_calibration_fraction).min(packages.len() - test_count - 1);
    let test: Vec<&str> = packages[..test_count].to_vec();
    let calibration: Vec<&str> = packages[test_count..test_count + calibration_count].to_vec();

    let mut parts = CorpusParts {
        train: LabelledRows::default(),
        calibration: LabelledRows::default(),
        test: LabelledRows::default(),
        test_packages: Vec::new(),
        split: CorpusSplit {
            files: corpus.files.len(),
            packages: packages.len(),
            train_files: 0,
            train_packages: packages.len() - test_count - calibration_count,
            calibration_files: 0,
            calibration_packages: calibration_count,
            test_files: 0,
            test_packages: test_count,
            test_files_seen_in_training: 0,
        },
    };
    let mut test_files = Vec::new();
    for file in &corpus.files {
        if test.contains(&file.package.as_str()) {
            test_files.push(file);
        } else if calibration.contains(&file.package.as_str()) {
            parts.calibration.push(&file.features, false);
        } else {
            parts.train.push(&file.features, false);
        }
    }
    // A test file identical (in features) to a trained row measures memory, not
    // generalisation: leave it out and say how many.
    let trained: std::collections::HashSet<Vec<u64>> = (0..parts.train.len())
        .map(|i| parts.train.row(i))
        .chain((0..header_train.len()).map(|i| header_train.row(i)))
        .map(|row| row.iter().map(|v| v.to_bits()).collect())
        .collect();
    for file in test_files {
        let key: Vec<u64> = file.features.iter().map(|v| v.to_bits()).collect();
        if trained.contains(&key) {
            parts.split.test_files_seen_in_training += 1;
        } else {
            parts.test.push(&file.features, false);
            parts.test_packages.push(file.package.clone());
        }
    }
    parts.split.train_files = parts.train.len();
    parts.split.calibration_files = parts.calibration.len();
    parts.split.test_files = parts.test.len();
    Ok(parts)
}

/// A boosted, calibrated model with its threshold.
pub(crate) struct FittedModel {
    booster: Booster,
    calibration: PlattScaling,
    pub(crate) threshold: f64,
}

impl FittedModel {
    pub(crate) fn scores(&self, rows: &LabelledRows) -> Result<Vec<f64>, TrainError> {
        Ok(self
            .booster
            .predict_margins(&rows.values)?
            .into_iter()
            .map(|m| self.calibration.probability(m))
            .collect())
    }
}

/// Boosts on `train` (+ `extra_benign`, weighted), calibrates on
/// `calibration` (+ `extra_calibration`) and picks the threshold. The columns
/// of `excluded` (true = excluded) are set to one constant for the boosting, so
/// no tree can split on them and a file's real value there never moves a score.
pub(crate) fn fit(
    train: &LabelledRows,
    extra_benign: Option<&LabelledRows>,
    calibration: &LabelledRows,
    extra_calibration: Option<&LabelledRows>,
    excluded: &[bool; FEATURES],
    options: &TrainingOptions,
) -> Result<FittedModel, TrainError> {
    let mut rows = train.clone();
    let mut corpus_rows = vec![false; train.len()];
    if let Some(extra) = extra_benign {
        rows.values.extend_from_slice(&extra.values);
        rows.labels.extend_from_slice(&extra.labels);
        corpus_rows.resize(rows.len(), true);
    }
    let weights: Vec<f64> = balanced_weights(&rows.labels)
        .into_iter()
        .zip(&corpus_rows)
        .map(|(weight, &from_corpus)| if from_corpus { weight * options.corpus_weight } else { weight })
        .collect();
    if excluded.iter().any(|&e| e) {
        for row in rows.values.chunks_mut(FEATURES) {
            for (value, _) in row.iter_mut().zip(excluded).filter(|(_, e)| **e) {
                *value = 0.0;
            }
        }
    }
    let params = Params { seed: options.seed, ..options.params.clone() };
    let data =
        Dataset { values: &rows.values, n_features: FEATURES, labels: &rows.labels, weights: Some(&weights) };
    let booster = Booster::fit(&data, &params)?;

    let mut calibration_rows = calibration.clone();
    if let Some(extra) = extra_calibration {
        calibration_rows.values.extend_from_slice(&extra.values);
        calibration_rows.labels.extend_from_slice(&extra.labels);
    }
    let margins = booster.predict_margins(&calibration_rows.values)?;
    let platt = PlattScaling::fit(&margins, &calibration_rows.labels)?;
    let mut fitted = FittedModel { booster, calibration: platt, threshold: 1.0 };

    // The threshold keeps each benign population's calibration FPR within target.
    let header_scores = fitted.scores(calibration)?;
    let mut threshold = detection_at_fpr(&header_scores, &calibration.labels, options.target_fpr)?.threshold;
    if let Some(extra) = extra_calibration {
        let malware: Vec<usize> = (0..calibration.len()).filter(|&i| calibration.labels[i]).collect();
        let mut scores: Vec<f64> = malware.iter().map(|&i| header_scores[i]).collect();
        let mut labels = vec![true; scores.len()];
        scores.extend(fitted.scores(extra)?);
        labels.resize(scores.len(), false);
        threshold = threshold.max(detection_at_fpr(&scores, &labels, options.target_fpr)?.threshold);
    }
    // No admissible point (every benign score is 1.0) leaves an infinite threshold.
    fitted.threshold = threshold.min(1.0);
    Ok(fitted)
}

fn benign_evaluation(scores: &[f64], packages: &[String], threshold: f64) -> BenignEvaluation {
    let mut flagged_by_package: Vec<(String, usize)> = Vec::new();
    for (score, package) in scores.iter().zip(packages) {
        if *score >= threshold {
            match flagged_by_package.iter_mut().find(|(p, _)| p == package) {
                Some((_, count)) => *count += 1,
                None => flagged_by_package.push((package.clone(), 1)),
            }
        }
    }
    flagged_by_package.sort();
    let mut distinct = packages.to_vec();
    distinct.sort_unstable();
    distinct.dedup();
    let flagged = flagged_by_package.iter().map(|(_, c)| c).sum();
    let flagged_at_half = scores.iter().filter(|&&s| s >= 0.5).count();
    let rate = |count: usize| if scores.is_empty() { 0.0 } else { count as f64 / scores.len() as f64 };
    BenignEvaluation {
        packages: distinct.len(),
        files: scores.len(),
        flagged,
        false_positive_rate: rate(flagged),
        flagged_at_half,
        false_positive_rate_at_half: rate(flagged_at_half),
        flagged_by_package,
    }
}

/// Trains the static model from the header data set and, when given, the benign
/// corpus, and evaluates it on what was kept out.
pub fn train(
    header: &LabelledRows,
    corpus: Option<&Corpus>,
    options: &TrainingOptions,
) -> Result<StaticModel, TrainError> {
    let excluded = feature_mask(&options.excluded_features)?;
    let (unique, conflicting) = deduplicate(header);
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(options.seed);
    let split = split_header(&unique, options, &mut rng);
    let HeaderSplit { train: header_train, calibration: header_calibration, test: header_test } = split;

    let corpus_parts = corpus.map(|c| split_corpus(c, options, &mut rng, &header_train)).transpose()?;
    let fitted = fit(
        &header_train,
        corpus_parts.as_ref().map(|p| &p.train),
        &header_calibration,
        corpus_parts.as_ref().map(|p| &p.calibration),
        &excluded,
        options,
    )?;

    let test_scores = fitted.scores(&header_test)?;
    let header_report = Report::new(&test_scores, &header_test.labels, fitted.threshold)?;
    let (held_out_packages, combined_test, header_only_baseline) = match &corpus_parts {
        Some(parts) if !parts.test.is_empty() => {
            let corpus_scores = fitted.scores(&parts.test)?;
            let held_out = benign_evaluation(&corpus_scores, &parts.test_packages, fitted.threshold);
            let mut scores = test_scores.clone();
            scores.extend_from_slice(&corpus_scores);
            let mut labels = header_test.labels.clone();
            labels.extend_from_slice(&parts.test.labels);
            let combined = Report::new(&scores, &labels, fitted.threshold)?;
            let baseline = if options.header_only_baseline {
                let alone = fit(&header_train, None, &header_calibration, None, &excluded, options)?;
                let alone_scores = alone.scores(&header_test)?;
                Some(BaselineEvaluation {
                    threshold: alone.threshold,
                    header_test: Report::new(&alone_scores, &header_test.labels, alone.threshold)?,
                    held_out_packages: benign_evaluation(
                        &alone.scores(&parts.test)?,
                        &parts.test_packages,
                        alone.threshold,
                    ),
                })
            } else {
                None
            };
            (Some(held_out), Some(combined), baseline)
        }
        _ => (None, None, None),
    };

    let summary = TrainingSummary {
        seed: options.seed,
        params: Params { seed: options.seed, ..options.params.clone() },
        target_fpr: options.target_fpr,
        corpus_weight: options.corpus_weight,
        header_rows: header.len(),
        header_unique_rows: unique.len(),
        header_conflicting_rows: conflicting,
        header_train_rows: header_train.len(),
        header_calibration_rows: header_calibration.len(),
        header_test_rows: header_test.len(),
        corpus: corpus_parts.map(|p| p.split),
        trees: fitted.booster.n_trees(),
        excluded_features: FEATURE_NAMES
            .iter()
            .zip(&excluded)
            .filter(|(_, e)| **e)
            .map(|(name, _)| (*name).to_owned())
            .collect(),
    };
    let evaluation =
        Evaluation { header_test: header_report, held_out_packages, combined_test, header_only_baseline };
    Ok(StaticModel::assemble(fitted.booster, fitted.calibration, fitted.threshold, summary, evaluation))
}
