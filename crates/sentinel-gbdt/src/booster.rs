//! The gradient-boosted ensemble for binary classification (logistic loss):
//! training parameters, the training loop with early stopping on a held-out
//! validation fraction, prediction (raw margin, probability, per-feature
//! contributions) and the versioned file format.

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_xoshiro::Xoshiro256PlusPlus;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::binning::{BinMapper, MAX_VALUE_BINS};
use crate::grower::{BinnedData, GrowthLimits, grow_tree};
use crate::tree::{Tree, TreeFile};
use crate::{GbdtError, sigmoid};

/// Name written in every model file, so that a file of another kind is refused.
const FORMAT_NAME: &str = "sentinel-gbdt";
/// Version of the file layout this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;
/// Most features a loaded model may declare.
const MAX_FEATURES: usize = 1 << 20;
/// Probabilities are kept this far from 0 and 1 so that log-losses stay finite.
const PROBABILITY_FLOOR: f64 = 1e-15;

/// Early stopping: training stops when the validation loss has not improved by
/// more than `tolerance` for `patience` iterations, and the model keeps the
/// iterations up to the best validation loss.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EarlyStopping {
    /// Share of the training rows held out (stratified) to measure the loss.
    pub validation_fraction: f64,
    pub patience: usize,
    pub tolerance: f64,
}

impl Default for EarlyStopping {
    fn default() -> Self {
        EarlyStopping { validation_fraction: 0.1, patience: 10, tolerance: 1e-7 }
    }
}

/// Training parameters; the defaults are scikit-learn's HistGradientBoosting ones.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Params {
    /// Shrinkage applied to every tree's output.
    pub learning_rate: f64,
    /// Number of boosting iterations (trees) at most.
    pub max_iter: usize,
    /// Leaves per tree at most (leaf-wise growth); `None` for no limit.
    pub max_leaf_nodes: Option<usize>,
    /// Depth at most (the root has depth 0); `None` for no limit.
    pub max_depth: Option<usize>,
    /// Rows a leaf must hold at least.
    pub min_samples_leaf: usize,
    /// L2 penalty on leaf values.
    pub l2_regularization: f64,
    /// Value bins per feature at most (2..=255); missing values have their own bin.
    pub max_bins: usize,
    pub early_stopping: Option<EarlyStopping>,
    /// Seed of every random choice (validation split, binning subsample).
    pub seed: u64,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            learning_rate: 0.1,
            max_iter: 100,
            max_leaf_nodes: Some(31),
            max_depth: None,
            min_samples_leaf: 20,
            l2_regularization: 0.0,
            max_bins: MAX_VALUE_BINS,
            early_stopping: Some(EarlyStopping::default()),
            seed: 0,
        }
    }
}

impl Params {
    fn validate(&self) -> Result<(), GbdtError> {
        let bad = |reason: &str| Err(GbdtError::InvalidParams(reason.to_owned()));
        if !(self.learning_rate > 0.0 && self.learning_rate.is_finite()) {
            return bad("learning_rate must be positive and finite");
        }
        if self.max_iter == 0 {
            return bad("max_iter must be at least 1");
        }
        if self.max_leaf_nodes.is_some_and(|n| n < 2) {
            return bad("max_leaf_nodes must be at least 2");
        }
        if self.max_depth == Some(0) {
            return bad("max_depth must be at least 1");
        }
        if !(self.l2_regularization >= 0.0 && self.l2_regularization.is_finite()) {
            return bad("l2_regularization must be non-negative and finite");
        }
        if !(2..=MAX_VALUE_BINS).contains(&self.max_bins) {
            return bad("max_bins must be between 2 and 255");
        }
        if let Some(stop) = &self.early_stopping
            && !(stop.validation_fraction > 0.0 && stop.validation_fraction < 1.0 && stop.patience > 0)
        {
            return bad("early stopping needs 0 < validation_fraction < 1 and patience >= 1");
        }
        Ok(())
    }
}

/// Training data: a row-major matrix of feature values (NaN = missing), labels
/// (`true` = positive class) and optional non-negative sample weights.
#[derive(Debug, Clone, Copy)]
pub struct Dataset<'a> {
    pub values: &'a [f64],
    pub n_features: usize,
    pub labels: &'a [bool],
    pub weights: Option<&'a [f64]>,
}

impl Dataset<'_> {
    fn validate(&self) -> Result<(), GbdtError> {
        let rows = self.labels.len();
        if self.n_features == 0 || self.values.len() != rows * self.n_features {
            return Err(GbdtError::InvalidData(format!(
                "{} values do not form {rows} rows of {} features",
                self.values.len(),
                self.n_features
            )));
        }
        if let Some(weights) = self.weights {
            if weights.len() != rows {
                return Err(GbdtError::InvalidData(format!("{} weights for {rows} rows", weights.len())));
            }
            if weights.iter().any(|w| !(w.is_finite() && *w >= 0.0)) {
                return Err(GbdtError::InvalidData("weights must be finite and non-negative".into()));
            }
        }
        let positives = self.labels.iter().filter(|&&l| l).count();
        if positives == 0 || positives == rows {
            return Err(GbdtError::InvalidData("training needs both classes".into()));
        }
        Ok(())
    }

    fn weight(&self, row: usize) -> f64 {
        self.weights.map_or(1.0, |w| w[row])
    }
}

/// A trained ensemble.
#[derive(Debug, Clone, PartialEq)]
pub struct Booster {
    n_features: usize,
    /// Raw margin before any tree (log-odds of the weighted positive share).
    base_score: f64,
    trees: Vec<Tree>,
}

/// A prediction's raw margin split into a bias and one share per feature.
#[derive(Debug, Clone, PartialEq)]
pub struct Contributions {
    /// The margin every row starts from: base score plus each tree's root value.
    pub bias: f64,
    /// `per_feature[f]` is the margin that splits on feature `f` added.
    pub per_feature: Vec<f64>,
}

impl Booster {
    /// Trains a model; deterministic for given data and parameters.
    pub fn fit(data: &Dataset<'_>, params: &Params) -> Result<Booster, GbdtError> {
        params.validate()?;
        data.validate()?;
        let n_features = data.n_features;
        let (train_rows, validation_rows) = split_rows(data.labels, params)?;

        let mapper = BinMapper::fit(data.values, n_features, &train_rows, params.max_bins, params.seed);
        let bins = mapper.transform(data.values, n_features, &train_rows);
        let binned =
            BinnedData { bins: &bins, rows: train_rows.len(), features: n_features, mapper: &mapper };

        let labels: Vec<f64> = train_rows.iter().map(|&r| f64::from(u8::from(data.labels[r]))).collect();
        let weights: Vec<f64> = train_rows.iter().map(|&r| data.weight(r)).collect();
        let total_weight: f64 = weights.iter().sum();
        if total_weight <= 0.0 {
            return Err(GbdtError::InvalidData("the training weights sum to zero".into()));
        }
        let positive_share = (labels.iter().zip(&weights).map(|(y, w)| y * w).sum::<f64>() / total_weight)
            .clamp(PROBABILITY_FLOOR, 1.0 - PROBABILITY_FLOOR);
        let base_score = (positive_share / (1.0 - positive_share)).ln();

        let limits = GrowthLimits {
            max_leaf_nodes: params.max_leaf_nodes,
            max_depth: params.max_depth,
            min_samples_leaf: params.min_samples_leaf,
            l2_regularization: params.l2_regularization,
            learning_rate: params.learning_rate,
        };
        let mut margins = vec![base_score; train_rows.len()];
        let mut validation_margins = vec![base_score; validation_rows.len()];
        let mut gradients = vec![0.0; train_rows.len()];
        let mut hessians = vec![0.0; train_rows.len()];
        let mut trees = Vec::new();
        let mut best = (f64::INFINITY, 0usize);
        let mut losses: Vec<f64> = Vec::new();

        for _ in 0..params.max_iter {
            gradients.par_iter_mut().zip(hessians.par_iter_mut()).enumerate().for_each(|(i, (g, h))| {
                let p = sigmoid(margins[i]);
                *g = weights[i] * (p - labels[i]);
                *h = weights[i] * (p * (1.0 - p)).max(PROBABILITY_FLOOR);
            });
            let grown = grow_tree(&binned, &gradients, &hessians, &limits);
            for (value, rows) in &grown.leaf_rows {
                rows.iter().for_each(|&r| margins[r] += value);
            }
            let tree = grown.tree;
            if let Some(stop) = &params.early_stopping {
                validation_margins.par_iter_mut().zip(&validation_rows).for_each(|(m, &r)| {
                    *m += tree.predict(&data.values[r * n_features..(r + 1) * n_features]);
                });
                trees.push(tree);
                let loss = log_loss(&validation_margins, &validation_rows, data);
                if loss < best.0 {
                    best = (loss, trees.len());
                }
                losses.push(loss);
                // Stop when none of the last `patience` losses beat the one before them.
                if losses.len() > stop.patience {
                    let reference = losses[losses.len() - stop.patience - 1];
                    if losses[losses.len() - stop.patience..].iter().all(|&l| l > reference - stop.tolerance)
                    {
                        break;
                    }
                }
            } else {
                trees.push(tree);
            }
        }
        if params.early_stopping.is_some() {
            trees.truncate(best.1.max(1));
        }
        Ok(Booster { n_features, base_score, trees })
    }

    /// Number of features a row must have.
    pub fn n_features(&self) -> usize {
        self.n_features
    }

    /// Number of trees (boosting iterations kept).
    pub fn n_trees(&self) -> usize {
        self.trees.len()
    }

    fn check_row(&self, row: &[f64]) -> Result<(), GbdtError> {
        if row.len() != self.n_features {
            return Err(GbdtError::WrongWidth { expected: self.n_features, got: row.len() });
        }
        Ok(())
    }

    /// The raw margin (log-odds) of one row.
    pub fn predict_margin(&self, row: &[f64]) -> Result<f64, GbdtError> {
        self.check_row(row)?;
        Ok(self.base_score + self.trees.iter().map(|t| t.predict(row)).sum::<f64>())
    }

    /// The probability of the positive class for one row.
    pub fn predict_probability(&self, row: &[f64]) -> Result<f64, GbdtError> {
        self.predict_margin(row).map(sigmoid)
    }

    /// Raw margins of the rows of a row-major matrix, in parallel.
    pub fn predict_margins(&self, values: &[f64]) -> Result<Vec<f64>, GbdtError> {
        if !values.len().is_multiple_of(self.n_features) {
            return Err(GbdtError::InvalidData(format!(
                "{} values are not whole rows of {} features",
                values.len(),
                self.n_features
            )));
        }
        Ok(values
            .par_chunks(self.n_features)
            .map(|row| self.base_score + self.trees.iter().map(|t| t.predict(row)).sum::<f64>())
            .collect())
    }

    /// How each feature moved this row's margin (Saabas attribution: along each
    /// tree's path, the change of the expected output at every split is credited
    /// to the split's feature). `bias + sum(per_feature)` equals the margin.
    pub fn contributions(&self, row: &[f64]) -> Result<Contributions, GbdtError> {
        self.check_row(row)?;
        let mut per_feature = vec![0.0; self.n_features];
        let bias = self.base_score
            + self.trees.iter().map(|t| t.add_contributions(row, &mut per_feature)).sum::<f64>();
        Ok(Contributions { bias, per_feature })
    }

    /// Serialises the model as compact JSON.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a model serialises to JSON")
    }

    /// Loads a model written by [`Booster::to_json`], checking format and version.
    pub fn from_json(bytes: &[u8]) -> Result<Booster, GbdtError> {
        serde_json::from_slice(bytes).map_err(|e| GbdtError::Format(e.to_string()))
    }
}

/// Mean weighted logistic loss of `margins` for the rows `rows`.
fn log_loss(margins: &[f64], rows: &[usize], data: &Dataset<'_>) -> f64 {
    let (mut loss, mut weight) = (0.0, 0.0);
    for (&m, &r) in margins.iter().zip(rows) {
        let p = sigmoid(m).clamp(PROBABILITY_FLOOR, 1.0 - PROBABILITY_FLOOR);
        let w = data.weight(r);
        loss -= w * if data.labels[r] { p.ln() } else { (1.0 - p).ln() };
        weight += w;
    }
    if weight > 0.0 { loss / weight } else { 0.0 }
}

/// Training and validation rows: a seeded, stratified split when early stopping
/// is on, every row for training otherwise.
fn split_rows(labels: &[bool], params: &Params) -> Result<(Vec<usize>, Vec<usize>), GbdtError> {
    let Some(stop) = &params.early_stopping else {
        return Ok(((0..labels.len()).collect(), Vec::new()));
    };
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(params.seed);
    let (mut train, mut validation) = (Vec::new(), Vec::new());
    for class in [false, true] {
        let mut rows: Vec<usize> = (0..labels.len()).filter(|&r| labels[r] == class).collect();
        rows.shuffle(&mut rng);
        let held = ((rows.len() as f64 * stop.validation_fraction).round() as usize).min(rows.len() - 1);
        if held == 0 {
            return Err(GbdtError::InvalidData(
                "too few rows of a class for the early-stopping validation split".into(),
            ));
        }
        validation.extend_from_slice(&rows[..held]);
        train.extend_from_slice(&rows[held..]);
    }
    train.sort_unstable();
    validation.sort_unstable();
    Ok((train, validation))
}

/// The file layout, version 1.
#[derive(Serialize, Deserialize)]
struct BoosterFile {
    format: String,
    version: u32,
    n_features: usize,
    base_score: f64,
    trees: Vec<TreeFile>,
}

/// Just enough of a file to check what it is before reading the rest, so that a
/// file of another version gets a version error rather than a field error.
#[derive(Deserialize)]
struct FileHeader {
    format: String,
    version: u32,
}

impl Serialize for Booster {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        BoosterFile {
            format: FORMAT_NAME.to_owned(),
            version: FORMAT_VERSION,
            n_features: self.n_features,
            base_score: self.base_score,
            trees: self.trees.iter().map(TreeFile::from).collect(),
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Booster {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let value = serde_json::Value::deserialize(deserializer)?;
        let header = FileHeader::deserialize(&value).map_err(D::Error::custom)?;
        if header.format != FORMAT_NAME {
            return Err(D::Error::custom(format!("not a {FORMAT_NAME} model (format {:?})", header.format)));
        }
        if header.version != FORMAT_VERSION {
            return Err(D::Error::custom(format!(
                "{FORMAT_NAME} model format version {} is not supported (this build reads version {FORMAT_VERSION})",
                header.version
            )));
        }
        let file = BoosterFile::deserialize(&value).map_err(D::Error::custom)?;
        // Prediction allocates one slot per feature for contributions: a hostile
        // file must not make that allocation unbounded.
        if file.n_features == 0 || file.n_features > MAX_FEATURES || !file.base_score.is_finite() {
            return Err(D::Error::custom(format!(
                "invalid model: {} features (1..={MAX_FEATURES} allowed) or non-finite base score",
                file.n_features
            )));
        }
        let trees = file
            .trees
            .into_iter()
            .map(|t| {
                let tree = Tree::try_from(t)?;
                tree.validate(file.n_features)?;
                Ok(tree)
            })
            .collect::<Result<Vec<Tree>, String>>()
            .map_err(|e| D::Error::custom(format!("invalid model: {e}")))?;
        Ok(Booster { n_features: file.n_features, base_score: file.base_score, trees })
    }
}
