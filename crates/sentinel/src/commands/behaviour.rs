//! `sentinel behaviour REPORT…`: offline behaviour verdicts for CAPE v2 JSON
//! reports or JSON lists of API names, read and scored exactly as the server's
//! dynamic step does, plus what the wire answer has no room for: the features
//! behind each score and, when the model has a family classifier (the
//! committed one has), the most likely malware family with every family's
//! probability. A report that cannot be read gets a row with its error rather
//! than stopping the run.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use sentinel_behaviour::{BehaviourModel, BehaviourVerdict, CapeLimits, parse_behaviour_report};
use serde::Serialize;

use crate::config::Config;

#[derive(clap::Args)]
pub struct Args {
    /// CAPE v2 JSON reports, or JSON lists of API names in call order.
    #[arg(required = true)]
    reports: Vec<PathBuf>,
    /// Model file to use instead of the built-in model.
    #[arg(long)]
    model: Option<PathBuf>,
    /// One JSON object per report (JSON Lines) instead of text.
    #[arg(long)]
    json: bool,
    /// Reports larger than this many bytes are not read.
    #[arg(long, default_value_t = 256 << 20)]
    max_report_size: u64,
}

#[derive(Serialize)]
struct ReportVerdict {
    path: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    /// What was missing or cut from the report.
    notes: Vec<String>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    verdict: Option<BehaviourVerdict>,
}

pub fn run(args: Args, _config: &Config) -> anyhow::Result<()> {
    let model = match &args.model {
        Some(path) => {
            BehaviourModel::load(path).with_context(|| format!("cannot load model {}", path.display()))?
        }
        None => BehaviourModel::builtin().context("the built-in behaviour model is unusable")?,
    };
    let mut out = std::io::stdout().lock();
    if !args.json {
        let families = model.families();
        if families.is_empty() {
            writeln!(out, "model {} (no family classifier)", model.version())?;
        } else {
            writeln!(out, "model {} (families: {})", model.version(), families.join(", "))?;
        }
    }
    for path in &args.reports {
        let row = score_report(&model, path, args.max_report_size);
        if args.json {
            serde_json::to_writer(&mut out, &row)?;
            writeln!(out)?;
        } else {
            write_text(&mut out, &row)?;
        }
    }
    Ok(())
}

fn score_report(model: &BehaviourModel, path: &Path, max_size: u64) -> ReportVerdict {
    let read = read_bounded(path, max_size).and_then(|bytes| {
        let limits = CapeLimits { max_report_bytes: bytes.len(), ..CapeLimits::default() };
        parse_behaviour_report(&bytes, &limits).map_err(|error| error.to_string())
    });
    match read {
        Ok(behaviour) => ReportVerdict {
            path: path.to_owned(),
            error: behaviour.sequence.is_empty().then(|| "the report holds no API call to score".to_owned()),
            notes: behaviour.notes.iter().map(ToString::to_string).collect(),
            verdict: (!behaviour.sequence.is_empty()).then(|| model.score(&behaviour.sequence)),
        },
        Err(error) => {
            ReportVerdict { path: path.to_owned(), error: Some(error), notes: vec![], verdict: None }
        }
    }
}

fn read_bounded(path: &Path, max_size: u64) -> Result<Vec<u8>, String> {
    let file = std::fs::File::open(path).map_err(|error| error.to_string())?;
    let mut bytes = Vec::new();
    file.take(max_size + 1).read_to_end(&mut bytes).map_err(|error| error.to_string())?;
    if bytes.len() as u64 > max_size {
        return Err(format!("larger than {max_size} bytes (--max-report-size)"));
    }
    Ok(bytes)
}

fn write_text(out: &mut impl Write, row: &ReportVerdict) -> std::io::Result<()> {
    let Some(verdict) = &row.verdict else {
        return writeln!(out, "{}: error: {}", row.path.display(), row.error.as_deref().unwrap_or("unknown"));
    };
    let family = match &verdict.family {
        Some(guess) => {
            // The runners-up too: family probabilities on API calls are rarely decisive.
            let mut others: Vec<(&String, &f64)> =
                guess.probabilities.iter().filter(|(name, _)| **name != guess.family).collect();
            others.sort_by(|a, b| b.1.total_cmp(a.1));
            let others: Vec<String> =
                others.iter().take(2).map(|(name, p)| format!("{name} {:.0} %", 100.0 * **p)).collect();
            format!("family {} ({:.0} %; then {})", guess.family, 100.0 * guess.confidence, others.join(", "))
        }
        None => "family -".to_owned(),
    };
    writeln!(
        out,
        "{}: score {:.3} {} — {family}; {} calls, {} distinct APIs, {} known n-grams",
        row.path.display(),
        verdict.score,
        if verdict.malicious { "MALICIOUS" } else { "benign" },
        verdict.calls,
        verdict.distinct_apis,
        verdict.known_ngrams,
    )?;
    for ngram in &verdict.top_ngrams {
        writeln!(out, "    {:+.3}  {}", ngram.contribution, ngram.ngram)?;
    }
    for note in &row.notes {
        writeln!(out, "    note: {note}")?;
    }
    Ok(())
}
