//! The HTTP and WebSocket API of the network service (described by `openapi.json`).
//!
//! Bodies are read and parsed here rather than by axum's extractors so that every client error
//! (malformed JSON, a wrong type, a batch or body over its limit) is a 4xx with a JSON message
//! `{"error": "..."}` naming what was wrong, never a 500 or a plain-text rejection.

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use rayon::prelude::*;
use sentinel_netmon::ConnectionRecord;
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;
use tokio::sync::broadcast::error::RecvError;

use crate::features::RawFeatures;
use crate::service::{AnalyzeError, AnalyzeItem, DetectionResult, NetworkService, StorageError, TrainError};

/// The OpenAPI 3.1 document served at `/api/v1/openapi.json`.
pub const OPENAPI: &str = include_str!("openapi.json");

/// The routes of the network service, to merge into the server's HTTP listener.
pub fn router(service: Arc<NetworkService>) -> Router {
    Router::new()
        .route("/api/v1/analyze", post(analyze))
        .route("/api/v1/ingest", post(ingest))
        .route("/api/v1/train", post(train))
        .route("/api/v1/train/{job}", get(job).delete(cancel_job))
        .route("/api/v1/models/status", get(status))
        .route("/api/v1/models/rollback", post(rollback))
        .route("/api/v1/predictions/recent", get(recent))
        .route("/api/v1/openapi.json", get(openapi))
        .route("/ws/realtime", get(realtime))
        .with_state(service)
}

/// A client or server error as JSON.
struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into() }
    }

    fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(json!({ "error": self.message }))).into_response()
    }
}

impl From<StorageError> for ApiError {
    fn from(error: StorageError) -> ApiError {
        match error {
            StorageError::NoSuchVersion(_) => ApiError::new(StatusCode::NOT_FOUND, error.to_string()),
            _ => {
                tracing::error!(%error, "network store");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, error.to_string())
            }
        }
    }
}

impl From<TrainError> for ApiError {
    fn from(error: TrainError) -> ApiError {
        let status = match error {
            TrainError::AlreadyRunning(_) | TrainError::Finished(_) => StatusCode::CONFLICT,
            TrainError::NoSuchJob(_) => StatusCode::NOT_FOUND,
        };
        ApiError::new(status, error.to_string())
    }
}

/// Reads the whole body up to the configured limit.
async fn read_body(service: &NetworkService, body: Body) -> Result<Bytes, ApiError> {
    let limit = service.settings().api.max_body_bytes;
    axum::body::to_bytes(body, limit).await.map_err(|_| {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("request body larger than {limit} bytes"))
    })
}

fn parse_json<'de, T: Deserialize<'de>>(bytes: &'de [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|error| {
        let status = if error.is_data() { StatusCode::UNPROCESSABLE_ENTITY } else { StatusCode::BAD_REQUEST };
        ApiError::new(status, format!("invalid JSON body: {error}"))
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AnalyzeRequest<R> {
    #[serde(default = "Vec::new")]
    records: Vec<R>,
    #[serde(default)]
    features: Vec<serde_json::Map<String, serde_json::Value>>,
}

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
            record.map_err(|error| {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, format!("records[{index}]: {error}"))
            })
        })
        .collect()
}

/// Results serialised per task when an answer is written in parallel: large enough that the
/// join costs nothing, small enough that both cores share a batch of a few thousand.
const RESPONSE_CHUNK: usize = 2048;

async fn analyze(State(service): State<Arc<NetworkService>>, body: Body) -> Result<Response, ApiError> {
    let bytes = read_body(&service, body).await?;
    // Parsing, scoring and writing the answer of a large batch take up to a second of CPU: on
    // the blocking pool they never hold a reactor thread that other requests are waiting for.
    let answer = tokio::task::spawn_blocking(move || analyze_blocking(&service, &bytes)).await.map_err(
        |error| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                AnalyzeError::Task(error.to_string()).to_string(),
            )
        },
    )??;
    Ok(([(axum::http::header::CONTENT_TYPE, "application/json")], answer).into_response())
}

/// `/api/v1/analyze` from the body to the JSON answer.
fn analyze_blocking(service: &NetworkService, bytes: &[u8]) -> Result<Vec<u8>, ApiError> {
    // The records stay raw JSON until the batch's size is checked, then are read in parallel.
    let request: AnalyzeRequest<&RawValue> = parse_json(bytes)?;
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
    let records = read_records(&request.records, &service.settings().api.validation_limits())?;
    let mut items = Vec::with_capacity(count);
    items.extend(records.into_iter().map(AnalyzeItem::Record));
    for (index, object) in request.features.into_iter().enumerate() {
        let features = RawFeatures::from_json(&object).map_err(|error| {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, format!("features[{index}]: {error}"))
        })?;
        let process_name = match object.get("process_name") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(name)) if name.len() <= 255 => Some(name.clone()),
            Some(_) => {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!("features[{index}]: process_name must be a string of at most 255 bytes"),
                ));
            }
        };
        items.push(AnalyzeItem::Features { features, process_name });
    }
    let (model_version, results) = service.analyze(items).map_err(|error| match error {
        AnalyzeError::NoModel => ApiError::new(StatusCode::CONFLICT, error.to_string()),
        error => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, error.to_string()),
    })?;
    write_analyze_answer(model_version, &results).map_err(|error| {
        tracing::error!(%error, "analysis results could not be serialised");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("the answer could not be written: {error}"))
    })
}

/// `{"model_version": n, "results": [...]}`, the results serialised in parallel chunks then
/// joined: for a batch of 50,000 the answer is about 25 MB, a tenth of the batch's time when
/// written by one thread.
fn write_analyze_answer(
    model_version: i64,
    results: &[DetectionResult],
) -> Result<Vec<u8>, serde_json::Error> {
    let chunks: Vec<Vec<u8>> = results
        .par_chunks(RESPONSE_CHUNK)
        .map(|chunk| {
            let mut out = Vec::with_capacity(chunk.len() * 512);
            for (index, result) in chunk.iter().enumerate() {
                if index > 0 {
                    out.push(b',');
                }
                serde_json::to_writer(&mut out, result)?;
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

async fn ingest(State(service): State<Arc<NetworkService>>, body: Body) -> Result<Response, ApiError> {
    let bytes = read_body(&service, body).await?;
    let limits = service.settings().api.validation_limits();
    let snapshot = sentinel_netmon::Snapshot::from_json(&bytes, &limits)
        .map_err(|error| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, error.to_string()))?;
    let connections = snapshot.connections.len();
    let accepting = Arc::clone(&service);
    let accepted = tokio::task::spawn_blocking(move || accepting.ingest(snapshot, &bytes)).await.map_err(
        |error| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("ingestion failed: {error}")),
    )??;
    if !accepted {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the analysis pipeline is busy: retry the snapshot later",
        ));
    }
    Ok((StatusCode::ACCEPTED, axum::Json(json!({ "accepted_connections": connections }))).into_response())
}

async fn train(State(service): State<Arc<NetworkService>>, body: Body) -> Result<Response, ApiError> {
    // The body is optional; when present it must be a JSON object (no options yet).
    let bytes = read_body(&service, body).await?;
    if !bytes.iter().all(u8::is_ascii_whitespace) {
        let _: serde_json::Map<String, serde_json::Value> = parse_json(&bytes)?;
    }
    let job = service.train("api")?;
    Ok((StatusCode::ACCEPTED, axum::Json(job.report())).into_response())
}

fn job_id(raw: &str) -> Result<u64, ApiError> {
    raw.parse().map_err(|_| ApiError::bad_request(format!("job id {raw:?} is not a number")))
}

async fn job(
    State(service): State<Arc<NetworkService>>,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    Ok(axum::Json(service.job(job_id(&raw)?)?).into_response())
}

async fn cancel_job(
    State(service): State<Arc<NetworkService>>,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    Ok((StatusCode::ACCEPTED, axum::Json(service.cancel_job(job_id(&raw)?)?)).into_response())
}

async fn status(State(service): State<Arc<NetworkService>>) -> Result<Response, ApiError> {
    Ok(axum::Json(service.status().await?).into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RollbackRequest {
    version: Option<i64>,
}

async fn rollback(State(service): State<Arc<NetworkService>>, body: Body) -> Result<Response, ApiError> {
    let bytes = read_body(&service, body).await?;
    let request: RollbackRequest = if bytes.iter().all(u8::is_ascii_whitespace) {
        RollbackRequest::default()
    } else {
        parse_json(&bytes)?
    };
    let version = service.rollback(request.version).await?;
    Ok(axum::Json(json!({ "active": version })).into_response())
}

/// Filters of `/ws/realtime` and `/api/v1/predictions/recent`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ResultFilter {
    /// Only results of this process name.
    process: Option<String>,
    /// Only results whose ensemble score is at least this.
    min_score: Option<f64>,
    /// Only anomalies.
    #[serde(default)]
    anomalies_only: bool,
    /// At most this many results (recent only; the newest).
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

async fn recent(
    State(service): State<Arc<NetworkService>>,
    query: Result<Query<ResultFilter>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let filter = filter_from(query)?;
    let limit = filter.limit.unwrap_or(100);
    let mut results: Vec<Arc<DetectionResult>> =
        service.recent().into_iter().rev().filter(|result| filter.accepts(result)).take(limit).collect();
    results.reverse();
    let results: Vec<&DetectionResult> = results.iter().map(|result| &**result).collect();
    Ok(axum::Json(json!({ "results": results })).into_response())
}

async fn openapi() -> Response {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

async fn realtime(
    State(service): State<Arc<NetworkService>>,
    query: Result<Query<ResultFilter>, axum::extract::rejection::QueryRejection>,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let filter = filter_from(query)?;
    let results = service.subscribe();
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
