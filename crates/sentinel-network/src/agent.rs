//! The remote agent (`sentinel agent --server URL`): runs this host's collector and posts each
//! snapshot to the server's `/api/v1/ingest`, the same JSON a Windows endpoint application posts
//! (`docs/collectors.md`).
//!
//! Snapshots are queued while the server is unreachable (at most `max_queued_snapshots`, the
//! oldest dropped first) and sent in order, since the server follows connections from one
//! snapshot to the next. A snapshot the server refuses as invalid (a 4xx other than 408 and 429,
//! which say the request timed out or was throttled, and are sent again) is dropped and logged:
//! sending it again would not help. Uploads go through reqwest over http or https (rustls); a
//! server whose certificate a private CA signed is trusted through that CA's PEM file
//! (`--ca-file`), in addition to the system's roots.

use std::collections::VecDeque;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use sentinel_netmon::{CollectorSettings, Snapshot};

use crate::settings::AgentSettings;

/// Why the agent stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("invalid server URL {url:?}: {reason}")]
    Url { url: String, reason: &'static str },
    #[error("cannot use the CA file {path}: {reason}")]
    CaFile { path: PathBuf, reason: String },
    #[error("invalid agent settings: {0}")]
    Settings(String),
    #[error("collector: {0}")]
    Collector(String),
}

/// Why one upload failed.
#[derive(Debug, thiserror::Error)]
enum UploadError {
    #[error("server unreachable: {0}")]
    Transport(String),
    #[error("server answered {status}: {body}")]
    Status { status: u16, body: String },
}

impl UploadError {
    /// Whether sending the same snapshot again may succeed.
    fn is_transient(&self) -> bool {
        match self {
            // 408: the server's request timeout ran out (a slow link), not a bad snapshot.
            UploadError::Status { status, .. } => matches!(*status, 408 | 429) || *status >= 500,
            UploadError::Transport(_) => true,
        }
    }
}

/// The most of an error answer kept for the log.
const MAX_ERROR_BODY: usize = 500;

/// Where and how snapshots are posted.
struct Uploader {
    http: reqwest::Client,
    /// `{server}/api/v1/ingest`.
    url: reqwest::Url,
    authorization: Option<HeaderValue>,
}

impl Uploader {
    /// An uploader to `server` (an `http://` or `https://` base URL), trusting the CA
    /// certificates of the PEM file `ca_file` besides the system's.
    fn new(server: &str, ca_file: Option<&Path>, settings: &AgentSettings) -> Result<Uploader, AgentError> {
        let url = ingest_url(server)?;
        let mut builder = reqwest::Client::builder()
            .timeout(settings.request_timeout)
            // A redirect could carry the Authorization header to another host.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("sentinel-agent/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = ca_file {
            let fail = |reason: String| AgentError::CaFile { path: path.to_owned(), reason };
            let pem = std::fs::read(path).map_err(|error| fail(error.to_string()))?;
            let certificates =
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|error| fail(error.to_string()))?;
            if certificates.is_empty() {
                return Err(fail("no PEM certificate in it".to_owned()));
            }
            builder = builder.tls_certs_merge(certificates);
        }
        let http = builder.build().map_err(|error| AgentError::Settings(describe(&error)))?;
        let authorization = settings
            .authorization
            .as_deref()
            .map(|value| {
                let mut header = HeaderValue::from_str(value).map_err(|_| {
                    AgentError::Settings("agent.authorization is not a valid header value".to_owned())
                })?;
                header.set_sensitive(true);
                Ok(header)
            })
            .transpose()?;
        Ok(Uploader { http, url, authorization })
    }

    /// Posts one snapshot (its JSON).
    async fn post(&self, body: Bytes) -> Result<(), UploadError> {
        let mut request =
            self.http.post(self.url.clone()).header(CONTENT_TYPE, "application/json").body(body);
        if let Some(authorization) = &self.authorization {
            request = request.header(AUTHORIZATION, authorization.clone());
        }
        let mut response = request.send().await.map_err(|error| UploadError::Transport(describe(&error)))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        // The start of the answer says why; the rest is not read.
        let mut body = Vec::new();
        while body.len() < MAX_ERROR_BODY {
            match response.chunk().await {
                Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                _ => break,
            }
        }
        let body = String::from_utf8_lossy(&body).chars().take(MAX_ERROR_BODY).collect();
        Err(UploadError::Status { status: status.as_u16(), body })
    }
}

/// `{server}/api/v1/ingest` for a base URL such as `https://sentinel.example:9501/prefix/`.
fn ingest_url(server: &str) -> Result<reqwest::Url, AgentError> {
    let fail = |reason| AgentError::Url { url: server.to_owned(), reason };
    let mut url = reqwest::Url::parse(server).map_err(|_| fail("not a URL"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(fail("only http:// and https:// are supported"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(fail("no host"));
    }
    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        return Err(fail("a base URL has no query, fragment or user"));
    }
    url.path_segments_mut()
        .map_err(|_| fail("not a base URL"))?
        .pop_if_empty()
        .extend(["api", "v1", "ingest"]);
    Ok(url)
}

/// A transport error with its causes (TLS and connection errors say why only in their causes).
fn describe(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Runs the agent until `shutdown` completes.
#[cfg(target_os = "linux")]
pub async fn run(
    server: &str,
    ca_file: Option<&Path>,
    collector_settings: &CollectorSettings,
    settings: &AgentSettings,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    let uploader = Uploader::new(server, ca_file, settings)?;
    collector_settings.validate().map_err(|error| AgentError::Settings(error.to_string()))?;
    let collector = sentinel_netmon::LinuxCollector::from_settings(collector_settings)
        .map_err(|error| AgentError::Collector(error.to_string()))?;
    let collect = move |mut collector: sentinel_netmon::LinuxCollector| {
        use sentinel_netmon::Collector;
        let snapshot = collector.collect();
        (collector, snapshot)
    };
    run_loop(uploader, collector, collect, collector_settings.interval, settings, shutdown).await;
    Ok(())
}

async fn run_loop<C: Send + 'static, E: std::fmt::Display + Send + 'static>(
    uploader: Uploader,
    collector: C,
    collect: impl Fn(C) -> (C, Result<Snapshot, E>) + Send + Sync + Copy + 'static,
    interval: Duration,
    settings: &AgentSettings,
    shutdown: impl Future<Output = ()>,
) {
    let mut queue: VecDeque<Bytes> = VecDeque::new();
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut collector = Some(collector);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = ticks.tick() => {}
        }
        let Some(current) = collector.take() else { return };
        let Ok((returned, snapshot)) = tokio::task::spawn_blocking(move || collect(current)).await else {
            tracing::error!("the collector panicked; the agent stops");
            return;
        };
        collector = Some(returned);
        match snapshot.map(|snapshot| serde_json::to_vec(&snapshot)) {
            Ok(Ok(body)) => {
                if queue.len() >= settings.max_queued_snapshots {
                    queue.pop_front();
                    tracing::warn!("server unreachable for too long: oldest snapshot dropped");
                }
                queue.push_back(Bytes::from(body));
            }
            Ok(Err(error)) => tracing::error!(%error, "snapshot could not be serialised"),
            Err(error) => tracing::warn!(%error, "collection failed"),
        }
        while let Some(body) = queue.front() {
            match uploader.post(body.clone()).await {
                Ok(()) => {
                    queue.pop_front();
                }
                Err(error) if error.is_transient() => {
                    tracing::warn!(%error, queued = queue.len(), "snapshot upload failed; will retry");
                    break;
                }
                Err(error) => {
                    tracing::error!(%error, "server refused a snapshot; dropped");
                    queue.pop_front();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::SystemTime;

    use super::*;

    #[test]
    fn the_ingest_url_is_under_the_base_url_of_http_or_https() {
        let url = |server: &str| ingest_url(server).map(|url| url.to_string());
        assert_eq!(url("http://127.0.0.1:8080").unwrap(), "http://127.0.0.1:8080/api/v1/ingest");
        assert_eq!(
            url("https://sentinel.example/base/").unwrap(),
            "https://sentinel.example/base/api/v1/ingest"
        );
        for refused in
            ["ftp://sentinel.example", "http://", "sentinel.example:80", "http://h/?q=1", "http://u@h/"]
        {
            assert!(url(refused).is_err(), "{refused}");
        }
    }

    #[test]
    fn timeouts_throttling_and_server_errors_are_retried_other_refusals_are_not() {
        let status = |status| UploadError::Status { status, body: String::new() };
        for retried in [408, 429, 500, 503] {
            assert!(status(retried).is_transient(), "{retried}");
        }
        for dropped in [400, 401, 403, 404, 413] {
            assert!(!status(dropped).is_transient(), "{dropped}");
        }
        assert!(UploadError::Transport("connection refused".into()).is_transient());
    }

    #[test]
    fn a_ca_file_that_is_missing_or_holds_no_certificate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        for path in [dir.path().join("absent.pem"), empty] {
            let error = Uploader::new("https://h", Some(&path), &AgentSettings::default()).err().unwrap();
            assert!(matches!(&error, AgentError::CaFile { path: p, .. } if *p == path), "{error}");
        }
    }

    #[tokio::test]
    async fn snapshots_reach_a_server_in_order_after_it_comes_back() {
        // A port held bound but not listening: the first uploads are refused and must be queued.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let address = socket.local_addr().unwrap();
        let uploader = Uploader::new(&format!("http://{address}"), None, &AgentSettings::default()).unwrap();
        let counter = Arc::new(Mutex::new(0u32));
        let collect = |counter: Arc<Mutex<u32>>| {
            let host = {
                let mut n = counter.lock().unwrap();
                *n += 1;
                format!("host-{n}")
            };
            let snapshot = Snapshot {
                schema_version: sentinel_netmon::SCHEMA_VERSION,
                host,
                timestamp: SystemTime::now(),
                connections: Vec::new(),
                interfaces: Vec::new(),
                processes: Vec::new(),
                process_info: Vec::new(),
            };
            (counter, Ok::<_, std::io::Error>(snapshot))
        };
        let received = Arc::new(Mutex::new(Vec::<String>::new()));
        let server_received = Arc::clone(&received);
        let server = async move {
            tokio::time::sleep(Duration::from_millis(350)).await;
            let app = axum::Router::new().route(
                "/api/v1/ingest",
                axum::routing::post(move |axum::Json(snapshot): axum::Json<serde_json::Value>| async move {
                    server_received.lock().unwrap().push(snapshot["host"].as_str().unwrap().to_owned());
                    axum::http::StatusCode::ACCEPTED
                }),
            );
            axum::serve(socket.listen(16).unwrap(), app).await.unwrap();
        };
        let settings = AgentSettings::default();
        let stop = tokio::time::sleep(Duration::from_millis(900));
        tokio::select! {
            _ = run_loop(uploader, Arc::clone(&counter), collect, Duration::from_millis(100), &settings, stop) => {}
            _ = server => {}
        }
        let received = received.lock().unwrap().clone();
        assert!(received.len() >= 5, "{received:?}");
        let expected: Vec<String> = (1..=received.len()).map(|n| format!("host-{n}")).collect();
        assert_eq!(received, expected, "every snapshot, in order, none lost while the server was down");
    }
}
