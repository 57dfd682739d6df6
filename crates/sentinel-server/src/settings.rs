//! `[server]` settings: the protocol listeners (plain and TLS), who may reach
//! them, and every limit of the TCP protocol server, with the defaults
//! documented in `docs/protocol.md`. The HTTP listener's settings are
//! `[http]` (`sentinel-api`); `http_listen` is still read here for the
//! configurations written before.
//!
//! Durations are written with a unit (`"500ms"`, `"30s"`, `"5m"`, `"1h 30m"`),
//! as everywhere in the configuration.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use sentinel_protocol::{Limits, LimitsError};
use serde::Deserialize;

use crate::analysis::FusionSettings;
use crate::exposure::{self, ExposureError};

/// Settings of the protocol server.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    /// Plain protocol listener. Default `127.0.0.1:9500`: the plain port cannot
    /// authenticate clients, so another address needs `allowed_clients`.
    pub tcp_listen: SocketAddr,
    /// Whether the plain listener runs. Default true; false leaves only the TLS listener.
    pub tcp_plain: bool,
    /// TLS protocol listener (the same frames inside TLS 1.3). None by default.
    pub tls_listen: Option<SocketAddr>,
    /// The TLS listener's certificate chain (PEM). Required with `tls_listen`.
    pub tls_cert: Option<PathBuf>,
    /// The TLS listener's private key (PEM). Required with `tls_listen`.
    pub tls_key: Option<PathBuf>,
    /// CA certificates (PEM): when set, TLS clients must present a certificate they
    /// signed, whose subject names the client. None by default.
    pub client_ca: Option<PathBuf>,
    /// Networks (CIDR) clients may connect from, on both listeners; empty (the default)
    /// allows any, which only loopback listeners may do.
    pub allowed_clients: Vec<IpNet>,
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
    /// What this replica runs: `frontend` (the malware protocol, the HTTP API, accepting
    /// agents' snapshots), `worker` (scoring agents' snapshots from the broker) and `collector`
    /// (watching this host's connections). All three by default; without `--broker` a replica
    /// is always its own front end and worker.
    pub roles: Vec<Role>,
    /// Time from accepting a connection to the first byte of its first request
    /// (and for the TLS handshake). Default 10 s.
    #[serde(with = "humantime_serde")]
    pub first_byte_timeout: Duration,
    /// Most open protocol connections, both listeners together; extra connections
    /// are closed at once. Default 1024.
    pub max_connections: usize,
    /// Most open connections of one client. Default 64.
    pub max_connections_per_client: usize,
    /// Most requests of one client being handled at once. Default 16.
    pub max_requests_per_client: usize,
    /// Requests per second one client may send, on average. Default 50.
    pub client_request_rate: u32,
    /// Requests one client may send at once after a pause. Default 100.
    pub client_request_burst: u32,
    /// Bytes of all the request frames being read at once. Default 512 MiB.
    pub frame_memory_budget: u64,
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
    /// A directory of YARA rules (`*.yar`, `*.yara`) run with every static analysis; none by
    /// default. `--yara-rules`, `SENTINEL_YARA_RULES`. Reloaded with the models (SIGHUP,
    /// `POST /admin/reload`).
    pub yara_rules: Option<PathBuf>,
    /// The longest a YARA scan of one sample may take. Default 10 s.
    #[serde(with = "humantime_serde")]
    pub yara_scan_timeout: Duration,
}

impl Default for ServerSettings {
    fn default() -> ServerSettings {
        let limits = Limits::default();
        ServerSettings {
            tcp_listen: SocketAddr::from(([127, 0, 0, 1], 9500)),
            tcp_plain: true,
            tls_listen: None,
            tls_cert: None,
            tls_key: None,
            client_ca: None,
            allowed_clients: Vec::new(),
            http_listen: None,
            max_field_size: limits.max_field_size,
            max_fields: limits.max_fields,
            max_frame_size: limits.max_frame_size,
            frame_timeout: limits.frame_timeout,
            idle_timeout: limits.idle_timeout,
            first_byte_timeout: Duration::from_secs(10),
            roles: vec![Role::Frontend, Role::Worker, Role::Collector],
            max_connections: 1024,
            max_connections_per_client: 64,
            max_requests_per_client: 16,
            client_request_rate: 50,
            client_request_burst: 100,
            frame_memory_budget: 512 * 1024 * 1024,
            analysis_workers: std::thread::available_parallelism().map_or(1, |cores| cores.get()),
            analysis_queue_wait: Duration::from_secs(10),
            analysis_timeout: Duration::from_secs(120),
            shutdown_timeout: Duration::from_secs(30),
            fusion: FusionSettings::default(),
            yara_rules: None,
            yara_scan_timeout: Duration::from_secs(10),
        }
    }
}

/// A part of what a replica runs (`[server] roles`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Frontend,
    Worker,
    Collector,
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
    #[error(
        "frame_memory_budget ({budget} bytes) is smaller than max_frame_size ({frame} bytes): \
         a maximal request could never be read"
    )]
    BudgetBelowFrame { budget: u64, frame: u64 },
    #[error("no protocol listener: tcp_plain = false and no tls_listen")]
    NoListener,
    #[error(
        "the TLS listener needs a certificate and its key: --tcp-tls-cert and --tcp-tls-key ([server] tls_cert, tls_key)"
    )]
    TlsWithoutCertificate,
    #[error(transparent)]
    Exposure(#[from] ExposureError),
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

    /// The plain listener's address, `None` when it is off.
    pub fn plain_listen(&self) -> Option<SocketAddr> {
        self.tcp_plain.then_some(self.tcp_listen)
    }

    pub fn validate(&self) -> Result<(), SettingsError> {
        self.limits().validate()?;
        if self.roles.is_empty() {
            return Err(SettingsError::Zero("roles (frontend, worker, collector)"));
        }
        for (name, value) in [
            ("max_connections", self.max_connections),
            ("max_connections_per_client", self.max_connections_per_client),
            ("max_requests_per_client", self.max_requests_per_client),
            ("client_request_rate", self.client_request_rate as usize),
            ("client_request_burst", self.client_request_burst as usize),
        ] {
            if value == 0 {
                return Err(SettingsError::Zero(name));
            }
        }
        if self.first_byte_timeout.is_zero() {
            return Err(SettingsError::Zero("first_byte_timeout"));
        }
        if self.frame_memory_budget < self.max_frame_size {
            return Err(SettingsError::BudgetBelowFrame {
                budget: self.frame_memory_budget,
                frame: self.max_frame_size,
            });
        }
        if self.plain_listen().is_none() && self.tls_listen.is_none() {
            return Err(SettingsError::NoListener);
        }
        if self.tls_listen.is_some() && (self.tls_cert.is_none() || self.tls_key.is_none()) {
            return Err(SettingsError::TlsWithoutCertificate);
        }
        exposure::check(
            self.plain_listen(),
            self.tls_listen,
            self.client_ca.is_some(),
            &self.allowed_clients,
        )?;
        if self.analysis_workers == 0 {
            return Err(SettingsError::Zero("analysis_workers"));
        }
        if self.analysis_timeout.is_zero() {
            return Err(SettingsError::Zero("analysis_timeout"));
        }
        if self.yara_scan_timeout.is_zero() {
            return Err(SettingsError::Zero("yara_scan_timeout"));
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

    #[test]
    fn the_defaults_keep_the_plain_port_on_loopback_and_refuse_exposing_it_bare() {
        let defaults = ServerSettings::default();
        assert!(defaults.tcp_listen.ip().is_loopback());
        assert!(defaults.validate().is_ok());
        let exposed: ServerSettings = toml::from_str("tcp_listen = \"0.0.0.0:9500\"\n").unwrap();
        assert!(matches!(exposed.validate(), Err(SettingsError::Exposure(_))));
        let listed: ServerSettings = toml::from_str(
            "tcp_listen = \"0.0.0.0:9500\"\nallowed_clients = [\"10.0.0.0/8\", \"::1/128\"]\n",
        )
        .unwrap();
        assert_eq!(listed.allowed_clients.len(), 2);
        assert!(listed.validate().is_ok());
        assert!(toml::from_str::<ServerSettings>("allowed_clients = [\"10.0.0.0/33\"]\n").is_err());
        let nothing = ServerSettings { tcp_plain: false, ..ServerSettings::default() };
        assert!(matches!(nothing.validate(), Err(SettingsError::NoListener)));
        let tls = ServerSettings { tls_listen: Some(defaults.tcp_listen), ..ServerSettings::default() };
        assert!(matches!(tls.validate(), Err(SettingsError::TlsWithoutCertificate)));
        let small = ServerSettings { frame_memory_budget: 1024, ..ServerSettings::default() };
        assert!(matches!(small.validate(), Err(SettingsError::BudgetBelowFrame { .. })));
    }
}
