//! `sentinel bench …`: benchmarks that run Sentinel and its peers in one run and
//! report the figures side by side.

mod anomaly;
mod dynamic_model;
mod server;
mod static_model;

use crate::config::Config;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Anomaly detectors against scikit-learn on ADBench-format data sets.
    Anomaly(anomaly::Args),
    /// The TCP protocol server: latency, throughput, memory.
    Server(server::Args),
    /// The static classifier against scikit-learn's HistGradientBoostingClassifier.
    Static(static_model::Args),
    /// The behaviour classifier against scikit-learn's TF-IDF + logistic regression.
    Dynamic(dynamic_model::Args),
}

impl Command {
    pub fn run(self, config: &Config) -> anyhow::Result<()> {
        match self {
            Command::Anomaly(args) => anomaly::run(args, config),
            Command::Server(args) => server::run(args, config),
            Command::Static(args) => static_model::run(args, config),
            Command::Dynamic(args) => dynamic_model::run(args, config),
        }
    }
}
