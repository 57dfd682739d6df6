//! `sentinel train static`: trains the static classifier from the PE header data
//! set and the benign corpus, prints the held-out evaluation and writes the
//! model file (by default `models/static.json`, the model built into the binary).

use std::path::PathBuf;

use anyhow::Context;
use sentinel_metrics::Report;
use sentinel_static::{BenignEvaluation, TrainingOptions, read_corpus, read_header_csv, train};

use crate::config::Config;

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
    /// Where to write the model.
    #[arg(long, default_value = "models/static.json")]
    out: PathBuf,
    /// Print the training summary and evaluation as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args, _config: &Config) -> anyhow::Result<()> {
    let header = read_header_csv(&args.header_csv)?;
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
    model.save(&args.out)?;

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
        args.out.display(),
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
