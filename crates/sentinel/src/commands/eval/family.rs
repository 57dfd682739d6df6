//! `sentinel eval family --calls FILE --labels CSV`: scores a behaviour
//! model's family classifier on a labels file in the `families.csv` schema
//! (`row,family`, row = 0-based line of the calls text) and prints accuracy,
//! macro F1, per-family figures and the confusion matrix.
//!
//! Rows the model was trained on give an in-sample figure, not a held-out
//! one: the committed model was trained on all of `families.csv`
//! (docs/dynamic-analysis.md; `sentinel bench dynamic` measures on splits).

use std::path::PathBuf;

use anyhow::{Context, bail};
use rayon::prelude::*;
use sentinel_behaviour::{
    BehaviourModel, ClassificationReport, label_sequences, load_mal_api_calls, read_family_labels,
};

use crate::config::Config;

#[derive(clap::Args)]
pub struct Args {
    /// Mal-API-2019 call sequences: `100_calls.zip` or the text inside it.
    #[arg(long)]
    calls: PathBuf,
    /// Family labels: a `row,family` CSV (row = 0-based line of the calls text).
    #[arg(long)]
    labels: PathBuf,
    /// Mal-API-2019's API index (`name=number` lines).
    #[arg(long, default_value = "../shared/data/malware/dynamic/mal-api-2019/ApiIndex.txt")]
    api_index: PathBuf,
    /// Model file; the built-in model when absent.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Print the figures as one JSON object.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args, _config: &Config) -> anyhow::Result<()> {
    let model = match &args.model {
        Some(path) => {
            BehaviourModel::load(path).with_context(|| format!("cannot load model {}", path.display()))?
        }
        None => BehaviourModel::builtin().context("the built-in behaviour model is unusable")?,
    };
    let known = model.families();
    if known.is_empty() {
        bail!("model {} has no family classifier", model.version());
    }
    let labels = read_family_labels(&args.labels)
        .with_context(|| format!("cannot read the labels {}", args.labels.display()))?;
    let sequences = load_mal_api_calls(&args.calls, &args.api_index)
        .with_context(|| format!("cannot read the calls {}", args.calls.display()))?;
    let samples = label_sequences(&sequences, &labels)
        .with_context(|| format!("{} does not match {}", args.labels.display(), args.calls.display()))?;
    let predicted: Vec<String> = samples
        .par_iter()
        .map(|sample| model.family(&sample.calls).map_or_else(|| "(none)".to_owned(), |g| g.family))
        .collect();
    let truth: Vec<String> = samples.iter().map(|s| s.family.clone()).collect();
    let unknown: Vec<&str> = {
        let mut names: Vec<&str> = truth.iter().map(String::as_str).filter(|f| !known.contains(f)).collect();
        names.sort_unstable();
        names.dedup();
        names
    };
    let report = ClassificationReport::new(&truth, &predicted).context("the labels file has no row")?;

    if args.json {
        let mut out = serde_json::to_value(&report)?;
        out["model_version"] = model.version().into();
        out["calls"] = args.calls.display().to_string().into();
        out["labels"] = args.labels.display().to_string().into();
        out["families_unknown_to_the_model"] = serde_json::json!(unknown);
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!("model {} on {} ({} labelled rows)", model.version(), args.labels.display(), report.samples);
    if !unknown.is_empty() {
        println!("families the model does not know (always wrong): {}", unknown.join(", "));
    }
    println!("accuracy   {:.4}", report.accuracy);
    println!("macro F1   {:.4}", report.macro_f1);
    println!("{:<14} {:>7} {:>9} {:>7} {:>7}", "family", "support", "precision", "recall", "F1");
    for class in &report.per_class {
        println!(
            "{:<14} {:>7} {:>9.3} {:>7.3} {:>7.3}",
            class.class, class.support, class.precision, class.recall, class.f1
        );
    }
    println!("confusion (rows: true family, columns: predicted, order as above)");
    for (class, row) in report.classes.iter().zip(&report.confusion) {
        let cells: Vec<String> = row.iter().map(|n| format!("{n:>4}")).collect();
        println!("{class:<14} {}", cells.join(""));
    }
    Ok(())
}
