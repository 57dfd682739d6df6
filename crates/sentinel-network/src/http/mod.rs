//! The HTTP and WebSocket API of the network service: the routes it contributes to the
//! process's listener (`sentinel-api`), each documented in the OpenAPI document by its
//! `#[utoipa::path]`.
//!
//! Bodies are read and parsed here rather than by axum's extractors so that every client error
//! is JSON `{"error": "..."}` naming what was wrong, by one rule on every route:
//! 400 for a body that is not JSON, not the documented shape (a wrong type, an unknown or
//! missing field) or holds a value out of range (naming the item: `records[3]: ...`); 413 for a
//! body over `api.max_body_bytes` or a batch over `api.max_batch_items`; 503 when the service
//! is at capacity (`api.max_items_in_flight` items being analysed, a full ingestion queue).
//!
//! `analyze` holds the batch route, `feedback` analysts' labels; this module the others, the
//! shared state and body reading.

mod analyze;
mod feedback;

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use sentinel_api::sentinel_auth::{Principal, Scope};
use sentinel_api::{ApiError, Caller, ErrorBody, ServiceRoutes};
use sentinel_store::NewAuditEvent;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::Semaphore;
use tokio::sync::broadcast::error::RecvError;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::routes;

use crate::saved_model::ModelVersion;
use crate::service::{DetectionResult, NetworkService, StorageError, TrainError};
use sentinel_privacy::Pseudonymiser;

/// What the handlers share: the service, one permit per item of the analyses in flight and one
/// per WebSocket subscriber.
#[derive(Clone)]
struct NetworkApi {
    service: Arc<NetworkService>,
    items_in_flight: Arc<Semaphore>,
    subscribers: Arc<Semaphore>,
}

/// The routes of the network service, for the process's HTTP listener.
pub fn router(service: Arc<NetworkService>) -> ServiceRoutes {
    let items_in_flight = Arc::new(Semaphore::new(service.settings().api.max_items_in_flight));
    let subscribers = Arc::new(Semaphore::new(service.settings().api.max_websocket_subscribers));
    ServiceRoutes::new()
        .routes(routes!(analyze::analyze))
        .routes(routes!(ingest))
        .routes(routes!(train))
        .routes(routes!(job, cancel_job))
        .routes(routes!(status))
        .routes(routes!(rollback))
        .routes(routes!(recent))
        .routes(routes!(feedback::feedback))
        .routes(routes!(realtime))
        .with_state(NetworkApi { service, items_in_flight, subscribers })
}

fn store_error(error: StorageError) -> ApiError {
    match error {
        StorageError::NoSuchVersion(_) => ApiError::new(StatusCode::NOT_FOUND, error.to_string()),
        _ => {
            tracing::error!(%error, "network store");
            ApiError::internal(error.to_string())
        }
    }
}

fn train_error(error: TrainError) -> ApiError {
    let status = match error {
        TrainError::AlreadyRunning(_) | TrainError::Finished(_) => StatusCode::CONFLICT,
        TrainError::NoSuchJob(_) => StatusCode::NOT_FOUND,
    };
    ApiError::new(status, error.to_string())
}

/// Reads the whole body up to the configured limit.
async fn read_body(service: &NetworkService, body: Body) -> Result<Bytes, ApiError> {
    let limit = service.settings().api.max_body_bytes;
    axum::body::to_bytes(body, limit).await.map_err(|_| {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("request body larger than {limit} bytes"))
    })
}

/// A body that is not JSON or not the documented shape: 400, with serde's message (which names
/// the field, the line and the column).
fn parse_json<'de, T: Deserialize<'de>>(bytes: &'de [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|error| ApiError::bad_request(format!("invalid JSON body: {error}")))
}

/// An empty or blank body, which the routes whose body is optional read as `{}`.
fn is_blank(bytes: &[u8]) -> bool {
    bytes.iter().all(u8::is_ascii_whitespace)
}

/// The answer of an accepted snapshot.
#[derive(Serialize, ToSchema)]
struct Accepted {
    accepted_connections: usize,
}

/// Posts a snapshot from a remote agent (`sentinel agent`, the Windows endpoint application):
/// its connections are tracked per host, scored, streamed and stored.
#[utoipa::path(post, path = "/api/v1/ingest", tag = "network", security(("bearer" = ["network:ingest"])),
    request_body(content = Object, description = "a Snapshot: {schema_version, host, timestamp, connections: [ConnectionRecord…]}"),
    responses(
        (status = 202, body = Accepted),
        (status = 400, description = "not JSON, not a snapshot, or a record out of range: fix it, do not resend", body = ErrorBody),
        (status = 413, description = "body over api.max_body_bytes", body = ErrorBody),
        (status = 503, description = "the ingestion queue is full, or the broker did not store the snapshot (scale-out mode): retry later", body = ErrorBody),
))]
async fn ingest(State(api): State<NetworkApi>, body: Body) -> Result<Response, ApiError> {
    let service = api.service;
    let bytes = read_body(&service, body).await?;
    let limits = service.settings().api.validation_limits();
    let snapshot = sentinel_netmon::Snapshot::from_json(&bytes, &limits)
        .map_err(|error| ApiError::bad_request(error.to_string()))?;
    let connections = snapshot.connections.len();
    let accepted = service.accept(snapshot).await.map_err(store_error)?;
    if !accepted {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the analysis pipeline or its broker is busy or unavailable: retry the snapshot later",
        ));
    }
    Ok((StatusCode::ACCEPTED, axum::Json(Accepted { accepted_connections: connections })).into_response())
}

/// Starts a training job from stored history. The body is optional; when present it must be a
/// JSON object (no options yet).
#[utoipa::path(post, path = "/api/v1/train", tag = "network", security(("bearer" = ["network:train"])),
    request_body(content = Option<Object>, description = "optional, `{}`"),
    responses(
        (status = 202, description = "the job: id, state, stage, progress", content_type = "application/json", body = Object),
        (status = 400, description = "the body is not a JSON object", body = ErrorBody),
        (status = 409, description = "a training job is already running", body = ErrorBody),
))]
async fn train(State(api): State<NetworkApi>, caller: Caller, body: Body) -> Result<Response, ApiError> {
    let bytes = read_body(&api.service, body).await?;
    if !is_blank(&bytes) {
        let _: serde_json::Map<String, serde_json::Value> = parse_json(&bytes)?;
    }
    let started = api.service.train("api");
    let event = match &started {
        Ok(job) => audit_event(&caller, "model.train", Some(format!("network job {}", job.id)), "accepted"),
        Err(error) => {
            audit_event(&caller, "model.train", None, "refused").with_detail("error", error.to_string())
        }
    };
    api.service.audit(event).await;
    let job = started.map_err(train_error)?;
    Ok((StatusCode::ACCEPTED, axum::Json(job.report())).into_response())
}

/// An administrative action of the network model by `caller`, for the audit table.
fn audit_event(caller: &Caller, action: &str, target: Option<String>, outcome: &str) -> NewAuditEvent {
    NewAuditEvent::new(caller.principal_name(), action, target, outcome, caller.client.clone())
        .with_detail("model", "network")
}

fn job_id(raw: &str) -> Result<u64, ApiError> {
    raw.parse().map_err(|_| ApiError::bad_request(format!("job id {raw:?} is not a number")))
}

/// Progress of a training job.
#[utoipa::path(get, path = "/api/v1/train/{job}", tag = "network", security(("bearer" = ["network:read"])),
    params(("job" = u64, Path, description = "the job's id")),
    responses(
        (status = 200, description = "the job: id, state, stage, progress", content_type = "application/json", body = Object),
        (status = 400, description = "the id is not a number", body = ErrorBody),
        (status = 404, description = "no such job", body = ErrorBody),
))]
async fn job(State(api): State<NetworkApi>, Path(raw): Path<String>) -> Result<Response, ApiError> {
    Ok(axum::Json(api.service.job(job_id(&raw)?).map_err(train_error)?).into_response())
}

/// Cancels a running training job (it stops at its next stage).
#[utoipa::path(delete, path = "/api/v1/train/{job}", tag = "network", security(("bearer" = ["network:train"])),
    params(("job" = u64, Path, description = "the job's id")),
    responses(
        (status = 202, description = "the job, cancelling", content_type = "application/json", body = Object),
        (status = 400, description = "the id is not a number", body = ErrorBody),
        (status = 404, description = "no such job", body = ErrorBody),
        (status = 409, description = "the job has finished", body = ErrorBody),
))]
async fn cancel_job(State(api): State<NetworkApi>, Path(raw): Path<String>) -> Result<Response, ApiError> {
    let job = api.service.cancel_job(job_id(&raw)?).map_err(train_error)?;
    Ok((StatusCode::ACCEPTED, axum::Json(job)).into_response())
}

/// Model status: learning / training / ready, the active version, when and on how much data it
/// was trained, metrics, thresholds, warm-up progress, stored versions, collector and storage
/// counters.
#[utoipa::path(get, path = "/api/v1/models/status", tag = "network", security(("bearer" = ["network:read"])), responses(
    (status = 200, content_type = "application/json", body = Object),
))]
async fn status(State(api): State<NetworkApi>) -> Result<Response, ApiError> {
    Ok(axum::Json(api.service.status().await.map_err(store_error)?).into_response())
}

/// The body of a rollback; empty means the version before the active one.
#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
struct RollbackRequest {
    /// The stored version to make active.
    version: Option<i64>,
}

/// The version active after a rollback.
#[derive(Serialize, ToSchema)]
struct Active {
    /// The stored version now active: its number, when and on how many rows it was trained.
    #[schema(value_type = Object)]
    active: ModelVersion,
}

/// Makes a stored model version active (default: the version before the active one).
#[utoipa::path(post, path = "/api/v1/models/rollback", tag = "network", security(("bearer" = ["network:train"])),
    request_body(content = Option<RollbackRequest>),
    responses(
        (status = 200, body = Active),
        (status = 400, description = "not JSON or not the documented shape", body = ErrorBody),
        (status = 404, description = "no such version", body = ErrorBody),
))]
async fn rollback(State(api): State<NetworkApi>, caller: Caller, body: Body) -> Result<Response, ApiError> {
    let bytes = read_body(&api.service, body).await?;
    let request: RollbackRequest =
        if is_blank(&bytes) { RollbackRequest::default() } else { parse_json(&bytes)? };
    let rolled_back = api.service.rollback(request.version).await;
    let asked = request.version.map_or_else(|| "previous".to_owned(), |version| version.to_string());
    let event = match &rolled_back {
        Ok(version) => {
            audit_event(&caller, "model.rollback", Some(format!("network version {}", version.version)), "ok")
                .with_detail("asked", asked)
        }
        Err(error) => audit_event(&caller, "model.rollback", None, "failed")
            .with_detail("asked", asked)
            .with_detail("error", error.to_string()),
    };
    api.service.audit(event).await;
    let version = rolled_back.map_err(store_error)?;
    Ok(axum::Json(Active { active: version }).into_response())
}

/// Filters of `/ws/realtime` and `/api/v1/predictions/recent`.
#[derive(Debug, Deserialize, Default, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ResultFilter {
    /// Only results of this process name.
    process: Option<String>,
    /// Only results whose ensemble score is at least this.
    min_score: Option<f64>,
    /// Only anomalies.
    #[serde(default)]
    anomalies_only: bool,
    /// Only results whose remote address is this: the address, or its pseudonym as callers
    /// without `network:pii` see it (the pseudonym is computed from the address given).
    remote: Option<String>,
    /// At most this many results (recent only; the newest; default 100).
    limit: Option<usize>,
}

impl ResultFilter {
    fn accepts(&self, result: &DetectionResult, addresses: &Pseudonymiser) -> bool {
        self.process.as_deref().is_none_or(|process| result.process_name() == Some(process))
            && self.min_score.is_none_or(|min| result.verdict.score >= min)
            && (!self.anomalies_only || result.verdict.is_anomaly)
            && self.remote.as_deref().is_none_or(|remote| {
                result.connection.as_ref().is_some_and(|connection| connection.remote_is(remote, addresses))
            })
    }
}

/// Whether a caller sees clear addresses: it holds `network:pii` (or `admin`), or the listener
/// asks for no credential at all (loopback only: whoever connects may do anything). Others see
/// the form addresses are stored in.
fn sees_clear_addresses(principal: Option<&Principal>) -> bool {
    principal.is_none_or(|principal| principal.may(Scope::NetworkPii))
}

fn filter_from(
    query: Result<Query<ResultFilter>, axum::extract::rejection::QueryRejection>,
) -> Result<ResultFilter, ApiError> {
    let Query(filter) = query
        .map_err(|rejection| ApiError::bad_request(format!("invalid query: {}", rejection.body_text())))?;
    if filter.min_score.is_some_and(|min| !min.is_finite()) {
        return Err(ApiError::bad_request("min_score must be a finite number"));
    }
    Ok(filter)
}

/// Recent results of live and ingested connections, kept in memory (newest last). Their
/// addresses are clear for a caller holding `network:pii`, else in their stored form.
#[utoipa::path(get, path = "/api/v1/predictions/recent", tag = "network", security(("bearer" = ["network:read"])), params(ResultFilter), responses(
    (status = 200, description = "`{\"results\": [Result…]}`; a Result is the verdict with `source`, `observed_at`, `model_version` and `connection` (its `local` and `remote` pseudonymised unless the caller holds `network:pii`)", content_type = "application/json", body = Object),
    (status = 400, description = "an invalid query", body = ErrorBody),
))]
async fn recent(
    State(api): State<NetworkApi>,
    principal: Option<Extension<Principal>>,
    query: Result<Query<ResultFilter>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let filter = filter_from(query)?;
    let limit = filter.limit.unwrap_or(100);
    let addresses = api.service.addresses();
    let clear = sees_clear_addresses(principal.as_deref());
    let mut results: Vec<Arc<DetectionResult>> = api
        .service
        .recent()
        .into_iter()
        .rev()
        .filter(|result| filter.accepts(result, addresses))
        .take(limit)
        .collect();
    results.reverse();
    let results: Vec<_> = results.iter().map(|result| result.shown(addresses, clear)).collect();
    Ok(axum::Json(json!({ "results": results })).into_response())
}

/// WebSocket: one JSON text message per result of live and ingested connections. A client too
/// slow for the stream (more than `api.websocket_buffer` results behind) gets `{"lagged": n}`,
/// n being the results it missed, and is disconnected (close code 1008), so that it cannot
/// hold a buffer of the stream; it may connect again. Browsers, which cannot set headers, send
/// the token as the subprotocols `bearer, TOKEN`; the answer's subprotocol is then `bearer`.
/// Addresses are clear for a caller holding `network:pii`, else in their stored form.
#[utoipa::path(get, path = "/ws/realtime", tag = "network", security(("bearer" = ["network:read"])), params(ResultFilter), responses(
    (status = 101, description = "the stream of results"),
    (status = 400, description = "not a WebSocket upgrade, or an invalid query", body = ErrorBody),
    (status = 503, description = "api.max_websocket_subscribers clients already subscribed", body = ErrorBody),
))]
async fn realtime(
    State(api): State<NetworkApi>,
    principal: Option<Extension<Principal>>,
    query: Result<Query<ResultFilter>, axum::extract::rejection::QueryRejection>,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let filter = filter_from(query)?;
    let Ok(subscriber) = Arc::clone(&api.subscribers).try_acquire_owned() else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many WebSocket subscribers (api.max_websocket_subscribers): retry later",
        ));
    };
    let results = api.service.subscribe();
    let service = Arc::clone(&api.service);
    let clear = sees_clear_addresses(principal.as_deref());
    Ok(upgrade.protocols([sentinel_api::WEBSOCKET_BEARER_PROTOCOL]).on_upgrade(move |socket| async move {
        stream_results(socket, results, filter, &service, clear).await;
        drop(subscriber);
    }))
}

/// Sends the results `filter` accepts, their addresses clear when `clear`.
async fn stream_results(
    mut socket: WebSocket,
    mut results: tokio::sync::broadcast::Receiver<Arc<DetectionResult>>,
    filter: ResultFilter,
    service: &NetworkService,
    clear: bool,
) {
    let addresses = service.addresses();
    loop {
        tokio::select! {
            received = results.recv() => {
                let text = match received {
                    Ok(result) if filter.accepts(&result, addresses) => match serde_json::to_string(&*result.shown(addresses, clear)) {
                        Ok(text) => text,
                        Err(_) => continue,
                    },
                    Ok(_) => continue,
                    // A client too slow for the stream is told how much it missed, and dropped.
                    Err(RecvError::Lagged(skipped)) => {
                        service.count_dropped_subscriber();
                        let _ = socket.send(Message::Text(json!({ "lagged": skipped }).to_string().into())).await;
                        let close = CloseFrame { code: close_code::POLICY, reason: "too slow for the stream".into() };
                        let _ = socket.send(Message::Close(Some(close))).await;
                        return;
                    }
                    Err(RecvError::Closed) => return,
                };
                if socket.send(Message::Text(text.into())).await.is_err() {
                    return;
                }
            }
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            },
        }
    }
}
