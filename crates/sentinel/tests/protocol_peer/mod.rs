//! What the protocol tests of the binary share: certificates made by `sentinel certs init`,
//! sockets bound to a chosen loopback source address, raw request and response bytes, the
//! server's metrics and resident memory.

// Each test file uses its own part of this module.
#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use sentinel_protocol::{Limits, Request, decode_response, encode_request};
use sentinel_transport::TlsClientOptions;
use sentinel_transport::tokio_rustls::rustls::ClientConfig;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

pub const SENTINEL: &str = env!("CARGO_BIN_EXE_sentinel");

/// The files of `sentinel certs init DIR`.
pub struct Certificates {
    pub dir: PathBuf,
}

impl Certificates {
    /// Runs `sentinel certs init DIR --client-name CLIENT`; panics unless it succeeds.
    pub fn init(dir: &Path, client_name: &str) -> Certificates {
        let output = Command::new(SENTINEL)
            .args(["certs", "init"])
            .arg(dir)
            .args(["--client-name", client_name])
            .output()
            .expect("run sentinel certs init");
        assert!(output.status.success(), "certs init: {}", String::from_utf8_lossy(&output.stderr));
        Certificates { dir: dir.to_owned() }
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// `serve` arguments for a TLS protocol listener on a free loopback port.
    pub fn serve_args(&self) -> Vec<std::ffi::OsString> {
        vec![
            "--tcp-tls-listen".into(),
            "127.0.0.1:0".into(),
            "--tcp-tls-cert".into(),
            self.file("server.pem").into(),
            "--tcp-tls-key".into(),
            self.file("server.key").into(),
        ]
    }

    /// A TLS 1.3 client trusting the private CA, with the client certificate when `mutual`.
    pub fn client_config(&self, mutual: bool) -> Arc<ClientConfig> {
        sentinel_transport::client_config(&TlsClientOptions {
            ca_file: self.file("ca.pem"),
            certificate_file: mutual.then(|| self.file("client.pem")),
            key_file: mutual.then(|| self.file("client.key")),
            alpn_protocols: Vec::new(),
        })
        .expect("a client configuration from the certificates")
    }
}

/// A TCP connection to `server` from the loopback address `127.0.0.<last>`.
pub async fn connect_from(last: u8, server: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((Ipv4Addr::new(127, 0, 0, last), 0)))?;
    socket.connect(server).await
}

/// The bytes of `request` on the wire.
pub fn request_bytes(request: &Request) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode_request(request, &mut out);
    out.to_vec()
}

/// The options request turning error details on.
pub fn options_request() -> Request {
    Request::options(&[sentinel_protocol::OPTION_ERROR_DETAIL])
}

/// Sends `bytes` and reads exactly one response frame, returning its raw bytes (a
/// connection with error details on when `error_detail`).
pub async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    bytes: &[u8],
    error_detail: bool,
) -> Vec<u8> {
    stream.write_all(bytes).await.expect("send the request");
    stream.flush().await.expect("flush the request");
    read_response(stream, error_detail).await.expect("a response")
}

/// Reads one response frame's raw bytes; `None` when the connection ends first.
pub async fn read_response<S: AsyncRead + Unpin>(stream: &mut S, error_detail: bool) -> Option<Vec<u8>> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Ok(Some((_, len))) = decode_response(&buffer, &Limits::default(), error_detail) {
            assert_eq!(len, buffer.len(), "nothing may follow a response before the next request");
            return Some(buffer);
        }
        match tokio::time::timeout(Duration::from_secs(30), stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return None,
            Ok(Ok(read)) => buffer.extend_from_slice(&chunk[..read]),
            Err(_) => panic!("no response within 30 s"),
        }
    }
}

/// Whether the server closes `stream` within `within` without sending anything.
pub async fn closed_silently(stream: &mut TcpStream, within: Duration) -> bool {
    let mut byte = [0u8; 1];
    matches!(tokio::time::timeout(within, stream.read(&mut byte)).await, Ok(Ok(0)) | Ok(Err(_)))
}

/// A static-analysis request for `executable`.
pub fn static_request(executable: &[u8]) -> Request {
    Request::new(sentinel_protocol::Command::StaticAnalyse, vec![Bytes::copy_from_slice(executable)])
}

/// The value of the metric series `series` (name and labels as exposed), 0 when absent.
pub async fn metric(http: SocketAddr, series: &str) -> f64 {
    let answer = sentinel_testkit::http_client::send(http, "GET", "/metrics", None).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    answer
        .body
        .lines()
        .find_map(|line| line.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .map_or(0.0, |value| value.trim().parse().expect("a metric value"))
}

/// Resident memory of process `pid`, in KiB (Linux `/proc`).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/PID/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}
