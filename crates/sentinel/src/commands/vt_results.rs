//! `sentinel vt-results`: the VirusTotal results dataset of a data directory
//! (SPEC §1.3 (2)) as CSV, to seed a new server with what another already paid
//! for, or to take the reports elsewhere. The columns are those of
//! `docs/storage.md`; an imported report replaces a stored one only if it was
//! fetched later, answers clients without a call while it is fresh, and labels
//! its sample by the `[virustotal]` label rule, as a report fetched live does.
//!
//! Also `key-id`: the id a client's API key has on this server, which is what
//! the `[virustotal] key_tiers` setting names, since keys are never written down.

use std::io::BufRead;
use std::path::PathBuf;

use anyhow::Context;
use sentinel_server::{VT_KEY_SECRET_FILE, label_from_report};
use sentinel_virustotal::{ApiKey, KeyHasher, Verdict, VirusTotalSettings};

use crate::commands::datasets::{self, DataDir};
use crate::config::Config;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    data_dir: DataDir,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Import reports from CSV
    /// (`sha256,last_analysis_date,fetched_at,malicious,suspicious,undetected,harmless,report_json`).
    Import { file: PathBuf },
    /// Export every stored report as CSV, in the same form.
    Export { file: PathBuf },
    /// Print the key id of the API key read from standard input (not from the
    /// command line, where other users could read it), for `key_tiers`.
    KeyId,
}

pub fn run(args: Args, config: &Config) -> anyhow::Result<()> {
    match args.command {
        Command::Import { file } => {
            let rule = config.section::<VirusTotalSettings>("virustotal")?.verdict;
            rule.check().context("[virustotal] verdict")?;
            let store = args.data_dir.open_store(config)?;
            let (mut labelled, mut foreign) = (0u64, 0u64);
            datasets::import(&file, |input| {
                store.import_vt_reports_csv(input, |row| {
                    // The dataset holds Sentinel's compact report (docs/storage.md); a row whose
                    // report is in another form, or about another file, is kept but labels nothing.
                    match serde_json::from_str::<Verdict>(&row.report_json) {
                        Ok(verdict) if verdict.sha256.to_string() == row.sha256 => {
                            labelled += u64::from(label_from_report(&store, &verdict, &rule)?);
                        }
                        _ => foreign += 1,
                    }
                    Ok(())
                })
            })?;
            println!("{labelled} samples labelled by the [virustotal] label rule");
            if foreign > 0 {
                println!(
                    "{foreign} reports not in Sentinel's form (docs/storage.md): stored, not used for labels"
                );
            }
            Ok(())
        }
        Command::Export { file } => {
            let store = args.data_dir.open_store(config)?;
            datasets::export(&file, "reports", |output| store.export_vt_reports_csv(output))
        }
        Command::KeyId => key_id(args.data_dir, config),
    }
}

/// Reads a key from standard input and prints its id under the data
/// directory's key-hash secret (created if the server never ran there).
fn key_id(data_dir: DataDir, config: &Config) -> anyhow::Result<()> {
    let data_dir = data_dir.resolve(config);
    std::fs::create_dir_all(&data_dir).with_context(|| format!("cannot create {}", data_dir.display()))?;
    let hasher = KeyHasher::load_or_create(&data_dir.join(VT_KEY_SECRET_FILE))?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).context("cannot read the key from standard input")?;
    let key = ApiKey::new(line.trim()).context("the key read from standard input")?;
    println!("{}", hasher.key_id(&key));
    Ok(())
}
