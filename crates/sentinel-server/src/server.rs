//! The server: binds the protocol listener, accepts connections up to
//! `max_connections`, and shuts down gracefully. Its HTTP routes, readiness
//! check and metrics are contributed to the process's HTTP listener
//! (`sentinel-api`) by [`Server::contribute`].
//!
//! Binding is separate from running so a caller learns the bound address
//! (port 0 picks a free port) before traffic starts. On shutdown the server
//! stops accepting, lets every connection finish the request it is handling
//! (up to `shutdown_timeout`), then stops.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sentinel_api::ApiBuilder;
use sentinel_sandbox::CapeClient;
use sentinel_store::Store;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::analysis::{Analyser, VirusTotalStep};
use crate::models::ModelsInService;
use crate::settings::{ServerSettings, SettingsError};
use crate::state::{Reloader, Shared};
use crate::status::Status;
use crate::workers::AnalysisWorkers;
use crate::{connection, http, metrics};

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("invalid [server] settings: {0}")]
    Settings(#[from] SettingsError),
    #[error("cannot listen on {address}: {source}")]
    Bind { address: SocketAddr, source: std::io::Error },
}

/// A bound, not yet running server.
#[derive(Debug)]
pub struct Server {
    tcp: TcpListener,
    shared: Arc<Shared>,
}

async fn listen(address: SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(address).await.map_err(|source| ServerError::Bind { address, source })
}

impl Server {
    /// Checks the settings and binds the protocol listener. Reloads read the
    /// active models of `store`'s model registry, or, for a kind without one,
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
        let analyser = Analyser {
            models,
            store,
            workers: AnalysisWorkers::new(settings.analysis_workers, settings.analysis_queue_wait),
            timeout: settings.analysis_timeout,
            sandbox,
            virustotal,
            fusion: settings.fusion.clone(),
        };
        let shared = Arc::new(Shared::new(settings, analyser, data_dir));
        Ok(Server { tcp, shared })
    }

    /// The protocol listener's address.
    pub fn tcp_addr(&self) -> SocketAddr {
        self.tcp.local_addr().unwrap_or(self.shared.settings.tcp_listen)
    }

    pub fn reloader(&self) -> Reloader {
        Reloader(Arc::clone(&self.shared))
    }

    /// Adds the server's part of the HTTP API to `api`: `GET /status` and
    /// `POST /admin/reload`, the readiness check of `/readyz` (models loaded, store
    /// writable) and the `malware_*` and `virustotal_*` metrics.
    pub fn contribute(&self, mut api: ApiBuilder) -> ApiBuilder {
        metrics::register(&self.shared, api.metrics());
        api.service(http::routes(Arc::clone(&self.shared)))
            .readiness(http::readiness(Arc::clone(&self.shared)))
    }

    /// Serves until `shutdown` completes, then drains in-flight requests.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), ServerError> {
        let Server { tcp, shared } = self;
        let (stop, stopped) = watch::channel(false);

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
        Ok(())
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
