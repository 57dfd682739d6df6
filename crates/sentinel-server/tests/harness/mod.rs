//! A real server on 127.0.0.1 ephemeral ports with a temporary data
//! directory, and small clients (raw TCP, HTTP) to talk to it.

// Each test file uses its own part of the harness.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use sentinel_protocol::{Command, Request};
use sentinel_server::{ModelRegistry, Models, Server, ServerSettings};
use sentinel_store::{Store, StoreSettings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub struct TestServer {
    pub tcp: SocketAddr,
    pub http: SocketAddr,
    pub registry: Arc<ModelRegistry>,
    pub store: Arc<Store>,
    pub data_dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), sentinel_server::ServerError>>>,
}

impl TestServer {
    /// Starts a server with the test defaults changed by `adjust`.
    pub async fn start(adjust: impl FnOnce(&mut ServerSettings)) -> TestServer {
        let data_dir = tempfile::tempdir().unwrap();
        let mut settings = ServerSettings {
            tcp_listen: "127.0.0.1:0".parse().unwrap(),
            http_listen: "127.0.0.1:0".parse().unwrap(),
            analysis_workers: 2,
            ..ServerSettings::default()
        };
        adjust(&mut settings);
        let store = Arc::new(Store::open(data_dir.path(), StoreSettings::default()).unwrap());
        let registry = Arc::new(ModelRegistry::new(Models::load(data_dir.path()).unwrap()));
        let server =
            Server::bind(settings, data_dir.path().to_owned(), Arc::clone(&registry), Arc::clone(&store))
                .await
                .unwrap();
        let (tcp, http) = (server.tcp_addr(), server.http_addr());
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(server.run(async move {
            let _ = stopped.await;
        }));
        TestServer { tcp, http, registry, store, data_dir, stop: Some(stop), task: Some(task) }
    }

    /// Signals shutdown and waits for the server to stop.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }

    pub fn data_path(&self) -> &Path {
        self.data_dir.path()
    }
}

/// A request with the executable, and optionally the SHA-256 and API key fields.
pub fn request(command: Command, executable: &[u8], sha256: Option<&str>, api_key: Option<&str>) -> Request {
    let mut fields = vec![Bytes::copy_from_slice(executable)];
    if sha256.is_some() || api_key.is_some() {
        fields.push(Bytes::copy_from_slice(sha256.unwrap_or_default().as_bytes()));
    }
    if let Some(key) = api_key {
        fields.push(Bytes::copy_from_slice(key.as_bytes()));
    }
    Request::new(command, fields)
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    sentinel_protocol::Sha256Hash::of(bytes).to_hex()
}

/// One HTTP/1.1 request; returns the status code and the body.
pub async fn http(address: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(address).await.unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response.split(' ').nth(1).and_then(|code| code.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default();
    (status, body)
}

/// The server's `/status` as JSON.
pub async fn status(address: SocketAddr) -> serde_json::Value {
    let (code, body) = http(address, "GET", "/status").await;
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}
