//! The behaviour model: a malware detector over API-call n-grams and an
//! optional family classifier, stored together in one JSON file.
//!
//! The detector sees each API once, in order of first call, at most 175 of
//! them — the shape of MalBehavD, on which it is trained. A linear model over
//! TF-IDF n-grams and boosted trees over the behaviour profile (order,
//! bigrams, call categories, statistics) each give a decision value; a
//! logistic combination of the two, fitted on out-of-fold values, gives the
//! calibrated probability. The family classifier sees the calls with runs
//! collapsed (the shape of Mal-API-2019) and answers every family's softmax
//! probability.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};

use sentinel_gbdt::Booster;

use crate::error::ModelError;
use crate::features::{NgramSpace, SparseVector};
use crate::linear::{sigmoid, softmax};
use crate::profile::{FamilyProfile, ProfileSpace};
use crate::sequence::ApiCallSequence;

pub(crate) const MODEL_FORMAT: &str = "sentinel-behaviour";
/// Version 2: the detector stacks boosted trees over the behaviour profile
/// with the linear n-gram model; family guesses carry every probability.
pub(crate) const MODEL_FORMAT_VERSION: u32 = 2;

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

/// The malware detector's parameters: a linear model over TF-IDF n-grams and
/// boosted trees over the behaviour profile, stacked by a logistic
/// combination of their two decision values that is fitted on out-of-fold
/// values (and so is also the calibration).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Detector {
    pub space: NgramSpace,
    /// One weight per feature of `space` (n-grams, then dense features).
    pub weights: Vec<f32>,
    pub bias: f64,
    pub profile: ProfileSpace,
    pub trees: Booster,
    /// `p = sigmoid(stacking[0] * linear + stacking[1] * trees + stacking[2])`.
    pub stacking: [f64; 3],
    /// Probability at or above which a sequence is called malicious.
    pub threshold: f64,
    #[serde(skip)]
    dense_weights: Vec<f64>,
}

/// The detector's view of one sequence.
pub(crate) struct DetectorFeatures {
    pub tokens: Vec<String>,
    pub vector: SparseVector,
    /// Position and length of each n-gram feature's first occurrence.
    pub spans: Vec<(usize, usize)>,
    pub profile: Vec<f64>,
}

impl Detector {
    pub fn new(parts: DetectorParts, stacking: [f64; 3], threshold: f64) -> Self {
        let weights: Vec<f32> = parts.weights.iter().map(|&w| w as f32).collect();
        let dense_weights = weights.iter().map(|&w| f64::from(w)).collect();
        Detector {
            space: parts.space,
            weights,
            bias: parts.bias,
            profile: parts.profile,
            trees: parts.trees,
            stacking,
            threshold,
            dense_weights,
        }
    }

    fn validate(&mut self) -> Result<(), ModelError> {
        self.space.validate("detector")?;
        self.profile.validate()?;
        if self.weights.len() != self.space.dimension() {
            return Err(ModelError::Invalid(format!(
                "detector: {} weights for {} features",
                self.weights.len(),
                self.space.dimension()
            )));
        }
        if self.trees.n_features() != self.profile.dimension() {
            return Err(ModelError::Invalid(format!(
                "detector: the trees read {} features, the profile has {}",
                self.trees.n_features(),
                self.profile.dimension()
            )));
        }
        let finite = self.weights.iter().all(|w| w.is_finite())
            && self.stacking.iter().chain([&self.bias, &self.threshold]).all(|v| v.is_finite());
        if !finite || !(0.0..=1.0).contains(&self.threshold) {
            return Err(ModelError::Invalid(
                "detector: non-finite parameter or threshold outside [0, 1]".into(),
            ));
        }
        self.dense_weights = self.weights.iter().map(|&w| f64::from(w)).collect();
        Ok(())
    }

    pub fn features(&self, calls: &ApiCallSequence) -> DetectorFeatures {
        let tokens = calls.distinct_in_order(MAX_DISTINCT_APIS);
        let (vector, spans) = self.space.transform(&tokens);
        let profile = self.profile.transform(&tokens);
        DetectorFeatures { tokens: tokens.into_iter().map(str::to_owned).collect(), vector, spans, profile }
    }

    /// The linear and the trees' decision values.
    pub fn decisions(&self, features: &DetectorFeatures) -> (f64, f64) {
        let linear = features.vector.dot(&self.dense_weights) + self.bias;
        // The profile always has the trees' width (checked on load).
        let trees = self.trees.predict_margin(&features.profile).unwrap_or(0.0);
        (linear, trees)
    }

    pub fn probability(&self, (linear, trees): (f64, f64)) -> f64 {
        sigmoid(self.stacking[0] * linear + self.stacking[1] * trees + self.stacking[2])
    }
}

/// The fitted parts of a detector, before stacking.
pub(crate) struct DetectorParts {
    pub space: NgramSpace,
    pub weights: Vec<f64>,
    pub bias: f64,
    pub profile: ProfileSpace,
    pub trees: Booster,
}

/// The family classifier: a multinomial logistic regression over TF-IDF
/// n-grams of the calls with runs collapsed, a second one over the n-grams of
/// the first calls only (the program's start-up, which tells families apart
/// better than the behaviour they share later), and one-against-the-rest
/// boosted trees over the family profile (call counts, shares, first calls),
/// blended with weights chosen out of fold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FamilyClassifier {
    pub(crate) space: NgramSpace,
    pub(crate) classes: Vec<String>,
    /// One weight row per class, each with one weight per feature of `space`.
    pub(crate) weights: Vec<Vec<f32>>,
    pub(crate) biases: Vec<f64>,
    pub(crate) profile: FamilyProfile,
    /// One booster per class (that class against the others), over `profile`.
    pub(crate) trees: Vec<Booster>,
    /// The linear model's weight in the blend, chosen on out-of-fold
    /// probabilities; files written before it was chosen blend evenly.
    #[serde(default = "even_blend")]
    pub(crate) linear_weight: f64,
    /// The start-up model; files written before it existed have none.
    #[serde(default)]
    pub(crate) prefix: Option<PrefixModel>,
    /// The start-up model's weight in the blend (the trees get what the two
    /// linear models leave).
    #[serde(default)]
    pub(crate) prefix_weight: f64,
    #[serde(skip)]
    dense_weights: Vec<Vec<f64>>,
}

/// A multinomial logistic regression over the TF-IDF n-grams of the first
/// `calls` calls of a sequence (runs collapsed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PrefixModel {
    pub calls: usize,
    pub space: NgramSpace,
    /// One weight row per class, each with one weight per feature of `space`.
    pub weights: Vec<Vec<f32>>,
    pub biases: Vec<f64>,
    #[serde(skip)]
    dense_weights: Vec<Vec<f64>>,
}

/// The class weights as stored (f32) and as used (f64).
fn stored_weights(rows: &[Vec<f64>]) -> (Vec<Vec<f32>>, Vec<Vec<f64>>) {
    let stored: Vec<Vec<f32>> = rows.iter().map(|row| row.iter().map(|&w| w as f32).collect()).collect();
    let dense = widen(&stored);
    (stored, dense)
}

fn widen(rows: &[Vec<f32>]) -> Vec<Vec<f64>> {
    rows.iter().map(|row| row.iter().map(|&w| f64::from(w)).collect()).collect()
}

/// Checks one multinomial model's shape against `classes` classes and its space.
fn check_multinomial(
    what: &str,
    space: &NgramSpace,
    weights: &[Vec<f32>],
    biases: &[f64],
    classes: usize,
) -> Result<(), ModelError> {
    if weights.len() != classes || biases.len() != classes {
        return Err(ModelError::Invalid(format!("{what}: need one weight row and bias per class")));
    }
    let dim = space.dimension();
    if weights.iter().any(|row| row.len() != dim || row.iter().any(|w| !w.is_finite()))
        || biases.iter().any(|b| !b.is_finite())
    {
        return Err(ModelError::Invalid(format!(
            "{what}: weight rows must match the features and be finite"
        )));
    }
    Ok(())
}

/// Softmax probabilities of a multinomial model over `tokens`.
fn multinomial_probabilities(
    space: &NgramSpace,
    weights: &[Vec<f64>],
    biases: &[f64],
    tokens: &[&str],
) -> Vec<f64> {
    let vector = space.transform(tokens).0;
    let mut z: Vec<f64> = weights.iter().zip(biases).map(|(w, b)| vector.dot(w) + b).collect();
    softmax(&mut z);
    z
}

impl PrefixModel {
    pub(crate) fn new(calls: usize, space: NgramSpace, weights: &[Vec<f64>], biases: Vec<f64>) -> Self {
        let (weights, dense_weights) = stored_weights(weights);
        PrefixModel { calls, space, weights, biases, dense_weights }
    }

    fn validate(&mut self, classes: usize) -> Result<(), ModelError> {
        self.space.validate("families prefix")?;
        if self.calls == 0 || self.calls > MAX_FAMILY_CALLS {
            return Err(ModelError::Invalid(format!(
                "families prefix: calls must be 1..={MAX_FAMILY_CALLS}"
            )));
        }
        check_multinomial("families prefix", &self.space, &self.weights, &self.biases, classes)?;
        self.dense_weights = widen(&self.weights);
        Ok(())
    }

    /// Class probabilities of the start of `collapsed`.
    pub(crate) fn probabilities(&self, collapsed: &[&str]) -> Vec<f64> {
        let head = &collapsed[..collapsed.len().min(self.calls)];
        multinomial_probabilities(&self.space, &self.dense_weights, &self.biases, head)
    }
}

/// The blend weights of a family classifier: linear, start-up, trees (the
/// rest).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct BlendWeights {
    pub linear: f64,
    pub prefix: f64,
}

impl BlendWeights {
    pub fn trees(self) -> f64 {
        (1.0 - self.linear - self.prefix).max(0.0)
    }

    /// `linear`, `prefix` and `trees` probabilities mixed.
    pub fn mix(self, linear: &[f64], prefix: &[f64], trees: &[f64]) -> Vec<f64> {
        let t = self.trees();
        linear
            .iter()
            .zip(prefix)
            .zip(trees)
            .map(|((l, p), r)| self.linear * l + self.prefix * p + t * r)
            .collect()
    }
}

impl FamilyClassifier {
    pub(crate) fn new(
        space: NgramSpace,
        classes: Vec<String>,
        linear: (&[Vec<f64>], Vec<f64>),
        profile: FamilyProfile,
        trees: Vec<Booster>,
        prefix: PrefixModel,
        blend: BlendWeights,
    ) -> Self {
        let (weights, dense_weights) = stored_weights(linear.0);
        FamilyClassifier {
            space,
            classes,
            weights,
            biases: linear.1,
            profile,
            trees,
            linear_weight: blend.linear,
            prefix: Some(prefix),
            prefix_weight: blend.prefix,
            dense_weights,
        }
    }

    fn validate(&mut self) -> Result<(), ModelError> {
        self.space.validate("families")?;
        let k = self.classes.len();
        if k < 2 {
            return Err(ModelError::Invalid("families: need at least 2 classes".into()));
        }
        if self.classes.iter().any(|c| c.is_empty() || c.len() > 64) {
            return Err(ModelError::Invalid("families: class names must be 1 to 64 bytes".into()));
        }
        check_multinomial("families", &self.space, &self.weights, &self.biases, k)?;
        self.profile.validate()?;
        let weights_valid = (0.0..=1.0).contains(&self.linear_weight)
            && (0.0..=1.0).contains(&self.prefix_weight)
            && self.linear_weight + self.prefix_weight <= 1.0 + 1e-9;
        if !weights_valid {
            return Err(ModelError::Invalid(
                "families: linear_weight and prefix_weight must be within 0..=1 and sum to at most 1".into(),
            ));
        }
        match self.prefix.as_mut() {
            Some(prefix) => prefix.validate(k)?,
            None if self.prefix_weight > 0.0 => {
                return Err(ModelError::Invalid("families: prefix_weight without a prefix model".into()));
            }
            None => {}
        }
        if self.trees.len() != k || self.trees.iter().any(|t| t.n_features() != self.profile.dimension()) {
            return Err(ModelError::Invalid(
                "families: need one booster per class, each reading the family profile".into(),
            ));
        }
        self.dense_weights = widen(&self.weights);
        Ok(())
    }

    /// The families it knows, sorted.
    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// The most likely family of a non-empty sequence, with every family's
    /// probability.
    pub fn guess(&self, calls: &ApiCallSequence) -> Option<FamilyGuess> {
        if calls.is_empty() {
            return None;
        }
        let mut collapsed = calls.collapsed();
        collapsed.truncate(MAX_FAMILY_CALLS);
        let probabilities = self.probabilities(&collapsed, calls.calls());
        let best = crate::training::argmax(&probabilities);
        Some(FamilyGuess {
            family: self.classes[best].clone(),
            confidence: probabilities[best],
            probabilities: self.classes.iter().cloned().zip(probabilities).collect(),
        })
    }

    /// Class probabilities of a sequence (`collapsed`: the classifier's view,
    /// `all`: every call): the linear models' softmax and the trees'
    /// one-against-the-rest probabilities normalised to sum to 1, blended.
    pub(crate) fn probabilities(&self, collapsed: &[&str], all: &[String]) -> Vec<f64> {
        let linear = multinomial_probabilities(&self.space, &self.dense_weights, &self.biases, collapsed);
        // The profile always has the trees' width (checked on load).
        let trees = crate::training::tree_probabilities(&self.trees, &self.profile.transform(all, collapsed));
        let prefix = match &self.prefix {
            Some(prefix) => prefix.probabilities(collapsed),
            None => vec![0.0; linear.len()],
        };
        BlendWeights { linear: self.linear_weight, prefix: self.prefix_weight }.mix(&linear, &prefix, &trees)
    }
}

fn even_blend() -> f64 {
    0.5
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
    /// Family accuracy and macro F1 on the held-out split, accuracy by
    /// cross-validation.
    pub families_holdout_accuracy: Option<f64>,
    pub families_holdout_macro_f1: Option<f64>,
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

/// The most likely family of a sequence, its probability, and the
/// probability of every family the classifier knows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FamilyGuess {
    pub family: String,
    /// `probabilities[family]`.
    pub confidence: f64,
    /// Softmax probability of each family, by name (they sum to 1).
    pub probabilities: BTreeMap<String, f64>,
}

/// One feature of the scored sequence and its contribution to the stacked
/// log-odds (positive: towards malicious).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NgramContribution {
    /// An n-gram of the linear model (calls joined by ` > `), or a feature of
    /// the trees' behaviour profile: a bigram, `api [first-call position]`,
    /// or a bracketed category or statistic such as `[share of network calls]`.
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
        detector.probability(detector.decisions(&detector.features(calls)))
    }

    /// Scores one sequence.
    pub fn score(&self, calls: &ApiCallSequence) -> BehaviourVerdict {
        let detector = &self.file.detector;
        let features = detector.features(calls);
        let score = detector.probability(detector.decisions(&features));
        let ngram_features = features.vector.indices.len().saturating_sub(crate::features::DENSE_FEATURES);
        // Each part's share of the stacked log-odds: the linear n-gram terms
        // and the trees' per-feature contributions, both scaled by their
        // stacking weight, so they compare on one scale.
        let mut contributions: Vec<NgramContribution> = features.vector.indices[..ngram_features]
            .iter()
            .zip(&features.vector.values)
            .zip(&features.spans)
            .map(|((&index, &value), &(start, len))| NgramContribution {
                ngram: features.tokens[start..start + len].join(" > "),
                contribution: detector.stacking[0] * f64::from(detector.weights[index as usize]) * value,
            })
            .collect();
        if let Ok(shares) = detector.trees.contributions(&features.profile) {
            contributions.extend(shares.per_feature.iter().enumerate().filter(|(_, c)| **c != 0.0).map(
                |(index, &c)| NgramContribution {
                    ngram: detector.profile.feature_name(index),
                    contribution: detector.stacking[1] * c,
                },
            ));
        }
        contributions.sort_by(|a, b| b.contribution.abs().total_cmp(&a.contribution.abs()));
        contributions.truncate(EXPLAINED_NGRAMS);
        let family = self.family(calls);
        BehaviourVerdict {
            score,
            malicious: score >= detector.threshold,
            family,
            top_ngrams: contributions,
            calls: calls.len(),
            distinct_apis: features.tokens.len(),
            known_ngrams: ngram_features,
        }
    }

    /// The most likely family of a non-empty sequence with every family's
    /// probability (no detector work): `None` without a family classifier.
    pub fn family(&self, calls: &ApiCallSequence) -> Option<FamilyGuess> {
        self.file.families.as_ref()?.guess(calls)
    }
}
