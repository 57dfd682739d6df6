//! `sentinel client`.

use crate::config::Config;

#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args, _config: &Config) -> anyhow::Result<()> {
    anyhow::bail!("`sentinel client` is not built yet")
}
