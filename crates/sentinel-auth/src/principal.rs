//! Who made a request, once authenticated: the credential's kind and name (never the secret),
//! and the scopes it holds. The HTTP middleware puts it in the request's extensions, where the
//! access log and handlers find it.

use std::fmt;

use crate::scope::{Scope, Scopes};

/// What kind of credential authenticated the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrincipalKind {
    /// An API token of the store (`sentinel token create`).
    Token { name: String, id: i64 },
    /// A JWT from an identity provider; `subject` is its `sub` claim (empty when absent).
    Jwt { subject: String },
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub kind: PrincipalKind,
    pub scopes: Scopes,
}

impl Principal {
    /// Whether the caller may use a route that needs `scope`.
    pub fn may(&self, scope: Scope) -> bool {
        self.scopes.grants(scope)
    }
}

/// `token:NAME` or `jwt:SUBJECT`, for logs.
impl fmt::Display for Principal {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            PrincipalKind::Token { name, .. } => write!(formatter, "token:{name}"),
            PrincipalKind::Jwt { subject } => write!(formatter, "jwt:{subject}"),
        }
    }
}
