//! `POST /api/v1/analyze`: a batch of connection records and/or raw feature vectors, scored as one
//! matrix on the blocking pool, from parsing (in parallel) to the compact answer (written in
//! parallel), within the items-in-flight budget.

use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use rayon::prelude::*;
use sentinel_api::{ApiError, ErrorBody};
use sentinel_netmon::ConnectionRecord;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::sync::Semaphore;
use utoipa::ToSchema;
use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, SchemaType, Type};
use utoipa::openapi::{RefOr, Schema};

use super::{NetworkApi, parse_json, read_body};
use crate::features::{CATEGORICAL_FEATURES, NUMERIC_FEATURES, RawFeatures};
use crate::service::{AnalyzeError, AnalyzeItem, DetectionResult, NetworkService};

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
#[utoipa::path(post, path = "/api/v1/analyze", tag = "network", security(("bearer" = ["network:analyze"])), request_body = AnalyzeBody, responses(
    (status = 200, content_type = "application/json", body = Object, description = "`{\"model_version\": n, \"results\": [...]}`: one result per item, records first then feature vectors, in the order posted; each the verdict alone: `score`, `threshold`, `is_anomaly`, `confidence`, `models` (each member's score, threshold and decision) and `explanation` (up to three features furthest from training); with `storage.store_analyze_requests`, each result starts with its `id`, which `POST /api/v1/feedback` takes"),
    (status = 400, description = "not JSON, not the documented shape, or an item out of range", body = ErrorBody),
    (status = 409, description = "no model yet", body = ErrorBody),
    (status = 413, description = "body over api.max_body_bytes or batch over api.max_batch_items", body = ErrorBody),
    (status = 503, description = "api.max_items_in_flight items already being analysed: retry", body = ErrorBody),
))]
pub(super) async fn analyze(State(api): State<NetworkApi>, body: Body) -> Result<Response, ApiError> {
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

/// A stored result in the answer: its id (for `POST /api/v1/feedback`), then the verdict.
#[derive(Serialize)]
struct StoredVerdict<'a> {
    id: i64,
    #[serde(flatten)]
    verdict: &'a crate::model::Verdict,
}

/// `{"model_version": n, "results": [...]}`, each result the verdict alone (with its `id` when
/// results are stored): the source, time,
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
                match result.id {
                    Some(id) => {
                        serde_json::to_writer(&mut out, &StoredVerdict { id, verdict: &result.verdict })?
                    }
                    None => serde_json::to_writer(&mut out, &result.verdict)?,
                }
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
