//! Load generator for `/api/v1/analyze` (figures in `docs/benchmarks.md`, "Network service").
//!
//! `cargo run --release -p sentinel-network --example analyze_load` starts the service in a child
//! process (this program with `serve`: no collector, a model trained on one minute of synthetic
//! ingested history), then, from this process over 127.0.0.1 only:
//! 1. sends single-record requests at a steady 1,000 requests/s for 10 s on 8 keep-alive
//!    connections and reports latency percentiles, measured from when each request was due (so a
//!    stall delays every request behind it and shows in the tail);
//! 2. posts 6 batches of 50,000 records (the default `api.max_batch_items`), one at a time, and
//!    reports records per second, the sizes of a batch's request and answer, and the server's
//!    resident memory before the batches and at its peak (Linux: `/proc/PID/status`), which is
//!    what one maximal batch costs.
//!
//! Everything is bounded so the run always ends by itself: the number of requests, a deadline
//! for the server to start (120 s) and for each request (30 s), after which the run stops with
//! an error; the child server is killed when this process ends, however it ends.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use serde_json::json;

const RATE: u64 = 1000;
const STEADY_FOR: Duration = Duration::from_secs(10);
const CONNECTIONS: u64 = 8;
const BATCH_SIZE: u64 = 50_000;
const BATCHES: usize = 6;
/// The server trains a model before it says it listens; on a loaded 2-core machine that takes
/// seconds, not minutes.
const SERVER_START_DEADLINE: Duration = Duration::from_secs(120);
/// A request taking longer than this means the server is stuck: the run stops.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

fn main() -> ExitCode {
    let outcome = if std::env::args().nth(1).as_deref() == Some("serve") { serve() } else { generate_load() };
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

fn generate_load() -> Result<(), String> {
    let program = std::env::current_exe().map_err(|error| format!("cannot find this program: {error}"))?;
    let mut child = Command::new(program)
        .arg("serve")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|error| format!("cannot start the server process: {error}"))?;
    let stdout = child.stdout.take().ok_or("no stdout from the server")?;
    let server_pid = child.id();
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
    steady_single_records(address)?;
    large_batches(address, server_pid)?;
    drop(server);
    Ok(())
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
        settings.training.warmup_secs = 1;
        settings.model.min_training_rows = 1000;
        let store = sentinel_store::Store::open(dir.path(), sentinel_store::StoreSettings::default())
            .map_err(|error| format!("the store did not open: {error}"))?;
        let service = sentinel_network::NetworkService::start(settings, dir.path(), Arc::new(store))
            .map_err(|error| format!("the service did not start: {error}"))?;
        let listener = sentinel_api::HttpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .map_err(|error| error.to_string())?;
        let address = listener.local_addr();
        let api = sentinel_api::ApiBuilder::new(sentinel_api::HttpSettings::default())
            .service(sentinel_network::router(Arc::clone(&service)))
            .build();
        tokio::spawn(async move { listener.serve(&api, std::future::pending()).await });
        let start = SystemTime::now() - Duration::from_secs(70);
        for second in 0..60u64 {
            let at = start + Duration::from_secs(second);
            let connections: Vec<serde_json::Value> =
                (0..100).map(|slot| record(second * 31 + slot, at)).collect();
            let snapshot = json!({"schema_version": 1, "host": "bench", "timestamp": humantime::format_rfc3339_micros(at).to_string(), "connections": connections});
            let (status, body) =
                post(&client()?, address, "/api/v1/ingest", Bytes::from(snapshot.to_string())).await?;
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

/// The HTTP client of one load connection: reqwest, which keeps the connection alive between
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

/// A runtime for one load thread: requests are sent with `block_on`, and the thread sleeps
/// between them with `std::thread::sleep`, finer than tokio's millisecond timer.
fn thread_runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| format!("cannot start tokio: {error}"))
}

fn steady_single_records(address: SocketAddr) -> Result<(), String> {
    let per_connection = Duration::from_secs_f64(CONNECTIONS as f64 / RATE as f64);
    let requests_per_connection = RATE * STEADY_FOR.as_secs() / CONNECTIONS;
    let start = Instant::now() + Duration::from_millis(100);
    let workers: Vec<_> = (0..CONNECTIONS)
        .map(|worker| {
            std::thread::spawn(move || -> Result<Vec<Duration>, String> {
                let runtime = thread_runtime()?;
                let client = client()?;
                let body = Bytes::from(json!({"records": [record(worker, SystemTime::now())]}).to_string());
                let mut latencies = Vec::with_capacity(requests_per_connection as usize);
                let mut due = start + per_connection.mul_f64(worker as f64 / CONNECTIONS as f64);
                for _ in 0..requests_per_connection {
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    let (status, answer) =
                        runtime.block_on(post(&client, address, "/api/v1/analyze", body.clone()))?;
                    if status != 200 {
                        return Err(format!("analyze answered {status}: {answer}"));
                    }
                    latencies.push(due.elapsed());
                    due += per_connection;
                }
                Ok(latencies)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for worker in workers {
        latencies.extend(worker.join().map_err(|_| "a load thread panicked".to_owned())??);
    }
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    println!(
        "single records at {RATE}/s for {STEADY_FOR:?}: {} requests, p50 {:?}, p90 {:?}, p99 {:?}, max {:?}",
        latencies.len(),
        at(0.5),
        at(0.9),
        at(0.99),
        latencies[latencies.len() - 1]
    );
    Ok(())
}

/// A line of `/proc/PID/status` in MB (`VmRSS`: resident now, `VmHWM`: the peak); `None`
/// where there is no procfs.
fn memory_mb(pid: u32, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))?;
    let kib: f64 = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
    Some(kib / 1024.0)
}

fn large_batches(address: SocketAddr, server_pid: u32) -> Result<(), String> {
    let before = memory_mb(server_pid, "VmRSS");
    let now = SystemTime::now();
    let records: Vec<serde_json::Value> = (0..BATCH_SIZE).map(|index| record(index, now)).collect();
    let body = Bytes::from(json!({ "records": records }).to_string());
    let runtime = thread_runtime()?;
    let client = client()?;
    // The first batch warms up allocations and the blocking pool.
    let (status, answer) = runtime.block_on(post(&client, address, "/api/v1/analyze", body.clone()))?;
    if status != 200 {
        return Err(format!("analyze answered {status}: {}", &answer[..answer.len().min(300)]));
    }
    let mut rates = Vec::with_capacity(BATCHES);
    let mut answer_bytes = answer.len();
    for _ in 0..BATCHES {
        let started = Instant::now();
        let (status, answer) = runtime.block_on(post(&client, address, "/api/v1/analyze", body.clone()))?;
        if status != 200 {
            return Err(format!("analyze answered {status}: {}", &answer[..answer.len().min(300)]));
        }
        rates.push(BATCH_SIZE as f64 / started.elapsed().as_secs_f64());
        answer_bytes = answer.len();
    }
    rates.sort_by(f64::total_cmp);
    match (before, memory_mb(server_pid, "VmHWM")) {
        (Some(before), Some(peak)) => println!(
            "one batch of {BATCH_SIZE} records: request {:.1} MB, answer {:.1} MB; server resident memory \
             {before:.0} MB before the batches, {peak:.0} MB at its peak ({:.0} MB for one batch)",
            body.len() as f64 / 1e6,
            answer_bytes as f64 / 1e6,
            peak - before
        ),
        _ => println!("(no /proc: the server's memory is not measured)"),
    }
    println!(
        "batches of {BATCH_SIZE} records ({} MB of JSON): median {:.0} records/s, min {:.0}, max {:.0}",
        body.len() / 1_000_000,
        rates[rates.len() / 2],
        rates[0],
        rates[rates.len() - 1]
    );
    Ok(())
}
