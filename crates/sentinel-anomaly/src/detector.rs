//! The interface every detector shares, so the ensemble, the thresholds and the
//! service treat Isolation Forest, LOF and One-Class SVM alike: one vector in, one
//! anomaly score out, where a higher score always means more anomalous.

use rayon::prelude::*;

use crate::error::Result;
use crate::matrix::{Matrix, check_vector};

/// How much of the training data is expected to be anomalous, which sets the
/// decision threshold of a fitted model.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Contamination {
    /// The model's own default threshold (scikit-learn's `contamination="auto"`).
    Auto,
    /// This fraction, in (0, 0.5], of the training rows is flagged.
    Fraction(f64),
}

impl Contamination {
    pub(crate) fn validate(self) -> Result<()> {
        match self {
            Contamination::Fraction(f) if !(f > 0.0 && f <= 0.5) => {
                Err(crate::AnomalyError::Parameter(format!("contamination must be in (0, 0.5], got {f}")))
            }
            _ => Ok(()),
        }
    }
}

/// A fitted anomaly detector.
pub trait Detector: Sync {
    /// The number of features the model was fitted on.
    fn n_features(&self) -> usize;

    /// The score of one vector already checked for length and finiteness.
    fn score_checked(&self, x: &[f64]) -> f64;

    /// The score from which on a vector is declared anomalous: `score >= threshold`,
    /// the convention of `sentinel_metrics` (ROC curves, `Confusion::at_threshold`),
    /// so that a threshold read off a ROC curve means the same here.
    fn threshold(&self) -> f64;

    /// The anomaly score of one vector (higher is more anomalous).
    fn score_one(&self, x: &[f64]) -> Result<f64> {
        check_vector(x, self.n_features())?;
        Ok(self.score_checked(x))
    }

    /// The anomaly scores of every row, computed in parallel on rayon's current pool.
    fn score(&self, data: &Matrix) -> Result<Vec<f64>> {
        data.check_scorable(self.n_features())?;
        Ok(data.values().par_chunks(data.cols()).map(|row| self.score_checked(row)).collect())
    }

    /// Whether each row is anomalous under the fitted threshold.
    fn decide(&self, data: &Matrix) -> Result<Vec<bool>> {
        let threshold = self.threshold();
        Ok(self.score(data)?.into_iter().map(|score| score >= threshold).collect())
    }
}

/// The threshold that flags `fraction` of `scores`: numpy's linear-interpolated
/// percentile at `100 × (1 − fraction)`, which is how scikit-learn turns an explicit
/// contamination into an offset.
pub(crate) fn contamination_threshold(scores: &[f64], fraction: f64) -> f64 {
    percentile(scores, 100.0 * (1.0 - fraction))
}

/// numpy's default (linear) percentile of non-empty, finite `values`.
pub(crate) fn percentile(values: &[f64], q: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    percentile_of_sorted(&sorted, q)
}

/// numpy's linear percentile of non-empty values already sorted ascending.
pub(crate) fn percentile_of_sorted(sorted: &[f64], q: f64) -> f64 {
    let position = (q / 100.0).clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let below = position.floor() as usize;
    let above = (below + 1).min(sorted.len() - 1);
    sorted[below] + (sorted[above] - sorted[below]) * (position - below as f64)
}
