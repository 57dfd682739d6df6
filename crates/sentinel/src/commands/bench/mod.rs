//! `sentinel bench …`: benchmarks that run Sentinel and its peers in one run and
//! report the figures side by side.

mod anomaly;
mod dynamic_model;
mod https;
mod paced_link;
mod scale_out;
mod server;
mod server_quiet;
mod server_stages;
mod server_tls;
mod static_model;
mod store;

use crate::config::Config;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Anomaly detectors against scikit-learn on ADBench-format data sets.
    Anomaly(anomaly::Args),
    /// The TCP protocol server: latency, throughput, memory.
    Server(server::Args),
    /// The HTTP listener over HTTPS against plain HTTP: latency, throughput, handshake cost.
    Https(https::Args),
    /// The static classifier against scikit-learn's HistGradientBoostingClassifier.
    Static(static_model::Args),
    /// The behaviour classifier against scikit-learn's TF-IDF + logistic regression.
    Dynamic(dynamic_model::Args),
    /// Encryption at rest: sample submission latency and network ingest throughput, plain
    /// store against encrypted store.
    Store(store::Args),
    /// The scale-out mode: ingest through NATS JetStream and PostgreSQL with one and two
    /// workers against the embedded mode, VirusTotal cache hits on PostgreSQL against SQLite.
    ScaleOut(scale_out::Args),
}

impl Command {
    pub fn run(self, config: &Config) -> anyhow::Result<()> {
        match self {
            Command::Anomaly(args) => anomaly::run(args, config),
            Command::Server(args) => server::run(args, config),
            Command::Https(args) => https::run(args, config),
            Command::Static(args) => static_model::run(args, config),
            Command::Dynamic(args) => dynamic_model::run(args, config),
            Command::Store(args) => store::run(args, config),
            Command::ScaleOut(args) => scale_out::run(args, config),
        }
    }
}
