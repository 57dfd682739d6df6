//! Load generator for `/api/v1/analyze` (figures in `docs/benchmarks.md`, "Network service").
//!
//! `cargo run --release -p sentinel-network --example analyze_load` starts the service in a child
//! process (this program with `serve`: no collector, a model trained on synthetic ingested
//! history), then, from this process over loopback:
//! 1. sends single-record requests at a steady 1,000 requests/s for 10 s on 8 keep-alive
//!    connections and reports latency percentiles, measured from when each request was due (so a
//!    stall delays every request behind it and shows in the tail);
//! 2. posts batches of 50,000 records and reports records per second.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::json;

fn main() {
    if std::env::args().nth(1).as_deref() == Some("serve") {
        serve();
        return;
    }
    let mut child = Command::new(std::env::current_exe().unwrap())
        .arg("serve")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let address: SocketAddr = loop {
        let line = lines.next().expect("server output").unwrap();
        if let Some(address) = line.strip_prefix("listening on ") {
            break address.parse().unwrap();
        }
    };
    steady_single_records(address, 1000, Duration::from_secs(10), 8);
    large_batches(address, 50_000, 6);
    drop(child.stdin.take());
    let _ = child.wait();
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

/// The server: service with a model trained on one minute of synthetic history.
fn serve() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = sentinel_network::NetworkSettings { collect: false, ..Default::default() };
        settings.training.warmup_secs = 1;
        settings.model.min_training_rows = 1000;
        let service = sentinel_network::NetworkService::start(settings, dir.path()).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let app = sentinel_network::router(Arc::clone(&service));
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let start = SystemTime::now() - Duration::from_secs(70);
        for second in 0..60u64 {
            let at = start + Duration::from_secs(second);
            let connections: Vec<serde_json::Value> =
                (0..100).map(|slot| record(second * 31 + slot, at)).collect();
            let snapshot = json!({"schema_version": 1, "host": "bench", "timestamp": humantime::format_rfc3339_micros(at).to_string(), "connections": connections});
            let (status, body) = tokio::task::spawn_blocking(move || {
                let mut stream = TcpStream::connect(address).unwrap();
                exchange(&mut stream, "/api/v1/ingest", snapshot.to_string().as_bytes())
            })
            .await
            .unwrap();
            assert_eq!(status, 202, "{body}");
        }
        // The supervisor trains once the warm-up (1 s) is over and the rows are stored.
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let status = service.status().await.unwrap();
            if status["state"] == "ready" {
                eprintln!("model: {} rows", status["model"]["training_rows"]);
                break;
            }
        }
        println!("listening on {address}");
        tokio::task::spawn_blocking(|| std::io::stdin().read_to_end(&mut Vec::new())).await.unwrap().unwrap();
        service.shutdown().await;
    });
}

/// One request on a keep-alive connection; returns the status and body.
fn exchange(stream: &mut TcpStream, path: &str, body: &[u8]) -> (u16, String) {
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut reader = BufReader::new(stream);
    let mut status_line = String::new();
    reader.read_line(&mut status_line).unwrap();
    let status: u16 = status_line.split(' ').nth(1).unwrap().parse().unwrap();
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line == "\r\n" {
            break;
        }
        if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = value.trim().parse().unwrap();
        }
    }
    let mut content = vec![0u8; length];
    reader.read_exact(&mut content).unwrap();
    (status, String::from_utf8_lossy(&content).into_owned())
}

fn steady_single_records(address: SocketAddr, rate: u64, duration: Duration, connections: u64) {
    let per_connection = Duration::from_secs_f64(connections as f64 / rate as f64);
    let start = Instant::now() + Duration::from_millis(100);
    let workers: Vec<_> = (0..connections)
        .map(|worker| {
            std::thread::spawn(move || {
                let mut stream = TcpStream::connect(address).unwrap();
                stream.set_nodelay(true).unwrap();
                let body = json!({"records": [record(worker, SystemTime::now())]}).to_string();
                let mut latencies = Vec::new();
                let offset = per_connection.mul_f64(worker as f64 / connections as f64);
                let mut due = start + offset;
                while due < start + duration {
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    let (status, answer) = exchange(&mut stream, "/api/v1/analyze", body.as_bytes());
                    assert_eq!(status, 200, "{answer}");
                    latencies.push(due.elapsed());
                    due += per_connection;
                }
                latencies
            })
        })
        .collect();
    let mut latencies: Vec<Duration> =
        workers.into_iter().flat_map(|worker| worker.join().unwrap()).collect();
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    println!(
        "single records at {rate}/s for {:?}: {} requests, p50 {:?}, p90 {:?}, p99 {:?}, max {:?}",
        duration,
        latencies.len(),
        at(0.5),
        at(0.9),
        at(0.99),
        latencies[latencies.len() - 1]
    );
}

fn large_batches(address: SocketAddr, size: u64, count: usize) {
    let now = SystemTime::now();
    let records: Vec<serde_json::Value> = (0..size).map(|index| record(index, now)).collect();
    let body = json!({ "records": records }).to_string();
    let mut stream = TcpStream::connect(address).unwrap();
    // The first batch warms up allocations and the blocking pool.
    let (status, answer) = exchange(&mut stream, "/api/v1/analyze", body.as_bytes());
    assert_eq!(status, 200, "{}", &answer[..answer.len().min(300)]);
    let mut rates = Vec::new();
    for _ in 0..count {
        let started = Instant::now();
        let (status, _) = exchange(&mut stream, "/api/v1/analyze", body.as_bytes());
        assert_eq!(status, 200);
        rates.push(size as f64 / started.elapsed().as_secs_f64());
    }
    rates.sort_by(f64::total_cmp);
    println!(
        "batches of {size} records ({} MB of JSON): median {:.0} records/s, min {:.0}, max {:.0}",
        body.len() / 1_000_000,
        rates[rates.len() / 2],
        rates[0],
        rates[rates.len() - 1]
    );
}
