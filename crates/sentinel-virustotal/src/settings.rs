//! The `[virustotal]` settings: where VirusTotal is, how long to wait for it,
//! whether files may be uploaded, how stale a stored report may be, the request
//! limits of each key tier, and the rule that turns a report into a score.
//!
//! Durations are written with a unit (`request_timeout = "30s"`,
//! `freshness = "7days"`), as everywhere in the configuration.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::SettingsError;
use crate::key::KeyId;
use crate::verdict::VerdictRule;

/// Settings of the VirusTotal client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VirusTotalSettings {
    /// Whether the server offers the VirusTotal step at all (read by the
    /// server, not by the client): off, commands 3, 4, 5 and 6 answer
    /// `unavailable` and nothing is sent to VirusTotal.
    pub enabled: bool,
    /// Scheme and host of the API (`/api/v3/...` is appended).
    pub base_url: String,
    /// Limit on one request (connection, sending and receiving), uploads excepted.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Limit on one upload request, which sends up to `max_upload_bytes`.
    #[serde(with = "humantime_serde")]
    pub upload_timeout: Duration,
    /// Uploading a file VirusTotal does not know shares it with VirusTotal's
    /// users (partners can download it): off unless the operator decides so.
    pub upload_enabled: bool,
    /// Largest file uploaded (VirusTotal's own limit is 650 MB).
    pub max_upload_bytes: u64,
    /// Largest response body read from VirusTotal.
    pub max_response_bytes: usize,
    /// Retries after a transient failure (5xx, timeout, connection error); the
    /// number of attempts is `max_retries + 1`.
    pub max_retries: u32,
    /// First back-off delay; it doubles with each retry, with random jitter.
    #[serde(with = "humantime_serde")]
    pub retry_base_delay: Duration,
    /// Longest back-off delay.
    #[serde(with = "humantime_serde")]
    pub retry_max_delay: Duration,
    /// A stored report younger than this is answered without calling VirusTotal.
    #[serde(with = "humantime_serde")]
    pub freshness: Duration,
    /// Interval between polls of an upload's analysis. Each poll is a request
    /// counted against the uploading key's quota.
    #[serde(with = "humantime_serde")]
    pub analysis_poll_interval: Duration,
    /// How long to wait for an upload's analysis to complete.
    #[serde(with = "humantime_serde")]
    pub analysis_timeout: Duration,
    /// A request that the rate limiter can admit within this wait is queued;
    /// beyond it, it fails with a quota error at once.
    #[serde(with = "humantime_serde")]
    pub max_queue_wait: Duration,
    /// When replicas share the store (PostgreSQL), how long one replica's claim on
    /// a hash's flight lasts without renewal (read by the server): the leader
    /// renews it while its calls run, and a replica that dies keeps the others
    /// waiting at most this long before one of them takes over.
    #[serde(with = "humantime_serde")]
    pub shared_flight_lease: Duration,
    /// Limits of keys without a tier in `key_tiers`: VirusTotal's public API.
    pub default_tier: TierLimits,
    /// Named tiers (`premium`…) with their limits.
    pub tiers: BTreeMap<String, TierLimits>,
    /// Key id (hex HMAC of the key, see `KeyHasher::key_id`) → tier name.
    pub key_tiers: BTreeMap<String, String>,
    /// How a report becomes a score and a label.
    pub verdict: VerdictRule,
}

/// Request limits of one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TierLimits {
    pub requests_per_minute: u32,
    /// Counted per UTC day, as VirusTotal does.
    pub requests_per_day: u32,
}

impl Default for TierLimits {
    /// VirusTotal's public API: 4 requests a minute, 500 a day.
    fn default() -> Self {
        TierLimits { requests_per_minute: 4, requests_per_day: 500 }
    }
}

impl Default for VirusTotalSettings {
    fn default() -> Self {
        VirusTotalSettings {
            enabled: true,
            base_url: "https://www.virustotal.com".to_owned(),
            request_timeout: Duration::from_secs(30),
            upload_timeout: Duration::from_secs(600),
            upload_enabled: false,
            max_upload_bytes: 650 * 1024 * 1024,
            max_response_bytes: 16 * 1024 * 1024,
            max_retries: 3,
            retry_base_delay: Duration::from_secs(1),
            retry_max_delay: Duration::from_secs(30),
            freshness: Duration::from_secs(7 * 86_400),
            analysis_poll_interval: Duration::from_secs(30),
            analysis_timeout: Duration::from_secs(900),
            max_queue_wait: Duration::from_secs(20),
            shared_flight_lease: Duration::from_secs(30),
            default_tier: TierLimits::default(),
            tiers: BTreeMap::new(),
            key_tiers: BTreeMap::new(),
            verdict: VerdictRule::default(),
        }
    }
}

/// The settings checked and converted to the types the client works with.
#[derive(Debug, Clone)]
pub(crate) struct CheckedSettings {
    pub base_url: reqwest::Url,
    pub request_timeout: Duration,
    pub upload_timeout: Duration,
    pub upload_enabled: bool,
    pub max_upload_bytes: u64,
    pub max_response_bytes: usize,
    pub max_retries: u32,
    pub retry_base_delay: Duration,
    pub retry_max_delay: Duration,
    pub freshness: Duration,
    pub analysis_poll_interval: Duration,
    pub analysis_timeout: Duration,
    pub max_queue_wait: Duration,
    pub default_tier: TierLimits,
    pub key_limits: BTreeMap<KeyId, TierLimits>,
    pub verdict: VerdictRule,
}

/// A shorter lease would have to be renewed more often than a database round trip allows.
const MIN_FLIGHT_LEASE: Duration = Duration::from_secs(1);

/// More retries than this would only hide an outage while spending quota.
const MAX_RETRIES: u32 = 10;

impl VirusTotalSettings {
    pub(crate) fn check(&self) -> Result<CheckedSettings, SettingsError> {
        let base_url = reqwest::Url::parse(&self.base_url)
            .map_err(|error| SettingsError::new(format!("base_url {:?}: {error}", self.base_url)))?;
        if !matches!(base_url.scheme(), "https" | "http")
            || base_url.host().is_none()
            || !base_url.username().is_empty()
            || base_url.password().is_some()
            || base_url.query().is_some()
            || base_url.fragment().is_some()
        {
            return Err(SettingsError::new(format!(
                "base_url {:?} must be http(s)://host[:port][/path] without credentials, query or fragment",
                self.base_url
            )));
        }
        if self.max_retries > MAX_RETRIES {
            return Err(SettingsError::new(format!("max_retries must be at most {MAX_RETRIES}")));
        }
        if self.shared_flight_lease < MIN_FLIGHT_LEASE {
            return Err(SettingsError::new("shared_flight_lease must be at least 1s".to_owned()));
        }
        if self.max_response_bytes == 0 {
            return Err(SettingsError::new("max_response_bytes must be positive".to_owned()));
        }
        for (name, limits) in std::iter::once(("default_tier", &self.default_tier))
            .chain(self.tiers.iter().map(|(name, limits)| (name.as_str(), limits)))
        {
            if limits.requests_per_minute == 0 || limits.requests_per_day == 0 {
                return Err(SettingsError::new(format!("tier {name}: limits must be positive")));
            }
        }
        let mut key_limits = BTreeMap::new();
        for (key_id, tier) in &self.key_tiers {
            let id = KeyId::from_hex(key_id).ok_or_else(|| {
                SettingsError::new(format!("key_tiers: {key_id:?} is not a key id (64 hex digits)"))
            })?;
            let limits = self
                .tiers
                .get(tier)
                .ok_or_else(|| SettingsError::new(format!("key_tiers: tier {tier:?} is not in tiers")))?;
            key_limits.insert(id, *limits);
        }
        self.verdict.check()?;
        Ok(CheckedSettings {
            base_url,
            request_timeout: positive("request_timeout", self.request_timeout)?,
            upload_timeout: positive("upload_timeout", self.upload_timeout)?,
            upload_enabled: self.upload_enabled,
            max_upload_bytes: self.max_upload_bytes,
            max_response_bytes: self.max_response_bytes,
            max_retries: self.max_retries,
            retry_base_delay: self.retry_base_delay,
            retry_max_delay: self.retry_max_delay,
            freshness: self.freshness,
            analysis_poll_interval: self.analysis_poll_interval,
            analysis_timeout: positive("analysis_timeout", self.analysis_timeout)?,
            max_queue_wait: self.max_queue_wait,
            default_tier: self.default_tier,
            key_limits,
            verdict: self.verdict.clone(),
        })
    }
}

fn positive(name: &str, duration: Duration) -> Result<Duration, SettingsError> {
    match duration {
        Duration::ZERO => Err(SettingsError::new(format!("{name} must be positive"))),
        duration => Ok(duration),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_match_the_public_api() {
        let checked = VirusTotalSettings::default().check().unwrap();
        assert_eq!(checked.base_url.as_str(), "https://www.virustotal.com/");
        assert!(!checked.upload_enabled);
        assert_eq!(checked.default_tier, TierLimits { requests_per_minute: 4, requests_per_day: 500 });
        assert_eq!(checked.freshness, Duration::from_secs(7 * 86_400));
    }

    #[test]
    fn invalid_settings_are_refused() {
        let invalid = [
            VirusTotalSettings { base_url: "ftp://example.com".into(), ..Default::default() },
            VirusTotalSettings { base_url: "https://user:pw@example.com".into(), ..Default::default() },
            VirusTotalSettings { request_timeout: Duration::ZERO, ..Default::default() },
            VirusTotalSettings { max_retries: 1000, ..Default::default() },
            VirusTotalSettings { shared_flight_lease: Duration::from_millis(10), ..Default::default() },
            VirusTotalSettings {
                key_tiers: [("ab".to_owned(), "premium".to_owned())].into(),
                ..Default::default()
            },
            VirusTotalSettings {
                key_tiers: [("0".repeat(64), "premium".to_owned())].into(),
                ..Default::default()
            },
        ];
        for settings in invalid {
            assert!(settings.check().is_err(), "{settings:?}");
        }
    }

    #[test]
    fn durations_are_read_with_their_unit() {
        let settings: VirusTotalSettings =
            serde_json::from_str(r#"{"freshness": "2days", "max_queue_wait": "500ms"}"#).unwrap();
        assert_eq!(settings.freshness, Duration::from_secs(2 * 86_400));
        assert_eq!(settings.max_queue_wait, Duration::from_millis(500));
        assert!(serde_json::from_str::<VirusTotalSettings>(r#"{"freshness": 3600}"#).is_err());
    }

    #[test]
    fn key_tiers_map_key_ids_to_tier_limits() {
        let premium = TierLimits { requests_per_minute: 1000, requests_per_day: 1_000_000 };
        let settings = VirusTotalSettings {
            tiers: [("premium".to_owned(), premium)].into(),
            key_tiers: [("AB".repeat(32), "premium".to_owned())].into(),
            ..Default::default()
        };
        let checked = settings.check().unwrap();
        assert_eq!(checked.key_limits.get(&KeyId::from_hex(&"ab".repeat(32)).unwrap()), Some(&premium));
    }
}
