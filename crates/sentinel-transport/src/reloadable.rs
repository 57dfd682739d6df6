//! A server certificate read from PEM files and swapped in place when the files change: the
//! TLS configuration asks this resolver at each handshake, so a reload reaches new connections
//! at once while connections already open keep the certificate they were made with.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;

use crate::subject::{CertificateSubject, not_after};

/// Why a certificate, key or CA file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    #[error("cannot read the certificates in {path}: {reason}")]
    Certificates { path: PathBuf, reason: String },
    #[error("{path} holds no certificate")]
    NoCertificate { path: PathBuf },
    #[error("cannot read the private key in {path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("the key in {key} does not fit the certificate in {certificate}: {reason}")]
    Mismatch { certificate: PathBuf, key: PathBuf, reason: String },
    #[error("the CA certificates in {path} cannot verify clients: {reason}")]
    ClientCa { path: PathBuf, reason: String },
    #[error("invalid TLS configuration: {0}")]
    Config(String),
}

/// Reads every certificate of a PEM file, in order.
pub(crate) fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, CertificateError> {
    let failed = |reason: String| CertificateError::Certificates { path: path.to_owned(), reason };
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(|error| failed(error.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| failed(error.to_string()))?;
    if certificates.is_empty() {
        return Err(CertificateError::NoCertificate { path: path.to_owned() });
    }
    Ok(certificates)
}

/// Reads the first private key (PKCS#8, PKCS#1 or SEC1) of a PEM file.
pub(crate) fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, CertificateError> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|error| CertificateError::Key { path: path.to_owned(), reason: error.to_string() })
}

/// The server's certificate chain and key, reloadable from their files.
#[derive(Debug)]
pub struct ReloadableCertificate {
    certificate_file: PathBuf,
    key_file: PathBuf,
    provider: Arc<CryptoProvider>,
    current: ArcSwap<CertifiedKey>,
}

impl ReloadableCertificate {
    /// Reads the chain (leaf first) and its key; fails unless the key fits the leaf.
    pub fn load(
        certificate_file: &Path,
        key_file: &Path,
        provider: Arc<CryptoProvider>,
    ) -> Result<ReloadableCertificate, CertificateError> {
        let certified = certified_key(certificate_file, key_file, &provider)?;
        log_loaded(certificate_file, &certified, "TLS certificate loaded");
        Ok(ReloadableCertificate {
            certificate_file: certificate_file.to_owned(),
            key_file: key_file.to_owned(),
            provider,
            current: ArcSwap::from_pointee(certified),
        })
    }

    /// Reads the files again and serves what they hold from the next handshake on. When they
    /// cannot be used (missing, half written, key not fitting), the certificate in service
    /// stays and the error says why.
    pub fn reload(&self) -> Result<(), CertificateError> {
        let certified = certified_key(&self.certificate_file, &self.key_file, &self.provider)?;
        log_loaded(&self.certificate_file, &certified, "TLS certificate reloaded");
        self.current.store(Arc::new(certified));
        Ok(())
    }

    /// The chain in service, leaf first.
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        self.current.load().cert.clone()
    }
}

impl ResolvesServerCert for ReloadableCertificate {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

fn certified_key(
    certificate_file: &Path,
    key_file: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, CertificateError> {
    let chain = read_certificates(certificate_file)?;
    let key = read_key(key_file)?;
    CertifiedKey::from_der(chain, key, provider).map_err(|error| CertificateError::Mismatch {
        certificate: certificate_file.to_owned(),
        key: key_file.to_owned(),
        reason: error.to_string(),
    })
}

/// Says which certificate is in service and until when, so that an expiry is seen coming.
fn log_loaded(path: &Path, certified: &CertifiedKey, message: &str) {
    let Some(leaf) = certified.cert.first() else { return };
    match CertificateSubject::of_certificate(leaf) {
        Ok(subject) => tracing::info!(
            file = %path.display(),
            %subject,
            not_after = not_after(leaf).as_deref().unwrap_or("?"),
            "{message}"
        ),
        Err(error) => tracing::warn!(file = %path.display(), %error, "{message}; its subject cannot be read"),
    }
}
