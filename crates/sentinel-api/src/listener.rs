//! The process's HTTP listener: bound first, so the caller learns the address (port 0 picks a
//! free one) before traffic starts, then served until shutdown, when it stops accepting and
//! lets the requests in flight finish.
//!
//! Each accepted connection is admitted against the caps of `[http]` (in all and per client
//! address) before anything is read from it; refused ones are closed at once, counted in
//! `http_connections_refused_total{reason}` and logged at a bounded rate (and, within that
//! rate, written to the access log). With a certificate
//! ([`HttpListener::with_tls`]) every connection speaks TLS 1.3; then hyper serves HTTP/1.1
//! with a deadline for each request's headers (see `connection`).

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::TokioTimer;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use sentinel_transport::{AccessLog, ClientKey, ConnectionGate, RefusalLog, TlsServer};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::builder::Api;
use crate::connection::Serving;
use crate::connection_limits::ConnectionLimits;
use crate::settings::HttpSettings;

/// Why the listener could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    #[error("cannot listen on {address}: {source}")]
    Bind { address: SocketAddr, source: std::io::Error },
    #[error("the HTTP listener failed: {0}")]
    Serve(std::io::Error),
}

/// A bound, not yet serving listener.
pub struct HttpListener {
    listener: TcpListener,
    address: SocketAddr,
    limits: ConnectionLimits,
    gate: ConnectionGate,
    tls: Option<TlsServer>,
    refusals: RefusalLog,
}

/// How long accepting pauses after the kernel refused an accept (out of descriptors, say): the
/// condition lasts, and retrying at once would spin and flood the log.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_secs(1);

impl HttpListener {
    /// Binds `address`, with the connection limits of the default `[http]` settings.
    pub async fn bind(address: SocketAddr) -> Result<HttpListener, ListenerError> {
        let listener =
            TcpListener::bind(address).await.map_err(|source| ListenerError::Bind { address, source })?;
        let address = listener.local_addr().unwrap_or(address);
        let limits = ConnectionLimits::from_settings(&HttpSettings::default());
        Ok(HttpListener {
            listener,
            address,
            gate: ConnectionGate::new(limits.gate),
            limits,
            tls: None,
            refusals: RefusalLog::new("http"),
        })
    }

    /// The connection caps and timeouts of `settings` (its `listen` is the caller's to bind).
    pub fn with_limits(mut self, settings: &HttpSettings) -> HttpListener {
        self.limits = ConnectionLimits::from_settings(settings);
        self.gate = ConnectionGate::new(self.limits.gate);
        self
    }

    /// Writes a `connection` line to `log` for connections refused before any request (within
    /// the refusal log's budget); the requests' lines are the router's ([`crate::ApiBuilder::access_log`]).
    pub fn with_access_log(mut self, log: AccessLog) -> HttpListener {
        self.refusals = self.refusals.with_access_log(log);
        self
    }

    /// Serves HTTPS only, with this certificate; reload it with [`TlsServer::reload`].
    pub fn with_tls(mut self, tls: TlsServer) -> HttpListener {
        self.tls = Some(tls);
        self
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.address
    }

    /// Registers `http_connections_refused_total{reason}` and `http_connections_open`.
    pub fn register_metrics(&self, registry: &mut Registry) {
        registry.register(
            "http_connections_refused",
            "HTTP connections closed at accept (reason: max_connections, max_connections_per_client) \
             or during the TLS handshake (tls_handshake).",
            self.refusals.counter(),
        );
        registry.register_collector(Box::new(OpenConnections(self.gate.clone())));
    }

    /// Serves `api` until `shutdown` completes, then finishes the requests in flight.
    pub async fn serve(
        self,
        api: &Api,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ListenerError> {
        let HttpListener { listener, address, limits, gate, tls, refusals } = self;
        tracing::info!(
            %address,
            tls = tls.is_some(),
            max_connections = limits.gate.max_connections,
            max_connections_per_client = limits.gate.max_per_client,
            header_timeout = ?limits.header_timeout,
            "HTTP listener serving"
        );
        let mut http = http1::Builder::new();
        http.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout).keep_alive(true);
        let serving = Serving { router: api.router(), http, tls, limits, refusals: refusals.clone() };
        let (stop, _) = watch::channel(false);
        tokio::pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = &mut shutdown => break,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::error!(%error, "the HTTP listener cannot accept; pausing 1 s");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            };
            // Without it, a TLS handshake's small writes wait for delayed ACKs (~40 ms each).
            let _ = stream.set_nodelay(true);
            let client = ClientKey::address(peer.ip());
            match gate.admit(client.clone()) {
                Ok(permit) => {
                    let connection = serving.clone().connection(stream, peer, permit, stop.subscribe());
                    tokio::spawn(connection);
                }
                Err(refusal) => {
                    drop(stream);
                    refusals.refused_connection(refusal.reason(), &client, peer.ip());
                }
            }
        }
        // Stop accepting, then let every connection answer what it is answering and close.
        drop(listener);
        let _ = stop.send(true);
        stop.closed().await;
        Ok(())
    }
}

/// `http_connections_open`, read from the gate at each scrape.
#[derive(Debug)]
struct OpenConnections(ConnectionGate);

impl Collector for OpenConnections {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let open = i64::try_from(self.0.open_connections()).unwrap_or(i64::MAX);
        let gauge = ConstGauge::new(open);
        let metric = encoder.encode_descriptor(
            "http_connections_open",
            "HTTP connections open now (WebSockets included).",
            None,
            gauge.metric_type(),
        )?;
        gauge.encode(metric)
    }
}
