//! `POST /api/v1/feedback`: analysts label stored predictions, by the `id` of their results, as
//! true anomalies or as normal (false positives, when the service had flagged them), with a
//! note. The labels are committed durably before the answer, which gives the figures of the
//! feedback window measured with them.

use std::collections::BTreeSet;

use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use sentinel_api::{ApiError, Caller, ErrorBody};
use sentinel_store::ItemLabel;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{NetworkApi, audit_event, parse_json, read_body, store_error};
use crate::service::{FeedbackError, FeedbackSummary};

/// The body of `POST /api/v1/feedback`: one to `feedback.max_batch` labels.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct FeedbackBody {
    labels: Vec<Label>,
}

/// An analyst's verdict on one prediction.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct Label {
    /// The result's `id` (results of `/ws/realtime`, `/api/v1/predictions/recent`, and of
    /// `/api/v1/analyze` when its results are stored).
    id: i64,
    verdict: LabelVerdict,
    /// Why, for whoever reads the labels later; at most `feedback.max_note_chars` characters.
    note: Option<String>,
}

/// `anomaly` (also `true_anomaly`): the item is a true anomaly. `normal` (also
/// `false_positive`): it is not, a false positive when the service had flagged it.
#[derive(Deserialize, ToSchema, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum LabelVerdict {
    #[serde(alias = "true_anomaly")]
    Anomaly,
    #[serde(alias = "false_positive")]
    Normal,
}

/// The answer: how many predictions were labelled, and the feedback window measured with them.
#[derive(Serialize, ToSchema)]
struct FeedbackAnswer {
    labelled: usize,
    /// `{measured_at, window_secs, labelled, anomalies, required, metrics: [per model, then
    /// ensemble], learning}`, as in the model status.
    #[schema(value_type = Object)]
    feedback: FeedbackSummary,
}

/// The labels of a body, checked: an error names the label that is wrong (`labels[3]: ...`).
fn read_labels(
    body: FeedbackBody,
    max_batch: usize,
    max_note_chars: usize,
) -> Result<Vec<ItemLabel>, ApiError> {
    if body.labels.is_empty() {
        return Err(ApiError::bad_request(
            "no label: send {\"labels\": [{\"id\": n, \"verdict\": \"anomaly\"}]}",
        ));
    }
    if body.labels.len() > max_batch {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("{} labels, more than the limit of {max_batch} (feedback.max_batch)", body.labels.len()),
        ));
    }
    let mut seen = BTreeSet::new();
    body.labels
        .into_iter()
        .enumerate()
        .map(|(index, label)| {
            if label.id < 1 {
                return Err(ApiError::bad_request(format!("labels[{index}]: id must be at least 1")));
            }
            if !seen.insert(label.id) {
                return Err(ApiError::bad_request(format!(
                    "labels[{index}]: id {} is labelled twice",
                    label.id
                )));
            }
            if label.note.as_ref().is_some_and(|note| note.chars().count() > max_note_chars) {
                return Err(ApiError::bad_request(format!(
                    "labels[{index}]: note longer than {max_note_chars} characters (feedback.max_note_chars)"
                )));
            }
            Ok(ItemLabel {
                id: label.id,
                anomalous: matches!(label.verdict, LabelVerdict::Anomaly),
                note: label.note,
            })
        })
        .collect()
}

/// Labels stored predictions as true anomalies or false positives. All or nothing: one unknown
/// id and nothing is labelled. A second label of a prediction replaces the first.
#[utoipa::path(post, path = "/api/v1/feedback", tag = "network", security(("bearer" = ["network:feedback"])),
    request_body = FeedbackBody,
    responses(
        (status = 200, body = FeedbackAnswer, description = "the labels are stored (durably); the window's figures measured with them"),
        (status = 400, description = "not JSON, not the documented shape, no label, an id twice or below 1, a note too long", body = ErrorBody),
        (status = 404, description = "an id names no stored prediction (never stored, or past the retention): nothing was labelled", body = ErrorBody),
        (status = 413, description = "body over api.max_body_bytes or more than feedback.max_batch labels", body = ErrorBody),
))]
pub(super) async fn feedback(
    State(api): State<NetworkApi>,
    caller: Caller,
    body: Body,
) -> Result<Response, ApiError> {
    let service = api.service;
    let bytes = read_body(&service, body).await?;
    let body: FeedbackBody = parse_json(&bytes)?;
    let settings = &service.settings().feedback;
    let labels = read_labels(body, settings.max_batch, settings.max_note_chars)?;
    let count = labels.len();
    let analyst = caller.principal_name().to_owned();
    let recording = std::sync::Arc::clone(&service);
    let recorded = tokio::task::spawn_blocking(move || recording.record_feedback(labels, &analyst))
        .await
        .map_err(|error| ApiError::internal(format!("feedback failed: {error}")))?;
    let event = match &recorded {
        Ok(_) => audit_event(&caller, "model.feedback", Some(format!("{count} network predictions")), "ok"),
        Err(error) => {
            audit_event(&caller, "model.feedback", None, "refused").with_detail("error", error.to_string())
        }
    };
    service.audit(event).await;
    let summary = recorded.map_err(|error| match error {
        FeedbackError::UnknownIds(_) => ApiError::new(StatusCode::NOT_FOUND, error.to_string()),
        FeedbackError::Storage(error) => store_error(error),
    })?;
    Ok(axum::Json(FeedbackAnswer { labelled: count, feedback: summary }).into_response())
}
