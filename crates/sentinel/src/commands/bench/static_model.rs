//! `sentinel bench static`: Sentinel's booster against scikit-learn's
//! HistGradientBoostingClassifier (`bench/static_hgb.py`, run with python3) on
//! the same split of the PE header data set — deduplicated, stratified 75/25,
//! the same class-balancing weights and hyper-parameters — written to temporary
//! CSV files. Both models' test scores go through the same metric code; the
//! figures are ROC AUC, detection at 1 % FPR, training time and scoring time
//! per file, side by side with ratios.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use sentinel_gbdt::{Booster, Dataset};
use sentinel_metrics::{detection_at_fpr, roc_auc};
use sentinel_static::{
    FEATURES, LABEL_COLUMN, LabelledRows, StaticModel, TrainingOptions, balanced_weights, deduplicate,
    holdout_split, read_header_csv,
};
use serde::{Deserialize, Serialize};

use crate::commands::table::{self, Style};
use crate::config::Config;

#[derive(clap::Args)]
pub struct Args {
    /// The PE header data set.
    #[arg(long, default_value = "../shared/data/malware/static/pe_header_dataset.csv")]
    header_csv: PathBuf,
    /// Benign corpus whose files time the whole static analysis (parse + score); skipped when absent.
    #[arg(long, default_value = "corpus")]
    corpus: PathBuf,
    /// The scikit-learn peer.
    #[arg(long, default_value = "bench/static_hgb.py")]
    script: PathBuf,
    /// Python interpreter with numpy and scikit-learn.
    #[arg(long, default_value = "python3")]
    python: String,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Threads for both trainers (rayon here, OpenMP in scikit-learn); all cores when absent.
    #[arg(long)]
    threads: Option<usize>,
    /// Print the figures as JSON.
    #[arg(long)]
    json: bool,
}

/// One model's figures.
#[derive(Debug, Serialize)]
struct Figures {
    roc_auc: f64,
    tpr_at_1pct_fpr: f64,
    train_seconds: f64,
    /// Scoring one row per call, one thread.
    single_row_score_us: f64,
    /// Scoring the whole test set in one call, per row.
    batch_score_us_per_row: f64,
    iterations: usize,
}

/// What the Python peer reports.
#[derive(Debug, Deserialize)]
struct PeerOutput {
    train_seconds: f64,
    batch_score_us_per_row: f64,
    single_row_score_us: f64,
    iterations: usize,
}

#[derive(Debug, Serialize)]
struct BenchResult {
    threads: Option<usize>,
    train_rows: usize,
    test_rows: usize,
    sentinel: Figures,
    sklearn_hgb: Figures,
    /// Whole `StaticModel::analyse` (PE parsing + scoring + explanation) per corpus file, µs.
    analyse_us_per_file: Option<f64>,
}

fn write_csv(path: &Path, rows: &LabelledRows, weights: Option<&[f64]>) -> anyhow::Result<()> {
    let mut out = std::io::BufWriter::new(
        std::fs::File::create(path).with_context(|| format!("cannot write {}", path.display()))?,
    );
    write!(out, "{},{LABEL_COLUMN}", sentinel_pe::PE_HEADER_COLUMNS.join(","))?;
    writeln!(out, "{}", if weights.is_some() { ",weight" } else { "" })?;
    for i in 0..rows.len() {
        for value in rows.row(i) {
            write!(out, "{value},")?;
        }
        write!(out, "{}", u8::from(rows.labels[i]))?;
        match weights {
            Some(w) => writeln!(out, ",{}", w[i])?,
            None => writeln!(out)?,
        }
    }
    out.flush()?;
    Ok(())
}

fn score_figures(scores: &[f64], labels: &[bool]) -> anyhow::Result<(f64, f64)> {
    Ok((roc_auc(scores, labels)?, detection_at_fpr(scores, labels, 0.01)?.tpr))
}

/// Mean µs of `StaticModel::analyse` over up to 300 corpus files.
fn time_analyse(corpus: &Path) -> Option<f64> {
    let files: Vec<Vec<u8>> = std::fs::read_dir(corpus.join("files"))
        .ok()?
        .filter_map(|e| std::fs::read(e.ok()?.path()).ok())
        .take(300)
        .collect();
    if files.is_empty() {
        return None;
    }
    let model = StaticModel::builtin();
    let started = Instant::now();
    let analysed = files.iter().filter(|bytes| model.analyse(bytes).is_ok()).count();
    let micros = started.elapsed().as_secs_f64() * 1e6 / files.len() as f64;
    (analysed > 0).then_some(micros)
}

pub fn run(args: Args, _config: &Config) -> anyhow::Result<()> {
    match args.threads {
        Some(threads) => {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build()?;
            pool.install(|| compare(&args))
        }
        None => compare(&args),
    }
}

fn compare(args: &Args) -> anyhow::Result<()> {
    let (unique, _) = deduplicate(&read_header_csv(&args.header_csv)?);
    let (train, test) = holdout_split(&unique, 0.25, args.seed);
    let weights = balanced_weights(&train.labels);
    let params = sentinel_gbdt::Params { seed: args.seed, ..TrainingOptions::default().params };

    // Ours.
    let started = Instant::now();
    let data = Dataset {
        values: &train.values,
        n_features: FEATURES,
        labels: &train.labels,
        weights: Some(&weights),
    };
    let booster = Booster::fit(&data, &params)?;
    let train_seconds = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let scores = booster.predict_margins(&test.values)?;
    let batch = started.elapsed().as_secs_f64() * 1e6 / test.len() as f64;
    let started = Instant::now();
    let mut checksum = 0.0;
    for row in test.values.chunks(FEATURES) {
        checksum += booster.predict_probability(row)?;
    }
    let single = started.elapsed().as_secs_f64() * 1e6 / test.len() as f64;
    std::hint::black_box(checksum);
    let (auc, tpr) = score_figures(&scores, &test.labels)?;
    let sentinel = Figures {
        roc_auc: auc,
        tpr_at_1pct_fpr: tpr,
        train_seconds,
        single_row_score_us: single,
        batch_score_us_per_row: batch,
        iterations: booster.n_trees(),
    };

    // scikit-learn, on the same rows.
    let dir = tempfile::tempdir()?;
    let (train_path, test_path, scores_path) =
        (dir.path().join("train.csv"), dir.path().join("test.csv"), dir.path().join("scores.txt"));
    write_csv(&train_path, &train, Some(&weights))?;
    write_csv(&test_path, &test, None)?;
    let stopping = params.early_stopping.unwrap_or_default();
    let mut command = std::process::Command::new(&args.python);
    if let Some(threads) = args.threads {
        command.env("OMP_NUM_THREADS", threads.to_string());
    }
    let output = command
        .arg(&args.script)
        .args(["--train", &train_path.display().to_string(), "--test", &test_path.display().to_string()])
        .args(["--scores", &scores_path.display().to_string()])
        .args([
            "--learning-rate",
            &params.learning_rate.to_string(),
            "--max-iter",
            &params.max_iter.to_string(),
        ])
        .args(["--max-leaf-nodes", &params.max_leaf_nodes.unwrap_or(31).to_string()])
        .args([
            "--min-samples-leaf",
            &params.min_samples_leaf.to_string(),
            "--l2",
            &params.l2_regularization.to_string(),
        ])
        .args(["--validation-fraction", &stopping.validation_fraction.to_string()])
        .args(["--patience", &stopping.patience.to_string(), "--seed", &args.seed.to_string()])
        .output()
        .with_context(|| format!("cannot run {} {}", args.python, args.script.display()))?;
    if !output.status.success() {
        bail!("{} failed:\n{}", args.script.display(), String::from_utf8_lossy(&output.stderr));
    }
    let peer: PeerOutput =
        serde_json::from_slice(&output.stdout).context("unexpected output from the peer script")?;
    let peer_scores: Vec<f64> = std::fs::read_to_string(&scores_path)?
        .lines()
        .map(|line| line.trim().parse::<f64>())
        .collect::<Result<_, _>>()
        .context("unreadable scores from the peer script")?;
    if peer_scores.len() != test.len() {
        bail!("the peer script scored {} rows of {}", peer_scores.len(), test.len());
    }
    let (auc, tpr) = score_figures(&peer_scores, &test.labels)?;
    let sklearn_hgb = Figures {
        roc_auc: auc,
        tpr_at_1pct_fpr: tpr,
        train_seconds: peer.train_seconds,
        single_row_score_us: peer.single_row_score_us,
        batch_score_us_per_row: peer.batch_score_us_per_row,
        iterations: peer.iterations,
    };

    let result = BenchResult {
        threads: args.threads,
        train_rows: train.len(),
        test_rows: test.len(),
        sentinel,
        sklearn_hgb,
        analyse_us_per_file: time_analyse(&args.corpus),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&result)?);
        return Ok(());
    }
    let (ours, peer) = (&result.sentinel, &result.sklearn_hgb);
    println!(
        "static classifier: {} training rows, {} test rows (header data set, deduplicated, stratified, seed {}), {} threads",
        result.train_rows,
        result.test_rows,
        args.seed,
        args.threads.map_or_else(|| "all".to_owned(), |t| t.to_string())
    );
    let mut table = table::new(Style::Markdown, &["", "sentinel-gbdt", "sklearn HGB", "ratio"], &[1, 2, 3]);
    let mut line = |name: &str, a: f64, b: f64, digits: usize| {
        table.add_row([
            name.to_owned(),
            format!("{a:.digits$}"),
            format!("{b:.digits$}"),
            format!("{:.3}", a / b),
        ]);
    };
    line("ROC AUC", ours.roc_auc, peer.roc_auc, 4);
    line("detection at 1 % FPR", ours.tpr_at_1pct_fpr, peer.tpr_at_1pct_fpr, 4);
    line("training time (s)", ours.train_seconds, peer.train_seconds, 3);
    line("score one row per call (µs)", ours.single_row_score_us, peer.single_row_score_us, 2);
    line("score in batch (µs per row)", ours.batch_score_us_per_row, peer.batch_score_us_per_row, 3);
    table.add_row([
        "iterations (trees)".to_owned(),
        ours.iterations.to_string(),
        peer.iterations.to_string(),
        String::new(),
    ]);
    println!("{table}");
    if let Some(micros) = result.analyse_us_per_file {
        println!("whole static analysis of a corpus file (parse + score + explain): {micros:.1} µs");
    }
    Ok(())
}
