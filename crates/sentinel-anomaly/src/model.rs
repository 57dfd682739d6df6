//! Any fitted detector behind one type, and the versioned file format every
//! fitted object of this crate is saved in: a JSON envelope naming the format,
//! its version and the kind of object, so that loading a file of another kind,
//! of another version or from another program is a clear error rather than a
//! model that silently scores garbage. Loaded objects are validated (array
//! shapes, index ranges, finiteness) before use, because a model file is input
//! too and may have been tampered with.

use std::io::{Read, Write};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::detector::Detector;
use crate::ensemble::Ensemble;
use crate::error::{AnomalyError, Result};
use crate::iforest::IsolationForest;
use crate::lof::LocalOutlierFactor;
use crate::matrix::Matrix;
use crate::one_class_svm::OneClassSvm;
use crate::preprocess::Preprocessor;
use crate::random_features::RandomFeatureOneClassSvm;

/// The format name written in every file.
const FORMAT: &str = "sentinel-anomaly";
/// Bumped whenever a saved object's layout or meaning changes.
const VERSION: u32 = 1;

/// A fitted detector of any kind.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Model {
    IsolationForest(IsolationForest),
    LocalOutlierFactor(LocalOutlierFactor),
    OneClassSvm(OneClassSvm),
    RandomFeatureOneClassSvm(RandomFeatureOneClassSvm),
}

impl Model {
    fn as_detector(&self) -> &dyn Detector {
        match self {
            Model::IsolationForest(m) => m,
            Model::LocalOutlierFactor(m) => m,
            Model::OneClassSvm(m) => m,
            Model::RandomFeatureOneClassSvm(m) => m,
        }
    }

    /// A short name for reports and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Model::IsolationForest(_) => "isolation_forest",
            Model::LocalOutlierFactor(_) => "local_outlier_factor",
            Model::OneClassSvm(_) => "one_class_svm",
            Model::RandomFeatureOneClassSvm(_) => "one_class_svm_random_features",
        }
    }
}

impl Detector for Model {
    fn n_features(&self) -> usize {
        self.as_detector().n_features()
    }

    fn score_checked(&self, x: &[f64]) -> f64 {
        self.as_detector().score_checked(x)
    }

    fn threshold(&self) -> f64 {
        self.as_detector().threshold()
    }

    fn score(&self, data: &Matrix) -> Result<Vec<f64>> {
        self.as_detector().score(data)
    }
}

/// An object that can be saved in the versioned format.
pub trait Persistent: Serialize + DeserializeOwned + private::Sealed {
    /// The kind written in the envelope.
    const KIND: &'static str;

    /// Checks a freshly deserialised object.
    fn validate(&self) -> Result<()>;
}

mod private {
    pub trait Sealed {}
}

macro_rules! persistent {
    ($type:ty, $kind:literal, |$this:ident| $validate:expr) => {
        impl private::Sealed for $type {}
        impl Persistent for $type {
            const KIND: &'static str = $kind;
            fn validate(&$this) -> Result<()> {
                $validate
            }
        }
    };
}

persistent!(IsolationForest, "isolation_forest", |self| IsolationForest::validate(self));
// LOF validates while deserialising, when it rebuilds its tree.
persistent!(LocalOutlierFactor, "local_outlier_factor", |self| Ok(()));
persistent!(OneClassSvm, "one_class_svm", |self| OneClassSvm::validate(self));
persistent!(RandomFeatureOneClassSvm, "one_class_svm_random_features", |self| {
    RandomFeatureOneClassSvm::validate(self)
});
persistent!(Model, "model", |self| validate_model(self));
persistent!(Ensemble, "ensemble", |self| Ensemble::validate(self));
persistent!(Preprocessor, "preprocessor", |self| Preprocessor::validate(self));

pub(crate) fn validate_model(model: &Model) -> Result<()> {
    match model {
        Model::IsolationForest(m) => m.validate(),
        Model::LocalOutlierFactor(_) => Ok(()),
        Model::OneClassSvm(m) => m.validate(),
        Model::RandomFeatureOneClassSvm(m) => m.validate(),
    }
}

#[derive(Serialize)]
struct EnvelopeOut<'a, T> {
    format: &'a str,
    version: u32,
    kind: &'a str,
    body: &'a T,
}

#[derive(Deserialize)]
struct EnvelopeIn {
    format: String,
    version: u32,
    kind: String,
    body: serde_json::Value,
}

/// Writes `item` in the versioned format.
pub fn save<T: Persistent>(item: &T, writer: impl Write) -> Result<()> {
    let envelope = EnvelopeOut { format: FORMAT, version: VERSION, kind: T::KIND, body: item };
    serde_json::to_writer(writer, &envelope)
        .map_err(|e| AnomalyError::CorruptModel(format!("cannot write: {e}")))
}

/// Reads an object of type `T` saved by [`save`], refusing files of another
/// format, version or kind.
pub fn load<T: Persistent>(reader: impl Read) -> Result<T> {
    let envelope: EnvelopeIn = serde_json::from_reader(reader)
        .map_err(|e| AnomalyError::IncompatibleModel(format!("not a {FORMAT} file: {e}")))?;
    if envelope.format != FORMAT {
        return Err(AnomalyError::IncompatibleModel(format!(
            "format is {:?}, expected {FORMAT:?}",
            envelope.format.chars().take(40).collect::<String>()
        )));
    }
    if envelope.version != VERSION {
        return Err(AnomalyError::IncompatibleModel(format!(
            "format version {} is not supported (this build reads version {VERSION})",
            envelope.version
        )));
    }
    if envelope.kind != T::KIND {
        return Err(AnomalyError::IncompatibleModel(format!(
            "the file holds a {:?}, expected a {:?}",
            envelope.kind.chars().take(40).collect::<String>(),
            T::KIND
        )));
    }
    let item: T =
        serde_json::from_value(envelope.body).map_err(|e| AnomalyError::CorruptModel(e.to_string()))?;
    item.validate()?;
    Ok(item)
}
