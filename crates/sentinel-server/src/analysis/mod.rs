//! What the server does with one analysis request: check its fields, record
//! the sample, run the command's analysis steps in order, record the verdicts,
//! then answer — in that order, so nothing acknowledged is lost if the server
//! dies right after answering.
//!
//! Each step lives in its own module and returns a [`StepScore`] or the
//! [`ErrorDetail`] of its failure (naming the step), so new steps plug into
//! [`Analyser::analyse`]'s loop. Dynamic analysis and VirusTotal are not
//! provided by this server yet: their steps answer `unavailable`.

mod static_analysis;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sentinel_protocol::{Analysis, ErrorDetail, Reason, Request, Response};
use sentinel_store::{NewVerdict, Store};

use crate::registry::ModelRegistry;
use crate::workers::{AnalysisWorkers, WorkerError};

/// The result of one analysis step.
#[derive(Debug, Clone)]
pub(crate) struct StepScore {
    pub analysis: Analysis,
    /// Probability of malware, in [0, 1].
    pub score: f64,
    /// The model (or source) version that produced the score, stored with the verdict.
    pub model_version: String,
}

/// Runs analysis requests against the shared models and store.
#[derive(Debug)]
pub(crate) struct Analyser {
    pub registry: Arc<ModelRegistry>,
    pub store: Arc<Store>,
    pub workers: AnalysisWorkers,
    /// Time allowed for everything a request asks for.
    pub timeout: Duration,
}

impl Analyser {
    /// The response to an analysis request from `client`. Failures carry their
    /// detail; the connection decides whether its client sees it.
    pub async fn respond(&self, request: Request, client: IpAddr) -> Response {
        match tokio::time::timeout(self.timeout, self.analyse(request, client)).await {
            Ok(Ok(scores)) => Response::Yes(scores),
            Ok(Err(detail)) => Response::failure(detail),
            Err(_) => Response::failure(
                ErrorDetail::new(Reason::Timeout)
                    .with_message(format!("the analysis took longer than {:?}", self.timeout)),
            ),
        }
    }

    async fn analyse(&self, request: Request, client: IpAddr) -> Result<Vec<f32>, ErrorDetail> {
        let steps = request.command().analyses();
        let executable = request.executable().cloned().unwrap_or_default();
        // Only VirusTotal can work from the hash alone.
        if executable.is_empty() && steps.iter().any(|step| *step != Analysis::VirusTotal) {
            return Err(missing("executable"));
        }
        if steps.contains(&Analysis::VirusTotal) {
            request
                .api_key()
                .map_err(|error| ErrorDetail::new(error.reason()).with_message(error.to_string()))?;
        }
        let sha256 = self.record_sample(request, executable.clone()).await?;

        // Every step uses the models in service when the request started.
        let models = self.registry.current();
        let mut scores = Vec::with_capacity(steps.len());
        for &step in steps {
            let score = match step {
                Analysis::Static => {
                    static_analysis::run(&self.workers, Arc::clone(&models), executable.clone()).await?
                }
                Analysis::Dynamic | Analysis::VirusTotal => {
                    return Err(ErrorDetail::new(Reason::Unavailable)
                        .with_step(step)
                        .with_message(format!("{step} analysis is not available on this server")));
                }
            };
            scores.push(score);
        }
        let verdict = combined_verdict(&scores);
        self.record_verdicts(sha256, scores.clone(), client).await?;
        Ok(std::iter::once(verdict)
            .chain(scores.iter().map(|step| step.score))
            .map(|score| score as f32)
            .collect())
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

    async fn record_verdicts(
        &self,
        sha256: String,
        scores: Vec<StepScore>,
        client: IpAddr,
    ) -> Result<(), ErrorDetail> {
        let store = Arc::clone(&self.store);
        let client = client.to_string();
        let recorded = tokio::task::spawn_blocking(move || {
            for step in &scores {
                let verdict = NewVerdict {
                    sha256: &sha256,
                    analysis: step.analysis.name(),
                    model_version: &step.model_version,
                    score: step.score,
                    client: &client,
                };
                store.record_verdict(&verdict).map_err(store_failure)?;
            }
            Ok(())
        })
        .await;
        recorded.map_err(|_| worker_failure(WorkerError::Panicked))?
    }
}

/// The verdict `y` of a request: the mean of its steps' scores (with one step,
/// that step's score).
fn combined_verdict(scores: &[StepScore]) -> f64 {
    if scores.is_empty() {
        return 0.0;
    }
    scores.iter().map(|step| step.score).sum::<f64>() / scores.len() as f64
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
