//! The HTTP listener: liveness, readiness, status counters, Prometheus metrics
//! and the model reload endpoint, plus the routes other parts of the service
//! add (the network API). It has no authentication yet, which is why it listens
//! on 127.0.0.1 by default.
//!
//! Every error it answers is JSON `{"error": "..."}`, including axum's own
//! answers to an unknown route (404), a wrong method (405) or a rejected
//! request, which are otherwise empty or plain text.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::http::header::{ALLOW, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use serde_json::{Value, json};

use crate::metrics::{self, Metrics, MetricsWriter};
use crate::server::Shared;
use crate::status::StatusReport;

/// What other parts of the service add to the listener: routes, and lines for `/metrics`.
#[derive(Default)]
pub(crate) struct Extension {
    pub routes: Router,
    pub metrics: Vec<MetricsWriter>,
}

impl std::fmt::Debug for Extension {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("Extension").field("metrics", &self.metrics.len()).finish_non_exhaustive()
    }
}

pub(crate) fn router(shared: Arc<Shared>, extension: Extension) -> Router {
    let metrics = Arc::new(Metrics::new(Arc::clone(&shared), extension.metrics));
    let routes = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .route("/admin/reload", post(reload))
        .with_state(shared)
        .merge(extension.routes)
        .route("/metrics", get(metrics::serve).with_state(Arc::clone(&metrics)))
        // A layer wraps each route (where the matched route is known) and the fallback.
        .layer(middleware::from_fn_with_state(metrics, metrics::time_request));
    // The JSON errors wrap the whole router instead: a 405's `Allow` header is added after the
    // route's layers have run.
    Router::new().fallback_service(routes).layer(middleware::from_fn(json_errors))
}

/// The process answers: it is alive.
async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// Ready to serve: models are loaded and the store accepts writes (every
/// request writes, so a read-only store means every request would fail).
async fn readyz(State(shared): State<Arc<Shared>>) -> (StatusCode, Json<Value>) {
    let models = shared.analyser.models.current();
    let store = Arc::clone(&shared.analyser.store);
    let writable =
        tokio::task::spawn_blocking(move || store.is_writable().map_err(|error| error.to_string()))
            .await
            .unwrap_or_else(|_| Err("the store check failed".to_owned()));
    let body = |ready: bool, store: Value| {
        json!({
            "ready": ready,
            "static_model": models.static_model.version(),
            "behaviour_model": models.behaviour_model.version(),
            "store": store,
        })
    };
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
            Json(json!({
                "static_model": models.static_model.version(),
                "source": models.static_source,
                "behaviour_model": models.behaviour_model.version(),
                "behaviour_source": models.behaviour_source,
            })),
        ),
        Err(error) => {
            tracing::warn!(%error, "model reload failed");
            (StatusCode::INTERNAL_SERVER_ERROR, Json(json!({ "error": error.to_string() })))
        }
    }
}

/// Longest error body read back to be wrapped in JSON; axum's own are a line of text.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// Turns an error answered without a JSON body into `{"error": "..."}`, keeping its status and
/// headers (`Allow` on a 405), so that clients always get a message they can parse and show.
async fn json_errors(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, MAX_ERROR_BODY)
        .await
        .map(|bytes| String::from_utf8_lossy(&bytes).trim().to_owned())
        .unwrap_or_default();
    let message = match status {
        StatusCode::NOT_FOUND => format!("no route {path}"),
        StatusCode::METHOD_NOT_ALLOWED => {
            let allowed = parts.headers.get(ALLOW).and_then(|value| value.to_str().ok()).unwrap_or("");
            format!("method {method} is not allowed on {path} (allowed: {allowed})")
        }
        _ if text.is_empty() => status.canonical_reason().unwrap_or("error").to_owned(),
        _ => text,
    };
    parts.headers.remove(CONTENT_LENGTH);
    parts.headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Response::from_parts(parts, Body::from(json!({ "error": message }).to_string()))
}
