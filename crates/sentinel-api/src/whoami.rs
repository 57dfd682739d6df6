//! `GET /api/v1/whoami`: who the caller's credential says it is and which scopes it holds, so
//! that a client (the dashboard) can offer what the token allows and say what it does not,
//! rather than learning it from 403s. Any valid credential may ask: the route needs no scope,
//! and tells the caller nothing it did not already hold.

use axum::Json;
use axum::extract::Extension;
use sentinel_auth::{Principal, Scope};
use serde::Serialize;
use utoipa::ToSchema;

/// The route's path.
pub(crate) const PATH: &str = "/api/v1/whoami";

/// The caller, as the listener sees it.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Identity {
    /// `token:NAME#ID` or `jwt:SUBJECT`; `null` on a listener that asks for no credential.
    principal: Option<String>,
    /// The scopes held (`admin` grants every other one). On a listener that asks for no
    /// credential, `["admin"]`: whoever connects may do anything.
    scopes: Vec<&'static str>,
}

/// Who the bearer token belongs to and the scopes it holds.
#[utoipa::path(get, path = "/api/v1/whoami", tag = "health", security(("bearer" = [])), responses(
    (status = 200, body = Identity),
    (status = 401, description = "no valid credential", body = crate::ErrorBody),
))]
pub(crate) async fn whoami(principal: Option<Extension<Principal>>) -> Json<Identity> {
    Json(match principal {
        Some(Extension(principal)) => Identity {
            principal: Some(crate::principal_label(&principal)),
            scopes: principal.scopes.iter().map(Scope::as_str).collect(),
        },
        None => Identity { principal: None, scopes: vec![Scope::Admin.as_str()] },
    })
}
