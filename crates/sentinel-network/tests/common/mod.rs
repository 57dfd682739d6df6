//! What the integration tests share: a service served on 127.0.0.1 and a plain HTTP/1.1 client.

#![allow(dead_code)] // Each test file uses part of this module.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use sentinel_network::{NetworkService, NetworkSettings, router};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Starts the service and serves its router on an ephemeral port of 127.0.0.1.
pub async fn serve(settings: NetworkSettings, data_dir: &Path) -> (Arc<NetworkService>, SocketAddr) {
    let service = NetworkService::start(settings, data_dir).expect("service starts");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let app = router(Arc::clone(&service));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (service, address)
}

/// Settings for tests: no collector, small models, fast flushes.
pub fn quiet_settings() -> NetworkSettings {
    let mut settings = NetworkSettings { collect: false, ..NetworkSettings::default() };
    settings.model.min_training_rows = 100;
    settings.model.isolation_forest_trees = 50;
    settings.model.lof_max_rows = 300;
    settings.model.svm_max_rows = 300;
    settings.training.warmup = std::time::Duration::from_secs(3600);
    settings.storage.flush_interval = std::time::Duration::from_millis(50);
    settings
}

/// One HTTP exchange: status and body (parsed as JSON when it is).
pub async fn request(
    address: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> (u16, serde_json::Value) {
    let mut stream = TcpStream::connect(address).await.unwrap();
    let body = body.unwrap_or(b"");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    // A server may answer (413) before reading everything: a failed write is not the test's concern.
    let _ = stream.write_all(body).await;
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    let split = response.windows(4).position(|window| window == b"\r\n\r\n").expect("HTTP response head");
    let head = String::from_utf8_lossy(&response[..split]).to_string();
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    let mut content = response[split + 4..].to_vec();
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        content = dechunk(&content);
    }
    let value = serde_json::from_slice(&content)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&content).to_string()));
    (status, value)
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(line_end) = data.windows(2).position(|window| window == b"\r\n") else { return out };
        let size = usize::from_str_radix(std::str::from_utf8(&data[..line_end]).unwrap().trim(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[line_end + 2..line_end + 2 + size]);
        data = &data[line_end + 4 + size..];
    }
}

pub async fn get(address: SocketAddr, path: &str) -> (u16, serde_json::Value) {
    request(address, "GET", path, None).await
}

pub async fn post(address: SocketAddr, path: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
    request(address, "POST", path, Some(body.to_string().as_bytes())).await
}

/// Polls the status until `accept` returns true, or panics after `timeout`.
pub async fn wait_for_status(
    address: SocketAddr,
    timeout: std::time::Duration,
    accept: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let (status, body) = get(address, "/api/v1/models/status").await;
        assert_eq!(status, 200, "{body}");
        if accept(&body) {
            return body;
        }
        assert!(tokio::time::Instant::now() < deadline, "status never reached the expected state: {body:#}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
