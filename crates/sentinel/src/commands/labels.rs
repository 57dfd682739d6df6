//! `sentinel labels`: the labelled-samples dataset of a data directory (SPEC
//! §1.3 (1)), the data the models are retrained on. The server fills it by
//! itself from VirusTotal reports; here an analyst sets a label by hand (which
//! no automatic label replaces) or exchanges the dataset as CSV in the
//! original `file_path,sha256,y` format (`docs/storage.md`). Works on the data
//! directory of a running server too: the store serialises the writers.

use std::path::PathBuf;

use sentinel_store::LabelSource;

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
    /// Label one sample by hand: 0 benign, 1 malicious. A manual label is never
    /// replaced by an automatic one (VirusTotal, import).
    Set {
        /// The sample's SHA-256 (64 hex digits).
        sha256: String,
        /// 0 benign, 1 malicious.
        #[arg(value_parser = clap::value_parser!(u8).range(0..=1))]
        y: u8,
        /// Why (kept with the label, at most 4096 bytes).
        #[arg(long)]
        note: Option<String>,
    },
    /// Import labels from CSV (`file_path,sha256,y`); existing files named by
    /// `file_path` are checked against their hash and stored in the vault.
    Import { file: PathBuf },
    /// Export every label as CSV (`file_path,sha256,y`; `file_path` is the
    /// sample's defanged vault file, empty when the vault holds none).
    Export { file: PathBuf },
}

pub fn run(args: Args, config: &Config) -> anyhow::Result<()> {
    let store = args.data_dir.open_store(config)?;
    match args.command {
        Command::Set { sha256, y, note } => {
            // A manual label is always written: it takes precedence over any other.
            store.set_label(&sha256, y, LabelSource::Manual, note.as_deref())?;
            println!("{} labelled {y} (manual)", sha256.to_ascii_lowercase());
            Ok(())
        }
        Command::Import { file } => datasets::import(&file, |input| store.import_labels_csv(input)),
        Command::Export { file } => {
            datasets::export(&file, "labels", |output| store.export_labels_csv(output))
        }
    }
}
