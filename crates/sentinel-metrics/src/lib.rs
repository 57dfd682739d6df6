//! Evaluation metrics for binary detectors: ROC AUC, average precision (PR AUC),
//! detection rate at a fixed false-positive rate, and the confusion matrix with the
//! figures derived from it.
//!
//! Every model in Sentinel (the static and behaviour classifiers, the anomaly
//! detectors) is judged with these functions, so they follow scikit-learn's
//! definitions exactly (`roc_auc_score`, `average_precision_score`,
//! `precision_score`…) and the figures in the docs can be compared with published
//! baselines. Convention throughout: a *higher* score means *more likely positive*
//! (malicious / anomalous), and label `true` is the positive class.

use std::cmp::Ordering;

/// Why a metric could not be computed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetricError {
    #[error("scores and labels have different lengths ({scores} vs {labels})")]
    LengthMismatch { scores: usize, labels: usize },
    #[error("the metric needs both positive and negative samples")]
    OneClass,
    #[error("a score is NaN")]
    NaN,
}

/// Indices of `scores` sorted by decreasing score.
fn descending_order(scores: &[f64]) -> Result<Vec<usize>, MetricError> {
    if scores.iter().any(|s| s.is_nan()) {
        return Err(MetricError::NaN);
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_unstable_by(|&a, &b| scores[b].partial_cmp(&scores[a]).unwrap_or(Ordering::Equal));
    Ok(order)
}

fn check(scores: &[f64], labels: &[bool]) -> Result<(usize, usize), MetricError> {
    if scores.len() != labels.len() {
        return Err(MetricError::LengthMismatch { scores: scores.len(), labels: labels.len() });
    }
    let positives = labels.iter().filter(|&&l| l).count();
    let negatives = labels.len() - positives;
    if positives == 0 || negatives == 0 {
        return Err(MetricError::OneClass);
    }
    Ok((positives, negatives))
}

/// One point of a ROC curve: at `threshold` (score >= threshold is positive),
/// the false-positive and true-positive rates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RocPoint {
    pub threshold: f64,
    pub fpr: f64,
    pub tpr: f64,
}

/// The ROC curve with one point per distinct score (ties form one step, as in
/// scikit-learn's `roc_curve(drop_intermediate=False)`), starting at (0, 0)
/// with an infinite threshold.
pub fn roc_curve(scores: &[f64], labels: &[bool]) -> Result<Vec<RocPoint>, MetricError> {
    let (positives, negatives) = check(scores, labels)?;
    let order = descending_order(scores)?;
    let mut points = Vec::with_capacity(order.len() + 1);
    points.push(RocPoint { threshold: f64::INFINITY, fpr: 0.0, tpr: 0.0 });
    let (mut tp, mut fp) = (0usize, 0usize);
    for (rank, &i) in order.iter().enumerate() {
        if labels[i] {
            tp += 1;
        } else {
            fp += 1;
        }
        let last_of_tie = order.get(rank + 1).is_none_or(|&next| scores[next] != scores[i]);
        if last_of_tie {
            points.push(RocPoint {
                threshold: scores[i],
                fpr: fp as f64 / negatives as f64,
                tpr: tp as f64 / positives as f64,
            });
        }
    }
    Ok(points)
}

/// Area under the ROC curve (trapezoidal over tied scores, like
/// scikit-learn's `roc_auc_score`).
pub fn roc_auc(scores: &[f64], labels: &[bool]) -> Result<f64, MetricError> {
    let curve = roc_curve(scores, labels)?;
    Ok(curve.windows(2).map(|w| (w[1].fpr - w[0].fpr) * (w[1].tpr + w[0].tpr) / 2.0).sum())
}

/// Average precision (the usual "PR AUC"), as scikit-learn's
/// `average_precision_score`: the sum over thresholds of
/// `(recall_n - recall_{n-1}) * precision_n`.
pub fn average_precision(scores: &[f64], labels: &[bool]) -> Result<f64, MetricError> {
    let (positives, _) = check(scores, labels)?;
    let order = descending_order(scores)?;
    let (mut tp, mut fp) = (0usize, 0usize);
    let mut previous_recall = 0.0;
    let mut ap = 0.0;
    for (rank, &i) in order.iter().enumerate() {
        if labels[i] {
            tp += 1;
        } else {
            fp += 1;
        }
        let last_of_tie = order.get(rank + 1).is_none_or(|&next| scores[next] != scores[i]);
        if last_of_tie {
            let recall = tp as f64 / positives as f64;
            let precision = tp as f64 / (tp + fp) as f64;
            ap += (recall - previous_recall) * precision;
            previous_recall = recall;
        }
    }
    Ok(ap)
}

/// The best operating point whose false-positive rate does not exceed
/// `max_fpr`: the detection rate (TPR) reached and the threshold that reaches
/// it (classify `score >= threshold` as positive).
pub fn detection_at_fpr(scores: &[f64], labels: &[bool], max_fpr: f64) -> Result<RocPoint, MetricError> {
    let curve = roc_curve(scores, labels)?;
    Ok(curve.into_iter().take_while(|p| p.fpr <= max_fpr).last().expect("the curve starts at fpr 0"))
}

/// Counts of a binary decision against the truth.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Confusion {
    pub true_positives: u64,
    pub false_positives: u64,
    pub true_negatives: u64,
    pub false_negatives: u64,
}

impl Confusion {
    /// Tallies `predicted` against `labels`.
    pub fn from_decisions(predicted: &[bool], labels: &[bool]) -> Result<Self, MetricError> {
        if predicted.len() != labels.len() {
            return Err(MetricError::LengthMismatch { scores: predicted.len(), labels: labels.len() });
        }
        let mut c = Confusion::default();
        for (&p, &l) in predicted.iter().zip(labels) {
            match (p, l) {
                (true, true) => c.true_positives += 1,
                (true, false) => c.false_positives += 1,
                (false, false) => c.true_negatives += 1,
                (false, true) => c.false_negatives += 1,
            }
        }
        Ok(c)
    }

    /// Tallies the decisions `score >= threshold`.
    pub fn at_threshold(scores: &[f64], labels: &[bool], threshold: f64) -> Result<Self, MetricError> {
        let predicted: Vec<bool> = scores.iter().map(|&s| s >= threshold).collect();
        Self::from_decisions(&predicted, labels)
    }

    fn ratio(numerator: u64, denominator: u64) -> f64 {
        // scikit-learn's `zero_division=0`.
        if denominator == 0 { 0.0 } else { numerator as f64 / denominator as f64 }
    }

    pub fn total(&self) -> u64 {
        self.true_positives + self.false_positives + self.true_negatives + self.false_negatives
    }
    pub fn accuracy(&self) -> f64 {
        Self::ratio(self.true_positives + self.true_negatives, self.total())
    }
    pub fn precision(&self) -> f64 {
        Self::ratio(self.true_positives, self.true_positives + self.false_positives)
    }
    /// Recall, also called detection rate or true-positive rate.
    pub fn recall(&self) -> f64 {
        Self::ratio(self.true_positives, self.true_positives + self.false_negatives)
    }
    pub fn f1(&self) -> f64 {
        Self::ratio(
            2 * self.true_positives,
            2 * self.true_positives + self.false_positives + self.false_negatives,
        )
    }
    pub fn false_positive_rate(&self) -> f64 {
        Self::ratio(self.false_positives, self.false_positives + self.true_negatives)
    }
}

/// The figures reported for a scored, labelled evaluation set.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Report {
    pub samples: usize,
    pub positives: usize,
    pub roc_auc: f64,
    pub average_precision: f64,
    /// Detection rate at 1 % false positives.
    pub tpr_at_1pct_fpr: f64,
    /// Detection rate at 0.1 % false positives.
    pub tpr_at_0_1pct_fpr: f64,
    pub threshold: f64,
    pub confusion: Confusion,
    pub accuracy: f64,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub false_positive_rate: f64,
}

impl Report {
    /// Computes every figure, with the confusion matrix taken at `threshold`.
    pub fn new(scores: &[f64], labels: &[bool], threshold: f64) -> Result<Self, MetricError> {
        let (positives, _) = check(scores, labels)?;
        let confusion = Confusion::at_threshold(scores, labels, threshold)?;
        Ok(Report {
            samples: scores.len(),
            positives,
            roc_auc: roc_auc(scores, labels)?,
            average_precision: average_precision(scores, labels)?,
            tpr_at_1pct_fpr: detection_at_fpr(scores, labels, 0.01)?.tpr,
            tpr_at_0_1pct_fpr: detection_at_fpr(scores, labels, 0.001)?.tpr,
            threshold,
            accuracy: confusion.accuracy(),
            precision: confusion.precision(),
            recall: confusion.recall(),
            f1: confusion.f1(),
            false_positive_rate: confusion.false_positive_rate(),
            confusion,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected values computed with scikit-learn 1.x:
    // y = [0, 0, 1, 1], s = [0.1, 0.4, 0.35, 0.8]
    //   roc_auc_score -> 0.75, average_precision_score -> 0.8333333333333333
    const S: [f64; 4] = [0.1, 0.4, 0.35, 0.8];
    const Y: [bool; 4] = [false, false, true, true];

    #[test]
    fn roc_auc_matches_scikit_learn() {
        assert!((roc_auc(&S, &Y).unwrap() - 0.75).abs() < 1e-12);
    }

    #[test]
    fn average_precision_matches_scikit_learn() {
        assert!((average_precision(&S, &Y).unwrap() - 0.833_333_333_333_333_3).abs() < 1e-12);
    }

    #[test]
    fn ties_count_half() {
        // One positive and one negative with the same score: AUC 0.5.
        assert_eq!(roc_auc(&[0.5, 0.5], &[true, false]).unwrap(), 0.5);
        // y=[0,1,0,1], s=[0.2,0.2,0.1,0.9] -> sklearn 0.875 ; AP -> 0.8333333333333333
        let s = [0.2, 0.2, 0.1, 0.9];
        let y = [false, true, false, true];
        assert!((roc_auc(&s, &y).unwrap() - 0.875).abs() < 1e-12);
        assert!((average_precision(&s, &y).unwrap() - 0.833_333_333_333_333_3).abs() < 1e-12);
    }

    #[test]
    fn detection_at_fpr_picks_the_best_admissible_point() {
        let p = detection_at_fpr(&S, &Y, 0.0).unwrap();
        assert_eq!((p.fpr, p.tpr, p.threshold), (0.0, 0.5, 0.8));
        let p = detection_at_fpr(&S, &Y, 0.5).unwrap();
        assert_eq!((p.fpr, p.tpr), (0.5, 1.0));
    }

    #[test]
    fn confusion_figures() {
        // predicted = s >= 0.35 -> [0, 1, 1, 1]
        let c = Confusion::at_threshold(&S, &Y, 0.35).unwrap();
        assert_eq!((c.true_positives, c.false_positives, c.true_negatives, c.false_negatives), (2, 1, 1, 0));
        assert!((c.precision() - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(c.recall(), 1.0);
        assert!((c.f1() - 0.8).abs() < 1e-12);
        assert_eq!(c.accuracy(), 0.75);
        assert_eq!(c.false_positive_rate(), 0.5);
    }

    #[test]
    fn bad_input_is_an_error() {
        assert_eq!(roc_auc(&[0.1], &[true]), Err(MetricError::OneClass));
        assert!(matches!(roc_auc(&[0.1, 0.2], &[true]), Err(MetricError::LengthMismatch { .. })));
        assert_eq!(roc_auc(&[f64::NAN, 0.2], &[true, false]), Err(MetricError::NaN));
        assert_eq!(Confusion::default().precision(), 0.0);
    }
}
