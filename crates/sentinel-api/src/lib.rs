//! The HTTP API of a `sentinel serve` process: one listener for every service.
//!
//! Each service contributes documented routes ([`ServiceRoutes`], built only from handlers
//! annotated with `#[utoipa::path]`), readiness checks ([`ReadinessCheck`]) and metrics (in
//! the one Prometheus registry, [`ApiBuilder::metrics`]); [`ApiBuilder::build`] assembles them
//! with this crate's own routes — `/healthz`, `/readyz`, `/metrics`, `/api/v1/openapi.json` —
//! inside one middleware stack (body limit, timeout, request metrics, JSON errors, and the
//! places where authentication and the access log will go: see `middleware`), and
//! [`HttpListener`] serves the result.
//!
//! This crate knows no service: services depend on it, never the reverse.

mod builder;
mod error;
mod health;
mod listener;
mod metrics;
mod middleware;
mod routes;
mod settings;

pub use builder::{Api, ApiBuilder};
pub use error::{ApiError, ErrorBody};
pub use health::{Readiness, ReadinessCheck, ReadinessFuture};
pub use listener::{HttpListener, ListenerError};
/// The metrics library services register their metrics with.
pub use prometheus_client;
pub use routes::ServiceRoutes;
pub use settings::{DEFAULT_LISTEN, HttpSettings, SettingsError};
