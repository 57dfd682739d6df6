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
    super::print_report(&report, model.version(), &args.data, args.json)
}
