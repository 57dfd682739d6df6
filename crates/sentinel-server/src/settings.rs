//! `[server]` settings: every limit of the TCP protocol server, with the
//! defaults documented in `docs/protocol.md`. The HTTP listener's settings are
//! `[http]` (`sentinel-api`); `http_listen` is still read here for the
//! configurations written before.
//!
//! Durations are written with a unit (`"500ms"`, `"30s"`, `"5m"`, `"1h 30m"`),
//! as everywhere in the configuration.

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
    #[serde(with = "humantime_serde")]
    pub frame_timeout: Duration,
    /// Time a connection may wait between requests. Default 300 s.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Most open protocol connections; extra connections are closed at once. Default 1024.
    pub max_connections: usize,
    /// Analyses running at once (CPU-bound work). Default: the number of cores.
    pub analysis_workers: usize,
    /// How long a request waits for a free analysis worker before `No` (busy). Default 10 s.
    #[serde(with = "humantime_serde")]
    pub analysis_queue_wait: Duration,
    /// Time allowed for all the analyses of one request. Default 120 s.
    #[serde(with = "humantime_serde")]
    pub analysis_timeout: Duration,
    /// On SIGINT/SIGTERM, how long in-flight requests may take to finish. Default 30 s.
    #[serde(with = "humantime_serde")]
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_read_from_toml_with_defaults_and_reject_unknown_keys() {
        let settings: ServerSettings =
            toml::from_str("frame_timeout = \"2s\"\nidle_timeout = \"7s\"\nmax_connections = 3\n").unwrap();
        assert_eq!(settings.frame_timeout, Duration::from_secs(2));
        assert_eq!(settings.idle_timeout, Duration::from_secs(7));
        assert_eq!(settings.max_connections, 3);
        assert_eq!(settings.http_listen, ServerSettings::default().http_listen);
        assert!(settings.validate().is_ok());
        assert!(toml::from_str::<ServerSettings>("max_conections = 3\n").is_err());
        assert!(toml::from_str::<ServerSettings>("frame_timeout = \"later\"\n").is_err());
        // One form for durations: a bare number has no unit and is refused.
        assert!(toml::from_str::<ServerSettings>("frame_timeout = 30\n").is_err());
        let zero_workers = ServerSettings { analysis_workers: 0, ..ServerSettings::default() };
        assert!(zero_workers.validate().is_err());
    }
}
