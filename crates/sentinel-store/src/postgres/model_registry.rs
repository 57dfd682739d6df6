//! The model registry's SQL on PostgreSQL (`crate::model_registry` keeps the validation and the
//! SQLite side). Replicas decide at once here: every decision and every pruning of a kind takes
//! the kind's transaction-level advisory lock first, so the version recorded as `previous_id` is
//! the one really replaced, and a version cannot be pruned between the check that its artifact is
//! kept and its activation.

use deadpool_postgres::GenericClient;
use tokio_postgres::Row;

use super::PgDatabase;
use crate::model_registry;
use crate::{DecisionRecord, ModelKind, ModelVersionInfo, NewDecision, Provenance, StoreError, StoredModel};

/// A new version's columns, owned by the job that writes them.
pub(crate) struct VersionRow {
    pub kind: ModelKind,
    pub label: String,
    pub created_at: i64,
    pub trainer: String,
    pub command: String,
    pub data: String,
    pub sha256: String,
    pub evaluation: Option<String>,
    pub artifact: Vec<u8>,
}

/// A version's columns (`available` and `active` as booleans); its artifact is read only where
/// it is wanted, as column 11.
const VERSION_COLUMNS: &str = "v.id, v.kind, v.label, v.created_at, v.trainer, v.command, v.data,
    v.sha256, v.evaluation, v.artifact IS NOT NULL, a.version_id IS NOT NULL";

const VERSIONS: &str =
    "FROM model_versions v LEFT JOIN active_models a ON a.kind = v.kind AND a.version_id = v.id";

/// Serialises the decisions and prunings of one kind across replicas, until the transaction ends.
const LOCK_KIND: &str =
    "SELECT pg_advisory_xact_lock(hashtextextended('sentinel.model_registry.' || $1::TEXT, 0))";

pub(crate) fn register(database: &PgDatabase, row: VersionRow) -> Result<ModelVersionInfo, StoreError> {
    database.run(move |client| async move {
        let statement = client
            .prepare_cached(
                "INSERT INTO model_versions (kind, label, created_at, trainer, command, data, sha256,
                 evaluation, artifact) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id",
            )
            .await?;
        let id: i64 = client
            .query_one(
                &statement,
                &[
                    &row.kind.as_str(),
                    &row.label,
                    &row.created_at,
                    &row.trainer,
                    &row.command,
                    &row.data,
                    &row.sha256,
                    &row.evaluation,
                    &row.artifact,
                ],
            )
            .await?
            .try_get(0)?;
        version_info(&client, row.kind, id)
            .await?
            .ok_or(StoreError::NoSuchModelVersion { kind: row.kind, id })
    })
}

pub(crate) fn decide(
    database: &PgDatabase,
    decision: NewDecision,
    now: i64,
) -> Result<DecisionRecord, StoreError> {
    database.run(move |mut client| async move {
        let NewDecision { kind, version_id, outcome, reason, figures } = decision;
        let transaction = client.transaction().await?;
        transaction.execute(LOCK_KIND, &[&kind.as_str()]).await?;
        let info = version_info(&transaction, kind, version_id)
            .await?
            .ok_or(StoreError::NoSuchModelVersion { kind, id: version_id })?;
        if model_registry::activates(outcome) && !info.available {
            return Err(StoreError::ModelArtifactPruned { kind, id: version_id });
        }
        let previous_id = active_id(&transaction, kind).await?;
        let statement = transaction
            .prepare_cached(
                "INSERT INTO model_decisions (kind, decided_at, outcome, version_id, previous_id, reason, figures)
                 VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
            )
            .await?;
        let id: i64 = transaction
            .query_one(
                &statement,
                &[
                    &kind.as_str(),
                    &now,
                    &outcome.as_str(),
                    &version_id,
                    &previous_id,
                    &reason,
                    &figures.to_string(),
                ],
            )
            .await?
            .try_get(0)?;
        if model_registry::activates(outcome) {
            let statement = transaction
                .prepare_cached(
                    "INSERT INTO active_models (kind, version_id, activated_at) VALUES ($1, $2, $3)
                     ON CONFLICT (kind) DO UPDATE SET version_id = excluded.version_id,
                     activated_at = excluded.activated_at",
                )
                .await?;
            transaction.execute(&statement, &[&kind.as_str(), &version_id, &now]).await?;
        }
        transaction.commit().await?;
        Ok(DecisionRecord { id, kind, decided_at: now, outcome, version_id, previous_id, reason, figures })
    })
}

pub(crate) fn active_model_id(database: &PgDatabase, kind: ModelKind) -> Result<Option<i64>, StoreError> {
    database.run(move |client| async move { active_id(&client, kind).await })
}

pub(crate) fn active_model(
    database: &PgDatabase,
    kind: ModelKind,
) -> Result<Option<StoredModel>, StoreError> {
    database.run(move |client| async move {
        // One statement, so the version read is the one active at that instant even while
        // another replica promotes.
        let statement = client
            .prepare_cached(&format!("SELECT {VERSION_COLUMNS}, v.artifact {VERSIONS} WHERE a.kind = $1"))
            .await?;
        match client.query_opt(&statement, &[&kind.as_str()]).await? {
            Some(row) => stored_from_row(&row),
            None => Ok(None),
        }
    })
}

pub(crate) fn stored_model(
    database: &PgDatabase,
    kind: ModelKind,
    id: i64,
) -> Result<Option<StoredModel>, StoreError> {
    database.run(move |client| async move {
        let statement = client
            .prepare_cached(&format!(
                "SELECT {VERSION_COLUMNS}, v.artifact {VERSIONS} WHERE v.kind = $1 AND v.id = $2"
            ))
            .await?;
        match client.query_opt(&statement, &[&kind.as_str(), &id]).await? {
            Some(row) => stored_from_row(&row),
            None => Ok(None),
        }
    })
}

pub(crate) fn versions(database: &PgDatabase, kind: ModelKind) -> Result<Vec<ModelVersionInfo>, StoreError> {
    database.run(move |client| async move {
        let statement = client
            .prepare_cached(&format!(
                "SELECT {VERSION_COLUMNS} {VERSIONS} WHERE v.kind = $1 ORDER BY v.id DESC"
            ))
            .await?;
        client.query(&statement, &[&kind.as_str()]).await?.iter().map(version_from_row).collect()
    })
}

pub(crate) fn decisions(database: &PgDatabase, kind: ModelKind) -> Result<Vec<DecisionRecord>, StoreError> {
    database.run(move |client| async move {
        let statement = client
            .prepare_cached(
                "SELECT id, kind, decided_at, outcome, version_id, previous_id, reason, figures
                 FROM model_decisions WHERE kind = $1 ORDER BY id",
            )
            .await?;
        client.query(&statement, &[&kind.as_str()]).await?.iter().map(decision_from_row).collect()
    })
}

pub(crate) fn prune(database: &PgDatabase, kind: ModelKind, keep: i64) -> Result<usize, StoreError> {
    database.run(move |mut client| async move {
        let transaction = client.transaction().await?;
        transaction.execute(LOCK_KIND, &[&kind.as_str()]).await?;
        let statement = transaction
            .prepare_cached(
                "UPDATE model_versions SET artifact = NULL
                 WHERE kind = $1 AND artifact IS NOT NULL
                 AND id NOT IN (SELECT version_id FROM active_models WHERE kind = $1)
                 AND id NOT IN (SELECT id FROM model_versions WHERE kind = $1 ORDER BY id DESC LIMIT $2)",
            )
            .await?;
        let pruned = transaction.execute(&statement, &[&kind.as_str(), &keep]).await?;
        transaction.commit().await?;
        Ok(pruned as usize)
    })
}

async fn active_id(client: &impl GenericClient, kind: ModelKind) -> Result<Option<i64>, StoreError> {
    let statement = client.prepare_cached("SELECT version_id FROM active_models WHERE kind = $1").await?;
    Ok(client.query_opt(&statement, &[&kind.as_str()]).await?.map(|row| row.try_get(0)).transpose()?)
}

async fn version_info(
    client: &impl GenericClient,
    kind: ModelKind,
    id: i64,
) -> Result<Option<ModelVersionInfo>, StoreError> {
    let statement = client
        .prepare_cached(&format!("SELECT {VERSION_COLUMNS} {VERSIONS} WHERE v.kind = $1 AND v.id = $2"))
        .await?;
    client.query_opt(&statement, &[&kind.as_str(), &id]).await?.as_ref().map(version_from_row).transpose()
}

/// A version and its artifact (column 11), `None` when the artifact was pruned.
fn stored_from_row(row: &Row) -> Result<Option<StoredModel>, StoreError> {
    let info = version_from_row(row)?;
    let artifact: Option<Vec<u8>> = row.try_get(11)?;
    Ok(artifact.map(|artifact| StoredModel { info, artifact }))
}

fn version_from_row(row: &Row) -> Result<ModelVersionInfo, StoreError> {
    let kind: String = row.try_get(1)?;
    let data: String = row.try_get(6)?;
    let evaluation: Option<String> = row.try_get(8)?;
    Ok(ModelVersionInfo {
        id: row.try_get(0)?,
        kind: model_registry::kind_column(&kind)?,
        label: row.try_get(2)?,
        created_at: row.try_get(3)?,
        provenance: Provenance {
            trainer: row.try_get(4)?,
            command: row.try_get(5)?,
            data: model_registry::json_column(&data, "data")?,
        },
        sha256: row.try_get(7)?,
        evaluation: evaluation.map(|text| model_registry::json_column(&text, "evaluation")).transpose()?,
        available: row.try_get(9)?,
        active: row.try_get(10)?,
    })
}

fn decision_from_row(row: &Row) -> Result<DecisionRecord, StoreError> {
    let kind: String = row.try_get(1)?;
    let outcome: String = row.try_get(3)?;
    let figures: String = row.try_get(7)?;
    Ok(DecisionRecord {
        id: row.try_get(0)?,
        kind: model_registry::kind_column(&kind)?,
        decided_at: row.try_get(2)?,
        outcome: model_registry::outcome_column(&outcome)?,
        version_id: row.try_get(4)?,
        previous_id: row.try_get(5)?,
        reason: row.try_get(6)?,
        figures: model_registry::json_column(&figures, "figures")?,
    })
}
