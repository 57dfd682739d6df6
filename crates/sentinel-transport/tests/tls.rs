//! TLS over real sockets on 127.0.0.1, with a private CA, server and client certificates made at
//! test time (rcgen): TLS 1.3 answered and TLS 1.2 refused, a certificate replaced while a
//! connection made with the old one keeps working, client certificates required and named, and
//! the client CA file reloaded (a rotated CA trusted, the removed one refused).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose,
};
use sentinel_transport::tokio_rustls::rustls::pki_types::ServerName;
use sentinel_transport::tokio_rustls::rustls::{self, ClientConfig, ProtocolVersion};
use sentinel_transport::tokio_rustls::{TlsConnector, client};
use sentinel_transport::{
    CertificateSubject, HandshakeError, TlsClientOptions, TlsOptions, TlsServer, client_config, peer_subject,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// A private CA that signs server and client certificates into PEM files.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let certificate = params.self_signed(&key).unwrap();
        Ca { pem: certificate.pem(), issuer: Issuer::new(params, key) }
    }

    /// Writes `NAME.pem` and `NAME.key` into `dir`; returns their paths.
    fn sign(
        &self,
        dir: &Path,
        name: &str,
        common_name: &str,
        usage: ExtendedKeyUsagePurpose,
    ) -> (PathBuf, PathBuf) {
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.distinguished_name.push(DnType::OrganizationName, "Example");
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().unwrap();
        let certificate = params.signed_by(&key, &self.issuer).unwrap();
        let (certificate_file, key_file) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}.key")));
        std::fs::write(&certificate_file, certificate.pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        (certificate_file, key_file)
    }

    fn write(&self, dir: &Path) -> PathBuf {
        let path = dir.join("ca.pem");
        std::fs::write(&path, &self.pem).unwrap();
        path
    }
}

/// What the server learnt of each connection: the handshake's outcome and the client's subject.
type Accepted = Result<Option<CertificateSubject>, String>;

/// A TLS echo server on 127.0.0.1 reporting each handshake.
async fn echo_server(tls: TlsServer) -> (SocketAddr, mpsc::UnboundedReceiver<Accepted>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (report, reports) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let (tls, report) = (tls.clone(), report.clone());
            tokio::spawn(async move {
                match tls.accept(stream, Duration::from_secs(5)).await {
                    Ok(mut stream) => {
                        let _ = report.send(Ok(peer_subject(&stream)));
                        let mut buffer = [0u8; 64];
                        while let Ok(read @ 1..) = stream.read(&mut buffer).await {
                            if stream.write_all(&buffer[..read]).await.is_err() {
                                break;
                            }
                        }
                    }
                    Err(error) => {
                        let _ = report.send(Err(error.to_string()));
                    }
                }
            });
        }
    });
    (address, reports)
}

async fn connect(
    address: SocketAddr,
    config: Arc<ClientConfig>,
) -> std::io::Result<client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(address).await?;
    TlsConnector::from(config).connect(ServerName::try_from("localhost").unwrap(), tcp).await
}

/// Sends a line and reads it back.
async fn echoes(stream: &mut client::TlsStream<TcpStream>, text: &str) -> bool {
    if stream.write_all(text.as_bytes()).await.is_err() {
        return false;
    }
    let mut buffer = vec![0u8; text.len()];
    stream.read_exact(&mut buffer).await.is_ok() && buffer == text.as_bytes()
}

fn leaf_of(stream: &client::TlsStream<TcpStream>) -> Vec<u8> {
    stream.get_ref().1.peer_certificates().unwrap()[0].as_ref().to_vec()
}

fn pem_der(path: &Path) -> Vec<u8> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_file(path).unwrap().as_ref().to_vec()
}

#[tokio::test]
async fn tls_1_3_is_answered_and_tls_1_2_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("Test CA");
    let (certificate_file, key_file) =
        ca.sign(dir.path(), "server", "localhost", ExtendedKeyUsagePurpose::ServerAuth);
    let tls = TlsServer::new(&TlsOptions { certificate_file, key_file, ..TlsOptions::default() }).unwrap();
    let (address, mut reports) = echo_server(tls).await;
    let config =
        client_config(&TlsClientOptions { ca_file: ca.write(dir.path()), ..Default::default() }).unwrap();

    let mut stream = connect(address, Arc::clone(&config)).await.unwrap();
    assert_eq!(stream.get_ref().1.protocol_version(), Some(ProtocolVersion::TLSv1_3));
    assert!(echoes(&mut stream, "hello").await);
    assert_eq!(reports.recv().await.unwrap(), Ok(None));

    // The same trust, TLS 1.2 only.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pem_der(&dir.path().join("ca.pem")).into()).unwrap();
    let tls12 = ClientConfig::builder_with_provider(sentinel_transport::crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let refused = connect(address, Arc::new(tls12)).await;
    assert!(refused.is_err(), "a TLS 1.2 client was answered");
    let report = reports.recv().await.unwrap().unwrap_err();
    assert!(report.contains("handshake failed"), "{report}");
}

#[tokio::test]
async fn a_reloaded_certificate_serves_new_connections_while_open_ones_keep_working() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("Test CA");
    let (certificate_file, key_file) =
        ca.sign(dir.path(), "server", "first", ExtendedKeyUsagePurpose::ServerAuth);
    let first = pem_der(&certificate_file);
    let tls = TlsServer::new(&TlsOptions {
        certificate_file: certificate_file.clone(),
        key_file: key_file.clone(),
        ..TlsOptions::default()
    })
    .unwrap();
    let (address, _reports) = echo_server(tls.clone()).await;
    let config =
        client_config(&TlsClientOptions { ca_file: ca.write(dir.path()), ..Default::default() }).unwrap();
    let mut before = connect(address, Arc::clone(&config)).await.unwrap();
    assert_eq!(leaf_of(&before), first);

    // Replaced on disk, then reloaded.
    ca.sign(dir.path(), "server", "second", ExtendedKeyUsagePurpose::ServerAuth);
    let second = pem_der(&certificate_file);
    assert_ne!(first, second);
    tls.reload().unwrap();
    // A new client: one that resumes its earlier session is not sent the certificate again.
    let config =
        client_config(&TlsClientOptions { ca_file: dir.path().join("ca.pem"), ..Default::default() })
            .unwrap();
    let after = connect(address, Arc::clone(&config)).await.unwrap();
    assert_eq!(leaf_of(&after), second);
    assert!(echoes(&mut before, "still here").await, "the connection made before the reload broke");

    // A key that does not fit: the reload fails and the certificate in service stays.
    let (_, other_key) = ca.sign(dir.path(), "other", "other", ExtendedKeyUsagePurpose::ServerAuth);
    std::fs::copy(&other_key, &key_file).unwrap();
    let error = tls.reload().unwrap_err().to_string();
    assert!(error.contains("does not fit"), "{error}");
    std::fs::write(&certificate_file, "not a certificate").unwrap();
    assert!(tls.reload().is_err());
    let config =
        client_config(&TlsClientOptions { ca_file: dir.path().join("ca.pem"), ..Default::default() })
            .unwrap();
    let last = connect(address, config).await.unwrap();
    assert_eq!(leaf_of(&last), second);
}

#[tokio::test]
async fn client_certificates_are_required_and_name_the_client() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("Test CA");
    let (certificate_file, key_file) =
        ca.sign(dir.path(), "server", "localhost", ExtendedKeyUsagePurpose::ServerAuth);
    let ca_file = ca.write(dir.path());
    let tls = TlsServer::new(&TlsOptions {
        certificate_file,
        key_file,
        client_ca_file: Some(ca_file.clone()),
        ..TlsOptions::default()
    })
    .unwrap();
    assert!(tls.requires_client_certificate());
    let (address, mut reports) = echo_server(tls).await;

    // No certificate: TLS 1.3 clients learn it at their first read; the server refuses at once.
    let anonymous =
        client_config(&TlsClientOptions { ca_file: ca_file.clone(), ..Default::default() }).unwrap();
    if let Ok(mut stream) = connect(address, anonymous).await {
        assert!(!echoes(&mut stream, "anyone?").await);
    }
    let report = reports.recv().await.unwrap().unwrap_err();
    assert!(report.contains("handshake failed"), "{report}");

    // A certificate of another CA: refused too.
    let stranger = Ca::new("Other CA");
    let (foreign, foreign_key) =
        stranger.sign(dir.path(), "foreign", "intruder", ExtendedKeyUsagePurpose::ClientAuth);
    let options = TlsClientOptions {
        ca_file: ca_file.clone(),
        certificate_file: Some(foreign),
        key_file: Some(foreign_key),
        ..Default::default()
    };
    if let Ok(mut stream) = connect(address, client_config(&options).unwrap()).await {
        assert!(!echoes(&mut stream, "let me in").await);
    }
    assert!(reports.recv().await.unwrap().is_err());

    // Signed by the CA: answered, and named by its subject.
    let (client_certificate, client_key) =
        ca.sign(dir.path(), "client", "central-1", ExtendedKeyUsagePurpose::ClientAuth);
    let options = TlsClientOptions {
        ca_file,
        certificate_file: Some(client_certificate),
        key_file: Some(client_key),
        ..Default::default()
    };
    let mut stream = connect(address, client_config(&options).unwrap()).await.unwrap();
    assert!(echoes(&mut stream, "verdict please").await);
    let subject = reports.recv().await.unwrap().unwrap().expect("the client's subject");
    assert_eq!(subject.common_name(), Some("central-1"));
    assert_eq!(subject.distinguished_name(), "CN=central-1, O=Example");
}

#[tokio::test]
async fn a_reloaded_client_ca_file_decides_from_the_next_handshake_on() {
    let dir = tempfile::tempdir().unwrap();
    let (old_ca, new_ca) = (Ca::new("Old CA"), Ca::new("New CA"));
    let (certificate_file, key_file) =
        old_ca.sign(dir.path(), "server", "localhost", ExtendedKeyUsagePurpose::ServerAuth);
    let server_ca = old_ca.write(dir.path());
    let client_ca_file = dir.path().join("clients.pem");
    std::fs::write(&client_ca_file, &old_ca.pem).unwrap();
    let tls = TlsServer::new(&TlsOptions {
        certificate_file,
        key_file,
        client_ca_file: Some(client_ca_file.clone()),
        ..TlsOptions::default()
    })
    .unwrap();
    let (address, mut reports) = echo_server(tls.clone()).await;
    let client = |ca: &Ca, name: &str| {
        let (certificate, key) = ca.sign(dir.path(), name, name, ExtendedKeyUsagePurpose::ClientAuth);
        let options = TlsClientOptions {
            ca_file: server_ca.clone(),
            certificate_file: Some(certificate),
            key_file: Some(key),
            ..Default::default()
        };
        client_config(&options).unwrap()
    };
    let (old_client, new_client) = (client(&old_ca, "old-client"), client(&new_ca, "new-client"));
    async fn answered(address: SocketAddr, config: Arc<ClientConfig>) -> bool {
        match connect(address, config).await {
            Ok(mut stream) => echoes(&mut stream, "hello").await,
            Err(_) => false,
        }
    }

    assert!(answered(address, Arc::clone(&old_client)).await);
    assert!(reports.recv().await.unwrap().is_ok());
    // A connection made under the old CA stays open across the reload.
    let mut open = connect(address, Arc::clone(&old_client)).await.unwrap();
    assert!(echoes(&mut open, "before").await);
    assert!(reports.recv().await.unwrap().is_ok());

    // The CA is rotated: the file now holds only the new CA.
    std::fs::write(&client_ca_file, &new_ca.pem).unwrap();
    tls.reload().unwrap();
    assert!(!answered(address, Arc::clone(&old_client)).await, "the removed CA is refused");
    assert!(reports.recv().await.unwrap().is_err());
    assert!(answered(address, Arc::clone(&new_client)).await, "the new CA is trusted");
    assert!(reports.recv().await.unwrap().is_ok());
    assert!(echoes(&mut open, "after").await);

    // A CA file that cannot be read changes nothing.
    std::fs::write(&client_ca_file, "not a certificate").unwrap();
    assert!(tls.reload().is_err());
    assert!(answered(address, new_client).await);
    assert!(reports.recv().await.unwrap().is_ok());
}

#[tokio::test]
async fn a_client_that_never_speaks_is_dropped_after_the_handshake_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("Test CA");
    let (certificate_file, key_file) =
        ca.sign(dir.path(), "server", "localhost", ExtendedKeyUsagePurpose::ServerAuth);
    let tls = TlsServer::new(&TlsOptions { certificate_file, key_file, ..TlsOptions::default() }).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let _silent = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
    let (stream, _) = listener.accept().await.unwrap();
    let outcome = tls.accept(stream, Duration::from_millis(200)).await;
    assert!(matches!(outcome, Err(HandshakeError::TimedOut(_))), "{outcome:?}");
}

#[test]
fn unusable_files_are_refused_with_their_path() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem");
    let options =
        TlsOptions { certificate_file: missing.clone(), key_file: missing, ..TlsOptions::default() };
    let error = TlsServer::new(&options).unwrap_err().to_string();
    assert!(error.contains("missing.pem"), "{error}");
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let options = TlsOptions { certificate_file: empty.clone(), key_file: empty, ..TlsOptions::default() };
    assert!(TlsServer::new(&options).unwrap_err().to_string().contains("holds no certificate"));
}
