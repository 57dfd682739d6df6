//! The network AI service inside the real `sentinel serve` process: its API, WebSocket stream,
//! Prometheus metrics and JSON errors on the one HTTP port, a clean stop on SIGTERM, and the real
//! `sentinel agent` process shipping this host's connections to it over 127.0.0.1.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Small models and fast flushes, so that a test trains in seconds.
const QUICK_MODEL: &str = "
[network.model]
min_training_rows = 100
isolation_forest_trees = 50
lof_max_rows = 300
svm_max_rows = 300

[network.storage]
flush_interval = \"50ms\"
";

/// A child process killed when the test ends, however it ends.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Process {
    fn signal(&self, name: &str) {
        let status = Command::new("kill").args([name, &self.0.id().to_string()]).status().unwrap();
        assert!(status.success());
    }

    fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "the process did not exit within {within:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Starts `sentinel serve` on ephemeral ports of 127.0.0.1 with `config` (TOML) and returns it
/// with its HTTP address.
fn serve(data_dir: &Path, config: &str) -> (Process, SocketAddr) {
    serve_with(data_dir, config, |_| {})
}

/// [`serve`], with `prepare` applied to the command first.
fn serve_with(data_dir: &Path, config: &str, prepare: impl FnOnce(&mut Command)) -> (Process, SocketAddr) {
    let config_path: PathBuf = data_dir.join("sentinel.toml");
    std::fs::write(&config_path, config).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_sentinel"));
    command
        .arg("--config")
        .arg(&config_path)
        .args(["serve", "--tcp-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped());
    prepare(&mut command);
    let mut child = command.spawn().expect("start sentinel serve");
    let stdout = child.stdout.take().unwrap();
    let process = Process(child);
    let http = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find_map(|line| line.strip_prefix("http listening on ").map(|address| address.parse().unwrap()))
        .expect("the http listening line");
    (process, http)
}

/// One HTTP/1.1 exchange: status, headers (lower-cased) and body.
async fn exchange(address: SocketAddr, method: &str, path: &str, body: &[u8]) -> (u16, String, String) {
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let response = String::from_utf8(response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head.to_ascii_lowercase(), body.to_owned())
}

async fn json_exchange(address: SocketAddr, method: &str, path: &str, body: &[u8]) -> (u16, Value) {
    let (status, head, body) = exchange(address, method, path, body).await;
    assert!(head.contains("content-type: application/json"), "{method} {path}: not JSON: {head}\n{body}");
    (status, serde_json::from_str(&body).unwrap_or_else(|_| panic!("{method} {path}: bad JSON {body:?}")))
}

async fn get(address: SocketAddr, path: &str) -> (u16, Value) {
    json_exchange(address, "GET", path, b"").await
}

async fn post(address: SocketAddr, path: &str, body: &Value) -> (u16, Value) {
    json_exchange(address, "POST", path, body.to_string().as_bytes()).await
}

fn timestamp(at: SystemTime) -> String {
    humantime::format_rfc3339_micros(at).to_string()
}

fn record(
    host: &str,
    process: &str,
    remote_port: u16,
    local_port: u16,
    sent: u64,
    received: u64,
    at: SystemTime,
) -> Value {
    json!({
        "timestamp": timestamp(at), "host": host, "pid": 4242, "process_name": process,
        "process_path": format!("/usr/bin/{process}"), "user": "alice",
        "local_ip": "10.0.0.5", "local_port": local_port, "remote_ip": "93.184.216.34", "remote_port": remote_port,
        "protocol": "tcp", "family": "v4", "state": "ESTABLISHED",
        "bytes_sent": sent, "bytes_received": received, "rtt_us": 12_000, "retransmits": 0,
        "segs_in": 20, "segs_out": 20, "socket_id": local_port,
    })
}

/// Posts a snapshot as an agent does: 503 (the pipeline is busy, for instance with the live
/// collector's first sighting of every socket of the host) means try again shortly.
async fn ingest(http: SocketAddr, snapshot: &Value) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = post(http, "/api/v1/ingest", snapshot).await;
        if status == 202 {
            return;
        }
        assert_eq!(status, 503, "{body}");
        assert!(Instant::now() < deadline, "the pipeline stayed busy: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Two minutes of an ordinary web client's history, posted as an agent's snapshots with past
/// timestamps, then a model trained on it.
async fn train_on_history(http: SocketAddr) {
    let start = SystemTime::now() - Duration::from_secs(125);
    for second in 0..120u64 {
        let at = start + Duration::from_secs(second);
        let connections: Vec<Value> = (0..10u64)
            .map(|slot| {
                let age = (second + slot) % 3 + 1;
                let local_port = 40_000 + (slot * 100 + (second + slot) / 3) as u16;
                record("history", "webclient", 443, local_port, age * 400, age * 2500, at)
            })
            .collect();
        let snapshot = json!({"schema_version": 1, "host": "history", "timestamp": timestamp(at), "connections": connections});
        ingest(http, &snapshot).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, status) = get(http, "/api/v1/models/status").await;
        if status["warmup"]["rows"].as_u64().unwrap() >= 300 {
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
    let (mut served, http) = serve(data_dir.path(), QUICK_MODEL);

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
        ("POST", "/api/v1/analyze", b"{\"records\": \"many\"}", 422, "invalid type"),
        ("GET", "/ws/realtime", b"", 400, ""),
    ];
    for (method, path, body, expected, message) in cases {
        let (status, answer) = json_exchange(http, method, path, body).await;
        assert_eq!(status, expected, "{method} {path}: {answer}");
        let error = answer["error"].as_str().unwrap_or_else(|| panic!("{method} {path}: {answer}"));
        assert!(error.contains(message), "{method} {path}: {error:?} lacks {message:?}");
    }
    // Each of those requests is timed, the unrouted one under its own label.
    let (status, _, metrics) = exchange(http, "GET", "/metrics", b"").await;
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

#[tokio::test]
async fn a_trained_service_scores_streams_and_counts_on_its_http_port() {
    let data_dir = tempfile::tempdir().unwrap();
    // This host's own traffic (other tests, builds) stays out of the baseline, so what the model
    // learns is the history below and nothing else.
    let (mut served, http) = serve(data_dir.path(), &format!("[network]\ncollect = false\n{QUICK_MODEL}"));
    train_on_history(http).await;
    let (status, body) = get(http, "/api/v1/models/status").await;
    assert_eq!((status, &body["state"]), (200, &json!("ready")), "{body:#}");

    let one = json!({"records": [record("h", "webclient", 443, 41_000, 400, 2500, SystemTime::now())]});
    let (status, body) = post(http, "/api/v1/analyze", &one).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"].as_array().unwrap().len(), 1);
    assert!(body["results"][0]["score"].is_number(), "{body:#}");

    // An agent's snapshot is scored and streamed on the WebSocket of the same port.
    let (mut socket, _) =
        tokio_tungstenite::connect_async(format!("ws://{http}/ws/realtime?process=dropper")).await.unwrap();
    let now = SystemTime::now();
    let snapshot = json!({
        "schema_version": 1, "host": "history", "timestamp": timestamp(now),
        "connections": [record("history", "dropper", 4444, 51_000, 900_000_000, 10, now)],
    });
    ingest(http, &snapshot).await;
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
    let (status, head, metrics) = exchange(http, "GET", "/metrics", b"").await;
    assert_eq!(status, 200);
    assert!(head.contains("content-type: text/plain; version=0.0.4"), "{head}");
    let value = |name: &str| -> f64 {
        let line = metrics
            .lines()
            .find(|line| line.starts_with(name))
            .unwrap_or_else(|| panic!("{name} in\n{metrics}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert!(value("predictions_total ") >= 2.0, "{metrics}");
    assert!(value("anomalies_detected ") >= 1.0, "{metrics}");
    let accuracy = value("model_accuracy{model=\"ensemble\"}");
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
    let (mut served, http) = serve_with(data_dir.path(), QUICK_MODEL, refuse_netlink);

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

#[tokio::test]
async fn snapshots_accepted_before_a_crash_are_stored_after_the_restart() {
    let data_dir = tempfile::tempdir().unwrap();
    // Results wait ten minutes in the writer's queue: at the crash, none is on disk.
    let slow_writer = "[network]\ncollect = false\n[network.storage]\nflush_interval = \"10m\"\n";
    let (mut served, http) = serve(data_dir.path(), slow_writer);
    let now = SystemTime::now();
    for agent in 0..4u16 {
        let host = format!("agent-{agent}");
        let connections: Vec<Value> = (0..3u16)
            .map(|slot| record(&host, "webclient", 443, 42_000 + agent * 10 + slot, 400, 2500, now))
            .collect();
        let snapshot = json!({"schema_version": 1, "host": host, "timestamp": timestamp(now), "connections": connections});
        ingest(http, &snapshot).await;
    }
    let (_, status) = get(http, "/api/v1/models/status").await;
    assert_eq!(status["warmup"]["rows"], 0, "nothing stored yet: {status:#}");
    served.signal("-KILL");
    served.wait_exit(Duration::from_secs(15));

    // After the restart every accepted snapshot's connections are stored, once each.
    let (mut served, http) =
        serve(data_dir.path(), "[network]\ncollect = false\n[network.storage]\nflush_interval = \"50ms\"\n");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, status) = get(http, "/api/v1/models/status").await;
        let rows = status["warmup"]["rows"].as_u64().unwrap();
        if rows == 12 {
            break;
        }
        assert!(rows < 12, "stored twice: {status:#}");
        assert!(Instant::now() < deadline, "accepted snapshots lost in the crash: {status:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // New snapshots are taken again once the replay is done, and nothing is replayed twice.
    let later = json!({"schema_version": 1, "host": "agent-9", "timestamp": timestamp(SystemTime::now()),
        "connections": [record("agent-9", "webclient", 443, 43_000, 400, 2500, SystemTime::now())]});
    ingest(http, &later).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, status) = get(http, "/api/v1/models/status").await;
        if status["warmup"]["rows"] == 13 {
            break;
        }
        assert!(Instant::now() < deadline, "{status:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    served.signal("-TERM");
    assert!(served.wait_exit(Duration::from_secs(15)).success());
}

#[tokio::test]
async fn the_network_service_can_be_turned_off() {
    let data_dir = tempfile::tempdir().unwrap();
    let (_served, http) = serve(data_dir.path(), "[network]\nenabled = false\n");
    let (status, body) = get(http, "/api/v1/models/status").await;
    assert_eq!(status, 404, "{body}");
    let (status, _, metrics) = exchange(http, "GET", "/metrics", b"").await;
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
    let (_served, http) = serve(data_dir.path(), &format!("[network]\ncollect = false\n{QUICK_MODEL}"));
    train_on_history(http).await;

    // A connection of this test process for the agent to see.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let _client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let _accepted = listener.accept().unwrap();

    let agent = Process(
        Command::new(env!("CARGO_BIN_EXE_sentinel"))
            .args([
                "agent",
                "--server",
                &format!("http://{http}"),
                "--interval-ms",
                "200",
                "--host",
                "agent-under-test",
            ])
            .env("RUST_LOG", "warn")
            .spawn()
            .expect("start sentinel agent"),
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

    let mut agent = agent;
    agent.signal("-TERM");
    assert!(agent.wait_exit(Duration::from_secs(10)).success(), "the agent stops cleanly on SIGTERM");
}
