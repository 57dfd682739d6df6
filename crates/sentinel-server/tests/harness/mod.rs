//! A real server on 127.0.0.1 ephemeral ports with a temporary data
//! directory, and what the tests say to it: protocol requests, and HTTP
//! through the testkit's client.

// Each test file uses its own part of the harness.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use sentinel_api::sentinel_auth::AuthSettings;
use sentinel_api::{Access, ApiBuilder, HttpListener, HttpSettings};
use sentinel_protocol::{Command, Request};
use sentinel_sandbox::{CapeClient, SandboxSettings};
use sentinel_server::{Models, ModelsInService, Server, ServerSettings, VT_KEY_SECRET_FILE, VirusTotalStep};
use sentinel_store::{Store, StoreSettings};
use sentinel_virustotal::{KeyHasher, VirusTotalSettings};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub struct TestServer {
    pub tcp: SocketAddr,
    pub http: SocketAddr,
    pub models: Arc<ModelsInService>,
    pub store: Arc<Store>,
    pub data_dir: tempfile::TempDir,
    stop: Option<watch::Sender<bool>>,
    /// The protocol server and the HTTP listener serving its routes, as `sentinel serve` runs them.
    task: Option<JoinHandle<()>>,
}

impl TestServer {
    /// Starts a server with the test defaults changed by `adjust`.
    pub async fn start(adjust: impl FnOnce(&mut ServerSettings)) -> TestServer {
        TestServer::start_in(tempfile::tempdir().unwrap(), adjust, None).await
    }

    /// Starts a server on `data_dir` (a restart passes the one its previous
    /// server returned from [`TestServer::stop`]), with the VirusTotal step when
    /// `virustotal` is given, its key-hash secret in the data directory as
    /// `sentinel serve` keeps it.
    pub async fn start_in(
        data_dir: tempfile::TempDir,
        adjust: impl FnOnce(&mut ServerSettings),
        virustotal: Option<VirusTotalSettings>,
    ) -> TestServer {
        TestServer::launch(data_dir, adjust, virustotal, None).await
    }

    /// Starts a server whose dynamic step runs the CAPE sandbox `sandbox` describes.
    pub async fn start_with_sandbox(
        adjust: impl FnOnce(&mut ServerSettings),
        sandbox: SandboxSettings,
    ) -> TestServer {
        let sandbox = CapeClient::new(sandbox).unwrap();
        TestServer::launch(tempfile::tempdir().unwrap(), adjust, None, Some(sandbox)).await
    }

    async fn launch(
        data_dir: tempfile::TempDir,
        adjust: impl FnOnce(&mut ServerSettings),
        virustotal: Option<VirusTotalSettings>,
        sandbox: Option<CapeClient>,
    ) -> TestServer {
        let mut settings = ServerSettings {
            tcp_listen: "127.0.0.1:0".parse().unwrap(),
            analysis_workers: 2,
            // The tests' many clients all come from 127.0.0.1: one client to the per-client
            // limits, which tests of those limits set lower again.
            max_connections_per_client: 1024,
            max_requests_per_client: 1024,
            client_request_rate: 100_000,
            client_request_burst: 100_000,
            ..ServerSettings::default()
        };
        adjust(&mut settings);
        let store = Arc::new(Store::open(data_dir.path(), StoreSettings::default()).unwrap());
        let models = Arc::new(ModelsInService::new(Models::load(&store, data_dir.path()).unwrap()));
        let virustotal = virustotal.map(|vt_settings| {
            let hasher = KeyHasher::load_or_create(&data_dir.path().join(VT_KEY_SECRET_FILE)).unwrap();
            VirusTotalStep::new(&vt_settings, hasher, Arc::clone(&store)).unwrap()
        });
        let server = Server::bind(
            settings,
            data_dir.path().to_owned(),
            Arc::clone(&models),
            Arc::clone(&store),
            virustotal,
            sandbox,
            sentinel_server::ClientRecords {
                access_log: sentinel_transport::AccessLog::off(),
                addresses: sentinel_privacy::Pseudonymiser::clear(),
            },
        )
        .await
        .unwrap();
        let api = server
            .contribute(ApiBuilder::new(
                HttpSettings::default(),
                Access::unauthenticated(&AuthSettings::default()),
            ))
            .build();
        let listener = HttpListener::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let (tcp, http) = (server.tcp_addr().expect("the plain listener"), listener.local_addr());
        let (stop, _) = watch::channel(false);
        let stopped = |mut receiver: watch::Receiver<bool>| async move {
            let _ = receiver.wait_for(|stopping| *stopping).await;
        };
        let (server_stopped, http_stopped) = (stopped(stop.subscribe()), stopped(stop.subscribe()));
        let task = tokio::spawn(async move {
            let (served, listened) =
                tokio::join!(server.run(server_stopped), listener.serve(&api, http_stopped));
            served.unwrap();
            listened.unwrap();
        });
        TestServer { tcp, http, models, store, data_dir, stop: Some(stop), task: Some(task) }
    }

    /// Signals shutdown and waits for the server to stop; returns its data
    /// directory for a restart.
    pub async fn stop(mut self) -> tempfile::TempDir {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
        self.data_dir
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

/// The reason, step and message of a detailed `No`; panics on anything else.
pub fn detail_of(
    response: sentinel_protocol::Response,
) -> (sentinel_protocol::Reason, Option<String>, String) {
    match response {
        sentinel_protocol::Response::No(Some(detail)) => (
            detail.reason().expect("a known reason"),
            detail.step().map(str::to_owned),
            detail.message().to_owned(),
        ),
        other => panic!("expected a detailed No, got {other:?}"),
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    sentinel_protocol::Sha256Hash::of(bytes).to_hex()
}

/// One HTTP request without a body; returns the status code and the body.
pub async fn http(address: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let answer = sentinel_testkit::http_client::send(address, method, path, None).await;
    (answer.status, answer.body)
}

/// The server's `/status` as JSON.
pub async fn status(address: SocketAddr) -> serde_json::Value {
    let (code, body) = http(address, "GET", "/status").await;
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}
