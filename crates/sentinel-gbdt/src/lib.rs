//! Histogram gradient-boosted decision trees for binary classification, written for
//! Sentinel's classifiers: quantile binning (at most 255 value bins plus a bin for
//! missing values, whose direction each split learns), leaf-wise growth with
//! histogram subtraction, L2 regularisation, shrinkage, sample weights, early
//! stopping on a validation fraction, rayon-parallel histograms, determinism under
//! a seed, fast prediction over flat node arrays, per-feature contributions for
//! explanations, Platt calibration, and a versioned JSON file format that stores
//! real-valued thresholds (so a model needs no binning tables to predict).

mod binning;
mod booster;
mod calibration;
mod grower;
mod tree;

pub use binning::MAX_VALUE_BINS;
pub use booster::{Booster, Contributions, Dataset, EarlyStopping, FORMAT_VERSION, Params};
pub use calibration::PlattScaling;
pub use tree::Tree;

/// Why training, prediction or loading failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GbdtError {
    #[error("invalid training parameters: {0}")]
    InvalidParams(String),
    #[error("invalid data: {0}")]
    InvalidData(String),
    #[error("a row has {got} features, the model expects {expected}")]
    WrongWidth { expected: usize, got: usize },
    #[error("cannot read the model: {0}")]
    Format(String),
}

/// The logistic function, stable for large |x|.
#[inline]
pub(crate) fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}
