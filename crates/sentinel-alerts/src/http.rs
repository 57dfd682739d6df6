//! The alert routes the service contributes to the HTTP listener: listing alerts with their
//! delivery state (`alerts:read`), acknowledging one and sending a test notification on a
//! channel (`alerts:write`). Acknowledgements and tests go into the audit table.

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use sentinel_api::{ApiError, Caller, ErrorBody, ServiceRoutes};
use sentinel_store::{AlertQuery, MAX_ALERT_PAGE, NewAuditEvent};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::routes;

use crate::alert::AlertView;
use crate::service::{AlertError, Alerts, TestError};

/// Largest body of an acknowledgement.
const MAX_BODY_BYTES: usize = 8 * 1024;

/// Alerts listed when the query does not say.
const DEFAULT_PAGE: usize = 100;

/// The routes of the alert service.
pub fn router(alerts: Alerts) -> ServiceRoutes {
    ServiceRoutes::new()
        .routes(routes!(list))
        .routes(routes!(get))
        .routes(routes!(acknowledge))
        .routes(routes!(test))
        .with_state(alerts)
}

/// Which alerts are listed.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// `open` (not acknowledged), `acknowledged` or `all` (the default).
    state: Option<String>,
    /// At most this many, newest first (default 100, at most 1000).
    limit: Option<usize>,
    /// Only alerts older than this id (the next page).
    before: Option<i64>,
}

#[derive(Serialize, ToSchema)]
struct AlertList {
    alerts: Vec<AlertView>,
}

fn failure(error: AlertError) -> ApiError {
    tracing::error!(%error, "alert store");
    ApiError::internal(error.to_string())
}

/// Alerts, newest first, each with its deliveries on each channel.
#[utoipa::path(get, path = "/api/v1/alerts", tag = "alerts", security(("bearer" = ["alerts:read"])),
    params(ListQuery),
    responses(
        (status = 200, body = AlertList),
        (status = 400, description = "an unknown state or parameter", body = ErrorBody),
))]
async fn list(
    State(alerts): State<Alerts>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|rejection| ApiError::bad_request(rejection.body_text()))?;
    let acknowledged = match query.state.as_deref() {
        None | Some("all") => None,
        Some("open") => Some(false),
        Some("acknowledged") => Some(true),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "state {other:?}: expected open, acknowledged or all"
            )));
        }
    };
    let limit = query.limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_ALERT_PAGE);
    let listed =
        alerts.list(AlertQuery { acknowledged, before: query.before, limit }).await.map_err(failure)?;
    Ok(axum::Json(AlertList { alerts: listed }).into_response())
}

/// One alert.
#[utoipa::path(get, path = "/api/v1/alerts/{id}", tag = "alerts", security(("bearer" = ["alerts:read"])),
    params(("id" = i64, Path, description = "the alert's id")),
    responses(
        (status = 200, body = AlertView),
        (status = 400, description = "the id is not a number", body = ErrorBody),
        (status = 404, description = "no such alert", body = ErrorBody),
))]
async fn get(State(alerts): State<Alerts>, Path(raw): Path<String>) -> Result<Response, ApiError> {
    let id = alert_id(&raw)?;
    match alerts.get(id).await.map_err(failure)? {
        Some(alert) => Ok(axum::Json(alert).into_response()),
        None => Err(ApiError::new(StatusCode::NOT_FOUND, format!("no alert {id}"))),
    }
}

/// The optional body of an acknowledgement.
#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
struct Acknowledgement {
    /// Why, for whoever reads the alert later (at most 1024 bytes).
    note: Option<String>,
}

/// Acknowledges an alert: someone has seen it. The first acknowledgement is kept.
#[utoipa::path(post, path = "/api/v1/alerts/{id}/acknowledge", tag = "alerts", security(("bearer" = ["alerts:write"])),
    params(("id" = i64, Path, description = "the alert's id")),
    request_body(content = Option<Acknowledgement>, description = "optional: `{\"note\": \"...\"}`"),
    responses(
        (status = 200, body = AlertView),
        (status = 400, description = "the id is not a number, or the body is not the documented shape", body = ErrorBody),
        (status = 404, description = "no such alert", body = ErrorBody),
        (status = 413, description = "body over 8 KiB", body = ErrorBody),
))]
async fn acknowledge(
    State(alerts): State<Alerts>,
    caller: Caller,
    Path(raw): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let id = alert_id(&raw)?;
    let bytes = axum::body::to_bytes(body, MAX_BODY_BYTES).await.map_err(|_| {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("body larger than {MAX_BODY_BYTES} bytes"))
    })?;
    let body: Acknowledgement = if bytes.iter().all(u8::is_ascii_whitespace) {
        Acknowledgement::default()
    } else {
        serde_json::from_slice(&bytes)
            .map_err(|error| ApiError::bad_request(format!("invalid JSON body: {error}")))?
    };
    if body.note.as_ref().is_some_and(|note| note.len() > 1024 || note.chars().any(char::is_control)) {
        return Err(ApiError::bad_request("note: at most 1024 bytes, no control characters"));
    }
    let by = caller.principal_name().to_owned();
    let acknowledged = alerts.acknowledge(id, by, body.note).await.map_err(failure)?;
    let outcome = if acknowledged.is_some() { "ok" } else { "not_found" };
    alerts.audit(audit_event(&caller, "alert.acknowledge", Some(format!("alert {id}")), outcome)).await;
    match acknowledged {
        Some(alert) => Ok(axum::Json(alert).into_response()),
        None => Err(ApiError::new(StatusCode::NOT_FOUND, format!("no alert {id}"))),
    }
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct TestQuery {
    /// The channel's name, as in `[alerts.channels.NAME]`.
    channel: String,
}

#[derive(Serialize, ToSchema)]
struct TestAnswer {
    channel: String,
    delivered: bool,
}

/// Sends a test notification on a channel now (outside the outbox) and says whether the
/// channel took it.
#[utoipa::path(post, path = "/api/v1/alerts/test", tag = "alerts", security(("bearer" = ["alerts:write"])),
    params(TestQuery),
    responses(
        (status = 200, body = TestAnswer, description = "the channel took the notification"),
        (status = 400, description = "no channel parameter", body = ErrorBody),
        (status = 404, description = "no such channel", body = ErrorBody),
        (status = 502, description = "the channel refused it or could not be reached; the error says why", body = ErrorBody),
))]
async fn test(
    State(alerts): State<Alerts>,
    caller: Caller,
    query: Result<Query<TestQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(TestQuery { channel }) = query.map_err(|rejection| {
        ApiError::bad_request(format!("name the channel: ?channel=NAME ({})", rejection.body_text()))
    })?;
    let sent = alerts.send_test(&channel, caller.principal_name()).await;
    let outcome = match &sent {
        Ok(()) => "ok",
        Err(TestError::UnknownChannel(_)) => "not_found",
        Err(TestError::Delivery(_)) => "failed",
    };
    let mut event = audit_event(&caller, "alert.test", Some(format!("channel {channel}")), outcome);
    if let Err(error) = &sent {
        event = event.with_detail("error", error.to_string());
    }
    alerts.audit(event).await;
    match sent {
        Ok(()) => Ok(axum::Json(TestAnswer { channel, delivered: true }).into_response()),
        Err(error @ TestError::UnknownChannel(_)) => {
            Err(ApiError::new(StatusCode::NOT_FOUND, error.to_string()))
        }
        Err(error @ TestError::Delivery(_)) => Err(ApiError::new(StatusCode::BAD_GATEWAY, error.to_string())),
    }
}

fn alert_id(raw: &str) -> Result<i64, ApiError> {
    raw.parse().map_err(|_| ApiError::bad_request(format!("alert id {raw:?} is not a number")))
}

fn audit_event(caller: &Caller, action: &str, target: Option<String>, outcome: &str) -> NewAuditEvent {
    NewAuditEvent::new(caller.principal_name(), action, target, outcome, caller.client.clone())
}
