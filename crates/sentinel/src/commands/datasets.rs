//! What the commands working on a store (`sentinel labels`, `vt-results`, `lists`, `models`,
//! `token`) share: the store they open — the data directory's, or the PostgreSQL database of
//! `--store` — and CSV files in and out of it.

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::Context;
use sentinel_store::{ImportReport, Store, StoreError, StoreSettings};

use crate::config::Config;

/// The data directory option of a dataset command.
#[derive(clap::Args)]
pub struct DataDir {
    /// Data directory (as for `sentinel serve`). Default: the configuration's
    /// `data_dir`, else ./sentinel-data. A running server's directory is fine:
    /// the store serialises writers.
    #[arg(long, global = true, env = "SENTINEL_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// The PostgreSQL database of a shared store (as for `sentinel serve --store`; overrides
    /// `[store] url`), e.g. postgres://sentinel@db.example:5432/sentinel. The password goes
    /// in `[store] password_file`, never in the URL.
    #[arg(long = "store", global = true, env = "SENTINEL_STORE_URL", value_name = "URL")]
    store_url: Option<String>,
}

impl DataDir {
    pub fn resolve(self, config: &Config) -> PathBuf {
        config.resolve_data_dir(self.data_dir)
    }

    pub fn open_store(self, config: &Config) -> anyhow::Result<Store> {
        let store_url = self.store_url.clone();
        let data_dir = self.resolve(config);
        open_store(&data_dir, store_url, config)
    }
}

/// Opens the store of `data_dir`, on the PostgreSQL database of `store_url` (`--store`) or of
/// `[store] url` when either is given.
pub fn open_store(data_dir: &Path, store_url: Option<String>, config: &Config) -> anyhow::Result<Store> {
    let mut settings: StoreSettings = config.section("store")?;
    settings.url = store_url.or(settings.url);
    let location = store_location(data_dir, &settings);
    Store::open_configured(data_dir, settings).with_context(|| format!("cannot open the store {location}"))
}

/// Where a store is, for messages: the data directory, or the database (its URL holds no
/// password: the store refuses those).
pub fn store_location(data_dir: &Path, settings: &StoreSettings) -> String {
    match &settings.url {
        Some(url) => format!("on PostgreSQL ({url}, vault in {})", data_dir.display()),
        None => format!("in {}", data_dir.display()),
    }
}

/// Imports the CSV file `path` with `import` and prints what it did.
pub fn import(
    path: &Path,
    import: impl FnOnce(File) -> Result<ImportReport, StoreError>,
) -> anyhow::Result<()> {
    // The CSV reader buffers by itself.
    let input = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let report = import(input).with_context(|| format!("cannot import {}", path.display()))?;
    println!("{report}");
    Ok(())
}

/// Writes the CSV file `path` with `export` and prints how many `rows` it holds.
pub fn export(
    path: &Path,
    rows: &str,
    export: impl FnOnce(File) -> Result<u64, StoreError>,
) -> anyhow::Result<()> {
    let output = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let written = export(output).with_context(|| format!("cannot export to {}", path.display()))?;
    println!("{written} {rows} written to {}", path.display());
    Ok(())
}
