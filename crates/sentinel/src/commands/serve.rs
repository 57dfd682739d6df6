//! `sentinel serve`: the malware AI server — the TCP protocol for central
//! servers and the HTTP listener for health, status and model reloads.
//!
//! On start it prints `tcp listening on ADDR` and `http listening on ADDR` to
//! stdout (the bound addresses, so port 0 works; tests and the benchmark read
//! them). SIGHUP reloads the models from the data directory; SIGINT and
//! SIGTERM stop accepting and let in-flight requests finish.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use sentinel_server::{ModelRegistry, Models, Server, ServerSettings};
use sentinel_store::{Store, StoreSettings};
use tokio::signal::unix::{SignalKind, signal};

use crate::config::Config;

/// Where samples, verdicts and models live when neither the command line, the
/// environment nor the configuration file says otherwise: relative to the
/// working directory, so a first run shows plainly where its data went.
const DEFAULT_DATA_DIR: &str = "sentinel-data";

#[derive(clap::Args)]
pub struct Args {
    /// Data directory: store, sample vault, `models/static.json`. Default:
    /// the configuration's `data_dir`, else ./sentinel-data.
    #[arg(long, env = "SENTINEL_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Protocol listener (overrides `[server] tcp_listen`, default 0.0.0.0:9500).
    #[arg(long, env = "SENTINEL_TCP_LISTEN")]
    tcp_listen: Option<SocketAddr>,
    /// HTTP listener (overrides `[server] http_listen`, default 127.0.0.1:9501).
    #[arg(long, env = "SENTINEL_HTTP_LISTEN")]
    http_listen: Option<SocketAddr>,
}

pub fn run(args: Args, config: &Config) -> anyhow::Result<()> {
    let mut settings: ServerSettings = config.section("server")?;
    if let Some(address) = args.tcp_listen {
        settings.tcp_listen = address;
    }
    if let Some(address) = args.http_listen {
        settings.http_listen = address;
    }
    let store_settings: StoreSettings = config.section("store")?;
    let data_dir =
        args.data_dir.or_else(|| config.data_dir()).unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));

    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .try_init();

    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start tokio")?;
    runtime.block_on(serve(settings, store_settings, data_dir))
}

async fn serve(
    settings: ServerSettings,
    store_settings: StoreSettings,
    data_dir: PathBuf,
) -> anyhow::Result<()> {
    let store = {
        let data_dir = data_dir.clone();
        tokio::task::spawn_blocking(move || Store::open(&data_dir, store_settings)).await?
    }
    .with_context(|| format!("cannot open the store in {}", data_dir.display()))?;
    let models = {
        let data_dir = data_dir.clone();
        tokio::task::spawn_blocking(move || Models::load(&data_dir)).await?
    }
    .context("cannot load the models")?;
    tracing::info!(version = models.static_model.version(), source = %models.static_source, "static model loaded");
    let registry = Arc::new(ModelRegistry::new(models));
    let server = Server::bind(settings, data_dir, registry, Arc::new(store)).await?;

    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "tcp listening on {}", server.tcp_addr())?;
    writeln!(stdout, "http listening on {}", server.http_addr())?;
    stdout.flush()?;
    drop(stdout);

    let reloader = server.reloader();
    let mut hangups = signal(SignalKind::hangup()).context("cannot listen for SIGHUP")?;
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            match reloader.reload().await {
                Ok(version) => tracing::info!(%version, "SIGHUP: models reloaded"),
                Err(error) => tracing::error!(%error, "SIGHUP: reload failed, the models in service stay"),
            }
        }
    });

    let mut interrupts = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    let mut terminations = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let shutdown = async move {
        tokio::select! {
            _ = interrupts.recv() => {}
            _ = terminations.recv() => {}
        }
        tracing::info!("shutdown requested");
    };
    server.run(shutdown).await?;
    tracing::info!("stopped");
    Ok(())
}
