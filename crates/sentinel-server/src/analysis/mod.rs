//! What the server does with one analysis request: check its fields, record
//! the sample, run the command's analysis steps in order, record the verdicts,
//! then answer — in that order, so nothing acknowledged is lost if the server
//! dies right after answering.
//!
//! Each step lives in its own module and returns a [`StepScore`] or the
//! [`ErrorDetail`] of its failure (naming the step), so new steps plug into
//! [`Analyser::analyse`]'s loop. Every step of a command is checked to be
//! available before any runs. Several steps' scores are combined by the rule
//! of [`fusion`].

mod dynamic;
mod fusion;
mod static_analysis;
mod virustotal;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sentinel_protocol::{Analysis, ErrorDetail, Reason, Request, Response};
use sentinel_sandbox::CapeClient;
use sentinel_store::{NewVerdict, Store};

use crate::models::ModelsInService;
use crate::workers::{AnalysisWorkers, WorkerError};

pub use fusion::FusionSettings;
pub use virustotal::{VT_KEY_SECRET_FILE, VirusTotalReport, VirusTotalStep, label_from_report};

/// The result of one analysis step.
#[derive(Debug, Clone)]
pub(crate) struct StepScore {
    pub analysis: Analysis,
    /// Probability of malware, in [0, 1].
    pub score: f64,
    /// The model (or source) version that produced the score, stored with the verdict.
    pub model_version: String,
    /// How many independent opinions the score rests on (VirusTotal: engines
    /// with a verdict); `None` for one model. The fusion rule weighs by it.
    pub support: Option<u32>,
}

/// Runs analysis requests against the shared models and store.
#[derive(Debug)]
pub(crate) struct Analyser {
    pub models: Arc<ModelsInService>,
    pub store: Arc<Store>,
    pub workers: AnalysisWorkers,
    /// Time allowed for everything a request asks for.
    pub timeout: Duration,
    /// The CAPE sandbox of the dynamic step; `None` when `[sandbox]` has no `base_url`.
    pub sandbox: Option<CapeClient>,
    /// The VirusTotal step; `None` when `[virustotal] enabled = false`.
    pub virustotal: Option<VirusTotalStep>,
    /// Step weights of the combined verdict.
    pub fusion: FusionSettings,
}

impl Analyser {
    /// The response to an analysis request from `client`. Failures carry their
    /// detail; the connection decides whether its client sees it.
    pub async fn respond(&self, request: Request, client: IpAddr) -> Response {
        // A sandbox run and a VirusTotal upload have their own, longer
        // timeouts: the request gets them on top.
        let timeout = self
            .timeout
            .saturating_add(dynamic::extra_time(self.sandbox.as_ref(), &request))
            .saturating_add(virustotal::extra_time(self.virustotal.as_ref(), &request));
        match tokio::time::timeout(timeout, self.analyse(request, client)).await {
            Ok(Ok(scores)) => Response::Yes(scores),
            Ok(Err(detail)) => Response::failure(detail),
            Err(_) => Response::failure(
                ErrorDetail::new(Reason::Timeout)
                    .with_message(format!("the analysis took longer than {timeout:?}")),
            ),
        }
    }

    async fn analyse(&self, request: Request, client: IpAddr) -> Result<Vec<f32>, ErrorDetail> {
        let steps = request.command().analyses();
        // A malformed key is the client's error whatever the server offers.
        // Taken now: the request moves on to the sample recording.
        let mut api_key = match steps.contains(&Analysis::VirusTotal) {
            true => virustotal::api_key(&request)?,
            false => None,
        };
        // A combined command must not spend a static analysis on a request a
        // later step cannot serve: say which step is missing before any runs.
        if let Some(&step) = steps.iter().find(|&&step| !self.available(step, &request)) {
            if step == Analysis::Dynamic {
                return Err(dynamic::unavailable());
            }
            return Err(ErrorDetail::new(Reason::Unavailable)
                .with_step(step)
                .with_message(format!("{step} analysis is not available on this server")));
        }
        let executable = request.executable().cloned().unwrap_or_default();
        // Only VirusTotal can work from the hash alone.
        if executable.is_empty() && steps.iter().any(|step| *step != Analysis::VirusTotal) {
            return Err(missing("executable"));
        }
        let mut behaviour_report = dynamic::sent_report(&request).cloned();
        let sha256 = self.record_sample(request, executable.clone()).await?;

        // Every step uses the models in service when the request started.
        let models = self.models.current();
        let mut scores = Vec::with_capacity(steps.len());
        for &step in steps {
            let score = match step {
                Analysis::Static => {
                    static_analysis::run(&self.workers, Arc::clone(&models), executable.clone()).await?
                }
                Analysis::Dynamic => {
                    let report = behaviour_report.take();
                    let sandbox = self.sandbox.as_ref();
                    dynamic::run(&self.workers, Arc::clone(&models), sandbox, report, &executable, &sha256)
                        .await?
                }
                Analysis::VirusTotal => match &self.virustotal {
                    Some(virustotal) => {
                        virustotal::run(virustotal, &sha256, api_key.take(), executable.clone()).await?
                    }
                    None => return Err(ErrorDetail::new(Reason::Unavailable).with_step(step)),
                },
            };
            scores.push(score);
        }
        let verdict = fusion::combine(&self.fusion, &scores);
        let answer = std::iter::once(verdict)
            .chain(scores.iter().map(|step| step.score))
            .map(|score| score as f32)
            .collect();
        // With one step the verdict is that step's score: nothing more to keep.
        let combined = (scores.len() > 1).then_some(verdict);
        self.record_verdicts(sha256, scores, combined, client).await?;
        Ok(answer)
    }

    /// Whether this server can run `step` for `request`: its service is
    /// configured (or, for dynamic analysis, the request brings its report).
    fn available(&self, step: Analysis, request: &Request) -> bool {
        match step {
            Analysis::Static => true,
            Analysis::Dynamic => dynamic::available(self.sandbox.as_ref(), request),
            Analysis::VirusTotal => self.virustotal.is_some(),
        }
    }

    /// Checks the executable against its SHA-256 and stores it; returns the hash.
    async fn record_sample(&self, request: Request, executable: Bytes) -> Result<String, ErrorDetail> {
        let store = Arc::clone(&self.store);
        let recorded = self
            .workers
            .run(move || {
                let sha256 = request
                    .verified_sha256()
                    .map_err(|error| ErrorDetail::new(error.reason()).with_message(error.to_string()))?
                    .ok_or_else(|| missing("executable or sha256"))?
                    .to_hex();
                if !executable.is_empty() {
                    store.record_sample(&sha256, &executable).map_err(store_failure)?;
                }
                Ok(sha256)
            })
            .await;
        recorded.map_err(worker_failure)?
    }

    /// Records each step's score and, for several steps, the combined verdict,
    /// all together or not at all.
    async fn record_verdicts(
        &self,
        sha256: String,
        scores: Vec<StepScore>,
        combined: Option<f64>,
        client: IpAddr,
    ) -> Result<(), ErrorDetail> {
        let store = Arc::clone(&self.store);
        let client = client.to_string();
        let recorded = tokio::task::spawn_blocking(move || {
            let steps =
                scores.iter().map(|step| (step.analysis.name(), step.model_version.as_str(), step.score));
            let combined = combined.map(|score| ("combined", fusion::RULE_VERSION, score));
            let verdicts: Vec<NewVerdict<'_>> = steps
                .chain(combined)
                .map(|(analysis, model_version, score)| NewVerdict {
                    sha256: &sha256,
                    analysis,
                    model_version,
                    score,
                    client: &client,
                })
                .collect();
            // One transaction, so one fsync, for all of a request's verdicts.
            store.record_analysis(None, &verdicts).map(drop).map_err(store_failure)
        })
        .await;
        recorded.map_err(|_| worker_failure(WorkerError::Panicked))?
    }
}

fn missing(field: &str) -> ErrorDetail {
    ErrorDetail::new(Reason::MissingField).with_message(format!("the {field} field is missing or empty"))
}

fn store_failure(error: sentinel_store::StoreError) -> ErrorDetail {
    tracing::error!(%error, "cannot record to the store");
    ErrorDetail::new(Reason::Internal).with_message("the sample or verdict could not be stored")
}

pub(crate) fn worker_failure(error: WorkerError) -> ErrorDetail {
    match error {
        WorkerError::Busy(_) => ErrorDetail::new(Reason::Busy).with_message(error.to_string()),
        WorkerError::Panicked => {
            tracing::error!("an analysis job panicked");
            ErrorDetail::new(Reason::Internal).with_message(error.to_string())
        }
    }
}
