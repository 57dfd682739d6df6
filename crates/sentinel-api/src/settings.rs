//! `[http]` settings: where the process's HTTP listener binds and the limits every request
//! crosses, with the defaults documented in `docs/network.md` ("HTTP listener").

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

/// Settings of the HTTP listener.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSettings {
    /// Listening address. Default `127.0.0.1:9501`: `/admin/reload` and the network API have no
    /// authentication yet, so the listener is local only by default.
    pub listen: SocketAddr,
    /// Largest request body any route accepts, bytes; a route may set a lower limit of its own.
    /// Default 64 MiB (the network API's `api.max_body_bytes`).
    pub max_body_bytes: usize,
    /// Time allowed to answer one request (`"30s"`, `"2m"`); beyond, 408. A WebSocket stream is
    /// not limited once upgraded. Default 60 s.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
}

/// The address the listener binds when nothing says otherwise.
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9501);

impl Default for HttpSettings {
    fn default() -> HttpSettings {
        HttpSettings {
            listen: DEFAULT_LISTEN,
            max_body_bytes: 64 * 1024 * 1024,
            request_timeout: Duration::from_secs(60),
        }
    }
}

/// Settings that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("[http] {0} must be more than 0")]
    Zero(&'static str),
}

impl HttpSettings {
    pub fn validate(&self) -> Result<(), SettingsError> {
        if self.max_body_bytes == 0 {
            return Err(SettingsError::Zero("max_body_bytes"));
        }
        if self.request_timeout.is_zero() {
            return Err(SettingsError::Zero("request_timeout"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_read_from_toml_with_defaults_and_reject_unknown_keys() {
        let settings: HttpSettings = toml::from_str("request_timeout = \"2s\"\n").unwrap();
        assert_eq!(settings.request_timeout, Duration::from_secs(2));
        assert_eq!(settings.listen, DEFAULT_LISTEN);
        assert!(settings.validate().is_ok());
        assert!(toml::from_str::<HttpSettings>("listen_on = \"127.0.0.1:1\"\n").is_err());
        assert!(toml::from_str::<HttpSettings>("request_timeout = \"soon\"\n").is_err());
        let zero = HttpSettings { max_body_bytes: 0, ..HttpSettings::default() };
        assert!(zero.validate().is_err());
    }
}
