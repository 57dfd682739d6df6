//! Dynamic (behavioural) analysis: scores the Windows API calls a sandbox
//! recorded for a program.
//!
//! * [`ApiCallSequence`]: a bounded, normalised list of API names.
//! * [`parse_cape_report`] / [`parse_behaviour_report`]: the calls of a CAPE v2
//!   JSON report (all processes, merged in time order) or of a plain JSON list.
//! * [`BehaviourModel`]: TF-IDF over 1–3-grams of calls, L2 logistic regression
//!   with Platt calibration for "malware or not", and a multinomial logistic
//!   regression for the malware family; [`BehaviourModel::score`] gives a
//!   [`BehaviourVerdict`].
//! * [`train`] and the data-set readers behind `sentinel train dynamic`.
//!
//! docs/dynamic-analysis.md describes the data, the choices and the figures.

mod cape;
mod dataset;
mod error;
mod features;
mod linear;
mod model;
mod sequence;
mod training;

pub use cape::{CapeBehaviour, CapeLimits, ReportNote, parse_behaviour_report, parse_cape_report};
pub use dataset::{
    FamilySample, LabelledSequence, MAL_API_FAMILIES, load_labelled_csv, load_mal_api, read_labelled_csv,
    split_grouped, write_labelled_csv,
};
pub use error::{CapeReportError, DatasetError, ModelError, TrainError};
pub use model::{BehaviourModel, BehaviourVerdict, FamilyGuess, NgramContribution, TrainingRecord};
pub use sequence::{ApiCallSequence, MAX_API_NAME_LEN, MAX_CALLS, normalise_api_name};
pub use training::{FamilyReport, TrainingOptions, TrainingReport, train, train_detector_only};
