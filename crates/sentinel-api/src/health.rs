//! Liveness (`GET /healthz`: the process answers) and readiness (`GET /readyz`: every service
//! says it can serve). Services contribute [`ReadinessCheck`]s; the answer merges what each
//! reports, so the malware server's `static_model`, `behaviour_model` and `store` fields sit
//! beside `ready`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

/// What one service says about its readiness.
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    pub ready: bool,
    /// Fields added to the `/readyz` answer (model versions, the store's state, …).
    pub details: Map<String, Value>,
}

/// The future a readiness check returns.
pub type ReadinessFuture = Pin<Box<dyn Future<Output = Readiness> + Send>>;

/// A check run on every `GET /readyz`.
pub trait ReadinessCheck: Send + Sync + 'static {
    fn check(&self) -> ReadinessFuture;
}

impl<F, Fut> ReadinessCheck for F
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Readiness> + Send + 'static,
{
    fn check(&self) -> ReadinessFuture {
        Box::pin(self())
    }
}

/// The checks `/readyz` runs.
pub(crate) type ReadinessChecks = Arc<Vec<Box<dyn ReadinessCheck>>>;

/// The answer of `/healthz`.
#[derive(Serialize, ToSchema)]
pub(crate) struct Liveness {
    /// Always `ok`.
    status: &'static str,
}

/// The answer of `/readyz`: `ready`, and the fields each service adds.
#[derive(Serialize, ToSchema)]
pub(crate) struct ReadinessBody {
    ready: bool,
    /// The malware server adds `static_model`, `behaviour_model` (versions) and `store`
    /// (`writable`, or why it is not).
    #[serde(flatten)]
    #[schema(value_type = Object)]
    details: Map<String, Value>,
}

/// The process answers: it is alive.
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, body = Liveness)))]
pub(crate) async fn healthz() -> Json<Liveness> {
    Json(Liveness { status: "ok" })
}

/// Every service is ready to serve.
#[utoipa::path(get, path = "/readyz", tag = "health", responses(
    (status = 200, description = "ready", body = ReadinessBody),
    (status = 503, description = "a service is not ready; its fields say why", body = ReadinessBody),
))]
pub(crate) async fn readyz(State(checks): State<ReadinessChecks>) -> (StatusCode, Json<ReadinessBody>) {
    let mut ready = true;
    let mut details = Map::new();
    for check in checks.iter() {
        let readiness = check.check().await;
        ready &= readiness.ready;
        details.extend(readiness.details);
    }
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(ReadinessBody { ready, details }))
}
