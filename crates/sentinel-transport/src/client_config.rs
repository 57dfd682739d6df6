//! The client side matching [`crate::TlsServer`]: TLS 1.3 only, the server verified against a
//! given CA file (a private CA, as `sentinel certs init` makes), and a client certificate for
//! servers that require one. Used by `sentinel client --tls`, the tests and the benchmarks.

use std::path::PathBuf;
use std::sync::Arc;

use tokio_rustls::rustls::{ClientConfig, version};

use crate::provider::crypto_provider;
use crate::reloadable::{CertificateError, read_certificates, read_key};
use crate::tls_server::client_roots;

/// What a TLS client trusts and presents.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsClientOptions {
    /// CA certificates (PEM) the server's certificate must chain to.
    pub ca_file: PathBuf,
    /// The client's certificate chain and key (PEM), for mutual TLS; both or neither.
    pub certificate_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// ALPN protocols offered, by preference; none when empty.
    pub alpn_protocols: Vec<Vec<u8>>,
}

/// A TLS 1.3 client configuration.
pub fn client_config(options: &TlsClientOptions) -> Result<Arc<ClientConfig>, CertificateError> {
    let roots = client_roots(&options.ca_file).map_err(|error| match error {
        CertificateError::ClientCa { path, reason } => CertificateError::Certificates { path, reason },
        other => other,
    })?;
    let builder = ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&version::TLS13])
        .map_err(|error| CertificateError::Config(error.to_string()))?
        .with_root_certificates(roots);
    let mut config = match (&options.certificate_file, &options.key_file) {
        (Some(certificate), Some(key)) => builder
            .with_client_auth_cert(read_certificates(certificate)?, read_key(key)?)
            .map_err(|error| CertificateError::Mismatch {
                certificate: certificate.clone(),
                key: key.clone(),
                reason: error.to_string(),
            })?,
        (None, None) => builder.with_no_client_auth(),
        _ => {
            return Err(CertificateError::Config(
                "a client certificate needs both its certificate file and its key file".to_owned(),
            ));
        }
    };
    config.alpn_protocols = options.alpn_protocols.clone();
    Ok(Arc::new(config))
}
