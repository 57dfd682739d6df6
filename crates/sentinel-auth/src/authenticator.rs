//! The one entry point of the HTTP middleware: a bearer credential in, a [`Principal`] or the
//! reason for refusal out. API tokens (`snt_…`) are looked up in the store on a blocking
//! thread; anything else is taken for a JWT when JWTs are configured.

use std::sync::Arc;

use sentinel_store::Store;

use crate::api_token::{ApiTokens, TOKEN_PREFIX};
use crate::error::AuthError;
use crate::jwt::JwtVerifier;
use crate::principal::Principal;

/// Longest credential looked at; longer ones are refused unread.
const MAX_CREDENTIAL_LEN: usize = 8 * 1024;

/// Authenticates bearer credentials: API tokens of the store, and JWTs if configured.
pub struct Authenticator {
    tokens: ApiTokens,
    jwt: Option<JwtVerifier>,
}

impl Authenticator {
    pub fn new(store: Arc<Store>, jwt: Option<JwtVerifier>) -> Authenticator {
        Authenticator { tokens: ApiTokens::new(store), jwt }
    }

    /// Authenticates `credential` (the bearer value, without `Bearer `), off the async threads.
    pub async fn authenticate(self: &Arc<Authenticator>, credential: &str) -> Result<Principal, AuthError> {
        if credential.len() > MAX_CREDENTIAL_LEN {
            return Err(AuthError::Invalid("too long".to_owned()));
        }
        if credential.starts_with(TOKEN_PREFIX) {
            let (authenticator, credential) = (Arc::clone(self), credential.to_owned());
            return tokio::task::spawn_blocking(move || authenticator.authenticate_blocking(&credential))
                .await
                .unwrap_or_else(|error| Err(AuthError::Unavailable(error.to_string())));
        }
        self.authenticate_blocking(credential)
    }

    /// [`Authenticator::authenticate`] on the caller's thread, which may block on the store.
    pub fn authenticate_blocking(&self, credential: &str) -> Result<Principal, AuthError> {
        if credential.len() > MAX_CREDENTIAL_LEN {
            return Err(AuthError::Invalid("too long".to_owned()));
        }
        if credential.starts_with(TOKEN_PREFIX) {
            return self.tokens.verify(credential);
        }
        match &self.jwt {
            Some(jwt) => jwt.verify(credential),
            None => Err(AuthError::Invalid(format!(
                "not an API token ({TOKEN_PREFIX}…), and no JWT key is configured"
            ))),
        }
    }
}
