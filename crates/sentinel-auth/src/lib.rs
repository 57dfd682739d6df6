//! Who may call Sentinel's HTTP API, and for what.
//!
//! - [`Scope`]s: one per kind of route (`network:train`, `admin`, …); `admin` grants all.
//! - API tokens ([`issue_api_token`], [`ApiTokens`]): random, shown once, kept in the store as
//!   hashes with a name, scopes, expiry, last use and revocation.
//! - JWTs from an identity provider ([`JwtVerifier`]): HS256, EdDSA, RS256.
//! - [`Authenticator`]: either kind of bearer credential in, a [`Principal`] out.
//! - [`AuthSettings`]: the `[auth]` table.
//!
//! The HTTP layer (`sentinel-api`) depends on this crate, never the reverse.

mod api_token;
mod authenticator;
mod error;
mod jwt;
mod principal;
mod scope;
mod settings;

pub use api_token::{ApiTokenSecret, ApiTokens, IssueError, TOKEN_PREFIX, issue_api_token, token_hash};
pub use authenticator::Authenticator;
pub use error::AuthError;
pub use jwt::{HS256_SECRET_ENV, JwtSettingsError, JwtVerifier};
pub use principal::{Principal, PrincipalKind};
pub use scope::{Scope, Scopes, UnknownScope};
pub use settings::{AuthSettings, JwtSettings, MetricsAccess};
