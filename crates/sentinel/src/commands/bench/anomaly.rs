//! `sentinel bench anomaly`.

use crate::config::Config;

#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args, _config: &Config) -> anyhow::Result<()> {
    anyhow::bail!("`sentinel bench anomaly` is not built yet")
}
