//! Measuring a fitted model on held-out rows: each member and the ensemble, by the rule its
//! live verdicts follow; precision, recall, F1 and ROC AUC only when the rows hold labelled
//! anomalies.

use sentinel_anomaly::{Detector, Matrix, Value};

use super::{Evaluation, FitError, ModelBundle, TrainingRow, confirmed};

impl ModelBundle {
    pub(crate) fn labelled_matrix(&self, rows: &[&TrainingRow]) -> Result<(Matrix, Vec<bool>), FitError> {
        let inputs: Vec<Vec<Value<'_>>> =
            rows.iter().map(|row| self.facts.input_row(&row.features, row.process_name.as_deref())).collect();
        let matrix = self.preprocessor.transform(&inputs)?;
        Ok((matrix, rows.iter().map(|row| row.anomalous).collect()))
    }

    /// Measures each member and the ensemble on held-out rows.
    pub(super) fn evaluate(&self, rows: &[&TrainingRow]) -> Result<Vec<Evaluation>, FitError> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let (matrix, labels) = self.labelled_matrix(rows)?;
        let mut evaluations = Vec::new();
        let members = self.ensemble.members();
        // `score >= threshold` is anomalous: the engine's convention (`Detector::threshold`).
        let mut decided: Vec<(&str, Vec<f64>, f64, Vec<bool>)> = members
            .iter()
            .map(|member| {
                let (scores, threshold) = (member.score(&matrix)?, member.threshold());
                let flags = scores.iter().map(|&score| score >= threshold).collect();
                Ok((member.name(), scores, threshold, flags))
            })
            .collect::<Result<_, FitError>>()?;
        // The ensemble is measured by the rule its live verdicts follow.
        let (scores, threshold) = (self.ensemble.score(&matrix)?, self.ensemble.threshold());
        let flags = scores
            .iter()
            .enumerate()
            .map(|(row, &score)| confirmed(score, threshold, decided.iter().map(|member| member.3[row])))
            .collect();
        decided.push(("ensemble", scores, threshold, flags));
        let anomalies = labels.iter().filter(|&&label| label).count();
        for (name, scores, threshold, predicted) in decided {
            let confusion = sentinel_metrics::Confusion::from_decisions(&predicted, &labels)
                .map_err(sentinel_anomaly::AnomalyError::from)?;
            let with_anomalies = anomalies > 0 && anomalies < labels.len();
            evaluations.push(Evaluation {
                model_name: name.to_owned(),
                validation_rows: labels.len(),
                labelled_anomalies: anomalies,
                accuracy: confusion.accuracy(),
                precision: with_anomalies.then(|| confusion.precision()),
                recall: with_anomalies.then(|| confusion.recall()),
                f1: with_anomalies.then(|| confusion.f1()),
                auc_roc: if with_anomalies { sentinel_metrics::roc_auc(&scores, &labels).ok() } else { None },
                false_positive_rate: confusion.false_positive_rate(),
                threshold,
            });
        }
        Ok(evaluations)
    }
}
