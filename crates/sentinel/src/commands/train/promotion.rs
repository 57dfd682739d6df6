//! Champion/challenger: a newly trained model (the challenger) replaces the
//! model in service (the champion) only if it is not worse on a fixed
//! evaluation set, and every decision is appended to the model registry file
//! (`registry.jsonl` beside the model), with both models' versions and figures,
//! which was kept and why.
//!
//! "Not worse" is judged on the two threshold-free figures operators act on:
//! ROC AUC (ranking overall) and the detection rate at 1 % false positives
//! (the operating region). The challenger must match or beat the champion on
//! both; any loss keeps the champion, because a retrained model that silently
//! detects less is the failure this gate exists to stop. The evaluation set
//! must be fixed (the same file from one retraining to the next) and kept out
//! of training, or the comparison says nothing.

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use sentinel_metrics::Report;
use serde::Serialize;

/// Which model stays in service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kept {
    Champion,
    Challenger,
}

/// The gate's decision.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    pub kept: Kept,
    pub reason: String,
}

/// One model as the registry records it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Entrant {
    pub version: String,
    /// Where the model file is.
    pub path: String,
    pub roc_auc: f64,
    pub tpr_at_1pct_fpr: f64,
}

impl Entrant {
    pub fn new(version: &str, path: &Path, report: &Report) -> Entrant {
        Entrant {
            version: version.to_owned(),
            path: path.display().to_string(),
            roc_auc: report.roc_auc,
            tpr_at_1pct_fpr: report.tpr_at_1pct_fpr,
        }
    }
}

/// One line of `registry.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RegistryEntry {
    /// Unix seconds.
    pub decided_at: u64,
    /// `static`, `dynamic`…
    pub model: String,
    /// The evaluation set both models were scored on.
    pub evaluation_set: String,
    pub evaluation_samples: usize,
    pub champion: Option<Entrant>,
    pub challenger: Entrant,
    pub decision: Decision,
}

/// Decides between the champion (if there is one) and the challenger, both
/// scored on the same evaluation set.
pub fn decide(champion: Option<&Report>, challenger: &Report) -> Decision {
    let Some(champion) = champion else {
        return Decision { kept: Kept::Challenger, reason: "no model in service to compare with".to_owned() };
    };
    let figures = format!(
        "ROC AUC {:.4} vs {:.4}, detection at 1 % FPR {:.4} vs {:.4} (challenger vs champion)",
        challenger.roc_auc, champion.roc_auc, challenger.tpr_at_1pct_fpr, champion.tpr_at_1pct_fpr
    );
    let worse = [
        ("ROC AUC", challenger.roc_auc < champion.roc_auc),
        ("detection at 1 % FPR", challenger.tpr_at_1pct_fpr < champion.tpr_at_1pct_fpr),
    ];
    let losses: Vec<&str> = worse.iter().filter(|(_, worse)| *worse).map(|(name, _)| *name).collect();
    match losses.is_empty() {
        true => Decision { kept: Kept::Challenger, reason: format!("not worse on either figure: {figures}") },
        false => Decision {
            kept: Kept::Champion,
            reason: format!("challenger worse on {}: {figures}", losses.join(" and ")),
        },
    }
}

/// Appends `entry` to the registry file (one JSON object per line), durably.
pub fn record(registry: &Path, entry: &RegistryEntry) -> anyhow::Result<()> {
    let mut line = serde_json::to_vec(entry)?;
    line.push(b'\n');
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(registry)
        .with_context(|| format!("cannot open the model registry {}", registry.display()))?;
    file.write_all(&line)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write the model registry {}", registry.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A report whose scores rank `misranked` of the 100 benign samples above every malware sample.
    fn report(misranked: usize) -> Report {
        let mut scores = Vec::new();
        let mut labels = Vec::new();
        for index in 0..100 {
            scores.push(if index < misranked { 0.99 } else { 0.01 + index as f64 * 0.001 });
            labels.push(false);
        }
        for index in 0..100 {
            scores.push(0.5 + index as f64 * 0.001);
            labels.push(true);
        }
        Report::new(&scores, &labels, 0.5).unwrap()
    }

    #[test]
    fn a_challenger_is_kept_only_if_not_worse_on_either_figure() {
        let (good, bad) = (report(0), report(5));
        assert_eq!(decide(None, &bad).kept, Kept::Challenger, "nothing to compare with");
        assert_eq!(decide(Some(&good), &good).kept, Kept::Challenger, "a tie is not worse");
        assert_eq!(decide(Some(&bad), &good).kept, Kept::Challenger);
        let refused = decide(Some(&good), &bad);
        assert_eq!(refused.kept, Kept::Champion);
        assert!(
            refused.reason.contains("ROC AUC") && refused.reason.contains("detection"),
            "{}",
            refused.reason
        );
    }

    #[test]
    fn the_registry_keeps_every_decision_one_per_line() {
        let dir = tempfile::tempdir().unwrap();
        let registry = dir.path().join("registry.jsonl");
        let (good, bad) = (report(0), report(5));
        for (champion, challenger) in [(None, &good), (Some(&good), &bad)] {
            let entry = RegistryEntry {
                decided_at: 1,
                model: "static".to_owned(),
                evaluation_set: "eval.csv".to_owned(),
                evaluation_samples: 200,
                champion: champion.map(|report| Entrant::new("champion-v", Path::new("static.json"), report)),
                challenger: Entrant::new("challenger-v", Path::new("static-challenger.json"), challenger),
                decision: decide(champion, challenger),
            };
            record(&registry, &entry).unwrap();
        }
        let text = std::fs::read_to_string(&registry).unwrap();
        let lines: Vec<serde_json::Value> =
            text.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["decision"]["kept"], "challenger");
        assert_eq!(lines[1]["decision"]["kept"], "champion");
        assert_eq!(lines[1]["champion"]["version"], "champion-v");
        assert_eq!(lines[1]["challenger"]["version"], "challenger-v");
    }
}
