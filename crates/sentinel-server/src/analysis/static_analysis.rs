//! The static analysis step: the executable's PE headers scored by the static
//! model of the request's model snapshot, and the YARA rules in service run over
//! it on the same worker (`yara_scan`), their matches raising the score.

use std::sync::Arc;

use bytes::Bytes;
use sentinel_protocol::{Analysis, ErrorDetail, Reason};
use sentinel_static::AnalyseError;
use sentinel_yara::YaraRules;

use crate::analysis::yara_scan;
use crate::analysis::{StepDetail, StepScore};
use crate::models::Models;
use crate::workers::AnalysisWorkers;

/// Features kept in a verdict's explanation: the ones that moved the score most.
const EXPLAINED_FEATURES: usize = 10;

/// Scores `executable` on an analysis worker; the detail is the model's explanation and, with
/// `yara`, what its rules found.
pub(crate) async fn run(
    workers: &AnalysisWorkers,
    models: Arc<Models>,
    yara: Option<Arc<YaraRules>>,
    executable: Bytes,
) -> Result<(StepScore, StepDetail), ErrorDetail> {
    let verdict = workers
        .run(move || {
            let verdict = models.static_model.analyse(&executable)?;
            let findings = yara.as_deref().and_then(|rules| yara_scan::scan(rules, &executable));
            Ok::<_, AnalyseError>((verdict, models.static_model.version().to_owned(), findings))
        })
        .await
        .map_err(|error| crate::analysis::worker_failure(error).with_step(Analysis::Static))?;
    match verdict {
        Ok((mut verdict, model_version, yara)) => {
            verdict.contributions.truncate(EXPLAINED_FEATURES);
            // The stored verdict names the rule set that took part, as it names the model.
            let (score, model_version) = match &yara {
                Some(found) => (
                    sentinel_yara::raised_score(verdict.score, &found.matches),
                    format!("{model_version}+{}", found.ruleset),
                ),
                None => (verdict.score, model_version),
            };
            let score = StepScore { analysis: Analysis::Static, score, model_version, support: None };
            Ok((score, StepDetail::Static { contributions: verdict.contributions, yara }))
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
