//! `sentinel train static`: trains the static classifier from the PE header data
//! set and the benign corpus — plus, on request, the labelled samples a server
//! collected — prints the held-out evaluation and writes the model file (by
//! default `models/static.json`, the model built into the binary). With a fixed
//! evaluation set the new model is registered in the model registry of the data
//! directory's store and goes through the champion/challenger gate of
//! [`promotion`] instead of replacing the model in place.

use std::path::{Path, PathBuf};

use anyhow::Context;
use sentinel_metrics::Report;
use sentinel_static::{
    BenignEvaluation, LabelledRows, StaticModel, TrainingOptions, read_corpus, read_header_csv, train,
};
use sentinel_store::{
    DecisionOutcome, ModelKind, NewAuditEvent, NewDecision, NewModelVersion, Provenance, Store,
    local_user_principal,
};

use crate::commands::train::promotion;
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
    /// Where to write the model. With `--eval-set`, the model there is the
    /// champion the new one must not be worse than.
    #[arg(long, default_value = "models/static.json")]
    out: PathBuf,
    /// Also train on the labelled samples of the data directory (those whose
    /// file the vault holds), in the features the static model reads.
    #[arg(long, requires = "eval_set")]
    labelled_samples: bool,
    /// Data directory of `--labelled-samples` and of the model registry that
    /// `--eval-set` records in (as for `sentinel serve`).
    #[arg(long, env = "SENTINEL_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// The PostgreSQL database of a shared store (as for `sentinel serve --store`).
    #[arg(long = "store", env = "SENTINEL_STORE_URL", value_name = "URL")]
    store_url: Option<String>,
    /// Fixed evaluation set (the header data set's CSV schema), kept out of
    /// training: the new model is registered in the data directory's model
    /// registry and becomes the active static model (and replaces the file at
    /// `--out`) only if it is not worse on it than the one in service; the
    /// decision is recorded in the registry.
    #[arg(long)]
    eval_set: Option<PathBuf>,
    /// Print the training summary and evaluation as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args, config: &Config) -> anyhow::Result<()> {
    let mut header = read_header_csv(&args.header_csv)?;
    let store = match args.labelled_samples || args.eval_set.is_some() {
        true => {
            let data_dir = config.resolve_data_dir(args.data_dir.clone());
            Some(crate::commands::datasets::open_store(&data_dir, args.store_url.clone(), config)?)
        }
        false => None,
    };
    let mut labelled = serde_json::Value::Null;
    if let Some(store) = store.as_ref().filter(|_| args.labelled_samples) {
        let (added, skipped) = add_labelled_samples(&mut header, store)?;
        eprintln!("labelled samples: {added} added ({skipped} without a vault file or not a parsable PE)");
        labelled = serde_json::json!({ "added": added, "skipped": skipped });
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
    let written = match (&args.eval_set, &store) {
        (Some(eval_set), Some(store)) => {
            let provenance = Provenance {
                trainer: concat!("sentinel ", env!("CARGO_PKG_VERSION")).to_owned(),
                command: std::env::args().collect::<Vec<_>>().join(" "),
                data: serde_json::json!({
                    "header_csv": args.header_csv.display().to_string(),
                    "corpus": corpus.as_ref().map(|_| args.corpus.display().to_string()),
                    "labelled_samples": labelled,
                    "seed": args.seed,
                }),
            };
            promote(&model, provenance, eval_set, &args.out, store)?
        }
        _ => {
            model.save(&args.out)?;
            args.out.display().to_string()
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
    println!("model {} written to {} ({} trees, {seconds:.1} s)", model.version(), written, summary.trees);
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

/// The champion/challenger gate: registers the new model in the registry,
/// scores the champion (the registry's active static model, else the model file
/// at `out`, if any) and the new model on `eval_set`, records the decision, and
/// if the new model is not worse makes it the active one and puts it at `out`.
/// Returns where the new model was written.
fn promote(
    challenger: &StaticModel,
    provenance: Provenance,
    eval_set: &Path,
    out: &Path,
    store: &Store,
) -> anyhow::Result<String> {
    let evaluation = read_header_csv(eval_set)?;
    let score = |model: &StaticModel| -> anyhow::Result<Report> {
        let scores = model.score_rows(&evaluation.values)?;
        Ok(Report::new(&scores, &evaluation.labels, model.threshold())?)
    };
    let champion = match store.active_model(ModelKind::Static)? {
        Some(stored) => {
            Some((StaticModel::from_slice(&stored.artifact)?, format!("registry version {}", stored.info.id)))
        }
        None if out.exists() => Some((StaticModel::load(out)?, out.display().to_string())),
        None => None,
    };
    let champion_report = champion.as_ref().map(|(model, _)| score(model)).transpose()?;
    let challenger_report = score(challenger)?;
    let registered = store.register_model(NewModelVersion {
        kind: ModelKind::Static,
        label: challenger.version().to_owned(),
        provenance,
        evaluation: Some(serde_json::json!({
            "held_out": challenger.evaluation(),
            "evaluation_set": promotion::figures(&challenger_report),
        })),
        artifact: challenger.to_json(),
    })?;
    let decision = promotion::decide(champion_report.as_ref(), &challenger_report);
    let figures = serde_json::json!({
        "evaluation_set": eval_set.display().to_string(),
        "evaluation_samples": evaluation.len(),
        "challenger": promotion::figures(&challenger_report),
        "champion": champion.as_ref().zip(champion_report.as_ref()).map(|((model, source), report)| {
            serde_json::json!({ "version": model.version(), "source": source, "figures": promotion::figures(report) })
        }),
    });
    if decision.outcome == DecisionOutcome::Promoted {
        // Written aside and renamed, so a server reading the file meanwhile reads one model or the other.
        let staging = out.with_extension("json.promoting");
        challenger.save(&staging)?;
        std::fs::rename(&staging, out).with_context(|| format!("cannot replace {}", out.display()))?;
    }
    store.decide_model(NewDecision {
        kind: ModelKind::Static,
        version_id: registered.id,
        outcome: decision.outcome,
        reason: decision.reason.clone(),
        figures,
    })?;
    let event = NewAuditEvent::new(
        local_user_principal(),
        "model.promote",
        Some(format!("static version {}", registered.id)),
        decision.outcome.as_str(),
        None,
    )
    .with_detail("reason", decision.reason.clone());
    store.record_audit_event(event).context("cannot record the decision in the audit table")?;
    eprintln!("{}: {}", decision.outcome.as_str(), decision.reason);
    Ok(match decision.outcome {
        DecisionOutcome::Promoted => {
            format!("the model registry (version {}, active) and {}", registered.id, out.display())
        }
        _ => format!("the model registry (version {}, not active)", registered.id),
    })
}
