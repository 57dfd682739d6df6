//! Assembles the listener's router from what each service contributes: documented routes
//! ([`ServiceRoutes`]), readiness checks and metrics, plus this crate's own routes (`/healthz`,
//! `/readyz`, `/metrics`, `/api/v1/openapi.json`, `/api/v1/whoami`, and the dashboard's page,
//! which alone is not in the OpenAPI document), all inside the middleware stack of
//! `middleware`, guarded as [`Access`] says. The OpenAPI document is built from the same routes
//! as the router, and so is the table of the scope each route needs.

use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use prometheus_client::registry::Registry;
use sentinel_transport::AccessLog;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{InfoBuilder, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::access::{Access, Guard};
use crate::dashboard;
use crate::health::{self, ReadinessCheck};
use crate::metrics;
use crate::middleware;
use crate::routes::{BEARER_SCHEME, RouteScope, ServiceRoutes};
use crate::settings::HttpSettings;
use crate::whoami;

/// Collects the services' contributions before the listener serves.
pub struct ApiBuilder {
    settings: HttpSettings,
    access: Access,
    services: OpenApiRouter,
    scopes: Vec<RouteScope>,
    checks: Vec<Box<dyn ReadinessCheck>>,
    registry: Registry,
    access_log: AccessLog,
}

/// The assembled router and the OpenAPI document describing it.
pub struct Api {
    router: Router,
    openapi: OpenApi,
    scopes: Vec<RouteScope>,
}

/// The document as served, written once when the router is built.
type OpenApiJson = Arc<OnceLock<String>>;

impl ApiBuilder {
    /// A builder for a listener with `settings`, letting callers in as `access` says.
    pub fn new(settings: HttpSettings, access: Access) -> ApiBuilder {
        ApiBuilder {
            settings,
            access,
            services: OpenApiRouter::default(),
            scopes: Vec::new(),
            checks: Vec::new(),
            registry: Registry::default(),
            access_log: AccessLog::off(),
        }
    }

    /// Writes one line per request to `log` (default: no access log).
    pub fn access_log(mut self, log: AccessLog) -> ApiBuilder {
        self.access_log = log;
        self
    }

    /// Adds a service's routes. Paths must not clash with another service's (axum panics).
    pub fn service(mut self, routes: ServiceRoutes) -> ApiBuilder {
        let (router, scopes) = routes.into_parts();
        self.services = self.services.merge(router);
        self.scopes.extend(scopes);
        self
    }

    /// Adds a check that `/readyz` runs.
    pub fn readiness(mut self, check: impl ReadinessCheck) -> ApiBuilder {
        self.checks.push(Box::new(check));
        self
    }

    /// The process's Prometheus registry, where services register their metrics.
    pub fn metrics(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// The router with every route inside the middleware stack, and its OpenAPI document.
    pub fn build(self) -> Api {
        let ApiBuilder { settings, access, services, scopes, checks, mut registry, access_log } = self;
        let durations = metrics::register_own(&mut registry);
        let openapi_json: OpenApiJson = Arc::default();
        let own = OpenApiRouter::default()
            .merge(OpenApiRouter::default().routes(routes!(health::healthz)))
            .merge(OpenApiRouter::default().routes(routes!(health::readyz)).with_state(Arc::new(checks)))
            .merge(OpenApiRouter::default().routes(routes!(metrics::serve)).with_state(Arc::new(registry)))
            .merge(OpenApiRouter::default().routes(routes!(openapi)).with_state(Arc::clone(&openapi_json)))
            .merge(OpenApiRouter::default().routes(routes!(whoami::whoami)));
        let (routes, mut document) = own.merge(services).split_for_parts();
        let routes = routes.merge(dashboard::router());
        document.info = InfoBuilder::new()
            .title("Sentinel")
            .version(env!("CARGO_PKG_VERSION"))
            .description(Some(
                "The HTTP API of one `sentinel serve` process: health, metrics, the malware \
                 server's status and reloads, and the network AI service. Every error is \
                 JSON `{\"error\": \"...\"}`. Every route but /healthz, /readyz, this document \
                 and (when open) /metrics needs a bearer token holding the one scope the \
                 route's `security` names (`admin` holds them all; /api/v1/whoami takes any \
                 valid token); see docs/security.md. The operator dashboard, at `/`, is a page \
                 calling these routes with the token it is given.",
            ))
            .build();
        let bearer = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some(
                "An API token (`sentinel token create`) or a JWT of the configured identity provider.",
            ))
            .build();
        document
            .components
            .get_or_insert_default()
            .add_security_scheme(BEARER_SCHEME, SecurityScheme::Http(bearer));
        let text = document.to_json().unwrap_or_else(|error| {
            tracing::error!(%error, "the OpenAPI document could not be written");
            "{}".to_owned()
        });
        let _ = openapi_json.set(text);
        let guard = Guard::new(access, &scopes, &settings.server_names, settings.listen.ip().is_loopback());
        Api {
            router: middleware::stack(routes, &settings, durations, guard, access_log),
            openapi: document,
            scopes,
        }
    }
}

impl Api {
    /// The router to serve (see [`crate::HttpListener::serve`]).
    pub fn router(&self) -> Router {
        self.router.clone()
    }

    /// The OpenAPI document of every route of [`Api::router`].
    pub fn openapi(&self) -> &OpenApi {
        &self.openapi
    }

    /// The scope each service route needs (this crate's own routes are not listed: they are
    /// open, but `/metrics`, which needs `metrics:read` unless open).
    pub fn route_scopes(&self) -> &[RouteScope] {
        &self.scopes
    }
}

/// This document: every route of the listener, generated from the handlers.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "health", responses(
    (status = 200, description = "OpenAPI 3.1 document", content_type = "application/json", body = Object),
))]
async fn openapi(State(document): State<OpenApiJson>) -> Response {
    let text = document.get().cloned().unwrap_or_else(|| "{}".to_owned());
    ([(CONTENT_TYPE, "application/json")], text).into_response()
}
