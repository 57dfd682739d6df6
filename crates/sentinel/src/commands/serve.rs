//! `sentinel serve`: the malware AI server (the TCP protocol for central
//! servers), the network AI service (`[network]`, on by default) and the one
//! HTTP listener (`sentinel-api`, `[http]`) to which both contribute their
//! routes, readiness checks and metrics.
//!
//! On start it prints `tcp listening on ADDR` (the plain protocol port, unless
//! it is off), `tcp tls listening on ADDR` (the TLS protocol port, when asked)
//! and `http listening on ADDR`, in that order, to stdout (the bound addresses,
//! so port 0 works; tests and the benchmark read them). SIGHUP reloads the
//! YARA rules, the models from the data directory and the TLS certificates (HTTPS and the
//! protocol's TLS port) from their files;
//! SIGINT and SIGTERM stop accepting and let in-flight requests finish.
//!
//! Every HTTP request, protocol request and refused connection leaves a line in the access log
//! (`[access_log]`, by default `access.log` in the data directory), flushed at a clean stop.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sentinel_alerts::AlertSettings;
use sentinel_api::{ApiBuilder, HttpListener, HttpSettings};
use sentinel_auth::AuthSettings;
use sentinel_broker::{Broker, BrokerSettings};
use sentinel_network::{NetworkService, NetworkSettings, ScaleOut};
use sentinel_privacy::{PrivacySettings, Pseudonymiser};
use sentinel_sandbox::{ApiToken, CapeClient, SandboxSettings};
use sentinel_server::{
    ClientRecords, Models, ModelsInService, Role, Server, ServerSettings, VT_KEY_SECRET_FILE, VirusTotalStep,
};
use sentinel_store::{Store, StoreSettings};
use sentinel_transport::{AccessLog, AccessLogSettings, TlsOptions, TlsServer};
use sentinel_virustotal::{KeyHasher, VirusTotalSettings};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

use crate::commands::datasets::store_location;
use crate::commands::{serve_alerts, serve_auth};
use crate::config::Config;

#[derive(clap::Args)]
pub struct Args {
    /// Data directory: store, sample vault, `models/static.json`. Default:
    /// the configuration's `data_dir`, else ./sentinel-data.
    #[arg(long, env = "SENTINEL_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Keep the tables in this PostgreSQL database instead of the data directory's SQLite
    /// (overrides `[store] url`), e.g. postgres://sentinel@db.example:5432/sentinel: replicas
    /// on one database share samples, reports, models, tokens and VirusTotal's economy
    /// (docs/scale-out.md). The password goes in `[store] password_file`, never in the URL.
    #[arg(long = "store", env = "SENTINEL_STORE_URL", value_name = "URL")]
    store_url: Option<String>,
    /// Plain protocol listener (overrides `[server] tcp_listen`, default
    /// 127.0.0.1:9500; another address needs `[server] allowed_clients`).
    #[arg(long, env = "SENTINEL_TCP_LISTEN")]
    tcp_listen: Option<SocketAddr>,
    /// TLS 1.3 protocol listener, the same frames inside TLS (overrides `[server] tls_listen`).
    #[arg(long, env = "SENTINEL_TCP_TLS_LISTEN")]
    tcp_tls_listen: Option<SocketAddr>,
    /// Certificate chain (PEM) of the TLS protocol listener (overrides `[server] tls_cert`).
    #[arg(long, value_name = "FILE")]
    tcp_tls_cert: Option<PathBuf>,
    /// Private key (PEM) of the TLS protocol listener (overrides `[server] tls_key`).
    #[arg(long, value_name = "FILE")]
    tcp_tls_key: Option<PathBuf>,
    /// Require client certificates signed by this CA (PEM) on the TLS protocol listener
    /// (mutual TLS; overrides `[server] client_ca`). The certificate's subject names the client.
    #[arg(long, value_name = "FILE")]
    tcp_client_ca: Option<PathBuf>,
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
    /// Serve HTTPS (TLS 1.3 only) with this certificate chain, PEM, leaf first; needs
    /// --tls-key. Overrides `[http] tls_cert`. SIGHUP rereads both files.
    #[arg(long, env = "SENTINEL_TLS_CERT", value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert, PEM. Overrides `[http] tls_key`.
    #[arg(long, env = "SENTINEL_TLS_KEY", value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// A directory of YARA rules (`*.yar`, `*.yara`) run with every static analysis; their
    /// matches can raise the verdict (docs/yara.md). Overrides `[server] yara_rules`. SIGHUP and
    /// `POST /admin/reload` recompile them.
    #[arg(long, env = "SENTINEL_YARA_RULES", value_name = "DIR")]
    yara_rules: Option<PathBuf>,
    /// Scale out through this NATS JetStream server, e.g. nats://nats:4222: agents' snapshots
    /// go to scoring workers on any replica sharing the store, results come back to every
    /// front end (`[broker]` holds the other settings, `[server] roles` what this replica
    /// runs). Without it, one replica does everything.
    #[arg(long, env = "SENTINEL_BROKER_URL", value_name = "URL")]
    broker: Option<String>,
}

/// How often a replica on a shared store looks for models promoted through another one.
const REGISTRY_POLL: Duration = Duration::from_secs(5);

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
    settings.tls_listen = args.tcp_tls_listen.or(settings.tls_listen);
    settings.tls_cert = args.tcp_tls_cert.or(settings.tls_cert);
    settings.tls_key = args.tcp_tls_key.or(settings.tls_key);
    settings.client_ca = args.tcp_client_ca.or(settings.client_ca);
    settings.yara_rules = args.yara_rules.or(settings.yara_rules);
    // Said before anything is opened: a listener exposed without a way to tell clients apart.
    settings.validate().context("invalid [server] settings")?;
    let mut http_settings: HttpSettings = config.section("http")?;
    let written: WrittenListen = config.section("http")?;
    if let Some(address) = args.http_listen.or(written.listen).or(settings.http_listen) {
        http_settings.listen = address;
    }
    if let (Some(certificate), Some(key)) = (args.tls_cert, args.tls_key) {
        (http_settings.tls_cert, http_settings.tls_key) = (Some(certificate), Some(key));
    }
    http_settings.validate()?;
    let mut store_settings: StoreSettings = config.section("store")?;
    store_settings.url = args.store_url.or(store_settings.url);
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
    let mut network_settings: NetworkSettings = config.section("network")?;
    // This host's connections are watched only by replicas with the collector role.
    network_settings.collect &= settings.roles.contains(&Role::Collector);
    let broker = match args.broker {
        Some(url) => {
            let mut broker: BrokerSettings = config.section("broker")?;
            broker.url = url;
            broker.validate().context("invalid [broker] settings")?;
            // Workers store what they score where every replica reads it, and partitions are
            // shared out through leases in it: a data directory's SQLite cannot be that.
            if store_settings.url.is_none() {
                anyhow::bail!(
                    "--broker needs a shared store: give --store postgres://… too (docs/scale-out.md)"
                );
            }
            Some(broker)
        }
        None => None,
    };
    let data_dir = config.resolve_data_dir(args.data_dir);
    let auth_settings: AuthSettings = config.section("auth")?;
    let access_log_settings: AccessLogSettings = config.section("access_log")?;
    access_log_settings.validate()?;
    let privacy_settings: PrivacySettings = config.section("privacy")?;
    let alert_settings: AlertSettings = config.section("alerts")?;
    alert_settings.validate()?;
    let listeners = [
        Some(("HTTP", http_settings.listen)),
        settings.tcp_plain.then_some(("protocol", settings.tcp_listen)),
        settings.tls_listen.map(|address| ("protocol TLS", address)),
    ];
    serve_auth::check_listeners(&auth_settings, &listeners.into_iter().flatten().collect::<Vec<_>>())?;

    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .try_init();

    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start tokio")?;
    let sections = Sections {
        server: settings,
        http: http_settings,
        store: store_settings,
        virustotal: vt_settings,
        sandbox: sandbox_settings,
        network: network_settings,
        auth: auth_settings,
        access_log: access_log_settings,
        privacy: privacy_settings,
        alerts: alert_settings,
        broker,
    };
    runtime.block_on(serve(sections, data_dir))
}

/// Every section of the configuration `serve` reads, checked before the runtime starts.
struct Sections {
    server: ServerSettings,
    http: HttpSettings,
    store: StoreSettings,
    virustotal: VirusTotalSettings,
    sandbox: SandboxSettings,
    network: NetworkSettings,
    auth: AuthSettings,
    access_log: AccessLogSettings,
    privacy: PrivacySettings,
    alerts: AlertSettings,
    /// The scale-out mode's broker, when `--broker` is given.
    broker: Option<BrokerSettings>,
}

async fn serve(sections: Sections, data_dir: PathBuf) -> anyhow::Result<()> {
    let Sections {
        server: settings,
        http: http_settings,
        store: store_settings,
        virustotal: vt_settings,
        sandbox: sandbox_settings,
        network: network_settings,
        auth: auth_settings,
        access_log: access_log_settings,
        privacy: privacy_settings,
        alerts: alert_settings,
        broker: broker_settings,
    } = sections;
    let location = store_location(&data_dir, &store_settings);
    let (store, journaling) = {
        let data_dir = data_dir.clone();
        tokio::task::spawn_blocking(move || {
            let store = Store::open_configured(&data_dir, store_settings)?;
            // Requests' samples are made durable with one data flush (docs/storage.md).
            let journaling = store.start_sample_journal()?;
            anyhow::Ok((store, journaling))
        })
        .await?
    }
    .with_context(|| format!("cannot open the store {location}"))?;
    tracing::info!(store = %location, sample_journal = journaling, "store opened");
    let store = Arc::new(store);
    // After the store, which creates the data directory (0700) where the key file goes.
    let addresses = {
        let data_dir = data_dir.clone();
        tokio::task::spawn_blocking(move || Pseudonymiser::open(&privacy_settings, &data_dir)).await?
    }
    .context("cannot set up the pseudonymisation of addresses ([privacy])")?;
    tracing::info!(ip_storage = addresses.storage().as_str(), "addresses are stored as [privacy] says");
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
    let roles = settings.roles.clone();
    let scale_out = match &broker_settings {
        Some(broker_settings) => Some(scale_out(broker_settings, &roles).await?),
        None => {
            if !(roles.contains(&Role::Frontend) && roles.contains(&Role::Worker)) {
                tracing::warn!(
                    "[server] roles without --broker: this replica is its own front end and worker"
                );
            }
            None
        }
    };
    let frontend = scale_out.as_ref().is_none_or(|scale_out| scale_out.frontend);
    let network = start_network(network_settings, &data_dir, &store, addresses.clone(), scale_out)?;
    let alert_store = Arc::clone(&store);
    let access = serve_auth::access(&auth_settings, &store, &data_dir)?;
    // Client addresses in the access log (and the audit table's, through it) as `[privacy]` says.
    let (access_log, access_log_writer) =
        AccessLog::start(&access_log_settings, &data_dir).context("cannot start the access log")?;
    let access_log = {
        let addresses = addresses.clone();
        access_log.with_address_rendering(Arc::new(move |address| addresses.display(address)))
    };
    let models = Arc::new(ModelsInService::new(models));
    let sandbox_configured = sandbox.is_some();
    let shared_store = store.is_shared().then(|| Arc::clone(&store));
    let server = Server::bind(
        settings,
        data_dir,
        models,
        store,
        virustotal,
        sandbox,
        ClientRecords { access_log: access_log.clone(), addresses: addresses.clone() },
    )
    .await?;
    let watched = serve_alerts::Watched {
        store: &alert_store,
        network: network.as_ref(),
        outcomes: server.outcomes(),
        sandbox_configured,
    };
    let alerts = serve_alerts::start(alert_settings, watched).await?;
    let tls = https(&http_settings)?;
    let mut http = HttpListener::bind(http_settings.listen)
        .await?
        .with_limits(&http_settings)
        .with_access_log(access_log.clone());
    if let Some(tls) = &tls {
        http = http.with_tls(tls.clone());
    }
    let mut api = server.contribute(ApiBuilder::new(http_settings, access).access_log(access_log.clone()));
    http.register_metrics(api.metrics());
    access_log.register_metrics(api.metrics());
    if let Some(network) = &network {
        sentinel_network::register_metrics(network, api.metrics());
        // A worker-only replica accepts no snapshots and relays no results.
        if frontend {
            api = api.service(sentinel_network::router(Arc::clone(network)));
        }
    }
    if let Some(watch) = &alerts {
        watch.alerts.register_metrics(api.metrics());
        api = api.service(sentinel_alerts::router(watch.alerts.clone()));
    }
    let api = api.build();

    let reloader = server.reloader();
    if let Some(store) = shared_store {
        tokio::spawn(sentinel_server::follow_registry(reloader.clone(), store, REGISTRY_POLL));
    }
    let protocol_tls = server.tls();
    let mut hangups = signal(SignalKind::hangup()).context("cannot listen for SIGHUP")?;
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            match reloader.reload().await {
                Ok(version) => tracing::info!(%version, "SIGHUP: models reloaded"),
                Err(error) => tracing::error!(%error, "SIGHUP: reload failed, the models in service stay"),
            }
            match tls.as_ref().map(TlsServer::reload) {
                Some(Ok(())) => tracing::info!("SIGHUP: HTTPS certificate reloaded"),
                Some(Err(error)) => {
                    tracing::error!(%error, "SIGHUP: HTTPS certificate not reloaded, the one in service stays")
                }
                None => {}
            }
            match protocol_tls.as_ref().map(|tls| tls.reload()) {
                Some(Ok(())) => tracing::info!("SIGHUP: TLS certificate of the protocol listener reloaded"),
                Some(Err(error)) => {
                    tracing::error!(%error, "SIGHUP: protocol TLS certificate not reloaded, the one in service stays")
                }
                None => {}
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
        let plain = server.tcp_addr().map(|address| format!("tcp listening on {address}\n"));
        let tls = server.tls_addr().map(|address| format!("tcp tls listening on {address}\n"));
        write!(stdout, "{}{}", plain.unwrap_or_default(), tls.unwrap_or_default())
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
    if let Some(watch) = alerts {
        watch.shutdown();
    }
    // Every request has been answered: what the access log accepted is written out.
    tokio::task::spawn_blocking(move || access_log_writer.finish()).await?;
    served?;
    listened?;
    tracing::info!("stopped");
    Ok(())
}

/// The HTTPS configuration when `[http]` names a certificate and its key.
fn https(settings: &HttpSettings) -> anyhow::Result<Option<TlsServer>> {
    let (Some(certificate_file), Some(key_file)) = (&settings.tls_cert, &settings.tls_key) else {
        return Ok(None);
    };
    let options = TlsOptions {
        certificate_file: certificate_file.clone(),
        key_file: key_file.clone(),
        client_ca_file: None,
        alpn_protocols: vec![b"http/1.1".to_vec()],
    };
    Ok(Some(TlsServer::new(&options).context("cannot serve HTTPS")?))
}

/// Connects to the broker of the scale-out mode, and says what this replica runs.
async fn scale_out(settings: &BrokerSettings, roles: &[Role]) -> anyhow::Result<ScaleOut> {
    let broker = Broker::connect(settings).await.context("cannot connect to the broker (--broker)")?;
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .unwrap_or_default();
    // Unique among running replicas: the owner of this process's leases.
    let replica = format!("{}-{}", if host.is_empty() { "sentinel" } else { &host }, std::process::id());
    let scale_out = ScaleOut {
        broker,
        frontend: roles.contains(&Role::Frontend),
        worker: roles.contains(&Role::Worker),
        replica,
    };
    tracing::info!(
        replica = %scale_out.replica,
        frontend = scale_out.frontend,
        worker = scale_out.worker,
        partitions = settings.partitions,
        "scale-out mode: agents' snapshots go through the broker"
    );
    Ok(scale_out)
}

/// Starts the network AI service unless `[network] enabled = false`.
fn start_network(
    settings: NetworkSettings,
    data_dir: &Path,
    store: &Arc<Store>,
    addresses: Pseudonymiser,
    scale_out: Option<ScaleOut>,
) -> anyhow::Result<Option<Arc<NetworkService>>> {
    if !settings.enabled {
        tracing::info!("network service disabled by [network] enabled = false");
        return Ok(None);
    }
    let service = NetworkService::start_scaled(settings, data_dir, Arc::clone(store), addresses, scale_out)
        .context("cannot start the network service")?;
    tracing::info!(database = %data_dir.join("network.db").display(), "network service started");
    Ok(Some(service))
}
