//! Combining detectors. Raw scores are not comparable across models (an
//! Isolation Forest score is near 0.5, a LOF near 1, an SVM's is signed), so each
//! member's score is first mapped through its empirical distribution on normal
//! calibration data: 0.99 means "higher than 99 % of normal rows". Beyond the
//! calibration range the map only breaks ties: a score above every normal row
//! is at most one quantile step above 1 (below every normal row, one step below
//! 0), so order is kept but no member's raw scale (a LOF of 1,000, say) can
//! outweigh the others. The normalised scores are then combined by
//! - weighted averaging,
//! - voting (each member votes at its own false-positive-rate threshold), or
//! - stacking, a logistic regression learned from labelled feedback.
//!
//! Without labels, the members that count are chosen by their agreement with one another on
//! the calibration rows ([`Weighting::Central`], the default): a member the others contradict
//! (LOF blind to clustered anomalies, say) would otherwise drag the average below the best
//! member. Labelled feedback (analyst verdicts) then sets the members' weights from their
//! measured ROC AUC, blended with the previous weights so that one small batch of feedback
//! cannot swing the ensemble.

use serde::{Deserialize, Serialize};

use crate::detector::{Detector, percentile_of_sorted};
use crate::error::{AnomalyError, Result};
use crate::matrix::Matrix;
use crate::model::{Model, validate_model};
use crate::threshold::at_false_positive_rate;

/// How member scores are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Combination {
    Average,
    Vote,
    /// Falls back to averaging until [`Ensemble::learn_from_feedback`] has been called.
    Stacking,
}

/// How a member's score beyond the range of its calibration (normal) scores is
/// normalised, which decides how much one member that sees a row as extreme can
/// move the combination on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BeyondRange {
    /// At most one quantile step beyond the range: a row above every normal
    /// row counts as that, not by how far, so a member with a long-tailed raw
    /// scale cannot decide alone. Better ranking when members disagree in scale
    /// (NSL-KDD: ensemble 0.959 against 0.929 with `Linear`; docs/anomaly.md).
    #[default]
    Saturating,
    /// The quantile map continued linearly, in units of the range's width: a
    /// member that sees a row far outside normal can carry the verdict alone,
    /// which a detector that must flag what any member sees clearly wants.
    Linear,
}

/// How the members' weights are set when the ensemble is built, before any feedback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Weighting {
    /// Every member weighs the same.
    Equal,
    /// The central members share the weight equally, the others get none. A member's
    /// agreement is its ROC AUC on the calibration rows against pseudo-labels: the tenth of
    /// the rows that the other members, on average, rank highest. The members within 0.02
    /// of the highest agreement are central. Unsupervised model
    /// selection by centrality (Ma, Zhao & Akoglu 2023, "The need for unsupervised outlier
    /// model selection"), keeping every member about as central as the best so that
    /// complementary members are still averaged. Measured against the other rules in
    /// docs/benchmarks.md ("Choosing the ensemble's rule").
    #[default]
    Central,
}

/// The agreement (pseudo-label ROC AUC) a member may lose to the most central member and
/// still count, chosen by measurement (docs/benchmarks.md).
const CENTRAL_TOLERANCE: f64 = 0.02;

/// Share of the calibration rows taken as pseudo-anomalies when measuring agreement.
const PSEUDO_ANOMALY_SHARE: f64 = 0.1;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EnsembleParams {
    pub combination: Combination,
    /// The false-positive rate on the calibration rows that sets the member
    /// voting levels and the ensemble threshold.
    pub false_positive_rate: f64,
    /// How much one batch of feedback moves the weights, in (0, 1].
    pub feedback_rate: f64,
    /// Normalisation of scores beyond the calibration range. Ensembles saved
    /// before this setting existed used [`BeyondRange::Linear`].
    #[serde(default = "linear")]
    pub beyond_range: BeyondRange,
    /// How the members' weights are set. Ensembles saved before this setting existed were
    /// built with [`Weighting::Equal`] (their weights are stored; this only records how).
    #[serde(default = "equal")]
    pub weighting: Weighting,
}

fn linear() -> BeyondRange {
    BeyondRange::Linear
}

fn equal() -> Weighting {
    Weighting::Equal
}

impl Default for EnsembleParams {
    fn default() -> Self {
        EnsembleParams {
            combination: Combination::Average,
            false_positive_rate: 0.01,
            feedback_rate: 0.5,
            beyond_range: BeyondRange::Saturating,
            weighting: Weighting::Central,
        }
    }
}

/// Quantiles kept per member for normalisation: enough for a smooth map, small on disk.
const CALIBRATION_QUANTILES: usize = 1001;
/// Calibration rows kept to re-derive the threshold when the combination changes.
const CALIBRATION_ROWS: usize = 2000;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ensemble {
    members: Vec<Model>,
    /// Per member, ascending quantiles of its scores on calibration data.
    quantiles: Vec<Vec<f64>>,
    weights: Vec<f64>,
    params: EnsembleParams,
    /// Stacking coefficients (one per member, then the intercept) once learned.
    stacker: Option<Vec<f64>>,
    /// Normalised member scores of a sample of calibration rows, row-major.
    calibration: Vec<f64>,
    threshold: f64,
}

impl Ensemble {
    /// Combines fitted `members`, calibrating on `calibration`, rows known or
    /// assumed to be normal (typically the training data).
    pub fn new(members: Vec<Model>, calibration: &Matrix, params: EnsembleParams) -> Result<Ensemble> {
        if members.is_empty() {
            return Err(AnomalyError::Empty("an ensemble needs at least one member"));
        }
        if calibration.is_empty() {
            return Err(AnomalyError::Empty("no calibration rows"));
        }
        if !(params.false_positive_rate > 0.0 && params.false_positive_rate < 0.5) {
            return Err(AnomalyError::Parameter("false_positive_rate must be in (0, 0.5)".into()));
        }
        if !(params.feedback_rate > 0.0 && params.feedback_rate <= 1.0) {
            return Err(AnomalyError::Parameter("feedback_rate must be in (0, 1]".into()));
        }
        let mut quantiles = Vec::with_capacity(members.len());
        for member in &members {
            let mut scores = member.score(calibration)?;
            scores.sort_by(f64::total_cmp);
            quantiles.push(
                (0..CALIBRATION_QUANTILES)
                    .map(|q| {
                        percentile_of_sorted(&scores, 100.0 * q as f64 / (CALIBRATION_QUANTILES - 1) as f64)
                    })
                    .collect(),
            );
        }
        let weights = vec![1.0 / members.len() as f64; members.len()];
        let mut ensemble = Ensemble {
            members,
            quantiles,
            weights,
            params,
            stacker: None,
            calibration: Vec::new(),
            threshold: 0.0,
        };
        let step = calibration.rows().div_ceil(CALIBRATION_ROWS);
        let sample: Vec<usize> = (0..calibration.rows()).step_by(step).collect();
        ensemble.calibration = ensemble.normalised_matrix(&calibration.select_rows(&sample)?)?;
        if params.weighting == Weighting::Central {
            ensemble.weights = ensemble.central_weights();
        }
        ensemble.recalibrate()?;
        Ok(ensemble)
    }

    /// Normalised scores of every member for every row, row-major.
    fn normalised_matrix(&self, data: &Matrix) -> Result<Vec<f64>> {
        let k = self.members.len();
        let mut out = vec![0.0; data.rows() * k];
        for (m, member) in self.members.iter().enumerate() {
            for (row, score) in member.score(data)?.into_iter().enumerate() {
                out[row * k + m] = normalise(&self.quantiles[m], score, self.params.beyond_range);
            }
        }
        Ok(out)
    }

    fn combine(&self, normalised: &[f64]) -> f64 {
        match (self.params.combination, &self.stacker) {
            (Combination::Stacking, Some(beta)) => {
                normalised.iter().zip(beta).map(|(x, b)| x * b).sum::<f64>() + beta[normalised.len()]
            }
            (Combination::Vote, _) => {
                let level = 1.0 - self.params.false_positive_rate;
                normalised
                    .iter()
                    .zip(&self.weights)
                    .filter(|(x, _)| **x >= level)
                    .map(|(_, w)| w)
                    .sum::<f64>()
                    / self.weights.iter().sum::<f64>()
            }
            _ => {
                normalised.iter().zip(&self.weights).map(|(x, w)| x * w).sum::<f64>()
                    / self.weights.iter().sum::<f64>()
            }
        }
    }

    /// Sets the threshold: a weighted majority for voting, otherwise the target
    /// false-positive rate on the calibration rows.
    fn recalibrate(&mut self) -> Result<()> {
        self.threshold = if self.params.combination == Combination::Vote {
            // More than half of the weight: a tie is not a majority.
            0.5f64.next_up()
        } else {
            let k = self.members.len();
            let scores: Vec<f64> = self.calibration.chunks_exact(k).map(|row| self.combine(row)).collect();
            at_false_positive_rate(&scores, self.params.false_positive_rate)?
        };
        Ok(())
    }

    /// Learns from rows an analyst has labelled (`true` = anomaly): each member's
    /// weight moves towards its ROC AUC above chance on these rows, and with
    /// stacking the logistic combiner is refitted. Needs both classes.
    pub fn learn_from_feedback(&mut self, data: &Matrix, labels: &[bool]) -> Result<()> {
        if data.rows() != labels.len() {
            return Err(AnomalyError::Parameter(format!("{} rows but {} labels", data.rows(), labels.len())));
        }
        let k = self.members.len();
        let normalised = self.normalised_matrix(data)?;
        let mut measured = Vec::with_capacity(k);
        for m in 0..k {
            let scores: Vec<f64> = normalised.chunks_exact(k).map(|row| row[m]).collect();
            measured.push((sentinel_metrics::roc_auc(&scores, labels)? - 0.5).max(0.0));
        }
        let total: f64 = measured.iter().sum();
        if total > 0.0 {
            let rate = self.params.feedback_rate;
            for (weight, skill) in self.weights.iter_mut().zip(&measured) {
                *weight = (1.0 - rate) * *weight + rate * skill / total;
            }
        }
        if self.params.combination == Combination::Stacking {
            self.stacker = Some(fit_logistic(&normalised, labels, k));
        }
        self.recalibrate()
    }

    /// Equal weights for the central members ([`Weighting::Central`]), none for the others.
    fn central_weights(&self) -> Vec<f64> {
        let k = self.members.len();
        let rows: Vec<&[f64]> = self.calibration.chunks_exact(k).collect();
        let agreement: Vec<f64> = (0..k)
            .map(|m| {
                if k == 1 {
                    return 1.0;
                }
                let others: Vec<f64> =
                    rows.iter().map(|row| (row.iter().sum::<f64>() - row[m]) / (k - 1) as f64).collect();
                let mut sorted = others.clone();
                sorted.sort_by(f64::total_cmp);
                let cut = percentile_of_sorted(&sorted, 100.0 * (1.0 - PSEUDO_ANOMALY_SHARE));
                let pseudo_labels: Vec<bool> = others.iter().map(|&other| other >= cut).collect();
                let own: Vec<f64> = rows.iter().map(|row| row[m]).collect();
                // The others' scores all tied: no pseudo-anomalies, so no evidence either way.
                sentinel_metrics::roc_auc(&own, &pseudo_labels).unwrap_or(0.5)
            })
            .collect();
        let best = agreement.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let central: Vec<bool> = agreement.iter().map(|&a| a >= best - CENTRAL_TOLERANCE).collect();
        let count = central.iter().filter(|&&c| c).count() as f64;
        central.iter().map(|&c| if c { 1.0 / count } else { 0.0 }).collect()
    }

    pub fn weights(&self) -> &[f64] {
        &self.weights
    }

    pub fn members(&self) -> &[Model] {
        &self.members
    }

    /// The ensemble's score from its members' raw scores, given in [`Ensemble::members`] order:
    /// for a caller that reports each member's score as well, so that no member scores the
    /// same row twice. Up to 8 members use no heap allocation. One score per member, or
    /// [`AnomalyError::Dimension`].
    pub fn combine_member_scores(&self, member_scores: &[f64]) -> Result<f64> {
        if member_scores.len() != self.members.len() {
            return Err(AnomalyError::Dimension {
                expected: self.members.len(),
                actual: member_scores.len(),
            });
        }
        Ok(self.combine_raw(member_scores))
    }

    /// [`Ensemble::combine_member_scores`] for scores known to be one per member.
    fn combine_raw(&self, member_scores: &[f64]) -> f64 {
        let normalise_into = |out: &mut [f64]| {
            for ((slot, &score), quantiles) in out.iter_mut().zip(member_scores).zip(&self.quantiles) {
                *slot = normalise(quantiles, score, self.params.beyond_range);
            }
        };
        let mut normalised = [0.0f64; 8];
        if member_scores.len() > normalised.len() {
            let mut all = vec![0.0; member_scores.len()];
            normalise_into(&mut all);
            return self.combine(&all);
        }
        let normalised = &mut normalised[..member_scores.len()];
        normalise_into(normalised);
        self.combine(normalised)
    }

    pub(crate) fn validate(&self) -> Result<()> {
        let corrupt = |what: &str| Err(AnomalyError::CorruptModel(format!("ensemble: {what}")));
        let k = self.members.len();
        if k == 0 || self.quantiles.len() != k || self.weights.len() != k {
            return corrupt("bad shape");
        }
        for member in &self.members {
            validate_model(member)?;
            if member.n_features() != self.members[0].n_features() {
                return corrupt("members disagree on the number of features");
            }
        }
        let sorted_finite = |q: &Vec<f64>| {
            q.len() == CALIBRATION_QUANTILES && q.iter().all(|v| v.is_finite()) && q.is_sorted()
        };
        if !self.quantiles.iter().all(sorted_finite) {
            return corrupt("bad calibration quantiles");
        }
        if !self.weights.iter().all(|w| w.is_finite() && *w >= 0.0) || self.weights.iter().sum::<f64>() <= 0.0
        {
            return corrupt("bad weights");
        }
        if let Some(beta) = &self.stacker
            && (beta.len() != k + 1 || !beta.iter().all(|b| b.is_finite()))
        {
            return corrupt("bad stacking coefficients");
        }
        if self.calibration.is_empty()
            || !self.calibration.len().is_multiple_of(k)
            || !self.calibration.iter().all(|v| v.is_finite())
            || !self.threshold.is_finite()
        {
            return corrupt("bad calibration rows");
        }
        Ok(())
    }
}

impl Detector for Ensemble {
    fn n_features(&self) -> usize {
        self.members[0].n_features()
    }

    /// Scores with each member in turn; up to 8 members use no heap allocation.
    fn score_checked(&self, x: &[f64]) -> f64 {
        let mut scores = [0.0f64; 8];
        if self.members.len() > scores.len() {
            let all: Vec<f64> = self.members.iter().map(|member| member.score_checked(x)).collect();
            return self.combine_raw(&all);
        }
        for (slot, member) in scores.iter_mut().zip(&self.members) {
            *slot = member.score_checked(x);
        }
        self.combine_raw(&scores[..self.members.len()])
    }

    fn threshold(&self) -> f64 {
        self.threshold
    }

    fn score(&self, data: &Matrix) -> Result<Vec<f64>> {
        data.check_scorable(self.n_features())?;
        let k = self.members.len();
        Ok(self.normalised_matrix(data)?.chunks_exact(k).map(|row| self.combine(row)).collect())
    }
}

/// The position of `score` in the calibration distribution, in [0, 1] inside its
/// range. Outside it, the distance d beyond the range, in units of the range's
/// width, is kept as d ([`BeyondRange::Linear`]) or mapped to a fraction
/// d / (1 + d) of one quantile step ([`BeyondRange::Saturating`]): order is kept
/// either way.
fn normalise(quantiles: &[f64], score: f64, beyond_range: BeyondRange) -> f64 {
    let (low, high) = (quantiles[0], quantiles[quantiles.len() - 1]);
    let spread = if high > low { high - low } else { 1.0 };
    let step = 1.0 / (quantiles.len() - 1) as f64;
    let beyond = |distance: f64| match beyond_range {
        BeyondRange::Saturating => step * (1.0 - 1.0 / (1.0 + distance)),
        BeyondRange::Linear => distance,
    };
    if score <= low {
        return -beyond((low - score) / spread);
    }
    if score >= high {
        return 1.0 + beyond((score - high) / spread);
    }
    let above = quantiles.partition_point(|&q| q <= score);
    let below = above - 1;
    let (q0, q1) = (quantiles[below], quantiles[above]);
    let within = if q1 > q0 { (score - q0) / (q1 - q0) } else { 0.0 };
    (below as f64 + within) * step
}

/// L2-regularised logistic regression by Newton's method on `k` features
/// (row-major `x`) plus an intercept; returns the coefficients then the intercept.
fn fit_logistic(x: &[f64], labels: &[bool], k: usize) -> Vec<f64> {
    const RIDGE: f64 = 1e-3;
    let p = k + 1;
    let mut beta = vec![0.0; p];
    let mut features = vec![1.0; p];
    for _ in 0..50 {
        let mut gradient = vec![0.0; p];
        let mut hessian = vec![0.0; p * p];
        for (row, &label) in x.chunks_exact(k).zip(labels) {
            features[..k].copy_from_slice(row);
            let z: f64 = features.iter().zip(&beta).map(|(f, b)| f * b).sum();
            let probability = 1.0 / (1.0 + (-z).exp());
            let residual = probability - f64::from(u8::from(label));
            let curvature = (probability * (1.0 - probability)).max(1e-12);
            for a in 0..p {
                gradient[a] += residual * features[a];
                for b in 0..p {
                    hessian[a * p + b] += curvature * features[a] * features[b];
                }
            }
        }
        for a in 0..k {
            gradient[a] += RIDGE * x.len() as f64 / k as f64 * beta[a];
            hessian[a * p + a] += RIDGE * x.len() as f64 / k as f64;
        }
        let Some(step) = solve(&mut hessian, &mut gradient, p) else { break };
        let mut change = 0.0f64;
        for (b, s) in beta.iter_mut().zip(&step) {
            *b -= s;
            change = change.max(s.abs());
        }
        if change < 1e-8 {
            break;
        }
    }
    beta
}

/// Solves the p × p system `a · x = b` by Gaussian elimination with partial
/// pivoting; `None` when singular.
fn solve(a: &mut [f64], b: &mut [f64], p: usize) -> Option<Vec<f64>> {
    for column in 0..p {
        let pivot =
            (column..p).max_by(|&r, &s| a[r * p + column].abs().total_cmp(&a[s * p + column].abs()))?;
        if a[pivot * p + column].abs() < 1e-12 {
            return None;
        }
        for c in 0..p {
            a.swap(column * p + c, pivot * p + c);
        }
        b.swap(column, pivot);
        for row in column + 1..p {
            let factor = a[row * p + column] / a[column * p + column];
            for c in column..p {
                a[row * p + c] -= factor * a[column * p + c];
            }
            b[row] -= factor * b[column];
        }
    }
    let mut x = vec![0.0; p];
    for row in (0..p).rev() {
        let tail: f64 = (row + 1..p).map(|c| a[row * p + c] * x[c]).sum();
        x[row] = (b[row] - tail) / a[row * p + row];
    }
    Some(x)
}
