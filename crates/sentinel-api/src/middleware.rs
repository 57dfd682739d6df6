//! The middleware every request crosses, assembled in one place ([`stack`]).
//!
//! A request goes through, from the socket inwards:
//!
//! ```text
//! log_requests                the access log: one line per request, routed or not, with the
//!  │                          status and body the client gets (request_log)
//!  │ json_errors              every error answer becomes {"error": "..."} (404, 405 + Allow,
//!  │                          408, 413, axum's rejections), whatever produced it
//!  ├─ routing                 picks the route (or the 404 fallback); what follows runs per route
//!  │   note_route             leaves the matched route's template for the access log
//!  │   time_request           request_duration_seconds{route}: the matched route, or "unmatched"
//!  │    │ access::guard       421 for a foreign Host, 403 for a foreign WebSocket Origin,
//!  │    │                     401/403 by the route's scope (the route is known here),
//!  │    │                     415 for a cross-site form's body; adds the Principal
//!  │    │ timeout             408 when the answer takes longer than [http] request_timeout
//!  │    │  body limit         413 when the body is larger than [http] max_body_bytes
//!  │    │   handler
//! ```
//!
//! The guard leaves the principal and the reason of a refusal in the response for the access
//! log.

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::http::header::{ALLOW, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use axum::middleware::{self, Next};
use axum::response::Response;
use sentinel_transport::AccessLog;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;

use crate::access::{Guard, guard};
use crate::error::ErrorBody;
use crate::metrics::{RequestDurations, time_request};
use crate::request_log::{log_requests, note_route};
use crate::settings::HttpSettings;

/// Wraps `routes` in the stack drawn above.
pub(crate) fn stack(
    routes: Router,
    settings: &HttpSettings,
    durations: RequestDurations,
    access: Guard,
    access_log: AccessLog,
) -> Router {
    // `Router::layer` wraps each route and the fallback, innermost first; there the matched
    // route is known.
    let routes = routes
        .layer(RequestBodyLimitLayer::new(settings.max_body_bytes))
        .layer(TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, settings.request_timeout))
        .layer(middleware::from_fn_with_state(access, guard))
        .layer(middleware::from_fn_with_state(durations, time_request))
        .layer(middleware::from_fn(note_route));
    let limits =
        Limits { max_body_bytes: settings.max_body_bytes, request_timeout: settings.request_timeout };
    // The JSON errors wrap the whole router instead: a 405's `Allow` header is added after the
    // route's layers have run. The access log wraps them: it counts the body the client gets.
    Router::new()
        .fallback_service(routes)
        .layer(middleware::from_fn_with_state(limits, json_errors))
        .layer(middleware::from_fn_with_state(access_log, log_requests))
}

/// The limits named in the messages of 408 and 413.
#[derive(Debug, Clone, Copy)]
struct Limits {
    max_body_bytes: usize,
    request_timeout: Duration,
}

/// Longest error body read back to be wrapped in JSON; axum's own are a line of text.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// Turns an error answered without a JSON body into `{"error": "..."}`, keeping its status and
/// headers (`Allow` on a 405), so that clients always get a message they can parse and show.
async fn json_errors(State(limits): State<Limits>, request: Request, next: Next) -> Response {
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
        StatusCode::REQUEST_TIMEOUT => {
            format!("no answer within {:?} (the listener's request_timeout)", limits.request_timeout)
        }
        StatusCode::PAYLOAD_TOO_LARGE => format!("request body larger than {} bytes", limits.max_body_bytes),
        _ if text.is_empty() => status.canonical_reason().unwrap_or("error").to_owned(),
        _ => text,
    };
    parts.headers.remove(CONTENT_LENGTH);
    parts.headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let body = serde_json::to_vec(&ErrorBody { error: message }).unwrap_or_default();
    Response::from_parts(parts, Body::from(body))
}
