//! Why a credential was refused. Messages name the reason and never the credential: they are
//! sent to the client (RFC 6750 `error_description`) and may be logged.

/// A bearer credential that does not authenticate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Not an API token nor a JWT this server accepts.
    #[error("the bearer token is not valid: {0}")]
    Invalid(String),
    #[error("the bearer token has expired")]
    Expired,
    #[error("the bearer token has been revoked")]
    Revoked,
    /// The token store could not be read: the request cannot be authenticated now.
    #[error("the token store cannot be read: {0}")]
    Unavailable(String),
}
