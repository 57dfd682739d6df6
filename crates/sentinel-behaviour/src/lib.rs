//! Dynamic (behavioural) analysis: scores the Windows API calls a sandbox
//! recorded for a program.
//!
//! * [`ApiCallSequence`]: a bounded, normalised list of API names.
//! * [`parse_cape_report`] / [`parse_behaviour_report`]: the calls of a CAPE v2
//!   JSON report (all processes, merged in time order) or of a plain JSON list.
//! * [`BehaviourModel`]: for "malware or not", an L2 logistic regression over
//!   TF-IDF n-grams of calls stacked with boosted trees over a behaviour
//!   profile (call order, bigrams, call categories, statistics), calibrated;
//!   for the malware family, multinomial logistic regressions over the whole
//!   sequence and over its start blended with boosted trees;
//!   [`BehaviourModel::score`] gives a [`BehaviourVerdict`].
//! * [`ClassificationReport`]: accuracy, macro F1 and confusion of family
//!   predictions.
//! * [`train`] and the data-set readers behind `sentinel train dynamic`.
//!
//! docs/dynamic-analysis.md describes the data, the choices and the figures.

mod cape;
mod dataset;
mod error;
mod evaluation;
mod features;
mod linear;
mod model;
mod profile;
mod sequence;
mod training;

pub use cape::{CapeBehaviour, CapeLimits, ReportNote, parse_behaviour_report, parse_cape_report};
pub use dataset::{
    FamilyLabel, FamilySample, LabelledSequence, label_sequences, load_labelled_csv, load_mal_api,
    load_mal_api_calls, read_family_labels, read_labelled_csv, split_grouped, write_labelled_csv,
};
pub use error::{CapeReportError, DatasetError, ModelError, TrainError};
pub use evaluation::{ClassFigures, ClassificationReport};
pub use model::{
    BehaviourModel, BehaviourVerdict, FamilyClassifier, FamilyGuess, NgramContribution, TrainingRecord,
};
pub use sequence::{ApiCallSequence, MAX_API_NAME_LEN, MAX_CALLS, normalise_api_name};
pub use training::{
    FamilyReport, TrainingOptions, TrainingReport, train, train_detector_only, train_family_classifier,
};
