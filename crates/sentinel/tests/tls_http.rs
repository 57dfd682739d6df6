//! The real `sentinel serve` facing the network over HTTP: HTTPS with TLS 1.3 only, the
//! certificate swapped on SIGHUP under open connections, and the connection caps per client
//! address that keep one client's idle connections from locking everyone out. Certificates
//! come from a private CA made at test time; the routes used are the open ones (`/healthz`,
//! `/metrics`).

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sentinel_testkit::certificates::TestCa;
use sentinel_testkit::http_client;
use sentinel_testkit::serve_process::{ServeCommand, ServeProcess};
use sentinel_transport::tokio_rustls::rustls::pki_types::pem::PemObject;
use sentinel_transport::tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use sentinel_transport::tokio_rustls::rustls::{self, ClientConfig, ProtocolVersion};
use sentinel_transport::tokio_rustls::{TlsConnector, client::TlsStream};
use sentinel_transport::{TlsClientOptions, client_config};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const SENTINEL: &str = env!("CARGO_BIN_EXE_sentinel");

/// `sentinel serve` over HTTPS with a certificate of `ca` in `dir` (`server.pem`, `server.key`).
fn serve_https(ca: &TestCa, dir: &Path) -> ServeProcess {
    let files = ca.server("first", &dir.join("server.pem"), &dir.join("server.key"));
    ServeCommand::new(SENTINEL, dir.join("data"))
        .args([
            "--tls-cert".as_ref(),
            files.certificate.as_os_str(),
            "--tls-key".as_ref(),
            files.key.as_os_str(),
        ])
        .start()
}

/// A fresh TLS 1.3 client trusting `ca_file` (fresh: it cannot resume an earlier session, so the
/// server sends its certificate).
fn trusting(ca_file: &Path) -> Arc<ClientConfig> {
    client_config(&TlsClientOptions { ca_file: ca_file.to_owned(), ..TlsClientOptions::default() }).unwrap()
}

async fn tls_connect(
    address: SocketAddr,
    config: Arc<ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(address).await?;
    TlsConnector::from(config).connect(ServerName::try_from("localhost").unwrap(), tcp).await
}

/// `GET path` on an open connection, kept open; the status and the body.
async fn get(
    stream: &mut (impl AsyncRead + AsyncWrite + Unpin),
    path: &str,
) -> std::io::Result<(u16, String)> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut received = Vec::new();
    let mut buffer = [0u8; 8192];
    let head_end = loop {
        if let Some(end) = received.windows(4).position(|window| window == b"\r\n\r\n") {
            break end + 4;
        }
        let read = stream.read(&mut buffer).await?;
        if read == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        received.extend_from_slice(&buffer[..read]);
    };
    let head = String::from_utf8_lossy(&received[..head_end]).to_lowercase();
    let status = head.split_whitespace().nth(1).and_then(|code| code.parse().ok()).unwrap_or(0);
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0);
    while received.len() < head_end + length {
        let read = stream.read(&mut buffer).await?;
        if read == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        received.extend_from_slice(&buffer[..read]);
    }
    Ok((status, String::from_utf8_lossy(&received[head_end..head_end + length]).into_owned()))
}

fn leaf_of(stream: &TlsStream<TcpStream>) -> Vec<u8> {
    stream.get_ref().1.peer_certificates().expect("the server's certificate")[0].to_vec()
}

fn pem_der(path: &Path) -> Vec<u8> {
    CertificateDer::from_pem_file(path).unwrap().to_vec()
}

/// The value of the sample `series` (name and labels as exposed) in a Prometheus text page.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_answers_over_tls_1_3_and_refuses_tls_1_2() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("Sentinel test CA");
    let ca_file = ca.write(&dir.path().join("ca.pem"));
    let served = serve_https(&ca, dir.path());

    let mut stream = tls_connect(served.http, trusting(&ca_file)).await.unwrap();
    assert_eq!(stream.get_ref().1.protocol_version(), Some(ProtocolVersion::TLSv1_3));
    assert_eq!(stream.get_ref().1.alpn_protocol(), None, "the client offered no ALPN");
    let (status, body) = get(&mut stream, "/healthz").await.unwrap();
    assert_eq!(status, 200, "{body}");

    // Plain HTTP to the HTTPS port gets no answer.
    assert!(http_client::try_send(served.http, "GET", "/healthz", None).await.is_err());

    // The same trust, TLS 1.2 at most: no connection.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(pem_der(&ca_file))).unwrap();
    let tls12 = ClientConfig::builder_with_provider(sentinel_transport::crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let refused = tls_connect(served.http, Arc::new(tls12)).await;
    assert!(refused.is_err(), "a TLS 1.2 client was served");

    // Both refused handshakes are counted.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, metrics) = get(&mut stream, "/metrics").await.unwrap();
        assert_eq!(status, 200);
        let counted = sample(&metrics, "http_connections_refused_total{reason=\"tls_handshake\"}");
        if counted == Some(2.0) {
            break;
        }
        assert!(Instant::now() < deadline, "refused handshakes counted: {counted:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_serves_a_new_certificate_while_open_connections_keep_working() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("Sentinel test CA");
    let ca_file = ca.write(&dir.path().join("ca.pem"));
    let served = serve_https(&ca, dir.path());
    let first = pem_der(&dir.path().join("server.pem"));

    let mut before = tls_connect(served.http, trusting(&ca_file)).await.unwrap();
    assert_eq!(leaf_of(&before), first);
    assert_eq!(get(&mut before, "/healthz").await.unwrap().0, 200);

    // A broken pair first: SIGHUP keeps the certificate in service.
    std::fs::write(dir.path().join("server.pem"), "-----BEGIN CERTIFICATE-----\nbroken\n").unwrap();
    served.signal("-HUP");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let during = tls_connect(served.http, trusting(&ca_file)).await.unwrap();
    assert_eq!(leaf_of(&during), first);

    ca.server("second", &dir.path().join("server.pem"), &dir.path().join("server.key"));
    let second = pem_der(&dir.path().join("server.pem"));
    served.signal("-HUP");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut after = loop {
        let stream = tls_connect(served.http, trusting(&ca_file)).await.unwrap();
        if leaf_of(&stream) == second {
            break stream;
        }
        assert!(Instant::now() < deadline, "the new certificate was not served after SIGHUP");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(get(&mut after, "/healthz").await.unwrap().0, 200);
    // The connection made with the first certificate still answers.
    assert_eq!(get(&mut before, "/healthz").await.unwrap().0, 200);
}

/// A plain TCP connection from the loopback address `source` (Linux routes all of 127/8 to lo).
async fn connect_from(source: IpAddr, server: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(source, 0)).unwrap();
    socket.connect(server).await.unwrap()
}

/// Whether the server closed `stream` (end of file) within `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut byte = [0u8; 1];
    matches!(tokio::time::timeout(within, stream.read(&mut byte)).await, Ok(Ok(0) | Err(_)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_from_one_address_do_not_lock_out_another() {
    let dir = tempfile::tempdir().unwrap();
    // The defaults: 64 connections per client address, 1024 in all.
    let served = ServeProcess::start(SENTINEL, dir.path());
    let (crowd, other): (IpAddr, IpAddr) = ("127.0.0.2".parse().unwrap(), "127.0.0.3".parse().unwrap());

    let mut idle = Vec::new();
    for _ in 0..300 {
        idle.push(connect_from(crowd, served.http).await);
    }
    let mut stream = connect_from(other, served.http).await;
    let (status, body) = get(&mut stream, "/healthz").await.unwrap();
    assert_eq!(status, 200, "{body}");

    // The 236 beyond the cap were closed at once and counted; the 64 admitted stay open.
    let deadline = Instant::now() + Duration::from_secs(10);
    let metrics = loop {
        let (_, metrics) = get(&mut stream, "/metrics").await.unwrap();
        let refused =
            sample(&metrics, "http_connections_refused_total{reason=\"max_connections_per_client\"}");
        if refused == Some(236.0) {
            break metrics;
        }
        assert!(Instant::now() < deadline, "refusals counted: {refused:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // The 64 of 127.0.0.2 and this one.
    assert_eq!(sample(&metrics, "http_connections_open"), Some(65.0), "{metrics}");
    let closes = futures_util::future::join_all(
        idle.iter_mut().map(|stream| closed_within(stream, Duration::from_secs(2))),
    )
    .await;
    assert_eq!(closes.iter().filter(|closed| **closed).count(), 236);
    // 127.0.0.2 cannot get another connection in, 127.0.0.3 can.
    let mut refused = connect_from(crowd, served.http).await;
    assert!(closed_within(&mut refused, Duration::from_secs(5)).await);
    let mut admitted = connect_from(other, served.http).await;
    assert_eq!(get(&mut admitted, "/healthz").await.unwrap().0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_is_closed_after_the_header_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let served = ServeCommand::new(SENTINEL, dir.path()).config("[http]\nheader_timeout = \"1s\"\n").start();
    let mut silent = TcpStream::connect(served.http).await.unwrap();
    let mut idle = TcpStream::connect(served.http).await.unwrap();
    assert_eq!(get(&mut idle, "/healthz").await.unwrap().0, 200);
    // Neither a first request nor a next one on a kept-alive connection: both closed.
    assert!(closed_within(&mut silent, Duration::from_secs(5)).await, "a silent connection stayed open");
    assert!(closed_within(&mut idle, Duration::from_secs(5)).await, "an idle connection stayed open");
}
