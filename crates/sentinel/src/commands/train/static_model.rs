//! `sentinel train static`: trains the static classifier from the PE header data
//! set and the benign corpus — plus, on request, the labelled samples a server
//! collected — prints the held-out evaluation and writes the model file (by
//! default `models/static.json`, the model built into the binary). With a fixed
//! evaluation set the new model goes through the champion/challenger gate of
//! [`promotion`] instead of replacing the model in place.

use std::path::{Path, PathBuf};

use anyhow::Context;
use sentinel_metrics::Report;
use sentinel_static::{
    BenignEvaluation, LabelledRows, StaticModel, TrainingOptions, read_corpus, read_header_csv, train,
};
use sentinel_store::Store;

use crate::commands::train::promotion::{self, Entrant, Kept, RegistryEntry};
use crate::config::Config;

/// The registry of promotion decisions, beside the model file.
const REGISTRY_FILE: &str = "registry.jsonl";

#[derive(clap::Args)]
pub struct Args {
    /// The PE header data set (label column `Malware`).
    #[arg(long, default_value = "../shared/data/malware/static/pe_header_dataset.csv")]
    header_csv: PathBuf,
    /// The benign corpus (manifest.csv + files/).
    #[arg(long, default_value = "corpus")]
    corpus: PathBuf,
    /// Train on the header data set alone, without corpus files.
    #[arg(long)]
    without_corpus: bool,
    /// Seed of every random choice (splits, boosting).
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Where to write the model. With `--eval-set`, the model there is the
    /// champion the new one must not be worse than.
    #[arg(long, default_value = "models/static.json")]
    out: PathBuf,
    /// Also train on the labelled samples of the data directory (those whose
    /// file the vault holds), in the features the static model reads.
    #[arg(long, requires = "eval_set")]
    labelled_samples: bool,
    /// Data directory of `--labelled-samples` (as for `sentinel serve`).
    #[arg(long, env = "SENTINEL_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Fixed evaluation set (the header data set's CSV schema), kept out of
    /// training: the new model replaces the one at `--out` only if it is not
    /// worse on it, and the decision is recorded in `registry.jsonl`.
    #[arg(long)]
    eval_set: Option<PathBuf>,
    /// Print the training summary and evaluation as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args, config: &Config) -> anyhow::Result<()> {
    let mut header = read_header_csv(&args.header_csv)?;
    if args.labelled_samples {
        let data_dir = config.resolve_data_dir(args.data_dir.clone());
        let store = Store::open(&data_dir, config.section("store")?)
            .with_context(|| format!("cannot open the store in {}", data_dir.display()))?;
        let (added, skipped) = add_labelled_samples(&mut header, &store)?;
        eprintln!("labelled samples: {added} added ({skipped} without a vault file or not a parsable PE)");
    }
    let corpus = if args.without_corpus {
        None
    } else {
        let corpus = read_corpus(&args.corpus).with_context(|| {
            format!("cannot read the benign corpus in {} (or pass --without-corpus)", args.corpus.display())
        })?;
        eprintln!(
            "corpus: {} files from {} packages ({} listed files absent, {} rejected as not PE)",
            corpus.files.len(),
            corpus.packages(),
            corpus.absent,
            corpus.rejected
        );
        Some(corpus)
    };
    let options = TrainingOptions { seed: args.seed, ..TrainingOptions::default() };
    let started = std::time::Instant::now();
    let model = train(&header, corpus.as_ref(), &options)?;
    let seconds = started.elapsed().as_secs_f64();
    if let Some(parent) = args.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let written = match &args.eval_set {
        Some(eval_set) => promote(&model, eval_set, &args.out)?,
        None => {
            model.save(&args.out)?;
            args.out.clone()
        }
    };

    if args.json {
        let out = serde_json::json!({
            "version": model.version(),
            "threshold": model.threshold(),
            "training_seconds": seconds,
            "training": model.training(),
            "evaluation": model.evaluation(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    let summary = model.training();
    let evaluation = model.evaluation();
    println!(
        "model {} written to {} ({} trees, {seconds:.1} s)",
        model.version(),
        written.display(),
        summary.trees
    );
    println!(
        "header data set: {} rows, {} unique ({} with conflicting labels dropped); train {}, calibration {}, test {}",
        summary.header_rows,
        summary.header_unique_rows,
        summary.header_conflicting_rows,
        summary.header_train_rows,
        summary.header_calibration_rows,
        summary.header_test_rows
    );
    if let Some(split) = &summary.corpus {
        println!(
            "corpus: {} files / {} packages; train {}/{}, calibration {}/{}, test {}/{} (files/packages; {} test files identical to trained ones left out)",
            split.files,
            split.packages,
            split.train_files,
            split.train_packages,
            split.calibration_files,
            split.calibration_packages,
            split.test_files,
            split.test_packages,
            split.test_files_seen_in_training
        );
    }
    println!("threshold (score >= threshold is malicious): {:.4}", model.threshold());
    print_report("held-out header rows", &evaluation.header_test);
    if let Some(benign) = &evaluation.held_out_packages {
        print_benign("held-out benign packages", benign);
    }
    if let Some(report) = &evaluation.combined_test {
        print_report("held-out header rows + held-out packages", report);
    }
    if let Some(baseline) = &evaluation.header_only_baseline {
        println!("\nbaseline: the same pipeline without corpus files (threshold {:.4})", baseline.threshold);
        print_report("  held-out header rows", &baseline.header_test);
        print_benign("  held-out benign packages", &baseline.held_out_packages);
    }
    Ok(())
}

fn print_report(title: &str, report: &Report) {
    let c = &report.confusion;
    println!(
        "{title}: {} samples ({} malware)\n  ROC AUC {:.4}  detection at 1 % FPR {:.2} %  at 0.1 % FPR {:.2} %\n  at threshold: TP {} FP {} TN {} FN {}  (detection {:.2} %, FPR {:.2} %)",
        report.samples,
        report.positives,
        report.roc_auc,
        100.0 * report.tpr_at_1pct_fpr,
        100.0 * report.tpr_at_0_1pct_fpr,
        c.true_positives,
        c.false_positives,
        c.true_negatives,
        c.false_negatives,
        100.0 * report.recall,
        100.0 * report.false_positive_rate
    );
}

fn print_benign(title: &str, benign: &BenignEvaluation) {
    println!(
        "{title}: {} of {} files flagged ({:.2} %) in {} packages; at score >= 0.5: {} ({:.2} %)",
        benign.flagged,
        benign.files,
        100.0 * benign.false_positive_rate,
        benign.packages,
        benign.flagged_at_half,
        100.0 * benign.false_positive_rate_at_half
    );
    for (package, count) in &benign.flagged_by_package {
        println!("    {package}: {count}");
    }
}

/// Adds every labelled sample whose file the vault holds, as `pe-header`
/// features; returns how many were added and how many could not be.
fn add_labelled_samples(rows: &mut LabelledRows, store: &Store) -> anyhow::Result<(usize, usize)> {
    let (mut added, mut skipped) = (0, 0);
    for sample in store.labelled_samples()? {
        let features = match sample.file_path {
            Some(_) => store
                .read_sample(&sample.sha256)?
                .and_then(|bytes| sentinel_pe::pe_header_features(&bytes).ok()),
            None => None,
        };
        match features {
            Some(features) => {
                rows.push(&features, sample.y == 1);
                added += 1;
            }
            None => skipped += 1,
        }
    }
    Ok((added, skipped))
}

/// The champion/challenger gate: scores the champion (the model at `out`, if
/// any) and the new model on `eval_set`, keeps the new one as
/// `<version>.json` beside `out` either way, puts it at `out` only if it is
/// not worse, and records the decision in the registry. Returns where the new
/// model was written.
fn promote(challenger: &StaticModel, eval_set: &Path, out: &Path) -> anyhow::Result<PathBuf> {
    let evaluation = read_header_csv(eval_set)?;
    let score = |model: &StaticModel| -> anyhow::Result<Report> {
        let scores = model.score_rows(&evaluation.values)?;
        Ok(Report::new(&scores, &evaluation.labels, model.threshold())?)
    };
    let champion = match out.exists() {
        true => Some(StaticModel::load(out)?),
        false => None,
    };
    let champion_report = champion.as_ref().map(&score).transpose()?;
    let challenger_report = score(challenger)?;
    let challenger_path = out.with_file_name(format!("{}.json", challenger.version()));
    challenger.save(&challenger_path)?;
    let decision = promotion::decide(champion_report.as_ref(), &challenger_report);
    if decision.kept == Kept::Challenger {
        // Written aside and renamed, so a server reloading meanwhile reads one model or the other.
        let staging = out.with_extension("json.promoting");
        challenger.save(&staging)?;
        std::fs::rename(&staging, out).with_context(|| format!("cannot replace {}", out.display()))?;
    }
    eprintln!("{:?} kept: {}", decision.kept, decision.reason);
    let entry = RegistryEntry {
        decided_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |t| t.as_secs()),
        model: "static".to_owned(),
        evaluation_set: eval_set.display().to_string(),
        evaluation_samples: evaluation.len(),
        champion: champion
            .as_ref()
            .zip(champion_report.as_ref())
            .map(|(model, report)| Entrant::new(model.version(), out, report)),
        challenger: Entrant::new(challenger.version(), &challenger_path, &challenger_report),
        decision,
    };
    promotion::record(&out.with_file_name(REGISTRY_FILE), &entry)?;
    Ok(challenger_path)
}
