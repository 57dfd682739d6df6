//! The model registry: every version of the static, behaviour and network models, with where it
//! came from (trainer, command, training data, the artifact's SHA-256), its evaluation, the
//! decisions taken on it (promoted or rejected by a champion/challenger gate, activated by hand
//! or by a rollback, each with its reason and figures), and which version of each kind is active.
//!
//! Artifacts are opaque bytes: each model's crate owns its format (the static and behaviour
//! models' JSON files, the network service's bundle). The server loads the active static and
//! behaviour models from here; the network service saves, activates and rolls back through it.
//! Pruning keeps a version's row and decisions and drops only its artifact, so the history of
//! what was in service stays complete.

use std::fmt;

use rusqlite::{Connection, OptionalExtension, Row, params};
use sha2::{Digest, Sha256};

use crate::{Store, StoreError};

/// Which model a version is of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ModelKind {
    /// The static PE classifier.
    Static,
    /// The behaviour (API-call) classifier.
    Behaviour,
    /// The network anomaly-detection ensemble.
    Network,
}

impl ModelKind {
    /// The name stored: `static`, `behaviour` or `network`.
    pub fn as_str(self) -> &'static str {
        match self {
            ModelKind::Static => "static",
            ModelKind::Behaviour => "behaviour",
            ModelKind::Network => "network",
        }
    }

    fn from_name(name: &str) -> Option<ModelKind> {
        [ModelKind::Static, ModelKind::Behaviour, ModelKind::Network]
            .into_iter()
            .find(|kind| kind.as_str() == name)
    }
}

impl fmt::Display for ModelKind {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// Where a model version came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Provenance {
    /// What trained it, with its version (`sentinel 0.1.0`).
    pub trainer: String,
    /// The command or trigger that trained it (`sentinel train static --labelled-samples …`,
    /// `network training: schedule`).
    pub command: String,
    /// The training data: files, row counts, seeds — whatever reproduces it (a JSON object).
    pub data: serde_json::Value,
}

/// A model version to register.
#[derive(Debug, Clone, PartialEq)]
pub struct NewModelVersion {
    pub kind: ModelKind,
    /// The model's own version label (the static model's version string); may be empty.
    pub label: String,
    pub provenance: Provenance,
    /// Its evaluation (a JSON value), if it was measured.
    pub evaluation: Option<serde_json::Value>,
    /// The model itself, in its crate's format.
    pub artifact: Vec<u8>,
}

/// A registered model version, without its artifact.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelVersionInfo {
    /// The registry's id: unique across kinds, increasing in registration order.
    pub id: i64,
    pub kind: ModelKind,
    pub label: String,
    /// Unix seconds.
    pub created_at: i64,
    pub provenance: Provenance,
    /// SHA-256 of the artifact, lowercase hex.
    pub sha256: String,
    pub evaluation: Option<serde_json::Value>,
    /// Whether the artifact is still kept (pruned versions keep only their row).
    pub available: bool,
    /// Whether this is the active version of its kind.
    pub active: bool,
}

/// A model version with its artifact.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredModel {
    pub info: ModelVersionInfo,
    pub artifact: Vec<u8>,
}

/// What was decided about a version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecisionOutcome {
    /// A gate found it not worse than the active version: it is now active.
    Promoted,
    /// A gate found it worse: the active version stays.
    Rejected,
    /// Made active without a gate: a first model, a retraining, a rollback.
    Activated,
}

impl DecisionOutcome {
    /// The name stored: `promoted`, `rejected` or `activated`.
    pub fn as_str(self) -> &'static str {
        match self {
            DecisionOutcome::Promoted => "promoted",
            DecisionOutcome::Rejected => "rejected",
            DecisionOutcome::Activated => "activated",
        }
    }

    fn from_name(name: &str) -> Option<DecisionOutcome> {
        [DecisionOutcome::Promoted, DecisionOutcome::Rejected, DecisionOutcome::Activated]
            .into_iter()
            .find(|outcome| outcome.as_str() == name)
    }

    fn activates(self) -> bool {
        self != DecisionOutcome::Rejected
    }
}

/// A decision to record.
#[derive(Debug, Clone, PartialEq)]
pub struct NewDecision {
    pub kind: ModelKind,
    pub version_id: i64,
    pub outcome: DecisionOutcome,
    pub reason: String,
    /// The figures the decision rests on (a JSON value; `null` when there are none).
    pub figures: serde_json::Value,
}

/// A recorded decision.
#[derive(Debug, Clone, PartialEq)]
pub struct DecisionRecord {
    pub id: i64,
    pub kind: ModelKind,
    /// Unix seconds.
    pub decided_at: i64,
    pub outcome: DecisionOutcome,
    pub version_id: i64,
    /// The version active when the decision was taken.
    pub previous_id: Option<i64>,
    pub reason: String,
    pub figures: serde_json::Value,
}

const SELECT_VERSION: &str =
    "SELECT v.id, v.kind, v.label, v.created_at, v.trainer, v.command, v.data, v.sha256,
    v.evaluation, v.artifact IS NOT NULL, a.version_id IS NOT NULL
    FROM model_versions v LEFT JOIN active_models a ON a.kind = v.kind AND a.version_id = v.id";

impl Store {
    /// Registers a model version (not active until a decision makes it so). Every call is a new
    /// version, even of bytes registered before: a retraining that gives the same model is still
    /// a training, with its own origin and decisions.
    pub fn register_model(&self, new: NewModelVersion) -> Result<ModelVersionInfo, StoreError> {
        if !new.provenance.data.is_object() {
            return Err(StoreError::InvalidModel("the provenance's data must be a JSON object".into()));
        }
        let sha256 = hex::encode(Sha256::digest(&new.artifact));
        let now = self.now();
        self.sqlite()?.write(move |connection| {
            connection
                .prepare_cached(
                    "INSERT INTO model_versions (kind, label, created_at, trainer, command, data, sha256,
                     evaluation, artifact) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                )?
                .execute(params![
                    new.kind.as_str(),
                    new.label,
                    now,
                    new.provenance.trainer,
                    new.provenance.command,
                    new.provenance.data.to_string(),
                    sha256,
                    new.evaluation.as_ref().map(ToString::to_string),
                    new.artifact,
                ])?;
            let id = connection.last_insert_rowid();
            version_info(connection, new.kind, id)?
                .ok_or(StoreError::NoSuchModelVersion { kind: new.kind, id })
        })
    }

    /// Records a decision; a promotion or an activation makes the version the active one of its
    /// kind, in the same transaction. A version whose artifact was pruned cannot be activated.
    pub fn decide_model(&self, decision: NewDecision) -> Result<DecisionRecord, StoreError> {
        let now = self.now();
        self.sqlite()?.write(move |connection| {
            let NewDecision { kind, version_id, outcome, reason, figures } = decision;
            let info = version_info(connection, kind, version_id)?
                .ok_or(StoreError::NoSuchModelVersion { kind, id: version_id })?;
            if outcome.activates() && !info.available {
                return Err(StoreError::ModelArtifactPruned { kind, id: version_id });
            }
            let previous_id = active_id(connection, kind)?;
            connection
                .prepare_cached(
                    "INSERT INTO model_decisions (kind, decided_at, outcome, version_id, previous_id, reason, figures)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )?
                .execute(params![kind.as_str(), now, outcome.as_str(), version_id, previous_id, reason, figures.to_string()])?;
            let id = connection.last_insert_rowid();
            if outcome.activates() {
                connection
                    .prepare_cached(
                        "INSERT INTO active_models (kind, version_id, activated_at) VALUES (?1, ?2, ?3)
                         ON CONFLICT (kind) DO UPDATE SET version_id = excluded.version_id,
                         activated_at = excluded.activated_at",
                    )?
                    .execute(params![kind.as_str(), version_id, now])?;
            }
            Ok(DecisionRecord { id, kind, decided_at: now, outcome, version_id, previous_id, reason, figures })
        })
    }

    /// The active version of `kind` with its artifact, if one was ever activated.
    pub fn active_model(&self, kind: ModelKind) -> Result<Option<StoredModel>, StoreError> {
        self.sqlite()?.read(|connection| match active_id(connection, kind)? {
            Some(id) => stored_model(connection, kind, id),
            None => Ok(None),
        })
    }

    /// The id of the active version of `kind`, without loading it: cheap enough to poll.
    pub fn active_model_id(&self, kind: ModelKind) -> Result<Option<i64>, StoreError> {
        self.sqlite()?.read(|connection| active_id(connection, kind))
    }

    /// A version of `kind` with its artifact; `None` if there is no such version or its
    /// artifact was pruned.
    pub fn stored_model(&self, kind: ModelKind, id: i64) -> Result<Option<StoredModel>, StoreError> {
        self.sqlite()?.read(|connection| stored_model(connection, kind, id))
    }

    /// Every version of `kind`, newest first.
    pub fn model_versions(&self, kind: ModelKind) -> Result<Vec<ModelVersionInfo>, StoreError> {
        self.sqlite()?.read(|connection| {
            let mut statement = connection
                .prepare_cached(&format!("{SELECT_VERSION} WHERE v.kind = ?1 ORDER BY v.id DESC"))?;
            let rows = statement.query_map([kind.as_str()], read_version)?;
            rows.map(|row| row?).collect()
        })
    }

    /// Every decision on versions of `kind`, oldest first.
    pub fn model_decisions(&self, kind: ModelKind) -> Result<Vec<DecisionRecord>, StoreError> {
        self.sqlite()?.read(|connection| {
            let mut statement = connection.prepare_cached(
                "SELECT id, kind, decided_at, outcome, version_id, previous_id, reason, figures
                 FROM model_decisions WHERE kind = ?1 ORDER BY id",
            )?;
            let rows = statement.query_map([kind.as_str()], read_decision)?;
            rows.map(|row| row?).collect()
        })
    }

    /// Drops the artifacts of the versions of `kind` older than the newest `keep` (never the
    /// active one's); their rows and decisions stay. Returns how many were dropped.
    pub fn prune_model_versions(&self, kind: ModelKind, keep: usize) -> Result<usize, StoreError> {
        let keep = i64::try_from(keep).unwrap_or(i64::MAX);
        self.sqlite()?.write(move |connection| {
            let pruned = connection
                .prepare_cached(
                    "UPDATE model_versions SET artifact = NULL
                     WHERE kind = ?1 AND artifact IS NOT NULL
                     AND id NOT IN (SELECT version_id FROM active_models WHERE kind = ?1)
                     AND id NOT IN (SELECT id FROM model_versions WHERE kind = ?1 ORDER BY id DESC LIMIT ?2)",
                )?
                .execute(params![kind.as_str(), keep])?;
            Ok(pruned)
        })
    }
}

fn active_id(connection: &Connection, kind: ModelKind) -> Result<Option<i64>, StoreError> {
    Ok(connection
        .prepare_cached("SELECT version_id FROM active_models WHERE kind = ?1")?
        .query_row([kind.as_str()], |row| row.get(0))
        .optional()?)
}

fn version_info(
    connection: &Connection,
    kind: ModelKind,
    id: i64,
) -> Result<Option<ModelVersionInfo>, StoreError> {
    connection
        .prepare_cached(&format!("{SELECT_VERSION} WHERE v.kind = ?1 AND v.id = ?2"))?
        .query_row(params![kind.as_str(), id], read_version)
        .optional()?
        .transpose()
}

fn stored_model(
    connection: &Connection,
    kind: ModelKind,
    id: i64,
) -> Result<Option<StoredModel>, StoreError> {
    let Some(info) = version_info(connection, kind, id)? else { return Ok(None) };
    let artifact: Option<Vec<u8>> = connection
        .prepare_cached("SELECT artifact FROM model_versions WHERE id = ?1")?
        .query_row([id], |row| row.get(0))?;
    Ok(artifact.map(|artifact| StoredModel { info, artifact }))
}

/// A column that must hold JSON; the schema checks it, so a failure means a damaged file.
fn json_column(text: &str, column: &str) -> Result<serde_json::Value, StoreError> {
    serde_json::from_str(text)
        .map_err(|error| StoreError::InvalidModel(format!("registry column {column} is not JSON: {error}")))
}

fn kind_column(name: &str) -> Result<ModelKind, StoreError> {
    ModelKind::from_name(name).ok_or_else(|| StoreError::InvalidModel(format!("unknown model kind {name:?}")))
}

fn read_version(row: &Row<'_>) -> rusqlite::Result<Result<ModelVersionInfo, StoreError>> {
    let kind: String = row.get(1)?;
    let data: String = row.get(6)?;
    let evaluation: Option<String> = row.get(8)?;
    let (id, label, created_at, trainer, command, sha256, available, active) = (
        row.get(0)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
        row.get(5)?,
        row.get(7)?,
        row.get(9)?,
        row.get(10)?,
    );
    Ok((|| {
        Ok(ModelVersionInfo {
            id,
            kind: kind_column(&kind)?,
            label,
            created_at,
            provenance: Provenance { trainer, command, data: json_column(&data, "data")? },
            sha256,
            evaluation: evaluation.map(|text| json_column(&text, "evaluation")).transpose()?,
            available,
            active,
        })
    })())
}

fn read_decision(row: &Row<'_>) -> rusqlite::Result<Result<DecisionRecord, StoreError>> {
    let kind: String = row.get(1)?;
    let outcome: String = row.get(3)?;
    let figures: String = row.get(7)?;
    let (id, decided_at, version_id, previous_id, reason) =
        (row.get(0)?, row.get(2)?, row.get(4)?, row.get(5)?, row.get(6)?);
    Ok((|| {
        Ok(DecisionRecord {
            id,
            kind: kind_column(&kind)?,
            decided_at,
            outcome: DecisionOutcome::from_name(&outcome)
                .ok_or_else(|| StoreError::InvalidModel(format!("unknown decision outcome {outcome:?}")))?,
            version_id,
            previous_id,
            reason,
            figures: json_column(&figures, "figures")?,
        })
    })())
}
