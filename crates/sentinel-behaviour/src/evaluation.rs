//! Figures of a multi-class (family) prediction: accuracy, macro F1 and the
//! confusion matrix, shared by `sentinel eval family`, the training report and
//! the benchmark so that Sentinel and its peer are scored by the same code.

use serde::Serialize;

/// Precision, recall and F1 of one class.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassFigures {
    pub class: String,
    /// Rows whose true class this is.
    pub support: usize,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
}

/// The figures of predicted classes against true classes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassificationReport {
    pub samples: usize,
    pub accuracy: f64,
    /// Unweighted mean of the per-class F1 over `classes`.
    pub macro_f1: f64,
    /// Every class that is true or predicted for some row, sorted.
    pub classes: Vec<String>,
    pub per_class: Vec<ClassFigures>,
    /// `confusion[t][p]`: rows of true class `classes[t]` predicted as `classes[p]`.
    pub confusion: Vec<Vec<usize>>,
}

impl ClassificationReport {
    /// Scores `predicted` against `truth` (same length, at least one row).
    /// Classes are the union of both lists, as scikit-learn's `f1_score` does,
    /// so a class the model never predicts (or a label it does not know)
    /// counts with F1 = 0 rather than disappearing.
    pub fn new<S: AsRef<str>>(truth: &[S], predicted: &[S]) -> Option<ClassificationReport> {
        if truth.is_empty() || truth.len() != predicted.len() {
            return None;
        }
        let mut classes: Vec<String> = truth.iter().chain(predicted).map(|c| c.as_ref().to_owned()).collect();
        classes.sort();
        classes.dedup();
        let index = |c: &S| classes.binary_search_by(|x| x.as_str().cmp(c.as_ref())).unwrap_or(0);
        let mut confusion = vec![vec![0usize; classes.len()]; classes.len()];
        for (t, p) in truth.iter().zip(predicted) {
            confusion[index(t)][index(p)] += 1;
        }
        let correct: usize = (0..classes.len()).map(|k| confusion[k][k]).sum();
        let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        let per_class: Vec<ClassFigures> = classes
            .iter()
            .enumerate()
            .map(|(k, class)| {
                let support: usize = confusion[k].iter().sum();
                let predicted_as: usize = confusion.iter().map(|row| row[k]).sum();
                let precision = ratio(confusion[k][k], predicted_as);
                let recall = ratio(confusion[k][k], support);
                let f1 = if precision + recall > 0.0 {
                    2.0 * precision * recall / (precision + recall)
                } else {
                    0.0
                };
                ClassFigures { class: class.clone(), support, precision, recall, f1 }
            })
            .collect();
        let macro_f1 = per_class.iter().map(|c| c.f1).sum::<f64>() / classes.len() as f64;
        Some(ClassificationReport {
            samples: truth.len(),
            accuracy: ratio(correct, truth.len()),
            macro_f1,
            classes,
            per_class,
            confusion,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_match_scikit_learn() {
        // scikit-learn gives accuracy_score = 0.6 and f1_score(average="macro") = 0.4333.
        let truth = ["a", "a", "b", "b", "c"];
        let predicted = ["a", "a", "b", "a", "b"];
        let report = ClassificationReport::new(&truth, &predicted).unwrap();
        assert_eq!(report.classes, ["a", "b", "c"]);
        assert!((report.accuracy - 0.6).abs() < 1e-12);
        // a: P 2/3, R 1 -> 0.8; b: P 1/2, R 1/2 -> 0.5; c: 0.
        assert!((report.macro_f1 - (0.8 + 0.5) / 3.0).abs() < 1e-12, "{}", report.macro_f1);
        assert_eq!(report.confusion, vec![vec![2, 0, 0], vec![1, 1, 0], vec![0, 1, 0]]);
        assert_eq!(report.per_class[2].support, 1);
        let perfect = ClassificationReport::new(&truth, &truth).unwrap();
        assert_eq!((perfect.accuracy, perfect.macro_f1), (1.0, 1.0));
        assert!(ClassificationReport::new(&truth, &predicted[..2]).is_none());
        assert!(ClassificationReport::new::<&str>(&[], &[]).is_none());
    }
}
