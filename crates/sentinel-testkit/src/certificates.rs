//! Certificates made at test time (rcgen): a private CA that signs server certificates for
//! `localhost` and `127.0.0.1` and client certificates with a chosen common name, written as
//! PEM files where the test says, as `sentinel serve --tls-cert` and the TLS clients read them.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose,
};

/// A private certificate authority.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

/// A certificate and its key, as written.
#[derive(Debug, Clone)]
pub struct CertificateFiles {
    pub certificate: PathBuf,
    pub key: PathBuf,
}

impl TestCa {
    /// A new CA named `common_name`.
    pub fn new(common_name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, common_name);
        let key = KeyPair::generate().expect("a CA key");
        let certificate = params.self_signed(&key).expect("a self-signed CA");
        TestCa { pem: certificate.pem(), issuer: Issuer::new(params, key) }
    }

    /// The CA's certificate, PEM.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// Writes the CA's certificate to `path`.
    pub fn write(&self, path: &Path) -> PathBuf {
        std::fs::write(path, &self.pem).expect("write the CA certificate");
        path.to_owned()
    }

    /// A server certificate for `localhost` and `127.0.0.1` named `common_name`, written to
    /// `certificate` and `key` (over what they held).
    pub fn server(&self, common_name: &str, certificate: &Path, key: &Path) -> CertificateFiles {
        self.sign(common_name, ExtendedKeyUsagePurpose::ServerAuth, certificate, key)
    }

    /// A client certificate (mutual TLS) whose subject is `CN=common_name, O=Sentinel tests`.
    pub fn client(&self, common_name: &str, certificate: &Path, key: &Path) -> CertificateFiles {
        self.sign(common_name, ExtendedKeyUsagePurpose::ClientAuth, certificate, key)
    }

    fn sign(
        &self,
        common_name: &str,
        usage: ExtendedKeyUsagePurpose,
        certificate: &Path,
        key: &Path,
    ) -> CertificateFiles {
        let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        let mut params = CertificateParams::new(names).expect("certificate parameters");
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.distinguished_name.push(DnType::OrganizationName, "Sentinel tests");
        params.extended_key_usages = vec![usage];
        params.use_authority_key_identifier_extension = true;
        let key_pair = KeyPair::generate().expect("a key");
        let signed = params.signed_by(&key_pair, &self.issuer).expect("a signed certificate");
        std::fs::write(certificate, signed.pem()).expect("write the certificate");
        std::fs::write(key, key_pair.serialize_pem()).expect("write the key");
        CertificateFiles { certificate: certificate.to_owned(), key: key.to_owned() }
    }
}
