//! The network AI service inside the real `sentinel serve` process: its API, WebSocket stream,
//! Prometheus metrics and JSON errors on the one HTTP port, a clean stop on SIGTERM, and the real
//! `sentinel agent` process shipping this host's connections to it over 127.0.0.1.
//!
//! One file above 500 lines, on purpose: every test here starts the same process and shares its
//! start-up, record and request helpers; split, each file would carry a copy or a module of
//! helpers shared by one subject.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use futures_util::StreamExt;
use sentinel_testkit::connection_records::{
    connection_record as record, rfc3339 as timestamp, web_client_history,
};
use sentinel_testkit::http_client::ApiClient;
use sentinel_testkit::serve_process::{QUICK_NETWORK, ServeCommand, ServeProcess, TestProcess};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const SENTINEL: &str = env!("CARGO_BIN_EXE_sentinel");

/// Starts `sentinel serve` on ephemeral ports of 127.0.0.1 with `config` (TOML) and returns it
/// with a client of its HTTP listener holding the admin token.
fn serve(data_dir: &Path, config: &str) -> (ServeProcess, ApiClient) {
    serve_with(data_dir, config, |_| {})
}

/// [`serve`], with `prepare` applied to the command first.
fn serve_with(
    data_dir: &Path,
    config: &str,
    prepare: impl FnOnce(&mut Command) + 'static,
) -> (ServeProcess, ApiClient) {
    let served = ServeCommand::new(SENTINEL, data_dir).config(config).prepare(prepare).start();
    let api = served.api();
    (served, api)
}

/// One request whose answer must be JSON: its status and body.
async fn json_exchange(address: &ApiClient, method: &str, path: &str, body: &[u8]) -> (u16, Value) {
    let answer = address.send(method, path, Some(body)).await;
    let content_type = answer.content_type.as_deref().unwrap_or_default();
    assert!(content_type.starts_with("application/json"), "{method} {path}: not JSON: {answer:?}");
    (answer.status, answer.json())
}

async fn get(address: &ApiClient, path: &str) -> (u16, Value) {
    json_exchange(address, "GET", path, b"").await
}

async fn post(address: &ApiClient, path: &str, body: &Value) -> (u16, Value) {
    json_exchange(address, "POST", path, body.to_string().as_bytes()).await
}

/// Two minutes of an ordinary web client's history, posted as an agent's snapshots with past
/// timestamps, then a model trained on it.
async fn train_on_history(http: &ApiClient) {
    for snapshot in web_client_history("history", SystemTime::now() - Duration::from_secs(125), 120) {
        http.ingest(&snapshot).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, status) = get(http, "/api/v1/models/status").await;
        // All of it stored (nothing left in the journal), so every run trains on the same rows.
        if status["storage"]["pending_snapshots"] == 0 && status["warmup"]["rows"].as_u64().unwrap() >= 300 {
            break;
        }
        assert!(Instant::now() < deadline, "history not stored: {status:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, job) = post(http, "/api/v1/train", &json!({})).await;
    assert_eq!(status, 202, "{job}");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, job) = get(http, &format!("/api/v1/train/{}", job["id"])).await;
        match job["state"].as_str().unwrap() {
            "running" => {}
            "succeeded" => return,
            _ => panic!("training failed: {job:#}"),
        }
        assert!(Instant::now() < deadline, "training did not finish: {job:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn serve_watches_this_host_by_default_and_answers_json_errors_on_its_http_port() {
    let data_dir = tempfile::tempdir().unwrap();
    let (mut served, api) = serve(data_dir.path(), QUICK_NETWORK);
    let http = &api;

    // On by default, with this host's collector.
    let (status, body) = get(http, "/api/v1/models/status").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "learning", "{body:#}");
    assert_eq!(body["collector"]["enabled"], true);
    if cfg!(target_os = "linux") {
        assert_eq!(body["collector"]["unavailable"], Value::Null, "{body:#}");
    }
    let now = SystemTime::now();
    let one = json!({"records": [record("h", "webclient", 443, 41_000, 400, 2500, now)]});
    let (status, body) = post(http, "/api/v1/analyze", &one).await;
    assert_eq!(status, 409, "no model yet: {body}");

    // Errors are JSON on every route of the listener, the malware server's included.
    let cases: [(&str, &str, &[u8], u16, &str); 6] = [
        ("GET", "/no/such/route", b"", 404, "no route /no/such/route"),
        ("POST", "/healthz", b"", 405, "allowed: GET"),
        ("GET", "/api/v1/analyze", b"", 405, "allowed: POST"),
        ("POST", "/api/v1/analyze", b"{not json", 400, "invalid JSON"),
        ("POST", "/api/v1/analyze", b"{\"records\": \"many\"}", 400, "invalid type"),
        ("GET", "/ws/realtime", b"", 400, ""),
    ];
    for (method, path, body, expected, message) in cases {
        let (status, answer) = json_exchange(http, method, path, body).await;
        assert_eq!(status, expected, "{method} {path}: {answer}");
        let error = answer["error"].as_str().unwrap_or_else(|| panic!("{method} {path}: {answer}"));
        assert!(error.contains(message), "{method} {path}: {error:?} lacks {message:?}");
    }
    // Each of those requests is timed, the unrouted one under its own label.
    let answer = http.send("GET", "/metrics", None).await;
    let (status, metrics) = (answer.status, answer.body);
    assert_eq!(status, 200);
    for (series, at_least) in [("route=\"/api/v1/analyze\"", 4), ("route=\"unmatched\"", 1)] {
        let count = metrics
            .lines()
            .find_map(|line| line.strip_prefix(&format!("request_duration_seconds_count{{{series}}} ")))
            .unwrap_or_else(|| panic!("{series} in\n{metrics}"));
        assert!(count.parse::<u64>().unwrap() >= at_least, "{series}: {count}\n{metrics}");
    }

    served.signal("-TERM");
    assert!(served.wait_exit(Duration::from_secs(15)).success());
    assert!(data_dir.path().join("network.db").exists());
}

/// The OpenAPI document is read from the running listener, and every operation it lists is
/// called there: none may be answered by the router's own 404 (`no route ...`) or 405, so the
/// document has no route the listener lacks. The converse holds by construction: services can
/// add routes to the listener only through `sentinel_api::ServiceRoutes`, which takes nothing
/// but `utoipa_axum::routes!` of documented handlers, so the router has no route the document
/// lacks — an undocumented path is a 404 like any unknown one.
#[tokio::test]
async fn every_operation_of_the_openapi_document_is_served_and_nothing_else() {
    let data_dir = tempfile::tempdir().unwrap();
    let (mut served, api) = serve(data_dir.path(), "[network]\ncollect = false\n");
    let http = &api;
    let answer = http.send("GET", "/api/v1/openapi.json", None).await;
    assert_eq!(answer.status, 200);
    let content_type = answer.content_type.as_deref().unwrap_or_default();
    assert!(content_type.starts_with("application/json"), "{answer:?}");
    let document = answer.json();
    assert!(document["openapi"].as_str().unwrap().starts_with("3."), "{document:#}");
    let paths = document["paths"].as_object().unwrap();
    let mut operations = Vec::new();
    for (path, item) in paths {
        for method in ["get", "post", "put", "patch", "delete"] {
            if item[method].is_object() {
                // Path parameters get a value of the documented kind (all are numbers here).
                let concrete = path.split('/').map(|part| if part.starts_with('{') { "1" } else { part });
                operations.push((method.to_ascii_uppercase(), concrete.collect::<Vec<_>>().join("/")));
            }
        }
    }
    for (method, path) in &operations {
        let answer = http.send(method, path, None).await;
        let (status, body) = (answer.status, answer.body);
        let routed = status != 405 && !(status == 404 && body.contains("no route"));
        assert!(routed, "{method} {path} is documented but not served: {status} {body}");
    }
    let served_paths: Vec<&str> = paths.keys().map(String::as_str).collect();
    for expected in [
        "/healthz",
        "/readyz",
        "/metrics",
        "/api/v1/openapi.json",
        "/status",
        "/admin/reload",
        "/api/v1/analyze",
        "/api/v1/feedback",
        "/api/v1/train/{job}",
        "/api/v1/audit",
        "/api/v1/files",
        "/api/v1/files/{sha256}",
        "/api/v1/lists/{list}",
        "/api/v1/lists/{list}/{sha256}",
        "/ws/realtime",
        "/api/v1/whoami",
        "/api/v1/alerts",
        "/api/v1/alerts/{id}/acknowledge",
    ] {
        assert!(served_paths.contains(&expected), "{expected} is not in {served_paths:?}");
    }
    assert_eq!(operations.len(), 27, "{operations:?}");
    let (status, body) = json_exchange(http, "GET", "/api/v1/undocumented", b"").await;
    assert_eq!((status, body["error"].as_str()), (404, Some("no route /api/v1/undocumented")));
    // The network API's feature vector is described from the feature schema itself.
    let vector = &document["components"]["schemas"]["FeatureVector"]["properties"];
    for name in ["bytes_sent_delta", "rtt_ms", "protocol", "remote_port_class", "process_name"] {
        assert!(vector[name].is_object(), "feature {name} is not described: {vector:#}");
    }
    served.signal("-TERM");
    assert!(served.wait_exit(Duration::from_secs(15)).success());
}

#[tokio::test]
async fn a_trained_service_scores_streams_and_counts_on_its_http_port() {
    let data_dir = tempfile::tempdir().unwrap();
    // This host's own traffic (other tests, builds) stays out of the baseline, so what the model
    // learns is the history below and nothing else.
    let (mut served, api) = serve(data_dir.path(), &format!("[network]\ncollect = false\n{QUICK_NETWORK}"));
    let http = &api;
    train_on_history(http).await;
    let (status, body) = get(http, "/api/v1/models/status").await;
    assert_eq!((status, &body["state"]), (200, &json!("ready")), "{body:#}");

    let one = json!({"records": [record("h", "webclient", 443, 41_000, 400, 2500, SystemTime::now())]});
    let (status, body) = post(http, "/api/v1/analyze", &one).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"].as_array().unwrap().len(), 1);
    assert!(body["results"][0]["score"].is_number(), "{body:#}");

    // An agent's snapshot is scored and streamed on the WebSocket of the same port.
    let mut request =
        format!("ws://{}/ws/realtime?process=dropper", http.address).into_client_request().unwrap();
    request.headers_mut().insert("authorization", http.authorization().unwrap().parse().unwrap());
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let now = SystemTime::now();
    let snapshot = json!({
        "schema_version": 1, "host": "history", "timestamp": timestamp(now),
        "connections": [record("history", "dropper", 4444, 51_000, 900_000_000, 10, now)],
    });
    http.ingest(&snapshot).await;
    let message = tokio::time::timeout(Duration::from_secs(5), socket.next())
        .await
        .expect("a result within 5 s")
        .unwrap()
        .unwrap();
    let result: Value = serde_json::from_str(message.to_text().unwrap()).unwrap();
    assert_eq!(
        (&result["source"], &result["connection"]["process_name"]),
        (&json!("agent"), &json!("dropper"))
    );
    assert_eq!(result["is_anomaly"], true, "{result:#}");

    // Prometheus scrapes the same port.
    let answer = http.send("GET", "/metrics", None).await;
    assert_eq!(answer.status, 200);
    let content_type = answer.content_type.as_deref().unwrap_or_default();
    assert!(content_type.starts_with("text/plain; version=0.0.4"), "{content_type}");
    let metrics = answer.body;
    let value = |name: &str| -> f64 {
        let line = metrics
            .lines()
            .find(|line| line.starts_with(name))
            .unwrap_or_else(|| panic!("{name} in\n{metrics}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert!(value("predictions_total ") >= 2.0, "{metrics}");
    assert!(value("anomalies_detected ") >= 1.0, "{metrics}");
    let accuracy = value("model_accuracy{model=\"ensemble\",source=\"held_out\"}");
    assert!((0.5..=1.0).contains(&accuracy), "{metrics}");
    assert!(value("memory_usage_bytes ") > 1e6, "{metrics}");
    assert!(value("request_duration_seconds_count{route=\"/api/v1/analyze\"}") >= 1.0, "{metrics}");
    assert!(value("request_duration_seconds_bucket{route=\"/api/v1/analyze\",le=\"+Inf\"}") >= 1.0);
    assert_eq!(value("malware_connections_open "), 0.0);

    served.signal("-TERM");
    assert!(served.wait_exit(Duration::from_secs(15)).success());
    assert!(data_dir.path().join("network.db").exists());
}

/// Makes the child's `socket(AF_NETLINK, …)` fail with EACCES, as a container runtime or a
/// strict seccomp profile can: a seccomp filter installed between fork and exec, so only
/// `sentinel serve` is affected. Every other system call, and every other socket, is allowed.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
fn refuse_netlink(command: &mut Command) {
    use std::os::unix::process::CommandExt;

    const fn statement(code: u32, k: u32) -> libc::sock_filter {
        libc::sock_filter { code: code as u16, jt: 0, jf: 0, k }
    }
    const fn jump_if_equal(k: u32, if_true: u8, if_false: u8) -> libc::sock_filter {
        libc::sock_filter {
            code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
            jt: if_true,
            jf: if_false,
            k,
        }
    }
    const LOAD_WORD: u32 = libc::BPF_LD | libc::BPF_W | libc::BPF_ABS;
    const RETURN: u32 = libc::BPF_RET | libc::BPF_K;
    // EM_X86_64 with the 64-bit and little-endian flags (linux/audit.h).
    const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
    // Offsets in `struct seccomp_data`: nr, arch, then args[0] (its low half first).
    const FILTER: [libc::sock_filter; 10] = [
        statement(LOAD_WORD, 4),
        jump_if_equal(AUDIT_ARCH_X86_64, 1, 0),
        statement(RETURN, libc::SECCOMP_RET_ALLOW),
        statement(LOAD_WORD, 0),
        jump_if_equal(libc::SYS_socket as u32, 1, 0),
        statement(RETURN, libc::SECCOMP_RET_ALLOW),
        statement(LOAD_WORD, 16),
        jump_if_equal(libc::AF_NETLINK as u32, 0, 1),
        statement(RETURN, libc::SECCOMP_RET_ERRNO | libc::EACCES as u32),
        statement(RETURN, libc::SECCOMP_RET_ALLOW),
    ];
    // SAFETY: between fork and exec the closure only makes two prctl calls (async-signal-safe)
    // on a filter that lives in static memory.
    unsafe {
        command.pre_exec(|| {
            let program = libc::sock_fprog { len: FILTER.len() as u16, filter: FILTER.as_ptr().cast_mut() };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER,
                    &program as *const libc::sock_fprog,
                ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
#[tokio::test]
async fn where_netlink_is_refused_serve_says_why_and_still_serves_agents_and_analysis() {
    let data_dir = tempfile::tempdir().unwrap();
    let (mut served, api) = serve_with(data_dir.path(), QUICK_NETWORK, refuse_netlink);
    let http = &api;

    // The collector is asked for (the default) but cannot watch this host, and says why.
    let (status, body) = get(http, "/api/v1/models/status").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["collector"]["enabled"], true, "{body:#}");
    let reason = body["collector"]["unavailable"].as_str().unwrap_or_else(|| panic!("no reason: {body:#}"));
    assert!(reason.contains("ermission denied"), "{reason}");

    // Agents' snapshots are still taken, stored and learnt from, and records are scored.
    train_on_history(http).await;
    let one = json!({"records": [record("h", "webclient", 443, 41_000, 400, 2500, SystemTime::now())]});
    let (status, body) = post(http, "/api/v1/analyze", &one).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["results"][0]["score"].is_number(), "{body:#}");

    served.signal("-TERM");
    assert!(served.wait_exit(Duration::from_secs(15)).success());
}

/// Connections per snapshot in the crash tests.
const CONNECTIONS_PER_SNAPSHOT: usize = 5;

/// Snapshot `index`: a host and a process of its own, so that its connections are all new to
/// the tracker (one row each, replayed or not) and its rows can be told apart in the store.
fn crash_snapshot(index: usize) -> Value {
    let now = SystemTime::now();
    let host = format!("snapshot-{index}");
    let connections: Vec<Value> = (0..CONNECTIONS_PER_SNAPSHOT as u16)
        .map(|slot| record(&host, &format!("proc-{index}"), 443, 42_000 + slot, 400, 2500, now))
        .collect();
    json!({"schema_version": 1, "host": host, "timestamp": timestamp(now), "connections": connections})
}

/// Posts a snapshot; the status, or `None` when the server is gone (killed mid-request).
async fn try_ingest(http: &ApiClient, snapshot: &Value) -> Option<u16> {
    let body = snapshot.to_string();
    let answer = http.try_send("POST", "/api/v1/ingest", Some(body.as_bytes())).await.ok()?;
    Some(answer.status)
}

/// Waits until the restarted service has replayed its journal and stored a new snapshot after
/// it, stops it, and returns how many rows the store holds per snapshot index.
async fn rows_per_snapshot_after_restart(
    data_dir: &Path,
    marker: usize,
) -> std::collections::HashMap<usize, usize> {
    let (mut served, api) =
        serve(data_dir, "[network]\ncollect = false\n[network.storage]\nflush_interval = \"50ms\"\n");
    let http = &api;
    // New snapshots are refused (503) while the journal is replayed: the marker goes in after.
    http.ingest(&crash_snapshot(marker)).await;
    let store = sentinel_store::NetworkStore::open(data_dir, writer_settings()).unwrap();
    let marker_process = format!("proc-{marker}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !store
        .history(usize::MAX, &|| false)
        .unwrap()
        .iter()
        .any(|row| row.process_name.as_deref() == Some(marker_process.as_str()))
    {
        assert!(Instant::now() < deadline, "the marker snapshot was not stored");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(store);
    served.signal("-TERM");
    assert!(served.wait_exit(Duration::from_secs(15)).success());
    let store = sentinel_store::NetworkStore::open(data_dir, writer_settings()).unwrap();
    assert_eq!(store.row_counts().unwrap().journalled_snapshots, 0, "the journal is empty");
    let mut rows = std::collections::HashMap::new();
    for row in store.history(usize::MAX, &|| false).unwrap() {
        let index =
            row.process_name.as_deref().and_then(|name| name.strip_prefix("proc-")).unwrap().parse().unwrap();
        *rows.entry(index).or_default() += 1;
    }
    rows
}

fn writer_settings() -> sentinel_store::WriterSettings {
    sentinel_store::WriterSettings {
        batch: 1000,
        flush_interval: Duration::from_millis(50),
        queue: 1000,
        retention: Duration::from_secs(30 * 86_400),
    }
}

#[tokio::test]
async fn snapshots_accepted_before_a_crash_are_stored_once_each_after_the_restart() {
    let data_dir = tempfile::tempdir().unwrap();
    // Results wait ten minutes in the writer's queue: at the crash, none is on disk.
    let slow_writer = "[network]\ncollect = false\n[network.storage]\nflush_interval = \"10m\"\n";
    let (mut served, api) = serve(data_dir.path(), slow_writer);
    let http = &api;
    for index in 0..4 {
        http.ingest(&crash_snapshot(index)).await;
    }
    let (_, status) = get(http, "/api/v1/models/status").await;
    assert_eq!(status["warmup"]["rows"], 0, "nothing stored yet: {status:#}");
    served.signal("-KILL");
    served.wait_exit(Duration::from_secs(15));

    let rows = rows_per_snapshot_after_restart(data_dir.path(), 99).await;
    for index in [0, 1, 2, 3, 99] {
        assert_eq!(rows.get(&index), Some(&CONNECTIONS_PER_SNAPSHOT), "snapshot {index}: {rows:?}");
    }
    assert_eq!(rows.len(), 5, "{rows:?}");
    assert_private(data_dir.path());
}

/// Every file the service wrote under `dir` is its user's alone: files 0600, directories 0700.
#[cfg(unix)]
fn assert_private(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        // The test's own configuration file.
        if path.file_name().is_some_and(|name| name == "sentinel.toml") {
            continue;
        }
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        let expected = if path.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(mode, expected, "{}", path.display());
        files.push(path.file_name().unwrap().to_string_lossy().into_owned());
    }
    for name in ["sentinel.db", "network.db"] {
        assert!(files.iter().any(|file| file == name), "{name} in {files:?}");
    }
}

#[tokio::test]
async fn a_kill_during_ingest_neither_loses_nor_duplicates_a_snapshot() {
    let data_dir = tempfile::tempdir().unwrap();
    // Batches of two items and a 5 ms flush: the writer commits while snapshots of five
    // connections arrive, so the kill falls between and inside its transactions.
    let busy_writer =
        "[network]\ncollect = false\n[network.storage]\nflush_interval = \"5ms\"\nwrite_batch = 2\n";
    let (mut served, api) = serve(data_dir.path(), busy_writer);
    let http = &api;
    const POSTERS: usize = 4;
    const ACCEPTED_BEFORE_KILL: usize = 40;
    let accepted = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let posters: Vec<_> = (0..POSTERS)
        .map(|poster| {
            let accepted = std::sync::Arc::clone(&accepted);
            let http = http.clone();
            tokio::spawn(async move {
                let mut attempted = Vec::new();
                for index in (poster..10_000).step_by(POSTERS) {
                    attempted.push(index);
                    match try_ingest(&http, &crash_snapshot(index)).await {
                        Some(202) => accepted.lock().unwrap().push(index),
                        Some(503) => tokio::time::sleep(Duration::from_millis(5)).await,
                        Some(status) => panic!("snapshot {index}: status {status}"),
                        None => return attempted,
                    }
                }
                attempted
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while accepted.lock().unwrap().len() < ACCEPTED_BEFORE_KILL {
        assert!(Instant::now() < deadline, "too few snapshots accepted");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    served.signal("-KILL");
    served.wait_exit(Duration::from_secs(15));
    let mut attempted = Vec::new();
    for poster in posters {
        attempted.extend(poster.await.unwrap());
    }
    let accepted = accepted.lock().unwrap().clone();

    let marker = 20_000;
    let rows = rows_per_snapshot_after_restart(data_dir.path(), marker).await;
    for index in &accepted {
        assert_eq!(rows.get(index), Some(&CONNECTIONS_PER_SNAPSHOT), "accepted snapshot {index}: {rows:?}");
    }
    // One whose answer the kill cut off may or may not have been journalled: whole or absent.
    for (index, count) in &rows {
        assert!(*index == marker || attempted.contains(index), "snapshot {index} was never sent");
        assert_eq!(*count, CONNECTIONS_PER_SNAPSHOT, "snapshot {index}: {rows:?}");
    }
}

#[tokio::test]
async fn the_network_service_can_be_turned_off() {
    let data_dir = tempfile::tempdir().unwrap();
    let (_served, api) = serve(data_dir.path(), "[network]\nenabled = false\n");
    let http = &api;
    let (status, body) = get(http, "/api/v1/models/status").await;
    assert_eq!(status, 404, "{body}");
    let answer = http.send("GET", "/metrics", None).await;
    let (status, metrics) = (answer.status, answer.body);
    assert_eq!(status, 200);
    assert!(
        metrics.contains("malware_connections_open") && !metrics.contains("predictions_total"),
        "{metrics}"
    );
    assert!(!data_dir.path().join("network.db").exists());
}

#[tokio::test]
async fn the_agent_binary_ships_this_hosts_connections_to_serve() {
    let data_dir = tempfile::tempdir().unwrap();
    // The server watches nothing itself: every result comes from the agent.
    let (_served, api) = serve(data_dir.path(), &format!("[network]\ncollect = false\n{QUICK_NETWORK}"));
    let http = &api;
    train_on_history(http).await;

    // A connection of this test process for the agent to see.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let _client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let _accepted = listener.accept().unwrap();

    let mut agent = TestProcess::spawn(
        Command::new(SENTINEL)
            .args([
                "agent",
                "--server",
                &format!("http://{}", http.address),
                "--interval-ms",
                "200",
                "--host",
                "agent-under-test",
            ])
            // The token the agent sends as bearer, from the environment as deployments pass it.
            .env("SENTINEL_TOKEN", http.token.as_deref().unwrap())
            .env("RUST_LOG", "warn"),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let seen = loop {
        let (status, body) = get(http, "/api/v1/predictions/recent?limit=10000").await;
        assert_eq!(status, 200, "{body}");
        let ours = body["results"].as_array().unwrap().iter().find(|result| {
            result["source"] == "agent"
                && result["connection"]["host"] == "agent-under-test"
                && result["connection"]["remote"] == format!("127.0.0.1:{port}")
        });
        if let Some(result) = ours {
            break result.clone();
        }
        assert!(Instant::now() < deadline, "the agent's records never arrived: {body:#}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(seen["connection"]["pid"], std::process::id(), "{seen:#}");
    assert_eq!(seen["connection"]["state"], "ESTABLISHED");

    agent.signal("-TERM");
    assert!(agent.wait_exit(Duration::from_secs(10)).success(), "the agent stops cleanly on SIGTERM");
}

/// `[http] listen` sets the HTTP address; the former `[server] http_listen` is still read, and
/// `[http] listen` wins when both are written.
#[test]
fn the_http_address_comes_from_http_listen_or_the_former_server_key() {
    let free_port = || std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (old, new) = (free_port(), free_port());
    let cases = [
        (format!("[server]\nhttp_listen = \"127.0.0.1:{old}\"\n"), old),
        (format!("[server]\nhttp_listen = \"127.0.0.1:{old}\"\n[http]\nlisten = \"127.0.0.1:{new}\"\n"), new),
    ];
    for (config, expected) in cases {
        let data_dir = tempfile::tempdir().unwrap();
        let config_path = data_dir.path().join("sentinel.toml");
        std::fs::write(&config_path, format!("{config}[network]\nenabled = false\n")).unwrap();
        let mut command = Command::new(SENTINEL);
        command
            .arg("--config")
            .arg(&config_path)
            .args(["serve", "--tcp-listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir.path())
            .env("RUST_LOG", "warn")
            .env_remove("SENTINEL_HTTP_LISTEN")
            .stdout(Stdio::piped());
        let mut process = TestProcess::spawn(&mut command);
        let stdout = process.stdout().expect("the child's stdout");
        let http: SocketAddr = BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find_map(|line| line.strip_prefix("http listening on ").map(|address| address.parse().unwrap()))
            .expect("the http listening line");
        assert_eq!(http.port(), expected, "{config}");
        process.signal("-TERM");
        assert!(process.wait_exit(Duration::from_secs(15)).success());
    }
}
