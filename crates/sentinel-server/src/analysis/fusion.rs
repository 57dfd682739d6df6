//! The combined verdict of commands 4, 5 and 6: one `y` from the scores of
//! several steps, by a weighted mean in log-odds space (a logarithmic opinion
//! pool), documented with a worked example in `docs/protocol.md`.
//!
//! Why log-odds rather than the plain mean: a step that is sure (0.99, log-odds
//! +4.6) moves the verdict far more than one that hesitates (0.6, +0.4), so a
//! confident step is not diluted towards 0.5 by a step that says little. Each step's weight is a setting; VirusTotal gets a larger weight
//! when its report rests on many engines, because a consensus of dozens of
//! engines is stronger evidence than one model's opinion, and the default
//! weight otherwise (a report on few engines is little more than a guess).

use sentinel_protocol::Analysis;
use serde::Deserialize;

use crate::analysis::StepScore;

/// Scores are clamped to `[EPSILON, 1 - EPSILON]` before taking log-odds, so a
/// step answering exactly 0 or 1 weighs a lot (±6.9) but cannot veto the others
/// with an infinite log-odds.
const EPSILON: f64 = 0.001;

/// Recorded as the `model_version` of combined verdicts, so stored verdicts say
/// which rule made them.
pub(crate) const RULE_VERSION: &str = "log-odds-weighted-mean-v1";

/// `[server.fusion]`: the weight of each step in the combined verdict.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FusionSettings {
    /// Weight of the static model's score. Default 1.
    pub static_weight: f64,
    /// Weight of the behaviour model's score. Default 1.
    pub dynamic_weight: f64,
    /// Weight of VirusTotal's score when fewer than `virustotal_confident_engines`
    /// engines gave a verdict. Default 1.
    pub virustotal_weight: f64,
    /// Weight of VirusTotal's score when at least `virustotal_confident_engines`
    /// engines gave a verdict. Default 2.
    pub virustotal_confident_weight: f64,
    /// Engines with a verdict from which VirusTotal counts as confident. Default 40
    /// (a Windows executable is usually scanned by 60–75 engines).
    pub virustotal_confident_engines: u32,
}

impl Default for FusionSettings {
    fn default() -> FusionSettings {
        FusionSettings {
            static_weight: 1.0,
            dynamic_weight: 1.0,
            virustotal_weight: 1.0,
            virustotal_confident_weight: 2.0,
            virustotal_confident_engines: 40,
        }
    }
}

impl FusionSettings {
    /// Checks that every weight is a finite number above 0: a zero weight would
    /// leave a step's score in the answer without any say in the verdict.
    pub fn validate(&self) -> Result<(), String> {
        let weights = [
            ("static_weight", self.static_weight),
            ("dynamic_weight", self.dynamic_weight),
            ("virustotal_weight", self.virustotal_weight),
            ("virustotal_confident_weight", self.virustotal_confident_weight),
        ];
        if let Some((name, _)) = weights.iter().find(|(_, weight)| !(weight.is_finite() && *weight > 0.0)) {
            return Err(format!("fusion.{name} must be a finite number above 0"));
        }
        Ok(())
    }

    /// The weight of one step's score.
    fn weight(&self, step: &StepScore) -> f64 {
        match step.analysis {
            Analysis::Static => self.static_weight,
            Analysis::Dynamic => self.dynamic_weight,
            Analysis::VirusTotal => match step.support {
                Some(engines) if engines >= self.virustotal_confident_engines => {
                    self.virustotal_confident_weight
                }
                _ => self.virustotal_weight,
            },
        }
    }
}

/// The verdict `y` of a request: with one step, that step's score unchanged;
/// with several, `σ(Σ wᵢ·logit(sᵢ) / Σ wᵢ)` with `sᵢ` clamped to
/// `[0.001, 0.999]`.
pub(crate) fn combine(settings: &FusionSettings, scores: &[StepScore]) -> f64 {
    match scores {
        [] => 0.0,
        [only] => only.score,
        _ => {
            let (weighted, total) = scores.iter().fold((0.0, 0.0), |(weighted, total), step| {
                let weight = settings.weight(step);
                (weighted + weight * logit(step.score.clamp(EPSILON, 1.0 - EPSILON)), total + weight)
            });
            sigmoid(weighted / total)
        }
    }
}

fn logit(p: f64) -> f64 {
    (p / (1.0 - p)).ln()
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(analysis: Analysis, score: f64, support: Option<u32>) -> StepScore {
        StepScore { analysis, score, model_version: "test".to_owned(), support }
    }

    #[test]
    fn one_step_is_its_own_verdict() {
        let settings = FusionSettings::default();
        for score in [0.0, 0.3, 1.0] {
            assert_eq!(combine(&settings, &[step(Analysis::Static, score, None)]), score);
        }
    }

    #[test]
    fn the_worked_example_of_the_documentation() {
        // docs/protocol.md: static 0.90, VirusTotal 0.20 on 68 engines → 0.452.
        let settings = FusionSettings::default();
        let scores = [step(Analysis::Static, 0.9, None), step(Analysis::VirusTotal, 0.2, Some(68))];
        let y = combine(&settings, &scores);
        assert!((y - 0.452).abs() < 0.001, "{y}");
        // With few engines VirusTotal weighs as much as the static model: the
        // geometric mean of the odds, 0.9 · 0.2 → odds 1.5 → 0.6.
        let few = [step(Analysis::Static, 0.9, None), step(Analysis::VirusTotal, 0.2, Some(20))];
        assert!((combine(&settings, &few) - 0.6).abs() < 1e-9);
    }

    #[test]
    fn agreeing_steps_reinforce_and_extremes_cannot_veto() {
        let settings = FusionSettings::default();
        let agree = [
            step(Analysis::Static, 0.9, None),
            step(Analysis::Dynamic, 0.9, None),
            step(Analysis::VirusTotal, 0.9, Some(70)),
        ];
        assert!((combine(&settings, &agree) - 0.9).abs() < 1e-9, "agreement keeps its strength");
        let veto = [step(Analysis::Static, 0.0, None), step(Analysis::VirusTotal, 0.99, Some(70))];
        let y = combine(&settings, &veto);
        assert!(y > 0.5 && y < 1.0, "a zero is strong evidence, not a veto: {y}");
    }

    #[test]
    fn weights_are_read_from_the_server_fusion_table() {
        let settings: crate::ServerSettings =
            toml::from_str("[fusion]\nvirustotal_confident_weight = 3\nvirustotal_confident_engines = 50\n")
                .unwrap();
        assert_eq!(settings.fusion.virustotal_confident_weight, 3.0);
        assert_eq!(settings.fusion.virustotal_confident_engines, 50);
        assert_eq!(settings.fusion.static_weight, 1.0);
        assert!(toml::from_str::<crate::ServerSettings>("[fusion]\nstatic_wieght = 2\n").is_err());
        let zero = crate::ServerSettings {
            fusion: FusionSettings { static_weight: 0.0, ..FusionSettings::default() },
            ..crate::ServerSettings::default()
        };
        assert!(zero.validate().is_err());
    }

    #[test]
    fn weights_must_be_positive_and_finite() {
        assert!(FusionSettings::default().validate().is_ok());
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let settings = FusionSettings { dynamic_weight: bad, ..FusionSettings::default() };
            assert!(settings.validate().is_err(), "{bad}");
        }
    }
}
