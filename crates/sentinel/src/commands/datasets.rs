//! What the dataset commands (`sentinel labels`, `sentinel vt-results`) share:
//! the data directory they work on, and CSV files in and out of its store.

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::Context;
use sentinel_store::{ImportReport, Store, StoreError};

use crate::config::Config;

/// The data directory option of a dataset command.
#[derive(clap::Args)]
pub struct DataDir {
    /// Data directory (as for `sentinel serve`). Default: the configuration's
    /// `data_dir`, else ./sentinel-data. A running server's directory is fine:
    /// the store serialises writers.
    #[arg(long, global = true, env = "SENTINEL_DATA_DIR")]
    data_dir: Option<PathBuf>,
}

impl DataDir {
    pub fn resolve(self, config: &Config) -> PathBuf {
        config.resolve_data_dir(self.data_dir)
    }

    pub fn open_store(self, config: &Config) -> anyhow::Result<Store> {
        let data_dir = self.resolve(config);
        Store::open(&data_dir, config.section("store")?)
            .with_context(|| format!("cannot open the store in {}", data_dir.display()))
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
