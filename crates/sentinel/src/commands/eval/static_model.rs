//! `sentinel eval static`: scores a labelled CSV in the PE header data set's
//! schema with a static model and prints ROC AUC, detection at 1 % and 0.1 %
//! false positives, and the confusion matrix at the model's shipped threshold.

use std::path::PathBuf;

use anyhow::Context;
use sentinel_metrics::Report;
use sentinel_static::{StaticModel, read_header_csv};

use crate::config::Config;

#[derive(clap::Args)]
pub struct Args {
    /// Labelled CSV: the 50 pe-header columns and `Malware` (1 = malware, 0 = benign).
    data: PathBuf,
    /// Model file; the built-in model when absent.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Print the figures as a JSON object.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args, _config: &Config) -> anyhow::Result<()> {
    let model = match &args.model {
        Some(path) => StaticModel::load(path)?,
        None => StaticModel::builtin(),
    };
    let rows = read_header_csv(&args.data)?;
    let scores = model.score_rows(&rows.values)?;
    let report = Report::new(&scores, &rows.labels, model.threshold())
        .with_context(|| format!("cannot evaluate {}", args.data.display()))?;
    if args.json {
        let mut out = serde_json::to_value(&report)?;
        out["model_version"] = model.version().into();
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    let c = &report.confusion;
    println!("model {} on {}", model.version(), args.data.display());
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
