//! The process's HTTP listener: bound first, so the caller learns the address (port 0 picks a
//! free one) before traffic starts, then served until shutdown, when it stops accepting and
//! lets the requests in flight finish.

use std::future::Future;
use std::net::SocketAddr;

use tokio::net::TcpListener;

use crate::builder::Api;

/// Why the listener could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    #[error("cannot listen on {address}: {source}")]
    Bind { address: SocketAddr, source: std::io::Error },
    #[error("the HTTP listener failed: {0}")]
    Serve(std::io::Error),
}

/// A bound, not yet serving listener.
#[derive(Debug)]
pub struct HttpListener {
    listener: TcpListener,
    address: SocketAddr,
}

impl HttpListener {
    pub async fn bind(address: SocketAddr) -> Result<HttpListener, ListenerError> {
        let listener =
            TcpListener::bind(address).await.map_err(|source| ListenerError::Bind { address, source })?;
        let address = listener.local_addr().unwrap_or(address);
        Ok(HttpListener { listener, address })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.address
    }

    /// Serves `api` until `shutdown` completes, then finishes the requests in flight.
    pub async fn serve(
        self,
        api: &Api,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ListenerError> {
        axum::serve(self.listener, api.router())
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(ListenerError::Serve)
    }
}
