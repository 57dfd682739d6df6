//! `sentinel eval …`: one module per model family, and the report both print.

mod dynamic_model;
mod family;
mod network_model;
mod nsl_kdd;
mod static_model;

use std::path::Path;

use sentinel_metrics::Report;

use crate::config::Config;

#[derive(clap::Subcommand)]
pub enum Command {
    /// The static (PE) classifier.
    Static(static_model::Args),
    /// The behaviour (API-call sequence) classifier.
    Dynamic(dynamic_model::Args),
    /// The behaviour model's family classifier, on a `row,family` labels file.
    Family(family::Args),
    /// The network service's models, trained and tested on a public intrusion data set.
    Network(network_model::Args),
}

impl Command {
    pub fn run(self, config: &Config) -> anyhow::Result<()> {
        match self {
            Command::Static(args) => static_model::run(args, config),
            Command::Dynamic(args) => dynamic_model::run(args, config),
            Command::Family(args) => family::run(args, config),
            Command::Network(args) => network_model::run(args, config),
        }
    }
}

/// Prints the figures of `model_version` on `data`: a table, or with `json`
/// one object holding every field of the report plus `model_version` and `data`.
fn print_report(report: &Report, model_version: &str, data: &Path, json: bool) -> anyhow::Result<()> {
    if json {
        let mut out = serde_json::to_value(report)?;
        out["model_version"] = model_version.into();
        out["data"] = data.display().to_string().into();
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    let c = &report.confusion;
    println!("model {model_version} on {}", data.display());
    println!(
        "samples {} (malware {}, benign {})",
        report.samples,
        report.positives,
        report.samples - report.positives
    );
    println!("ROC AUC                   {:.4}", report.roc_auc);
    println!("average precision         {:.4}", report.average_precision);
    println!("detection at 1 % FPR      {:.2} %", 100.0 * report.tpr_at_1pct_fpr);
    println!("detection at 0.1 % FPR    {:.2} %", 100.0 * report.tpr_at_0_1pct_fpr);
    println!(
        "at threshold {:.4}: TP {} FP {} TN {} FN {}",
        report.threshold, c.true_positives, c.false_positives, c.true_negatives, c.false_negatives
    );
    println!(
        "  detection {:.2} %  false positives {:.2} %  precision {:.2} %  F1 {:.4}",
        100.0 * report.recall,
        100.0 * report.false_positive_rate,
        100.0 * report.precision,
        report.f1
    );
    Ok(())
}
