//! `sentinel bench dynamic`: Sentinel's behaviour model against scikit-learn's
//! TF-IDF (1–3-grams) + logistic regression (`bench/behaviour_sklearn.py`, run
//! with python3), on the same splits, in one run:
//!
//! * the malware detector on MalBehavD, several splits by sequence (no
//!   sequence on both sides of a split): ROC AUC and detection at 1 % FPR of
//!   both, and the paired difference with its standard error;
//! * the family classifier on the Mal-API-2019 rows of `families.csv`, several
//!   splits by sequence stratified by family: accuracy and macro F1 of both.
//!
//! Both sides' test outputs go through the same metric code (sentinel-metrics,
//! [`ClassificationReport`]). Also measures Sentinel's scoring throughput.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use rayon::prelude::*;
use sentinel_behaviour::{
    BehaviourModel, ClassificationReport, FamilySample, LabelledSequence, TrainingOptions, load_labelled_csv,
    load_mal_api, split_grouped, train_detector_only, train_family_classifier, write_labelled_csv,
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
    /// Mal-API-2019 sequences for the family comparison.
    #[arg(long, default_value = "../shared/data/malware/dynamic/mal-api-2019/100_calls.zip")]
    families: PathBuf,
    #[arg(long, default_value = "../shared/data/malware/dynamic/mal-api-2019/ApiIndex.txt")]
    api_index: PathBuf,
    /// Family labels (`row,family`).
    #[arg(long, default_value = "../shared/data/malware/dynamic/mal-api-2019/families.csv")]
    family_labels: PathBuf,
    /// Skip the family comparison.
    #[arg(long)]
    no_families: bool,
    /// Skip the detector comparison (the family one alone takes minutes, the
    /// detector's tens of minutes).
    #[arg(long, conflicts_with = "no_families")]
    no_detector: bool,
    /// The scikit-learn peer.
    #[arg(long, default_value = "bench/behaviour_sklearn.py")]
    script: PathBuf,
    /// Python interpreter with numpy and scikit-learn.
    #[arg(long, default_value = "python3")]
    python: String,
    /// Seed of the first split; split `i` uses `seed + i`.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Number of splits of each data set.
    #[arg(long, default_value_t = 5)]
    splits: u64,
    /// Fraction of the data held out in each split.
    #[arg(long, default_value_t = 0.2)]
    test_fraction: f64,
    /// Replace the "Behaviour classifier" section of this document with the figures.
    #[arg(long)]
    write_docs: Option<PathBuf>,
    /// Print the figures as JSON.
    #[arg(long)]
    json: bool,
}

/// The detector figures of one split.
#[derive(Debug, Serialize)]
struct DetectorSplit {
    seed: u64,
    train_rows: usize,
    test_rows: usize,
    sentinel_roc_auc: f64,
    peer_roc_auc: f64,
    sentinel_tpr_at_1pct_fpr: f64,
    peer_tpr_at_1pct_fpr: f64,
    sentinel_train_seconds: f64,
    peer_train_seconds: f64,
    sentinel_c: f64,
    peer_c: f64,
}

/// The family figures of one split.
#[derive(Debug, Serialize)]
struct FamilySplit {
    seed: u64,
    train_rows: usize,
    test_rows: usize,
    sentinel_accuracy: f64,
    peer_accuracy: f64,
    sentinel_macro_f1: f64,
    peer_macro_f1: f64,
}

/// Scoring speed of Sentinel's detector (first split's model and test rows)
/// and of the peer.
#[derive(Debug, Serialize)]
struct Throughput {
    sentinel_single_sequences_per_second: f64,
    sentinel_batch_sequences_per_second: f64,
    peer_single_sequences_per_second: f64,
    peer_batch_sequences_per_second: f64,
}

#[derive(Debug, Deserialize)]
struct PeerDetector {
    scores: Vec<f64>,
    c: f64,
    train_seconds: f64,
    batch_sequences_per_second: f64,
    single_sequences_per_second: f64,
}

#[derive(Debug, Deserialize)]
struct PeerFamilies {
    predictions: Vec<String>,
}

/// Mean and standard error of the mean.
#[derive(Debug, Clone, Copy, Serialize)]
struct MeanError {
    mean: f64,
    standard_error: f64,
}

fn mean_error(values: impl IntoIterator<Item = f64>) -> MeanError {
    let values: Vec<f64> = values.into_iter().collect();
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n.max(1.0);
    let variance = if values.len() > 1 {
        values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    MeanError { mean, standard_error: (variance / n.max(1.0)).sqrt() }
}

pub fn run(args: Args, _config: &Config) -> anyhow::Result<()> {
    anyhow::ensure!(args.splits >= 1, "--splits must be at least 1");
    let rows = if args.no_detector {
        Vec::new()
    } else {
        load_labelled_csv(&args.data).with_context(|| format!("cannot read {}", args.data.display()))?
    };
    let families = if args.no_families {
        None
    } else {
        Some(load_mal_api(&args.families, &args.api_index, &args.family_labels).with_context(|| {
            format!("cannot read {} labelled by {}", args.families.display(), args.family_labels.display())
        })?)
    };
    let dir = tempfile::tempdir().context("cannot create a temporary directory")?;

    let mut detector_splits = Vec::new();
    let mut throughput = None;
    for split in (0..args.splits).filter(|_| !args.no_detector) {
        let seed = args.seed + split;
        let (figures, speed) = detector_split(&args, &rows, seed, dir.path(), split == 0)?;
        eprintln!(
            "detector split {split} (seed {seed}): ROC AUC Sentinel {:.4}, scikit-learn {:.4}",
            figures.sentinel_roc_auc, figures.peer_roc_auc
        );
        detector_splits.push(figures);
        throughput = throughput.or(speed);
    }
    let mut family_splits = Vec::new();
    if let Some(samples) = &families {
        for split in 0..args.splits {
            let seed = args.seed + split;
            let figures = family_split(&args, samples, seed, dir.path())?;
            eprintln!(
                "family split {split} (seed {seed}): accuracy Sentinel {:.3}, scikit-learn {:.3}; \
                 macro F1 {:.3} / {:.3}",
                figures.sentinel_accuracy,
                figures.peer_accuracy,
                figures.sentinel_macro_f1,
                figures.peer_macro_f1
            );
            family_splits.push(figures);
        }
    }

    let table = markdown(&args, &detector_splits, &family_splits, throughput.as_ref());
    if let Some(path) = &args.write_docs {
        write_section(path, &table)?;
    }
    if args.json {
        let summary = |f: &dyn Fn(&DetectorSplit) -> f64| mean_error(detector_splits.iter().map(f));
        let family_summary = |f: &dyn Fn(&FamilySplit) -> f64| mean_error(family_splits.iter().map(f));
        let out = serde_json::json!({
            "seed": args.seed,
            "splits": args.splits,
            "detector": (!detector_splits.is_empty()).then(|| serde_json::json!({
                "sentinel_roc_auc": summary(&|s| s.sentinel_roc_auc),
                "peer_roc_auc": summary(&|s| s.peer_roc_auc),
                "roc_auc_difference": summary(&|s| s.sentinel_roc_auc - s.peer_roc_auc),
                "sentinel_tpr_at_1pct_fpr": summary(&|s| s.sentinel_tpr_at_1pct_fpr),
                "peer_tpr_at_1pct_fpr": summary(&|s| s.peer_tpr_at_1pct_fpr),
                "tpr_at_1pct_fpr_difference": summary(&|s| s.sentinel_tpr_at_1pct_fpr - s.peer_tpr_at_1pct_fpr),
                "per_split": detector_splits,
            })),
            "families": (!family_splits.is_empty()).then(|| serde_json::json!({
                "sentinel_accuracy": family_summary(&|s| s.sentinel_accuracy),
                "peer_accuracy": family_summary(&|s| s.peer_accuracy),
                "accuracy_difference": family_summary(&|s| s.sentinel_accuracy - s.peer_accuracy),
                "sentinel_macro_f1": family_summary(&|s| s.sentinel_macro_f1),
                "peer_macro_f1": family_summary(&|s| s.peer_macro_f1),
                "macro_f1_difference": family_summary(&|s| s.sentinel_macro_f1 - s.peer_macro_f1),
                "per_split": family_splits,
            })),
            "throughput": throughput,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print!("{table}");
    }
    Ok(())
}

/// Runs the peer script with `args` and parses its JSON answer.
fn run_peer<T: serde::de::DeserializeOwned>(
    args: &Args,
    peer_args: &[&std::ffi::OsStr],
) -> anyhow::Result<T> {
    let output = std::process::Command::new(&args.python)
        .arg(&args.script)
        .args(peer_args)
        .output()
        .with_context(|| format!("cannot run {}", args.python))?;
    if !output.status.success() {
        bail!("{} failed: {}", args.script.display(), String::from_utf8_lossy(&output.stderr));
    }
    serde_json::from_slice(&output.stdout).context("unexpected output of the Python peer")
}

fn detector_split(
    args: &Args,
    rows: &[LabelledSequence],
    seed: u64,
    dir: &Path,
    measure_speed: bool,
) -> anyhow::Result<(DetectorSplit, Option<Throughput>)> {
    let keys: Vec<&[String]> = rows.iter().map(|r| r.calls.calls()).collect();
    let labels: Vec<bool> = rows.iter().map(|r| r.malicious).collect();
    let (train_rows, test_rows) = split_grouped(&keys, &labels, args.test_fraction, seed);
    let train: Vec<&LabelledSequence> = train_rows.iter().map(|&i| &rows[i]).collect();
    let test: Vec<&LabelledSequence> = test_rows.iter().map(|&i| &rows[i]).collect();
    let test_labels: Vec<bool> = test.iter().map(|r| r.malicious).collect();
    let (train_csv, test_csv) = (dir.join("train.csv"), dir.join("test.csv"));
    write_labelled_csv(&train_csv, &train)?;
    write_labelled_csv(&test_csv, &test)?;

    let options = TrainingOptions { seed, ..TrainingOptions::default() };
    let started = Instant::now();
    let model = train_detector_only(&train, &options)?;
    let sentinel_train_seconds = started.elapsed().as_secs_f64();
    let scores: Vec<f64> = test.par_iter().map(|r| model.probability(&r.calls)).collect();

    let seed_text = seed.to_string();
    let peer: PeerDetector = run_peer(
        args,
        &[
            "--task".as_ref(),
            "detector".as_ref(),
            "--train".as_ref(),
            train_csv.as_os_str(),
            "--test".as_ref(),
            test_csv.as_os_str(),
            "--seed".as_ref(),
            seed_text.as_ref(),
        ],
    )?;
    if peer.scores.len() != test.len() {
        bail!("the Python peer scored {} rows, expected {}", peer.scores.len(), test.len());
    }
    let speed = measure_speed.then(|| {
        let (single, batch) = throughput(&model, &test);
        Throughput {
            sentinel_single_sequences_per_second: single,
            sentinel_batch_sequences_per_second: batch,
            peer_single_sequences_per_second: peer.single_sequences_per_second,
            peer_batch_sequences_per_second: peer.batch_sequences_per_second,
        }
    });
    Ok((
        DetectorSplit {
            seed,
            train_rows: train.len(),
            test_rows: test.len(),
            sentinel_roc_auc: roc_auc(&scores, &test_labels)?,
            peer_roc_auc: roc_auc(&peer.scores, &test_labels)?,
            sentinel_tpr_at_1pct_fpr: detection_at_fpr(&scores, &test_labels, 0.01)?.tpr,
            peer_tpr_at_1pct_fpr: detection_at_fpr(&peer.scores, &test_labels, 0.01)?.tpr,
            sentinel_train_seconds,
            peer_train_seconds: peer.train_seconds,
            sentinel_c: model.training().detector_c,
            peer_c: peer.c,
        },
        speed,
    ))
}

/// Writes family samples for the peer: one JSON object per line with the
/// family and the calls as Sentinel's classifier sees them (runs collapsed).
fn write_family_lines(path: &Path, samples: &[&FamilySample]) -> anyhow::Result<()> {
    let mut out = std::io::BufWriter::new(
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?,
    );
    for sample in samples {
        let line = serde_json::json!({"family": sample.family, "calls": sample.classifier_view().join(" ")});
        serde_json::to_writer(&mut out, &line)?;
        out.write_all(b"\n")?;
    }
    out.flush().with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

fn family_split(args: &Args, samples: &[FamilySample], seed: u64, dir: &Path) -> anyhow::Result<FamilySplit> {
    let keys: Vec<Vec<&str>> = samples.iter().map(FamilySample::classifier_view).collect();
    let strata: Vec<&str> = samples.iter().map(|s| s.family.as_str()).collect();
    let (train_rows, test_rows) = split_grouped(&keys, &strata, args.test_fraction, seed);
    let train: Vec<&FamilySample> = train_rows.iter().map(|&i| &samples[i]).collect();
    let test: Vec<&FamilySample> = test_rows.iter().map(|&i| &samples[i]).collect();
    let truth: Vec<&str> = test.iter().map(|s| s.family.as_str()).collect();

    let options = TrainingOptions { seed, ..TrainingOptions::default() };
    let classifier = train_family_classifier(&train, &options)?;
    let ours: Vec<String> =
        test.par_iter().map(|s| classifier.guess(&s.calls).map_or_else(String::new, |g| g.family)).collect();

    let (train_path, test_path) = (dir.join("families-train.jsonl"), dir.join("families-test.jsonl"));
    write_family_lines(&train_path, &train)?;
    write_family_lines(&test_path, &test)?;
    let seed_text = seed.to_string();
    let peer: PeerFamilies = run_peer(
        args,
        &[
            "--task".as_ref(),
            "families".as_ref(),
            "--train".as_ref(),
            train_path.as_os_str(),
            "--test".as_ref(),
            test_path.as_os_str(),
            "--seed".as_ref(),
            seed_text.as_ref(),
        ],
    )?;
    if peer.predictions.len() != test.len() {
        bail!("the Python peer predicted {} rows, expected {}", peer.predictions.len(), test.len());
    }
    let ours: Vec<&str> = ours.iter().map(String::as_str).collect();
    let theirs: Vec<&str> = peer.predictions.iter().map(String::as_str).collect();
    let ours = ClassificationReport::new(&truth, &ours).context("empty family test split")?;
    let theirs = ClassificationReport::new(&truth, &theirs).context("empty family test split")?;
    Ok(FamilySplit {
        seed,
        train_rows: train.len(),
        test_rows: test.len(),
        sentinel_accuracy: ours.accuracy,
        peer_accuracy: theirs.accuracy,
        sentinel_macro_f1: ours.macro_f1,
        peer_macro_f1: theirs.macro_f1,
    })
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

fn cell(m: MeanError, scale: f64, digits: usize) -> String {
    format!("{:.*} ± {:.*}", digits, scale * m.mean, digits, scale * m.standard_error)
}

fn row(name: &str, a: String, b: String, d: String) -> String {
    format!("| {name} | {a} | {b} | {d} |\n")
}

fn markdown(
    args: &Args,
    detector: &[DetectorSplit],
    families: &[FamilySplit],
    speed: Option<&Throughput>,
) -> String {
    let part = match (detector.is_empty(), families.is_empty()) {
        (true, _) => " --no-detector",
        (_, true) => " --no-families",
        _ => "",
    };
    let mut out = format!(
        "`sentinel bench dynamic --seed {} --splits {}{part}` (release build, 2 cores). Mean ± standard error \
         over {} splits (seeds {}–{}); the difference is computed split by split (paired).\n",
        args.seed,
        args.splits,
        args.splits,
        args.seed,
        args.seed + args.splits - 1,
    );
    if !detector.is_empty() {
        out.push_str(&detector_markdown(detector, speed));
    }
    if !families.is_empty() {
        out.push_str(&family_markdown(families));
    }
    out
}

fn detector_markdown(detector: &[DetectorSplit], speed: Option<&Throughput>) -> String {
    let d = |f: &dyn Fn(&DetectorSplit) -> f64| mean_error(detector.iter().map(f));
    let mut out = format!(
        "\n**Malware detector**, MalBehavD-V1 split by sequence ({} training / {} test rows in the first split, \
         no sequence on both sides). Sentinel: TF-IDF 1–3-grams + logistic regression stacked with boosted \
         trees over the behaviour profile, calibrated; scikit-learn: TF-IDF 1–3-grams + logistic regression; \
         both choose C by grouped 5-fold cross-validation over the same grid, and both test score lists go \
         through sentinel-metrics.\n\n\
         | | Sentinel (Rust) | scikit-learn | difference |\n|---|---|---|---|\n",
        detector[0].train_rows, detector[0].test_rows,
    );
    out.push_str(&row(
        "ROC AUC",
        cell(d(&|s| s.sentinel_roc_auc), 1.0, 4),
        cell(d(&|s| s.peer_roc_auc), 1.0, 4),
        cell(d(&|s| s.sentinel_roc_auc - s.peer_roc_auc), 1.0, 4),
    ));
    out.push_str(&row(
        "detection at 1 % FPR (%)",
        cell(d(&|s| s.sentinel_tpr_at_1pct_fpr), 100.0, 1),
        cell(d(&|s| s.peer_tpr_at_1pct_fpr), 100.0, 1),
        cell(d(&|s| s.sentinel_tpr_at_1pct_fpr - s.peer_tpr_at_1pct_fpr), 100.0, 1),
    ));
    out.push_str(&row(
        "training, CV search included (s)",
        cell(d(&|s| s.sentinel_train_seconds), 1.0, 1),
        cell(d(&|s| s.peer_train_seconds), 1.0, 1),
        String::new(),
    ));
    if let Some(speed) = speed {
        out.push_str(&row(
            "scoring one sequence per call (sequences/s, first split)",
            format!("{:.0} (full verdict, 1 thread)", speed.sentinel_single_sequences_per_second),
            format!("{:.0}", speed.peer_single_sequences_per_second),
            String::new(),
        ));
        out.push_str(&row(
            "scoring the whole test set (sequences/s, first split)",
            format!("{:.0} (2 threads)", speed.sentinel_batch_sequences_per_second),
            format!("{:.0} (one call)", speed.peer_batch_sequences_per_second),
            String::new(),
        ));
    }
    let per_split: Vec<String> =
        detector.iter().map(|s| format!("{:.4} / {:.4}", s.sentinel_roc_auc, s.peer_roc_auc)).collect();
    out.push_str(&format!("\nROC AUC per split (Sentinel / scikit-learn): {}.\n", per_split.join("; ")));
    out
}

fn family_markdown(families: &[FamilySplit]) -> String {
    let mut out = String::new();
    let f = |g: &dyn Fn(&FamilySplit) -> f64| mean_error(families.iter().map(g));
    out.push_str(&format!(
        "\n**Family classifier**, the {} Mal-API-2019 sequences labelled by families.csv, split by sequence \
         and stratified by family ({} training / {} test rows per split). Both sides get the same calls \
         (runs collapsed, first 20,000) and choose C by grouped 5-fold cross-validation; Sentinel: TF-IDF \
         1–{}-grams + multinomial logistic regression, a second one over the first {} calls only (the \
         start-up), and one boosted-trees model per family over the family profile, blended with weights \
         chosen on the same folds; scikit-learn: TF-IDF 1–3-grams + logistic regression.\n\n\
         | | Sentinel (Rust) | scikit-learn | difference |\n|---|---|---|---|\n",
        families[0].train_rows + families[0].test_rows,
        families[0].train_rows,
        families[0].test_rows,
        TrainingOptions::default().family_max_n,
        TrainingOptions::default().family_prefix_calls,
    ));
    out.push_str(&row(
        "accuracy (%)",
        cell(f(&|s| s.sentinel_accuracy), 100.0, 1),
        cell(f(&|s| s.peer_accuracy), 100.0, 1),
        cell(f(&|s| s.sentinel_accuracy - s.peer_accuracy), 100.0, 1),
    ));
    out.push_str(&row(
        "macro F1",
        cell(f(&|s| s.sentinel_macro_f1), 1.0, 3),
        cell(f(&|s| s.peer_macro_f1), 1.0, 3),
        cell(f(&|s| s.sentinel_macro_f1 - s.peer_macro_f1), 1.0, 3),
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
