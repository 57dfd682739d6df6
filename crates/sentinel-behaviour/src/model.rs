//! The behaviour model: a malware detector over API-call n-grams and an
//! optional family classifier, stored together in one JSON file.
//!
//! The detector sees each API once, in order of first call, at most 175 of
//! them — the shape of MalBehavD, on which it is trained — and answers a
//! Platt-calibrated probability. The family classifier sees the calls with
//! runs collapsed (the shape of Mal-API-2019) and answers the most likely of
//! its families with a softmax probability.

use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::ModelError;
use crate::features::{NgramSpace, SparseVector};
use crate::linear::{sigmoid, softmax};
use crate::sequence::ApiCallSequence;

pub(crate) const MODEL_FORMAT: &str = "sentinel-behaviour";
pub(crate) const MODEL_FORMAT_VERSION: u32 = 1;

/// Largest model file accepted.
const MAX_MODEL_BYTES: u64 = 64 << 20;

/// MalBehavD records at most 175 distinct APIs per sample; the detector never
/// saw longer lists, so it scores the first 175 distinct APIs of any trace.
pub(crate) const MAX_DISTINCT_APIS: usize = 175;

/// Calls (after collapsing runs) given to the family classifier: Mal-API-2019
/// sequences are mostly under this, and it bounds the work per verdict.
pub(crate) const MAX_FAMILY_CALLS: usize = 20_000;

/// N-grams reported in a verdict's explanation.
const EXPLAINED_NGRAMS: usize = 5;

/// The committed default model (models/behaviour.json, produced by
/// `sentinel train dynamic`).
const BUILTIN_MODEL: &str = include_str!("../../../models/behaviour.json");

/// The malware detector's parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Detector {
    pub space: NgramSpace,
    /// One weight per feature of `space` (n-grams, then dense features).
    pub weights: Vec<f32>,
    pub bias: f64,
    /// Platt scaling of the decision value: `p = sigmoid(a z + b)`.
    pub platt_a: f64,
    pub platt_b: f64,
    /// Probability at or above which a sequence is called malicious.
    pub threshold: f64,
    #[serde(skip)]
    dense_weights: Vec<f64>,
}

impl Detector {
    pub fn new(space: NgramSpace, weights: &[f64], bias: f64, platt: (f64, f64), threshold: f64) -> Self {
        let weights: Vec<f32> = weights.iter().map(|&w| w as f32).collect();
        let dense_weights = weights.iter().map(|&w| f64::from(w)).collect();
        Detector { space, weights, bias, platt_a: platt.0, platt_b: platt.1, threshold, dense_weights }
    }

    fn validate(&mut self) -> Result<(), ModelError> {
        self.space.validate("detector")?;
        if self.weights.len() != self.space.dimension() {
            return Err(ModelError::Invalid(format!(
                "detector: {} weights for {} features",
                self.weights.len(),
                self.space.dimension()
            )));
        }
        let finite = self.weights.iter().all(|w| w.is_finite())
            && [self.bias, self.platt_a, self.platt_b, self.threshold].iter().all(|v| v.is_finite());
        if !finite || !(0.0..=1.0).contains(&self.threshold) {
            return Err(ModelError::Invalid(
                "detector: non-finite parameter or threshold outside [0, 1]".into(),
            ));
        }
        self.dense_weights = self.weights.iter().map(|&w| f64::from(w)).collect();
        Ok(())
    }

    pub fn features(&self, calls: &ApiCallSequence) -> (Vec<String>, SparseVector, Vec<(usize, usize)>) {
        let tokens = calls.distinct_in_order(MAX_DISTINCT_APIS);
        let (vector, spans) = self.space.transform(&tokens);
        (tokens.into_iter().map(str::to_owned).collect(), vector, spans)
    }

    pub fn decision(&self, vector: &SparseVector) -> f64 {
        vector.dot(&self.dense_weights) + self.bias
    }

    pub fn probability(&self, decision: f64) -> f64 {
        sigmoid(self.platt_a * decision + self.platt_b)
    }
}

/// The family classifier's parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FamilyClassifier {
    pub space: NgramSpace,
    pub classes: Vec<String>,
    /// One weight row per class, each with one weight per feature of `space`.
    pub weights: Vec<Vec<f32>>,
    pub biases: Vec<f64>,
    #[serde(skip)]
    dense_weights: Vec<Vec<f64>>,
}

impl FamilyClassifier {
    pub fn new(space: NgramSpace, classes: Vec<String>, weights: &[Vec<f64>], biases: Vec<f64>) -> Self {
        let weights: Vec<Vec<f32>> =
            weights.iter().map(|row| row.iter().map(|&w| w as f32).collect()).collect();
        let dense_weights = weights.iter().map(|row| row.iter().map(|&w| f64::from(w)).collect()).collect();
        FamilyClassifier { space, classes, weights, biases, dense_weights }
    }

    fn validate(&mut self) -> Result<(), ModelError> {
        self.space.validate("families")?;
        let k = self.classes.len();
        if k < 2 || self.weights.len() != k || self.biases.len() != k {
            return Err(ModelError::Invalid(
                "families: need at least 2 classes, one weight row and bias each".into(),
            ));
        }
        if self.classes.iter().any(|c| c.is_empty() || c.len() > 64) {
            return Err(ModelError::Invalid("families: class names must be 1 to 64 bytes".into()));
        }
        let dim = self.space.dimension();
        if self.weights.iter().any(|row| row.len() != dim || row.iter().any(|w| !w.is_finite()))
            || self.biases.iter().any(|b| !b.is_finite())
        {
            return Err(ModelError::Invalid(
                "families: weight rows must match the features and be finite".into(),
            ));
        }
        self.dense_weights =
            self.weights.iter().map(|row| row.iter().map(|&w| f64::from(w)).collect()).collect();
        Ok(())
    }

    pub fn vector(&self, calls: &ApiCallSequence) -> SparseVector {
        let collapsed = calls.collapsed();
        let tokens = &collapsed[..collapsed.len().min(MAX_FAMILY_CALLS)];
        self.space.transform(tokens).0
    }

    /// Class probabilities of one feature vector.
    pub fn probabilities(&self, vector: &SparseVector) -> Vec<f64> {
        let mut z: Vec<f64> =
            self.dense_weights.iter().zip(&self.biases).map(|(w, b)| vector.dot(w) + b).collect();
        softmax(&mut z);
        z
    }
}

/// How a model was trained and what it measured on held-out data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingRecord {
    /// The data sets used.
    pub data: Vec<String>,
    pub seed: u64,
    /// Regularisation chosen by cross-validation for the detector.
    pub detector_c: f64,
    /// Detector figures on the held-out split (sequences unseen in training).
    pub holdout_roc_auc: Option<f64>,
    pub holdout_tpr_at_1pct_fpr: Option<f64>,
    /// Regularisation chosen for the family classifier.
    pub families_c: Option<f64>,
    /// Family accuracy on the held-out split and by cross-validation.
    pub families_holdout_accuracy: Option<f64>,
    pub families_cv_accuracy: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelFile {
    format: String,
    format_version: u32,
    version: String,
    training: TrainingRecord,
    detector: Detector,
    families: Option<FamilyClassifier>,
}

/// A loaded behaviour model. Immutable and `Send + Sync`: share one behind an
/// `Arc` between all analyses.
#[derive(Debug, Clone, PartialEq)]
pub struct BehaviourModel {
    file: ModelFile,
}

/// The most likely family of a sequence and its probability.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FamilyGuess {
    pub family: String,
    pub confidence: f64,
}

/// One n-gram of the scored sequence and its contribution to the decision
/// value (positive: towards malicious).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NgramContribution {
    /// The calls of the n-gram, joined by ` > `.
    pub ngram: String,
    pub contribution: f64,
}

/// The model's answer for one sequence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BehaviourVerdict {
    /// Calibrated probability that the sequence is malware's.
    pub score: f64,
    /// `score >= threshold`.
    pub malicious: bool,
    /// Most likely family, when the model has a family classifier and the
    /// sequence is not empty. Meaningful for malware only.
    pub family: Option<FamilyGuess>,
    /// The n-grams that moved the decision most, strongest first.
    pub top_ngrams: Vec<NgramContribution>,
    /// Calls in the sequence and distinct APIs scored by the detector.
    pub calls: usize,
    pub distinct_apis: usize,
    /// Detector n-grams of the sequence that the model knows; few known
    /// n-grams mean the verdict rests on little evidence.
    pub known_ngrams: usize,
}

impl BehaviourModel {
    pub(crate) fn from_parts(
        version_hint: &str,
        training: TrainingRecord,
        detector: Detector,
        families: Option<FamilyClassifier>,
    ) -> Result<BehaviourModel, ModelError> {
        let mut file = ModelFile {
            format: MODEL_FORMAT.to_owned(),
            format_version: MODEL_FORMAT_VERSION,
            version: String::new(),
            training,
            detector,
            families,
        };
        // The version names the content: same data, seed and code give the same version.
        let body = serde_json::to_vec(&file)?;
        let digest = body
            .iter()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
        file.version = format!("{version_hint}-{digest:016x}");
        Ok(BehaviourModel { file })
    }

    /// The committed default model.
    pub fn builtin() -> Result<BehaviourModel, ModelError> {
        Self::from_json(BUILTIN_MODEL.as_bytes())
    }

    /// Reads a model file (at most 64 MiB).
    pub fn load(path: &Path) -> Result<BehaviourModel, ModelError> {
        let io = |source| ModelError::Io { path: path.into(), source };
        let file = std::fs::File::open(path).map_err(io)?;
        let size = file.metadata().map_err(io)?.len();
        if size > MAX_MODEL_BYTES {
            return Err(ModelError::TooLarge { size, limit: MAX_MODEL_BYTES });
        }
        let mut bytes = Vec::with_capacity(size as usize);
        file.take(MAX_MODEL_BYTES + 1).read_to_end(&mut bytes).map_err(io)?;
        Self::from_json(&bytes)
    }

    /// Parses and checks a model from its JSON bytes.
    pub fn from_json(bytes: &[u8]) -> Result<BehaviourModel, ModelError> {
        if bytes.len() as u64 > MAX_MODEL_BYTES {
            return Err(ModelError::TooLarge { size: bytes.len() as u64, limit: MAX_MODEL_BYTES });
        }
        #[derive(Deserialize)]
        struct Header {
            format: String,
            format_version: u32,
        }
        let header: Header = serde_json::from_slice(bytes)?;
        if header.format != MODEL_FORMAT || header.format_version != MODEL_FORMAT_VERSION {
            return Err(ModelError::WrongFormat {
                found: header.format.chars().take(64).collect(),
                version: header.format_version,
                expected: MODEL_FORMAT,
                expected_version: MODEL_FORMAT_VERSION,
            });
        }
        let mut file: ModelFile = serde_json::from_slice(bytes)?;
        if file.version.is_empty() || file.version.len() > 128 {
            return Err(ModelError::Invalid("version must be 1 to 128 bytes".into()));
        }
        file.detector.validate()?;
        if let Some(families) = file.families.as_mut() {
            families.validate()?;
        }
        Ok(BehaviourModel { file })
    }

    /// The model as JSON, as [`load`](Self::load) reads it.
    pub fn to_json(&self) -> Vec<u8> {
        // Serialising plain structs of numbers and strings cannot fail.
        serde_json::to_vec(&self.file).unwrap_or_default()
    }

    /// Writes the model file.
    pub fn save(&self, path: &Path) -> Result<(), ModelError> {
        std::fs::write(path, self.to_json()).map_err(|source| ModelError::Io { path: path.into(), source })
    }

    /// A name for this exact model: a hint and a digest of its content.
    pub fn version(&self) -> &str {
        &self.file.version
    }

    /// The probability at or above which a sequence is called malicious.
    pub fn threshold(&self) -> f64 {
        self.file.detector.threshold
    }

    /// How the model was trained and its held-out figures.
    pub fn training(&self) -> &TrainingRecord {
        &self.file.training
    }

    /// The families the classifier knows (empty without a classifier).
    pub fn families(&self) -> Vec<&str> {
        self.file.families.as_ref().map_or_else(Vec::new, |f| f.classes.iter().map(String::as_str).collect())
    }

    /// Only the calibrated malware probability (no explanation, no family):
    /// the fast path for bulk scoring.
    pub fn probability(&self, calls: &ApiCallSequence) -> f64 {
        let detector = &self.file.detector;
        let (_, vector, _) = detector.features(calls);
        detector.probability(detector.decision(&vector))
    }

    /// Scores one sequence.
    pub fn score(&self, calls: &ApiCallSequence) -> BehaviourVerdict {
        let detector = &self.file.detector;
        let (tokens, vector, spans) = detector.features(calls);
        let score = detector.probability(detector.decision(&vector));
        let ngram_features = vector.indices.len().saturating_sub(crate::features::DENSE_FEATURES);
        let mut contributions: Vec<NgramContribution> = vector.indices[..ngram_features]
            .iter()
            .zip(&vector.values)
            .zip(&spans)
            .map(|((&index, &value), &(start, len))| NgramContribution {
                ngram: tokens[start..start + len].join(" > "),
                contribution: f64::from(detector.weights[index as usize]) * value,
            })
            .collect();
        contributions.sort_by(|a, b| b.contribution.abs().total_cmp(&a.contribution.abs()));
        contributions.truncate(EXPLAINED_NGRAMS);
        let family = match &self.file.families {
            Some(families) if !calls.is_empty() => {
                let probabilities = families.probabilities(&families.vector(calls));
                probabilities
                    .iter()
                    .enumerate()
                    .max_by(|a, b| a.1.total_cmp(b.1))
                    .map(|(k, &p)| FamilyGuess { family: families.classes[k].clone(), confidence: p })
            }
            _ => None,
        };
        BehaviourVerdict {
            score,
            malicious: score >= detector.threshold,
            family,
            top_ngrams: contributions,
            calls: calls.len(),
            distinct_apis: tokens.len(),
            known_ngrams: ngram_features,
        }
    }

    /// The family classifier's probabilities for each of [`families`](Self::families).
    pub fn family_probabilities(&self, calls: &ApiCallSequence) -> Option<Vec<f64>> {
        let families = self.file.families.as_ref()?;
        Some(families.probabilities(&families.vector(calls)))
    }
}
