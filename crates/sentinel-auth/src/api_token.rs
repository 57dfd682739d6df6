//! API tokens: `snt_` and 43 base64url characters, 256 bits from the operating system's random
//! number generator; shown once when made, then kept only as their SHA-256 in the store.
//!
//! A fast unsalted hash is the right tool here, unlike for passwords: a token has 256 bits of
//! entropy, so no dictionary or brute force can invert its hash, and a slow hash (argon2,
//! bcrypt) would cost milliseconds on every request for nothing. The prefix lets secret
//! scanners recognise a leaked token and tells it from a JWT without parsing.
//!
//! Every request looks its token up in the store, so a token revoked by `sentinel token
//! revoke` in another process is refused from the next request on. Its last use is written at
//! most once a minute per token: a durable write per request would cost more than the request.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sentinel_store::{ApiTokenRecord, NewApiToken, Store, StoreError};
use sha2::{Digest, Sha256};

use crate::error::AuthError;
use crate::principal::{Principal, PrincipalKind};
use crate::scope::Scopes;

/// What every API token starts with.
pub const TOKEN_PREFIX: &str = "snt_";

/// Random bytes in a token: 256 bits.
const TOKEN_BYTES: usize = 32;

/// Seconds between two writes of a token's last use.
const LAST_USE_RESOLUTION: i64 = 60;

/// A token in clear, as made: to be shown once. `Debug` does not print it.
pub struct ApiTokenSecret(String);

impl ApiTokenSecret {
    /// The token, to print for the user or to write to a private file.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiTokenSecret {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("ApiTokenSecret(…)")
    }
}

/// Why a token could not be made.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error("the operating system's random number generator failed: {0}")]
    Random(getrandom::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The SHA-256 of a token as the client sends it: what the store keeps and looks up.
pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_secs() as i64)
}

/// Makes a token named `name` with `scopes`, expiring `expires_in` from now (never when
/// `None`), stores its hash and returns it in clear: the only time it exists in clear.
pub fn issue_api_token(
    store: &Store,
    name: &str,
    scopes: Scopes,
    expires_in: Option<Duration>,
) -> Result<(ApiTokenSecret, ApiTokenRecord), IssueError> {
    let mut bytes = [0u8; TOKEN_BYTES];
    getrandom::fill(&mut bytes).map_err(IssueError::Random)?;
    let secret = ApiTokenSecret(format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes)));
    let expires_at =
        expires_in.map(|after| now().saturating_add(i64::try_from(after.as_secs()).unwrap_or(i64::MAX)));
    let record = store.create_api_token(NewApiToken {
        name: name.to_owned(),
        hash: token_hash(secret.expose()),
        scopes: scopes.to_string(),
        expires_at,
    })?;
    Ok((secret, record))
}

/// Checks API tokens against the store.
pub struct ApiTokens {
    store: Arc<Store>,
    /// When each token's last use was last written (unix seconds).
    last_use_written: Mutex<HashMap<i64, i64>>,
}

impl ApiTokens {
    pub fn new(store: Arc<Store>) -> ApiTokens {
        ApiTokens { store, last_use_written: Mutex::default() }
    }

    /// The principal of `token`, or why it is refused. Blocks on one indexed read of the store
    /// (and, once a minute per token, on the write of its last use).
    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let record = self
            .store
            .api_token_by_hash(&token_hash(token))
            .map_err(|error| AuthError::Unavailable(error.to_string()))?
            .ok_or_else(|| AuthError::Invalid("unknown API token".to_owned()))?;
        let now = now();
        if record.revoked_at.is_some() {
            return Err(AuthError::Revoked);
        }
        if record.expires_at.is_some_and(|expires_at| now >= expires_at) {
            return Err(AuthError::Expired);
        }
        // Scopes written by an older or newer build: unknown names give nothing.
        let scopes = Scopes::from_known_names(record.scopes.split_whitespace());
        self.note_use(record.id, now);
        Ok(Principal { kind: PrincipalKind::Token { name: record.name, id: record.id }, scopes })
    }

    fn note_use(&self, id: i64, now: i64) {
        let due = {
            let mut written = self.last_use_written.lock().unwrap_or_else(PoisonError::into_inner);
            let due = written.get(&id).is_none_or(|&last| now - last >= LAST_USE_RESOLUTION);
            if due {
                written.insert(id, now);
            }
            due
        };
        if due && let Err(error) = self.store.record_api_token_use(id, now) {
            tracing::warn!(%error, token_id = id, "cannot record the API token's last use");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scope::Scope;
    use sentinel_store::StoreSettings;

    #[test]
    fn a_token_is_random_prefixed_stored_as_its_hash_and_refused_once_revoked_or_expired() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path(), StoreSettings::default()).unwrap());
        let (secret, record) = issue_api_token(&store, "ci", Scope::NetworkRead.into(), None).unwrap();
        let token = secret.expose();
        assert!(token.starts_with(TOKEN_PREFIX));
        assert_eq!(URL_SAFE_NO_PAD.decode(&token[TOKEN_PREFIX.len()..]).unwrap().len(), 32);
        assert!(!format!("{secret:?}").contains(&token[TOKEN_PREFIX.len()..]));
        let (other, _) = issue_api_token(&store, "other", Scope::Admin.into(), None).unwrap();
        assert_ne!(other.expose(), token);

        let tokens = ApiTokens::new(Arc::clone(&store));
        let principal = tokens.verify(token).unwrap();
        assert_eq!(principal.kind, PrincipalKind::Token { name: "ci".to_owned(), id: record.id });
        assert!(principal.may(Scope::NetworkRead) && !principal.may(Scope::NetworkTrain));
        assert!(store.api_tokens().unwrap()[0].last_used.is_some());
        assert!(matches!(tokens.verify("snt_nothing"), Err(AuthError::Invalid(_))));

        store.revoke_api_token("ci").unwrap();
        assert_eq!(tokens.verify(token), Err(AuthError::Revoked));
        let (expired, _) = issue_api_token(&store, "old", Scope::Admin.into(), Some(Duration::ZERO)).unwrap();
        assert_eq!(tokens.verify(expired.expose()), Err(AuthError::Expired));
    }
}
