//! Failures that need a person: nothing is wrong with the traffic or the samples, but part of
//! Sentinel cannot do its work until someone acts. Each kind has its own identifier, so one
//! broken part is one alert (and its repeats), whatever else fails.

use serde_json::json;

use crate::alert::{Alert, Rule, Severity};
use crate::settings::FailureRule;

/// A failure, with what it says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// This host's connections cannot be watched.
    CollectorUnavailable { reason: String },
    /// VirusTotal refused a client's API key (or the server's).
    VirusTotalKeyRejected { client: String, message: String },
    /// The CAPE sandbox could not be reached or did not answer in time.
    SandboxUnreachable { message: String },
    /// A network model's training failed.
    TrainingFailed { job: u64, error: String },
    /// Alerts are raised faster than `[alerts] max_per_minute`: the ones over it are recorded,
    /// not sent.
    AlertsHeldBack { max_per_minute: u32 },
}

impl Failure {
    /// The failure's alert, when the rule is on.
    pub fn alert(&self, rule: &FailureRule) -> Option<Alert> {
        if !rule.enabled {
            return None;
        }
        let (kind, key, summary, details) = match self {
            Failure::CollectorUnavailable { reason } => (
                "collector_unavailable",
                "collector".to_owned(),
                format!("this host's connections are not watched: {reason}"),
                json!({ "reason": reason }),
            ),
            Failure::VirusTotalKeyRejected { client, message } => (
                "virustotal_key_rejected",
                format!("virustotal/{client}"),
                format!("VirusTotal rejected the API key of client {client}: {message}"),
                json!({ "client": client, "message": message }),
            ),
            Failure::SandboxUnreachable { message } => (
                "sandbox_unreachable",
                "sandbox".to_owned(),
                format!("the CAPE sandbox cannot be reached: {message}"),
                json!({ "message": message }),
            ),
            Failure::TrainingFailed { job, error } => (
                "training_failed",
                "network-training".to_owned(),
                format!("network model training job {job} failed: {error}"),
                json!({ "job": job, "error": error }),
            ),
            Failure::AlertsHeldBack { max_per_minute } => (
                "alerts_held_back",
                "alerts".to_owned(),
                format!(
                    "alerts are raised faster than [alerts] max_per_minute ({max_per_minute}): the ones \
                     over it are recorded, not sent; GET /api/v1/alerts lists them all"
                ),
                json!({ "max_per_minute": max_per_minute }),
            ),
        };
        let mut details = details;
        details["failure"] = json!(kind);
        Some(
            Alert::new(Rule::Failure, format!("{kind}/{key}"), Severity::Critical, summary)
                .with_details(details),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_failure_has_its_own_identifier() {
        let rule = FailureRule { enabled: true };
        let key = |failure: Failure| failure.alert(&rule).unwrap().key;
        assert_eq!(
            key(Failure::VirusTotalKeyRejected { client: "eu-1".into(), message: "401".into() }),
            "virustotal_key_rejected/virustotal/eu-1"
        );
        assert_eq!(
            key(Failure::SandboxUnreachable { message: "refused".into() }),
            "sandbox_unreachable/sandbox"
        );
        assert_ne!(
            key(Failure::TrainingFailed { job: 1, error: "x".into() }),
            key(Failure::CollectorUnavailable { reason: "x".into() })
        );
        assert_eq!(
            Failure::SandboxUnreachable { message: "x".into() }.alert(&FailureRule { enabled: false }),
            None
        );
    }
}
