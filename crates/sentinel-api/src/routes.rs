//! What a service contributes to the listener: its routes, each one documented.
//!
//! [`ServiceRoutes`] only takes what `utoipa_axum::routes!` makes of handlers annotated with
//! `#[utoipa::path]`, so a route cannot reach the listener without its entry in the OpenAPI
//! document: the document is built from the same values as the router.

use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouter};

/// The documented routes of one service, with the state of type `S` they still need.
pub struct ServiceRoutes<S = ()>(OpenApiRouter<S>);

impl<S: Clone + Send + Sync + 'static> ServiceRoutes<S> {
    pub fn new() -> ServiceRoutes<S> {
        ServiceRoutes(OpenApiRouter::default())
    }

    /// Adds the handlers of one `utoipa_axum::routes!(handler, ...)`: their paths and methods,
    /// and their documentation. A path and method served twice makes axum panic when the
    /// routes are added, at start-up.
    pub fn routes(self, routes: UtoipaMethodRouter<S>) -> ServiceRoutes<S> {
        ServiceRoutes(self.0.routes(routes))
    }

    /// Gives the routes the state they need.
    pub fn with_state<S2>(self, state: S) -> ServiceRoutes<S2> {
        ServiceRoutes(self.0.with_state(state))
    }

    pub(crate) fn into_inner(self) -> OpenApiRouter<S> {
        self.0
    }
}

impl<S: Clone + Send + Sync + 'static> Default for ServiceRoutes<S> {
    fn default() -> ServiceRoutes<S> {
        ServiceRoutes::new()
    }
}
