//! What a service contributes to the listener: its routes, each one documented and each one
//! declaring the one scope a caller needs.
//!
//! [`ServiceRoutes`] only takes what `utoipa_axum::routes!` makes of handlers annotated with
//! `#[utoipa::path]`, so a route cannot reach the listener without its entry in the OpenAPI
//! document: the document is built from the same values as the router. The scope is read from
//! the same annotation, `security(("bearer" = ["network:train"]))`: a handler without exactly
//! one known scope makes [`ServiceRoutes::routes`] panic. A panic rather than an error: the
//! routes are fixed at compile time, so this is a programming error that every test and every
//! start of the server meets at once, never something a user's input can cause.
//!
//! The same document says which routes take file uploads: a route whose request body may be
//! `multipart/form-data` accepts that form body from callers that send an `Authorization`
//! header (see `access`), where every other route refuses it as a cross-site form's.

use axum::http::Method;
use sentinel_auth::Scope;
use serde_json::Value;
use utoipa::openapi::RefOr;
use utoipa::openapi::path::{Operation, PathItem, Paths};
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouter};

/// The name of the security scheme of the OpenAPI document (`Authorization: Bearer …`).
pub const BEARER_SCHEME: &str = "bearer";

/// A route and the scope it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteScope {
    pub method: Method,
    /// The path template, as axum matches it (`/api/v1/train/{job}`).
    pub path: String,
    pub scope: Scope,
    /// Whether the route's documented request body may be `multipart/form-data` (file uploads).
    pub takes_multipart: bool,
}

/// The media type of file uploads from HTML forms and `curl -F`.
pub(crate) const MULTIPART_FORM: &str = "multipart/form-data";

/// The documented routes of one service, with the state of type `S` they still need.
pub struct ServiceRoutes<S = ()> {
    router: OpenApiRouter<S>,
    scopes: Vec<RouteScope>,
}

impl<S: Clone + Send + Sync + 'static> ServiceRoutes<S> {
    pub fn new() -> ServiceRoutes<S> {
        ServiceRoutes { router: OpenApiRouter::default(), scopes: Vec::new() }
    }

    /// Adds the handlers of one `utoipa_axum::routes!(handler, ...)`: their paths and methods,
    /// their documentation and their scopes. Panics when an operation does not declare exactly
    /// one known scope (see the module documentation); a path and method served twice makes
    /// axum panic when the routes are added, at start-up.
    pub fn routes(mut self, routes: UtoipaMethodRouter<S>) -> ServiceRoutes<S> {
        self.scopes.extend(declared_scopes(&routes.1).unwrap_or_else(|message| panic!("{message}")));
        ServiceRoutes { router: self.router.routes(routes), scopes: self.scopes }
    }

    /// Gives the routes the state they need.
    pub fn with_state<S2>(self, state: S) -> ServiceRoutes<S2> {
        ServiceRoutes { router: self.router.with_state(state), scopes: self.scopes }
    }

    pub(crate) fn into_parts(self) -> (OpenApiRouter<S>, Vec<RouteScope>) {
        (self.router, self.scopes)
    }
}

impl<S: Clone + Send + Sync + 'static> Default for ServiceRoutes<S> {
    fn default() -> ServiceRoutes<S> {
        ServiceRoutes::new()
    }
}

/// The operations of `item`, by method.
fn operations(item: &PathItem) -> impl Iterator<Item = (Method, &Operation)> {
    [
        (Method::GET, &item.get),
        (Method::PUT, &item.put),
        (Method::POST, &item.post),
        (Method::DELETE, &item.delete),
        (Method::OPTIONS, &item.options),
        (Method::HEAD, &item.head),
        (Method::PATCH, &item.patch),
        (Method::TRACE, &item.trace),
    ]
    .into_iter()
    .filter_map(|(method, operation)| operation.as_ref().map(|operation| (method, operation)))
}

/// The scope of every operation of `paths`, or what is wrong with the first that has none.
pub(crate) fn declared_scopes(paths: &Paths) -> Result<Vec<RouteScope>, String> {
    let mut scopes = Vec::new();
    for (path, item) in &paths.paths {
        for (method, operation) in operations(item) {
            let scope = operation_scope(operation)
                .map_err(|problem| format!("route {method} {path}: {problem}; every route declares `security((\"{BEARER_SCHEME}\" = [\"SCOPE\"]))` with one scope in its #[utoipa::path]"))?;
            let takes_multipart = matches!(
                &operation.request_body,
                Some(RefOr::T(body)) if body.content.keys().any(|media_type| media_type == MULTIPART_FORM)
            );
            scopes.push(RouteScope { method, path: path.clone(), scope, takes_multipart });
        }
    }
    Ok(scopes)
}

/// The one scope `operation` declares: its security must be exactly one requirement naming the
/// bearer scheme with exactly one known scope.
fn operation_scope(operation: &Operation) -> Result<Scope, String> {
    let requirements = operation.security.as_deref().unwrap_or_default();
    let [requirement] = requirements else {
        return Err(format!("{} security requirements instead of one", requirements.len()));
    };
    // The requirement's map is private: read it as the document shows it.
    let value = serde_json::to_value(requirement).map_err(|error| error.to_string())?;
    let names = match value.as_object().map(|object| object.iter().collect::<Vec<_>>()).as_deref() {
        Some([(scheme, Value::Array(names))]) if scheme.as_str() == BEARER_SCHEME => names.clone(),
        _ => return Err(format!("security {value} is not one `{BEARER_SCHEME}` requirement")),
    };
    match names.as_slice() {
        [Value::String(name)] => name.parse().map_err(|error: sentinel_auth::UnknownScope| error.to_string()),
        _ => Err(format!("{} scopes instead of one", names.len())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use utoipa_axum::routes;

    #[utoipa::path(get, path = "/scoped", security(("bearer" = ["network:read"])), responses((status = 200)))]
    async fn scoped() {}

    #[utoipa::path(post, path = "/upload", security(("bearer" = ["malware:scan"])),
        request_body(content(("application/octet-stream"), ("multipart/form-data"))), responses((status = 200)))]
    async fn upload() {}

    #[utoipa::path(post, path = "/bare", responses((status = 200)))]
    async fn bare() {}

    #[utoipa::path(get, path = "/two", security(("bearer" = ["network:read", "admin"])), responses((status = 200)))]
    async fn two() {}

    #[utoipa::path(get, path = "/unknown", security(("bearer" = ["network:write"])), responses((status = 200)))]
    async fn unknown() {}

    #[test]
    fn each_route_must_declare_exactly_one_known_scope() {
        let routes: UtoipaMethodRouter = routes!(scoped);
        let declared = declared_scopes(&routes.1).unwrap();
        assert_eq!(
            declared,
            [RouteScope {
                method: Method::GET,
                path: "/scoped".to_owned(),
                scope: Scope::NetworkRead,
                takes_multipart: false
            }]
        );
        let bare: UtoipaMethodRouter = routes!(bare);
        assert!(declared_scopes(&bare.1).unwrap_err().contains("route POST /bare: 0 security"));
        let two: UtoipaMethodRouter = routes!(two);
        assert!(declared_scopes(&two.1).unwrap_err().contains("2 scopes"));
        let upload: UtoipaMethodRouter = routes!(upload);
        assert!(declared_scopes(&upload.1).unwrap()[0].takes_multipart);
        let unknown: UtoipaMethodRouter = routes!(unknown);
        assert!(declared_scopes(&unknown.1).unwrap_err().contains("unknown scope \"network:write\""));
    }

    #[test]
    #[should_panic(expected = "route POST /bare")]
    fn a_route_without_scope_cannot_be_added() {
        let _ = ServiceRoutes::<()>::new().routes(routes!(bare));
    }
}
