//! `sentinel store`: the store's encryption at rest (docs/security.md, "Encryption at rest").
//! `keygen` writes a new random key to a file (mode 0600) and shows only its fingerprint unless
//! `--print` asks for the key; `encrypt` turns a plain store into an encrypted one; `rekey` moves
//! an encrypted store to a new key. Both refuse while a server (or any command) has the store
//! open, and an interrupted run is finished by running the same command again.

use std::path::PathBuf;

use anyhow::Context;
use sentinel_store::{STORE_KEY_ENV, StoreKey, StoreSettings, encrypt_store, rekey_store};

use crate::commands::datasets::DataDir;
use crate::config::Config;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Write a new random store key (64 hexadecimal characters) to a new file, mode 0600.
    Keygen {
        /// The key file to create (an existing file is never overwritten).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Also print the key on stdout (for a secret manager); by default only its
        /// fingerprint is shown.
        #[arg(long)]
        print: bool,
    },
    /// Encrypt a plain store (both databases and every vault file) under the key in FILE.
    /// The server must be stopped; then set `[store] key_file` (or SENTINEL_STORE_KEY).
    Encrypt {
        #[command(flatten)]
        data_dir: DataDir,
        /// The store key file (from `sentinel store keygen`; mode 0600).
        #[arg(long, value_name = "FILE")]
        key_file: PathBuf,
    },
    /// Move an encrypted store to a new key: the current key comes from SENTINEL_STORE_KEY or
    /// `[store] key_file`, the new one from --new-key-file. The server must be stopped.
    Rekey {
        #[command(flatten)]
        data_dir: DataDir,
        /// The new store key file (from `sentinel store keygen`; mode 0600).
        #[arg(long, value_name = "FILE")]
        new_key_file: PathBuf,
    },
}

impl Args {
    pub fn run(self, config: &Config) -> anyhow::Result<()> {
        match self.command {
            Command::Keygen { out, print } => {
                let key = StoreKey::generate()?;
                key.write_new_file(&out)
                    .with_context(|| format!("cannot write the key file {}", out.display()))?;
                if print {
                    println!("{}", key.to_hex().as_str());
                }
                eprintln!("wrote a new store key to {} (fingerprint {})", out.display(), key.fingerprint());
            }
            Command::Encrypt { data_dir, key_file } => {
                let settings: StoreSettings = config.section("store")?;
                let data_dir = data_dir.resolve(config);
                let key = StoreKey::read_file(&key_file).context("cannot read the store key")?;
                let report = encrypt_store(&data_dir, &settings, &key)
                    .with_context(|| format!("cannot encrypt the store in {}", data_dir.display()))?;
                println!("{report}");
                println!(
                    "the store in {} is encrypted under key {}: set [store] key_file = {:?} (or {STORE_KEY_ENV}) before starting it",
                    data_dir.display(),
                    key.fingerprint(),
                    key_file.display().to_string()
                );
            }
            Command::Rekey { data_dir, new_key_file } => {
                let settings: StoreSettings = config.section("store")?;
                let data_dir = data_dir.resolve(config);
                let current = StoreKey::configured(&settings)
                    .context("cannot read the current store key")?
                    .with_context(|| {
                    format!(
                        "no current store key: set {STORE_KEY_ENV} or [store] key_file (a plain store is \
                             encrypted with `sentinel store encrypt`)"
                    )
                })?;
                let new = StoreKey::read_file(&new_key_file).context("cannot read the new store key")?;
                let report = rekey_store(&data_dir, &settings, &current, &new)
                    .with_context(|| format!("cannot rekey the store in {}", data_dir.display()))?;
                println!("{report}");
                println!(
                    "the store in {} is encrypted under key {}: point [store] key_file (or {STORE_KEY_ENV}) at {} before starting it",
                    data_dir.display(),
                    new.fingerprint(),
                    new_key_file.display()
                );
            }
        }
        Ok(())
    }
}
