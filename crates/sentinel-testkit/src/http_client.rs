//! The one HTTP client of the tests: reqwest, to whatever listener a test started on
//! 127.0.0.1 (the malware server's, the network API's, `sentinel serve`'s). Raw sockets stay
//! only where a test sends bytes no HTTP client would.
//!
//! A client is built per request: tests each run their own tokio runtime, and a pooled
//! connection must not outlive the runtime that opened it. Proxies from the environment are
//! ignored, since the listener is always local.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;

/// Longer than anything a test waits for, short enough that a stuck server fails the test.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// A response: its status, `Content-Type` and body.
#[derive(Debug, Clone)]
pub struct HttpAnswer {
    pub status: u16,
    pub content_type: Option<String>,
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
    let client =
        reqwest::Client::builder().no_proxy().timeout(REQUEST_TIMEOUT).build().expect("an HTTP client");
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("an HTTP method");
    let mut request = client.request(method, format!("http://{address}{path}"));
    if let Some(body) = body {
        request = request.header(reqwest::header::CONTENT_TYPE, "application/json").body(body.to_vec());
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let body = response.text().await?;
    Ok(HttpAnswer { status, content_type, body })
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
