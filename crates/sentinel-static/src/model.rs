//! The static classifier as shipped: a gradient-boosted model over the
//! `pe-header` features, its Platt calibration, the decision threshold, and the
//! record of how it was trained and how it did on held-out data — one JSON file
//! (`models/static.json`), checked thoroughly when loaded because a model file is
//! untrusted input like any other.

use std::path::Path;

use sentinel_gbdt::{Booster, PlattScaling};
use sentinel_pe::{PE_HEADER_COLUMNS, PeError};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::header_csv::FEATURES;
use crate::training::{Evaluation, TrainingSummary};
use crate::{AnalyseError, ModelError};

/// Feature schema the model reads.
pub const SCHEMA: &str = "pe-header";
/// Version of the model file layout.
pub const MODEL_FORMAT_VERSION: u32 = 1;

/// The default model, trained by `sentinel train static` and committed.
static BUILTIN_MODEL: &[u8] = include_bytes!("../../../models/static.json");

/// A loaded static classifier; cheap to share between threads (`Send + Sync`,
/// immutable after loading).
#[derive(Debug, Clone, PartialEq)]
pub struct StaticModel {
    file: ModelFile,
}

/// The file layout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct ModelFile {
    pub(crate) schema: String,
    pub(crate) format_version: u32,
    /// `pe-header-` and the first 16 hex digits of the SHA-256 of what decides a
    /// score (columns, trees, calibration, threshold).
    pub(crate) version: String,
    pub(crate) feature_columns: Vec<String>,
    pub(crate) threshold: f64,
    pub(crate) calibration: PlattScaling,
    pub(crate) training: TrainingSummary,
    pub(crate) evaluation: Evaluation,
    pub(crate) booster: Booster,
}

/// The verdict on one file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StaticVerdict {
    /// Calibrated probability that the file is malware, in [0, 1].
    pub score: f64,
    /// `score >= threshold`.
    pub malicious: bool,
    /// Why: each feature's share of the model's log-odds, largest magnitude first
    /// (features that did not move the score are left out).
    pub contributions: Vec<FeatureContribution>,
}

/// One feature's part in a verdict.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FeatureContribution {
    pub feature: String,
    /// The file's value of the feature.
    pub value: f64,
    /// Log-odds this feature added (positive pushes towards malware).
    pub contribution: f64,
}

impl StaticModel {
    /// The committed default model.
    pub fn builtin() -> StaticModel {
        StaticModel::from_slice(BUILTIN_MODEL).expect("the committed models/static.json is valid (tested)")
    }

    /// Loads a model file.
    pub fn load(path: &Path) -> Result<StaticModel, ModelError> {
        let bytes = std::fs::read(path)
            .map_err(|e| ModelError::Io { path: path.display().to_string(), message: e.to_string() })?;
        StaticModel::from_slice(&bytes)
    }

    /// Parses and checks a model file's bytes.
    pub fn from_slice(bytes: &[u8]) -> Result<StaticModel, ModelError> {
        #[derive(Deserialize)]
        struct Header {
            schema: String,
            format_version: u32,
        }
        let header: Header = serde_json::from_slice(bytes).map_err(|e| ModelError::Format(e.to_string()))?;
        if header.schema != SCHEMA {
            return Err(ModelError::Schema(header.schema));
        }
        if header.format_version != MODEL_FORMAT_VERSION {
            return Err(ModelError::Version {
                found: header.format_version,
                supported: MODEL_FORMAT_VERSION,
            });
        }
        let file: ModelFile = serde_json::from_slice(bytes).map_err(|e| ModelError::Format(e.to_string()))?;
        if file.feature_columns.iter().map(String::as_str).ne(PE_HEADER_COLUMNS) {
            return Err(ModelError::Format("the feature columns are not the pe-header columns".into()));
        }
        if file.booster.n_features() != FEATURES {
            return Err(ModelError::Format(format!(
                "the trees read {} features, the schema has {FEATURES}",
                file.booster.n_features()
            )));
        }
        if !(file.threshold.is_finite() && (0.0..=1.0).contains(&file.threshold)) {
            return Err(ModelError::Format(format!("threshold {} is not a probability", file.threshold)));
        }
        if !(file.calibration.a.is_finite() && file.calibration.b.is_finite()) {
            return Err(ModelError::Format("the calibration parameters are not finite".into()));
        }
        Ok(StaticModel { file })
    }

    /// Assembles a freshly trained model and gives it its content version.
    pub(crate) fn assemble(
        booster: Booster,
        calibration: PlattScaling,
        threshold: f64,
        training: TrainingSummary,
        evaluation: Evaluation,
    ) -> StaticModel {
        let mut file = ModelFile {
            schema: SCHEMA.to_owned(),
            format_version: MODEL_FORMAT_VERSION,
            version: String::new(),
            feature_columns: PE_HEADER_COLUMNS.iter().map(|c| (*c).to_owned()).collect(),
            threshold,
            calibration,
            training,
            evaluation,
            booster,
        };
        let mut hasher = Sha256::new();
        hasher.update(serde_json::to_vec(&file.feature_columns).expect("strings serialise"));
        hasher.update(file.booster.to_json());
        hasher.update(serde_json::to_vec(&(file.calibration, file.threshold)).expect("numbers serialise"));
        file.version = format!("{SCHEMA}-{}", &hex::encode(hasher.finalize())[..16]);
        StaticModel { file }
    }

    /// The model's version string (content hash).
    pub fn version(&self) -> &str {
        &self.file.version
    }

    /// Scores at or above this are malicious.
    pub fn threshold(&self) -> f64 {
        self.file.threshold
    }

    /// How the model was trained.
    pub fn training(&self) -> &TrainingSummary {
        &self.file.training
    }

    /// How the model did on data kept out of training.
    pub fn evaluation(&self) -> &Evaluation {
        &self.file.evaluation
    }

    /// The trees.
    pub fn booster(&self) -> &Booster {
        &self.file.booster
    }

    /// The model file's JSON.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(&self.file).expect("a model serialises to JSON")
    }

    /// Writes the model file.
    pub fn save(&self, path: &Path) -> Result<(), ModelError> {
        std::fs::write(path, self.to_json())
            .map_err(|e| ModelError::Io { path: path.display().to_string(), message: e.to_string() })
    }

    /// Calibrated malware probability of one feature row (in `PE_HEADER_COLUMNS` order).
    pub fn score_features(&self, features: &[f64]) -> Result<f64, AnalyseError> {
        let margin =
            self.file.booster.predict_margin(features).map_err(|e| AnalyseError::Model(e.to_string()))?;
        Ok(self.file.calibration.probability(margin))
    }

    /// Calibrated malware probabilities of a row-major feature matrix, in parallel.
    pub fn score_rows(&self, values: &[f64]) -> Result<Vec<f64>, AnalyseError> {
        let margins =
            self.file.booster.predict_margins(values).map_err(|e| AnalyseError::Model(e.to_string()))?;
        Ok(margins.into_iter().map(|m| self.file.calibration.probability(m)).collect())
    }

    /// Static verdict on a file's bytes (any bytes: non-PE input is an error, never a panic).
    pub fn analyse(&self, bytes: &[u8]) -> Result<StaticVerdict, AnalyseError> {
        let features = sentinel_pe::pe_header_features(bytes).map_err(|e| match e {
            PeError::NotPe(reason) => AnalyseError::NotPe(reason),
            other => AnalyseError::Malformed(other.to_string()),
        })?;
        self.verdict(&features)
    }

    /// Verdict with explanation for one feature row.
    pub fn verdict(&self, features: &[f64]) -> Result<StaticVerdict, AnalyseError> {
        let explained =
            self.file.booster.contributions(features).map_err(|e| AnalyseError::Model(e.to_string()))?;
        // The score comes from the same summation as `score_features`, so a verdict
        // and a batch score of the same file agree to the last bit.
        let score = self.score_features(features)?;
        // Shares of the calibrated log-odds: Platt's slope scales every share alike.
        let slope = self.file.calibration.a;
        let mut contributions: Vec<FeatureContribution> = explained
            .per_feature
            .iter()
            .enumerate()
            .filter(|(_, c)| **c != 0.0)
            .map(|(f, c)| FeatureContribution {
                feature: PE_HEADER_COLUMNS[f].to_owned(),
                value: features[f],
                contribution: c * slope,
            })
            .collect();
        contributions.sort_by(|a, b| b.contribution.abs().total_cmp(&a.contribution.abs()));
        Ok(StaticVerdict { score, malicious: score >= self.file.threshold, contributions })
    }
}
