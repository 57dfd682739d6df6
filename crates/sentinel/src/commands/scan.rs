//! `sentinel scan FILE|DIR…`: offline static verdicts for files on disk, with
//! the same model the server uses, for an operator triaging a folder; with
//! `--yara-rules DIR`, the matching rules too, raising the score as the server does.
//!
//! Files are scored in parallel; a file that is not a PE, cannot be read or is
//! too large gets a row with its error rather than stopping the scan, because
//! one odd file in a directory of thousands must not hide the others' verdicts.

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use rayon::prelude::*;
use sentinel_static::StaticModel;
use sentinel_yara::{RuleMatch, YaraRules};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::commands::table::{self, Style};
use crate::config::Config;

/// Directories with more files than this get a progress bar (on a terminal).
const PROGRESS_BAR_MIN_FILES: usize = 64;

#[derive(clap::Args)]
pub struct Args {
    /// Files and directories (scanned recursively) to score.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// One JSON object per file (JSON Lines) instead of a table.
    #[arg(long)]
    json: bool,
    /// Show the features that drove each score.
    #[arg(long)]
    explain: bool,
    /// Model file to use instead of the built-in default model.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Files larger than this many bytes are not read.
    #[arg(long, default_value_t = 256 * 1024 * 1024)]
    max_file_size: u64,
    /// A directory of YARA rules (`*.yar`, `*.yara`) to run over each file: the matches are
    /// shown and raise the score as in the server (docs/yara.md).
    #[arg(long, env = "SENTINEL_YARA_RULES", value_name = "DIR")]
    yara_rules: Option<PathBuf>,
}

/// The longest a YARA scan of one file may take, as the server's default.
const YARA_SCAN_TIMEOUT: Duration = Duration::from_secs(10);
/// A rule whose probability raised the score to at least this makes the file malicious.
const RULE_VERDICT_THRESHOLD: f64 = 0.5;

/// One feature's share of a score, as `--explain` shows it.
#[derive(Serialize)]
struct Contribution {
    feature: String,
    value: f64,
    contribution: f64,
}

#[derive(Serialize)]
struct FileVerdict {
    path: PathBuf,
    sha256: Option<String>,
    score: Option<f64>,
    malicious: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    explanation: Option<Vec<Contribution>>,
    /// The matching rules, with `--yara-rules`.
    #[serde(skip_serializing_if = "Option::is_none")]
    yara_matches: Option<Vec<RuleMatch>>,
    /// Why the rules could not run over this file (the score is then the model's alone).
    #[serde(skip_serializing_if = "Option::is_none")]
    yara_error: Option<String>,
}

/// How many contributions `--explain` shows per file.
const EXPLAIN_TOP: usize = 5;

pub fn run(args: Args, _config: &Config) -> anyhow::Result<()> {
    let model = match &args.model {
        Some(path) => {
            StaticModel::load(path).with_context(|| format!("cannot load model {}", path.display()))?
        }
        None => StaticModel::builtin(),
    };
    let yara = match &args.yara_rules {
        Some(directory) => {
            Some(YaraRules::load(directory, YARA_SCAN_TIMEOUT).context("cannot load the YARA rules")?)
        }
        None => None,
    };
    let files = collect_files(&args.paths)?;
    let progress = (files.len() >= PROGRESS_BAR_MIN_FILES && std::io::stderr().is_terminal())
        .then(|| indicatif::ProgressBar::new(files.len() as u64));
    let verdicts: Vec<FileVerdict> = files
        .par_iter()
        .map(|path| {
            let verdict = scan_file(&model, yara.as_ref(), path, args.max_file_size, args.explain);
            if let Some(bar) = &progress {
                bar.inc(1);
            }
            verdict
        })
        .collect();
    if let Some(bar) = progress {
        bar.finish_and_clear();
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        for verdict in &verdicts {
            serde_json::to_writer(&mut out, verdict)?;
            writeln!(out)?;
        }
    } else {
        print_table(&mut out, &verdicts, model.version())?;
    }
    out.flush()?;
    Ok(())
}

/// Expands directories recursively, in a stable order, skipping symbolic links
/// so a scan cannot loop or escape the tree it was given.
fn collect_files(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for path in paths {
        let metadata = std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
        if metadata.is_dir() {
            for entry in walkdir::WalkDir::new(path).sort_by_file_name() {
                let entry = entry.with_context(|| format!("cannot walk {}", path.display()))?;
                if entry.file_type().is_file() {
                    files.push(entry.into_path());
                }
            }
        } else {
            files.push(path.clone());
        }
    }
    Ok(files)
}

fn scan_file(
    model: &StaticModel,
    yara: Option<&YaraRules>,
    path: &Path,
    max_file_size: u64,
    explain: bool,
) -> FileVerdict {
    let mut verdict = FileVerdict {
        path: path.to_owned(),
        sha256: None,
        score: None,
        malicious: false,
        error: None,
        explanation: None,
        yara_matches: None,
        yara_error: None,
    };
    let bytes = match read_bounded(path, max_file_size) {
        Ok(bytes) => bytes,
        Err(error) => {
            verdict.error = Some(format!("{error:#}"));
            return verdict;
        }
    };
    verdict.sha256 = Some(hex::encode(Sha256::digest(&bytes)));
    match model.analyse(&bytes) {
        Ok(analysis) => {
            verdict.score = Some(analysis.score);
            verdict.malicious = analysis.malicious;
            if explain {
                verdict.explanation = Some(
                    analysis
                        .contributions
                        .into_iter()
                        .take(EXPLAIN_TOP)
                        .map(|c| Contribution {
                            feature: c.feature,
                            value: c.value,
                            contribution: c.contribution,
                        })
                        .collect(),
                );
            }
        }
        Err(error) => verdict.error = Some(error.to_string()),
    }
    if let (Some(rules), Some(score)) = (yara, verdict.score) {
        match rules.scan(&bytes) {
            Ok((matches, _)) => {
                let raised = sentinel_yara::raised_score(score, &matches);
                verdict.score = Some(raised);
                // The model's threshold is set for the model's own false positives; a rule's
                // probability is its author's word: one of at least 0.5 makes the file malicious.
                verdict.malicious |= raised > score && raised >= RULE_VERDICT_THRESHOLD;
                verdict.yara_matches = Some(matches);
            }
            Err(error) => verdict.yara_error = Some(error.to_string()),
        }
    }
    verdict
}

/// Reads at most `limit` bytes, failing on larger files instead of loading them.
fn read_bounded(path: &Path, limit: u64) -> anyhow::Result<Vec<u8>> {
    let file = std::fs::File::open(path).context("cannot open")?;
    let mut bytes = Vec::new();
    file.take(limit + 1).read_to_end(&mut bytes).context("cannot read")?;
    if bytes.len() as u64 > limit {
        anyhow::bail!("larger than the {limit}-byte limit");
    }
    Ok(bytes)
}

/// One row per file; a file's explanation (`--explain`) follows it, one row per
/// feature, its contribution in the score column and `feature = value` in the last.
fn print_table(out: &mut impl Write, verdicts: &[FileVerdict], model_version: &str) -> std::io::Result<()> {
    let mut table = table::new(Style::Columns, &["FILE", "SCORE", "VERDICT", "SHA-256"], &[1]);
    let (mut malicious, mut errors) = (0, 0);
    for verdict in verdicts {
        let path = verdict.path.display().to_string();
        match (verdict.score, &verdict.error) {
            (Some(score), _) => {
                let label = if verdict.malicious { "MALICIOUS" } else { "clean" };
                malicious += usize::from(verdict.malicious);
                let sha = verdict.sha256.as_deref().unwrap_or("");
                table.add_row([path, format!("{score:.4}"), label.to_owned(), sha.to_owned()]);
            }
            (None, error) => {
                errors += 1;
                table.add_row([path, "-".to_owned(), "error".to_owned(), error.clone().unwrap_or_default()]);
            }
        }
        for found in verdict.yara_matches.iter().flatten() {
            let score = found.score().map(|score| format!("{score:.2}")).unwrap_or_default();
            table.add_row([
                String::new(),
                score,
                "YARA".to_owned(),
                format!("{}:{}", found.namespace, found.rule),
            ]);
        }
        if let Some(error) = &verdict.yara_error {
            table.add_row([String::new(), String::new(), "YARA".to_owned(), error.clone()]);
        }
        for c in verdict.explanation.iter().flatten() {
            table.add_row([
                String::new(),
                format!("{:+.4}", c.contribution),
                String::new(),
                format!("{} = {}", c.feature, c.value),
            ]);
        }
    }
    writeln!(out, "{table}")?;
    writeln!(
        out,
        "{} files, {malicious} malicious, {errors} not scored (model {model_version})",
        verdicts.len()
    )
}
