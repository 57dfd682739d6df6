//! Who may use which route: the middleware that runs after routing ([`guard`]), in this order:
//!
//! 1. `Host` names this server, else 421;
//! 2. a WebSocket upgrade's `Origin` is allowed, else 403;
//! 3. the route's requirement: open (`/healthz`, `/readyz`, `/api/v1/openapi.json`, the
//!    dashboard's page and files, and `/metrics` when open), a valid credential of any scope
//!    (`/api/v1/whoami`), or a scope, which needs a valid credential (else 401 with
//!    `WWW-Authenticate: Bearer`, RFC 6750) holding that scope (else 403). A request that
//!    matched no route or method still needs a valid credential, so that only callers who may
//!    use the API learn which routes exist;
//! 4. a state-changing request is not a cross-site form's (else 415). A route documented as
//!    taking `multipart/form-data` (file uploads) accepts that body from a request with an
//!    `Authorization` header: a page of another site cannot add one to a form, and cannot send
//!    it by script either, since the preflight it needs gets no CORS answer.
//!
//! The [`Principal`] is put in the request's extensions for the layers and handlers inside;
//! the principal's name and the reason of a refusal are left in the response for the access log.
//! `request_checks` holds the header checks themselves.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sentinel_auth::{AuthError, AuthSettings, Authenticator, MetricsAccess, Principal, Scope};

use crate::dashboard;
use crate::error::ApiError;
use crate::request_checks::{self, Credential};
use crate::request_log::{RequestNote, principal_label};
use crate::routes::{MULTIPART_FORM, RouteScope};
use crate::whoami;

/// How the listener decides who may call it: handed to [`crate::ApiBuilder::new`].
pub struct Access {
    authenticator: Option<Arc<Authenticator>>,
    metrics: MetricsAccess,
    allowed_origins: Vec<String>,
}

impl Access {
    /// Every route but the open ones needs a credential `authenticator` accepts.
    pub fn authenticated(authenticator: Arc<Authenticator>, settings: &AuthSettings) -> Access {
        Access {
            authenticator: Some(authenticator),
            metrics: settings.metrics,
            allowed_origins: settings.allowed_origins.clone(),
        }
    }

    /// No credential is asked for: whoever reaches the listener may do anything. For a listener
    /// on a loopback address only (`sentinel serve` refuses anything else) and for tests. The
    /// `Host`, `Origin` and form checks still apply.
    pub fn unauthenticated(settings: &AuthSettings) -> Access {
        Access {
            authenticator: None,
            metrics: MetricsAccess::Open,
            allowed_origins: settings.allowed_origins.clone(),
        }
    }
}

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Requirement {
    Open,
    /// A valid credential, whatever its scopes.
    Authenticated,
    Scope(Scope),
}

/// The state of [`guard`].
#[derive(Clone)]
pub(crate) struct Guard {
    authenticator: Option<Arc<Authenticator>>,
    requirements: Arc<HashMap<(Method, String), Requirement>>,
    /// The routes that take `multipart/form-data` uploads.
    multipart_routes: Arc<HashSet<(Method, String)>>,
    allowed_origins: Arc<[String]>,
    server_names: Arc<[String]>,
}

/// The paths of this crate's own routes that need no credential.
const OPEN_PATHS: [&str; 5] =
    ["/healthz", "/readyz", "/api/v1/openapi.json", dashboard::PAGE_PATH, dashboard::ASSET_PATH];

impl Guard {
    /// The guard of a listener on `loopback` or not, serving the services' routes `scopes`.
    pub(crate) fn new(
        access: Access,
        scopes: &[RouteScope],
        server_names: &[String],
        loopback: bool,
    ) -> Guard {
        let mut requirements: HashMap<(Method, String), Requirement> = scopes
            .iter()
            .map(|route| ((route.method.clone(), route.path.clone()), Requirement::Scope(route.scope)))
            .collect();
        for path in OPEN_PATHS {
            requirements.insert((Method::GET, path.to_owned()), Requirement::Open);
        }
        requirements.insert((Method::GET, whoami::PATH.to_owned()), Requirement::Authenticated);
        let metrics_open = match access.metrics {
            MetricsAccess::Open => true,
            MetricsAccess::Loopback => loopback,
            MetricsAccess::Protected => false,
        };
        let metrics = if metrics_open { Requirement::Open } else { Requirement::Scope(Scope::MetricsRead) };
        requirements.insert((Method::GET, "/metrics".to_owned()), metrics);
        let multipart_routes = scopes
            .iter()
            .filter(|route| route.takes_multipart)
            .map(|route| (route.method.clone(), route.path.clone()))
            .collect();
        Guard {
            authenticator: access.authenticator,
            requirements: Arc::new(requirements),
            multipart_routes: Arc::new(multipart_routes),
            allowed_origins: access.allowed_origins.into(),
            server_names: server_names.into(),
        }
    }

    /// What the route matched by `request` needs; `None` for no route or no such method.
    fn requirement(&self, request: &Request) -> Option<Requirement> {
        let path = request.extensions().get::<MatchedPath>()?.as_str();
        // axum answers HEAD with the GET handler.
        let method = if request.method() == Method::HEAD { Method::GET } else { request.method().clone() };
        self.requirements.get(&(method, path.to_owned())).copied()
    }

    /// Whether `request`, whose body is a form's of type `media_type`, is an upload its route
    /// takes: `multipart/form-data` to a route documented so, with an `Authorization` header.
    fn is_upload(&self, request: &Request, media_type: &str) -> bool {
        let Some(path) = request.extensions().get::<MatchedPath>() else { return false };
        media_type == MULTIPART_FORM
            && request.headers().contains_key(AUTHORIZATION)
            && self.multipart_routes.contains(&(request.method().clone(), path.as_str().to_owned()))
    }
}

/// The middleware (see the module documentation).
pub(crate) async fn guard(State(guard): State<Guard>, mut request: Request, next: Next) -> Response {
    let host = request_checks::host(request.headers(), request.uri());
    if !host.as_deref().is_some_and(|host| request_checks::host_allowed(host, &guard.server_names)) {
        let message = match &host {
            Some(host) => format!("Host {host:?} is not a name of this server ([http] server_names)"),
            None => "the request has no Host".to_owned(),
        };
        return refused(
            ApiError::new(StatusCode::MISDIRECTED_REQUEST, message).into_response(),
            None,
            "unknown_host",
        );
    }
    if request_checks::is_websocket_upgrade(request.headers())
        && !request_checks::origin_allowed(request.headers(), host.as_deref(), &guard.allowed_origins)
    {
        let error = ApiError::new(
            StatusCode::FORBIDDEN,
            "this Origin may not open the WebSocket ([auth] allowed_origins)",
        );
        return refused(error.into_response(), None, "origin_not_allowed");
    }
    let requirement = guard.requirement(&request);
    let mut label = None;
    if let (Some(authenticator), false) = (&guard.authenticator, requirement == Some(Requirement::Open)) {
        // Owned: the request (not `Sync`) must not be borrowed across the lookup's await.
        let credential = match request_checks::credential(request.headers()) {
            Credential::Bearer(credential) => Ok(credential.to_owned()),
            Credential::Missing => Err(Credential::Missing),
            Credential::Malformed => Err(Credential::Malformed),
        };
        let principal = match authenticate(authenticator, credential).await {
            Ok(principal) => principal,
            Err(refusal) => return refusal,
        };
        label = Some(principal_label(&principal));
        if let Some(Requirement::Scope(scope)) = requirement
            && !principal.may(scope)
        {
            return refused(insufficient_scope(&principal, scope), label, "insufficient_scope");
        }
        request.extensions_mut().insert(principal);
    }
    if let Some(media_type) = request_checks::form_content(request.method(), request.headers())
        && !guard.is_upload(&request, &media_type)
    {
        let message = format!(
            "a {} body with Content-Type {media_type} is refused (a cross-site form could send it): send application/json",
            request.method()
        );
        let error = ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, message);
        return refused(error.into_response(), label, "form_content");
    }
    let mut response = next.run(request).await;
    response.extensions_mut().insert(RequestNote { principal: label, reason: None });
    response
}

/// `response`, noting for the access log who was refused (when known) and why.
fn refused(mut response: Response, principal: Option<String>, reason: &'static str) -> Response {
    response.extensions_mut().insert(RequestNote { principal, reason: Some(reason) });
    response
}

/// The request's principal, or the 401 (503 when the token store cannot be read) to answer.
async fn authenticate(
    authenticator: &Arc<Authenticator>,
    credential: Result<String, Credential<'static>>,
) -> Result<Principal, Response> {
    let credential = match credential {
        Ok(credential) => credential,
        Err(Credential::Malformed) => {
            let message = "the Authorization header is not `Bearer TOKEN`";
            let response = unauthorized(message, Some(("invalid_request", message)));
            return Err(refused(response, None, "invalid_request"));
        }
        Err(_) => {
            let response = unauthorized("a bearer token is required (Authorization: Bearer TOKEN)", None);
            return Err(refused(response, None, "missing_token"));
        }
    };
    authenticator.authenticate(&credential).await.map_err(|error| match error {
        AuthError::Unavailable(_) => {
            tracing::error!(%error, "cannot authenticate a request");
            let response =
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "credentials cannot be checked now: retry")
                    .into_response();
            refused(response, None, "credentials_unavailable")
        }
        _ => {
            let message = error.to_string();
            refused(unauthorized(&message, Some(("invalid_token", &message))), None, "invalid_token")
        }
    })
}

/// 401 with `WWW-Authenticate: Bearer realm="sentinel"`, and RFC 6750's `error` and
/// `error_description` when a credential was sent.
fn unauthorized(message: &str, error: Option<(&str, &str)>) -> Response {
    let challenge = match error {
        Some((code, description)) => {
            format!(
                "Bearer realm=\"sentinel\", error=\"{code}\", error_description=\"{}\"",
                quoted(description)
            )
        }
        None => "Bearer realm=\"sentinel\"".to_owned(),
    };
    with_challenge(ApiError::new(StatusCode::UNAUTHORIZED, message), &challenge)
}

/// 403 naming the scope needed, with RFC 6750's `insufficient_scope`.
fn insufficient_scope(principal: &Principal, scope: Scope) -> Response {
    let message = format!("{principal} lacks scope {scope}, which this route needs");
    let challenge = format!("Bearer realm=\"sentinel\", error=\"insufficient_scope\", scope=\"{scope}\"");
    with_challenge(ApiError::new(StatusCode::FORBIDDEN, message), &challenge)
}

fn with_challenge(error: ApiError, challenge: &str) -> Response {
    let mut response = error.into_response();
    if let Ok(value) = HeaderValue::from_str(challenge) {
        response.headers_mut().insert(WWW_AUTHENTICATE, value);
    }
    response
}

/// `text` fit for a quoted string of a header: no quotes, backslashes or control characters.
fn quoted(text: &str) -> String {
    text.chars().map(|c| if c == '"' || c == '\\' || c.is_control() { '\'' } else { c }).collect()
}
