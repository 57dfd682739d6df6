//! The subject of a certificate, readable: how a client that authenticated with a certificate
//! (mutual TLS) is named in logs, in the verdicts it asked for and in its limits. rustls checks
//! the certificate but does not decode names; x509-parser does.

use std::fmt;

use tokio_rustls::rustls::pki_types::CertificateDer;
use tokio_rustls::server::TlsStream;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::reloadable::CertificateError;

/// A certificate's subject: its distinguished name as `CN=…, O=…` (attributes in the order of
/// the certificate) and its common name, when it has one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CertificateSubject {
    distinguished_name: String,
    common_name: Option<String>,
}

impl CertificateSubject {
    /// Decodes the subject of a DER certificate.
    pub fn of_certificate(certificate: &CertificateDer<'_>) -> Result<CertificateSubject, CertificateError> {
        let (_, parsed) = X509Certificate::from_der(certificate.as_ref()).map_err(|error| {
            CertificateError::Certificates { path: "<peer>".into(), reason: error.to_string() }
        })?;
        let subject = parsed.subject();
        let common_name =
            subject.iter_common_name().next().and_then(|name| name.as_str().ok()).map(str::to_owned);
        Ok(CertificateSubject { distinguished_name: subject.to_string(), common_name })
    }

    /// The whole name, `CN=central-1, O=Example`: unique where common names may repeat.
    pub fn distinguished_name(&self) -> &str {
        &self.distinguished_name
    }

    /// The common name alone, `central-1`.
    pub fn common_name(&self) -> Option<&str> {
        self.common_name.as_deref()
    }
}

impl fmt::Display for CertificateSubject {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.distinguished_name)
    }
}

/// The subject of the certificate the peer of `stream` presented, if it presented one (only
/// when the server asked for it: see [`crate::TlsOptions::client_ca_file`]).
pub fn peer_subject<IO>(stream: &TlsStream<IO>) -> Option<CertificateSubject> {
    let (_, connection) = stream.get_ref();
    let leaf = connection.peer_certificates()?.first()?;
    CertificateSubject::of_certificate(leaf).ok()
}

/// The end of a certificate's validity, RFC 2822, for the logs.
pub(crate) fn not_after(certificate: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = X509Certificate::from_der(certificate.as_ref()).ok()?;
    Some(parsed.validity().not_after.to_string())
}
