//! Settings of the CAPE client (the `[sandbox]` section of the configuration).

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A secret that never appears in logs or `Debug` output.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ApiToken(String);

impl ApiToken {
    pub fn new(token: impl Into<String>) -> Self {
        ApiToken(token.into())
    }

    pub(crate) fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() { "ApiToken(empty)" } else { "ApiToken(<redacted>)" })
    }
}

/// How to reach CAPE and how long to wait for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SandboxSettings {
    /// CAPE's web root, e.g. `http://cape.internal:8000` (the API is under
    /// `/apiv2/`). Empty (the default): no sandbox is configured.
    pub base_url: String,
    /// API token, sent as `Authorization: Token <token>`; empty when CAPE runs
    /// without authentication.
    pub token: ApiToken,
    /// Longest wait for one analysis, from submission to report.
    #[serde(with = "humantime_serde")]
    pub analysis_timeout: Duration,
    /// Pause between two status requests.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Longest wait for one HTTP request.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Analyses running at once; further ones wait for a slot.
    pub max_in_flight: usize,
    /// Largest file submitted (bytes).
    pub max_upload_bytes: usize,
    /// Largest report downloaded (bytes).
    pub max_report_bytes: usize,
    /// Calls kept from a report.
    pub max_calls: usize,
    /// CAPE's `timeout` form field: how long the sample runs in the VM
    /// (sent in whole seconds); `"0s"` leaves CAPE's default.
    #[serde(with = "humantime_serde")]
    pub run_time: Duration,
    /// CAPE's `options` form field (e.g. `procmemdump=1`); empty for none.
    pub options: String,
}

impl Default for SandboxSettings {
    fn default() -> Self {
        SandboxSettings {
            base_url: String::new(),
            token: ApiToken::default(),
            analysis_timeout: Duration::from_secs(300),
            poll_interval: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            max_in_flight: 4,
            max_upload_bytes: 64 << 20,
            max_report_bytes: 256 << 20,
            max_calls: sentinel_behaviour::MAX_CALLS,
            run_time: Duration::ZERO,
            options: String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_never_printed() {
        let settings = SandboxSettings { token: ApiToken::new("s3cr3t-value"), ..SandboxSettings::default() };
        assert!(!format!("{settings:?}").contains("s3cr3t"));
    }

    #[test]
    fn unknown_settings_are_rejected_and_missing_ones_defaulted() {
        let parsed: SandboxSettings = serde_json::from_str(r#"{"base_url": "http://cape:8000"}"#).unwrap();
        assert_eq!(parsed.analysis_timeout, Duration::from_secs(300));
        let parsed: SandboxSettings =
            serde_json::from_str(r#"{"poll_interval": "250ms", "run_time": "2m"}"#).unwrap();
        assert_eq!(
            (parsed.poll_interval, parsed.run_time),
            (Duration::from_millis(250), Duration::from_secs(120))
        );
        assert!(serde_json::from_str::<SandboxSettings>(r#"{"base_ur": "x"}"#).is_err());
    }
}
