//! JWT bearer tokens from an identity provider: HS256 with a shared secret, EdDSA (Ed25519) and
//! RS256 with the provider's public keys. The token's header names its algorithm; only the
//! algorithms with a configured key are accepted (so no `none`, and no HS256 token signed with
//! a public key). `exp` is required; `aud` and `iss` are required and checked when configured;
//! the scopes are read from a configurable claim, keeping only Sentinel's names.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

use crate::error::AuthError;
use crate::principal::{Principal, PrincipalKind};
use crate::scope::Scopes;
use crate::settings::JwtSettings;

/// The environment variable that may hold the HS256 secret instead of a file.
pub const HS256_SECRET_ENV: &str = "SENTINEL_JWT_HS256_SECRET";

/// Shortest HS256 secret accepted: the size of the hash's output, below which the secret is
/// easier to guess than the signature.
const MIN_SECRET_BYTES: usize = 32;

/// Why `[auth.jwt]` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum JwtSettingsError {
    #[error("[auth.jwt] cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("[auth.jwt] {} is not a {kind} public key in PEM: {reason}", path.display())]
    Key { path: PathBuf, kind: &'static str, reason: String },
    #[error("[auth.jwt] the HS256 secret has {0} bytes; at least {MIN_SECRET_BYTES} are needed")]
    ShortSecret(usize),
    #[error("[auth.jwt] the HS256 secret cannot be used: {0}")]
    Secret(String),
    #[error("[auth.jwt] both hs256_secret_file and {HS256_SECRET_ENV} are set: keep one")]
    TwoSecrets,
}

/// Checks JWTs against the configured keys.
pub struct JwtVerifier {
    keys: Vec<(Algorithm, DecodingKey)>,
    settings: JwtSettings,
}

impl JwtVerifier {
    /// The verifier `settings` describe, with the HS256 secret of the environment if any;
    /// `None` when no key is configured (JWTs are then refused).
    pub fn from_settings(
        settings: &JwtSettings,
        secret_from_env: Option<&str>,
    ) -> Result<Option<JwtVerifier>, JwtSettingsError> {
        let mut keys = Vec::new();
        let secret = match (&settings.hs256_secret_file, secret_from_env) {
            (Some(_), Some(_)) => return Err(JwtSettingsError::TwoSecrets),
            (Some(path), None) => Some(read(path)?.trim_ascii_end().to_vec()),
            (None, Some(secret)) => Some(secret.trim_end().as_bytes().to_vec()),
            (None, None) => None,
        };
        if let Some(secret) = secret {
            if secret.len() < MIN_SECRET_BYTES {
                return Err(JwtSettingsError::ShortSecret(secret.len()));
            }
            let key = DecodingKey::from_secret(&secret)
                .map_err(|error| JwtSettingsError::Secret(error.to_string()))?;
            keys.push((Algorithm::HS256, key));
        }
        for path in &settings.eddsa_public_keys {
            let key = DecodingKey::from_ed_pem(&read(path)?).map_err(|error| JwtSettingsError::Key {
                path: path.clone(),
                kind: "Ed25519",
                reason: error.to_string(),
            })?;
            keys.push((Algorithm::EdDSA, key));
        }
        for path in &settings.rs256_public_keys {
            let key = DecodingKey::from_rsa_pem(&read(path)?).map_err(|error| JwtSettingsError::Key {
                path: path.clone(),
                kind: "RSA",
                reason: error.to_string(),
            })?;
            keys.push((Algorithm::RS256, key));
        }
        if keys.is_empty() {
            return Ok(None);
        }
        Ok(Some(JwtVerifier { keys, settings: settings.clone() }))
    }

    fn validation(&self, algorithm: Algorithm) -> Validation {
        let mut validation = Validation::new(algorithm);
        validation.leeway = self.settings.leeway.as_secs();
        let mut required = vec!["exp"];
        match &self.settings.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            // Otherwise a token carrying an `aud` would be refused for it.
            None => validation.validate_aud = false,
        }
        if let Some(issuer) = &self.settings.issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        validation
    }

    /// The principal of `token`, or why it is refused.
    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|_| AuthError::Invalid("not a JWT".to_owned()))?;
        let validation = self.validation(header.alg);
        let mut refusal = AuthError::Invalid(format!("no key configured for algorithm {:?}", header.alg));
        for (_, key) in self.keys.iter().filter(|(algorithm, _)| *algorithm == header.alg) {
            match jsonwebtoken::decode::<HashMap<String, Value>>(token, key, &validation) {
                Ok(data) => return Ok(self.principal(&data.claims)),
                Err(error) => {
                    refusal = match error.kind() {
                        ErrorKind::ExpiredSignature => return Err(AuthError::Expired),
                        ErrorKind::InvalidSignature => AuthError::Invalid("bad signature".to_owned()),
                        ErrorKind::InvalidAudience => return Err(invalid("wrong audience (aud)")),
                        ErrorKind::InvalidIssuer => return Err(invalid("wrong issuer (iss)")),
                        ErrorKind::ImmatureSignature => return Err(invalid("not valid yet (nbf)")),
                        ErrorKind::MissingRequiredClaim(claim) => {
                            return Err(AuthError::Invalid(format!("claim {claim} is missing")));
                        }
                        ErrorKind::InvalidClaimFormat(claim) => {
                            return Err(AuthError::Invalid(format!("claim {claim} has a wrong type")));
                        }
                        _ => AuthError::Invalid("malformed JWT".to_owned()),
                    }
                }
            }
        }
        Err(refusal)
    }

    fn principal(&self, claims: &HashMap<String, Value>) -> Principal {
        let scopes = match claims.get(&self.settings.scope_claim) {
            Some(Value::String(list)) => Scopes::from_known_names(list.split_whitespace()),
            Some(Value::Array(names)) => Scopes::from_known_names(names.iter().filter_map(Value::as_str)),
            _ => Scopes::default(),
        };
        let subject = claims.get("sub").and_then(Value::as_str).unwrap_or_default().to_owned();
        Principal { kind: PrincipalKind::Jwt { subject }, scopes }
    }
}

fn invalid(reason: &str) -> AuthError {
    AuthError::Invalid(reason.to_owned())
}

fn read(path: &Path) -> Result<Vec<u8>, JwtSettingsError> {
    std::fs::read(path).map_err(|source| JwtSettingsError::Read { path: path.to_owned(), source })
}
