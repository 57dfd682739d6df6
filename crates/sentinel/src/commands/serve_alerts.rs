//! `sentinel serve`'s alerts: starts the alert service (`[alerts]`) and feeds its rules from
//! what the other parts tell — the network service's results and health, the malware server's
//! outcomes, this host's load. The rules themselves live in `sentinel-alerts`; this module only
//! connects them.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use sentinel_alerts::rules::{
    AccuracyDrop, AnomalyRate, Failure, Load, MalwareOutcome, ModelAccuracy, Prediction, SystemLoad, anomaly,
    malware_verdict, overload,
};
use sentinel_alerts::{Alert, AlertSettings, Alerts};
use sentinel_network::{DetectionResult, NetworkService};
use sentinel_protocol::Reason;
use sentinel_server::AnalysisOutcome;
use sentinel_store::Store;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::task::JoinHandle;

/// The running alert service and the tasks that feed it.
pub struct AlertWatch {
    pub alerts: Alerts,
    tasks: Vec<JoinHandle<()>>,
}

impl AlertWatch {
    /// Stops feeding the rules and delivering; what is pending stays in the outbox.
    pub fn shutdown(self) {
        for task in self.tasks {
            task.abort();
        }
        self.alerts.shutdown();
    }
}

/// What the rules watch.
pub struct Watched<'a> {
    pub store: &'a Arc<Store>,
    pub network: Option<&'a Arc<NetworkService>>,
    pub outcomes: broadcast::Receiver<AnalysisOutcome>,
    /// Whether a CAPE sandbox is configured: only then is a dynamic step's `unavailable` a
    /// sandbox that cannot be reached.
    pub sandbox_configured: bool,
}

/// Starts the alert service and its feeds; `None` when `[alerts] enabled = false`.
pub async fn start(settings: AlertSettings, watched: Watched<'_>) -> anyhow::Result<Option<AlertWatch>> {
    if !settings.enabled {
        tracing::info!("alerts disabled by [alerts] enabled = false");
        return Ok(None);
    }
    let alerts =
        Alerts::start(settings, Arc::clone(watched.store)).await.context("cannot start the alerts")?;
    let mut tasks = vec![
        tokio::spawn(watch_outcomes(alerts.clone(), watched.outcomes, watched.sandbox_configured)),
        tokio::spawn(watch_health(alerts.clone(), watched.network.cloned())),
    ];
    if let Some(network) = watched.network {
        tasks.push(tokio::spawn(watch_results(alerts.clone(), Arc::clone(network))));
    }
    Ok(Some(AlertWatch { alerts, tasks }))
}

async fn raise(alerts: &Alerts, alert: Alert) {
    let rule = alert.rule.as_str();
    if let Err(error) = alerts.raise(alert).await {
        tracing::error!(%error, rule, "cannot record an alert");
    }
}

/// Anomalies and the anomaly rate, from every result of the network service.
async fn watch_results(alerts: Alerts, network: Arc<NetworkService>) {
    let rules = alerts.settings().rules.clone();
    let mut rate = AnomalyRate::new(rules.anomaly_rate.clone());
    let mut results = network.subscribe();
    loop {
        let result = match results.recv().await {
            Ok(result) => result,
            Err(RecvError::Lagged(missed)) => {
                tracing::warn!(
                    missed,
                    "the alert rules fell behind the network results; some were not checked"
                );
                continue;
            }
            Err(RecvError::Closed) => return,
        };
        let prediction = prediction(&result, &network);
        if let Some(alert) = anomaly(&rules.anomaly, &prediction) {
            raise(&alerts, alert).await;
        }
        if let Some(alert) = rate.observe(Instant::now(), prediction.is_anomaly) {
            raise(&alerts, alert).await;
        }
    }
}

/// A result as the rules see it: the remote address in its stored form (pseudonymised unless
/// `[privacy]` keeps addresses clear), since alerts are stored and sent to other systems.
fn prediction(result: &DetectionResult, network: &NetworkService) -> Prediction {
    let connection = result.connection.as_ref();
    Prediction {
        id: result.id,
        host: connection.map_or_else(|| "analyze".to_owned(), |connection| connection.host.clone()),
        process: connection.and_then(|connection| connection.process_name.clone()),
        remote: connection.map(|connection| network.addresses().display(connection.remote_address.ip())),
        remote_port: connection.map(|connection| connection.remote_address.port()),
        score: result.verdict.score,
        threshold: result.verdict.threshold,
        is_anomaly: result.verdict.is_anomaly,
        model_version: result.model_version,
        explanation: serde_json::to_value(&result.verdict.explanation).unwrap_or_default(),
    }
}

/// Malware verdicts and the failures of the analyses' remote services.
async fn watch_outcomes(
    alerts: Alerts,
    mut outcomes: broadcast::Receiver<AnalysisOutcome>,
    sandbox_configured: bool,
) {
    let rules = alerts.settings().rules.clone();
    loop {
        let outcome = match outcomes.recv().await {
            Ok(outcome) => outcome,
            Err(RecvError::Lagged(missed)) => {
                tracing::warn!(
                    missed,
                    "the alert rules fell behind the malware verdicts; some were not checked"
                );
                continue;
            }
            Err(RecvError::Closed) => return,
        };
        let alert = match outcome {
            AnalysisOutcome::Verdict { sha256, client, verdict, analyses, listed } => {
                let outcome = MalwareOutcome {
                    sha256,
                    client,
                    y: verdict,
                    analyses: analyses.into_iter().map(str::to_owned).collect(),
                    listed: listed.map(str::to_owned),
                };
                malware_verdict(&rules.malware, &outcome)
            }
            AnalysisOutcome::Failed { client, step, reason, message } => {
                let failure = match (step.as_deref(), reason) {
                    (Some("virustotal"), Some(Reason::WrongCredentials)) => {
                        Some(Failure::VirusTotalKeyRejected { client, message })
                    }
                    (Some("dynamic"), Some(Reason::Unavailable | Reason::Timeout)) if sandbox_configured => {
                        Some(Failure::SandboxUnreachable { message })
                    }
                    _ => None,
                };
                failure.and_then(|failure| failure.alert(&rules.failures))
            }
        };
        if let Some(alert) = alert {
            raise(&alerts, alert).await;
        }
    }
}

/// Every `overload.interval`: this host's CPU and memory, the network service's queue, its
/// collector, its last training and its models' accuracy on feedback.
async fn watch_health(alerts: Alerts, network: Option<Arc<NetworkService>>) {
    let rules = alerts.settings().rules.clone();
    let accuracy_drop = AccuracyDrop::new(rules.accuracy_drop.clone());
    let mut system = SystemLoad::new();
    let mut ticks = tokio::time::interval(rules.overload.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let mut found: Vec<Alert> = Vec::new();
        let mut loads = system.sample();
        if let Some(network) = &network {
            let health = network.health();
            if let Some((used, capacity)) = health.ingest_queue
                && capacity > 0
            {
                loads.push(Load {
                    resource: "network.ingest_queue".into(),
                    used: used as f64 / capacity as f64,
                });
            }
            if let Some(reason) = health.collector_unavailable {
                found.extend(Failure::CollectorUnavailable { reason }.alert(&rules.failures));
            }
            if let Some((job, error)) = health.failed_training {
                found.extend(Failure::TrainingFailed { job, error }.alert(&rules.failures));
            }
            for figures in health.accuracies {
                let accuracy = ModelAccuracy {
                    model: figures.model,
                    model_version: figures.model_version,
                    at_promotion: figures.at_promotion,
                    on_feedback: figures.on_feedback,
                    labels: figures.labels,
                };
                found.extend(accuracy_drop.check(&accuracy));
            }
        }
        found.extend(loads.iter().filter_map(|load| overload(&rules.overload, load)));
        for alert in found {
            raise(&alerts, alert).await;
        }
    }
}
