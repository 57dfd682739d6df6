//! The server: binds the protocol and HTTP listeners, accepts connections up
//! to `max_connections`, and shuts down gracefully.
//!
//! Binding is separate from running so a caller learns the bound addresses
//! (port 0 picks a free port) before traffic starts. On shutdown the server
//! stops accepting, lets every connection finish the request it is handling
//! (up to `shutdown_timeout`), then stops.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sentinel_sandbox::CapeClient;
use sentinel_store::Store;
use tokio::net::TcpListener;
use tokio::sync::{Mutex, Semaphore, watch};
use tokio::task::JoinSet;

use crate::analysis::{Analyser, VirusTotalStep};
use crate::models::{ModelLoadError, Models, ModelsInService};
use crate::settings::{ServerSettings, SettingsError};
use crate::status::{ModelReport, Status, StatusReport};
use crate::workers::AnalysisWorkers;
use crate::{connection, http};

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("invalid [server] settings: {0}")]
    Settings(#[from] SettingsError),
    #[error("cannot listen on {address}: {source}")]
    Bind { address: SocketAddr, source: std::io::Error },
    #[error("the HTTP listener failed: {0}")]
    Http(std::io::Error),
}

/// Why a model reload failed; the models in service stay in service.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Model(#[from] ModelLoadError),
    #[error("the reload job failed unexpectedly")]
    Panicked,
}

/// State shared by the listeners and every connection.
#[derive(Debug)]
pub(crate) struct Shared {
    pub settings: ServerSettings,
    pub analyser: Analyser,
    pub status: Status,
    pub data_dir: PathBuf,
    /// Reloads run one at a time, so two reloads cannot finish out of order.
    reload_lock: Mutex<()>,
}

impl Shared {
    /// Loads the models from the data directory and puts them in service.
    pub async fn reload(&self) -> Result<Arc<Models>, ReloadError> {
        let _one_at_a_time = self.reload_lock.lock().await;
        let data_dir = self.data_dir.clone();
        let store = Arc::clone(&self.analyser.store);
        let loaded = tokio::task::spawn_blocking(move || Models::load(&store, &data_dir))
            .await
            .map_err(|_| ReloadError::Panicked)
            .and_then(|models| models.map_err(ReloadError::from));
        self.status.reload_done(loaded.as_ref().map(|_| ()).map_err(ToString::to_string));
        let models = loaded?;
        tracing::info!(
            static_version = models.static_model.version(),
            static_source = %models.static_source,
            behaviour_version = models.behaviour_model.version(),
            behaviour_source = %models.behaviour_source,
            "models reloaded"
        );
        self.analyser.models.replace(models);
        Ok(self.analyser.models.current())
    }

    pub fn report(&self) -> StatusReport {
        let models = self.analyser.models.current();
        let virustotal = self.analyser.virustotal.as_ref().map(VirusTotalStep::report);
        self.status.report(
            ModelReport {
                static_version: models.static_model.version().to_owned(),
                static_source: models.static_source.clone(),
                behaviour_version: models.behaviour_model.version().to_owned(),
                behaviour_source: models.behaviour_source.clone(),
            },
            virustotal,
        )
    }
}

/// A handle that reloads the server's models (for SIGHUP).
#[derive(Debug, Clone)]
pub struct Reloader(Arc<Shared>);

impl Reloader {
    /// Reloads the active models (registry, else `<data_dir>/models/`, else built in); returns the static model's version.
    pub async fn reload(&self) -> Result<String, ReloadError> {
        Ok(self.0.reload().await?.static_model.version().to_owned())
    }
}

/// A bound, not yet running server.
#[derive(Debug)]
pub struct Server {
    tcp: TcpListener,
    http: TcpListener,
    shared: Arc<Shared>,
    http_extension: http::Extension,
}

async fn listen(address: SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(address).await.map_err(|source| ServerError::Bind { address, source })
}

impl Server {
    /// Checks the settings and binds both listeners. Reloads read the active
    /// models of `store`'s model registry, or, for a kind without one,
    /// `models/static.json` and `models/behaviour.json` of `data_dir`; without
    /// `sandbox` the dynamic step needs the client's report (field `[3]`);
    /// without `virustotal` the VirusTotal step answers `unavailable`.
    pub async fn bind(
        settings: ServerSettings,
        data_dir: PathBuf,
        models: Arc<ModelsInService>,
        store: Arc<Store>,
        virustotal: Option<VirusTotalStep>,
        sandbox: Option<CapeClient>,
    ) -> Result<Server, ServerError> {
        settings.validate()?;
        let tcp = listen(settings.tcp_listen).await?;
        let http = listen(settings.http_listen).await?;
        let analyser = Analyser {
            models,
            store,
            workers: AnalysisWorkers::new(settings.analysis_workers, settings.analysis_queue_wait),
            timeout: settings.analysis_timeout,
            sandbox,
            virustotal,
            fusion: settings.fusion.clone(),
        };
        let shared = Arc::new(Shared {
            settings,
            analyser,
            status: Status::default(),
            data_dir,
            reload_lock: Mutex::new(()),
        });
        Ok(Server { tcp, http, shared, http_extension: http::Extension::default() })
    }

    /// The protocol listener's address.
    pub fn tcp_addr(&self) -> SocketAddr {
        self.tcp.local_addr().unwrap_or(self.shared.settings.tcp_listen)
    }

    /// The HTTP listener's address.
    pub fn http_addr(&self) -> SocketAddr {
        self.http.local_addr().unwrap_or(self.shared.settings.http_listen)
    }

    pub fn reloader(&self) -> Reloader {
        Reloader(Arc::clone(&self.shared))
    }

    /// Serves `routes` on the HTTP listener beside the server's own, with the same JSON errors
    /// and request metrics; this is how the binary adds the network API without this crate
    /// depending on it. A route that is already served makes axum panic: paths must not clash.
    pub fn merge_http_routes(mut self, routes: axum::Router) -> Server {
        self.http_extension.routes = std::mem::take(&mut self.http_extension.routes).merge(routes);
        self
    }

    /// Appends what `write` produces (Prometheus text exposition lines) to `GET /metrics`.
    pub fn add_metrics(mut self, write: impl Fn(&mut String) + Send + Sync + 'static) -> Server {
        self.http_extension.metrics.push(Box::new(write));
        self
    }

    /// Serves until `shutdown` completes, then drains in-flight requests.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), ServerError> {
        let Server { tcp, http, shared, http_extension } = self;
        let (stop, stopped) = watch::channel(false);
        let mut http_stopped = stopped.clone();
        let http_server = axum::serve(http, http::router(Arc::clone(&shared), http_extension))
            .with_graceful_shutdown(async move {
                let _ = http_stopped.wait_for(|stopping| *stopping).await;
            });
        let http_task = tokio::spawn(async move { http_server.await });

        let connection_slots = Arc::new(Semaphore::new(shared.settings.max_connections));
        let mut connections = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                accepted = tcp.accept() => match accepted {
                    Ok((stream, peer)) => match Arc::clone(&connection_slots).try_acquire_owned() {
                        Ok(slot) => {
                            let shared = Arc::clone(&shared);
                            let stopped = stopped.clone();
                            connections.spawn(async move {
                                let _open = OpenConnection::new(&shared.status);
                                connection::serve(stream, peer, Arc::clone(&shared), stopped).await;
                                drop(slot);
                            });
                        }
                        Err(_) => {
                            shared.status.connection_refused();
                            tracing::warn!(%peer, "connection refused: max_connections reached");
                        }
                    },
                    Err(error) => {
                        // Out of file descriptors or similar: back off instead of spinning.
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
        drop(tcp);
        tracing::info!(open = connections.len(), "shutting down: finishing in-flight requests");
        let _ = stop.send(true);
        let drained = tokio::time::timeout(shared.settings.shutdown_timeout, async {
            while connections.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(left = connections.len(), "shutdown timeout: closing the remaining connections");
            connections.shutdown().await;
        }
        match http_task.await {
            Ok(result) => result.map_err(ServerError::Http),
            Err(_) => Err(ServerError::Http(std::io::Error::other("the HTTP task failed"))),
        }
    }
}

/// Counts a connection as open for as long as it lives, however its task ends.
struct OpenConnection<'a>(&'a Status);

impl<'a> OpenConnection<'a> {
    fn new(status: &'a Status) -> OpenConnection<'a> {
        status.connection_opened();
        OpenConnection(status)
    }
}

impl Drop for OpenConnection<'_> {
    fn drop(&mut self) {
        self.0.connection_closed();
    }
}
