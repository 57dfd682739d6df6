//! The server: binds the protocol listeners — the plain port and, when configured, the TLS
//! port with the same frames inside TLS 1.3 — admits connections (allow-list, connection caps
//! in all and per client), and shuts down gracefully. Its HTTP routes, readiness check and
//! metrics are contributed to the process's HTTP listener (`sentinel-api`) by
//! [`Server::contribute`].
//!
//! Binding is separate from running so a caller learns the bound addresses (port 0 picks a
//! free port) before traffic starts. On shutdown the server stops accepting, lets every
//! connection finish the request it is handling (up to `shutdown_timeout`), then stops.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sentinel_api::ApiBuilder;
use sentinel_privacy::Pseudonymiser;
use sentinel_sandbox::CapeClient;
use sentinel_store::Store;
use sentinel_transport::{
    AccessLog, CertificateError, ClientKey, HandshakeError, Permit, TlsOptions, TlsServer, peer_subject,
};
use sentinel_yara::YaraRules;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::analysis::{Analyser, VirusTotalStep};
use crate::connection::{self, Peer};
use crate::models::ModelsInService;
use crate::outcomes::{AnalysisOutcome, Outcomes};
use crate::settings::{ServerSettings, SettingsError};
use crate::stage_times::StageTimes;
use crate::state::{Reloader, Shared};
use crate::status::Status;
use crate::workers::AnalysisWorkers;
use crate::{http, metrics};

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("invalid [server] settings: {0}")]
    Settings(#[from] SettingsError),
    #[error("cannot listen on {address}: {source}")]
    Bind { address: SocketAddr, source: std::io::Error },
    #[error("the TLS protocol listener cannot start: {0}")]
    Tls(#[from] CertificateError),
    #[error("the YARA rules cannot be loaded: {0}")]
    Yara(#[from] sentinel_yara::YaraError),
}

/// A bound, not yet running server.
#[derive(Debug)]
pub struct Server {
    plain: Option<TcpListener>,
    tls: Option<(TcpListener, TlsServer)>,
    shared: Arc<Shared>,
}

async fn listen(address: SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(address).await.map_err(|source| ServerError::Bind { address, source })
}

/// How the server records its clients.
#[derive(Debug, Clone)]
pub struct ClientRecords {
    /// One line per request, and per connection refused before its first request.
    pub access_log: AccessLog,
    /// The form (`[privacy] ip_storage`) in which a verdict names a client known by its address
    /// (one without a client certificate).
    pub addresses: Pseudonymiser,
}

impl Server {
    /// Checks the settings and binds the protocol listeners. Reloads read the
    /// active models of `store`'s model registry, or, for a kind without one,
    /// `models/static.json` and `models/behaviour.json` of `data_dir`; without
    /// `sandbox` the dynamic step needs the client's report (field `[3]`);
    /// without `virustotal` the VirusTotal step answers `unavailable`. Clients are recorded as
    /// `clients` says.
    pub async fn bind(
        settings: ServerSettings,
        data_dir: PathBuf,
        models: Arc<ModelsInService>,
        store: Arc<Store>,
        virustotal: Option<VirusTotalStep>,
        sandbox: Option<CapeClient>,
        clients: ClientRecords,
    ) -> Result<Server, ServerError> {
        settings.validate()?;
        let tls = match (settings.tls_listen, &settings.tls_cert, &settings.tls_key) {
            (Some(address), Some(certificate), Some(key)) => {
                let options = TlsOptions {
                    certificate_file: certificate.clone(),
                    key_file: key.clone(),
                    client_ca_file: settings.client_ca.clone(),
                    alpn_protocols: Vec::new(),
                };
                // The certificate first: a bad file is said before any port is taken.
                let server = TlsServer::new(&options)?;
                Some((listen(address).await?, server))
            }
            _ => None,
        };
        let plain = match settings.plain_listen() {
            Some(address) => Some(listen(address).await?),
            None => None,
        };
        // Compiled before any port is taken: a rule that does not compile is said at once.
        let yara = match &settings.yara_rules {
            Some(directory) => {
                let (directory, timeout) = (directory.clone(), settings.yara_scan_timeout);
                let rules = tokio::task::spawn_blocking(move || YaraRules::load(&directory, timeout))
                    .await
                    .map_err(|_| sentinel_yara::YaraError::Scan("the rule compiler panicked".to_owned()))??;
                let info = rules.info();
                tracing::info!(directory = %info.directory.display(), version = %info.version, files = info.files, rules = info.rules, "YARA rules loaded");
                for warning in &info.warnings {
                    tracing::warn!(%warning, "YARA rules");
                }
                Some(Arc::new(rules))
            }
            None => None,
        };
        let analyser = Analyser {
            yara,
            models,
            store,
            workers: AnalysisWorkers::new(settings.analysis_workers, settings.analysis_queue_wait),
            timeout: settings.analysis_timeout,
            sandbox,
            virustotal,
            fusion: settings.fusion.clone(),
            outcomes: Outcomes::new(),
            stage_times: StageTimes::new(),
        };
        let shared =
            Arc::new(Shared::new(settings, analyser, data_dir, clients.access_log, clients.addresses));
        Ok(Server { plain, tls, shared })
    }

    /// The plain protocol listener's address; `None` when it is off (`tcp_plain = false`).
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.plain.as_ref().and_then(|listener| listener.local_addr().ok())
    }

    /// The TLS protocol listener's address; `None` without `tls_listen`.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls.as_ref().and_then(|(listener, _)| listener.local_addr().ok())
    }

    /// The TLS listener's configuration, to reload its certificate (SIGHUP).
    pub fn tls(&self) -> Option<TlsServer> {
        self.tls.as_ref().map(|(_, tls)| tls.clone())
    }

    /// The stream of every analysis request's outcome, from now on (see [`AnalysisOutcome`]).
    pub fn outcomes(&self) -> tokio::sync::broadcast::Receiver<AnalysisOutcome> {
        self.shared.analyser.outcomes.subscribe()
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
        let Server { plain, tls, shared } = self;
        let (stop, stopped) = watch::channel(false);
        let (tls_listener, tls) = tls.unzip();

        let mut connections = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            let (accepted, tls) = tokio::select! {
                () = &mut shutdown => break,
                accepted = accept(plain.as_ref()) => (accepted, None),
                accepted = accept(tls_listener.as_ref()) => (accepted, tls.clone()),
                Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            };
            match accepted {
                Ok((stream, peer)) => {
                    let Some(permit) = shared.admit(peer) else { continue };
                    let (shared, stopped) = (Arc::clone(&shared), stopped.clone());
                    connections.spawn(async move {
                        let _open = OpenConnection::new(&shared.status);
                        open(stream, peer, permit, tls, Arc::clone(&shared), stopped).await;
                    });
                }
                Err(error) => {
                    // Out of file descriptors or similar: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        drop((plain, tls_listener));
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

/// The next connection of `listener`; never, for a listener that is off.
async fn accept(listener: Option<&TcpListener>) -> std::io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(listener) => listener.accept().await,
        None => std::future::pending().await,
    }
}

/// Serves an admitted connection: plain at once; on the TLS listener after the handshake,
/// which must end within `first_byte_timeout`, and with a client certificate (mutual TLS)
/// under that certificate's subject from then on.
async fn open(
    stream: TcpStream,
    address: SocketAddr,
    mut permit: Permit,
    tls: Option<TlsServer>,
    shared: Arc<Shared>,
    stopped: watch::Receiver<bool>,
) {
    // Requests are answered in one write each: Nagle would only add latency.
    let _ = stream.set_nodelay(true);
    // The address names the client in its verdicts: stored, so in the form `[privacy]` says.
    let Some(tls) = tls else {
        let peer = Peer::new(permit.client().clone(), address.ip(), &shared);
        return connection::serve(stream, peer, shared, stopped).await;
    };
    let stream = match tls.accept(stream, shared.settings.first_byte_timeout).await {
        Ok(stream) => stream,
        Err(error) => {
            let reason = match error {
                HandshakeError::TimedOut(_) => "first_byte_timeout",
                HandshakeError::Failed(_) => "tls_handshake",
            };
            let client = shared.refusals.describe(permit.client());
            tracing::debug!(client, %error, "TLS handshake failed");
            return shared.refuse(reason, permit.client(), address.ip());
        }
    };
    let peer = match peer_subject(&stream) {
        Some(subject) => {
            let client = ClientKey::certificate(&subject);
            if let Err(refusal) = permit.change_client(client.clone()) {
                return shared.refuse(refusal.reason(), &client, address.ip());
            }
            Peer::new(client, address.ip(), &shared)
        }
        None => Peer::new(permit.client().clone(), address.ip(), &shared),
    };
    connection::serve(stream, peer, shared, stopped).await;
    drop(permit);
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
