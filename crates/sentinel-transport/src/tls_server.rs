//! The server side of TLS for both listeners: TLS 1.3 only (older versions are refused during
//! the handshake), the certificate from [`ReloadableCertificate`], and, when a CA file is given,
//! client certificates required and verified against it (mutual TLS). A reload (SIGHUP) rereads
//! the certificate, its key and the client CA file: a CA removed from that file is refused from
//! the next handshake on, without a restart.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig, version};
use tokio_rustls::server::TlsStream;

use crate::provider::crypto_provider;
use crate::reloadable::{CertificateError, ReloadableCertificate, read_certificates};

/// Where a TLS listener's certificate and keys are, and what it offers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsOptions {
    /// The server's certificate chain, PEM, leaf first.
    pub certificate_file: PathBuf,
    /// Its private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// Mutual TLS: when set, every client must present a certificate that a CA of this PEM
    /// file signed; its subject then names the client ([`crate::peer_subject`]).
    pub client_ca_file: Option<PathBuf>,
    /// ALPN protocols offered, by preference (`b"http/1.1"`); none when empty.
    pub alpn_protocols: Vec<Vec<u8>>,
}

/// Why a TLS connection was not established.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("no TLS handshake within {0:?}")]
    TimedOut(Duration),
    /// A refused protocol version, an untrusted or missing client certificate, not TLS at all…
    #[error("TLS handshake failed: {0}")]
    Failed(std::io::Error),
}

/// A TLS 1.3 server configuration whose certificate and client CAs can be reloaded; cheap to
/// clone.
#[derive(Debug, Clone)]
pub struct TlsServer {
    /// Swapped whole when the client CA file is reloaded; handshakes take the one in service.
    config: Arc<ArcSwap<ServerConfig>>,
    certificate: Arc<ReloadableCertificate>,
    options: Arc<TlsOptions>,
}

impl TlsServer {
    pub fn new(options: &TlsOptions) -> Result<TlsServer, CertificateError> {
        let certificate = Arc::new(ReloadableCertificate::load(
            &options.certificate_file,
            &options.key_file,
            crypto_provider(),
        )?);
        let config = server_config(options, &certificate)?;
        Ok(TlsServer {
            config: Arc::new(ArcSwap::from_pointee(config)),
            certificate,
            options: Arc::new(options.clone()),
        })
    }

    /// Re-reads the certificate, the key and the client CA file (on SIGHUP): new connections
    /// get what they now hold, open ones keep what they were made with. When any of them
    /// cannot be used, nothing changes and the error says why.
    pub fn reload(&self) -> Result<(), CertificateError> {
        // The CAs are read first: a bad CA file leaves the certificate in service too.
        let config = match self.options.client_ca_file {
            Some(_) => Some(server_config(&self.options, &self.certificate)?),
            None => None,
        };
        self.certificate.reload()?;
        if let Some(config) = config {
            self.config.store(Arc::new(config));
            tracing::info!(file = ?self.options.client_ca_file, "client CA certificates reloaded");
        }
        Ok(())
    }

    /// The certificate in service.
    pub fn certificate(&self) -> &ReloadableCertificate {
        &self.certificate
    }

    /// Whether clients must present a certificate (mutual TLS).
    pub fn requires_client_certificate(&self) -> bool {
        self.options.client_ca_file.is_some()
    }

    /// The rustls configuration in service, for callers that drive the handshake themselves.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.config.load_full()
    }

    /// Completes the server side of the handshake on `io`, or gives up after `within`, so that
    /// a client that never speaks cannot hold a connection slot.
    pub async fn accept<IO>(&self, io: IO, within: Duration) -> Result<TlsStream<IO>, HandshakeError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let acceptor = TlsAcceptor::from(self.config.load_full());
        match tokio::time::timeout(within, acceptor.accept(io)).await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(error)) => Err(HandshakeError::Failed(error)),
            Err(_) => Err(HandshakeError::TimedOut(within)),
        }
    }
}

/// The configuration of `options`, serving `certificate`, with the client CAs read from their
/// file now.
fn server_config(
    options: &TlsOptions,
    certificate: &Arc<ReloadableCertificate>,
) -> Result<ServerConfig, CertificateError> {
    let provider = crypto_provider();
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&version::TLS13])
        .map_err(|error| CertificateError::Config(error.to_string()))?;
    let builder = match &options.client_ca_file {
        Some(path) => {
            let roots = client_roots(path)?;
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build().map_err(
                    |error| CertificateError::ClientCa { path: path.clone(), reason: error.to_string() },
                )?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::clone(certificate) as _);
    config.alpn_protocols = options.alpn_protocols.clone();
    Ok(config)
}

/// The CAs of a PEM file, as trust anchors for client certificates.
pub(crate) fn client_roots(path: &Path) -> Result<RootCertStore, CertificateError> {
    let mut roots = RootCertStore::empty();
    for certificate in read_certificates(path)? {
        roots.add(certificate).map_err(|error| CertificateError::ClientCa {
            path: path.to_owned(),
            reason: error.to_string(),
        })?;
    }
    Ok(roots)
}
