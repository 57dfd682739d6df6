//! The malware server's part of the HTTP API: `GET /status` (the counters of `status`),
//! `POST /admin/reload` (models from the data directory, recorded in the audit table),
//! `GET /api/v1/audit` (the audit table of `sentinel.db`, newest first), the analysis of files
//! (`file_api`: `POST /api/v1/files`, `GET /api/v1/files/{sha256}`), the safelist and badlist
//! (`list_api`: `/api/v1/lists/…`), and the readiness
//! check of `/readyz` (models loaded, store writable). The listener, its middleware and `/healthz`,
//! `/readyz` and `/metrics` themselves are `sentinel-api`'s.

use std::sync::Arc;

use std::time::{Duration, UNIX_EPOCH};

use axum::Json;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::StatusCode;
use sentinel_api::{ApiError, Caller, Readiness, ReadinessFuture, ServiceRoutes};
use sentinel_store::{AuditEvent, AuditQuery, MAX_AUDIT_PAGE, NewAuditEvent};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::routes;

use crate::state::Shared;
use crate::status::StatusReport;
use crate::{file_api, list_api};

/// The routes, documented for the OpenAPI document.
pub(crate) fn routes(shared: Arc<Shared>) -> ServiceRoutes {
    // Uploads are bounded as they are read, by the listener's `max_body_bytes` and the
    // protocol's limits (`file_api`), not by axum's default 2 MiB for extracted bodies.
    let (schemas, paths, upload) = routes!(file_api::analyse_file);
    ServiceRoutes::new()
        .routes(routes!(status))
        .routes(routes!(reload))
        .routes(routes!(audit))
        .routes((schemas, paths, upload.layer(DefaultBodyLimit::disable())))
        .routes(routes!(file_api::file_record))
        .routes(routes!(list_api::list_entries, list_api::add_entry))
        .routes(routes!(list_api::remove_entry))
        .with_state(shared)
}

/// Unix seconds as RFC 3339 (UTC, seconds), the form of times in the API's answers.
pub(crate) fn rfc3339(unix_seconds: i64) -> String {
    let time = UNIX_EPOCH + Duration::from_secs(u64::try_from(unix_seconds).unwrap_or(0));
    humantime::format_rfc3339_seconds(time).to_string()
}

/// Ready to serve: models are loaded and the store accepts writes (every request writes, so a
/// read-only store means every request would fail). Adds `static_model`, `behaviour_model`,
/// `yara_rules` (when configured) and `store` to the `/readyz` answer.
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
            if let Some(rules) = &shared.analyser.yara {
                details.insert("yara_rules".to_owned(), json!(rules.info().version));
            }
            let ready = writable.is_ok();
            details.insert("store".to_owned(), writable.map_or_else(Value::String, |()| json!("writable")));
            Readiness { ready, details }
        })
    }
}

/// The malware server's counters: connections, requests by command and outcome, reloads, the
/// models in service and the VirusTotal step's counters (`docs/protocol.md`, "Status").
#[utoipa::path(get, path = "/status", tag = "malware server", security(("bearer" = ["malware:read"])), responses(
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
    /// The YARA rule set's version; absent without `[server] yara_rules`.
    #[serde(skip_serializing_if = "Option::is_none")]
    yara_rules: Option<String>,
}

/// Reloads the YARA rules (with `[server] yara_rules`), then the models from the data directory;
/// on failure what is in service stays, and the error says why (for rules: file, line, column).
#[utoipa::path(post, path = "/admin/reload", tag = "malware server", security(("bearer" = ["admin"])), responses(
    (status = 200, description = "the models now in service", body = Reloaded),
    (status = 500, description = "the reload failed; the models in service stay", body = sentinel_api::ErrorBody),
))]
async fn reload(State(shared): State<Arc<Shared>>, caller: Caller) -> Result<Json<Reloaded>, ApiError> {
    let reloaded = shared.reload().await;
    let event = NewAuditEvent::new(
        caller.principal_name(),
        "model.reload",
        Some("malware models".to_owned()),
        if reloaded.is_ok() { "ok" } else { "failed" },
        caller.client.clone(),
    );
    let event = match &reloaded {
        Ok(models) => {
            let event = event
                .with_detail("static_model", models.static_model.version())
                .with_detail("behaviour_model", models.behaviour_model.version());
            match &shared.analyser.yara {
                Some(rules) => event.with_detail("yara_rules", rules.info().version),
                None => event,
            }
        }
        Err(error) => event.with_detail("error", error.to_string()),
    };
    record_audit(&shared, event).await;
    match reloaded {
        Ok(models) => Ok(Json(Reloaded {
            static_model: models.static_model.version().to_owned(),
            source: models.static_source.clone(),
            behaviour_model: models.behaviour_model.version().to_owned(),
            behaviour_source: models.behaviour_source.clone(),
            yara_rules: shared.analyser.yara.as_ref().map(|rules| rules.info().version),
        })),
        Err(error) => {
            tracing::warn!(%error, "model reload failed");
            Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, error.to_string()))
        }
    }
}

/// Records an administrative action; a failure to record is logged (the action happened).
pub(crate) async fn record_audit(shared: &Shared, event: NewAuditEvent) {
    let store = Arc::clone(&shared.analyser.store);
    match tokio::task::spawn_blocking(move || store.record_audit_event(event)).await {
        Ok(Ok(_)) => {}
        Ok(Err(error)) => tracing::error!(%error, "cannot record an audit event"),
        Err(error) => tracing::error!(%error, "the audit event's writer failed"),
    }
}

/// The filters and page of `GET /api/v1/audit`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct AuditFilter {
    /// At most this many events (default 100, at most 1000).
    limit: Option<usize>,
    /// Only events older than the one with this id (the `id` of the last event of the previous
    /// page).
    before: Option<i64>,
    /// Only events of this action (`model.train`, `token.create`…).
    action: Option<String>,
}

/// One administrative action.
#[derive(Serialize, ToSchema)]
struct AuditRow {
    id: i64,
    /// RFC 3339, UTC.
    time: String,
    /// `token:NAME#ID`, `jwt:SUBJECT`, `cli:USER` or `unauthenticated`.
    principal: String,
    action: String,
    target: Option<String>,
    outcome: String,
    #[schema(value_type = Object)]
    details: Map<String, Value>,
    /// The client's address as the privacy setting stores it; none for a local command.
    client: Option<String>,
}

impl From<AuditEvent> for AuditRow {
    fn from(event: AuditEvent) -> AuditRow {
        AuditRow {
            id: event.id,
            time: rfc3339(event.time),
            principal: event.principal,
            action: event.action,
            target: event.target,
            outcome: event.outcome,
            details: event.details,
            client: event.client,
        }
    }
}

/// A page of the audit table.
#[derive(Serialize, ToSchema)]
struct AuditPage {
    /// Newest first.
    events: Vec<AuditRow>,
}

/// Administrative actions — models trained, rolled back, promoted or reloaded, tokens created or
/// revoked, keys changed — newest first (docs/security.md, "Access and audit log").
#[utoipa::path(get, path = "/api/v1/audit", tag = "malware server", security(("bearer" = ["admin"])), params(AuditFilter), responses(
    (status = 200, description = "the events, newest first", body = AuditPage),
    (status = 400, description = "an invalid query", body = sentinel_api::ErrorBody),
))]
async fn audit(
    State(shared): State<Arc<Shared>>,
    query: Result<Query<AuditFilter>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<AuditPage>, ApiError> {
    let Query(filter) = query
        .map_err(|rejection| ApiError::bad_request(format!("invalid query: {}", rejection.body_text())))?;
    let limit = filter.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_AUDIT_PAGE {
        return Err(ApiError::bad_request(format!("limit must be 1 to {MAX_AUDIT_PAGE}")));
    }
    let store = Arc::clone(&shared.analyser.store);
    let query = AuditQuery { limit, before: filter.before, action: filter.action };
    let events = tokio::task::spawn_blocking(move || store.audit_events(&query))
        .await
        .map_err(|error| ApiError::internal(error.to_string()))?
        .map_err(|error| {
            tracing::error!(%error, "cannot read the audit table");
            ApiError::internal(error.to_string())
        })?;
    Ok(Json(AuditPage { events: events.into_iter().map(AuditRow::from).collect() }))
}
