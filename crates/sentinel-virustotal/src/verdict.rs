//! What Sentinel keeps of a VirusTotal report, and the two rules applied to it:
//! the score `y` in [0, 1] and the label for the labelled-samples dataset.
//!
//! A [`Verdict`] is the compact form of a file report (or of a completed upload
//! analysis): the per-engine results and counts, the analysis date and when
//! Sentinel fetched it. It serialises to JSON for the results dataset.
//! `docs/virustotal.md` justifies the rules and their defaults.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{SettingsError, VtError};

/// A file's SHA-256.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileHash([u8; 32]);

impl FileHash {
    /// Parses 64 hex digits, either case.
    pub fn parse(text: &str) -> Result<FileHash, VtError> {
        let mut digest = [0u8; 32];
        hex::decode_to_slice(text, &mut digest).map_err(|_| VtError::InvalidHash)?;
        Ok(FileHash(digest))
    }

    /// The hash from its 32 bytes (as other crates hold it).
    pub fn from_bytes(bytes: [u8; 32]) -> FileHash {
        FileHash(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for FileHash {
    /// Lower-case hex, the form VirusTotal uses in URLs and reports.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for FileHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FileHash({self})")
    }
}

impl Serialize for FileHash {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for FileHash {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        FileHash::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// What one engine said, in VirusTotal's categories.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EngineCategory {
    Malicious,
    Suspicious,
    Undetected,
    Harmless,
    Timeout,
    ConfirmedTimeout,
    Failure,
    TypeUnsupported,
    /// A category this version does not know.
    Other,
}

impl EngineCategory {
    pub(crate) fn from_virustotal(name: &str) -> EngineCategory {
        match name {
            "malicious" => EngineCategory::Malicious,
            "suspicious" => EngineCategory::Suspicious,
            "undetected" => EngineCategory::Undetected,
            "harmless" => EngineCategory::Harmless,
            "timeout" => EngineCategory::Timeout,
            "confirmed-timeout" => EngineCategory::ConfirmedTimeout,
            "failure" => EngineCategory::Failure,
            "type-unsupported" => EngineCategory::TypeUnsupported,
            _ => EngineCategory::Other,
        }
    }
}

/// One engine's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineResult {
    pub engine: String,
    pub category: EngineCategory,
    /// The detection name, when the engine detected something.
    pub result: Option<String>,
}

/// How many engines gave each category (`last_analysis_stats`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct AnalysisStats {
    pub malicious: u32,
    pub suspicious: u32,
    pub undetected: u32,
    pub harmless: u32,
    pub timeout: u32,
    pub confirmed_timeout: u32,
    pub failure: u32,
    pub type_unsupported: u32,
}

impl AnalysisStats {
    /// Engines that looked at the file and gave an opinion; timeouts, failures
    /// and unsupported types say nothing about it.
    pub fn engines_with_verdict(&self) -> u32 {
        self.malicious
            .saturating_add(self.suspicious)
            .saturating_add(self.undetected)
            .saturating_add(self.harmless)
    }
}

/// A VirusTotal report, compacted: what the results dataset stores per hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub sha256: FileHash,
    /// Sorted by engine name.
    pub engines: Vec<EngineResult>,
    pub stats: AnalysisStats,
    /// When VirusTotal last analysed the file (Unix seconds), if it has.
    pub last_analysis_date: Option<i64>,
    /// When VirusTotal first saw the file (Unix seconds); unknown for a report
    /// built from an upload's analysis.
    pub first_submission_date: Option<i64>,
    /// When Sentinel obtained this report (Unix seconds).
    pub fetched_at: i64,
}

impl Verdict {
    /// Whether the report is young enough to be answered without a call.
    pub fn is_fresh(&self, now_unix_secs: i64, freshness: Duration) -> bool {
        let age = now_unix_secs.saturating_sub(self.fetched_at);
        // A report "from the future" (clock moved back) is treated as fresh
        // rather than spending quota: its age is unknown but small.
        age < 0 || (age as u64) < freshness.as_secs()
    }

    /// The score `y` in [0, 1], or `None` when too few engines gave a verdict
    /// for the report to mean anything.
    pub fn score(&self, rule: &VerdictRule) -> Option<f64> {
        let engines = self.stats.engines_with_verdict();
        if engines == 0 || engines < rule.min_engines {
            return None;
        }
        let detections =
            f64::from(self.stats.malicious) + rule.suspicious_weight * f64::from(self.stats.suspicious);
        let ratio = (detections / f64::from(engines)).clamp(0.0, 1.0);
        // Hill function: 0 at ratio 0, 0.5 at `half_score_ratio`, towards 1.
        let rising = ratio.powf(rule.steepness);
        let score = rising / (rising + rule.half_score_ratio.powf(rule.steepness));
        Some(score.clamp(0.0, 1.0))
    }

    /// The label for the labelled-samples dataset.
    pub fn label(&self, rule: &VerdictRule) -> Label {
        let Some(score) = self.score(rule) else { return Label::Unlabelled };
        if self.stats.malicious >= rule.malicious_min_engines && score >= rule.malicious_min_score {
            return Label::Malicious;
        }
        let clean = self.stats.malicious == 0 && self.stats.suspicious == 0;
        // Engines catch up with new malware over days: zero detections on a
        // file first seen minutes before the analysis proves little.
        let seen_long_enough = match (self.first_submission_date, self.last_analysis_date) {
            (Some(first), Some(last)) => {
                last.saturating_sub(first) >= i64::try_from(rule.benign_min_age.as_secs()).unwrap_or(i64::MAX)
            }
            _ => false,
        };
        if clean && seen_long_enough { Label::Benign } else { Label::Unlabelled }
    }
}

/// The label a report gives a sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Label {
    /// y = 1 in the labelled-samples dataset.
    Malicious,
    /// y = 0 in the labelled-samples dataset.
    Benign,
    /// Not clear enough to train on.
    Unlabelled,
}

impl Label {
    /// The `y` column of the labelled-samples dataset.
    pub fn y(self) -> Option<f32> {
        match self {
            Label::Malicious => Some(1.0),
            Label::Benign => Some(0.0),
            Label::Unlabelled => None,
        }
    }
}

/// Parameters of [`Verdict::score`] and [`Verdict::label`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VerdictRule {
    /// Fewest engines with a verdict for a score to be given.
    pub min_engines: u32,
    /// Weight of a "suspicious" result relative to a "malicious" one.
    pub suspicious_weight: f64,
    /// Detection ratio at which the score is 0.5.
    pub half_score_ratio: f64,
    /// Hill exponent: how sharply the score rises around `half_score_ratio`.
    pub steepness: f64,
    /// Fewest "malicious" engines for the malicious label.
    pub malicious_min_engines: u32,
    /// Lowest score for the malicious label.
    pub malicious_min_score: f64,
    /// For the benign label, the file must have been known to VirusTotal for at
    /// least this long when it was analysed.
    #[serde(with = "humantime_serde")]
    pub benign_min_age: Duration,
}

impl Default for VerdictRule {
    fn default() -> Self {
        VerdictRule {
            min_engines: 10,
            suspicious_weight: 0.5,
            half_score_ratio: 0.1,
            steepness: 2.0,
            malicious_min_engines: 5,
            malicious_min_score: 0.8,
            benign_min_age: Duration::from_secs(14 * 86_400),
        }
    }
}

impl VerdictRule {
    /// Checks that the rule's numbers are usable (counts, ratios and ages in range).
    pub fn check(&self) -> Result<(), SettingsError> {
        let in_unit = |value: f64| (0.0..=1.0).contains(&value);
        let valid = in_unit(self.suspicious_weight)
            && self.half_score_ratio > 0.0
            && self.half_score_ratio < 1.0
            && self.steepness > 0.0
            && self.steepness.is_finite()
            && in_unit(self.malicious_min_score);
        if !valid {
            return Err(SettingsError::new(
                "verdict: suspicious_weight and malicious_min_score must be in [0, 1], half_score_ratio \
                 in (0, 1), steepness positive"
                    .to_owned(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;

    fn verdict(malicious: u32, suspicious: u32, undetected: u32) -> Verdict {
        Verdict {
            sha256: FileHash::from_bytes([7; 32]),
            engines: Vec::new(),
            stats: AnalysisStats {
                malicious,
                suspicious,
                undetected,
                type_unsupported: 5,
                ..Default::default()
            },
            last_analysis_date: Some(100 * DAY),
            first_submission_date: Some(10 * DAY),
            fetched_at: 100 * DAY,
        }
    }

    #[test]
    fn score_rises_smoothly_with_the_detection_ratio() {
        let rule = VerdictRule::default();
        let scores: Vec<f64> = (0..=70).map(|m| verdict(m, 0, 70 - m).score(&rule).unwrap()).collect();
        assert_eq!(scores[0], 0.0);
        assert!(scores.windows(2).all(|pair| pair[0] < pair[1]));
        assert!((scores[7] - 0.5).abs() < 1e-9, "7 of 70 is the half-score ratio");
        assert!(scores[1] < 0.05, "one detection is weak evidence: {}", scores[1]);
        assert!(scores[70] > 0.98);
        // Suspicious counts half; timeouts and unsupported types are not engines.
        assert_eq!(verdict(0, 14, 56).score(&rule), verdict(7, 0, 63).score(&rule));
    }

    #[test]
    fn too_few_engines_give_no_score() {
        let rule = VerdictRule::default();
        assert_eq!(verdict(3, 0, 6).score(&rule), None);
        assert_eq!(verdict(0, 0, 0).score(&VerdictRule { min_engines: 0, ..rule }), None);
        assert_eq!(verdict(3, 0, 6).label(&VerdictRule::default()), Label::Unlabelled);
    }

    #[test]
    fn labels_are_given_only_when_the_report_is_clear() {
        let rule = VerdictRule::default();
        assert_eq!(verdict(40, 2, 28).label(&rule), Label::Malicious);
        assert_eq!(verdict(0, 0, 70).label(&rule), Label::Benign);
        assert_eq!(verdict(3, 0, 67).label(&rule), Label::Unlabelled, "a few detections");
        assert_eq!(verdict(0, 1, 69).label(&rule), Label::Unlabelled, "one suspicious");
        let mut new_file = verdict(0, 0, 70);
        new_file.first_submission_date = Some(99 * DAY);
        assert_eq!(new_file.label(&rule), Label::Unlabelled, "too new to call benign");
        new_file.first_submission_date = None;
        assert_eq!(new_file.label(&rule), Label::Unlabelled);
        assert_eq!(Label::Malicious.y(), Some(1.0));
        assert_eq!(Label::Unlabelled.y(), None);
    }

    #[test]
    fn freshness_is_measured_from_the_fetch() {
        let report = verdict(1, 0, 69);
        let week = Duration::from_secs(7 * DAY as u64);
        assert!(report.is_fresh(report.fetched_at + 6 * DAY, week));
        assert!(!report.is_fresh(report.fetched_at + 7 * DAY, week));
        assert!(report.is_fresh(report.fetched_at - 10, week));
    }

    #[test]
    fn verdicts_round_trip_through_json() {
        let mut report = verdict(2, 1, 60);
        report.engines.push(EngineResult {
            engine: "Engine".into(),
            category: EngineCategory::TypeUnsupported,
            result: None,
        });
        let json = serde_json::to_string(&report).unwrap();
        assert!(json.contains(&"07".repeat(32)) && json.contains("type-unsupported"), "{json}");
        assert_eq!(serde_json::from_str::<Verdict>(&json).unwrap(), report);
        assert!(FileHash::parse("xyz").is_err());
    }
}
