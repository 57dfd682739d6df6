//! What the integration tests share: a service served on 127.0.0.1, and requests to it through
//! the testkit's HTTP client.

#![allow(dead_code)] // Each test file uses part of this module.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use sentinel_api::sentinel_auth::AuthSettings;
use sentinel_api::{Access, ApiBuilder, HttpListener, HttpSettings};
use sentinel_network::{NetworkService, NetworkSettings, router};
use sentinel_store::{Store, StoreSettings};
use sentinel_testkit::http_client;

/// Starts the service (its model registry in the store of `data_dir`) and serves its routes, in
/// the process's middleware, on an ephemeral port of 127.0.0.1.
pub async fn serve(settings: NetworkSettings, data_dir: &Path) -> (Arc<NetworkService>, SocketAddr) {
    let store = Store::open(data_dir, StoreSettings::default()).expect("store opens");
    let service = NetworkService::start(settings, data_dir, Arc::new(store)).expect("service starts");
    let api = ApiBuilder::new(HttpSettings::default(), Access::unauthenticated(&AuthSettings::default()))
        .service(router(Arc::clone(&service)))
        .build();
    let listener = HttpListener::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let address = listener.local_addr();
    tokio::spawn(async move { listener.serve(&api, std::future::pending()).await.unwrap() });
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
    let answer = http_client::send(address, method, path, body).await;
    (answer.status, answer.json_or_text())
}

pub async fn get(address: SocketAddr, path: &str) -> (u16, serde_json::Value) {
    http_client::get_json(address, path).await
}

pub async fn post(address: SocketAddr, path: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
    http_client::post_json(address, path, body).await
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
