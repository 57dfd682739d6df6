//! `[server]` settings: every limit of the TCP protocol server, with the
//! defaults documented in `docs/protocol.md`. The HTTP listener's settings are
//! `[http]` (`sentinel-api`); `http_listen` is still read here for the
//! configurations written before.
//!
//! Durations are written as seconds (`30`, `0.5`) or as a number with a unit
//! (`"500ms"`, `"30s"`, `"5m"`, `"1h"`), the forms operators write by hand.

use std::net::SocketAddr;
use std::time::Duration;

use sentinel_protocol::{Limits, LimitsError};
use serde::Deserialize;

use crate::analysis::FusionSettings;

/// Settings of the protocol server.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    /// Protocol listener. Default `0.0.0.0:9500`: central servers connect from other hosts.
    pub tcp_listen: SocketAddr,
    /// The former place of the HTTP listener's address, still accepted: `[http] listen`
    /// wins when both are set. None by default.
    pub http_listen: Option<SocketAddr>,
    /// Largest field in bytes (the executable). Default 64 MiB.
    pub max_field_size: u32,
    /// Most fields per request. Default 16.
    pub max_fields: usize,
    /// Largest request frame in bytes. Default 80 MiB.
    pub max_frame_size: u64,
    /// Time to receive one request from its first byte to its last. Default 60 s.
    #[serde(deserialize_with = "duration::deserialize")]
    pub frame_timeout: Duration,
    /// Time a connection may wait between requests. Default 300 s.
    #[serde(deserialize_with = "duration::deserialize")]
    pub idle_timeout: Duration,
    /// Most open protocol connections; extra connections are closed at once. Default 1024.
    pub max_connections: usize,
    /// Analyses running at once (CPU-bound work). Default: the number of cores.
    pub analysis_workers: usize,
    /// How long a request waits for a free analysis worker before `No` (busy). Default 10 s.
    #[serde(deserialize_with = "duration::deserialize")]
    pub analysis_queue_wait: Duration,
    /// Time allowed for all the analyses of one request. Default 120 s.
    #[serde(deserialize_with = "duration::deserialize")]
    pub analysis_timeout: Duration,
    /// On SIGINT/SIGTERM, how long in-flight requests may take to finish. Default 30 s.
    #[serde(deserialize_with = "duration::deserialize")]
    pub shutdown_timeout: Duration,
    /// `[server.fusion]`: step weights of the combined verdict (commands 4, 5, 6).
    pub fusion: FusionSettings,
}

impl Default for ServerSettings {
    fn default() -> ServerSettings {
        let limits = Limits::default();
        ServerSettings {
            tcp_listen: SocketAddr::from(([0, 0, 0, 0], 9500)),
            http_listen: None,
            max_field_size: limits.max_field_size,
            max_fields: limits.max_fields,
            max_frame_size: limits.max_frame_size,
            frame_timeout: limits.frame_timeout,
            idle_timeout: limits.idle_timeout,
            max_connections: 1024,
            analysis_workers: std::thread::available_parallelism().map_or(1, |cores| cores.get()),
            analysis_queue_wait: Duration::from_secs(10),
            analysis_timeout: Duration::from_secs(120),
            shutdown_timeout: Duration::from_secs(30),
            fusion: FusionSettings::default(),
        }
    }
}

/// Settings that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error(transparent)]
    Limits(#[from] LimitsError),
    #[error("{0} must be at least 1")]
    Zero(&'static str),
    #[error("{0}")]
    Fusion(String),
}

impl ServerSettings {
    /// The frame limits these settings give.
    pub fn limits(&self) -> Limits {
        Limits {
            max_field_size: self.max_field_size,
            max_fields: self.max_fields,
            max_frame_size: self.max_frame_size,
            frame_timeout: self.frame_timeout,
            idle_timeout: self.idle_timeout,
        }
    }

    pub fn validate(&self) -> Result<(), SettingsError> {
        self.limits().validate()?;
        if self.max_connections == 0 {
            return Err(SettingsError::Zero("max_connections"));
        }
        if self.analysis_workers == 0 {
            return Err(SettingsError::Zero("analysis_workers"));
        }
        if self.analysis_timeout.is_zero() {
            return Err(SettingsError::Zero("analysis_timeout"));
        }
        self.fusion.validate().map_err(SettingsError::Fusion)
    }
}

/// Durations as seconds or as `<number><unit>` strings.
mod duration {
    use std::fmt;
    use std::time::Duration;

    use serde::de::{self, Deserializer, Visitor};

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        deserializer.deserialize_any(DurationVisitor)
    }

    struct DurationVisitor;

    impl Visitor<'_> for DurationVisitor {
        type Value = Duration;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("seconds, or a duration such as \"500ms\", \"30s\", \"5m\", \"1h\"")
        }

        fn visit_u64<E: de::Error>(self, seconds: u64) -> Result<Duration, E> {
            Ok(Duration::from_secs(seconds))
        }

        fn visit_i64<E: de::Error>(self, seconds: i64) -> Result<Duration, E> {
            u64::try_from(seconds)
                .map(Duration::from_secs)
                .map_err(|_| E::custom("a duration cannot be negative"))
        }

        fn visit_f64<E: de::Error>(self, seconds: f64) -> Result<Duration, E> {
            Duration::try_from_secs_f64(seconds)
                .map_err(|_| E::custom(format!("{seconds} is not a valid duration")))
        }

        fn visit_str<E: de::Error>(self, text: &str) -> Result<Duration, E> {
            parse(text).ok_or_else(|| E::invalid_value(de::Unexpected::Str(text), &self))
        }
    }

    pub(super) fn parse(text: &str) -> Option<Duration> {
        let text = text.trim();
        let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let number: f64 = number.parse().ok()?;
        let scale = match unit.trim() {
            "" | "s" | "sec" | "secs" => 1.0,
            "ms" => 0.001,
            "m" | "min" | "mins" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        Duration::try_from_secs_f64(number * scale).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_seconds_or_units() {
        assert_eq!(duration::parse("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(duration::parse("30s"), Some(Duration::from_secs(30)));
        assert_eq!(duration::parse("5m"), Some(Duration::from_secs(300)));
        assert_eq!(duration::parse("1.5"), Some(Duration::from_millis(1500)));
        assert_eq!(duration::parse("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(duration::parse("soon"), None);
        assert_eq!(duration::parse("5 weeks"), None);
        assert_eq!(duration::parse("-1s"), None);
    }

    #[test]
    fn settings_read_from_toml_with_defaults_and_reject_unknown_keys() {
        let settings: ServerSettings =
            toml::from_str("frame_timeout = \"2s\"\nidle_timeout = 7\nmax_connections = 3\n").unwrap();
        assert_eq!(settings.frame_timeout, Duration::from_secs(2));
        assert_eq!(settings.idle_timeout, Duration::from_secs(7));
        assert_eq!(settings.max_connections, 3);
        assert_eq!(settings.http_listen, ServerSettings::default().http_listen);
        assert!(settings.validate().is_ok());
        assert!(toml::from_str::<ServerSettings>("max_conections = 3\n").is_err());
        assert!(toml::from_str::<ServerSettings>("frame_timeout = \"later\"\n").is_err());
        let zero_workers = ServerSettings { analysis_workers: 0, ..ServerSettings::default() };
        assert!(zero_workers.validate().is_err());
    }
}
