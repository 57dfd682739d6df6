//! Decision thresholds over anomaly scores (higher = more anomalous), chosen
//! three ways: so that a given fraction of the training data is flagged
//! (contamination); so that at most a target fraction of known-normal
//! validation rows is flagged (false-positive rate, what an operator budgets
//! alerts by); and adaptively, following a stream whose normal scores drift.

use serde::{Deserialize, Serialize};

use crate::detector::percentile_of_sorted;
use crate::error::{AnomalyError, Result};

/// The threshold above which `fraction` of `scores` lie (linear percentile).
pub fn by_contamination(scores: &[f64], fraction: f64) -> Result<f64> {
    let sorted = checked_sorted(scores)?;
    if !(fraction > 0.0 && fraction < 1.0) {
        return Err(AnomalyError::Parameter(format!("contamination must be in (0, 1), got {fraction}")));
    }
    Ok(percentile_of_sorted(&sorted, 100.0 * (1.0 - fraction)))
}

/// The lowest threshold that flags at most `target_fpr` of `normal_scores`
/// (a row is flagged when its score is at or above the threshold).
pub fn at_false_positive_rate(normal_scores: &[f64], target_fpr: f64) -> Result<f64> {
    let sorted = checked_sorted(normal_scores)?;
    if !(0.0..1.0).contains(&target_fpr) {
        return Err(AnomalyError::Parameter(format!("target FPR must be in [0, 1), got {target_fpr}")));
    }
    let allowed = (target_fpr * sorted.len() as f64).floor() as usize;
    // At most `allowed` scores are strictly above the (allowed+1)-th largest,
    // so at most `allowed` are at or above the next float up.
    Ok(sorted[sorted.len() - 1 - allowed].next_up())
}

fn checked_sorted(scores: &[f64]) -> Result<Vec<f64>> {
    if scores.is_empty() {
        return Err(AnomalyError::Empty("no scores to set a threshold from"));
    }
    if let Some(at) = scores.iter().position(|s| !s.is_finite()) {
        return Err(AnomalyError::NotFinite { row: at, column: 0, value: scores[at] });
    }
    let mut sorted = scores.to_vec();
    sorted.sort_by(f64::total_cmp);
    Ok(sorted)
}

/// A threshold that tracks the (1 − target rate) quantile of a score stream by
/// stochastic approximation: each observation moves it up by `step × (1 − rate)`
/// when flagged and down by `step × rate` otherwise, so it settles where the
/// target fraction is flagged even as the distribution drifts. O(1) per score,
/// no allocation.
///
/// An attacker who floods the stream with high scores pulls the threshold up;
/// the threshold is therefore confined to a band around its calibrated value
/// (`max_drift` spreads of the calibration scores), and the step is small.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdaptiveThreshold {
    threshold: f64,
    target_rate: f64,
    step: f64,
    floor: f64,
    ceiling: f64,
}

impl AdaptiveThreshold {
    /// Starts at the threshold for `target_rate` on `normal_scores`; `learning_rate`
    /// (e.g. 0.01) and `max_drift` are in units of the scores' interdecile spread.
    pub fn new(normal_scores: &[f64], target_rate: f64, learning_rate: f64, max_drift: f64) -> Result<Self> {
        if !(target_rate > 0.0 && target_rate < 1.0) {
            return Err(AnomalyError::Parameter(format!("target rate must be in (0, 1), got {target_rate}")));
        }
        if !(learning_rate > 0.0 && learning_rate.is_finite() && max_drift >= 0.0 && max_drift.is_finite()) {
            return Err(AnomalyError::Parameter(
                "learning rate and max drift must be finite, positive".into(),
            ));
        }
        let threshold = at_false_positive_rate(normal_scores, target_rate)?;
        let sorted = checked_sorted(normal_scores)?;
        let spread = percentile_of_sorted(&sorted, 90.0) - percentile_of_sorted(&sorted, 10.0);
        let spread = if spread > 0.0 { spread } else { threshold.abs().max(1e-9) };
        Ok(AdaptiveThreshold {
            threshold,
            target_rate,
            step: learning_rate * spread,
            floor: threshold - max_drift * spread,
            ceiling: threshold + max_drift * spread,
        })
    }

    /// Decides on `score` and updates the threshold. Non-finite scores are
    /// flagged and do not move the threshold.
    pub fn observe(&mut self, score: f64) -> bool {
        if !score.is_finite() {
            return true;
        }
        let flagged = score >= self.threshold;
        let direction = if flagged { 1.0 - self.target_rate } else { -self.target_rate };
        self.threshold = (self.threshold + self.step * direction).clamp(self.floor, self.ceiling);
        flagged
    }

    pub fn threshold(&self) -> f64 {
        self.threshold
    }
}
