//! The detection model of the network service: fitted normalisation, Isolation Forest, LOF and
//! One-Class SVM combined in an ensemble, plus what the service needs around them to explain a
//! verdict (training medians, categories seen, process frequencies). Fitting happens here,
//! measuring on held-out rows in `model/evaluation.rs`; storing versions is `saved_model`'s job,
//! scheduling is the service's.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use rayon::prelude::*;
use sentinel_anomaly::{
    ColumnKind, Combination, Contamination, Detector, Ensemble, EnsembleParams, Gamma, IsolationForest,
    IsolationForestParams, LocalOutlierFactor, LofParams, Matrix, MissingPolicy, Model, OneClassSvm,
    OneClassSvmParams, PreprocessParams, Preprocessor, Scaling, Value,
};
use serde::{Deserialize, Serialize};

use crate::features::{CATEGORICAL_FEATURES, NUMERIC_FEATURES, PROCESS_RARITY, RawFeatures, is_heavy_tailed};
use crate::settings::ModelSettings;

/// One stored training row: the raw features and the process they came from.
#[derive(Debug, Clone)]
pub(crate) struct TrainingRow {
    pub features: RawFeatures,
    pub process_name: Option<String>,
    /// The `label` column: true for rows an analyst marked anomalous.
    pub anomalous: bool,
}

/// Quality measured on held-out rows. Precision, recall, F1 and ROC AUC need labelled
/// anomalies in the history; without them they are `None` and only the false-positive rate on
/// held-out normal traffic is measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    pub model_name: String,
    pub validation_rows: usize,
    pub labelled_anomalies: usize,
    pub accuracy: f64,
    pub precision: Option<f64>,
    pub recall: Option<f64>,
    pub f1: Option<f64>,
    pub auc_roc: Option<f64>,
    pub false_positive_rate: f64,
    pub threshold: f64,
}

/// What the store keeps beside the fitted objects, as JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ModelFacts {
    /// Median of each numeric feature in training, for explanations.
    pub medians: Vec<f64>,
    /// Categories seen in training, per categorical feature.
    pub categories: Vec<BTreeSet<String>>,
    /// Share of training rows per process name.
    pub process_shares: BTreeMap<String, f64>,
    /// Rarity given to a process never seen in training.
    pub unseen_rarity: f64,
    pub evaluations: Vec<Evaluation>,
    /// Numeric features (by index) that no training row had: see [`ModelFacts::input_row`].
    /// Absent from models saved before it existed, which had none.
    #[serde(default)]
    pub never_seen: Vec<usize>,
}

/// A fitted model, ready to score.
pub(crate) struct ModelBundle {
    pub preprocessor: Preprocessor,
    pub ensemble: Ensemble,
    pub facts: ModelFacts,
}

/// One model's opinion of one item.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelScore {
    /// Borrowed when scored here, owned when received from another replica.
    pub model: Cow<'static, str>,
    pub score: f64,
    pub threshold: f64,
    pub is_anomaly: bool,
}

/// A feature that made an item unusual.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FeatureExplanation {
    pub feature: String,
    /// The item's value (raw), or the unseen category.
    pub value: serde_json::Value,
    /// The median in training, or `null` for a category.
    pub baseline: Option<f64>,
    /// Standard deviations from the training mean (after the log transform of heavy-tailed
    /// features); 0 for an unseen category.
    pub deviation: f64,
}

/// The verdict on one item.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Verdict {
    pub models: Vec<ModelScore>,
    /// The ensemble's score: about the share of normal training rows scoring lower, above 1
    /// beyond anything seen in training.
    pub score: f64,
    pub threshold: f64,
    pub is_anomaly: bool,
    /// Share of the models whose own decision agrees with the ensemble's.
    pub confidence: f64,
    /// Up to three features furthest from training, most unusual first.
    pub explanation: Vec<FeatureExplanation>,
}

/// Deviations below this are not worth explaining.
const EXPLAIN_MIN_DEVIATION: f64 = 2.0;
const EXPLAIN_MAX_FEATURES: usize = 3;

/// Why fitting failed.
#[derive(Debug, thiserror::Error)]
pub enum FitError {
    #[error("not enough history to train: {rows} rows, at least {required} needed")]
    TooFewRows { rows: usize, required: usize },
    #[error("training cancelled")]
    Cancelled,
    #[error("model: {0}")]
    Anomaly(#[from] sentinel_anomaly::AnomalyError),
}

fn schema() -> Vec<ColumnKind> {
    let mut schema: Vec<ColumnKind> = (0..NUMERIC_FEATURES.len())
        .map(|index| if is_heavy_tailed(index) { ColumnKind::LogNumeric } else { ColumnKind::Numeric })
        .collect();
    schema.push(ColumnKind::LogNumeric);
    schema.extend([ColumnKind::Categorical; CATEGORICAL_FEATURES.len()]);
    schema
}

/// Progress reports and cancellation checks between fitting stages.
pub(crate) trait FitObserver {
    fn stage(&self, name: &'static str, progress: f64) -> Result<(), FitError>;
}

impl ModelBundle {
    /// Fits a model on `rows` (labelled anomalies are kept for evaluation only).
    pub(crate) fn fit(
        rows: &[TrainingRow],
        settings: &ModelSettings,
        observer: &dyn FitObserver,
    ) -> Result<ModelBundle, FitError> {
        let normal: Vec<&TrainingRow> = rows.iter().filter(|row| !row.anomalous).collect();
        if normal.len() < settings.min_training_rows {
            return Err(FitError::TooFewRows { rows: normal.len(), required: settings.min_training_rows });
        }
        observer.stage("preprocessing", 0.1)?;
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(settings.seed);
        let mut order: Vec<usize> = (0..normal.len()).collect();
        order.shuffle(&mut rng);
        let validation_len = (normal.len() as f64 * settings.validation_fraction) as usize;
        let (validation_order, training_order) = order.split_at(validation_len);
        let training: Vec<&TrainingRow> = training_order.iter().map(|&i| normal[i]).collect();

        let mut counts: HashMap<&str, usize> = HashMap::new();
        for row in &training {
            *counts.entry(row.process_name.as_deref().unwrap_or("")).or_default() += 1;
        }
        let total = training.len() as f64;
        let process_shares: BTreeMap<String, f64> =
            counts.into_iter().map(|(name, count)| (name.to_owned(), count as f64 / total)).collect();
        let unseen_rarity = (total + 1.0).ln();
        let mut facts = ModelFacts {
            medians: Vec::new(),
            categories: vec![BTreeSet::new(); CATEGORICAL_FEATURES.len()],
            process_shares,
            unseen_rarity,
            evaluations: Vec::new(),
            never_seen: Vec::new(),
        };
        for row in &training {
            for (seen, category) in facts.categories.iter_mut().zip(&row.features.categories) {
                if !seen.contains(category) {
                    seen.insert(category.clone());
                }
            }
        }
        for index in 0..NUMERIC_FEATURES.len() {
            let mut values: Vec<f64> =
                training.iter().filter_map(|row| row.features.numbers[index]).collect();
            values.sort_by(f64::total_cmp);
            facts.medians.push(values.get(values.len() / 2).copied().unwrap_or(0.0));
            if values.is_empty() {
                facts.never_seen.push(index);
            }
        }

        let inputs: Vec<Vec<Value<'_>>> =
            training.iter().map(|row| facts.input_row(&row.features, row.process_name.as_deref())).collect();
        let preprocessor = Preprocessor::fit(
            &schema(),
            &inputs,
            &PreprocessParams { scaling: Scaling::Standard, missing: MissingPolicy::Median },
        )?;
        let matrix = preprocessor.transform(&inputs)?;
        let contamination = Contamination::Fraction(settings.false_positive_rate.clamp(1e-4, 0.5));

        observer.stage("isolation_forest", 0.25)?;
        let forest = IsolationForest::fit(
            &matrix,
            &IsolationForestParams {
                n_trees: settings.isolation_forest_trees,
                max_samples: 256,
                contamination,
                seed: settings.seed,
            },
        )?;
        observer.stage("local_outlier_factor", 0.45)?;
        let lof_rows = subsample(&distinct_rows(&matrix)?, settings.lof_max_rows, &mut rng)?;
        let lof = LocalOutlierFactor::fit(
            &lof_rows,
            &LofParams {
                n_neighbors: settings.lof_neighbors.min(lof_rows.rows().saturating_sub(1)).max(1),
                contamination,
            },
        )?;
        observer.stage("one_class_svm", 0.65)?;
        let svm_rows = subsample(&matrix, settings.svm_max_rows, &mut rng)?;
        let svm = OneClassSvm::fit(
            &svm_rows,
            &OneClassSvmParams {
                nu: settings.svm_nu,
                gamma: Gamma::Scale,
                contamination,
                ..OneClassSvmParams::default()
            },
        )?;
        observer.stage("ensemble", 0.8)?;
        // The ensemble's threshold is calibrated on held-out rows, not on the rows the models
        // were fitted on: LOF and the SVM score their own training rows lower than new traffic,
        // so an in-sample threshold would flag far more than the target rate. Half the held-out
        // rows calibrate, the other half measure.
        let held_out: Vec<&TrainingRow> = validation_order.iter().map(|&i| normal[i]).collect();
        let (calibration_rows, evaluation_rows) = held_out.split_at(held_out.len() / 2);
        let calibration = if calibration_rows.len() >= 20 {
            let inputs: Vec<Vec<Value<'_>>> = calibration_rows
                .iter()
                .map(|row| facts.input_row(&row.features, row.process_name.as_deref()))
                .collect();
            preprocessor.transform(&inputs)?
        } else {
            subsample(&matrix, 5000, &mut rng)?
        };
        let ensemble = Ensemble::new(
            vec![Model::IsolationForest(forest), Model::LocalOutlierFactor(lof), Model::OneClassSvm(svm)],
            &calibration,
            EnsembleParams {
                combination: settings.combination,
                false_positive_rate: settings.false_positive_rate,
                feedback_rate: 0.5,
                beyond_range: settings.beyond_range,
                weighting: settings.weighting,
            },
        )?;
        let mut bundle = ModelBundle { preprocessor, ensemble, facts };

        observer.stage("evaluation", 0.9)?;
        let mut evaluated: Vec<&TrainingRow> =
            if calibration_rows.len() >= 20 { evaluation_rows.to_vec() } else { held_out.clone() };
        evaluated.extend(rows.iter().filter(|row| row.anomalous));
        let stacking = settings.combination == Combination::Stacking;
        if stacking && evaluated.iter().any(|row| row.anomalous) {
            let (matrix, labels) = bundle.labelled_matrix(&evaluated)?;
            bundle.ensemble.learn_from_feedback(&matrix, &labels)?;
        }
        bundle.facts.evaluations = bundle.evaluate(&evaluated)?;
        Ok(bundle)
    }

    /// Scores one item (an event of the live or ingested streams). `buffer` is reused between
    /// calls to avoid allocating.
    pub(crate) fn judge(
        &self,
        features: &RawFeatures,
        process_name: Option<&str>,
        buffer: &mut Vec<f64>,
    ) -> Result<Verdict, sentinel_anomaly::AnomalyError> {
        buffer.resize(self.preprocessor.output_width(), 0.0);
        self.scale_into(features, process_name, buffer);
        let member_scores: Vec<f64> =
            self.ensemble.members().iter().map(|member| member.score_checked(buffer)).collect();
        self.verdict(features, process_name, buffer, &member_scores)
    }

    /// Scores a batch (`/api/v1/analyze`) as one matrix: each member scores every item in one
    /// call, where LOF finds the neighbours of a block of items with one matrix product and the
    /// Isolation Forest walks its trees a block of rows at a time. Item by item, LOF's distances
    /// to its kept rows were most of the cost of a verdict. Scaling and the verdicts are
    /// parallel over items.
    pub(crate) fn judge_batch<I: Sync>(
        &self,
        items: &[I],
        item: impl Fn(&I) -> (&RawFeatures, Option<&str>) + Sync,
    ) -> Result<Vec<Verdict>, sentinel_anomaly::AnomalyError> {
        // The width is never 0 for a fitted model; `max(1)` keeps `par_chunks_mut` defined and
        // lets `Matrix::new` refuse the impossible shape with an error.
        let width = self.preprocessor.output_width().max(1);
        let mut values = vec![0.0; items.len() * width];
        values.par_chunks_mut(width).zip(items.par_iter()).for_each(|(out, one)| {
            let (features, process_name) = item(one);
            self.scale_into(features, process_name, out);
        });
        let matrix = Matrix::new(values, width)?;
        let members = self.ensemble.members();
        let scores: Vec<Vec<f64>> =
            members.iter().map(|member| member.score(&matrix)).collect::<Result<_, _>>()?;
        items
            .par_iter()
            .enumerate()
            .map_init(
                || Vec::with_capacity(members.len()),
                |member_scores, (row, one)| {
                    let (features, process_name) = item(one);
                    member_scores.clear();
                    member_scores.extend(scores.iter().map(|member| member[row]));
                    self.verdict(features, process_name, matrix.row(row), member_scores)
                },
            )
            .collect()
    }

    /// Writes the scaled row of an item into `out` (of the preprocessor's output width).
    fn scale_into(&self, features: &RawFeatures, process_name: Option<&str>, out: &mut [f64]) {
        let row = self.facts.input_row(features, process_name);
        if let Err(error) = self.preprocessor.transform_row(&row, out) {
            // Values are checked when they enter the service; a failure here is a bug, reported
            // loudly, and the item is scored as the training mean rather than dropped.
            tracing::error!(%error, "feature vector could not be normalised");
            out.fill(0.0);
        }
    }

    /// The verdict on an item from its scaled row and its members' scores (in
    /// [`Ensemble::members`] order).
    fn verdict(
        &self,
        features: &RawFeatures,
        process_name: Option<&str>,
        scaled: &[f64],
        member_scores: &[f64],
    ) -> Result<Verdict, sentinel_anomaly::AnomalyError> {
        let models: Vec<ModelScore> = self
            .ensemble
            .members()
            .iter()
            .zip(member_scores)
            .map(|(member, &score)| ModelScore {
                model: Cow::Borrowed(member.name()),
                score,
                threshold: member.threshold(),
                is_anomaly: score >= member.threshold(),
            })
            .collect();
        // From the members' scores: scoring the ensemble itself would run every member a
        // second time.
        let score = self.ensemble.combine_member_scores(member_scores)?;
        let threshold = self.ensemble.threshold();
        let is_anomaly = confirmed(score, threshold, models.iter().map(|model| model.is_anomaly));
        let agreeing = models.iter().filter(|model| model.is_anomaly == is_anomaly).count();
        let confidence = agreeing as f64 / models.len() as f64;
        let explanation = self.explain(features, self.facts.rarity(process_name), process_name, scaled);
        Ok(Verdict { models, score, threshold, is_anomaly, confidence, explanation })
    }

    fn explain(
        &self,
        features: &RawFeatures,
        rarity: f64,
        process_name: Option<&str>,
        scaled: &[f64],
    ) -> Vec<FeatureExplanation> {
        let mut found: Vec<FeatureExplanation> = Vec::new();
        for (index, name) in NUMERIC_FEATURES.iter().enumerate() {
            let deviation = scaled[index];
            if deviation.abs() >= EXPLAIN_MIN_DEVIATION {
                found.push(FeatureExplanation {
                    feature: (*name).to_owned(),
                    value: features.numbers[index].map_or(serde_json::Value::Null, serde_json::Value::from),
                    baseline: Some(self.facts.medians[index]),
                    deviation,
                });
            }
        }
        let rarity_deviation = scaled[NUMERIC_FEATURES.len()];
        if rarity_deviation >= EXPLAIN_MIN_DEVIATION {
            found.push(FeatureExplanation {
                feature: PROCESS_RARITY.to_owned(),
                value: serde_json::json!({ "process_name": process_name, "rarity": rarity }),
                baseline: None,
                deviation: rarity_deviation,
            });
        }
        found.sort_by(|a, b| b.deviation.abs().total_cmp(&a.deviation.abs()));
        for ((name, seen), category) in
            CATEGORICAL_FEATURES.iter().zip(&self.facts.categories).zip(&features.categories)
        {
            if !seen.contains(category) {
                found.insert(
                    0,
                    FeatureExplanation {
                        feature: (*name).to_owned(),
                        value: serde_json::Value::from(category.as_str()),
                        baseline: None,
                        deviation: 0.0,
                    },
                );
            }
        }
        found.truncate(EXPLAIN_MAX_FEATURES);
        found
    }

    /// Thresholds per model and of the ensemble.
    pub(crate) fn thresholds(&self) -> BTreeMap<String, f64> {
        let mut thresholds: BTreeMap<String, f64> = self
            .ensemble
            .members()
            .iter()
            .map(|member| (member.name().to_owned(), member.threshold()))
            .collect();
        thresholds.insert("ensemble".to_owned(), self.ensemble.threshold());
        thresholds
    }
}

impl ModelFacts {
    fn rarity(&self, process_name: Option<&str>) -> f64 {
        match self.process_shares.get(process_name.unwrap_or("")) {
            Some(share) => -share.ln(),
            None => self.unseen_rarity,
        }
    }

    /// The preprocessor's input row: numeric features, process rarity, then categories. Numeric
    /// columns come first so that their scaled values sit at the same output positions.
    ///
    /// A missing number stays missing (the preprocessor fills it with the training median),
    /// except in a feature no training row had (a Windows agent that sends no RTT, a history of
    /// first sightings only, which have no rates): the preprocessor refuses a column without
    /// values, so that one is 0 throughout, a constant that carries no weight.
    fn input_row<'a>(&self, features: &'a RawFeatures, process_name: Option<&str>) -> Vec<Value<'a>> {
        let mut row: Vec<Value<'a>> = features
            .numbers
            .iter()
            .enumerate()
            .map(|(index, value)| match value {
                Some(number) => Value::Number(*number),
                None if self.never_seen.contains(&index) => Value::Number(0.0),
                None => Value::Missing,
            })
            .collect();
        row.push(Value::Number(self.rarity(process_name)));
        row.extend(features.categories.iter().map(|category| Value::Category(category.as_str())));
        row
    }
}

/// At most `limit` rows drawn without replacement (all of them when there are fewer).
fn subsample(matrix: &Matrix, limit: usize, rng: &mut impl Rng) -> Result<Matrix, FitError> {
    if matrix.rows() <= limit {
        return Ok(matrix.clone());
    }
    let mut indices: Vec<usize> = (0..matrix.rows()).collect();
    indices.shuffle(rng);
    indices.truncate(limit);
    indices.sort_unstable();
    Ok(matrix.select_rows(&indices)?)
}

/// The rows of `matrix` without repeats, in their first order. LOF is fitted on these. Traffic
/// repeats itself (the same request, the same idle socket), and a row with more copies than LOF
/// has neighbours sits at distance 0 from all of them: a density that only scikit-learn's 1e-10
/// keeps finite. Ordinary rows next to it then score LOF in the millions, the member's threshold
/// at the target false-positive rate lands there, and LOF flags nothing at all. Counting each
/// distinct row once, as the k-distinct distance Breunig et al. propose for duplicates does, keeps
/// every density finite and on the scale of the data (docs/network.md, "Models").
fn distinct_rows(matrix: &Matrix) -> Result<Matrix, FitError> {
    let mut seen = HashSet::with_capacity(matrix.rows());
    let kept: Vec<usize> =
        (0..matrix.rows()).filter(|&index| seen.insert(RowBits(matrix.row(index)))).collect();
    // One row repeated is all there is to learn: LOF needs two, so it keeps the repeats.
    if kept.len() < 2 {
        return Ok(matrix.clone());
    }
    Ok(matrix.select_rows(&kept)?)
}

/// A row compared bit for bit, borrowed from its matrix: the training matrix can hold 200,000
/// rows, and a copy of each as a key would double what a training holds in memory.
struct RowBits<'a>(&'a [f64]);

impl PartialEq for RowBits<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.0.iter().zip(other.0).all(|(a, b)| a.to_bits() == b.to_bits())
    }
}

impl Eq for RowBits<'_> {}

impl std::hash::Hash for RowBits<'_> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        for value in self.0 {
            state.write_u64(value.to_bits());
        }
    }
}

/// The ensemble confirms, it does not invent: an item is anomalous when the combined score is
/// at or past its threshold and at least one model, on its own, finds it outside normal. Rows
/// that every model ranks fairly high but none extreme (the members' errors are correlated)
/// would otherwise raise alerts that no model explains.
fn confirmed(score: f64, threshold: f64, mut member_flags: impl Iterator<Item = bool>) -> bool {
    score >= threshold && member_flags.any(|flag| flag)
}

mod evaluation;
#[cfg(test)]
mod go_live_tests;
#[cfg(test)]
pub(crate) mod tests;
