//! The audit table's SQL on PostgreSQL (`crate::audit` keeps the validation and the SQLite side).
//! Rows are only added, so there is nothing to serialise between replicas; a listing pages by id.

use tokio_postgres::Row;

use super::PgDatabase;
use crate::{AuditEvent, NewAuditEvent, StoreError};

const COLUMNS: &str = "id, time, principal, action, target, outcome, details, client";

/// Inserts `event` (its details already serialised as `details`) and returns its id.
pub(crate) fn record(
    database: &PgDatabase,
    event: NewAuditEvent,
    details: String,
    time: i64,
) -> Result<AuditEvent, StoreError> {
    database.run(move |client| async move {
        let statement = client
            .prepare_cached(
                "INSERT INTO audit_events (time, principal, action, target, outcome, details, client)
                 VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
            )
            .await?;
        let row = client
            .query_one(
                &statement,
                &[
                    &time,
                    &event.principal,
                    &event.action,
                    &event.target,
                    &event.outcome,
                    &details,
                    &event.client,
                ],
            )
            .await?;
        Ok(AuditEvent {
            id: row.try_get(0)?,
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

/// At most `limit` rows older than `before`, of `action` when given, newest first.
pub(crate) fn query(
    database: &PgDatabase,
    before: Option<i64>,
    action: Option<String>,
    limit: i64,
) -> Result<Vec<AuditEvent>, StoreError> {
    database.run(move |client| async move {
        let statement = client
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM audit_events
                 WHERE ($1::BIGINT IS NULL OR id < $1) AND ($2::TEXT IS NULL OR action = $2)
                 ORDER BY id DESC LIMIT $3"
            ))
            .await?;
        client.query(&statement, &[&before, &action, &limit]).await?.iter().map(event).collect()
    })
}

fn event(row: &Row) -> Result<AuditEvent, StoreError> {
    let details: String = row.try_get(6)?;
    Ok(AuditEvent {
        id: row.try_get(0)?,
        time: row.try_get(1)?,
        principal: row.try_get(2)?,
        action: row.try_get(3)?,
        target: row.try_get(4)?,
        outcome: row.try_get(5)?,
        // Written by the store as a JSON object; as on SQLite, anything else reads as empty.
        details: serde_json::from_str(&details).unwrap_or_default(),
        client: row.try_get(7)?,
    })
}
