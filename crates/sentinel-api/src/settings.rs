//! `[http]` settings: where the process's HTTP listener binds and the limits every request
//! crosses, with the defaults documented in `docs/network.md` ("HTTP listener").

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// Settings of the HTTP listener.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSettings {
    /// Listening address. Default `127.0.0.1:9501`: local only until an operator decides to
    /// expose it (then with `[auth]` on, as it is by default).
    pub listen: SocketAddr,
    /// Largest request body any route accepts, bytes; a route may set a lower limit of its own.
    /// Default 64 MiB (the network API's `api.max_body_bytes`).
    pub max_body_bytes: usize,
    /// Time allowed to answer one request (`"30s"`, `"2m"`); beyond, 408. A WebSocket stream is
    /// not limited once upgraded. Default 60 s.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,

    // What the listener's sockets face (issue #12): TLS and the limits per connection.
    /// Certificate chain (PEM, leaf first) and its private key: with both, the listener speaks
    /// HTTPS only (TLS 1.3) and rereads them on SIGHUP. Default none: plain HTTP.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Connections open at once, all clients together; lowered at start to half the process's
    /// descriptor limit (RLIMIT_NOFILE) if above it. Default 1024.
    pub max_connections: usize,
    /// Connections open at once from one client address. Default 64.
    pub max_connections_per_client: usize,
    /// Time for a request's headers to arrive, counted from the connection's start (after the
    /// TLS handshake) or from the previous answer: it is also how long an idle keep-alive
    /// connection stays open. Default 30 s.
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// Time for a TLS handshake to complete. Default 10 s.
    #[serde(with = "humantime_serde")]
    pub tls_handshake_timeout: Duration,
    // Authentication (docs/security.md).
    /// Host names clients reach this listener by (`sentinel.example`); a request whose `Host` is
    /// none of them, nor an IP literal nor `localhost`, is refused with 421 (DNS-rebinding
    /// defence). Default empty: IP literals and `localhost` only.
    pub server_names: Vec<String>,
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
            tls_cert: None,
            tls_key: None,
            max_connections: 1024,
            max_connections_per_client: 64,
            header_timeout: Duration::from_secs(30),
            tls_handshake_timeout: Duration::from_secs(10),
            server_names: Vec::new(),
        }
    }
}

/// Settings that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("[http] {0} must be more than 0")]
    Zero(&'static str),
    #[error("[http] tls_cert and tls_key go together: {0} is missing")]
    HalfTls(&'static str),
}

impl HttpSettings {
    pub fn validate(&self) -> Result<(), SettingsError> {
        if self.max_body_bytes == 0 {
            return Err(SettingsError::Zero("max_body_bytes"));
        }
        let zeros = [
            ("request_timeout", self.request_timeout.is_zero()),
            ("max_connections", self.max_connections == 0),
            ("max_connections_per_client", self.max_connections_per_client == 0),
            ("header_timeout", self.header_timeout.is_zero()),
            ("tls_handshake_timeout", self.tls_handshake_timeout.is_zero()),
        ];
        if let Some((name, _)) = zeros.into_iter().find(|(_, zero)| *zero) {
            return Err(SettingsError::Zero(name));
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => Err(SettingsError::HalfTls("tls_key")),
            (None, Some(_)) => Err(SettingsError::HalfTls("tls_cert")),
            _ => Ok(()),
        }
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
        let zero = HttpSettings { max_connections_per_client: 0, ..HttpSettings::default() };
        assert!(zero.validate().unwrap_err().to_string().contains("max_connections_per_client"));
    }

    #[test]
    fn tls_needs_both_files_and_limits_read_as_written() {
        let settings: HttpSettings = toml::from_str(
            "tls_cert = \"/etc/sentinel/cert.pem\"\ntls_key = \"/etc/sentinel/key.pem\"\n\
             max_connections = 200\nmax_connections_per_client = 8\nheader_timeout = \"5s\"\n",
        )
        .unwrap();
        assert!(settings.validate().is_ok());
        assert_eq!(settings.tls_cert, Some(PathBuf::from("/etc/sentinel/cert.pem")));
        assert_eq!((settings.max_connections, settings.max_connections_per_client), (200, 8));
        assert_eq!(settings.header_timeout, Duration::from_secs(5));
        assert_eq!(settings.tls_handshake_timeout, Duration::from_secs(10));
        let half = HttpSettings { tls_cert: Some("cert.pem".into()), ..HttpSettings::default() };
        assert!(half.validate().unwrap_err().to_string().contains("tls_key is missing"));
    }
}
