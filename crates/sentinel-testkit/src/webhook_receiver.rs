//! A local receiver of webhook calls on 127.0.0.1 — what a SOAR's hook endpoint or Slack's
//! incoming-webhook endpoint is to Sentinel: it records every request (path, headers, body) and
//! answers from a script of statuses (say, `503` twice and then `200`), then with its default.
//! Slack's endpoint answers `ok`; so does this one on success.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

/// One request received.
#[derive(Debug, Clone)]
pub struct ReceivedCall {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// When it arrived.
    pub at: Instant,
}

impl ReceivedCall {
    /// The body as JSON (panics if it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("the webhook body is JSON")
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }
}

#[derive(Default)]
struct Receiver {
    calls: Vec<ReceivedCall>,
    script: VecDeque<StatusCode>,
}

/// A running receiver.
pub struct WebhookReceiver {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    state: Arc<Mutex<Receiver>>,
    server: tokio::task::JoinHandle<()>,
}

impl WebhookReceiver {
    /// Starts a receiver on an ephemeral port of 127.0.0.1.
    pub async fn start() -> WebhookReceiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
        WebhookReceiver::serve(listener)
    }

    /// Starts a receiver on `port` of 127.0.0.1 (a channel configured before its receiver was
    /// up, as in an outage).
    pub async fn start_on(port: u16) -> WebhookReceiver {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.expect("bind the given port");
        WebhookReceiver::serve(listener)
    }

    fn serve(listener: tokio::net::TcpListener) -> WebhookReceiver {
        let url = format!("http://{}", listener.local_addr().expect("local address"));
        let state = Arc::new(Mutex::new(Receiver::default()));
        let app = Router::new().fallback(receive).with_state(Arc::clone(&state));
        let server =
            tokio::spawn(async move { axum::serve(listener, app).await.expect("the receiver serves") });
        WebhookReceiver { url, state, server }
    }

    /// The next answers, in order, before the default `200 ok`.
    pub fn answer_with(&self, statuses: &[u16]) {
        let mut state = self.state.lock().unwrap();
        state.script.extend(statuses.iter().map(|status| StatusCode::from_u16(*status).expect("a status")));
    }

    /// Every request received so far.
    pub fn calls(&self) -> Vec<ReceivedCall> {
        self.state.lock().unwrap().calls.clone()
    }

    /// Waits until at least `count` requests have arrived (or panics after `within`).
    pub async fn wait_for(&self, count: usize, within: Duration) -> Vec<ReceivedCall> {
        let deadline = Instant::now() + within;
        loop {
            let calls = self.calls();
            if calls.len() >= count {
                return calls;
            }
            assert!(
                Instant::now() < deadline,
                "{} webhook calls after {within:?}, expected {count}",
                calls.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn receive(
    State(state): State<Arc<Mutex<Receiver>>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut state = state.lock().unwrap();
    state.calls.push(ReceivedCall { path: uri.path().to_owned(), headers, body, at: Instant::now() });
    match state.script.pop_front() {
        Some(status) if !status.is_success() => (status, "try later").into_response(),
        _ => (StatusCode::OK, "ok").into_response(),
    }
}
