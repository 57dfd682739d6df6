//! `sentinel eval static`: scores a labelled CSV in the PE header data set's
//! schema with a static model and prints ROC AUC, detection at 1 % and 0.1 %
//! false positives, and the confusion matrix at the model's shipped threshold.
//! With `--cross-source` it measures instead how the training pipeline's model
//! transfers from one source of executables to another (the header data set,
//! the benign corpus by package), per feature group (`sentinel_static::cross_source`).

use std::path::PathBuf;

use anyhow::Context;
use sentinel_metrics::Report;
use sentinel_static::{
    CrossSourceOptions, CrossSourceReport, StaticModel, TrainingOptions, cross_source, read_corpus,
    read_header_csv,
};

use crate::commands::table::{self, Style};
use crate::config::Config;

#[derive(clap::Args)]
pub struct Args {
    /// Labelled CSV: the 50 pe-header columns and `Malware` (1 = malware, 0 = benign).
    #[arg(required_unless_present = "cross_source", conflicts_with = "cross_source")]
    data: Option<PathBuf>,
    /// Model file; the built-in model when absent.
    #[arg(long, conflicts_with = "cross_source")]
    model: Option<PathBuf>,
    /// Train and test across sources instead: on the header data set, then on
    /// corpus packages never seen in training, for all features, the shipped
    /// selection, and each feature group removed or kept alone.
    #[arg(long)]
    cross_source: bool,
    /// The PE header data set (with `--cross-source`).
    #[arg(long, default_value = "../shared/data/malware/static/pe_header_dataset.csv")]
    header_csv: PathBuf,
    /// The benign corpus, manifest.csv + files/ (with `--cross-source`).
    #[arg(long, default_value = "corpus")]
    corpus: PathBuf,
    /// Seed of the splits and the boosting (with `--cross-source`).
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Folds of corpus packages for the unseen-package protocol (with `--cross-source`).
    #[arg(long, default_value_t = 4)]
    folds: usize,
    /// Columns to leave out in the "shipped" row instead of the shipped model's
    /// selection, comma-separated (with `--cross-source`): to measure a candidate.
    #[arg(long, value_delimiter = ',', requires = "cross_source")]
    exclude: Option<Vec<String>>,
    /// Only all features and the shipped selection, no per-group ablations (with `--cross-source`).
    #[arg(long)]
    no_ablations: bool,
    /// Print the figures as a JSON object.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args, _config: &Config) -> anyhow::Result<()> {
    let Some(data) = &args.data else {
        return run_cross_source(&args);
    };
    let model = match &args.model {
        Some(path) => StaticModel::load(path)?,
        None => StaticModel::builtin(),
    };
    let rows = read_header_csv(data)?;
    let scores = model.score_rows(&rows.values)?;
    let report = Report::new(&scores, &rows.labels, model.threshold())
        .with_context(|| format!("cannot evaluate {}", data.display()))?;
    super::print_report(&report, model.version(), data, args.json)
}

fn run_cross_source(args: &Args) -> anyhow::Result<()> {
    let header = read_header_csv(&args.header_csv)?;
    let corpus = read_corpus(&args.corpus).with_context(|| {
        format!(
            "cannot read the benign corpus in {} (build it with `python3 corpus/build.py`)",
            args.corpus.display()
        )
    })?;
    let mut training = TrainingOptions { seed: args.seed, ..TrainingOptions::default() };
    if let Some(exclude) = &args.exclude {
        training.excluded_features = exclude.clone();
    }
    let options = CrossSourceOptions { training, folds: args.folds, ablations: !args.no_ablations };
    let started = std::time::Instant::now();
    let mut report = cross_source(&header, &corpus, &options)?;
    if args.exclude.is_some() {
        // Not the shipped model's selection: say so in the row's name.
        report.selections[1].name = "candidate".into();
    }
    let seconds = started.elapsed().as_secs_f64();
    if args.json {
        let mut out = serde_json::to_value(&report)?;
        out["seconds"] = seconds.into();
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    print_cross_source(&report, seconds);
    Ok(())
}

fn print_cross_source(report: &CrossSourceReport, seconds: f64) {
    println!(
        "cross-source evaluation, seed {}, {:.0} s: header data set train {} / calibration {} / test {} rows ({} malware); corpus {} files from {} packages in {} folds",
        report.seed,
        seconds,
        report.header_train_rows,
        report.header_calibration_rows,
        report.header_test_rows,
        report.header_test_malware,
        report.corpus_files,
        report.corpus_packages,
        report.folds
    );
    println!("{} selection leaves out: {}", report.selections[1].name, report.shipped_excluded.join(", "));
    println!(
        "A = trained on the data set alone; B = trained with the corpus packages of other folds, tested on unseen packages (mean ± sd over folds); FPR at each model's threshold"
    );
    let mut table = table::new(
        Style::Markdown,
        &[
            "features",
            "columns",
            "AUC in data set",
            "AUC A: vs corpus",
            "FPR A: corpus",
            "AUC B: unseen packages",
            "FPR B: unseen packages",
        ],
        &[1, 2, 3, 4, 5, 6],
    );
    for s in &report.selections {
        table.add_row([
            s.name.clone(),
            s.features.to_string(),
            format!("{:.4}", s.in_source_auc),
            format!("{:.4}", s.corpus_auc),
            format!("{:.2} %", 100.0 * s.corpus_false_positive_rate),
            format!("{:.4} ± {:.4}", s.unseen_package_auc, s.unseen_package_auc_sd),
            format!("{:.2} %", 100.0 * s.unseen_package_false_positive_rate),
        ]);
    }
    println!("{table}");
}
