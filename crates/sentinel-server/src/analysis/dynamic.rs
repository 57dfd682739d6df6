//! The dynamic analysis step: the program's Windows API calls, scored by the
//! behaviour model of the request's model snapshot.
//!
//! The calls come from one of two places. A report the client already has,
//! sent as request field `[3]` (a CAPE v2 JSON report or a JSON list of API
//! names), is used as it is: no sandbox run. Otherwise the executable goes to
//! the configured CAPE sandbox (submit, poll, fetch the report), which takes
//! minutes, so the request's time budget grows by the sandbox's analysis
//! timeout. With neither, the step is unavailable, which the analyser checks
//! before any step of the request runs.
//!
//! Reading a report and scoring it are CPU work and run on an analysis worker;
//! waiting for the sandbox holds no worker. Every failure becomes a protocol
//! reason (table in docs/protocol.md); messages quote CAPE's answers in short
//! excerpts and never the CAPE token.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sentinel_behaviour::{CapeBehaviour, CapeLimits, CapeReportError, MAX_CALLS, parse_behaviour_report};
use sentinel_protocol::{Analysis, ErrorDetail, Reason, Request};
use sentinel_sandbox::{CapeClient, SandboxError};

use crate::analysis::{StepDetail, StepScore, Submission};
use crate::models::Models;
use crate::workers::AnalysisWorkers;

/// Index of the request field that carries a client's behaviour report.
const REPORT_FIELD: usize = 3;

/// Why the step is unavailable, for the error detail.
const UNAVAILABLE: &str =
    "no sandbox is configured on this server and the request carries no behaviour report (field [3])";

/// The behaviour report the client sent in field `[3]`, if any (an empty field counts as absent).
pub(crate) fn sent_report(request: &Request) -> Option<&Bytes> {
    request.fields().get(REPORT_FIELD).filter(|field| !field.is_empty())
}

/// Time the request needs on top of the server's analysis timeout: the
/// sandbox's own timeout when this request will run the sandbox.
pub(crate) fn extra_time(sandbox: Option<&CapeClient>, submission: &Submission) -> Duration {
    match sandbox {
        Some(sandbox)
            if submission.steps.contains(&Analysis::Dynamic) && submission.behaviour_report.is_none() =>
        {
            sandbox.settings().analysis_timeout
        }
        _ => Duration::ZERO,
    }
}

/// Where the calls come from.
enum Source {
    /// Field `[3]`, still to be parsed.
    Sent(Bytes),
    /// The sandbox's report, already parsed by the CAPE client.
    Sandbox { task_id: u64, behaviour: CapeBehaviour },
}

/// Runs the step: reads the sent report or runs the sandbox, then scores the calls (with the
/// family and the n-grams that drove the score, for the HTTP API).
pub(crate) async fn run(
    workers: &AnalysisWorkers,
    models: Arc<Models>,
    sandbox: Option<&CapeClient>,
    report: Option<Bytes>,
    executable: &Bytes,
    sha256: &str,
) -> Result<(StepScore, StepDetail), ErrorDetail> {
    let source = match (report, sandbox) {
        (Some(report), _) => Source::Sent(report),
        (None, Some(sandbox)) => {
            // CAPE picks how to run a sample from its extension.
            let analysis =
                sandbox.analyse(executable, &format!("{sha256}.exe")).await.map_err(sandbox_failure)?;
            Source::Sandbox { task_id: analysis.task_id, behaviour: analysis.behaviour }
        }
        (None, None) => return Err(unavailable()),
    };
    let scored = workers
        .run(move || {
            let (behaviour, task_id) = match source {
                Source::Sent(bytes) => (read_sent_report(&bytes)?, None),
                Source::Sandbox { task_id, behaviour } => (behaviour, Some(task_id)),
            };
            if behaviour.sequence.is_empty() {
                let notes: Vec<String> = behaviour.notes.iter().map(ToString::to_string).collect();
                let (reason, origin) = match task_id {
                    None => (Reason::Malformed, "the report sent".to_owned()),
                    Some(task) => (Reason::AnalysisFailed, format!("CAPE task {task}")),
                };
                return Err(ErrorDetail::new(reason)
                    .with_message(format!("{origin} holds no API call to score ({})", notes.join("; "))));
            }
            let verdict = models.behaviour_model.score(&behaviour.sequence);
            tracing::debug!(
                task_id,
                calls = behaviour.sequence.len(),
                notes = behaviour.notes.len(),
                score = verdict.score,
                "behaviour scored"
            );
            Ok((verdict, models.behaviour_model.version().to_owned()))
        })
        .await
        .map_err(|error| crate::analysis::worker_failure(error).with_step(Analysis::Dynamic))?;
    let (verdict, model_version) = scored.map_err(|detail| detail.with_step(Analysis::Dynamic))?;
    let score = StepScore { analysis: Analysis::Dynamic, score: verdict.score, model_version, support: None };
    Ok((score, StepDetail::Dynamic(Box::new(verdict))))
}

/// The `unavailable` detail of this step.
pub(crate) fn unavailable() -> ErrorDetail {
    ErrorDetail::new(Reason::Unavailable).with_step(Analysis::Dynamic).with_message(UNAVAILABLE)
}

/// Parses field `[3]`. Its size is already bounded by the frame limits
/// (`max_field_size`, below the parser's own limit); the parser keeps two short
/// strings per call and at most `MAX_CALLS` calls, whatever the report holds.
fn read_sent_report(bytes: &[u8]) -> Result<CapeBehaviour, ErrorDetail> {
    let limits = CapeLimits { max_calls: MAX_CALLS, ..CapeLimits::default() };
    parse_behaviour_report(bytes, &limits).map_err(|error| {
        let reason = match error {
            CapeReportError::TooLarge { .. } => Reason::TooLarge,
            _ => Reason::Malformed,
        };
        ErrorDetail::new(reason).with_message(format!("the behaviour report in field [3]: {error}"))
    })
}

/// The protocol reason of a sandbox failure. The sample's size and the
/// sandbox's time limit are the request's doing; a sandbox that cannot be
/// reached or used means the dynamic analysis is not to be had from this
/// server (`unavailable`, worth retrying later); a sandbox that ran the sample
/// but gave nothing to score says something about this sample
/// (`analysis_failed`: it may crash the sandbox, or evade it).
fn sandbox_failure(error: SandboxError) -> ErrorDetail {
    let reason = match error {
        SandboxError::TooLarge { .. } => Reason::TooLarge,
        SandboxError::Timeout { .. } => Reason::Timeout,
        SandboxError::Settings(_) => Reason::Internal,
        SandboxError::Unreachable(_)
        | SandboxError::Auth { .. }
        | SandboxError::Rejected(_)
        | SandboxError::Unavailable { .. } => Reason::Unavailable,
        SandboxError::AnalysisFailed { .. } | SandboxError::BadReport { .. } => Reason::AnalysisFailed,
    };
    tracing::warn!(reason = error.reason().as_str(), %error, "sandbox analysis failed");
    ErrorDetail::new(reason).with_step(Analysis::Dynamic).with_message(format!("sandbox: {error}"))
}
