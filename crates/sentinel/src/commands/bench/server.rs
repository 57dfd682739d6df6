//! `sentinel bench server`.

use crate::config::Config;

#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args, _config: &Config) -> anyhow::Result<()> {
    anyhow::bail!("`sentinel bench server` is not built yet")
}
