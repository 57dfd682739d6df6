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
    super::print_report(&report, model.version(), &args.data, args.json)
}
