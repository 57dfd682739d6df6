//! `sentinel train dynamic`: trains the behaviour model (malware detector on
//! MalBehavD; family classifier on the Mal-API-2019 rows that `families.csv`
//! labels — unlabelled rows are not used), prints the figures measured on
//! splits by sequence, writes them into docs/dynamic-analysis.md and writes
//! the model file (by default `models/behaviour.json`, the model built into
//! the binary).

use std::path::{Path, PathBuf};

use anyhow::Context;
use sentinel_behaviour::{TrainingOptions, TrainingReport, load_labelled_csv, load_mal_api, train};

use crate::config::Config;

const DOCS_BEGIN: &str = "<!-- sentinel train dynamic: begin -->";
const DOCS_END: &str = "<!-- sentinel train dynamic: end -->";

#[derive(clap::Args)]
pub struct Args {
    /// Labelled API-call sequences (MalBehavD schema: sha256, labels, calls…).
    #[arg(long, default_value = "../shared/data/malware/dynamic/malbehavd/malbehavd_v1_train.csv")]
    data: PathBuf,
    /// Mal-API-2019 sequences for the family classifier.
    #[arg(long, default_value = "../shared/data/malware/dynamic/mal-api-2019/100_calls.zip")]
    families: PathBuf,
    /// Mal-API-2019's API index.
    #[arg(long, default_value = "../shared/data/malware/dynamic/mal-api-2019/ApiIndex.txt")]
    api_index: PathBuf,
    /// Family labels of the Mal-API-2019 sequences: `row,family` (row =
    /// 0-based line of the calls text).
    #[arg(long, default_value = "../shared/data/malware/dynamic/mal-api-2019/families.csv")]
    family_labels: PathBuf,
    /// Train no family classifier.
    #[arg(long)]
    no_families: bool,
    /// Seed of every random choice (splits, folds).
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Where to write the model.
    #[arg(long, default_value = "models/behaviour.json")]
    out: PathBuf,
    /// Document to write the figures into (between its marker comments).
    #[arg(long, default_value = "docs/dynamic-analysis.md")]
    docs: PathBuf,
    /// Do not touch the document.
    #[arg(long)]
    no_docs: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args, _config: &Config) -> anyhow::Result<()> {
    let labelled =
        load_labelled_csv(&args.data).with_context(|| format!("cannot read {}", args.data.display()))?;
    let families = if args.no_families {
        None
    } else {
        Some(load_mal_api(&args.families, &args.api_index, &args.family_labels).with_context(|| {
            format!("cannot read {} labelled by {}", args.families.display(), args.family_labels.display())
        })?)
    };
    let mut data_names = vec![file_name(&args.data)];
    if families.is_some() {
        data_names.push(format!("{} ({})", file_name(&args.families), file_name(&args.family_labels)));
    }
    let options = TrainingOptions { seed: args.seed, ..TrainingOptions::default() };
    let started = std::time::Instant::now();
    let (model, report) = train(&labelled, families.as_deref(), data_names, &options)?;
    let seconds = started.elapsed().as_secs_f64();
    if let Some(parent) = args.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    }
    model.save(&args.out)?;

    let summary = summary_markdown(&report, model.version(), model.threshold(), &args, seconds);
    if !args.no_docs {
        write_marked_block(&args.docs, &summary)?;
    }
    if args.json {
        let out = serde_json::json!({
            "version": model.version(),
            "threshold": model.threshold(),
            "training_seconds": seconds,
            "roc_auc": report.holdout.roc_auc,
            "tpr_at_1pct_fpr": report.holdout.tpr_at_1pct_fpr,
            "report": report,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("model {} written to {} ({seconds:.1} s)", model.version(), args.out.display());
        print!("{summary}");
    }
    Ok(())
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned())
}

fn summary_markdown(
    report: &TrainingReport,
    version: &str,
    threshold: f64,
    args: &Args,
    seconds: f64,
) -> String {
    let h = &report.holdout;
    let mut out = format!(
        "Model `{version}`, `sentinel train dynamic --seed {}` ({seconds:.0} s on 2 cores).\n\n\
         Malware detector (linear n-gram model, C = {} chosen by grouped 5-fold cross-validation, stacked with \
         boosted trees over the behaviour profile), split by sequence ({} training rows, {} held-out rows, \
         no sequence on both sides):\n\n\
         | held-out figure | value |\n|---|---|\n\
         | ROC AUC | {:.4} |\n| average precision | {:.4} |\n| detection at 1 % FPR | {:.1} % |\n\
         | detection at 0.1 % FPR | {:.1} % |\n| at the model's threshold ({:.3}): detection / FPR | {:.1} % / {:.1} % |\n",
        args.seed,
        report.detector_c,
        report.train_rows,
        report.test_rows,
        h.roc_auc,
        h.average_precision,
        100.0 * h.tpr_at_1pct_fpr,
        100.0 * h.tpr_at_0_1pct_fpr,
        h.threshold,
        100.0 * h.recall,
        100.0 * h.false_positive_rate,
    );
    out.push_str(&format!(
        "\nThe committed model is refitted on all {} rows with the same settings; its threshold is {threshold:.3}.\n",
        report.train_rows + report.test_rows
    ));
    match &report.families {
        None => out.push_str("\nNo family classifier (`--no-families`).\n"),
        Some(f) => {
            let h = &f.holdout;
            out.push_str(&format!(
                "\nFamily classifier (labels from {}; {} families, split by sequence and stratified by family: \
                 {} training / {} held-out sequences; blend of the n-gram model (C = {}), the start-up model \
                 over the first {} calls (C = {}) and the trees, weighted {:.1} / {:.1} / {:.1}): \
                 held-out accuracy {:.1} %, macro F1 {:.3}; grouped 5-fold cross-validation accuracy of the \
                 blend {:.1} % on the training part (chance: {:.1} %). \
                 The committed classifier is refitted on all {} labelled sequences.\n\n",
                file_name(&args.family_labels),
                h.classes.len(),
                f.train_samples,
                f.test_samples,
                f.c,
                f.prefix_calls,
                f.prefix_c,
                f.linear_weight,
                f.prefix_weight,
                f.trees_weight,
                100.0 * h.accuracy,
                h.macro_f1,
                100.0 * f.cv_accuracy,
                100.0 / h.classes.len() as f64,
                f.train_samples + f.test_samples,
            ));
            out.push_str(&format!(
                "| true \\ predicted | {} |\n|---|{}\n",
                h.classes.join(" | "),
                "---|".repeat(h.classes.len())
            ));
            for (class, row) in h.classes.iter().zip(&h.confusion) {
                let cells: Vec<String> = row.iter().map(usize::to_string).collect();
                out.push_str(&format!("| {class} | {} |\n", cells.join(" | ")));
            }
        }
    }
    out
}

/// Replaces the text between the document's marker comments with `body`.
fn write_marked_block(path: &Path, body: &str) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let (Some(begin), Some(end)) = (text.find(DOCS_BEGIN), text.find(DOCS_END)) else {
        anyhow::bail!("{} has no `{DOCS_BEGIN}` … `{DOCS_END}` block (or pass --no-docs)", path.display());
    };
    anyhow::ensure!(begin < end, "{}: the end marker comes before the begin marker", path.display());
    let updated = format!("{}{DOCS_BEGIN}\n{body}{}", &text[..begin], &text[end..]);
    std::fs::write(path, updated).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
