//! Anomalies: each anomalous connection (the ensemble's verdict, at or above a minimum score),
//! identified by host and remote address (not port) so that one noisy peer — a scan of many of
//! its ports included — is one alert and its repeats;
//! and the share of anomalies among the predictions of a sliding window (SPEC §2.4: above 0.1).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::alert::{Alert, Rule, Severity};
use crate::settings::{AnomalyRateRule, AnomalyRule};

/// A prediction of the network service, as the rules need it.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// The stored item's id, which feedback takes.
    pub id: Option<i64>,
    pub host: String,
    pub process: Option<String>,
    /// The remote address as stored (pseudonymised unless the privacy settings keep it clear).
    pub remote: Option<String>,
    pub remote_port: Option<u16>,
    pub score: f64,
    pub threshold: f64,
    pub is_anomaly: bool,
    pub model_version: i64,
    /// The features that drove the score, as the API shows them.
    pub explanation: serde_json::Value,
}

/// The alert of an anomalous prediction, when the rule wants it.
pub fn anomaly(rule: &AnomalyRule, prediction: &Prediction) -> Option<Alert> {
    if !rule.enabled || !prediction.is_anomaly || prediction.score < rule.min_score {
        return None;
    }
    let remote = prediction.remote.as_deref().unwrap_or("-");
    let port = prediction.remote_port.map(|port| format!(" port {port}")).unwrap_or_default();
    let process = prediction.process.as_deref().map(|name| format!(" ({name})")).unwrap_or_default();
    // A score far past its threshold is critical: half way from the threshold to 1.
    let critical = prediction.score >= prediction.threshold + (1.0 - prediction.threshold) / 2.0;
    let severity = if critical { Severity::Critical } else { Severity::Warning };
    let summary = format!(
        "anomalous connection on {}{process} to {remote}{port} (score {}, threshold {})",
        prediction.host,
        figure(prediction.score),
        figure(prediction.threshold)
    );
    Some(Alert::new(Rule::Anomaly, format!("{}/{remote}", prediction.host), severity, summary).with_details(
        json!({
            "prediction_id": prediction.id,
            "host": prediction.host,
            "process": prediction.process,
            "remote": prediction.remote,
            "remote_port": prediction.remote_port,
            "score": prediction.score,
            "threshold": prediction.threshold,
            "model_version": prediction.model_version,
            "explanation": prediction.explanation,
        }),
    ))
}

/// A score as people read it: three decimals, or a power of ten for the unbounded scores of
/// some members (a local outlier factor of 10^22 is not read digit by digit).
fn figure(value: f64) -> String {
    if value.abs() < 1e4 { format!("{value:.3}") } else { format!("{value:.3e}") }
}

/// Buckets the window is cut into: its counts are exact to one bucket's width.
const BUCKETS: u32 = 30;

/// The anomaly rate over a sliding window, counted in buckets.
#[derive(Debug)]
pub struct AnomalyRate {
    rule: AnomalyRateRule,
    width: Duration,
    /// (start, predictions, anomalies), oldest first.
    buckets: VecDeque<(Instant, u64, u64)>,
    /// When the rate last gave an alert: at most one per bucket, not one per prediction.
    last_alert: Option<Instant>,
}

impl AnomalyRate {
    pub fn new(rule: AnomalyRateRule) -> AnomalyRate {
        let width = (rule.window / BUCKETS).max(Duration::from_millis(10));
        AnomalyRate { rule, width, buckets: VecDeque::new(), last_alert: None }
    }

    /// Counts one prediction made at `now`; the alert when the window's rate is above the
    /// threshold.
    pub fn observe(&mut self, now: Instant, is_anomaly: bool) -> Option<Alert> {
        if !self.rule.enabled {
            return None;
        }
        while self
            .buckets
            .front()
            .is_some_and(|(start, _, _)| now.saturating_duration_since(*start) >= self.rule.window)
        {
            self.buckets.pop_front();
        }
        match self.buckets.back_mut() {
            Some((start, predictions, anomalies)) if now.saturating_duration_since(*start) < self.width => {
                *predictions += 1;
                *anomalies += u64::from(is_anomaly);
            }
            _ => self.buckets.push_back((now, 1, u64::from(is_anomaly))),
        }
        let (predictions, anomalies) =
            self.buckets.iter().fold((0, 0), |(total, flagged), (_, p, a)| (total + p, flagged + a));
        let rate = anomalies as f64 / predictions as f64;
        if predictions < self.rule.min_predictions || rate <= self.rule.threshold {
            return None;
        }
        if self.last_alert.is_some_and(|last| now.saturating_duration_since(last) < self.width) {
            return None;
        }
        self.last_alert = Some(now);
        let window = humantime::format_duration(self.rule.window).to_string();
        let summary = format!(
            "{:.1} % of the predictions of the last {window} are anomalies ({anomalies} of {predictions}), above {:.1} %",
            rate * 100.0,
            self.rule.threshold * 100.0
        );
        Some(Alert::new(Rule::AnomalyRate, "network", Severity::Warning, summary).with_details(json!({
            "rate": rate,
            "threshold": self.rule.threshold,
            "window_secs": self.rule.window.as_secs(),
            "predictions": predictions,
            "anomalies": anomalies,
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prediction(score: f64, is_anomaly: bool) -> Prediction {
        Prediction {
            id: Some(7),
            host: "web-1".into(),
            process: Some("nginx".into()),
            remote: Some("203.0.113.9".into()),
            remote_port: Some(4444),
            score,
            threshold: 0.6,
            is_anomaly,
            model_version: 3,
            explanation: json!([]),
        }
    }

    #[test]
    fn anomalies_at_or_above_the_minimum_score_raise_keyed_by_host_and_remote() {
        let rule = AnomalyRule { enabled: true, min_score: 0.7 };
        assert_eq!(anomaly(&rule, &prediction(0.9, false)), None);
        assert_eq!(anomaly(&rule, &prediction(0.65, true)), None);
        let alert = anomaly(&rule, &prediction(0.75, true)).unwrap();
        assert_eq!(
            (alert.rule, alert.key.as_str(), alert.severity),
            (Rule::Anomaly, "web-1/203.0.113.9", Severity::Warning)
        );
        assert_eq!(alert.details["prediction_id"], 7);
        assert!(alert.summary.ends_with("(score 0.750, threshold 0.600)"), "{}", alert.summary);
        assert!(anomaly(&rule, &prediction(7.23e12, true)).unwrap().summary.contains("score 7.230e12"));
        assert_eq!(anomaly(&rule, &prediction(0.95, true)).unwrap().severity, Severity::Critical);
        assert_eq!(anomaly(&AnomalyRule { enabled: false, min_score: 0.0 }, &prediction(0.95, true)), None);
    }

    #[test]
    fn the_rate_counts_only_the_window_and_needs_enough_predictions() {
        let rule = AnomalyRateRule {
            enabled: true,
            threshold: 0.1,
            window: Duration::from_secs(60),
            min_predictions: 20,
        };
        let mut rate = AnomalyRate::new(rule);
        let start = Instant::now();
        // 19 predictions, 5 anomalies: a high rate, but too few predictions yet.
        for index in 0..19 {
            assert_eq!(rate.observe(start, index < 5), None);
        }
        let alert = rate.observe(start + Duration::from_secs(1), false).unwrap();
        assert_eq!(alert.details["anomalies"], 5);
        assert_eq!(alert.details["predictions"], 20);
        // Still above the threshold, but within the same bucket: not told again.
        assert_eq!(rate.observe(start + Duration::from_secs(1), true), None);
        // Two minutes later the old anomalies have left the window: 30 normal predictions.
        let later = start + Duration::from_secs(120);
        for _ in 0..30 {
            assert_eq!(rate.observe(later, false), None);
        }
        // 3 anomalies in 33 predictions: 9 %, not above 10 %; a fourth makes 11.8 %.
        for _ in 0..3 {
            assert_eq!(rate.observe(later, true), None);
        }
        assert!(rate.observe(later, true).is_some());
    }
}
