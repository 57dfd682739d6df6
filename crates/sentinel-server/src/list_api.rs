//! The safelist and badlist over HTTP (scope `admin`): `GET` and `POST /api/v1/lists/{list}`,
//! `DELETE /api/v1/lists/{list}/{sha256}`, `{list}` being `safe` or `bad`. Each change is
//! recorded in the audit table (`list.add`, `list.remove`) with who made it. The lists live in
//! the store (`sentinel_store::HashList`), where the analysis pipeline reads them for every
//! request, so a change applies to the next request.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use sentinel_api::{ApiError, Caller};
use sentinel_store::{
    HashList, ListEntry, ListQuery, MAX_LIST_PAGE, NewAuditEvent, NewListEntry, StoreError,
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::http::{record_audit, rfc3339};
use crate::state::Shared;

/// Entries per page by default.
const DEFAULT_PAGE: usize = 100;

/// One entry of a list.
#[derive(Serialize, ToSchema)]
pub(crate) struct ListEntryBody {
    sha256: String,
    /// `safe` or `bad`.
    list: String,
    reason: String,
    source: String,
    /// RFC 3339, UTC.
    added_at: String,
    /// Who added it: `token:NAME#ID`, `jwt:SUBJECT`, `cli:USER`…
    added_by: String,
}

impl From<ListEntry> for ListEntryBody {
    fn from(entry: ListEntry) -> ListEntryBody {
        ListEntryBody {
            sha256: entry.sha256,
            list: entry.list.as_str().to_owned(),
            reason: entry.reason,
            source: entry.source,
            added_at: rfc3339(entry.added_at),
            added_by: entry.added_by,
        }
    }
}

/// A page of a list.
#[derive(Serialize, ToSchema)]
pub(crate) struct ListPage {
    /// Ordered by hash.
    entries: Vec<ListEntryBody>,
}

/// The page of `GET /api/v1/lists/{list}`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct PageQuery {
    /// At most this many entries (default 100, at most 1000).
    limit: Option<usize>,
    /// Only entries after this hash (the last of the previous page).
    after: Option<String>,
}

/// An entry to add.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewEntryBody {
    /// The file's SHA-256, 64 hex digits.
    sha256: String,
    /// Why it is listed (1 to 1024 bytes).
    reason: String,
    /// Where the decision comes from: a ticket, a feed, an analyst (1 to 256 bytes). Default
    /// `api`.
    source: Option<String>,
}

/// The entry added, and the one it replaced.
#[derive(Serialize, ToSchema)]
pub(crate) struct Added {
    entry: ListEntryBody,
    /// The hash's previous entry, on this list or the other one (it moved); `null` if none.
    replaced: Option<ListEntryBody>,
}

/// The entry removed.
#[derive(Serialize, ToSchema)]
pub(crate) struct Removed {
    removed: ListEntryBody,
}

fn list_of(name: &str) -> Result<HashList, ApiError> {
    name.parse().map_err(|error: sentinel_store::UnknownList| {
        ApiError::new(StatusCode::NOT_FOUND, format!("{error}: the lists are /api/v1/lists/safe and /bad"))
    })
}

/// A store failure: the caller's input (400) or the server's (500).
fn store_error(error: StoreError) -> ApiError {
    match error {
        StoreError::InvalidSha256(_) | StoreError::InvalidListEntry(_) => {
            ApiError::bad_request(error.to_string())
        }
        error => {
            tracing::error!(%error, "the lists could not be read or changed");
            ApiError::internal("the store could not be read or written")
        }
    }
}

async fn blocking<T: Send + 'static>(
    job: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(job)
        .await
        .map_err(|error| ApiError::internal(error.to_string()))?
        .map_err(store_error)
}

/// The entries of the safelist (`safe`) or the badlist (`bad`), ordered by hash.
#[utoipa::path(get, path = "/api/v1/lists/{list}", tag = "malware lists", security(("bearer" = ["admin"])),
    params(("list" = String, Path, description = "`safe` or `bad`"), PageQuery),
    responses(
        (status = 200, description = "a page of the list", body = ListPage),
        (status = 400, description = "an invalid query", body = sentinel_api::ErrorBody),
        (status = 404, description = "no such list", body = sentinel_api::ErrorBody),
    ))]
pub(crate) async fn list_entries(
    State(shared): State<Arc<Shared>>,
    Path(list): Path<String>,
    query: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Json<ListPage>, ApiError> {
    let list = list_of(&list)?;
    let Query(page) = query
        .map_err(|rejection| ApiError::bad_request(format!("invalid query: {}", rejection.body_text())))?;
    let limit = page.limit.unwrap_or(DEFAULT_PAGE);
    if limit == 0 || limit > MAX_LIST_PAGE {
        return Err(ApiError::bad_request(format!("limit must be 1 to {MAX_LIST_PAGE}")));
    }
    let store = Arc::clone(&shared.analyser.store);
    let query = ListQuery { list, after: page.after, limit: Some(limit) };
    let entries = blocking(move || store.list_entries(&query)).await?;
    Ok(Json(ListPage { entries: entries.into_iter().map(ListEntryBody::from).collect() }))
}

/// Puts a hash on the safelist or the badlist (moving it from the other list if it is there).
/// From the next request on, the hash is answered from the list without any analysis.
#[utoipa::path(post, path = "/api/v1/lists/{list}", tag = "malware lists", security(("bearer" = ["admin"])),
    params(("list" = String, Path, description = "`safe` or `bad`")),
    request_body = NewEntryBody,
    responses(
        (status = 200, description = "the entry, and the one it replaced", body = Added),
        (status = 400, description = "an invalid hash, reason or source", body = sentinel_api::ErrorBody),
        (status = 404, description = "no such list", body = sentinel_api::ErrorBody),
    ))]
pub(crate) async fn add_entry(
    State(shared): State<Arc<Shared>>,
    Path(list): Path<String>,
    caller: Caller,
    body: Result<Json<NewEntryBody>, JsonRejection>,
) -> Result<Json<Added>, ApiError> {
    let list = list_of(&list)?;
    let Json(body) = body.map_err(|rejection| ApiError::bad_request(rejection.body_text()))?;
    let store = Arc::clone(&shared.analyser.store);
    let added_by = caller.principal_name().to_owned();
    let source = body.source.unwrap_or_else(|| "api".to_owned());
    let (sha256, reason) = (body.sha256, body.reason);
    let entry = NewEntryOwned { sha256, reason, source, added_by };
    let job = entry.clone();
    let added = blocking(move || {
        let replaced = store.add_list_entry(&job.borrowed(list))?;
        let entry = store.list_entry(&job.sha256)?;
        Ok((entry, replaced))
    })
    .await;
    // A refused input changed nothing and says nothing about who may do what: not recorded.
    let added = match added {
        Err(error) if error.status == StatusCode::BAD_REQUEST => return Err(error),
        added => added,
    };
    let event = NewAuditEvent::new(
        caller.principal_name(),
        "list.add",
        Some(format!("{list}:{}", entry.sha256.to_ascii_lowercase())),
        if added.is_ok() { "ok" } else { "failed" },
        caller.client.clone(),
    )
    .with_detail("reason", entry.reason.as_str())
    .with_detail("source", entry.source.as_str());
    let event = match &added {
        Ok((_, Some(replaced))) => event.with_detail("replaced_list", replaced.list.as_str()),
        Ok(_) => event,
        Err(error) => event.with_detail("error", error.message.as_str()),
    };
    record_audit(&shared, event).await;
    let (entry, replaced) = added?;
    let entry = entry.ok_or_else(|| ApiError::internal("the entry was written but cannot be read back"))?;
    Ok(Json(Added { entry: entry.into(), replaced: replaced.map(ListEntryBody::from) }))
}

/// The fields of a [`NewListEntry`], owned, to move into a blocking job.
#[derive(Debug, Clone)]
struct NewEntryOwned {
    sha256: String,
    reason: String,
    source: String,
    added_by: String,
}

impl NewEntryOwned {
    fn borrowed(&self, list: HashList) -> NewListEntry<'_> {
        NewListEntry {
            sha256: &self.sha256,
            list,
            reason: &self.reason,
            source: &self.source,
            added_by: &self.added_by,
        }
    }
}

/// Takes a hash off a list; 404 when it is not on that list.
#[utoipa::path(delete, path = "/api/v1/lists/{list}/{sha256}", tag = "malware lists", security(("bearer" = ["admin"])),
    params(("list" = String, Path, description = "`safe` or `bad`"), ("sha256" = String, Path, description = "64 hex digits")),
    responses(
        (status = 200, description = "the entry removed", body = Removed),
        (status = 400, description = "not a SHA-256", body = sentinel_api::ErrorBody),
        (status = 404, description = "no such list, or the hash is not on it", body = sentinel_api::ErrorBody),
    ))]
pub(crate) async fn remove_entry(
    State(shared): State<Arc<Shared>>,
    Path((list, sha256)): Path<(String, String)>,
    caller: Caller,
) -> Result<Json<Removed>, ApiError> {
    let list = list_of(&list)?;
    let store = Arc::clone(&shared.analyser.store);
    let key = sha256.clone();
    let removed = blocking(move || store.remove_list_entry(list, &key)).await?;
    let Some(removed) = removed else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("{} is not on the {list} list", sha256.to_ascii_lowercase()),
        ));
    };
    let event = NewAuditEvent::new(
        caller.principal_name(),
        "list.remove",
        Some(format!("{list}:{}", removed.sha256)),
        "ok",
        caller.client.clone(),
    )
    .with_detail("reason", removed.reason.as_str())
    .with_detail("source", removed.source.as_str());
    record_audit(&shared, event).await;
    Ok(Json(Removed { removed: removed.into() }))
}
