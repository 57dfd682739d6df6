//! `sentinel agent --server URL`: runs the network collectors on this host and posts a snapshot
//! every collection interval to the network AI service's `/api/v1/ingest` (the JSON format of
//! `docs/collectors.md`, the one the Windows endpoint application posts). Settings come from the
//! `[network]` table: `collector` (interval, host id) and `agent` (queue, timeout, authorization);
//! `--token` / `SENTINEL_TOKEN` is the API token sent as bearer.
//! SIGINT and SIGTERM stop it.

use anyhow::Context;
use sentinel_network::NetworkSettings;
use tokio::signal::unix::{SignalKind, signal};

use crate::config::Config;

#[derive(clap::Args)]
pub struct Args {
    /// Base URL of the server's HTTP API, e.g. http://10.0.0.1:9501 or https://sentinel.example.
    #[arg(long, env = "SENTINEL_AGENT_SERVER")]
    server: String,
    /// PEM file of the CA that signed an https server's certificate, when it is not one the
    /// system trusts (a private CA); trusted in addition to the system's roots.
    #[arg(long, env = "SENTINEL_AGENT_CA_FILE")]
    ca_file: Option<std::path::PathBuf>,
    /// API token (scope `network:ingest`) sent as `Authorization: Bearer TOKEN` (overrides
    /// `[network.agent] authorization`). Prefer the environment variable to the command line,
    /// where other local users can read it.
    #[arg(long, env = "SENTINEL_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Milliseconds between two snapshots (overrides `[network.collector] interval`).
    #[arg(long)]
    interval_ms: Option<u64>,
    /// Agent id written in every record (overrides `[network.collector] host`; default: the
    /// kernel's host name).
    #[arg(long)]
    host: Option<String>,
}

pub fn run(args: Args, config: &Config) -> anyhow::Result<()> {
    let mut settings: NetworkSettings = config.section("network")?;
    if let Some(interval_ms) = args.interval_ms {
        settings.collector.interval = std::time::Duration::from_millis(interval_ms);
    }
    if args.host.is_some() {
        settings.collector.host = args.host;
    }
    if let Some(token) = args.token {
        settings.agent.authorization = Some(format!("Bearer {}", token.trim()));
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start tokio")?;
    runtime.block_on(async {
        let mut terminate = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
        let stop = async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate.recv() => {}
            }
        };
        tracing::info!(server = %args.server, "agent started");
        let ca_file = args.ca_file.as_deref();
        sentinel_network::agent::run(&args.server, ca_file, &settings.collector, &settings.agent, stop)
            .await
            .context("the agent stopped")
    })
}
