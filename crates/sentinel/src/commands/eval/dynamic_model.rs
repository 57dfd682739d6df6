//! `sentinel eval dynamic DATA.csv`: scores every sequence of a CSV in the
//! MalBehavD schema (sha256, labels, then the API calls) with a behaviour
//! model and prints ROC AUC, detection at 1 % FPR and the rest of the figures.

use std::path::PathBuf;

use anyhow::Context;
use rayon::prelude::*;
use sentinel_behaviour::{BehaviourModel, load_labelled_csv};
use sentinel_metrics::Report;

use crate::config::Config;

#[derive(clap::Args)]
pub struct Args {
    /// Labelled sequences: sha256, labels (1 = malware), then API names.
    data: PathBuf,
    /// Model file; the built-in model when absent.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Print the figures as one JSON object.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args, _config: &Config) -> anyhow::Result<()> {
    let model = match &args.model {
        Some(path) => BehaviourModel::load(path)?,
        None => BehaviourModel::builtin().context("the built-in behaviour model is unusable")?,
    };
    let rows =
        load_labelled_csv(&args.data).with_context(|| format!("cannot read {}", args.data.display()))?;
    let scores: Vec<f64> = rows.par_iter().map(|row| model.probability(&row.calls)).collect();
    let labels: Vec<bool> = rows.iter().map(|row| row.malicious).collect();
    let report = Report::new(&scores, &labels, model.threshold())
        .context("cannot compute the figures (the file needs both malware and benign rows)")?;
    if args.json {
        let out = serde_json::json!({
            "model": model.version(),
            "data": args.data.display().to_string(),
            "roc_auc": report.roc_auc,
            "tpr_at_1pct_fpr": report.tpr_at_1pct_fpr,
            "report": report,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "model {} on {} ({} rows, {} malware)",
        model.version(),
        args.data.display(),
        report.samples,
        report.positives
    );
    println!("ROC AUC               {:.4}", report.roc_auc);
    println!("average precision     {:.4}", report.average_precision);
    println!("detection at 1 % FPR  {:.1} %", 100.0 * report.tpr_at_1pct_fpr);
    println!("detection at 0.1 % FPR {:.1} %", 100.0 * report.tpr_at_0_1pct_fpr);
    println!(
        "at threshold {:.3}: accuracy {:.1} %, precision {:.1} %, recall {:.1} %, FPR {:.1} %",
        report.threshold,
        100.0 * report.accuracy,
        100.0 * report.precision,
        100.0 * report.recall,
        100.0 * report.false_positive_rate
    );
    Ok(())
}
