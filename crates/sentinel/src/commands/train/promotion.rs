//! Champion/challenger: a newly trained model (the challenger) replaces the
//! model in service (the champion) only if it is not worse on a fixed
//! evaluation set. Every decision is recorded in the model registry of the
//! store (`sentinel-store`), with both models' figures, which was kept and why.
//!
//! "Not worse" is judged on the two threshold-free figures operators act on:
//! ROC AUC (ranking overall) and the detection rate at 1 % false positives
//! (the operating region). The challenger must match or beat the champion on
//! both; any loss keeps the champion, because a retrained model that silently
//! detects less is the failure this gate exists to stop. The evaluation set
//! must be fixed (the same file from one retraining to the next) and kept out
//! of training, or the comparison says nothing.

use sentinel_metrics::Report;
use sentinel_store::DecisionOutcome;

/// The gate's decision: `Promoted` (the challenger goes into service) or
/// `Rejected` (the champion stays), and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub outcome: DecisionOutcome,
    pub reason: String,
}

/// The figures a decision rests on, for the registry.
pub fn figures(report: &Report) -> serde_json::Value {
    serde_json::json!({ "roc_auc": report.roc_auc, "tpr_at_1pct_fpr": report.tpr_at_1pct_fpr })
}

/// Decides between the champion (if there is one) and the challenger, both
/// scored on the same evaluation set.
pub fn decide(champion: Option<&Report>, challenger: &Report) -> Decision {
    let Some(champion) = champion else {
        return Decision {
            outcome: DecisionOutcome::Promoted,
            reason: "no model in service to compare with".to_owned(),
        };
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
        true => Decision {
            outcome: DecisionOutcome::Promoted,
            reason: format!("not worse on either figure: {figures}"),
        },
        false => Decision {
            outcome: DecisionOutcome::Rejected,
            reason: format!("challenger worse on {}: {figures}", losses.join(" and ")),
        },
    }
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
        assert_eq!(decide(None, &bad).outcome, DecisionOutcome::Promoted, "nothing to compare with");
        assert_eq!(decide(Some(&good), &good).outcome, DecisionOutcome::Promoted, "a tie is not worse");
        assert_eq!(decide(Some(&bad), &good).outcome, DecisionOutcome::Promoted);
        let refused = decide(Some(&good), &bad);
        assert_eq!(refused.outcome, DecisionOutcome::Rejected);
        assert!(
            refused.reason.contains("ROC AUC") && refused.reason.contains("detection"),
            "{}",
            refused.reason
        );
    }
}
