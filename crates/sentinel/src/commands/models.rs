//! `sentinel models`: the model registry of a data directory (docs/storage.md) — every version of
//! the static, behaviour and network models with its origin, the decisions taken on them,
//! importing a model file (`sentinel train dynamic`'s, or one made elsewhere), and activating a
//! version of the static or behaviour model (a rollback), which a running server puts in service
//! at its next reload (`SIGHUP`, `POST /admin/reload`). Output is one JSON object per line, for
//! people and scripts alike.

use std::path::PathBuf;

use anyhow::Context;
use sentinel_behaviour::BehaviourModel;
use sentinel_static::StaticModel;
use sentinel_store::{
    DecisionOutcome, DecisionRecord, ModelKind, ModelVersionInfo, NewAuditEvent, NewDecision,
    NewModelVersion, Provenance, Store, local_user_principal,
};

use crate::commands::datasets::DataDir;
use crate::config::Config;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    data_dir: DataDir,
    #[command(subcommand)]
    command: Command,
}

/// A model kind as the command line names it.
#[derive(Clone, Copy, clap::ValueEnum)]
enum Kind {
    Static,
    Behaviour,
    Network,
}

impl Kind {
    fn kind(self) -> ModelKind {
        match self {
            Kind::Static => ModelKind::Static,
            Kind::Behaviour => ModelKind::Behaviour,
            Kind::Network => ModelKind::Network,
        }
    }
}

const ALL_KINDS: [Kind; 3] = [Kind::Static, Kind::Behaviour, Kind::Network];

#[derive(clap::Subcommand)]
enum Command {
    /// Every version, newest first: origin, hash, evaluation, whether it is active.
    List {
        #[arg(long, value_enum)]
        kind: Option<Kind>,
    },
    /// Every decision, oldest first: promoted, rejected or activated, why, on what figures.
    Decisions {
        #[arg(long, value_enum)]
        kind: Option<Kind>,
    },
    /// Register a static or behaviour model file (checked first) as a new version; with
    /// `--activate`, make it the active one.
    Import {
        #[arg(value_enum)]
        kind: Kind,
        file: PathBuf,
        #[arg(long)]
        activate: bool,
    },
    /// Make a version of the static or behaviour model the active one (a rollback). Network
    /// models are rolled back through the running service: `POST /api/v1/models/rollback`.
    Activate {
        #[arg(value_enum)]
        kind: Kind,
        /// The version's id (`sentinel models list`).
        id: i64,
        /// Why, kept with the decision.
        #[arg(long, default_value = "activated by hand")]
        reason: String,
    },
}

pub fn run(args: Args, config: &Config) -> anyhow::Result<()> {
    let store = args.data_dir.open_store(config)?;
    let kinds = |kind: Option<Kind>| kind.map_or(ALL_KINDS.to_vec(), |kind| vec![kind]);
    match args.command {
        Command::List { kind } => {
            for kind in kinds(kind) {
                for version in store.model_versions(kind.kind())? {
                    println!("{}", version_json(&version));
                }
            }
        }
        Command::Decisions { kind } => {
            for kind in kinds(kind) {
                for decision in store.model_decisions(kind.kind())? {
                    println!("{}", decision_json(&decision));
                }
            }
        }
        Command::Import { kind, file, activate } => {
            let bytes = std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            // Checked as the server will load it, so that a broken file never becomes a version.
            let (label, evaluation) = match kind {
                Kind::Static => {
                    let model = StaticModel::from_slice(&bytes)
                        .with_context(|| format!("{} is not a static model", file.display()))?;
                    (model.version().to_owned(), serde_json::to_value(model.evaluation()).ok())
                }
                Kind::Behaviour => {
                    let model = BehaviourModel::from_json(&bytes)
                        .with_context(|| format!("{} is not a behaviour model", file.display()))?;
                    (model.version().to_owned(), None)
                }
                Kind::Network => anyhow::bail!("network models are trained and saved by the network service"),
            };
            let version = store.register_model(NewModelVersion {
                kind: kind.kind(),
                label,
                provenance: Provenance {
                    trainer: "unknown (imported file)".to_owned(),
                    command: std::env::args().collect::<Vec<_>>().join(" "),
                    data: serde_json::json!({ "file": file.display().to_string() }),
                },
                evaluation,
                artifact: bytes,
            })?;
            if activate {
                let decision = store.decide_model(NewDecision {
                    kind: kind.kind(),
                    version_id: version.id,
                    outcome: DecisionOutcome::Activated,
                    reason: format!("imported from {}", file.display()),
                    figures: serde_json::Value::Null,
                })?;
                record_activation(&store, &decision)?;
            }
            let version = store
                .model_versions(kind.kind())?
                .into_iter()
                .find(|info| info.id == version.id)
                .context("the imported version vanished")?;
            println!("{}", version_json(&version));
        }
        Command::Activate { kind: Kind::Network, .. } => {
            anyhow::bail!(
                "the network service keeps its active model in memory: roll it back with POST /api/v1/models/rollback"
            );
        }
        Command::Activate { kind, id, reason } => {
            let decision = store
                .decide_model(NewDecision {
                    kind: kind.kind(),
                    version_id: id,
                    outcome: DecisionOutcome::Activated,
                    reason,
                    figures: serde_json::Value::Null,
                })
                .with_context(|| format!("cannot activate {} model version {id}", kind.kind()))?;
            record_activation(&store, &decision)?;
            println!("{}", decision_json(&decision));
        }
    }
    Ok(())
}

/// Records an activation by the local user in the audit table.
fn record_activation(store: &Store, decision: &DecisionRecord) -> anyhow::Result<()> {
    let event = NewAuditEvent::new(
        local_user_principal(),
        "model.activate",
        Some(format!("{} version {}", decision.kind.as_str(), decision.version_id)),
        "ok",
        None,
    )
    .with_detail("previous", decision.previous_id)
    .with_detail("reason", decision.reason.clone());
    store.record_audit_event(event).context("cannot record the activation in the audit table")?;
    Ok(())
}

fn version_json(version: &ModelVersionInfo) -> serde_json::Value {
    serde_json::json!({
        "id": version.id,
        "kind": version.kind.as_str(),
        "label": version.label,
        "created_at": version.created_at,
        "active": version.active,
        "available": version.available,
        "trainer": version.provenance.trainer,
        "command": version.provenance.command,
        "data": version.provenance.data,
        "sha256": version.sha256,
        "evaluation": version.evaluation,
    })
}

fn decision_json(decision: &DecisionRecord) -> serde_json::Value {
    serde_json::json!({
        "id": decision.id,
        "kind": decision.kind.as_str(),
        "decided_at": decision.decided_at,
        "outcome": decision.outcome.as_str(),
        "version": decision.version_id,
        "previous": decision.previous_id,
        "reason": decision.reason,
        "figures": decision.figures,
    })
}
