//! `[auth]` settings: whether the HTTP API requires credentials (yes by default), who may read
//! `/metrics`, the origins allowed to open the WebSocket, and how JWTs are checked
//! (`[auth.jwt]`). Documented in `docs/security.md`.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// Settings of authentication on the HTTP API.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// Require a bearer credential on every route but `/healthz`, `/readyz`,
    /// `/api/v1/openapi.json` (and `/metrics` when open). Default true; `sentinel serve` refuses
    /// `false` unless every listener is on a loopback address.
    pub enabled: bool,
    /// Who may read `/metrics`. Default `loopback`.
    pub metrics: MetricsAccess,
    /// Origins (`https://console.example:8443`) whose pages may open the WebSocket. Default
    /// empty: only pages of the same origin (the `Origin` host and port equal to `Host`).
    /// Clients that send no `Origin` (not browsers) are not concerned.
    pub allowed_origins: Vec<String>,
    pub jwt: JwtSettings,
}

impl Default for AuthSettings {
    fn default() -> AuthSettings {
        AuthSettings {
            enabled: true,
            metrics: MetricsAccess::Loopback,
            allowed_origins: Vec::new(),
            jwt: JwtSettings::default(),
        }
    }
}

/// Who may read `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MetricsAccess {
    /// Open while the HTTP listener is on a loopback address, else as `protected`.
    Loopback,
    /// Open to whoever reaches the listener (a scraper without credentials).
    Open,
    /// Needs a credential with scope `metrics:read`.
    Protected,
}

/// `[auth.jwt]`: JWT bearer tokens from an identity provider. Off while no key is configured.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JwtSettings {
    /// File holding the HS256 shared secret (at least 32 bytes; trailing white space ignored).
    /// The secret may instead come from the environment variable `SENTINEL_JWT_HS256_SECRET`;
    /// it is never written in the configuration file. Default none.
    pub hs256_secret_file: Option<PathBuf>,
    /// PEM files of Ed25519 public keys accepted for EdDSA tokens. Default none.
    pub eddsa_public_keys: Vec<PathBuf>,
    /// PEM files of RSA public keys accepted for RS256 tokens. Default none.
    pub rs256_public_keys: Vec<PathBuf>,
    /// Required `aud` (one of the token's audiences). Default none: not checked, which accepts
    /// tokens the provider made for other services; set it.
    pub audience: Option<String>,
    /// Required `iss`. Default none: not checked.
    pub issuer: Option<String>,
    /// Clock difference tolerated on `exp` and `nbf`. Default 30 s.
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
    /// The claim holding the scopes: a space-separated string (OAuth `scope`) or an array of
    /// strings. Default `scope`.
    pub scope_claim: String,
}

impl Default for JwtSettings {
    fn default() -> JwtSettings {
        JwtSettings {
            hs256_secret_file: None,
            eddsa_public_keys: Vec::new(),
            rs256_public_keys: Vec::new(),
            audience: None,
            issuer: None,
            leeway: Duration::from_secs(30),
            scope_claim: "scope".to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_secure_and_unknown_keys_are_refused() {
        let settings: AuthSettings = toml::from_str("").unwrap();
        assert!(settings.enabled);
        assert_eq!(settings.metrics, MetricsAccess::Loopback);
        let settings: AuthSettings =
            toml::from_str("metrics = \"protected\"\n[jwt]\naudience = \"sentinel\"\nleeway = \"5s\"\n")
                .unwrap();
        assert_eq!(settings.metrics, MetricsAccess::Protected);
        assert_eq!(settings.jwt.leeway, Duration::from_secs(5));
        assert!(toml::from_str::<AuthSettings>("enable = false\n").is_err());
        assert!(toml::from_str::<AuthSettings>("[jwt]\nhs256_secret = \"x\"\n").is_err());
    }
}
