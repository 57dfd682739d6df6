//! SPEC §2.4's accuracy drop: a model's accuracy measured on analysts' feedback is `drop` (0.05)
//! or more below its accuracy when it was promoted (measured on its held-out validation rows).

use serde_json::json;

use crate::alert::{Alert, Rule, Severity};
use crate::settings::AccuracyDropRule;

/// A model's accuracy then and now.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelAccuracy {
    /// `isolation_forest`, `lof`, `ocsvm` or `ensemble`.
    pub model: String,
    pub model_version: i64,
    /// On the validation rows when the model was promoted.
    pub at_promotion: f64,
    /// On the labels of the feedback window.
    pub on_feedback: f64,
    /// How many labels measured it.
    pub labels: u64,
}

/// Checks models' accuracies against the rule.
#[derive(Debug, Clone)]
pub struct AccuracyDrop {
    rule: AccuracyDropRule,
}

impl AccuracyDrop {
    pub fn new(rule: AccuracyDropRule) -> AccuracyDrop {
        AccuracyDrop { rule }
    }

    pub fn check(&self, accuracy: &ModelAccuracy) -> Option<Alert> {
        let fallen = accuracy.at_promotion - accuracy.on_feedback;
        if !self.rule.enabled || !fallen.is_finite() || fallen < self.rule.drop {
            return None;
        }
        let summary = format!(
            "network model {} (version {}) is at {:.3} accuracy on {} labels, {:.3} below its {:.3} at promotion",
            accuracy.model,
            accuracy.model_version,
            accuracy.on_feedback,
            accuracy.labels,
            fallen,
            accuracy.at_promotion
        );
        let key = format!("{}/v{}", accuracy.model, accuracy.model_version);
        Some(Alert::new(Rule::AccuracyDrop, key, Severity::Warning, summary).with_details(json!({
            "model": accuracy.model,
            "model_version": accuracy.model_version,
            "accuracy_at_promotion": accuracy.at_promotion,
            "accuracy_on_feedback": accuracy.on_feedback,
            "labels": accuracy.labels,
            "drop": fallen,
            "threshold": self.rule.drop,
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_drop_of_the_threshold_or_more_raises() {
        let rule = AccuracyDrop::new(AccuracyDropRule { enabled: true, drop: 0.05 });
        let accuracy = |now: f64| ModelAccuracy {
            model: "ensemble".into(),
            model_version: 4,
            at_promotion: 0.95,
            on_feedback: now,
            labels: 40,
        };
        assert_eq!(rule.check(&accuracy(0.93)), None);
        let alert = rule.check(&accuracy(0.85)).unwrap();
        assert_eq!((alert.rule, alert.key.as_str()), (Rule::AccuracyDrop, "ensemble/v4"));
        assert!((alert.details["drop"].as_f64().unwrap() - 0.10).abs() < 1e-9);
        assert_eq!(rule.check(&accuracy(f64::NAN)), None);
    }
}
