//! The real `sentinel agent` process posting this host's connections to an https server: a
//! rustls server on 127.0.0.1 whose certificate a private CA made at test time signed. With the
//! CA given (`--ca-file`) the snapshots arrive; without it the agent refuses the server.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use sentinel_testkit::serve_process::TestProcess;
use serde_json::Value;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

/// A private CA's certificate (PEM) and a server certificate it signed for 127.0.0.1, with the
/// server's TLS configuration.
fn private_ca_and_server_config() -> (String, ServerConfig) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    let ca_key = KeyPair::generate().unwrap();
    let ca_certificate = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);

    let mut server_params =
        CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    server_params.use_authority_key_identifier_extension = true;
    let server_key = KeyPair::generate().unwrap();
    let server_certificate = server_params.signed_by(&server_key, &issuer).unwrap();

    let provider = Arc::new(tokio_rustls::rustls::crypto::aws_lc_rs::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![server_certificate.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der())),
        )
        .unwrap();
    (ca_certificate.pem(), config)
}

/// TLS over a TCP listener, for `axum::serve`: connections whose handshake fails are dropped.
struct TlsListener {
    tcp: tokio::net::TcpListener,
    acceptor: TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((stream, address)) = self.tcp.accept().await else { continue };
            if let Ok(tls) = self.acceptor.accept(stream).await {
                return (tls, address);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// An https ingest endpoint on 127.0.0.1 that keeps every snapshot posted to it.
async fn https_ingest(config: ServerConfig) -> (SocketAddr, Arc<Mutex<Vec<Value>>>) {
    let received = Arc::new(Mutex::new(Vec::new()));
    let kept = Arc::clone(&received);
    let app = axum::Router::new().route(
        "/api/v1/ingest",
        axum::routing::post(move |axum::Json(snapshot): axum::Json<Value>| async move {
            kept.lock().unwrap().push(snapshot);
            axum::http::StatusCode::ACCEPTED
        }),
    );
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = tcp.local_addr().unwrap();
    let listener = TlsListener { tcp, acceptor: TlsAcceptor::from(Arc::new(config)) };
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (address, received)
}

fn agent(server: SocketAddr, host: &str, ca_file: Option<&std::path::Path>) -> TestProcess {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sentinel"));
    command
        .args(["agent", "--server", &format!("https://{server}"), "--interval-ms", "200", "--host", host])
        .env("RUST_LOG", "warn");
    if let Some(path) = ca_file {
        command.arg("--ca-file").arg(path);
    }
    TestProcess::spawn(&mut command)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_posts_over_https_to_a_server_of_a_private_ca() {
    let (ca_pem, config) = private_ca_and_server_config();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca_pem).unwrap();
    let (server, received) = https_ingest(config).await;

    // A connection of this test process for the agent to see.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let _client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let _accepted = listener.accept().unwrap();

    // Without the CA the server's certificate is not trusted: nothing is posted.
    let untrusting = agent(server, "agent-untrusting", None);
    // With it the snapshots arrive, this test's connection among their records.
    let mut trusting = agent(server, "agent-tls", Some(&ca_file));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let found = received.lock().unwrap().iter().any(|snapshot| {
            snapshot["host"] == "agent-tls"
                && snapshot["connections"].as_array().is_some_and(|connections| {
                    connections
                        .iter()
                        .any(|record| record["remote_port"] == port && record["host"] == "agent-tls")
                })
        });
        if found {
            break;
        }
        assert!(Instant::now() < deadline, "no snapshot with this test's connection arrived over https");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The untrusting agent has had as long, and more, to post.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let hosts: Vec<Value> =
        received.lock().unwrap().iter().map(|snapshot| snapshot["host"].clone()).collect();
    assert!(hosts.iter().all(|host| host == "agent-tls"), "{hosts:?}");
    drop(untrusting);

    trusting.signal("-TERM");
    assert!(trusting.wait_exit(Duration::from_secs(10)).success(), "the agent stops cleanly on SIGTERM");
}
