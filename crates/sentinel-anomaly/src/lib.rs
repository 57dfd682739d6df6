//! Sentinel's anomaly detection engine: feature vectors in, anomaly scores out,
//! with no knowledge of where the vectors come from.
//!
//! - Detectors: [`IsolationForest`], [`LocalOutlierFactor`] (novelty mode, k-d
//!   tree or blocked brute force), [`OneClassSvm`] (exact SMO solver) and [`RandomFeatureOneClassSvm`]
//!   (its approximation for large training sets). All implement [`Detector`]:
//!   `score_one` for one vector, `score` for a batch in parallel, `decide` with
//!   the fitted threshold. A higher score is always more anomalous.
//! - [`Preprocessor`]: scaling, missing values and one-hot encoding, fitted on
//!   training data.
//! - [`threshold`]: thresholds by contamination, by false-positive rate, and
//!   [`threshold::AdaptiveThreshold`] that follows drift.
//! - [`Ensemble`]: averaging, voting, stacking; members chosen by their agreement without labels,
//!   weighted by feedback with them.
//! - [`save`] / [`load`]: a versioned file format for all of the above.
//!
//! Input is validated once, at the boundary: [`Matrix`] refuses NaN and
//! infinities, models refuse vectors of the wrong dimension, and loaded files are
//! checked before use. Nothing here panics on bad input.

mod brute;
mod detector;
mod ensemble;
mod error;
mod iforest;
mod kdtree;
mod lof;
mod matrix;
mod model;
mod one_class_svm;
mod preprocess;
mod random_features;
mod rbf;
pub mod threshold;

#[cfg(feature = "bench")]
pub mod bench;

pub use detector::{Contamination, Detector};
pub use ensemble::{BeyondRange, Combination, Ensemble, EnsembleParams, Weighting};
pub use error::{AnomalyError, Result};
pub use iforest::{IsolationForest, IsolationForestParams};
pub use kdtree::Neighbours;
pub use lof::{LocalOutlierFactor, LofParams};
pub use matrix::Matrix;
pub use model::{Model, Persistent, load, save};
pub use one_class_svm::{OneClassSvm, OneClassSvmParams};
pub use preprocess::{ColumnKind, MissingPolicy, PreprocessParams, Preprocessor, Scaling, Value};
pub use random_features::{RandomFeatureOneClassSvm, RandomFeatureParams};
pub use rbf::Gamma;
