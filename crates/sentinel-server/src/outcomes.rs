//! What became of each analysis request — its verdict, or the failure that stopped it — on a
//! broadcast stream, for whoever watches the server without being in a request's path (the
//! alert rules of `sentinel serve`). Sending never waits: with nobody subscribed, or a
//! subscriber behind, outcomes are dropped, never the requests.

use sentinel_protocol::{ErrorDetail, Reason};
use tokio::sync::broadcast;

/// Outcomes kept for a subscriber that is behind before it misses some.
const STREAM_BUFFER: usize = 1024;

/// One analysis request's outcome.
#[derive(Debug, Clone, PartialEq)]
pub enum AnalysisOutcome {
    /// A verdict was given.
    Verdict {
        /// Lowercase hex.
        sha256: String,
        /// The client as the verdicts record it.
        client: String,
        /// The combined verdict `y`.
        verdict: f64,
        /// The analyses asked for, in order (`static`, `dynamic`, `virustotal`).
        analyses: Vec<&'static str>,
        /// `safelist` or `badlist` when a list answered.
        listed: Option<&'static str>,
    },
    /// The request failed.
    Failed {
        client: String,
        /// The step that failed, when one did.
        step: Option<String>,
        reason: Option<Reason>,
        message: String,
    },
}

impl AnalysisOutcome {
    pub(crate) fn failed(client: &str, detail: &ErrorDetail) -> AnalysisOutcome {
        AnalysisOutcome::Failed {
            client: client.to_owned(),
            step: detail.step().map(str::to_owned),
            reason: detail.reason(),
            message: detail.message().to_owned(),
        }
    }
}

/// The sending end, held by the analysis pipeline.
#[derive(Debug, Clone)]
pub(crate) struct Outcomes(broadcast::Sender<AnalysisOutcome>);

impl Outcomes {
    pub fn new() -> Outcomes {
        Outcomes(broadcast::channel(STREAM_BUFFER).0)
    }

    pub fn send(&self, outcome: AnalysisOutcome) {
        // No subscriber is not an error: nobody is watching.
        let _ = self.0.send(outcome);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<AnalysisOutcome> {
        self.0.subscribe()
    }
}
