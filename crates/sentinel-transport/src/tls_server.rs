//! The server side of TLS for both listeners: TLS 1.3 only (older versions are refused during
//! the handshake), the certificate from [`ReloadableCertificate`], and, when a CA file is given,
//! client certificates required and verified against it (mutual TLS).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

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

/// A TLS 1.3 server configuration whose certificate can be reloaded; cheap to clone.
#[derive(Debug, Clone)]
pub struct TlsServer {
    config: Arc<ServerConfig>,
    certificate: Arc<ReloadableCertificate>,
    requires_client_certificate: bool,
}

impl TlsServer {
    pub fn new(options: &TlsOptions) -> Result<TlsServer, CertificateError> {
        let provider = crypto_provider();
        let certificate = Arc::new(ReloadableCertificate::load(
            &options.certificate_file,
            &options.key_file,
            Arc::clone(&provider),
        )?);
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
        let mut config = builder.with_cert_resolver(Arc::clone(&certificate) as _);
        config.alpn_protocols = options.alpn_protocols.clone();
        Ok(TlsServer {
            config: Arc::new(config),
            certificate,
            requires_client_certificate: options.client_ca_file.is_some(),
        })
    }

    /// Re-reads the certificate and key files (on SIGHUP): new connections get the new
    /// certificate, open ones keep theirs. On error the certificate in service stays.
    pub fn reload(&self) -> Result<(), CertificateError> {
        self.certificate.reload()
    }

    /// The certificate in service.
    pub fn certificate(&self) -> &ReloadableCertificate {
        &self.certificate
    }

    /// Whether clients must present a certificate (mutual TLS).
    pub fn requires_client_certificate(&self) -> bool {
        self.requires_client_certificate
    }

    /// The rustls configuration, for callers that drive the handshake themselves.
    pub fn config(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.config)
    }

    /// Completes the server side of the handshake on `io`, or gives up after `within`, so that
    /// a client that never speaks cannot hold a connection slot.
    pub async fn accept<IO>(&self, io: IO, within: Duration) -> Result<TlsStream<IO>, HandshakeError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let acceptor = TlsAcceptor::from(Arc::clone(&self.config));
        match tokio::time::timeout(within, acceptor.accept(io)).await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(error)) => Err(HandshakeError::Failed(error)),
            Err(_) => Err(HandshakeError::TimedOut(within)),
        }
    }
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
