//! One connection of the HTTP listener, from the accepted socket to its close: the TLS
//! handshake when the listener has a certificate, then HTTP/1.1 served by hyper with the axum
//! router, WebSocket upgrades included. The connection's slot ([`Permit`]) travels with the
//! socket, into an upgraded WebSocket too, and is given back when the socket closes.

use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use sentinel_transport::{ClientKey, Permit, RefusalLog, TlsServer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tower_service::Service;

use crate::connection_limits::ConnectionLimits;

/// What every connection of one listener shares.
#[derive(Clone)]
pub(crate) struct Serving {
    pub router: Router,
    pub http: http1::Builder,
    pub tls: Option<TlsServer>,
    pub limits: ConnectionLimits,
    pub refusals: RefusalLog,
}

/// The `reason` of a connection dropped because its TLS handshake failed or timed out.
const TLS_HANDSHAKE: &str = "tls_handshake";

impl Serving {
    /// Serves one admitted connection until it closes, or until `stop` says the listener stops:
    /// then the request in flight is answered and the connection closed.
    pub async fn connection(
        self,
        stream: TcpStream,
        peer: SocketAddr,
        permit: Permit,
        mut stop: watch::Receiver<bool>,
    ) {
        let stopping = async move {
            let _ = stop.wait_for(|stopping| *stopping).await;
        };
        tokio::pin!(stopping);
        match &self.tls {
            None => self.http(Admitted { io: stream, _permit: permit }, peer, stopping).await,
            Some(tls) => {
                let handshake = tls.accept(stream, self.limits.tls_handshake_timeout);
                let stream = tokio::select! {
                    stream = handshake => stream,
                    () = &mut stopping => return,
                };
                match stream {
                    Ok(stream) => self.http(Admitted { io: stream, _permit: permit }, peer, stopping).await,
                    Err(error) => {
                        let client = self.refusals.describe(&ClientKey::address(peer.ip()));
                        tracing::debug!(client, %error, "TLS handshake refused");
                        self.refusals.refused_connection(
                            TLS_HANDSHAKE,
                            &ClientKey::address(peer.ip()),
                            peer.ip(),
                        );
                    }
                }
            }
        }
    }

    async fn http<IO>(&self, io: Admitted<IO>, peer: SocketAddr, stopping: Pin<&mut impl Future<Output = ()>>)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let router = self.router.clone();
        // Handlers and middleware may ask who is connected (`ConnectInfo<SocketAddr>`).
        let service = hyper::service::service_fn(move |mut request: axum::http::Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            router.clone().call(request)
        });
        let connection = self.http.serve_connection(TokioIo::new(io), service).with_upgrades();
        tokio::pin!(connection);
        let outcome = tokio::select! {
            outcome = connection.as_mut() => outcome,
            () = stopping => {
                connection.as_mut().graceful_shutdown();
                connection.await
            }
        };
        if let Err(error) = outcome {
            // Clients closing mid-request, header timeouts: theirs, not the server's.
            let client = self.refusals.describe(&ClientKey::address(peer.ip()));
            tracing::debug!(client, %error, "HTTP connection ended with an error");
        }
    }
}

/// A socket holding its connection slot.
struct Admitted<IO> {
    io: IO,
    _permit: Permit,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Admitted<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(context, buffer)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Admitted<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        bytes: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(context, bytes)
    }

    fn poll_flush(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(context)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(context)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffers: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(context, buffers)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
