//! `sentinel train …`: one module per model family.

mod dynamic_model;
mod promotion;
mod static_model;

use crate::config::Config;

#[derive(clap::Subcommand)]
pub enum Command {
    /// The static (PE) classifier.
    Static(static_model::Args),
    /// The behaviour (API-call sequence) classifier.
    Dynamic(dynamic_model::Args),
}

impl Command {
    pub fn run(self, config: &Config) -> anyhow::Result<()> {
        match self {
            Command::Static(args) => static_model::run(args, config),
            Command::Dynamic(args) => dynamic_model::run(args, config),
        }
    }
}
