//! An async client for the protocol: one TCP connection, plain or inside TLS,
//! requests answered in order, optionally with error details turned on.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, BufWriter};
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::ClientConfig;
use tokio_rustls::rustls::pki_types::ServerName;

use crate::frame::FrameError;
use crate::limits::Limits;
use crate::request::{OPTION_ERROR_DETAIL, OPTION_LIST_DETAIL, Request};
use crate::response::Response;
use crate::stream::{FrameReader, write_request};

/// How long a response may take by default: dynamic analysis runs a sandbox,
/// which takes minutes.
const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(600);

/// Header writes are small: buffer them so a request leaves in few segments;
/// fields larger than this go straight to the socket.
const WRITE_BUFFER: usize = 64 * 1024;

/// Limits on what a server may send back: a few scores or one error detail.
fn response_limits(response_timeout: Duration) -> Limits {
    Limits {
        max_field_size: 64 * 1024,
        max_fields: 64,
        max_frame_size: 1024 * 1024,
        frame_timeout: Duration::from_secs(30),
        idle_timeout: response_timeout,
    }
}

/// A failed exchange with the server.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    #[error("TLS handshake failed: {0}")]
    Handshake(std::io::Error),
    #[error("cannot send the request: {0}")]
    Send(std::io::Error),
    #[error("invalid response: {0}")]
    Response(#[from] FrameError),
    #[error("the server closed the connection without answering")]
    Closed,
}

/// The read half of a connection, plain or TLS.
type ReadHalf = Box<dyn AsyncRead + Send + Unpin>;
/// The write half of a connection, plain or TLS.
type WriteHalf = Box<dyn AsyncWrite + Send + Unpin>;

/// A connection to a protocol server.
pub struct Client {
    reader: FrameReader<ReadHalf>,
    writer: BufWriter<WriteHalf>,
    error_detail: bool,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("error_detail", &self.error_detail).finish_non_exhaustive()
    }
}

impl Client {
    /// Connects to `address`.
    pub async fn connect(address: impl ToSocketAddrs) -> Result<Client, ClientError> {
        let stream = TcpStream::connect(address).await.map_err(ClientError::Connect)?;
        Ok(Client::from_stream(stream))
    }

    /// Connects to `address` and speaks the protocol inside TLS, checking the
    /// server's certificate against `server_name` with `config` (which holds the
    /// trusted roots and, for mutual TLS, the client's certificate).
    pub async fn connect_tls(
        address: impl ToSocketAddrs,
        server_name: ServerName<'static>,
        config: Arc<ClientConfig>,
    ) -> Result<Client, ClientError> {
        let stream = TcpStream::connect(address).await.map_err(ClientError::Connect)?;
        let _ = stream.set_nodelay(true);
        let tls =
            TlsConnector::from(config).connect(server_name, stream).await.map_err(ClientError::Handshake)?;
        Ok(Client::from_io(tls))
    }

    /// Uses an already connected stream.
    pub fn from_stream(stream: TcpStream) -> Client {
        // Requests are written in one burst and answered once: Nagle would only add latency.
        let _ = stream.set_nodelay(true);
        let (read, write) = stream.into_split();
        Client::from_halves(Box::new(read), Box::new(write))
    }

    /// Uses any connected byte stream (a TLS stream, say).
    pub fn from_io(stream: impl AsyncRead + AsyncWrite + Send + 'static) -> Client {
        let (read, write) = tokio::io::split(stream);
        Client::from_halves(Box::new(read), Box::new(write))
    }

    fn from_halves(read: ReadHalf, write: WriteHalf) -> Client {
        Client {
            reader: FrameReader::new(read, response_limits(DEFAULT_RESPONSE_TIMEOUT)),
            writer: BufWriter::with_capacity(WRITE_BUFFER, write),
            error_detail: false,
        }
    }

    /// How long to wait for a response to start (default 10 minutes).
    pub fn set_response_timeout(&mut self, timeout: Duration) {
        self.reader.set_limits(response_limits(timeout));
    }

    /// Asks the server to send error details with every `No` on this
    /// connection. `Ok(false)` when the server does not support it (a server
    /// implementing only §1.1 answers the unknown command with `No`): the
    /// connection then stays plain and usable.
    pub async fn enable_error_detail(&mut self) -> Result<bool, ClientError> {
        let response = self.request(&Request::options(&[OPTION_ERROR_DETAIL])).await?;
        self.error_detail = matches!(response, Response::Yes(ref accepted) if accepted.first() == Some(&1.0));
        Ok(self.error_detail)
    }

    /// Asks the server to say, in a `Yes` answered from its safelist or badlist, which list
    /// and why ([`Response::Listed`]). `Ok(false)` when the server does not know the option:
    /// its answers stay plain `Yes` and `No`.
    pub async fn enable_list_detail(&mut self) -> Result<bool, ClientError> {
        let response = self.request(&Request::options(&[OPTION_LIST_DETAIL])).await?;
        Ok(matches!(response, Response::Yes(ref accepted) if accepted.first() == Some(&1.0)))
    }

    /// Whether `No` responses on this connection carry details.
    pub fn error_detail(&self) -> bool {
        self.error_detail
    }

    /// Sends `request` without waiting for its response (for pipelining).
    pub async fn send(&mut self, request: &Request) -> Result<(), ClientError> {
        write_request(&mut self.writer, request).await.map_err(ClientError::Send)
    }

    /// Reads the next response.
    pub async fn receive(&mut self) -> Result<Response, ClientError> {
        self.reader.read_response(self.error_detail).await?.ok_or(ClientError::Closed)
    }

    /// Sends `request` and reads its response.
    pub async fn request(&mut self, request: &Request) -> Result<Response, ClientError> {
        self.send(request).await?;
        self.receive().await
    }
}
