//! The one HTTP client of the tests: reqwest, to whatever listener a test started on
//! 127.0.0.1 (the malware server's, the network API's, `sentinel serve`'s). Raw sockets stay
//! only where a test sends bytes no HTTP client would.
//!
//! A client is built per request: tests each run their own tokio runtime, and a pooled
//! connection must not outlive the runtime that opened it. Proxies from the environment are
//! ignored, since the listener is always local.
//!
//! [`ApiClient`] sends a bearer token with every request, as a listener with authentication
//! on (the default of `sentinel serve`) requires; the functions of this module send none.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;

/// Longer than anything a test waits for, short enough that a stuck server fails the test.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// A response: its status, `Content-Type`, headers and body.
#[derive(Debug, Clone)]
pub struct HttpAnswer {
    pub status: u16,
    pub content_type: Option<String>,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl HttpAnswer {
    /// The body as JSON; panics, showing the body, when it is not.
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|error| panic!("not JSON ({error}): status {} body {:?}", self.status, self.body))
    }

    /// The body as JSON, or as a JSON string when it is not JSON.
    pub fn json_or_text(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|_| Value::String(self.body.clone()))
    }
}

/// Sends `method path` to `address`, with `body` as `application/json` when given.
pub async fn send(address: SocketAddr, method: &str, path: &str, body: Option<&[u8]>) -> HttpAnswer {
    try_send(address, method, path, body)
        .await
        .unwrap_or_else(|error| panic!("{method} {path} on {address}: {error:?}"))
}

/// [`send`], for tests where the server may be gone (killed mid-request): the transport error
/// instead of a panic.
pub async fn try_send(
    address: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> Result<HttpAnswer, reqwest::Error> {
    send_with_headers(address, method, path, &[], body).await
}

/// Sends `method path` with the extra `headers` and `body` (as `application/json` unless
/// `headers` name another `Content-Type`).
pub async fn send_with_headers(
    address: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Result<HttpAnswer, reqwest::Error> {
    let client =
        reqwest::Client::builder().no_proxy().timeout(REQUEST_TIMEOUT).build().expect("an HTTP client");
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("an HTTP method");
    let mut request = client.request(method, format!("http://{address}{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    if let Some(body) = body {
        if !headers.iter().any(|(name, _)| name.eq_ignore_ascii_case("content-type")) {
            request = request.header(reqwest::header::CONTENT_TYPE, "application/json");
        }
        request = request.body(body.to_vec());
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let headers = response.headers().clone();
    let body = response.text().await?;
    Ok(HttpAnswer { status, content_type, headers, body })
}

/// `GET path`: the status and the body as JSON (a JSON string when the body is not JSON).
pub async fn get_json(address: SocketAddr, path: &str) -> (u16, Value) {
    let answer = send(address, "GET", path, None).await;
    (answer.status, answer.json_or_text())
}

/// `POST path` with `body`: the status and the body as JSON (a JSON string when it is not).
pub async fn post_json(address: SocketAddr, path: &str, body: &Value) -> (u16, Value) {
    let answer = send(address, "POST", path, Some(body.to_string().as_bytes())).await;
    (answer.status, answer.json_or_text())
}

/// A listener and the bearer token sent with every request (none: no `Authorization`).
#[derive(Debug, Clone)]
pub struct ApiClient {
    pub address: SocketAddr,
    pub token: Option<String>,
}

impl ApiClient {
    pub fn new(address: SocketAddr, token: Option<String>) -> ApiClient {
        ApiClient { address, token }
    }

    /// `Authorization: Bearer TOKEN`, when there is a token.
    pub fn authorization(&self) -> Option<String> {
        self.token.as_ref().map(|token| format!("Bearer {token}"))
    }

    /// [`send`] with the token.
    pub async fn send(&self, method: &str, path: &str, body: Option<&[u8]>) -> HttpAnswer {
        self.try_send(method, path, body)
            .await
            .unwrap_or_else(|error| panic!("{method} {path} on {}: {error:?}", self.address))
    }

    /// [`try_send`] with the token.
    pub async fn try_send(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<HttpAnswer, reqwest::Error> {
        let authorization = self.authorization();
        let headers: Vec<(&str, &str)> =
            authorization.as_deref().map(|value| ("authorization", value)).into_iter().collect();
        send_with_headers(self.address, method, path, &headers, body).await
    }

    /// [`get_json`] with the token.
    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let answer = self.send("GET", path, None).await;
        (answer.status, answer.json_or_text())
    }

    /// [`post_json`] with the token.
    pub async fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        let answer = self.send("POST", path, Some(body.to_string().as_bytes())).await;
        (answer.status, answer.json_or_text())
    }

    /// Posts `snapshot` to `/api/v1/ingest` as an agent does: 503 (the pipeline is busy, for
    /// instance with the live collector's first sighting of every socket of the host) means try
    /// again shortly. Panics on any other answer than 202, or when busy for 30 s.
    pub async fn ingest(&self, snapshot: &Value) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let answer = self.send("POST", "/api/v1/ingest", Some(snapshot.to_string().as_bytes())).await;
            if answer.status == 202 {
                return;
            }
            assert_eq!(answer.status, 503, "ingest: {}", answer.body);
            assert!(std::time::Instant::now() < deadline, "the pipeline stayed busy: {}", answer.body);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Gives the network service a model to score with: two minutes of an ordinary web client
    /// of `host` ([`crate::connection_records::web_client_history`]) ingested, stored, and a
    /// model trained on them (`/api/v1/train`); returns once the service is `ready`. The
    /// service's `[network.model] min_training_rows` must be 300 or less.
    pub async fn train_network_model(&self, host: &str) {
        let start = std::time::SystemTime::now() - Duration::from_secs(125);
        for snapshot in crate::connection_records::web_client_history(host, start, 120) {
            self.ingest(&snapshot).await;
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let status = self.get_json("/api/v1/models/status").await.1;
            if status["storage"]["pending_snapshots"] == 0 && status["warmup"]["rows"].as_u64() >= Some(300) {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "history not stored: {status:#}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (status, job) = self.post_json("/api/v1/train", &serde_json::json!({})).await;
        assert_eq!(status, 202, "{job}");
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while self.get_json("/api/v1/models/status").await.1["state"] != "ready" {
            assert!(std::time::Instant::now() < deadline, "no model");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
