//! The malware server's part of the HTTP API: `GET /status` (the counters of `status`),
//! `POST /admin/reload` (models from the data directory), and the readiness check of
//! `/readyz` (models loaded, store writable). The listener, its middleware and `/healthz`,
//! `/readyz` and `/metrics` themselves are `sentinel-api`'s.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use sentinel_api::{ApiError, Readiness, ReadinessFuture, ServiceRoutes};
use serde::Serialize;
use serde_json::{Map, Value, json};
use utoipa::ToSchema;
use utoipa_axum::routes;

use crate::state::Shared;
use crate::status::StatusReport;

/// The routes, documented for the OpenAPI document.
pub(crate) fn routes(shared: Arc<Shared>) -> ServiceRoutes {
    ServiceRoutes::new().routes(routes!(status)).routes(routes!(reload)).with_state(shared)
}

/// Ready to serve: models are loaded and the store accepts writes (every request writes, so a
/// read-only store means every request would fail). Adds `static_model`, `behaviour_model` and
/// `store` to the `/readyz` answer.
pub(crate) fn readiness(shared: Arc<Shared>) -> impl Fn() -> ReadinessFuture + Send + Sync + 'static {
    move || {
        let shared = Arc::clone(&shared);
        Box::pin(async move {
            let models = shared.analyser.models.current();
            let store = Arc::clone(&shared.analyser.store);
            let writable =
                tokio::task::spawn_blocking(move || store.is_writable().map_err(|error| error.to_string()))
                    .await
                    .unwrap_or_else(|_| Err("the store check failed".to_owned()));
            let mut details = Map::new();
            details.insert("static_model".to_owned(), json!(models.static_model.version()));
            details.insert("behaviour_model".to_owned(), json!(models.behaviour_model.version()));
            let ready = writable.is_ok();
            details.insert("store".to_owned(), writable.map_or_else(Value::String, |()| json!("writable")));
            Readiness { ready, details }
        })
    }
}

/// The malware server's counters: connections, requests by command and outcome, reloads, the
/// models in service and the VirusTotal step's counters (`docs/protocol.md`, "Status").
#[utoipa::path(get, path = "/status", tag = "malware server", responses(
    (status = 200, description = "the counters", content_type = "application/json", body = Object),
))]
async fn status(State(shared): State<Arc<Shared>>) -> Json<StatusReport> {
    Json(shared.report())
}

/// The models in service after a reload.
#[derive(Serialize, ToSchema)]
struct Reloaded {
    static_model: String,
    /// Where the static model came from (a file path, or `builtin`).
    source: String,
    behaviour_model: String,
    behaviour_source: String,
}

/// Reloads the models from the data directory; on failure the models in service stay, and the
/// error says why.
#[utoipa::path(post, path = "/admin/reload", tag = "malware server", responses(
    (status = 200, description = "the models now in service", body = Reloaded),
    (status = 500, description = "the reload failed; the models in service stay", body = sentinel_api::ErrorBody),
))]
async fn reload(State(shared): State<Arc<Shared>>) -> Result<Json<Reloaded>, ApiError> {
    match shared.reload().await {
        Ok(models) => Ok(Json(Reloaded {
            static_model: models.static_model.version().to_owned(),
            source: models.static_source.clone(),
            behaviour_model: models.behaviour_model.version().to_owned(),
            behaviour_source: models.behaviour_source.clone(),
        })),
        Err(error) => {
            tracing::warn!(%error, "model reload failed");
            Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, error.to_string()))
        }
    }
}
