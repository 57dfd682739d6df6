//! Analysts' feedback: verdicts on stored predictions (a true anomaly, or normal — a false
//! positive when the service had flagged it), what they measure and what the ensemble learns
//! from them.
//!
//! A label is committed durably before the request is answered. Then, and every
//! [`REFRESH_EVERY`] since the window slides, the labelled items of the window
//! (`feedback.window`) are measured: each member's and the ensemble's stored verdict and score
//! on each item against the analyst's, per model (accuracy, precision, recall, F1, ROC AUC,
//! false-positive rate), written to `model_metrics` (source `feedback`) once the window holds
//! `feedback.min_labels` labelled items. The figures describe the stored verdicts, whichever
//! model version gave them, on the items analysts chose to label.
//!
//! With `feedback.learn`, once the window holds `feedback.min_labels_to_learn` labelled items
//! of each class, the active model's ensemble learns from them (`Ensemble::learn_from_feedback`:
//! member weights from their ROC AUC on the labels, the logistic combiner with `Stacking`). It
//! always starts again from the ensemble as trained, so that the same labels give the same
//! ensemble however often it runs; the result is swapped in like a new model, and is not saved:
//! a restart, a training or a rollback learns it again from the stored labels.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use sentinel_anomaly::Ensemble;
use sentinel_store::{ItemLabel, LabelledPrediction, MetricsSource, ModelMetricsRow};
use serde::Serialize;

use super::{ActiveModel, NetworkService, StorageError, lock};
use crate::features::RawFeatures;
use crate::model::{ModelBundle, TrainingRow};

/// How often the window's figures are measured again without new feedback.
pub(super) const REFRESH_EVERY: Duration = Duration::from_secs(3600);

/// Why feedback was refused.
#[derive(Debug, thiserror::Error)]
pub enum FeedbackError {
    #[error("no stored prediction has the id {}", list(.0))]
    UnknownIds(Vec<i64>),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// At most ten ids, then how many more.
fn list(ids: &[i64]) -> String {
    let shown: Vec<String> = ids.iter().take(10).map(i64::to_string).collect();
    match ids.len() {
        0..=10 => shown.join(", "),
        more => format!("{} (and {} more)", shown.join(", "), more - 10),
    }
}

/// The ensemble as trained, kept while the active model's ensemble is one that learned from
/// feedback, and what it learned from.
pub(crate) struct Adaptation {
    pub trained: Ensemble,
    pub labels: usize,
    pub anomalies: usize,
}

/// One model's figures on the labelled items of the window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FeedbackMetrics {
    pub model: String,
    /// Labelled items this model had given a verdict on, and of those labelled anomalous.
    pub samples: u64,
    pub anomalies: u64,
    pub accuracy: f64,
    /// Precision, recall, F1 and ROC AUC need both classes among the labels.
    pub precision: Option<f64>,
    pub recall: Option<f64>,
    pub f1: Option<f64>,
    pub auc_roc: Option<f64>,
    /// Needs labelled normal items.
    pub false_positive_rate: Option<f64>,
}

/// Whether the active model's ensemble learned from the labels.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Learning {
    pub enabled: bool,
    /// Labelled items of each class needed (`feedback.min_labels_to_learn`).
    pub required_per_class: usize,
    /// Labelled items of the window that the ensemble could learn from (with features), and
    /// of those labelled anomalous.
    pub labels: usize,
    pub anomalies: usize,
    /// Whether the active model's ensemble learned from them.
    pub applied: bool,
    /// The members' weights in the active ensemble, by model.
    pub weights: BTreeMap<String, f64>,
}

/// What the feedback of the window says, as the status and `/metrics` show it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FeedbackSummary {
    /// When it was measured (RFC 3339), `None` before the first measurement.
    pub measured_at: Option<String>,
    pub window_secs: u64,
    /// Labelled items of the window with stored verdicts, and of those labelled anomalous.
    pub labelled: usize,
    pub anomalies: usize,
    /// Labelled items needed for figures (`feedback.min_labels`).
    pub required: usize,
    /// Per model, then `ensemble`; empty below `required`.
    pub metrics: Vec<FeedbackMetrics>,
    pub learning: Learning,
}

impl NetworkService {
    /// Records analysts' verdicts on stored items (durably, all or none), then measures the
    /// window again. Blocking: call from the blocking pool.
    pub(crate) fn record_feedback(
        &self,
        labels: Vec<ItemLabel>,
        analyst: &str,
    ) -> Result<FeedbackSummary, FeedbackError> {
        let now = SystemTime::now();
        let mut unknown = self.store.label_items(labels.clone(), analyst, now).map_err(StorageError::from)?;
        // An id handed out moments ago may still be in the results writer's queue: write the
        // queue out and try once more before calling it unknown.
        if unknown.iter().any(|&id| self.store.item_id_issued(id)) {
            self.store.flush();
            unknown = self.store.label_items(labels, analyst, now).map_err(StorageError::from)?;
        }
        if !unknown.is_empty() {
            return Err(FeedbackError::UnknownIds(unknown));
        }
        Ok(self.refresh_feedback()?)
    }

    /// The figures of the window as last measured.
    pub(crate) fn feedback_summary(&self) -> FeedbackSummary {
        lock(&self.feedback).clone()
    }

    /// Measures the labelled items of the window, writes the figures to `model_metrics` when
    /// there are enough, and lets the active ensemble learn from them (or forget, when the
    /// window no longer holds enough). Blocking.
    pub(crate) fn refresh_feedback(&self) -> Result<FeedbackSummary, StorageError> {
        // One measurement at a time, so that an older one never replaces a newer.
        let _measuring = lock(&self.feedback_refresh);
        let settings = &self.settings.feedback;
        let now = SystemTime::now();
        let since = now.checked_sub(settings.window).unwrap_or(SystemTime::UNIX_EPOCH);
        let predictions = self.store.labelled_predictions(since)?;
        let (labelled, anomalies) = labelled_items(&predictions);
        let metrics = if labelled >= settings.min_labels { measure(&predictions) } else { Vec::new() };
        if !metrics.is_empty() {
            self.store.record_metrics(
                metrics
                    .iter()
                    .map(|figures| ModelMetricsRow {
                        model_name: figures.model.clone(),
                        measured_at: now,
                        source: MetricsSource::Feedback,
                        samples: figures.samples,
                        anomalies: figures.anomalies,
                        accuracy: figures.accuracy,
                        precision: figures.precision,
                        recall: figures.recall,
                        f1: figures.f1,
                        auc_roc: figures.auc_roc,
                        false_positive_rate: figures.false_positive_rate,
                    })
                    .collect(),
            )?;
        }
        let learning = self.learn_from_labels(since)?;
        let summary = FeedbackSummary {
            measured_at: Some(humantime::format_rfc3339_millis(now).to_string()),
            window_secs: settings.window.as_secs(),
            labelled,
            anomalies,
            required: settings.min_labels,
            metrics,
            learning,
        };
        *lock(&self.feedback) = summary.clone();
        Ok(summary)
    }

    /// Lets the active ensemble learn from the labelled items since `since`, starting from the
    /// ensemble as trained, when there are enough of each class; puts the ensemble as trained
    /// back when there are not (any more).
    fn learn_from_labels(&self, since: SystemTime) -> Result<Learning, StorageError> {
        let settings = &self.settings.feedback;
        let mut learning = Learning {
            enabled: settings.learn,
            required_per_class: settings.min_labels_to_learn,
            ..Learning::default()
        };
        let Some(current) = self.model.load_full() else { return Ok(learning) };
        let rows: Vec<TrainingRow> = if settings.learn {
            self.store
                .labelled_rows(since)?
                .into_iter()
                .filter_map(|row| {
                    let features = RawFeatures::from_json(&row.features).ok()?;
                    Some(TrainingRow { features, process_name: row.process_name, anomalous: row.anomalous })
                })
                .collect()
        } else {
            Vec::new()
        };
        learning.labels = rows.len();
        learning.anomalies = rows.iter().filter(|row| row.anomalous).count();
        let enough = learning.anomalies >= settings.min_labels_to_learn
            && learning.labels - learning.anomalies >= settings.min_labels_to_learn;
        let trained = current.adapted.as_ref().map_or(&current.bundle.ensemble, |adapted| &adapted.trained);
        let replacement = if enough {
            let mut bundle = ModelBundle {
                preprocessor: current.bundle.preprocessor.clone(),
                ensemble: trained.clone(),
                facts: current.bundle.facts.clone(),
            };
            let borrowed: Vec<&TrainingRow> = rows.iter().collect();
            let learned = bundle.labelled_matrix(&borrowed).map_err(|error| error.to_string()).and_then(
                |(matrix, labels)| {
                    bundle.ensemble.learn_from_feedback(&matrix, &labels).map_err(|error| error.to_string())
                },
            );
            match learned {
                Ok(()) => Some(ActiveModel {
                    info: current.info.clone(),
                    bundle,
                    adapted: Some(Adaptation {
                        trained: trained.clone(),
                        labels: learning.labels,
                        anomalies: learning.anomalies,
                    }),
                }),
                Err(error) => {
                    tracing::warn!(%error, "the network ensemble could not learn from feedback");
                    None
                }
            }
        } else if current.adapted.is_some() {
            Some(ActiveModel {
                info: current.info.clone(),
                bundle: ModelBundle {
                    preprocessor: current.bundle.preprocessor.clone(),
                    ensemble: trained.clone(),
                    facts: current.bundle.facts.clone(),
                },
                adapted: None,
            })
        } else {
            None
        };
        let active = match replacement {
            Some(replacement) => {
                let replacement = Arc::new(replacement);
                // Only over the model it was derived from: a training or a rollback in the
                // meantime wins, and measures again itself.
                let previous =
                    self.model.compare_and_swap(&Some(Arc::clone(&current)), Some(Arc::clone(&replacement)));
                if previous.as_ref().is_some_and(|previous| Arc::ptr_eq(previous, &current)) {
                    replacement
                } else {
                    current
                }
            }
            None => current,
        };
        learning.applied = active.adapted.is_some();
        learning.weights = active
            .bundle
            .ensemble
            .members()
            .iter()
            .zip(active.bundle.ensemble.weights())
            .map(|(member, &weight)| (member.name().to_owned(), weight))
            .collect();
        Ok(learning)
    }
}

/// Labelled items with stored verdicts, and of those labelled anomalous.
fn labelled_items(predictions: &[LabelledPrediction]) -> (usize, usize) {
    let mut items = BTreeSet::new();
    let mut anomalies = 0;
    for prediction in predictions {
        if items.insert(prediction.item) && prediction.anomalous {
            anomalies += 1;
        }
    }
    (items.len(), anomalies)
}

/// One model's scores and decisions on labelled items, and the analysts' verdicts.
type Verdicts = (Vec<f64>, Vec<bool>, Vec<bool>);

/// Each model's figures on its stored verdicts, the members by name then `ensemble`.
fn measure(predictions: &[LabelledPrediction]) -> Vec<FeedbackMetrics> {
    let mut by_model: BTreeMap<&str, Verdicts> = BTreeMap::new();
    for prediction in predictions {
        let (scores, flags, labels) = by_model.entry(prediction.model.as_str()).or_default();
        scores.push(prediction.score);
        flags.push(prediction.is_anomaly);
        labels.push(prediction.anomalous);
    }
    let mut figures: Vec<FeedbackMetrics> = by_model
        .into_iter()
        .filter_map(|(model, (scores, flags, labels))| {
            let confusion = sentinel_metrics::Confusion::from_decisions(&flags, &labels).ok()?;
            let anomalies = labels.iter().filter(|&&label| label).count();
            let both = anomalies > 0 && anomalies < labels.len();
            let normal = anomalies < labels.len();
            Some(FeedbackMetrics {
                model: model.to_owned(),
                samples: labels.len() as u64,
                anomalies: anomalies as u64,
                accuracy: confusion.accuracy(),
                precision: both.then(|| confusion.precision()),
                recall: both.then(|| confusion.recall()),
                f1: both.then(|| confusion.f1()),
                auc_roc: if both { sentinel_metrics::roc_auc(&scores, &labels).ok() } else { None },
                false_positive_rate: normal.then(|| confusion.false_positive_rate()),
            })
        })
        .collect();
    // The ensemble last, after its members, as in the training's evaluation.
    figures.sort_by_key(|figures| figures.model == "ensemble");
    figures
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prediction(
        item: i64,
        model: &str,
        score: f64,
        is_anomaly: bool,
        anomalous: bool,
    ) -> LabelledPrediction {
        LabelledPrediction { item, model: model.to_owned(), score, is_anomaly, anomalous }
    }

    #[test]
    fn each_model_is_measured_on_its_own_verdicts_against_the_analysts() {
        // Items 1 and 2 are true anomalies, 3 and 4 normal. The ensemble flagged 1 and 3 (one
        // false positive, one miss); the forest ranks perfectly but flagged only item 1.
        let mut predictions = Vec::new();
        for (item, anomalous, ensemble, forest) in [
            (1, true, (0.9, true), 0.8),
            (2, true, (0.4, false), 0.7),
            (3, false, (0.95, true), 0.2),
            (4, false, (0.1, false), 0.1),
        ] {
            predictions.push(prediction(item, "isolation_forest", forest, forest >= 0.75, anomalous));
            predictions.push(prediction(item, "ensemble", ensemble.0, ensemble.1, anomalous));
        }
        assert_eq!(labelled_items(&predictions), (4, 2));
        let figures = measure(&predictions);
        let names: Vec<&str> = figures.iter().map(|figures| figures.model.as_str()).collect();
        assert_eq!(names, ["isolation_forest", "ensemble"]);
        let ensemble = &figures[1];
        assert_eq!((ensemble.samples, ensemble.anomalies), (4, 2));
        assert_eq!(ensemble.accuracy, 0.5);
        assert_eq!(ensemble.precision, Some(0.5));
        assert_eq!(ensemble.recall, Some(0.5));
        assert_eq!(ensemble.false_positive_rate, Some(0.5));
        // Scores 0.9, 0.4 (anomalies) against 0.95, 0.1: two of four pairs ordered right.
        assert_eq!(ensemble.auc_roc, Some(0.5));
        let forest = &figures[0];
        assert_eq!(forest.auc_roc, Some(1.0));
        assert_eq!(
            (forest.precision, forest.recall, forest.false_positive_rate),
            (Some(1.0), Some(0.5), Some(0.0))
        );
    }

    #[test]
    fn figures_a_single_class_cannot_give_are_absent() {
        let predictions =
            vec![prediction(1, "ensemble", 0.9, true, true), prediction(2, "ensemble", 0.2, false, true)];
        let figures = measure(&predictions);
        assert_eq!(figures[0].accuracy, 0.5);
        assert_eq!(
            (figures[0].precision, figures[0].auc_roc, figures[0].false_positive_rate),
            (None, None, None)
        );
        assert_eq!(list(&(1..=12).collect::<Vec<_>>()), "1, 2, 3, 4, 5, 6, 7, 8, 9, 10 (and 2 more)");
    }
}
