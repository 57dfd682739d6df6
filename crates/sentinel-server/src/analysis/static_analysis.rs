//! The static analysis step: the executable's PE headers scored by the static
//! model of the request's model snapshot.

use std::sync::Arc;

use bytes::Bytes;
use sentinel_protocol::{Analysis, ErrorDetail, Reason};
use sentinel_static::AnalyseError;

use crate::analysis::StepScore;
use crate::models::Models;
use crate::workers::AnalysisWorkers;

/// Scores `executable` on an analysis worker.
pub(crate) async fn run(
    workers: &AnalysisWorkers,
    models: Arc<Models>,
    executable: Bytes,
) -> Result<StepScore, ErrorDetail> {
    let verdict = workers
        .run(move || {
            let verdict = models.static_model.analyse(&executable);
            verdict.map(|verdict| (verdict.score, models.static_model.version().to_owned()))
        })
        .await
        .map_err(|error| crate::analysis::worker_failure(error).with_step(Analysis::Static))?;
    match verdict {
        Ok((score, model_version)) => {
            Ok(StepScore { analysis: Analysis::Static, score, model_version, support: None })
        }
        Err(error) => {
            let reason = match error {
                AnalyseError::NotPe(_) | AnalyseError::Malformed(_) => Reason::NotPe,
                _ => Reason::Internal,
            };
            Err(ErrorDetail::new(reason).with_step(Analysis::Static).with_message(error.to_string()))
        }
    }
}
