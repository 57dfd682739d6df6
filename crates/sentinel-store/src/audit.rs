//! The audit table: one row per administrative action — models trained, rolled back, promoted
//! or reloaded, API tokens created or revoked, keys changed — with who did it (the principal's
//! name, `cli:USER` for a local command; never a credential), from where (the client address
//! as the privacy setting renders it), on what, with which outcome, and details as a JSON
//! object. Rows are only ever added; `GET /api/v1/audit` and `docs/security.md` read them.
//!
//! Whoever performs an action records it through [`Store::record_audit_event`]; a command run
//! on the host names its principal with [`local_user_principal`].

use rusqlite::{Row, params};
use serde_json::{Map, Value};

use crate::{Store, StoreError, Tables, postgres};

/// Longest principal, target or client accepted, in bytes.
const MAX_TEXT_LEN: usize = 512;

/// Longest action or outcome accepted, in bytes.
const MAX_WORD_LEN: usize = 64;

/// Largest details object accepted, in bytes of JSON.
const MAX_DETAILS_LEN: usize = 16 * 1024;

/// Most rows one listing returns.
pub const MAX_AUDIT_PAGE: usize = 1000;

/// An action to record.
#[derive(Debug, Clone, PartialEq)]
pub struct NewAuditEvent {
    /// Who: `token:NAME#ID`, `jwt:SUBJECT`, `cert:SUBJECT`, `cli:USER`, or `unauthenticated`.
    pub principal: String,
    /// What, as a dotted word: `model.train`, `model.rollback`, `model.promote`, `model.reload`,
    /// `token.create`, `token.revoke`, `key.change`…
    pub action: String,
    /// On what: a token's name, a model's kind and version, a job's id.
    pub target: Option<String>,
    /// `ok`, `failed`, `refused`…
    pub outcome: String,
    /// Anything else worth keeping, as a JSON object (never a secret).
    pub details: Map<String, Value>,
    /// The client's address as the privacy setting renders it; `None` for a local command.
    pub client: Option<String>,
}

/// A recorded action.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEvent {
    pub id: i64,
    /// Unix seconds.
    pub time: i64,
    pub principal: String,
    pub action: String,
    pub target: Option<String>,
    pub outcome: String,
    pub details: Map<String, Value>,
    pub client: Option<String>,
}

/// Which rows to list: newest first, at most `limit`, older than the row `before` when given,
/// of one action when given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    pub limit: usize,
    pub before: Option<i64>,
    pub action: Option<String>,
}

/// The principal of a command run on this host: `cli:` and the OS user running it (`USER`,
/// else `LOGNAME`, else the numeric user id).
pub fn local_user_principal() -> String {
    let user = ["USER", "LOGNAME"]
        .into_iter()
        .filter_map(|name| std::env::var(name).ok())
        .find(|user| !user.trim().is_empty());
    match user {
        Some(user) => format!("cli:{user}"),
        None => format!("cli:uid={}", user_id().map_or_else(|| "unknown".to_owned(), |id| id.to_string())),
    }
}

#[cfg(unix)]
fn user_id() -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    // A process's /proc entry belongs to the user it runs as.
    std::fs::metadata("/proc/self").ok().map(|metadata| metadata.uid())
}

#[cfg(not(unix))]
fn user_id() -> Option<u32> {
    None
}

impl NewAuditEvent {
    /// An action by `principal` from `client`, with no details yet.
    pub fn new(
        principal: impl Into<String>,
        action: impl Into<String>,
        target: Option<String>,
        outcome: impl Into<String>,
        client: Option<String>,
    ) -> NewAuditEvent {
        NewAuditEvent {
            principal: principal.into(),
            action: action.into(),
            target,
            outcome: outcome.into(),
            details: Map::new(),
            client,
        }
    }

    /// The same event with `key` set to `value` in its details.
    pub fn with_detail(mut self, key: &str, value: impl Into<Value>) -> NewAuditEvent {
        self.details.insert(key.to_owned(), value.into());
        self
    }

    fn validate(&self) -> Result<String, StoreError> {
        let invalid = |reason: String| Err(StoreError::InvalidAuditEvent(reason));
        let is_word = |text: &str| {
            !text.is_empty()
                && text.len() <= MAX_WORD_LEN
                && text.bytes().all(|byte| byte.is_ascii_alphanumeric() || b"._:-".contains(&byte))
        };
        if !is_word(&self.action) || !is_word(&self.outcome) {
            return invalid(format!(
                "action and outcome must be 1 to {MAX_WORD_LEN} letters, digits or . _ : -"
            ));
        }
        let texts = [Some(&self.principal), self.target.as_ref(), self.client.as_ref()];
        if self.principal.is_empty()
            || texts
                .into_iter()
                .flatten()
                .any(|text| text.len() > MAX_TEXT_LEN || text.chars().any(char::is_control))
        {
            return invalid(format!(
                "principal, target and client must have at most {MAX_TEXT_LEN} bytes and no control characters"
            ));
        }
        let details = serde_json::to_string(&self.details)
            .map_err(|error| StoreError::InvalidAuditEvent(error.to_string()))?;
        if details.len() > MAX_DETAILS_LEN {
            return invalid(format!("details must have at most {MAX_DETAILS_LEN} bytes of JSON"));
        }
        Ok(details)
    }
}

const COLUMNS: &str = "id, time, principal, action, target, outcome, details, client";

fn event_from_row(row: &Row<'_>) -> rusqlite::Result<AuditEvent> {
    let details: String = row.get(6)?;
    Ok(AuditEvent {
        id: row.get(0)?,
        time: row.get(1)?,
        principal: row.get(2)?,
        action: row.get(3)?,
        target: row.get(4)?,
        outcome: row.get(5)?,
        // The column is checked to be JSON when written: an object, as written.
        details: serde_json::from_str(&details).unwrap_or_default(),
        client: row.get(7)?,
    })
}

impl Store {
    /// Records `event` at the current time; durable when this returns. Returns its row.
    pub fn record_audit_event(&self, event: NewAuditEvent) -> Result<AuditEvent, StoreError> {
        let details = event.validate()?;
        let time = self.now();
        let database = match &self.tables {
            Tables::Sqlite(database) => database,
            Tables::Postgres(database) => return postgres::audit::record(database, event, details, time),
        };
        database.write(move |connection| {
            connection
                .prepare_cached(
                    "INSERT INTO audit_events (time, principal, action, target, outcome, details, client)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )?
                .execute(params![
                    time,
                    event.principal,
                    event.action,
                    event.target,
                    event.outcome,
                    details,
                    event.client
                ])?;
            Ok(AuditEvent {
                id: connection.last_insert_rowid(),
                time,
                principal: event.principal,
                action: event.action,
                target: event.target,
                outcome: event.outcome,
                details: event.details,
                client: event.client,
            })
        })
    }

    /// The rows `query` asks for, newest first (a `limit` of 0 or above [`MAX_AUDIT_PAGE`]
    /// lists [`MAX_AUDIT_PAGE`]).
    pub fn audit_events(&self, query: &AuditQuery) -> Result<Vec<AuditEvent>, StoreError> {
        let limit = if query.limit == 0 { MAX_AUDIT_PAGE } else { query.limit.min(MAX_AUDIT_PAGE) };
        let database = match &self.tables {
            Tables::Sqlite(database) => database,
            Tables::Postgres(database) => {
                return postgres::audit::query(database, query.before, query.action.clone(), limit as i64);
            }
        };
        database.read(|connection| {
            let mut statement = connection.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM audit_events
                 WHERE (?1 IS NULL OR id < ?1) AND (?2 IS NULL OR action = ?2)
                 ORDER BY id DESC LIMIT ?3"
            ))?;
            let rows = statement
                .query_map(params![query.before, query.action, limit as i64], event_from_row)?
                .collect::<Result<_, _>>()?;
            Ok(rows)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backends::each_backend;

    #[test]
    fn events_are_listed_newest_first_by_page_and_action_and_survive_a_reopen() {
        each_backend(crate::system_clock, |fixture| {
            let store = fixture.open();
            for number in 0..5 {
                let action = if number % 2 == 0 { "token.create" } else { "model.train" };
                let event = NewAuditEvent::new(
                    "token:admin#1",
                    action,
                    Some(format!("target-{number}")),
                    "ok",
                    Some("10.0.0.1".to_owned()),
                )
                .with_detail("scopes", "network:read");
                store.record_audit_event(event).unwrap();
            }
            let page = store.audit_events(&AuditQuery { limit: 2, ..AuditQuery::default() }).unwrap();
            assert_eq!(
                page.iter().map(|event| event.target.as_deref().unwrap()).collect::<Vec<_>>(),
                ["target-4", "target-3"]
            );
            let next =
                store.audit_events(&AuditQuery { limit: 2, before: Some(page[1].id), action: None }).unwrap();
            assert_eq!(
                next.iter().map(|event| event.target.as_deref().unwrap()).collect::<Vec<_>>(),
                ["target-2", "target-1"]
            );
            let trains = AuditQuery { action: Some("model.train".to_owned()), ..AuditQuery::default() };
            assert_eq!(store.audit_events(&trains).unwrap().len(), 2);
            let older_trains = AuditQuery { before: Some(page[1].id), ..trains };
            assert_eq!(store.audit_events(&older_trains).unwrap()[0].target.as_deref(), Some("target-1"));
            drop(store);
            let store = fixture.open();
            let all = store.audit_events(&AuditQuery::default()).unwrap();
            assert_eq!(all.len(), 5);
            assert!(all.windows(2).all(|pair| pair[0].id > pair[1].id), "newest first");
            assert_eq!(all[4].principal, "token:admin#1");
            assert_eq!(all[4].details["scopes"], "network:read");
            assert_eq!(all[4].client.as_deref(), Some("10.0.0.1"));
        });
    }

    #[test]
    fn malformed_events_are_refused_with_a_reason() {
        each_backend(crate::system_clock, |fixture| {
            let store = fixture.open();
            let event =
                |action: &str, principal: &str| NewAuditEvent::new(principal, action, None, "ok", None);
            for bad in [event("", "cli:root"), event("token create", "cli:root"), event("token.create", "")] {
                let error = store.record_audit_event(bad).unwrap_err();
                assert!(matches!(error, StoreError::InvalidAuditEvent(_)), "{error}");
            }
            let huge = event("token.create", "cli:root").with_detail("blob", "x".repeat(20_000));
            assert!(store.record_audit_event(huge).unwrap_err().to_string().contains("details"));
            assert!(store.audit_events(&AuditQuery::default()).unwrap().is_empty());
        });
    }

    #[test]
    fn a_local_command_is_named_after_the_os_user() {
        let principal = local_user_principal();
        assert!(principal.starts_with("cli:") && principal.len() > 4, "{principal}");
    }
}
