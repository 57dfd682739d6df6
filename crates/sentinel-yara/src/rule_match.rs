//! One matching rule as Sentinel records and answers it, and the documented rule by which
//! matches raise the static verdict:
//!
//! * metadata `score`: an integer in 0..=100 is a percentage (the convention of rule sets that
//!   score 0–100: `score = 80` is 0.8); a decimal number in [0, 1] is the probability itself
//!   (`score = 0.8`);
//! * otherwise metadata `severity`: `low` 0.3, `medium` 0.6, `high` 0.9, `critical` 1.0 (case
//!   ignored);
//! * a rule with neither, or with a value outside these, is informational: it is reported and
//!   changes no score.
//!
//! The static score becomes the largest of the model's score and the matching rules' scores:
//! rules can only raise a verdict, never lower it (a safelist does that, by hash).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A rule that matched a sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleMatch {
    pub rule: String,
    /// The rule file's namespace (its file name without the extension).
    pub namespace: String,
    pub tags: Vec<String>,
    /// The rule's metadata, as JSON values (byte strings that are not UTF-8 are written lossily).
    pub metadata: Map<String, Value>,
}

impl RuleMatch {
    #[cfg(feature = "engine")]
    pub(crate) fn from_rule(rule: &yara_x::Rule<'_, '_>) -> RuleMatch {
        let metadata = rule
            .metadata()
            .map(|(name, value)| {
                let value = match value {
                    yara_x::MetaValue::Integer(number) => Value::from(number),
                    yara_x::MetaValue::Float(number) => Value::from(number),
                    yara_x::MetaValue::Bool(flag) => Value::from(flag),
                    yara_x::MetaValue::String(text) => Value::from(text),
                    yara_x::MetaValue::Bytes(bytes) => {
                        Value::from(String::from_utf8_lossy(bytes).into_owned())
                    }
                };
                (name.to_owned(), value)
            })
            .collect();
        RuleMatch {
            rule: rule.identifier().to_owned(),
            namespace: rule.namespace().to_owned(),
            tags: rule.tags().map(|tag| tag.identifier().to_owned()).collect(),
            metadata,
        }
    }

    /// The probability of malware this match stands for, by the rule of this module's
    /// documentation; `None` for an informational rule.
    pub fn score(&self) -> Option<f64> {
        if let Some(score) = self.metadata.get("score") {
            return match score {
                Value::Number(number) if number.is_i64() => match number.as_i64() {
                    Some(percent @ 0..=100) => Some(percent as f64 / 100.0),
                    _ => None,
                },
                Value::Number(number) => number.as_f64().filter(|score| (0.0..=1.0).contains(score)),
                _ => None,
            };
        }
        match self.metadata.get("severity").and_then(Value::as_str)?.to_ascii_lowercase().as_str() {
            "low" => Some(0.3),
            "medium" => Some(0.6),
            "high" => Some(0.9),
            "critical" => Some(1.0),
            _ => None,
        }
    }
}

/// `model_score` raised by the scores of `matches`: the largest of them all.
pub fn raised_score(model_score: f64, matches: &[RuleMatch]) -> f64 {
    matches.iter().filter_map(RuleMatch::score).fold(model_score, f64::max)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn with_metadata(metadata: Value) -> RuleMatch {
        RuleMatch {
            rule: "r".to_owned(),
            namespace: "n".to_owned(),
            tags: Vec::new(),
            metadata: metadata.as_object().unwrap().clone(),
        }
    }

    #[test]
    fn scores_come_from_score_or_severity_and_anything_else_is_informational() {
        let cases = [
            (json!({"score": 0.75}), Some(0.75)),
            (json!({"score": 80}), Some(0.8)),
            (json!({"score": 1}), Some(0.01)),
            (json!({"score": 0}), Some(0.0)),
            (json!({"score": 1.0}), Some(1.0)),
            (json!({"score": 250}), None),
            (json!({"score": -3}), None),
            (json!({"score": 1.5}), None),
            (json!({"score": "high"}), None),
            (json!({"severity": "High"}), Some(0.9)),
            (json!({"severity": "critical"}), Some(1.0)),
            (json!({"severity": "low"}), Some(0.3)),
            (json!({"severity": "whatever"}), None),
            (json!({"author": "someone"}), None),
            // `score` decides when both are there, even when it is unusable.
            (json!({"score": 500, "severity": "high"}), None),
        ];
        for (metadata, expected) in cases {
            assert_eq!(with_metadata(metadata.clone()).score(), expected, "{metadata}");
        }
    }

    #[test]
    fn matches_raise_the_model_score_and_never_lower_it() {
        let high = with_metadata(json!({"severity": "high"}));
        let low = with_metadata(json!({"score": 0.1}));
        let informational = with_metadata(json!({"description": "packed"}));
        assert_eq!(raised_score(0.2, &[low.clone(), high.clone(), informational.clone()]), 0.9);
        assert_eq!(raised_score(0.95, &[high, low.clone()]), 0.95);
        assert_eq!(raised_score(0.2, &[low, informational]), 0.2);
        assert_eq!(raised_score(0.2, &[]), 0.2);
    }
}
