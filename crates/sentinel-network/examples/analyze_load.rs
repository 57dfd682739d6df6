//! Network API benchmark: Sentinel's `/api/v1/analyze` against a peer, side by side, from one
//! run (figures in `docs/benchmarks.md`, "Network API").
//!
//! `cargo run --release -p sentinel-network --example analyze_load [-- --json] [--no-peer]
//! [--python python3]` starts, on 127.0.0.1 only:
//! - Sentinel's network service in a child process (this program with `serve`: no collector, a
//!   model trained with the default settings on one minute of synthetic ingested history);
//! - the peer, `bench/network_api_peer.py`: a FastAPI service (uvicorn) scoring the same feature
//!   rows with scikit-learn's Isolation Forest, One-Class SVM and LOF at Sentinel's default sizes,
//!   fitted on 4,000 feature rows of the same generator as the scored ones.
//!
//! Then it sends both the same feature rows (`{"features": [...]}`) and measures, one service
//! after the other:
//! 1. single-record latency: 1,000 requests of one row, one at a time on a keep-alive connection
//!    (reqwest; after 50 to warm up), p50 and p99 from sending the request to the end of the answer;
//! 2. batch throughput: 5 batches of 20,000 rows after one to warm up, median rows per second
//!    including parsing, scoring and the JSON answer.
//!
//! And, for Sentinel alone, what one maximal batch costs: one batch of 50,000 connection records
//! (the default `api.max_batch_items`), the sizes of its request and answer, and the server's
//! resident memory before it and at its peak (Linux: `/proc/PID/status`).
//!
//! It prints the two side by side with the peer-over-Sentinel ratio, the date and the load
//! average before and after (`/proc/loadavg`), as a Markdown table or with `--json` as JSON.
//! Everything is bounded so the run always ends by itself: fixed request counts, deadlines for
//! the services to start (120 s) and for each request (60 s); both children are killed when this
//! process ends, however it ends.

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use serde_json::{Value, json};

const SINGLE_REQUESTS: usize = 1000;
const SINGLE_WARM_UP: usize = 50;
const BATCH_SIZE: u64 = 20_000;
const BATCHES: usize = 5;
/// Records of the batch whose memory cost is measured: the default `api.max_batch_items`.
const MAX_BATCH_RECORDS: u64 = 50_000;
/// Feature rows the peer is fitted on (Sentinel fits on its ingested history: 60 snapshots of
/// 100 connections).
const PEER_TRAINING_ROWS: u64 = 4000;
/// The services train a model before they answer; on a loaded 2-core machine that takes
/// seconds, not minutes.
const SERVER_START_DEADLINE: Duration = Duration::from_secs(120);
/// A request taking longer than this means a service is stuck: the run stops.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
const PEER_SCRIPT: &str = include_str!("../../../bench/network_api_peer.py");

/// What the command line asks for.
struct Options {
    json: bool,
    peer: bool,
    python: String,
}

impl Options {
    fn parse(mut args: impl Iterator<Item = String>) -> Result<Options, String> {
        let mut options = Options { json: false, peer: true, python: "python3".to_owned() };
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--json" => options.json = true,
                "--no-peer" => options.peer = false,
                "--python" => options.python = args.next().ok_or("--python needs a program")?,
                other => {
                    return Err(format!("unknown argument {other:?} (--json, --no-peer, --python PROGRAM)"));
                }
            }
        }
        Ok(options)
    }
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1).peekable();
    let outcome = if args.peek().map(String::as_str) == Some("serve") {
        serve()
    } else {
        Options::parse(args).and_then(|options| compare(&options))
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("analyze_load: {error}");
            ExitCode::FAILURE
        }
    }
}

/// The child server; killed when dropped, so an early error never leaves it running.
struct ServerProcess(Child);

impl Drop for ServerProcess {
    fn drop(&mut self) {
        // Closing its stdin asks it to stop; the kill covers a server that does not.
        drop(self.0.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn compare(options: &Options) -> Result<(), String> {
    let date = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    let load_before = load_average();
    let (sentinel_process, sentinel_address) = start_sentinel()?;
    // The maximal batch first, so that the memory peak it reports is its own.
    let max_batch = max_batch_memory(sentinel_address, sentinel_process.0.id())?;
    let mut sentinel = measure(sentinel_address)?;
    sentinel["max_batch"] = max_batch;
    drop(sentinel_process);
    let peer = if options.peer {
        let scratch = tempfile::tempdir().map_err(|error| format!("no temporary directory: {error}"))?;
        let (peer_process, peer_address) = start_peer(&options.python, scratch.path())?;
        let peer = measure(peer_address)?;
        drop(peer_process);
        Some(peer)
    } else {
        None
    };
    let report = json!({
        "date": date,
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "single_requests": SINGLE_REQUESTS,
        "batch_rows": BATCH_SIZE,
        "batches": BATCHES,
        "sentinel": sentinel,
        "peer": peer,
        "peer_over_sentinel": peer.as_ref().map(|peer| json!({
            "single_p50": peer["single_p50_ms"].as_f64().unwrap_or(0.0) / sentinel["single_p50_ms"].as_f64().unwrap_or(1.0),
            "single_p99": peer["single_p99_ms"].as_f64().unwrap_or(0.0) / sentinel["single_p99_ms"].as_f64().unwrap_or(1.0),
            "batch_rows_per_s": sentinel["batch_rows_per_s"].as_f64().unwrap_or(0.0) / peer["batch_rows_per_s"].as_f64().unwrap_or(1.0),
        })),
    });
    if options.json {
        println!("{}", serde_json::to_string_pretty(&report).map_err(|error| error.to_string())?);
    } else {
        print_report(&report);
    }
    Ok(())
}

/// `/proc/loadavg`'s 1-, 5- and 15-minute averages: the machine's state beside each run.
fn load_average() -> Value {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let averages: Vec<f64> = text.split_whitespace().take(3).filter_map(|field| field.parse().ok()).collect();
    json!(averages)
}

fn print_report(report: &Value) {
    println!(
        "{}, load average {} before, {} after; {} single-row requests one at a time, {} batches of {} rows",
        report["date"].as_str().unwrap_or(""),
        report["load_average_before"],
        report["load_average_after"],
        report["single_requests"],
        report["batches"],
        report["batch_rows"]
    );
    let (sentinel, peer, ratio) = (&report["sentinel"], &report["peer"], &report["peer_over_sentinel"]);
    let cell =
        |value: &Value, digits: usize| value.as_f64().map_or("-".to_owned(), |v| format!("{v:.digits$}"));
    let max_batch = &sentinel["max_batch"];
    println!(
        "one batch of {} connection records: request {} MB, answer {} MB; Sentinel's resident memory {} MB before, {} MB at its peak",
        max_batch["records"],
        cell(&max_batch["request_mb"], 1),
        cell(&max_batch["answer_mb"], 1),
        cell(&max_batch["resident_before_mb"], 0),
        cell(&max_batch["resident_peak_mb"], 0)
    );
    println!("| | Sentinel | FastAPI + scikit-learn | ratio (Sentinel's advantage) |");
    println!("|---|---:|---:|---:|");
    for (name, key, ratio_key, digits) in [
        ("single row, p50 ms", "single_p50_ms", "single_p50", 3),
        ("single row, p99 ms", "single_p99_ms", "single_p99", 3),
        ("batch, rows/s (median)", "batch_rows_per_s", "batch_rows_per_s", 0),
    ] {
        println!(
            "| {name} | {} | {} | {}× |",
            cell(&sentinel[key], digits),
            cell(&peer[key], digits),
            cell(&ratio[ratio_key], 1)
        );
    }
}

/// Sentinel's service in a child process (this program with `serve`), once it has a model.
fn start_sentinel() -> Result<(ServerProcess, SocketAddr), String> {
    let program = std::env::current_exe().map_err(|error| format!("cannot find this program: {error}"))?;
    let mut child = Command::new(program)
        .arg("serve")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|error| format!("cannot start the server process: {error}"))?;
    let stdout = child.stdout.take().ok_or("no stdout from the server")?;
    let server = ServerProcess(child);
    // Read the start-up line on a thread, so that a server that never prints it cannot hang us.
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(address) = line.strip_prefix("listening on ") {
                let _ = sender.send(address.to_owned());
                return;
            }
        }
    });
    let address: SocketAddr = receiver
        .recv_timeout(SERVER_START_DEADLINE)
        .map_err(|_| format!("the server did not start within {SERVER_START_DEADLINE:?}"))?
        .parse()
        .map_err(|error| format!("bad address from the server: {error}"))?;
    if !address.ip().is_loopback() {
        return Err(format!("refusing to load {address}: the load generator only targets 127.0.0.1"));
    }
    Ok((server, address))
}

/// The peer script on a free loopback port, fitted on `PEER_TRAINING_ROWS` rows, once it answers.
fn start_peer(python: &str, scratch: &Path) -> Result<(ServerProcess, SocketAddr), String> {
    let script = scratch.join("network_api_peer.py");
    std::fs::write(&script, PEER_SCRIPT).map_err(|error| format!("cannot write the peer script: {error}"))?;
    let training = scratch.join("training_rows.json");
    let rows: Vec<Value> = (0..PEER_TRAINING_ROWS).map(feature_row).collect();
    std::fs::write(&training, Value::from(rows).to_string())
        .map_err(|error| format!("cannot write the peer's training rows: {error}"))?;
    // A free port: bound, read, released; the peer binds it a moment later.
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map_err(|error| format!("no free port on 127.0.0.1: {error}"))?
        .port();
    let child = Command::new(python)
        .arg(&script)
        .arg(&training)
        .arg(port.to_string())
        .stdin(Stdio::null())
        .spawn()
        .map_err(|error| format!("cannot start the peer with {python}: {error}"))?;
    let mut peer = ServerProcess(child);
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    let probe = json!({"features": [feature_row(0)]}).to_string();
    let deadline = Instant::now() + SERVER_START_DEADLINE;
    loop {
        let answered = HttpClient::new(address)?.post("/api/v1/analyze", Bytes::from(probe.clone()));
        match answered {
            Ok((200, _)) => return Ok((peer, address)),
            Ok((status, body)) => return Err(format!("the peer answered {status}: {body}")),
            Err(_) if Instant::now() < deadline => {
                if let Ok(Some(status)) = peer.0.try_wait() {
                    return Err(format!("the peer exited ({status}) before answering"));
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(error) => {
                return Err(format!("the peer did not answer within {SERVER_START_DEADLINE:?}: {error}"));
            }
        }
    }
}

/// Single-row latency and batch throughput of the service at `address`.
fn measure(address: SocketAddr) -> Result<Value, String> {
    let (p50, p99) = single_rows(address)?;
    let rate = batches(address)?;
    Ok(json!({ "single_p50_ms": p50, "single_p99_ms": p99, "batch_rows_per_s": rate }))
}

/// One feature row of a synthetic service's connection, by index: the same rows for both
/// services, within the ranges of the history Sentinel's model is trained on.
fn feature_row(index: u64) -> Value {
    let sent = 300 + (index * 37) % 5000;
    let received = 2000 + (index * 131) % 60_000;
    let port_class = ["well_known", "registered"][index as usize % 2];
    json!({
        "bytes_sent_delta": sent, "bytes_received_delta": received,
        "bytes_sent_total": sent, "bytes_received_total": received,
        "send_rate": null, "receive_rate": null,
        "rtt_ms": 0.3 + (index % 900) as f64 / 1000.0, "retransmits": index % 3, "remote_is_loopback": 0,
        "process_connection_rate": (index % 5) as f64 * 0.2, "process_distinct_remote_ports": 1 + index % 3,
        "process_distinct_remote_hosts": 1 + index % 4, "process_failed_connects": 0,
        "process_send_rate": (index * 53) % 4000, "process_receive_rate": (index * 97) % 40_000,
        "host_connection_rate": (index % 4) as f64 * 0.1, "host_distinct_remote_ports": 1,
        "host_failed_connects": 0, "host_send_rate": (index * 29) % 3000, "host_receive_rate": (index * 71) % 30_000,
        "protocol": "tcp", "state": "ESTABLISHED", "change": "new",
        "remote_port_class": port_class,
    })
}

fn record(index: u64, at: SystemTime) -> serde_json::Value {
    let remote_port = [443, 80, 5432][index as usize % 3];
    json!({
        "timestamp": humantime::format_rfc3339_micros(at).to_string(),
        "host": "bench", "pid": 4000 + index % 7, "process_name": format!("svc{}", index % 7),
        "process_path": null, "user": "svc", "local_ip": "10.0.0.5", "local_port": 40_000 + index % 20_000,
        "remote_ip": format!("10.0.{}.{}", index % 3, 1 + index % 200), "remote_port": remote_port,
        "protocol": "tcp", "family": "v4", "state": "ESTABLISHED",
        "bytes_sent": 300 + (index * 37) % 5000, "bytes_received": 2000 + (index * 131) % 60_000,
        "rtt_us": 300 + index % 900, "retransmits": index % 3, "segs_in": 10, "segs_out": 10, "socket_id": index,
    })
}

/// The server: the service with a model trained on one minute of synthetic history, served until
/// stdin closes (the load generator ended) or the training deadline passes.
fn serve() -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|error| format!("cannot start tokio: {error}"))?;
    runtime.block_on(async {
        let dir = tempfile::tempdir().map_err(|error| format!("no temporary directory: {error}"))?;
        let mut settings = sentinel_network::NetworkSettings { collect: false, ..Default::default() };
        settings.training.warmup = std::time::Duration::from_secs(1);
        settings.model.min_training_rows = 1000;
        let store = sentinel_store::Store::open(dir.path(), sentinel_store::StoreSettings::default())
            .map_err(|error| format!("the store did not open: {error}"))?;
        let service = sentinel_network::NetworkService::start(settings, dir.path(), Arc::new(store))
            .map_err(|error| format!("the service did not start: {error}"))?;
        let listener = sentinel_api::HttpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .map_err(|error| error.to_string())?;
        let address = listener.local_addr();
        let api = sentinel_api::ApiBuilder::new(
            sentinel_api::HttpSettings::default(),
            sentinel_api::Access::unauthenticated(&sentinel_api::sentinel_auth::AuthSettings::default()),
        )
            .service(sentinel_network::router(Arc::clone(&service)))
            .build();
        tokio::spawn(async move { listener.serve(&api, std::future::pending()).await });
        let client = client()?;
        let start = SystemTime::now() - Duration::from_secs(70);
        for second in 0..60u64 {
            let at = start + Duration::from_secs(second);
            let connections: Vec<serde_json::Value> =
                (0..100).map(|slot| record(second * 31 + slot, at)).collect();
            let snapshot = json!({"schema_version": 1, "host": "bench", "timestamp": humantime::format_rfc3339_micros(at).to_string(), "connections": connections});
            let (status, body) = post(&client, address, "/api/v1/ingest", Bytes::from(snapshot.to_string())).await?;
            if status != 202 {
                return Err(format!("ingest answered {status}: {body}"));
            }
        }
        // The supervisor trains once the warm-up (1 s) is over and the rows are stored.
        let deadline = Instant::now() + SERVER_START_DEADLINE;
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let status = service.status().await.map_err(|error| error.to_string())?;
            if status["state"] == "ready" {
                eprintln!("model: {} rows", status["model"]["training_rows"]);
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("no model after {SERVER_START_DEADLINE:?}: {}", status["training_job"]));
            }
        }
        println!("listening on {address}");
        // Serve until the load generator closes our stdin (it ended, or it died).
        let _ = tokio::task::spawn_blocking(|| std::io::stdin().read_to_end(&mut Vec::new())).await;
        service.shutdown().await;
        Ok(())
    })
}

/// An HTTP client for the services: reqwest, which keeps the connection alive between
/// requests; every request is bounded by `REQUEST_TIMEOUT`.
fn client() -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(REQUEST_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .tcp_nodelay(true)
        .pool_max_idle_per_host(1)
        .build()
        .map_err(|error| format!("cannot build the HTTP client: {error}"))
}

/// `POST path` with a JSON body; returns the status and body.
async fn post(
    client: &reqwest::Client,
    address: SocketAddr,
    path: &str,
    body: Bytes,
) -> Result<(u16, String), String> {
    let failed = |error: reqwest::Error| format!("POST {path}: {error}");
    let response = client
        .post(format!("http://{address}{path}"))
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await
        .map_err(failed)?;
    let status = response.status().as_u16();
    Ok((status, response.text().await.map_err(failed)?))
}

/// The measuring side's client: requests sent one at a time from this thread, on a runtime of
/// its own.
struct HttpClient {
    runtime: tokio::runtime::Runtime,
    client: reqwest::Client,
    address: SocketAddr,
}

impl HttpClient {
    fn new(address: SocketAddr) -> Result<HttpClient, String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|error| format!("cannot start tokio: {error}"))?;
        Ok(HttpClient { runtime, client: client()?, address })
    }

    fn post(&self, path: &str, body: Bytes) -> Result<(u16, String), String> {
        self.runtime.block_on(post(&self.client, self.address, path, body))
    }
}

/// p50 and p99, in milliseconds, of single-row requests sent one at a time.
fn single_rows(address: SocketAddr) -> Result<(f64, f64), String> {
    let client = HttpClient::new(address)?;
    let mut latencies = Vec::with_capacity(SINGLE_REQUESTS);
    for index in 0..SINGLE_WARM_UP + SINGLE_REQUESTS {
        let body = Bytes::from(json!({"features": [feature_row(index as u64)]}).to_string());
        let started = Instant::now();
        let (status, answer) = client.post("/api/v1/analyze", body)?;
        let elapsed = started.elapsed();
        if status != 200 {
            return Err(format!("analyze answered {status}: {answer}"));
        }
        if index >= SINGLE_WARM_UP {
            latencies.push(elapsed);
        }
    }
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize].as_secs_f64() * 1000.0;
    Ok((at(0.5), at(0.99)))
}

/// Median rows per second of batches of `BATCH_SIZE` rows, parsing and answering included.
fn batches(address: SocketAddr) -> Result<f64, String> {
    let rows: Vec<Value> = (0..BATCH_SIZE).map(feature_row).collect();
    let body = Bytes::from(json!({ "features": rows }).to_string());
    let client = HttpClient::new(address)?;
    let mut rates = Vec::with_capacity(BATCHES);
    // The first batch warms up allocations and thread pools.
    for batch in 0..=BATCHES {
        let started = Instant::now();
        let (status, answer) = client.post("/api/v1/analyze", body.clone())?;
        if status != 200 {
            return Err(format!("analyze answered {status}: {}", &answer[..answer.len().min(300)]));
        }
        if batch > 0 {
            rates.push(BATCH_SIZE as f64 / started.elapsed().as_secs_f64());
        }
    }
    rates.sort_by(f64::total_cmp);
    Ok(rates[rates.len() / 2])
}

/// A line of `/proc/PID/status` in MB (`VmRSS`: resident now, `VmHWM`: the peak); `None`
/// where there is no procfs.
fn memory_mb(pid: u32, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))?;
    let kib: f64 = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
    Some(kib / 1024.0)
}

/// What one maximal batch of connection records costs: the sizes of its request and answer, and
/// Sentinel's resident memory before it and at its peak (Linux; `null` elsewhere).
fn max_batch_memory(address: SocketAddr, server_pid: u32) -> Result<Value, String> {
    let before = memory_mb(server_pid, "VmRSS");
    let now = SystemTime::now();
    let records: Vec<Value> = (0..MAX_BATCH_RECORDS).map(|index| record(index, now)).collect();
    let body = Bytes::from(json!({ "records": records }).to_string());
    let (status, answer) = HttpClient::new(address)?.post("/api/v1/analyze", body.clone())?;
    if status != 200 {
        return Err(format!("analyze answered {status}: {}", &answer[..answer.len().min(300)]));
    }
    Ok(json!({
        "records": MAX_BATCH_RECORDS,
        "request_mb": body.len() as f64 / 1e6,
        "answer_mb": answer.len() as f64 / 1e6,
        "resident_before_mb": before,
        "resident_peak_mb": memory_mb(server_pid, "VmHWM"),
    }))
}
