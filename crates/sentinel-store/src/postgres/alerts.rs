//! Alerts and their outbox on PostgreSQL (`crate::alerts` keeps the validation and the SQLite
//! side). Raising an alert checks the cooldown and writes in one transaction that first takes an
//! advisory lock on the alert's rule and key: two replicas raising the same rule and key at once
//! are serialised, so one writes the alert and the other counts a repeat of it, as SQLite's one
//! writer does. Readings that join an alert to its deliveries run in one snapshot.

use deadpool_postgres::GenericClient;
use tokio_postgres::{IsolationLevel, Row};

use super::PgDatabase;
use crate::alerts::{self, ALERT_COLUMNS, DELIVERY_COLUMNS};
use crate::{AlertDelivery, AlertRecord, DueDelivery, Raised, StoreError};

/// An alert to write, owned by the job that writes it.
pub(crate) struct AlertRow {
    pub rule: String,
    pub key: String,
    pub severity: String,
    pub summary: String,
    pub details: String,
    pub channels: Vec<String>,
    /// Raises of the same rule and key after this instant are within the cooldown.
    pub since: i64,
    pub now: i64,
}

pub(crate) fn raise(database: &PgDatabase, alert: AlertRow) -> Result<Raised, StoreError> {
    database.run(move |mut client| async move {
        let transaction = client.transaction().await?;
        // Rules are words of a-z, 0-9 and _, so "rule:key" names one rule and key.
        transaction
            .execute(
                "SELECT pg_advisory_xact_lock(hashtextextended('sentinel.alerts.' || $1::TEXT || ':' || $2::TEXT, 0))",
                &[&alert.rule, &alert.key],
            )
            .await?;
        let statement = transaction
            .prepare_cached(
                "SELECT id FROM alerts WHERE rule = $1 AND key = $2 AND raised_at > $3 ORDER BY id DESC LIMIT 1",
            )
            .await?;
        let recent = transaction.query_opt(&statement, &[&alert.rule, &alert.key, &alert.since]).await?;
        if let Some(row) = recent {
            let id: i64 = row.try_get(0)?;
            let statement = transaction
                .prepare_cached("UPDATE alerts SET repeats = repeats + 1, last_raised_at = $2 WHERE id = $1")
                .await?;
            transaction.execute(&statement, &[&id, &alert.now]).await?;
            transaction.commit().await?;
            return Ok(Raised::Repeat(id));
        }
        let statement = transaction
            .prepare_cached(
                "INSERT INTO alerts (rule, key, severity, summary, details, raised_at, last_raised_at, repeats)
                 VALUES ($1, $2, $3, $4, $5, $6, $6, 0) RETURNING id",
            )
            .await?;
        let id: i64 = transaction
            .query_one(
                &statement,
                &[&alert.rule, &alert.key, &alert.severity, &alert.summary, &alert.details, &alert.now],
            )
            .await?
            .try_get(0)?;
        let insert = transaction
            .prepare_cached(
                "INSERT INTO alert_deliveries (alert_id, channel, state, attempts, next_attempt_at)
                 VALUES ($1, $2, 'pending', 0, $3) ON CONFLICT DO NOTHING",
            )
            .await?;
        for channel in &alert.channels {
            transaction.execute(&insert, &[&id, channel, &alert.now]).await?;
        }
        transaction.commit().await?;
        Ok(Raised::New(id))
    })
}

pub(crate) fn alert(database: &PgDatabase, id: i64) -> Result<Option<AlertRecord>, StoreError> {
    database.run(move |mut client| async move {
        let transaction = snapshot(&mut client).await?;
        Ok(with_deliveries(&transaction, alerts_by_ids(&transaction, &[id]).await?).await?.pop())
    })
}

pub(crate) fn list(
    database: &PgDatabase,
    acknowledged: &'static str,
    before: i64,
    limit: i64,
) -> Result<Vec<AlertRecord>, StoreError> {
    database.run(move |mut client| async move {
        let transaction = snapshot(&mut client).await?;
        let statement = transaction
            .prepare_cached(&format!(
                "SELECT {ALERT_COLUMNS} FROM alerts WHERE id < $1 {acknowledged} ORDER BY id DESC LIMIT $2"
            ))
            .await?;
        let rows = transaction.query(&statement, &[&before, &limit]).await?;
        let found = rows.iter().map(alert_from_row).collect::<Result<Vec<_>, _>>()?;
        with_deliveries(&transaction, found).await
    })
}

pub(crate) fn acknowledge(
    database: &PgDatabase,
    id: i64,
    by: String,
    note: Option<String>,
    now: i64,
) -> Result<Option<AlertRecord>, StoreError> {
    database.run(move |mut client| async move {
        let transaction = client.transaction().await?;
        let statement = transaction
            .prepare_cached(
                "UPDATE alerts SET acknowledged_at = $2, acknowledged_by = $3, acknowledgement_note = $4
                 WHERE id = $1 AND acknowledged_at IS NULL",
            )
            .await?;
        transaction.execute(&statement, &[&id, &now, &by, &note]).await?;
        let found = with_deliveries(&transaction, alerts_by_ids(&transaction, &[id]).await?).await?.pop();
        transaction.commit().await?;
        Ok(found)
    })
}

pub(crate) fn due(
    database: &PgDatabase,
    channel: String,
    now: i64,
    limit: i64,
) -> Result<Vec<DueDelivery>, StoreError> {
    database.run(move |mut client| async move {
        let transaction = snapshot(&mut client).await?;
        let statement = transaction
            .prepare_cached(
                "SELECT alert_id, attempts FROM alert_deliveries
                 WHERE state = 'pending' AND channel = $1 AND next_attempt_at <= $2
                 ORDER BY next_attempt_at, alert_id LIMIT $3",
            )
            .await?;
        let due = transaction
            .query(&statement, &[&channel, &now, &limit])
            .await?
            .iter()
            .map(|row| Ok((row.try_get::<_, i64>(0)?, attempts(row.try_get(1)?))))
            .collect::<Result<Vec<_>, StoreError>>()?;
        let ids: Vec<i64> = due.iter().map(|(id, _)| *id).collect();
        let found = with_deliveries(&transaction, alerts_by_ids(&transaction, &ids).await?).await?;
        Ok(due
            .into_iter()
            .filter_map(|(id, attempts)| {
                let alert = found.iter().find(|alert| alert.id == id)?.clone();
                Some(DueDelivery { alert, channel: channel.clone(), attempts })
            })
            .collect())
    })
}

pub(crate) fn next_delivery_at(database: &PgDatabase, channel: String) -> Result<Option<i64>, StoreError> {
    database.run(move |client| async move {
        let statement = client
            .prepare_cached(
                "SELECT min(next_attempt_at) FROM alert_deliveries WHERE state = 'pending' AND channel = $1",
            )
            .await?;
        Ok(client.query_one(&statement, &[&channel]).await?.try_get(0)?)
    })
}

pub(crate) fn abandon(database: &PgDatabase, configured: Vec<String>) -> Result<usize, StoreError> {
    database.run(move |client| async move {
        let statement = client
            .prepare_cached(
                "UPDATE alert_deliveries SET state = 'failed', next_attempt_at = NULL,
                    last_error = 'the channel is no longer configured'
                 WHERE state = 'pending' AND channel <> ALL($1::TEXT[])",
            )
            .await?;
        Ok(client.execute(&statement, &[&configured]).await? as usize)
    })
}

pub(crate) fn delivered(
    database: &PgDatabase,
    alert_id: i64,
    channel: String,
    now: i64,
) -> Result<(), StoreError> {
    database.run(move |client| async move {
        let statement = client
            .prepare_cached(
                "UPDATE alert_deliveries SET state = 'delivered', attempts = attempts + 1,
                    delivered_at = $3, next_attempt_at = NULL, last_error = NULL
                 WHERE alert_id = $1 AND channel = $2",
            )
            .await?;
        client.execute(&statement, &[&alert_id, &channel, &now]).await?;
        Ok(())
    })
}

pub(crate) fn failed(
    database: &PgDatabase,
    alert_id: i64,
    channel: String,
    state: &'static str,
    error: String,
    retry_at: Option<i64>,
) -> Result<(), StoreError> {
    database.run(move |client| async move {
        let statement = client
            .prepare_cached(
                "UPDATE alert_deliveries SET state = $3, attempts = attempts + 1, next_attempt_at = $4,
                    last_error = $5
                 WHERE alert_id = $1 AND channel = $2",
            )
            .await?;
        client.execute(&statement, &[&alert_id, &channel, &state, &retry_at, &error]).await?;
        Ok(())
    })
}

/// A read-only transaction seeing one snapshot, so an alert and its deliveries read in separate
/// statements agree with each other.
async fn snapshot(
    client: &mut deadpool_postgres::Client,
) -> Result<deadpool_postgres::Transaction<'_>, StoreError> {
    Ok(client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?)
}

async fn alerts_by_ids(client: &impl GenericClient, ids: &[i64]) -> Result<Vec<AlertRecord>, StoreError> {
    let statement = client
        .prepare_cached(&format!("SELECT {ALERT_COLUMNS} FROM alerts WHERE id = ANY($1) ORDER BY id"))
        .await?;
    client.query(&statement, &[&ids]).await?.iter().map(alert_from_row).collect()
}

/// `found` with each alert's deliveries, ordered by channel, read in one statement.
async fn with_deliveries(
    client: &impl GenericClient,
    mut found: Vec<AlertRecord>,
) -> Result<Vec<AlertRecord>, StoreError> {
    let ids: Vec<i64> = found.iter().map(|alert| alert.id).collect();
    let statement = client
        .prepare_cached(&format!(
            "SELECT alert_id, {DELIVERY_COLUMNS} FROM alert_deliveries WHERE alert_id = ANY($1)
             ORDER BY alert_id, channel"
        ))
        .await?;
    for row in client.query(&statement, &[&ids]).await? {
        let alert_id: i64 = row.try_get(0)?;
        if let Some(alert) = found.iter_mut().find(|alert| alert.id == alert_id) {
            alert.deliveries.push(delivery_from_row(&row)?);
        }
    }
    Ok(found)
}

fn alert_from_row(row: &Row) -> Result<AlertRecord, StoreError> {
    let details: String = row.try_get(5)?;
    let details = serde_json::from_str(&details).map_err(|error| {
        StoreError::InvalidAlert(format!("stored details are not a JSON object: {error}"))
    })?;
    Ok(AlertRecord {
        id: row.try_get(0)?,
        rule: row.try_get(1)?,
        key: row.try_get(2)?,
        severity: row.try_get(3)?,
        summary: row.try_get(4)?,
        details,
        raised_at: row.try_get(6)?,
        last_raised_at: row.try_get(7)?,
        repeats: row.try_get::<_, i64>(8)?.max(0) as u64,
        acknowledged_at: row.try_get(9)?,
        acknowledged_by: row.try_get(10)?,
        acknowledgement_note: row.try_get(11)?,
        deliveries: Vec::new(),
    })
}

/// A delivery from its columns, which follow the alert's id (column 0).
fn delivery_from_row(row: &Row) -> Result<AlertDelivery, StoreError> {
    let state: String = row.try_get(2)?;
    Ok(AlertDelivery {
        channel: row.try_get(1)?,
        state: alerts::delivery_state_column(&state)?,
        attempts: attempts(row.try_get(3)?),
        next_attempt_at: row.try_get(4)?,
        last_error: row.try_get(5)?,
        delivered_at: row.try_get(6)?,
    })
}

/// Tries so far: a count the store increments by one, far from `u32::MAX`.
fn attempts(count: i64) -> u32 {
    u32::try_from(count.max(0)).unwrap_or(u32::MAX)
}
