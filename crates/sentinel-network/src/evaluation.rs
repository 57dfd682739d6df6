//! Measuring the service's detection on labelled connections from elsewhere (a public intrusion
//! data set): the rows go through the feature code, the fitted scaling, the training and the
//! verdict rule the live service uses, so the figures are those of the shipped pipeline, not of
//! a re-implementation. `sentinel eval network` maps a data set's columns onto connection events
//! and calls [`evaluate`]; `docs/network.md` gives the mapping and the figures.

use sentinel_anomaly::{Detector, Matrix};
use sentinel_netmon::ConnectionEvent;
use serde::Serialize;

use crate::features::{
    CATEGORICAL_FEATURES, FeatureExtractor, RawFeatures, WindowSettings, WindowValues, connection_features,
};
use crate::model::{FitError, FitObserver, ModelBundle, TrainingRow};
use crate::settings::{FeatureSettings, ModelSettings};

/// One labelled connection event of a data set.
#[derive(Debug, Clone)]
pub struct LabelledConnection {
    pub event: ConnectionEvent,
    /// The temporal features as the data set measured them. `None`: they are computed by
    /// replaying the file's events, in order, through the service's sliding windows (which
    /// needs real timestamps and addresses).
    pub windows: Option<WindowValues>,
    /// A transport the collectors do not report (NSL-KDD's `icmp`): the `protocol` category
    /// takes this value instead of the record's.
    pub protocol_label: Option<String>,
    pub anomalous: bool,
}

/// The figures of one model (a member, or `ensemble`) on the test rows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelFigures {
    pub model: String,
    pub roc_auc: f64,
    /// Average precision, scikit-learn's `average_precision_score`.
    pub pr_auc: f64,
    pub detection_at_1pct_fpr: f64,
    /// The shipped threshold, as fitted on the training rows.
    pub threshold: f64,
    /// Share of the normal test rows the live verdict flags (for `ensemble`, the service's rule:
    /// combined score at its threshold and at least one member past its own).
    pub false_positive_rate: f64,
    /// Share of the anomalous test rows the live verdict flags.
    pub detection_rate: f64,
    pub precision: f64,
}

/// What [`evaluate`] measured, and the scaled rows the models saw (so that a peer library can
/// be run on exactly the same input).
#[derive(Debug, Clone)]
pub struct NetworkEvaluation {
    /// Normal rows of the training data the model was fitted on (the fit holds part of them out
    /// to calibrate its thresholds, as the service does).
    pub training_rows: usize,
    pub test_rows: usize,
    pub test_anomalies: usize,
    /// Members in the ensemble's order, then `ensemble`.
    pub models: Vec<ModelFigures>,
    /// Every normal training row, scaled by the fitted preprocessor.
    pub scaled_training: Matrix,
    pub scaled_test: Matrix,
    pub test_labels: Vec<bool>,
}

/// Why an evaluation could not be made.
#[derive(Debug, thiserror::Error)]
pub enum EvaluationError {
    #[error(transparent)]
    Fit(#[from] FitError),
    #[error("model: {0}")]
    Anomaly(#[from] sentinel_anomaly::AnomalyError),
    #[error("the test rows need both normal and anomalous connections: {0}")]
    Metric(#[from] sentinel_metrics::MetricError),
}

struct Unobserved;

impl FitObserver for Unobserved {
    fn stage(&self, _name: &'static str, _progress: f64) -> Result<(), FitError> {
        Ok(())
    }
}

/// Fits the service's model on the normal rows of `training` with `model` settings (the
/// shipped ones unless configured otherwise), scores `test` with the live verdict code and
/// measures each member and the ensemble.
pub fn evaluate(
    training: &[LabelledConnection],
    test: &[LabelledConnection],
    model: &ModelSettings,
    windows: &FeatureSettings,
) -> Result<NetworkEvaluation, EvaluationError> {
    let training_rows: Vec<TrainingRow> =
        feature_rows(training, windows).into_iter().filter(|row| !row.anomalous).collect();
    let test_rows = feature_rows(test, windows);
    let bundle = ModelBundle::fit(&training_rows, model, &Unobserved)?;
    let verdicts = bundle.judge_batch(&test_rows, |row| (&row.features, row.process_name.as_deref()))?;
    let labels: Vec<bool> = test_rows.iter().map(|row| row.anomalous).collect();

    let members = bundle.ensemble.members();
    let mut per_model: Vec<(String, f64, Vec<f64>, Vec<bool>)> = members
        .iter()
        .enumerate()
        .map(|(member, detector)| {
            let scores = verdicts.iter().map(|verdict| verdict.models[member].score).collect();
            let flags = verdicts.iter().map(|verdict| verdict.models[member].is_anomaly).collect();
            (detector.name().to_owned(), detector.threshold(), scores, flags)
        })
        .collect();
    per_model.push((
        "ensemble".to_owned(),
        bundle.ensemble.threshold(),
        verdicts.iter().map(|verdict| verdict.score).collect(),
        verdicts.iter().map(|verdict| verdict.is_anomaly).collect(),
    ));
    let models = per_model
        .into_iter()
        .map(|(model, threshold, scores, flags)| figures(model, threshold, &scores, &flags, &labels))
        .collect::<Result<Vec<_>, EvaluationError>>()?;

    let training_refs: Vec<&TrainingRow> = training_rows.iter().collect();
    let test_refs: Vec<&TrainingRow> = test_rows.iter().collect();
    let (scaled_training, _) = bundle.labelled_matrix(&training_refs)?;
    let (scaled_test, _) = bundle.labelled_matrix(&test_refs)?;
    Ok(NetworkEvaluation {
        training_rows: training_rows.len(),
        test_rows: test_rows.len(),
        test_anomalies: labels.iter().filter(|&&label| label).count(),
        models,
        scaled_training,
        scaled_test,
        test_labels: labels,
    })
}

fn figures(
    model: String,
    threshold: f64,
    scores: &[f64],
    flags: &[bool],
    labels: &[bool],
) -> Result<ModelFigures, EvaluationError> {
    let confusion = sentinel_metrics::Confusion::from_decisions(flags, labels)?;
    Ok(ModelFigures {
        model,
        roc_auc: sentinel_metrics::roc_auc(scores, labels)?,
        pr_auc: sentinel_metrics::average_precision(scores, labels)?,
        detection_at_1pct_fpr: sentinel_metrics::detection_at_fpr(scores, labels, 0.01)?.tpr,
        threshold,
        false_positive_rate: confusion.false_positive_rate(),
        detection_rate: confusion.recall(),
        precision: confusion.precision(),
    })
}

/// The feature vectors of a file's connections, in order: given windows where the data set
/// measured them, the service's sliding windows otherwise.
fn feature_rows(connections: &[LabelledConnection], settings: &FeatureSettings) -> Vec<TrainingRow> {
    let mut extractor = FeatureExtractor::new(WindowSettings {
        window_secs: settings.window.as_secs_f64(),
        max_entries_per_key: settings.max_events_per_key,
        max_keys: settings.max_keys,
    });
    connections
        .iter()
        .map(|connection| {
            let mut features: RawFeatures = match connection.windows {
                Some(windows) => connection_features(&connection.event, windows),
                None => extractor.observe(&connection.event),
            };
            if let Some(label) = &connection.protocol_label {
                let protocol = CATEGORICAL_FEATURES.iter().position(|name| *name == "protocol");
                if let Some(index) = protocol {
                    features.categories[index].clone_from(label);
                }
            }
            TrainingRow {
                features,
                process_name: connection.event.record.process_name.clone(),
                anomalous: connection.anomalous,
            }
        })
        .collect()
}
