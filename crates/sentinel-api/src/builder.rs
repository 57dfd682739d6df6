//! Assembles the listener's router from what each service contributes: documented routes
//! ([`ServiceRoutes`]), readiness checks and metrics, plus this crate's own routes (`/healthz`,
//! `/readyz`, `/metrics`, `/api/v1/openapi.json`), all inside the middleware stack of
//! `middleware`. The OpenAPI document is built from the same routes as the router.

use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use prometheus_client::registry::Registry;
use utoipa::openapi::{InfoBuilder, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::health::{self, ReadinessCheck};
use crate::metrics;
use crate::middleware;
use crate::routes::ServiceRoutes;
use crate::settings::HttpSettings;

/// Collects the services' contributions before the listener serves.
pub struct ApiBuilder {
    settings: HttpSettings,
    services: OpenApiRouter,
    checks: Vec<Box<dyn ReadinessCheck>>,
    registry: Registry,
}

/// The assembled router and the OpenAPI document describing it.
pub struct Api {
    router: Router,
    openapi: OpenApi,
}

/// The document as served, written once when the router is built.
type OpenApiJson = Arc<OnceLock<String>>;

impl ApiBuilder {
    pub fn new(settings: HttpSettings) -> ApiBuilder {
        ApiBuilder {
            settings,
            services: OpenApiRouter::default(),
            checks: Vec::new(),
            registry: Registry::default(),
        }
    }

    /// Adds a service's routes. Paths must not clash with another service's (axum panics).
    pub fn service(mut self, routes: ServiceRoutes) -> ApiBuilder {
        self.services = self.services.merge(routes.into_inner());
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
        let ApiBuilder { settings, services, checks, mut registry } = self;
        let durations = metrics::register_own(&mut registry);
        let openapi_json: OpenApiJson = Arc::default();
        let own = OpenApiRouter::default()
            .merge(OpenApiRouter::default().routes(routes!(health::healthz)))
            .merge(OpenApiRouter::default().routes(routes!(health::readyz)).with_state(Arc::new(checks)))
            .merge(OpenApiRouter::default().routes(routes!(metrics::serve)).with_state(Arc::new(registry)))
            .merge(OpenApiRouter::default().routes(routes!(openapi)).with_state(Arc::clone(&openapi_json)));
        let (routes, mut document) = own.merge(services).split_for_parts();
        document.info = InfoBuilder::new()
            .title("Sentinel")
            .version(env!("CARGO_PKG_VERSION"))
            .description(Some(
                "The HTTP API of one `sentinel serve` process: health, metrics, the malware \
                 server's status and reloads, and the network AI service. Every error is \
                 JSON `{\"error\": \"...\"}`.",
            ))
            .build();
        let text = document.to_json().unwrap_or_else(|error| {
            tracing::error!(%error, "the OpenAPI document could not be written");
            "{}".to_owned()
        });
        let _ = openapi_json.set(text);
        Api { router: middleware::stack(routes, &settings, durations), openapi: document }
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
}

/// This document: every route of the listener, generated from the handlers.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "health", responses(
    (status = 200, description = "OpenAPI 3.1 document", content_type = "application/json", body = Object),
))]
async fn openapi(State(document): State<OpenApiJson>) -> Response {
    let text = document.get().cloned().unwrap_or_else(|| "{}".to_owned());
    ([(CONTENT_TYPE, "application/json")], text).into_response()
}
