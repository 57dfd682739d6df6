//! The HTTP API of a `sentinel serve` process: one listener for every service.
//!
//! Each service contributes documented routes ([`ServiceRoutes`], built only from handlers
//! annotated with `#[utoipa::path]`), readiness checks ([`ReadinessCheck`]) and metrics (in
//! the one Prometheus registry, [`ApiBuilder::metrics`]); [`ApiBuilder::build`] assembles them
//! with this crate's own routes — `/healthz`, `/readyz`, `/metrics`, `/api/v1/openapi.json`,
//! `/api/v1/whoami` and the operator dashboard at `/` (see `dashboard`) —
//! inside one middleware stack (body limit, timeout, request metrics, JSON errors, access
//! control by each route's scope, and the access log: see `middleware`, `access` and
//! `request_log`), and [`HttpListener`] serves the result, over TLS 1.3 when given a
//! certificate, within caps on connections in all and per client and deadlines for silent
//! clients.
//!
//! This crate knows no service: services depend on it, never the reverse.

mod access;
mod builder;
mod connection;
mod connection_limits;
mod dashboard;
mod error;
mod health;
mod listener;
mod metrics;
mod middleware;
mod request_checks;
mod request_log;
mod routes;
mod settings;
mod whoami;

pub use access::Access;

pub use builder::{Api, ApiBuilder};
pub use error::{ApiError, ErrorBody};
pub use health::{Readiness, ReadinessCheck, ReadinessFuture};
pub use listener::{HttpListener, ListenerError};
/// The metrics library services register their metrics with.
pub use prometheus_client;
pub use request_checks::WEBSOCKET_BEARER_PROTOCOL;
pub use request_log::{Caller, principal_label};
pub use routes::{BEARER_SCHEME, RouteScope, ServiceRoutes};
/// Scopes, principals and the authenticator the listener is handed.
pub use sentinel_auth;
pub use settings::{DEFAULT_LISTEN, HttpSettings, SettingsError};
