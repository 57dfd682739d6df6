//! `sentinel models`: the model registry of a data directory (docs/storage.md) — every version of
//! the static, behaviour and network models with its origin, the decisions taken on them, and
//! activating a version of the static or behaviour model (a rollback), which a running server
//! puts in service at its next reload (`SIGHUP`, `POST /admin/reload`). Output is one JSON object
//! per line, for people and scripts alike.

use anyhow::Context;
use sentinel_store::{DecisionOutcome, DecisionRecord, ModelKind, ModelVersionInfo, NewDecision};

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
            println!("{}", decision_json(&decision));
        }
    }
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
