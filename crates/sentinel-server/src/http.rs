//! The HTTP listener: liveness, readiness, status counters and the model
//! reload endpoint. It has no authentication yet, which is why it listens on
//! 127.0.0.1 by default.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use serde_json::{Value, json};

use crate::server::Shared;
use crate::status::StatusReport;

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .route("/admin/reload", post(reload))
        .with_state(shared)
}

/// The process answers: it is alive.
async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// Ready to serve: models are loaded and the store accepts writes (every
/// request writes, so a read-only store means every request would fail).
async fn readyz(State(shared): State<Arc<Shared>>) -> (StatusCode, Json<Value>) {
    let models = shared.analyser.registry.current();
    let store = Arc::clone(&shared.analyser.store);
    let writable =
        tokio::task::spawn_blocking(move || store.is_writable().map_err(|error| error.to_string()))
            .await
            .unwrap_or_else(|_| Err("the store check failed".to_owned()));
    let body = |ready: bool, store: Value| json!({ "ready": ready, "static_model": models.static_model.version(), "store": store });
    match writable {
        Ok(()) => (StatusCode::OK, Json(body(true, json!("writable")))),
        Err(error) => (StatusCode::SERVICE_UNAVAILABLE, Json(body(false, json!(error)))),
    }
}

async fn status(State(shared): State<Arc<Shared>>) -> Json<StatusReport> {
    Json(shared.report())
}

/// Reloads the models from the data directory; on failure the models in
/// service stay, and the error says why.
async fn reload(State(shared): State<Arc<Shared>>) -> (StatusCode, Json<Value>) {
    match shared.reload().await {
        Ok(models) => (
            StatusCode::OK,
            Json(json!({ "static_model": models.static_model.version(), "source": models.static_source })),
        ),
        Err(error) => {
            tracing::warn!(%error, "model reload failed");
            (StatusCode::INTERNAL_SERVER_ERROR, Json(json!({ "error": error.to_string() })))
        }
    }
}
