//! `sentinel serve`: the malware AI server (the TCP protocol for central
//! servers), the network AI service (`[network]`, on by default) and the one
//! HTTP listener (`sentinel-api`, `[http]`) to which both contribute their
//! routes, readiness checks and metrics.
//!
//! On start it prints `tcp listening on ADDR` and `http listening on ADDR` to
//! stdout (the bound addresses, so port 0 works; tests and the benchmark read
//! them). SIGHUP reloads the models from the data directory; SIGINT and
//! SIGTERM stop accepting and let in-flight requests finish.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use sentinel_api::{ApiBuilder, HttpListener, HttpSettings};
use sentinel_network::{NetworkService, NetworkSettings};
use sentinel_sandbox::{ApiToken, CapeClient, SandboxSettings};
use sentinel_server::{Models, ModelsInService, Server, ServerSettings, VT_KEY_SECRET_FILE, VirusTotalStep};
use sentinel_store::{Store, StoreSettings};
use sentinel_virustotal::{KeyHasher, VirusTotalSettings};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

use crate::config::Config;

#[derive(clap::Args)]
pub struct Args {
    /// Data directory: store, sample vault, `models/static.json`. Default:
    /// the configuration's `data_dir`, else ./sentinel-data.
    #[arg(long, env = "SENTINEL_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Protocol listener (overrides `[server] tcp_listen`, default 0.0.0.0:9500).
    #[arg(long, env = "SENTINEL_TCP_LISTEN")]
    tcp_listen: Option<SocketAddr>,
    /// HTTP listener (overrides `[http] listen`, formerly `[server] http_listen`;
    /// default 127.0.0.1:9501).
    #[arg(long, env = "SENTINEL_HTTP_LISTEN")]
    http_listen: Option<SocketAddr>,
    /// VirusTotal API base URL (overrides `[virustotal] base_url`, default
    /// https://www.virustotal.com).
    #[arg(long, env = "SENTINEL_VT_BASE_URL")]
    vt_base_url: Option<String>,
    /// CAPE v2 web root for dynamic analysis, e.g. http://cape:8000 (overrides
    /// `[sandbox] base_url`; none by default: dynamic analysis then needs the
    /// client's report). The token comes from SENTINEL_CAPE_TOKEN or `[sandbox] token`,
    /// never from the command line, where other users could read it.
    #[arg(long, env = "SENTINEL_CAPE_BASE_URL")]
    cape_base_url: Option<String>,
}

/// The environment variable holding the CAPE API token.
const CAPE_TOKEN_ENV: &str = "SENTINEL_CAPE_TOKEN";

/// `[http] listen` as written, to tell it from its default: the former
/// `[server] http_listen` applies only when `[http] listen` is not set.
#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct WrittenListen {
    listen: Option<SocketAddr>,
}

pub fn run(args: Args, config: &Config) -> anyhow::Result<()> {
    let mut settings: ServerSettings = config.section("server")?;
    if let Some(address) = args.tcp_listen {
        settings.tcp_listen = address;
    }
    let mut http_settings: HttpSettings = config.section("http")?;
    let written: WrittenListen = config.section("http")?;
    if let Some(address) = args.http_listen.or(written.listen).or(settings.http_listen) {
        http_settings.listen = address;
    }
    http_settings.validate()?;
    let store_settings: StoreSettings = config.section("store")?;
    let mut vt_settings: VirusTotalSettings = config.section("virustotal")?;
    if let Some(base_url) = args.vt_base_url {
        vt_settings.base_url = base_url;
    }
    let mut sandbox_settings: SandboxSettings = config.section("sandbox")?;
    if let Some(base_url) = args.cape_base_url {
        sandbox_settings.base_url = base_url;
    }
    if let Ok(token) = std::env::var(CAPE_TOKEN_ENV) {
        sandbox_settings.token = ApiToken::new(token);
    }
    let network_settings: NetworkSettings = config.section("network")?;
    let data_dir = config.resolve_data_dir(args.data_dir);

    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .try_init();

    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start tokio")?;
    runtime.block_on(serve(
        settings,
        http_settings,
        store_settings,
        vt_settings,
        sandbox_settings,
        network_settings,
        data_dir,
    ))
}

async fn serve(
    settings: ServerSettings,
    http_settings: HttpSettings,
    store_settings: StoreSettings,
    vt_settings: VirusTotalSettings,
    sandbox_settings: SandboxSettings,
    network_settings: NetworkSettings,
    data_dir: PathBuf,
) -> anyhow::Result<()> {
    let store = {
        let data_dir = data_dir.clone();
        tokio::task::spawn_blocking(move || Store::open(&data_dir, store_settings)).await?
    }
    .with_context(|| format!("cannot open the store in {}", data_dir.display()))?;
    let store = Arc::new(store);
    let virustotal = match vt_settings.enabled {
        true => {
            let hasher = KeyHasher::load_or_create(&data_dir.join(VT_KEY_SECRET_FILE))?;
            let step = VirusTotalStep::new(&vt_settings, hasher, Arc::clone(&store))?;
            tracing::info!(base_url = %vt_settings.base_url, uploads = vt_settings.upload_enabled, "VirusTotal step enabled");
            Some(step)
        }
        false => None,
    };
    let models = {
        let (data_dir, store) = (data_dir.clone(), Arc::clone(&store));
        tokio::task::spawn_blocking(move || Models::load(&store, &data_dir)).await?
    }
    .context("cannot load the models")?;
    tracing::info!(version = models.static_model.version(), source = %models.static_source, "static model loaded");
    tracing::info!(version = models.behaviour_model.version(), source = %models.behaviour_source, "behaviour model loaded");
    // An empty base URL means no sandbox: dynamic analysis then needs the client's report.
    let sandbox = if sandbox_settings.base_url.trim().is_empty() {
        tracing::info!("no CAPE sandbox configured: dynamic analysis uses the reports clients send");
        None
    } else {
        let client = CapeClient::new(sandbox_settings).context("invalid [sandbox] settings")?;
        let settings = client.settings();
        tracing::info!(base_url = %settings.base_url, timeout = ?settings.analysis_timeout, max_in_flight = settings.max_in_flight, "CAPE sandbox configured");
        Some(client)
    };
    let network = start_network(network_settings, &data_dir, &store)?;
    let models = Arc::new(ModelsInService::new(models));
    let server = Server::bind(settings, data_dir, models, store, virustotal, sandbox).await?;
    let http = HttpListener::bind(http_settings.listen).await?;
    let mut api = server.contribute(ApiBuilder::new(http_settings));
    if let Some(network) = &network {
        sentinel_network::register_metrics(network, api.metrics());
        api = api.service(sentinel_network::router(Arc::clone(network)));
    }
    let api = api.build();

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
    // Announced once the signals are handled: whoever reads the addresses may stop the server
    // at once, and must get a graceful stop. Whoever started the server may have stopped
    // reading its stdout (a closed pipe): that must not stop a server that is already listening.
    let announced = {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "tcp listening on {}", server.tcp_addr())
            .and_then(|()| writeln!(stdout, "http listening on {}", http.local_addr()))
            .and_then(|()| stdout.flush())
    };
    if let Err(error) = announced {
        tracing::warn!(%error, "cannot print the listening addresses on stdout");
    }

    let (stop, _) = watch::channel(false);
    let stopping = |mut receiver: watch::Receiver<bool>| async move {
        let _ = receiver.wait_for(|stopping| *stopping).await;
    };
    let (server_stopping, http_stopping) = (stopping(stop.subscribe()), stopping(stop.subscribe()));
    let signalled = async move {
        tokio::select! {
            _ = interrupts.recv() => {}
            _ = terminations.recv() => {}
        }
        tracing::info!("shutdown requested");
        let _ = stop.send(true);
    };
    // Both listeners stop accepting on the signal and finish the requests in flight.
    let ((), served, listened) =
        tokio::join!(signalled, server.run(server_stopping), http.serve(&api, http_stopping));
    // After the listeners: requests in flight finish with the service they started with. Its
    // shutdown stops the collector and writes what is queued.
    if let Some(network) = network {
        network.shutdown().await;
    }
    served?;
    listened?;
    tracing::info!("stopped");
    Ok(())
}

/// Starts the network AI service unless `[network] enabled = false`.
fn start_network(
    settings: NetworkSettings,
    data_dir: &Path,
    store: &Arc<Store>,
) -> anyhow::Result<Option<Arc<NetworkService>>> {
    if !settings.enabled {
        tracing::info!("network service disabled by [network] enabled = false");
        return Ok(None);
    }
    let service = NetworkService::start(settings, data_dir, Arc::clone(store))
        .context("cannot start the network service")?;
    tracing::info!(database = %data_dir.join("network.db").display(), "network service started");
    Ok(Some(service))
}
