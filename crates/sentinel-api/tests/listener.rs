//! The listener over real sockets on 127.0.0.1: a small service contributes routes, a readiness
//! check and a metric, and every answer — the handlers', the router's and the middleware's —
//! is checked as a client sees it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::extract::State;
use sentinel_api::prometheus_client::metrics::counter::Counter;
use sentinel_api::sentinel_auth::AuthSettings;
use sentinel_api::{Access, ApiBuilder, ApiError, HttpListener, HttpSettings, Readiness, ServiceRoutes};
use serde_json::{Map, Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use utoipa_axum::routes;

/// The state of the echo route: how many bodies it echoed.
#[derive(Clone)]
struct Echo {
    echoed: Counter,
}

/// Answers the body it was sent.
#[utoipa::path(post, path = "/echo", security(("bearer" = ["network:ingest"])), responses((status = 200, body = String)))]
async fn echo(State(echo): State<Echo>, body: String) -> String {
    echo.echoed.inc();
    body
}

/// Answers after two seconds.
#[utoipa::path(get, path = "/slow", security(("bearer" = ["network:read"])), responses((status = 200, body = String)))]
async fn slow() -> &'static str {
    tokio::time::sleep(Duration::from_secs(2)).await;
    "late"
}

/// Always fails, as a handler does.
#[utoipa::path(get, path = "/teapot", security(("bearer" = ["network:read"])), responses((status = 418, body = sentinel_api::ErrorBody)))]
async fn teapot() -> Result<(), ApiError> {
    Err(ApiError::new(axum::http::StatusCode::IM_A_TEAPOT, "short and stout"))
}

async fn start(settings: HttpSettings) -> (SocketAddr, Arc<AtomicBool>) {
    let ready = Arc::new(AtomicBool::new(true));
    let state = Echo { echoed: Counter::default() };
    let mut api = ApiBuilder::new(settings, Access::unauthenticated(&AuthSettings::default()));
    api.metrics().register("echoes", "Bodies echoed.", state.echoed.clone());
    let flag = Arc::clone(&ready);
    let api = api
        .service(
            ServiceRoutes::new()
                .routes(routes!(echo))
                .routes(routes!(slow))
                .routes(routes!(teapot))
                .with_state(state),
        )
        .readiness(move || {
            let ready = flag.load(Ordering::Relaxed);
            async move {
                let mut details = Map::new();
                details.insert("echo".to_owned(), json!(if ready { "up" } else { "down" }));
                Readiness { ready, details }
            }
        })
        .build();
    let listener = HttpListener::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let address = listener.local_addr();
    tokio::spawn(async move { listener.serve(&api, std::future::pending()).await.unwrap() });
    (address, ready)
}

/// One HTTP/1.1 exchange: status, lower-cased head and body.
async fn exchange(address: SocketAddr, method: &str, path: &str, body: &[u8]) -> (u16, String, String) {
    let mut stream = TcpStream::connect(address).await.unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    // A server may answer (413) before reading everything.
    let _ = stream.write_all(body).await;
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    let response = String::from_utf8(response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    (head.split(' ').nth(1).unwrap().parse().unwrap(), head.to_ascii_lowercase(), body.to_owned())
}

fn error_of(body: &str) -> String {
    let value: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {body:?}"));
    value["error"].as_str().unwrap_or_else(|| panic!("no error in {value}")).to_owned()
}

#[tokio::test]
async fn every_error_is_json_whatever_answers_it() {
    let settings = HttpSettings {
        max_body_bytes: 1024,
        request_timeout: Duration::from_millis(300),
        ..HttpSettings::default()
    };
    let (address, _) = start(settings).await;
    let (status, _, body) = exchange(address, "POST", "/echo", b"hello").await;
    assert_eq!((status, body.as_str()), (200, "hello"));

    let big = vec![b'x'; 4096];
    let cases: [(&str, &str, &[u8], u16, &str); 5] = [
        ("GET", "/nowhere", b"", 404, "no route /nowhere"),
        ("GET", "/echo", b"", 405, "allowed: POST"),
        ("POST", "/echo", &big, 413, "larger than 1024 bytes"),
        ("GET", "/slow", b"", 408, "no answer within 300ms"),
        ("GET", "/teapot", b"", 418, "short and stout"),
    ];
    for (method, path, body, expected, message) in cases {
        let (status, head, answer) = exchange(address, method, path, body).await;
        assert_eq!(status, expected, "{method} {path}: {answer}");
        assert!(head.contains("content-type: application/json"), "{method} {path}: {head}");
        let error = error_of(&answer);
        assert!(error.contains(message), "{method} {path}: {error:?} lacks {message:?}");
        if status == 405 {
            assert!(head.contains("allow: post"), "{head}");
        }
    }
}

#[tokio::test]
async fn readiness_merges_what_each_service_says() {
    let (address, ready) = start(HttpSettings::default()).await;
    let (status, _, body) = exchange(address, "GET", "/healthz", b"").await;
    assert_eq!((status, serde_json::from_str::<Value>(&body).unwrap()), (200, json!({"status": "ok"})));
    let (status, _, body) = exchange(address, "GET", "/readyz", b"").await;
    assert_eq!(
        (status, serde_json::from_str::<Value>(&body).unwrap()),
        (200, json!({"ready": true, "echo": "up"}))
    );
    ready.store(false, Ordering::Relaxed);
    let (status, _, body) = exchange(address, "GET", "/readyz", b"").await;
    assert_eq!(
        (status, serde_json::from_str::<Value>(&body).unwrap()),
        (503, json!({"ready": false, "echo": "down"}))
    );
}

#[tokio::test]
async fn one_registry_exposes_the_services_metrics_and_the_request_durations() {
    let (address, _) = start(HttpSettings::default()).await;
    for _ in 0..3 {
        assert_eq!(exchange(address, "POST", "/echo", b"x").await.0, 200);
    }
    assert_eq!(exchange(address, "GET", "/nowhere", b"").await.0, 404);
    let (status, head, metrics) = exchange(address, "GET", "/metrics", b"").await;
    assert_eq!(status, 200);
    assert!(head.contains("content-type: text/plain; version=0.0.4"), "{head}");
    let value = |series: &str| -> f64 {
        let line = metrics
            .lines()
            .find(|line| line.starts_with(series))
            .unwrap_or_else(|| panic!("{series} in\n{metrics}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert_eq!(value("echoes_total "), 3.0);
    assert_eq!(value("request_duration_seconds_count{route=\"/echo\"} "), 3.0);
    assert_eq!(value("request_duration_seconds_bucket{route=\"/echo\",le=\"+Inf\"} "), 3.0);
    assert_eq!(value("request_duration_seconds_count{route=\"unmatched\"} "), 1.0);
    assert!(metrics.contains("# TYPE request_duration_seconds histogram"), "{metrics}");
    if cfg!(target_os = "linux") {
        assert!(value("memory_usage_bytes ") > 1e6, "{metrics}");
    }
}

#[tokio::test]
async fn the_document_lists_every_route_of_the_router() {
    let (address, _) = start(HttpSettings::default()).await;
    let (status, _, body) = exchange(address, "GET", "/api/v1/openapi.json", b"").await;
    assert_eq!(status, 200);
    let document: Value = serde_json::from_str(&body).unwrap();
    let mut paths: Vec<&str> = document["paths"].as_object().unwrap().keys().map(String::as_str).collect();
    paths.sort_unstable();
    assert_eq!(
        paths,
        [
            "/api/v1/openapi.json",
            "/api/v1/whoami",
            "/echo",
            "/healthz",
            "/metrics",
            "/readyz",
            "/slow",
            "/teapot"
        ]
    );
    for (path, item) in document["paths"].as_object().unwrap() {
        for (method, _) in item.as_object().unwrap() {
            let (status, _, body) = exchange(address, &method.to_ascii_uppercase(), path, b"").await;
            assert!(status != 405 && !body.contains("no route"), "{method} {path}: {status} {body}");
        }
    }
}

#[tokio::test]
async fn a_body_sent_slower_than_the_request_timeout_is_answered_408() {
    let settings = HttpSettings { request_timeout: Duration::from_millis(500), ..HttpSettings::default() };
    let (address, _) = start(settings).await;
    let mut stream = TcpStream::connect(address).await.unwrap();
    let head = format!(
        "POST /echo HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    // One byte of the hundred announced, then nothing: the request timeout covers the body.
    stream.write_all(b"x").await.unwrap();
    let mut response = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response)).await;
    assert!(read.is_ok(), "no answer to a stalled body");
    let response = String::from_utf8(response).unwrap();
    assert!(response.starts_with("HTTP/1.1 408"), "{response}");
    assert!(response.contains("no answer within 500ms"), "{response}");
}
