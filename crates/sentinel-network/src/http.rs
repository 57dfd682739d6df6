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

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use rayon::prelude::*;
use sentinel_api::{ApiError, ErrorBody, ServiceRoutes};
use sentinel_netmon::ConnectionRecord;
use serde::{Deserialize, Serialize};
use serde_json::json;
use serde_json::value::RawValue;
use tokio::sync::Semaphore;
use tokio::sync::broadcast::error::RecvError;
use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, SchemaType, Type};
use utoipa::openapi::{RefOr, Schema};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::routes;

use crate::features::{CATEGORICAL_FEATURES, NUMERIC_FEATURES, RawFeatures};
use crate::service::{AnalyzeError, AnalyzeItem, DetectionResult, NetworkService, TrainError};
use crate::store::{ModelVersion, StoreError};

/// What the handlers share: the service, and one permit per item of the analyses in flight.
#[derive(Clone)]
struct NetworkApi {
    service: Arc<NetworkService>,
    items_in_flight: Arc<Semaphore>,
}

/// The routes of the network service, for the process's HTTP listener.
pub fn router(service: Arc<NetworkService>) -> ServiceRoutes {
    let items_in_flight = Arc::new(Semaphore::new(service.settings().api.max_items_in_flight));
    ServiceRoutes::new()
        .routes(routes!(analyze))
        .routes(routes!(ingest))
        .routes(routes!(train))
        .routes(routes!(job, cancel_job))
        .routes(routes!(status))
        .routes(routes!(rollback))
        .routes(routes!(recent))
        .routes(routes!(realtime))
        .with_state(NetworkApi { service, items_in_flight })
}

fn store_error(error: StoreError) -> ApiError {
    match error {
        StoreError::NoSuchVersion(_) => ApiError::new(StatusCode::NOT_FOUND, error.to_string()),
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

/// The body of `POST /api/v1/analyze`: at least one record or feature vector, at most
/// `api.max_batch_items` in all. The records stay raw JSON until the batch's size is checked,
/// then are read in parallel.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct AnalyzeBody<'a> {
    /// Connection records as agents send them (`sentinel-netmon`'s `ConnectionRecord`), each
    /// judged on its own as a new connection.
    #[serde(borrow, default)]
    #[schema(value_type = Vec<Object>)]
    records: Vec<&'a RawValue>,
    #[serde(default)]
    #[schema(value_type = Vec<FeatureVector>)]
    features: Vec<serde_json::Map<String, serde_json::Value>>,
}

/// Raw features by name (docs/network.md), built from the feature schema itself.
struct FeatureVector;

impl utoipa::PartialSchema for FeatureVector {
    fn schema() -> RefOr<Schema> {
        let mut object = ObjectBuilder::new()
            .description(Some(
                "Raw features by name (docs/network.md); absent or null numbers are missing \
                 values; process_name (optional) sets process_rarity",
            ))
            .additional_properties(Some(AdditionalProperties::FreeForm(false)))
            .property(
                "process_name",
                ObjectBuilder::new()
                    .schema_type(SchemaType::from_iter([Type::String, Type::Null]))
                    .max_length(Some(255)),
            );
        for name in NUMERIC_FEATURES {
            object = object.property(
                name,
                ObjectBuilder::new()
                    .schema_type(SchemaType::from_iter([Type::Number, Type::Null]))
                    .minimum(Some(0)),
            );
        }
        for name in CATEGORICAL_FEATURES {
            object =
                object.property(name, ObjectBuilder::new().schema_type(Type::String).max_length(Some(64)));
        }
        RefOr::T(Schema::Object(object.build()))
    }
}

impl ToSchema for FeatureVector {}

/// Reads each posted record (already split out of the body as raw JSON) into a typed record and
/// validates it, in parallel: one thread parsing 50,000 records was a twentieth of a batch's
/// time. An error names the first record that is wrong (`records[3]: ...`).
fn read_records(
    records: &[&RawValue],
    limits: &sentinel_netmon::ValidationLimits,
) -> Result<Vec<ConnectionRecord>, ApiError> {
    let now = std::time::SystemTime::now();
    let parsed: Vec<Result<ConnectionRecord, String>> = records
        .par_iter()
        .map(|raw| {
            let record: ConnectionRecord =
                serde_json::from_str(raw.get()).map_err(|error| error.to_string())?;
            record.validate(limits, now).map_err(|error| error.to_string())?;
            Ok(record)
        })
        .collect();
    parsed
        .into_iter()
        .enumerate()
        .map(|(index, record)| {
            record.map_err(|error| ApiError::bad_request(format!("records[{index}]: {error}")))
        })
        .collect()
}

/// Results serialised per task when an answer is written in parallel: large enough that the
/// join costs nothing, small enough that both cores share a batch of a few thousand.
const RESPONSE_CHUNK: usize = 2048;

/// Scores a batch of connection records and/or raw feature vectors.
#[utoipa::path(post, path = "/api/v1/analyze", tag = "network", request_body = AnalyzeBody, responses(
    (status = 200, content_type = "application/json", body = Object, description = "`{\"model_version\": n, \"results\": [...]}`: one result per item, records first then feature vectors, in the order posted; each the verdict alone: `score`, `threshold`, `is_anomaly`, `confidence`, `models` (each member's score, threshold and decision) and `explanation` (up to three features furthest from training)"),
    (status = 400, description = "not JSON, not the documented shape, or an item out of range", body = ErrorBody),
    (status = 409, description = "no model yet", body = ErrorBody),
    (status = 413, description = "body over api.max_body_bytes or batch over api.max_batch_items", body = ErrorBody),
    (status = 503, description = "api.max_items_in_flight items already being analysed: retry", body = ErrorBody),
))]
async fn analyze(State(api): State<NetworkApi>, body: Body) -> Result<Response, ApiError> {
    let bytes = read_body(&api.service, body).await?;
    // Parsing, scoring and writing the answer of a large batch take up to a second of CPU: on
    // the blocking pool they never hold a reactor thread that other requests are waiting for.
    // The task runs to its end even if the client gives up (or the listener's timeout answers),
    // and so holds its items' permits until its memory is freed.
    let answer =
        tokio::task::spawn_blocking(move || analyze_blocking(&api.service, &api.items_in_flight, &bytes))
            .await
            .map_err(|error| ApiError::internal(AnalyzeError::Task(error.to_string()).to_string()))??;
    Ok(([(axum::http::header::CONTENT_TYPE, "application/json")], answer).into_response())
}

/// `/api/v1/analyze` from the body to the JSON answer.
fn analyze_blocking(
    service: &NetworkService,
    items_in_flight: &Semaphore,
    bytes: &[u8],
) -> Result<Vec<u8>, ApiError> {
    let request: AnalyzeBody = parse_json(bytes)?;
    let count = request.records.len() + request.features.len();
    let limit = service.settings().api.max_batch_items;
    if count > limit {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("{count} items in one request, more than the limit of {limit}"),
        ));
    }
    if count == 0 {
        return Err(ApiError::bad_request("nothing to analyse: give \"records\" or \"features\""));
    }
    // Taken once the count is known and before the costly part (records, scores, answer), whose
    // memory grows with the items: a batch that does not fit beside those in flight is refused
    // at once rather than queued, so a burst of large batches cannot hold memory without bound.
    let _permits = u32::try_from(count)
        .ok()
        .and_then(|count| items_in_flight.try_acquire_many(count).ok())
        .ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{count} more items would exceed api.max_items_in_flight being analysed: retry later"),
        )
    })?;
    let records = read_records(&request.records, &service.settings().api.validation_limits())?;
    let mut items = Vec::with_capacity(count);
    items.extend(records.into_iter().map(AnalyzeItem::Record));
    for (index, object) in request.features.into_iter().enumerate() {
        let features = RawFeatures::from_json(&object)
            .map_err(|error| ApiError::bad_request(format!("features[{index}]: {error}")))?;
        let process_name = match object.get("process_name") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(name)) if name.len() <= 255 => Some(name.clone()),
            Some(_) => {
                return Err(ApiError::bad_request(format!(
                    "features[{index}]: process_name must be a string of at most 255 bytes"
                )));
            }
        };
        items.push(AnalyzeItem::Features { features, process_name });
    }
    let (model_version, results) = service.analyze(items).map_err(|error| match error {
        AnalyzeError::NoModel => ApiError::new(StatusCode::CONFLICT, error.to_string()),
        error => ApiError::internal(error.to_string()),
    })?;
    write_analyze_answer(model_version, &results).map_err(|error| {
        tracing::error!(%error, "analysis results could not be serialised");
        ApiError::internal(format!("the answer could not be written: {error}"))
    })
}

/// `{"model_version": n, "results": [...]}`, each result the verdict alone: the source, time,
/// model version and connection of a result are the request's own or the answer's, so they are
/// not repeated per item. The results are serialised in parallel chunks then joined.
fn write_analyze_answer(
    model_version: i64,
    results: &[DetectionResult],
) -> Result<Vec<u8>, serde_json::Error> {
    let chunks: Vec<Vec<u8>> = results
        .par_chunks(RESPONSE_CHUNK)
        .map(|chunk| {
            let mut out = Vec::with_capacity(chunk.len() * 384);
            for (index, result) in chunk.iter().enumerate() {
                if index > 0 {
                    out.push(b',');
                }
                serde_json::to_writer(&mut out, &result.verdict)?;
            }
            Ok(out)
        })
        .collect::<Result<_, serde_json::Error>>()?;
    let head = format!("{{\"model_version\":{model_version},\"results\":[");
    let mut answer =
        Vec::with_capacity(head.len() + chunks.iter().map(|chunk| chunk.len() + 1).sum::<usize>() + 2);
    answer.extend_from_slice(head.as_bytes());
    for (index, chunk) in chunks.iter().enumerate() {
        if index > 0 {
            answer.push(b',');
        }
        answer.extend_from_slice(chunk);
    }
    answer.extend_from_slice(b"]}");
    Ok(answer)
}

/// The answer of an accepted snapshot.
#[derive(Serialize, ToSchema)]
struct Accepted {
    accepted_connections: usize,
}

/// Posts a snapshot from a remote agent (`sentinel agent`, the Windows endpoint application):
/// its connections are tracked per host, scored, streamed and stored.
#[utoipa::path(post, path = "/api/v1/ingest", tag = "network",
    request_body(content = Object, description = "a Snapshot: {schema_version, host, timestamp, connections: [ConnectionRecord…]}"),
    responses(
        (status = 202, body = Accepted),
        (status = 400, description = "not JSON, not a snapshot, or a record out of range: fix it, do not resend", body = ErrorBody),
        (status = 413, description = "body over api.max_body_bytes", body = ErrorBody),
        (status = 503, description = "the ingestion queue is full: retry later", body = ErrorBody),
))]
async fn ingest(State(api): State<NetworkApi>, body: Body) -> Result<Response, ApiError> {
    let service = api.service;
    let bytes = read_body(&service, body).await?;
    let limits = service.settings().api.validation_limits();
    let snapshot = sentinel_netmon::Snapshot::from_json(&bytes, &limits)
        .map_err(|error| ApiError::bad_request(error.to_string()))?;
    let connections = snapshot.connections.len();
    let accepting = Arc::clone(&service);
    let accepted = tokio::task::spawn_blocking(move || accepting.ingest(snapshot, &bytes))
        .await
        .map_err(|error| ApiError::internal(format!("ingestion failed: {error}")))?
        .map_err(store_error)?;
    if !accepted {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the analysis pipeline is busy: retry the snapshot later",
        ));
    }
    Ok((StatusCode::ACCEPTED, axum::Json(Accepted { accepted_connections: connections })).into_response())
}

/// Starts a training job from stored history. The body is optional; when present it must be a
/// JSON object (no options yet).
#[utoipa::path(post, path = "/api/v1/train", tag = "network",
    request_body(content = Option<Object>, description = "optional, `{}`"),
    responses(
        (status = 202, description = "the job: id, state, stage, progress", content_type = "application/json", body = Object),
        (status = 400, description = "the body is not a JSON object", body = ErrorBody),
        (status = 409, description = "a training job is already running", body = ErrorBody),
))]
async fn train(State(api): State<NetworkApi>, body: Body) -> Result<Response, ApiError> {
    let bytes = read_body(&api.service, body).await?;
    if !is_blank(&bytes) {
        let _: serde_json::Map<String, serde_json::Value> = parse_json(&bytes)?;
    }
    let job = api.service.train("api").map_err(train_error)?;
    Ok((StatusCode::ACCEPTED, axum::Json(job.report())).into_response())
}

fn job_id(raw: &str) -> Result<u64, ApiError> {
    raw.parse().map_err(|_| ApiError::bad_request(format!("job id {raw:?} is not a number")))
}

/// Progress of a training job.
#[utoipa::path(get, path = "/api/v1/train/{job}", tag = "network",
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
#[utoipa::path(delete, path = "/api/v1/train/{job}", tag = "network",
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
#[utoipa::path(get, path = "/api/v1/models/status", tag = "network", responses(
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
#[utoipa::path(post, path = "/api/v1/models/rollback", tag = "network",
    request_body(content = Option<RollbackRequest>),
    responses(
        (status = 200, body = Active),
        (status = 400, description = "not JSON or not the documented shape", body = ErrorBody),
        (status = 404, description = "no such version", body = ErrorBody),
))]
async fn rollback(State(api): State<NetworkApi>, body: Body) -> Result<Response, ApiError> {
    let bytes = read_body(&api.service, body).await?;
    let request: RollbackRequest =
        if is_blank(&bytes) { RollbackRequest::default() } else { parse_json(&bytes)? };
    let version = api.service.rollback(request.version).await.map_err(store_error)?;
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
    /// At most this many results (recent only; the newest; default 100).
    limit: Option<usize>,
}

impl ResultFilter {
    fn accepts(&self, result: &DetectionResult) -> bool {
        self.process.as_deref().is_none_or(|process| result.process_name() == Some(process))
            && self.min_score.is_none_or(|min| result.verdict.score >= min)
            && (!self.anomalies_only || result.verdict.is_anomaly)
    }
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

/// Recent results of live and ingested connections, kept in memory (newest last).
#[utoipa::path(get, path = "/api/v1/predictions/recent", tag = "network", params(ResultFilter), responses(
    (status = 200, description = "`{\"results\": [Result…]}`; a Result is the verdict with `source`, `observed_at`, `model_version` and `connection`", content_type = "application/json", body = Object),
    (status = 400, description = "an invalid query", body = ErrorBody),
))]
async fn recent(
    State(api): State<NetworkApi>,
    query: Result<Query<ResultFilter>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let filter = filter_from(query)?;
    let limit = filter.limit.unwrap_or(100);
    let mut results: Vec<Arc<DetectionResult>> =
        api.service.recent().into_iter().rev().filter(|result| filter.accepts(result)).take(limit).collect();
    results.reverse();
    let results: Vec<&DetectionResult> = results.iter().map(|result| &**result).collect();
    Ok(axum::Json(json!({ "results": results })).into_response())
}

/// WebSocket: one JSON text message per result of live and ingested connections, or
/// `{"lagged": n}` when the client was too slow and missed n results.
#[utoipa::path(get, path = "/ws/realtime", tag = "network", params(ResultFilter), responses(
    (status = 101, description = "the stream of results"),
    (status = 400, description = "not a WebSocket upgrade, or an invalid query", body = ErrorBody),
))]
async fn realtime(
    State(api): State<NetworkApi>,
    query: Result<Query<ResultFilter>, axum::extract::rejection::QueryRejection>,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let filter = filter_from(query)?;
    let results = api.service.subscribe();
    Ok(upgrade.on_upgrade(move |socket| stream_results(socket, results, filter)))
}
async fn stream_results(
    mut socket: WebSocket,
    mut results: tokio::sync::broadcast::Receiver<Arc<DetectionResult>>,
    filter: ResultFilter,
) {
    loop {
        tokio::select! {
            received = results.recv() => {
                let text = match received {
                    Ok(result) if filter.accepts(&result) => match serde_json::to_string(&*result) {
                        Ok(text) => text,
                        Err(_) => continue,
                    },
                    Ok(_) => continue,
                    // A client too slow for the stream is told how much it missed.
                    Err(RecvError::Lagged(skipped)) => json!({ "lagged": skipped }).to_string(),
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
