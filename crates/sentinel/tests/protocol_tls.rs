//! The protocol's TLS listener of `sentinel serve`, with certificates from `sentinel certs
//! init`: the same bytes as the plain port inside TLS 1.3, TLS 1.2 refused, client
//! certificates required with `--tcp-client-ca` and their subject stored as the verdicts'
//! client.

mod protocol_peer;

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use protocol_peer::{
    Certificates, SENTINEL, exchange, metric, options_request, request_bytes, static_request,
};
use sentinel_protocol::{Client, Command, Request, Response, Sha256Hash};
use sentinel_store::{Store, StoreSettings};
use sentinel_testkit::serve_process::ServeCommand;
use sentinel_testkit::synthetic_pe;
use sentinel_transport::tokio_rustls::TlsConnector;
use sentinel_transport::tokio_rustls::rustls::pki_types::ServerName;
use sentinel_transport::tokio_rustls::rustls::{ClientConfig, version};
use tokio::net::TcpStream;

fn localhost() -> ServerName<'static> {
    ServerName::try_from("localhost").unwrap()
}

#[test]
fn certs_init_writes_keys_only_their_owner_can_read_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let certificates = Certificates::init(dir.path(), "central-1");
    for (file, mode) in [
        ("ca.pem", 0o644),
        ("ca.key", 0o600),
        ("server.pem", 0o644),
        ("server.key", 0o600),
        ("client.pem", 0o644),
        ("client.key", 0o600),
    ] {
        let metadata = std::fs::metadata(certificates.file(file)).unwrap();
        assert_eq!(metadata.permissions().mode() & 0o777, mode, "{file}");
        assert!(metadata.len() > 100, "{file} is empty");
    }
    let key = std::fs::read(certificates.file("server.key")).unwrap();
    let again =
        std::process::Command::new(SENTINEL).args(["certs", "init"]).arg(dir.path()).output().unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    assert_eq!(std::fs::read(certificates.file("server.key")).unwrap(), key, "nothing was overwritten");
}

#[tokio::test]
async fn the_tls_port_answers_the_same_bytes_as_the_plain_port() {
    let certs_dir = tempfile::tempdir().unwrap();
    let certificates = Certificates::init(certs_dir.path(), "central-1");
    let data_dir = tempfile::tempdir().unwrap();
    let served = ServeCommand::new(SENTINEL, data_dir.path()).args(certificates.serve_args()).start();
    let tls_address = served.tcp_tls.expect("the TLS listener's address");

    let mut plain = TcpStream::connect(served.tcp).await.unwrap();
    let tcp = TcpStream::connect(tls_address).await.unwrap();
    let connector = TlsConnector::from(certificates.client_config(false));
    let mut tls = connector.connect(localhost(), tcp).await.expect("a TLS 1.3 handshake");
    assert_eq!(tls.get_ref().1.protocol_version(), Some(version::TLS13.version));

    let pe = synthetic_pe(16 * 1024, 7);
    let cases: Vec<(Vec<u8>, bool)> = vec![
        // A Yes, then a 4-byte No (no executable) on a connection that did not opt in…
        (request_bytes(&static_request(&pe)), false),
        (request_bytes(&static_request(b"")), false),
        (request_bytes(&Request::new(Command::AllAnalyse, vec![])), false),
        // …then the opt-in, and a No with its detail.
        (request_bytes(&options_request()), false),
        (request_bytes(&static_request(b"not a PE")), true),
    ];
    for (request, error_detail) in cases {
        let over_plain = exchange(&mut plain, &request, error_detail).await;
        let over_tls = exchange(&mut tls, &request, error_detail).await;
        assert_eq!(over_tls, over_plain, "request {:02x?}…", &request[..8.min(request.len())]);
    }
}

#[tokio::test]
async fn tls_1_2_is_refused_on_the_tls_port() {
    let certs_dir = tempfile::tempdir().unwrap();
    let certificates = Certificates::init(certs_dir.path(), "central-1");
    let data_dir = tempfile::tempdir().unwrap();
    let served = ServeCommand::new(SENTINEL, data_dir.path()).args(certificates.serve_args()).start();
    let tls_address = served.tcp_tls.unwrap();

    let provider = Arc::new(sentinel_transport::tokio_rustls::rustls::crypto::aws_lc_rs::default_provider());
    let roots = {
        let mut roots = sentinel_transport::tokio_rustls::rustls::RootCertStore::empty();
        let pem = std::fs::read(certificates.file("ca.pem")).unwrap();
        use sentinel_transport::tokio_rustls::rustls::pki_types::CertificateDer;
        use sentinel_transport::tokio_rustls::rustls::pki_types::pem::PemObject;
        for certificate in CertificateDer::pem_slice_iter(&pem) {
            roots.add(certificate.unwrap()).unwrap();
        }
        roots
    };
    let tls12_only = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&version::TLS12])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = TcpStream::connect(tls_address).await.unwrap();
    let refused = TlsConnector::from(Arc::new(tls12_only)).connect(localhost(), tcp).await;
    assert!(refused.is_err(), "a TLS 1.2 handshake must fail");
    // Counted as a refusal, and the listener still serves TLS 1.3.
    let mut client =
        Client::connect_tls(tls_address, localhost(), certificates.client_config(false)).await.unwrap();
    assert!(client.enable_error_detail().await.unwrap());
    assert_eq!(metric(served.http, "malware_refusals_total{reason=\"tls_handshake\"}").await, 1.0);
}

#[tokio::test]
async fn mutual_tls_refuses_clients_without_a_certificate_and_records_the_subject_of_the_others() {
    let certs_dir = tempfile::tempdir().unwrap();
    let certificates = Certificates::init(certs_dir.path(), "central-7");
    let data_dir = tempfile::tempdir().unwrap();
    let mut served = ServeCommand::new(SENTINEL, data_dir.path())
        .args(certificates.serve_args())
        .args([std::ffi::OsString::from("--tcp-client-ca"), certificates.file("ca.pem").into()])
        .start();
    let tls_address = served.tcp_tls.unwrap();
    let pe = synthetic_pe(16 * 1024, 8);

    // Without a certificate: TLS 1.3 lets the client finish its side of the handshake, so the
    // refusal shows at the first exchange at the latest; no answer ever comes.
    let anonymous = Client::connect_tls(tls_address, localhost(), certificates.client_config(false)).await;
    if let Ok(mut anonymous) = anonymous {
        assert!(anonymous.request(&static_request(&pe)).await.is_err(), "answered without a certificate");
    }

    let mut client =
        Client::connect_tls(tls_address, localhost(), certificates.client_config(true)).await.unwrap();
    let response = client.request(&static_request(&pe)).await.unwrap();
    assert!(matches!(response, Response::Yes(_)), "{response:?}");
    drop(client);
    assert_eq!(metric(served.http, "malware_refusals_total{reason=\"tls_handshake\"}").await, 1.0);

    served.signal("-TERM");
    assert!(served.wait_exit(Duration::from_secs(10)).success());
    let store = Store::open(data_dir.path(), StoreSettings::default()).unwrap();
    let verdicts = store.verdicts(&Sha256Hash::of(&pe).to_hex()).unwrap();
    assert_eq!(verdicts.len(), 1, "{verdicts:?}");
    assert_eq!(verdicts[0].client, "CN=central-7");
}
