//! `sentinel eval network`: the network service's pipeline (features, fitted scaling, the three
//! models, the verdict rule) trained on the normal rows of a public data set's training file and
//! measured on its test file: ROC AUC, PR AUC, detection at 1 % false positives and the rates
//! of the live verdict, per model and for the ensemble. With `--peer`, scikit-learn's
//! unsupervised models run in the same command on the same rows, both on the scaled rows the
//! service's models saw and on all of the data set's own columns.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use sentinel_network::NetworkSettings;
use sentinel_network::evaluation::{self, ModelFigures, NetworkEvaluation};
use serde::{Deserialize, Serialize};

use super::nsl_kdd;
use crate::commands::table::{self, Style};
use crate::config::Config;

/// The scikit-learn peer, written to a temporary file and run with `--python`.
const PEER_SCRIPT: &str = include_str!("../../../../../bench/network_sklearn.py");

#[derive(clap::Args)]
pub struct Args {
    /// Training file; only its normal rows are learnt from.
    #[arg(default_value = "../shared/data/network/nsl-kdd/KDDTrain+.txt")]
    train: PathBuf,
    /// Test file, scored whole.
    #[arg(default_value = "../shared/data/network/nsl-kdd/KDDTest+.txt")]
    test: PathBuf,
    /// Format of both files (only `nsl-kdd` so far).
    #[arg(long, default_value = "nsl-kdd")]
    format: String,
    /// Keep the test rows whose difficulty is below this (21 gives KDDTest-21).
    #[arg(long)]
    difficulty_below: Option<u32>,
    /// Model seeds, one fit each; the configured `[network.model] seed` when absent.
    #[arg(long, value_delimiter = ',')]
    seeds: Vec<u64>,
    /// Run scikit-learn's IsolationForest, LocalOutlierFactor and OneClassSVM on the same rows.
    #[arg(long)]
    peer: bool,
    /// The Python interpreter with scikit-learn.
    #[arg(long, default_value = "python3")]
    python: String,
    /// Print the figures as a JSON object.
    #[arg(long)]
    json: bool,
}

/// One fit: its seed and each model's figures.
#[derive(Serialize)]
struct Run {
    seed: u64,
    models: Vec<ModelFigures>,
}

/// One scikit-learn model on one input, as the peer script prints it.
#[derive(Serialize, Deserialize)]
struct PeerFigures {
    /// `service` (the scaled rows the service's models saw) or `dataset` (every column of the
    /// data set, one-hot, log and min-max scaled).
    features: String,
    model: String,
    seed: u64,
    roc_auc: f64,
    pr_auc: f64,
    detection_at_1pct_fpr: f64,
}

#[derive(Serialize)]
struct Report {
    train: String,
    test: String,
    difficulty_below: Option<u32>,
    training_rows: usize,
    test_rows: usize,
    test_anomalies: usize,
    runs: Vec<Run>,
    peer: Vec<PeerFigures>,
}

pub fn run(args: Args, config: &Config) -> anyhow::Result<()> {
    if args.format != "nsl-kdd" {
        bail!("unknown format {:?}; known: nsl-kdd", args.format);
    }
    let settings: NetworkSettings = config.section("network")?;
    let training = nsl_kdd::read(&args.train, None)?;
    let test = nsl_kdd::read(&args.test, args.difficulty_below)?;
    let seeds = if args.seeds.is_empty() { vec![settings.model.seed] } else { args.seeds.clone() };

    let mut runs = Vec::new();
    let mut first: Option<NetworkEvaluation> = None;
    for &seed in &seeds {
        let mut model = settings.model.clone();
        model.seed = seed;
        let measured = evaluation::evaluate(&training, &test, &model, &settings.features)
            .with_context(|| format!("cannot evaluate on {}", args.test.display()))?;
        runs.push(Run { seed, models: measured.models.clone() });
        first.get_or_insert(measured);
    }
    let Some(first) = first else { bail!("no seed to run") };
    let peer = if args.peer { run_peer(&args, &first, &seeds)? } else { Vec::new() };
    let report = Report {
        train: args.train.display().to_string(),
        test: args.test.display().to_string(),
        difficulty_below: args.difficulty_below,
        training_rows: first.training_rows,
        test_rows: first.test_rows,
        test_anomalies: first.test_anomalies,
        runs,
        peer,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    Ok(())
}

/// The job file the peer script reads.
#[derive(Serialize)]
struct PeerJob<'a> {
    train: PathBuf,
    test: PathBuf,
    labels: PathBuf,
    cols: usize,
    seeds: &'a [u64],
    dataset_train: &'a Path,
    dataset_test: &'a Path,
    difficulty_below: Option<u32>,
}

fn write_f64(path: &Path, values: &[f64]) -> std::io::Result<()> {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    for value in values {
        file.write_all(&value.to_le_bytes())?;
    }
    file.flush()
}

/// Runs the peer script on the scaled rows of the first fit and on the data set's own columns.
fn run_peer(args: &Args, measured: &NetworkEvaluation, seeds: &[u64]) -> anyhow::Result<Vec<PeerFigures>> {
    let scratch = tempfile::tempdir()?;
    let job = PeerJob {
        train: scratch.path().join("train.f64"),
        test: scratch.path().join("test.f64"),
        labels: scratch.path().join("labels.u8"),
        cols: measured.scaled_training.cols(),
        seeds,
        dataset_train: &args.train,
        dataset_test: &args.test,
        difficulty_below: args.difficulty_below,
    };
    write_f64(&job.train, measured.scaled_training.values())?;
    write_f64(&job.test, measured.scaled_test.values())?;
    let labels: Vec<u8> = measured.test_labels.iter().map(|&label| u8::from(label)).collect();
    std::fs::write(&job.labels, labels)?;
    let job_path = scratch.path().join("job.json");
    std::fs::write(&job_path, serde_json::to_vec(&job)?)?;
    let script = scratch.path().join("network_sklearn.py");
    std::fs::write(&script, PEER_SCRIPT)?;
    let output = Command::new(&args.python)
        .arg(&script)
        .arg(&job_path)
        .output()
        .with_context(|| format!("cannot run {}", args.python))?;
    if !output.status.success() {
        bail!("the scikit-learn peer failed: {}", String::from_utf8_lossy(&output.stderr).trim());
    }
    serde_json::from_slice(&output.stdout).context("the scikit-learn peer printed no result")
}

fn print_table(report: &Report) {
    println!(
        "trained on {} normal rows of {}; tested on {} rows of {} ({} anomalous{})",
        report.training_rows,
        report.train,
        report.test_rows,
        report.test,
        report.test_anomalies,
        report.difficulty_below.map_or(String::new(), |limit| format!(", difficulty below {limit}")),
    );
    let header =
        ["implementation", "features", "model", "seed", "ROC AUC", "PR AUC", "det@1%FPR", "FPR", "det"];
    let mut table = table::new(Style::Markdown, &header, &[3, 4, 5, 6, 7, 8]);
    for run in &report.runs {
        for figures in &run.models {
            table.add_row([
                "sentinel".to_owned(),
                "service".to_owned(),
                figures.model.clone(),
                run.seed.to_string(),
                format!("{:.4}", figures.roc_auc),
                format!("{:.4}", figures.pr_auc),
                format!("{:.4}", figures.detection_at_1pct_fpr),
                format!("{:.4}", figures.false_positive_rate),
                format!("{:.4}", figures.detection_rate),
            ]);
        }
    }
    for figures in &report.peer {
        table.add_row([
            "scikit-learn".to_owned(),
            figures.features.clone(),
            figures.model.clone(),
            figures.seed.to_string(),
            format!("{:.4}", figures.roc_auc),
            format!("{:.4}", figures.pr_auc),
            format!("{:.4}", figures.detection_at_1pct_fpr),
            "-".to_owned(),
            "-".to_owned(),
        ]);
    }
    println!("{table}");
}
