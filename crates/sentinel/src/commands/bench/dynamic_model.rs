//! `sentinel bench dynamic`: Sentinel's behaviour detector against
//! scikit-learn's TF-IDF (1–3-grams) + logistic regression
//! (`bench/behaviour_sklearn.py`, run with python3) on the same split of
//! MalBehavD by sequence, written to temporary CSV files. Both models' test
//! scores go through the same metric code. Also measures Sentinel's scoring
//! throughput (sequences per second, one thread and all threads).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use rayon::prelude::*;
use sentinel_behaviour::{
    BehaviourModel, LabelledSequence, TrainingOptions, load_labelled_csv, split_grouped, train_detector_only,
    write_labelled_csv,
};
use sentinel_metrics::{detection_at_fpr, roc_auc};
use serde::{Deserialize, Serialize};

use crate::config::Config;

const DOCS_HEADING: &str = "## Behaviour classifier";

#[derive(clap::Args)]
pub struct Args {
    /// Labelled API-call sequences (MalBehavD schema).
    #[arg(long, default_value = "../shared/data/malware/dynamic/malbehavd/malbehavd_v1_train.csv")]
    data: PathBuf,
    /// The scikit-learn peer.
    #[arg(long, default_value = "bench/behaviour_sklearn.py")]
    script: PathBuf,
    /// Python interpreter with numpy and scikit-learn.
    #[arg(long, default_value = "python3")]
    python: String,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Fraction of the data held out.
    #[arg(long, default_value_t = 0.2)]
    test_fraction: f64,
    /// Replace the "Behaviour classifier" section of this document with the figures.
    #[arg(long)]
    write_docs: Option<PathBuf>,
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
    c: f64,
    features: usize,
    /// Scoring one sequence per call, one thread.
    single_sequences_per_second: f64,
    /// Scoring the whole test set at once (all threads for Sentinel, one call for scikit-learn).
    batch_sequences_per_second: f64,
}

#[derive(Debug, Deserialize)]
struct PeerOutput {
    scores: Vec<f64>,
    c: f64,
    features: usize,
    train_seconds: f64,
    batch_sequences_per_second: f64,
    single_sequences_per_second: f64,
}

pub fn run(args: Args, _config: &Config) -> anyhow::Result<()> {
    let rows =
        load_labelled_csv(&args.data).with_context(|| format!("cannot read {}", args.data.display()))?;
    let keys: Vec<&[String]> = rows.iter().map(|r| r.calls.calls()).collect();
    let labels: Vec<bool> = rows.iter().map(|r| r.malicious).collect();
    let (train_rows, test_rows) = split_grouped(&keys, &labels, args.test_fraction, args.seed);
    let train: Vec<&LabelledSequence> = train_rows.iter().map(|&i| &rows[i]).collect();
    let test: Vec<&LabelledSequence> = test_rows.iter().map(|&i| &rows[i]).collect();
    let test_labels: Vec<bool> = test.iter().map(|r| r.malicious).collect();

    let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
    let (train_csv, test_csv) = (dir.path().join("train.csv"), dir.path().join("test.csv"));
    write_labelled_csv(&train_csv, &train)?;
    write_labelled_csv(&test_csv, &test)?;
    eprintln!("split by sequence: {} training rows, {} test rows", train.len(), test.len());

    let options = TrainingOptions { seed: args.seed, ..TrainingOptions::default() };
    let started = Instant::now();
    let model = train_detector_only(&train, &options)?;
    let train_seconds = started.elapsed().as_secs_f64();
    let scores: Vec<f64> = test.iter().map(|r| model.probability(&r.calls)).collect();
    let (single, batch) = throughput(&model, &test);
    let ours = Figures {
        roc_auc: roc_auc(&scores, &test_labels)?,
        tpr_at_1pct_fpr: detection_at_fpr(&scores, &test_labels, 0.01)?.tpr,
        train_seconds,
        c: model.training().detector_c,
        features: model_features(&model),
        single_sequences_per_second: single,
        batch_sequences_per_second: batch,
    };

    eprintln!("running {} {}", args.python, args.script.display());
    let output = std::process::Command::new(&args.python)
        .arg(&args.script)
        .args(["--train".as_ref(), train_csv.as_os_str(), "--test".as_ref(), test_csv.as_os_str()])
        .args(["--seed", &args.seed.to_string()])
        .output()
        .with_context(|| format!("cannot run {}", args.python))?;
    if !output.status.success() {
        bail!("{} failed: {}", args.script.display(), String::from_utf8_lossy(&output.stderr));
    }
    let peer: PeerOutput =
        serde_json::from_slice(&output.stdout).context("unexpected output of the Python peer")?;
    if peer.scores.len() != test.len() {
        bail!("the Python peer scored {} rows, expected {}", peer.scores.len(), test.len());
    }
    let theirs = Figures {
        roc_auc: roc_auc(&peer.scores, &test_labels)?,
        tpr_at_1pct_fpr: detection_at_fpr(&peer.scores, &test_labels, 0.01)?.tpr,
        train_seconds: peer.train_seconds,
        c: peer.c,
        features: peer.features,
        single_sequences_per_second: peer.single_sequences_per_second,
        batch_sequences_per_second: peer.batch_sequences_per_second,
    };

    let table = markdown(&ours, &theirs, train.len(), test.len(), args.seed);
    if let Some(path) = &args.write_docs {
        write_section(path, &table)?;
    }
    if args.json {
        let out = serde_json::json!({"sentinel": ours, "scikit_learn": theirs,
            "train_rows": train.len(), "test_rows": test.len(), "seed": args.seed});
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print!("{table}");
    }
    Ok(())
}

fn model_features(model: &BehaviourModel) -> usize {
    let json: serde_json::Value = serde_json::from_slice(&model.to_json()).unwrap_or_default();
    json["detector"]["weights"].as_array().map_or(0, Vec::len)
}

/// Sequences scored per second: one at a time on one thread (with the full
/// verdict: explanation included), and the whole set over all threads
/// (probability only), each repeated for at least a second.
fn throughput(model: &BehaviourModel, rows: &[&LabelledSequence]) -> (f64, f64) {
    let measure = |run: &dyn Fn() -> usize| {
        let started = Instant::now();
        let mut scored = 0;
        while started.elapsed().as_secs_f64() < 1.0 {
            scored += run();
        }
        scored as f64 / started.elapsed().as_secs_f64()
    };
    let single = measure(&|| {
        for row in rows {
            std::hint::black_box(model.score(&row.calls));
        }
        rows.len()
    });
    let batch = measure(&|| {
        let scores: Vec<f64> = rows.par_iter().map(|row| model.probability(&row.calls)).collect();
        std::hint::black_box(scores).len()
    });
    (single, batch)
}

fn markdown(ours: &Figures, theirs: &Figures, train: usize, test: usize, seed: u64) -> String {
    let row = |name: &str, a: String, b: String| format!("| {name} | {a} | {b} |\n");
    let mut out = format!(
        "`sentinel bench dynamic --seed {seed}` (release build, 2 cores): MalBehavD-V1 split by sequence, \
         {train} training rows, {test} test rows, no sequence on both sides; both sides choose C by grouped \
         5-fold cross-validation over the same grid, and both test score lists go through sentinel-metrics.\n\n\
         | | Sentinel (Rust) | scikit-learn 1.9 |\n|---|---|---|\n"
    );
    out.push_str(&row("ROC AUC", format!("{:.4}", ours.roc_auc), format!("{:.4}", theirs.roc_auc)));
    out.push_str(&row(
        "detection at 1 % FPR",
        format!("{:.1} %", 100.0 * ours.tpr_at_1pct_fpr),
        format!("{:.1} %", 100.0 * theirs.tpr_at_1pct_fpr),
    ));
    out.push_str(&row("C chosen", ours.c.to_string(), theirs.c.to_string()));
    out.push_str(&row("features", ours.features.to_string(), theirs.features.to_string()));
    out.push_str(&row(
        "training (CV search + calibration + final fit)",
        format!("{:.1} s", ours.train_seconds),
        format!("{:.1} s", theirs.train_seconds),
    ));
    out.push_str(&row(
        "scoring, one sequence per call (sequences/s)",
        format!("{:.0} (full verdict, 1 thread)", ours.single_sequences_per_second),
        format!("{:.0}", theirs.single_sequences_per_second),
    ));
    out.push_str(&row(
        "scoring, whole test set (sequences/s)",
        format!("{:.0} (2 threads)", ours.batch_sequences_per_second),
        format!("{:.0} (one call)", theirs.batch_sequences_per_second),
    ));
    out
}

/// Replaces the body of this document's "Behaviour classifier" section (up to
/// the next `## ` heading), creating the document or the section if absent.
fn write_section(path: &Path, body: &str) -> anyhow::Result<()> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "# Benchmarks\n".to_owned(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let section = format!("{DOCS_HEADING}\n\n{body}\n");
    let updated = match text.find(DOCS_HEADING) {
        Some(start) => {
            let after = start + DOCS_HEADING.len();
            let end = text[after..].find("\n## ").map_or(text.len(), |i| after + i + 1);
            format!("{}{section}{}", &text[..start], &text[end..])
        }
        None => format!("{}\n{section}", text.trim_end()),
    };
    std::fs::write(path, updated).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
