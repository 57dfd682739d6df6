//! The remote agent (`sentinel agent --server URL`): runs this host's collector and posts each
//! snapshot to the server's `/api/v1/ingest`, the same JSON a Windows endpoint application posts
//! (`docs/collectors.md`).
//!
//! Snapshots are queued while the server is unreachable (at most `max_queued_snapshots`, the
//! oldest dropped first) and sent in order, since the server follows connections from one
//! snapshot to the next. A snapshot the server refuses as invalid (4xx other than 429) is
//! dropped and logged: sending it again would not help. The client speaks plain HTTP/1.1 and
//! needs no HTTP library; put the server behind a TLS-terminating proxy to cross untrusted
//! networks.

use std::collections::VecDeque;
use std::future::Future;
use std::time::Duration;

use sentinel_netmon::{CollectorSettings, Snapshot};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::settings::AgentSettings;

/// Why the agent stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("invalid server URL {url:?}: {reason}")]
    Url { url: String, reason: &'static str },
    #[error("invalid collector settings: {0}")]
    Settings(String),
    #[error("collector: {0}")]
    Collector(String),
}

/// Why one upload failed.
#[derive(Debug, thiserror::Error)]
enum UploadError {
    #[error("server unreachable: {0}")]
    Io(#[from] std::io::Error),
    #[error("no answer within the timeout")]
    Timeout,
    #[error("server answered {status}: {body}")]
    Status { status: u16, body: String },
    #[error("malformed HTTP response")]
    Malformed,
}

impl UploadError {
    /// Whether sending the same snapshot again may succeed.
    fn is_transient(&self) -> bool {
        match self {
            UploadError::Status { status, .. } => *status == 429 || *status >= 500,
            _ => true,
        }
    }
}

/// `http://host:port/prefix`, split.
struct ServerUrl {
    authority: String,
    path: String,
}

impl ServerUrl {
    fn parse(url: &str) -> Result<ServerUrl, AgentError> {
        let fail = |reason| AgentError::Url { url: url.to_owned(), reason };
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| fail("only http:// is supported (use a TLS-terminating proxy for https)"))?;
        let (authority, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if authority.is_empty() {
            return Err(fail("no host"));
        }
        let authority = if authority.rsplit_once(':').is_some_and(|(_, port)| port.parse::<u16>().is_ok()) {
            authority.to_owned()
        } else {
            format!("{authority}:80")
        };
        let prefix = prefix.trim_end_matches('/');
        let path =
            if prefix.is_empty() { "/api/v1/ingest".to_owned() } else { format!("/{prefix}/api/v1/ingest") };
        Ok(ServerUrl { authority, path })
    }
}

/// Runs the agent until `shutdown` completes.
#[cfg(target_os = "linux")]
pub async fn run(
    server: &str,
    collector_settings: &CollectorSettings,
    settings: &AgentSettings,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    let url = ServerUrl::parse(server)?;
    collector_settings.validate().map_err(|error| AgentError::Settings(error.to_string()))?;
    let collector = sentinel_netmon::LinuxCollector::from_settings(collector_settings)
        .map_err(|error| AgentError::Collector(error.to_string()))?;
    let collect = move |mut collector: sentinel_netmon::LinuxCollector| {
        use sentinel_netmon::Collector;
        let snapshot = collector.collect();
        (collector, snapshot)
    };
    run_loop(url, collector, collect, collector_settings.interval, settings, shutdown).await;
    Ok(())
}

async fn run_loop<C: Send + 'static, E: std::fmt::Display + Send + 'static>(
    url: ServerUrl,
    collector: C,
    collect: impl Fn(C) -> (C, Result<Snapshot, E>) + Send + Sync + Copy + 'static,
    interval: Duration,
    settings: &AgentSettings,
    shutdown: impl Future<Output = ()>,
) {
    let mut queue: VecDeque<Vec<u8>> = VecDeque::new();
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let timeout = settings.request_timeout;
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
                queue.push_back(body);
            }
            Ok(Err(error)) => tracing::error!(%error, "snapshot could not be serialised"),
            Err(error) => tracing::warn!(%error, "collection failed"),
        }
        while let Some(body) = queue.front() {
            match post(&url, body, timeout, settings.authorization.as_deref()).await {
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

async fn post(
    url: &ServerUrl,
    body: &[u8],
    timeout: Duration,
    authorization: Option<&str>,
) -> Result<(), UploadError> {
    tokio::time::timeout(timeout, async {
        let mut stream = TcpStream::connect(&url.authority).await?;
        let authorization = authorization.map(|value| format!("Authorization: {value}\r\n")).unwrap_or_default();
        let head = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{authorization}Connection: close\r\n\r\n",
            url.path,
            url.authority,
            body.len()
        );
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        let text = String::from_utf8_lossy(&response);
        let status: u16 =
            text.split(' ').nth(1).and_then(|code| code.parse().ok()).ok_or(UploadError::Malformed)?;
        if (200..300).contains(&status) {
            return Ok(());
        }
        let body = text.split_once("\r\n\r\n").map_or("", |(_, body)| body).chars().take(500).collect();
        Err(UploadError::Status { status, body })
    })
    .await
    .map_err(|_| UploadError::Timeout)?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_split_and_https_is_refused() {
        let url = ServerUrl::parse("http://127.0.0.1:8080").unwrap();
        assert_eq!((url.authority.as_str(), url.path.as_str()), ("127.0.0.1:8080", "/api/v1/ingest"));
        let url = ServerUrl::parse("http://sentinel.example/base/").unwrap();
        assert_eq!(
            (url.authority.as_str(), url.path.as_str()),
            ("sentinel.example:80", "/base/api/v1/ingest")
        );
        assert!(ServerUrl::parse("https://sentinel.example").is_err());
        assert!(ServerUrl::parse("http:///x").is_err());
    }

    #[tokio::test]
    async fn snapshots_reach_a_server_in_order_after_it_comes_back() {
        use std::sync::{Arc, Mutex};
        use std::time::SystemTime;

        // Reserve a port, then close it: the first uploads find nobody and must be queued.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let url = ServerUrl::parse(&format!("http://127.0.0.1:{port}")).unwrap();
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
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                let mut data = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let n = stream.read(&mut chunk).await.unwrap();
                    data.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&data).to_string();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let length: usize = head
                            .lines()
                            .find_map(|line| line.strip_prefix("Content-Length: "))
                            .unwrap()
                            .parse()
                            .unwrap();
                        if body.len() >= length {
                            let snapshot: serde_json::Value = serde_json::from_str(body).unwrap();
                            server_received
                                .lock()
                                .unwrap()
                                .push(snapshot["host"].as_str().unwrap().to_owned());
                            break;
                        }
                    }
                }
                stream.write_all(b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n").await.unwrap();
            }
        };
        let settings = AgentSettings::default();
        let stop = tokio::time::sleep(Duration::from_millis(900));
        tokio::select! {
            _ = run_loop(url, Arc::clone(&counter), collect, Duration::from_millis(100), &settings, stop) => {}
            _ = server => {}
        }
        let received = received.lock().unwrap().clone();
        assert!(received.len() >= 5, "{received:?}");
        let expected: Vec<String> = (1..=received.len()).map(|n| format!("host-{n}")).collect();
        assert_eq!(received, expected, "every snapshot, in order, none lost while the server was down");
    }
}
