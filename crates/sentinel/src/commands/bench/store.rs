//! `sentinel bench store`: what encryption at rest costs, measured in one run. It starts two
//! `sentinel serve` processes (the same executable) on temporary data directories, one plain and
//! one with a new store key (`SENTINEL_STORE_KEY`), gives both the same load and prints both with
//! the ratio encrypted / plain:
//!
//! - sample submission: static-analysis requests over the protocol, one after the other on one
//!   connection, each a new sample (hashed, stored in the vault, scored, its verdict committed):
//!   latency p50 and p99 per file size;
//! - network ingest: agents' snapshots posted to `/api/v1/ingest` by concurrent clients, timed
//!   until every accepted snapshot is stored (`pending_snapshots` back to 0): rows per second.
//!
//! The collectors are off (`[network] collect = false`) so only the posted rows are written.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use bytes::Bytes;
use sentinel_protocol::{Client, Command, Request, Response};
use sentinel_store::{STORE_KEY_ENV, StoreKey};
use sentinel_testkit::connection_records::{connection_record, snapshot};
use sentinel_testkit::http_client::ApiClient;
use sentinel_testkit::synthetic_pe;
use serde_json::{Value, json};

use crate::commands::table::{self, Style};
use crate::config::Config;

#[derive(clap::Args)]
pub struct Args {
    /// File sizes of the submission runs, in KiB, separated by commas.
    #[arg(long, value_delimiter = ',', default_value = "10,1024")]
    sizes_kib: Vec<usize>,
    /// Samples submitted per size (each a new one).
    #[arg(long, default_value_t = 200)]
    samples: usize,
    /// Snapshots posted in the ingest run.
    #[arg(long, default_value_t = 400)]
    snapshots: usize,
    /// Connections per snapshot.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u16).range(1..=10_000))]
    connections: u16,
    /// Concurrent clients posting snapshots.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Print the results as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args, _config: &Config) -> anyhow::Result<()> {
    let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
    let key = StoreKey::generate()?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let mut results = Vec::new();
    for (name, key) in [("plain", None), ("encrypted", Some(&key))] {
        let mut served = Served::start(&dir.path().join(name), key)?;
        let measured = runtime.block_on(measure(&args, &served));
        served.stop();
        results.push((name, measured?));
    }
    let report = json!({
        "samples": args.samples, "snapshots": args.snapshots, "connections_per_snapshot": args.connections,
        "clients": args.clients, "plain": results[0].1, "encrypted": results[1].1,
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&args, &report);
    }
    Ok(())
}

/// `sentinel serve` in a child process, with every client limit above the benchmark's load.
struct Served {
    child: Child,
    tcp: SocketAddr,
    api: ApiClient,
}

impl Served {
    fn start(data_dir: &Path, key: Option<&StoreKey>) -> anyhow::Result<Served> {
        let executable = std::env::current_exe().context("cannot find the sentinel executable")?;
        let mut command = std::process::Command::new(executable);
        command
            .args(["serve", "--tcp-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .env("SENTINEL_NETWORK__COLLECT", "false")
            .env("SENTINEL_SERVER__CLIENT_REQUEST_RATE", "1000000000")
            .env("SENTINEL_SERVER__CLIENT_REQUEST_BURST", "1000000000")
            .env("RUST_LOG", "warn")
            .env_remove(STORE_KEY_ENV)
            .stdout(Stdio::piped());
        if let Some(key) = key {
            command.env(STORE_KEY_ENV, key.to_hex().as_str());
        }
        let mut child = command.spawn().context("cannot start `sentinel serve`")?;
        let stdout = child.stdout.take().context("no stdout from the server")?;
        let mut lines = BufReader::new(stdout).lines();
        let mut tcp = None;
        // The HTTP address comes last.
        let http = loop {
            let Some(line) = lines.next() else {
                let _ = child.kill();
                bail!("the server exited before printing its addresses");
            };
            let line = line?;
            if let Some(address) = line.strip_prefix("tcp listening on ") {
                tcp = Some(address.parse().context("unreadable server address")?);
            } else if let Some(address) = line.strip_prefix("http listening on ") {
                break address.parse().context("unreadable server address")?;
            }
        };
        std::thread::spawn(move || lines.for_each(drop));
        let tcp = tcp.context("the server did not print its protocol address")?;
        let token =
            std::fs::read_to_string(data_dir.join("admin.token")).context("cannot read admin.token")?;
        Ok(Served { child, tcp, api: ApiClient::new(http, Some(token.trim().to_owned())) })
    }

    fn stop(&mut self) {
        let _ = std::process::Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let _ = self.child.wait();
    }
}

async fn measure(args: &Args, served: &Served) -> anyhow::Result<Value> {
    let mut submissions = Vec::new();
    for &size_kib in &args.sizes_kib {
        submissions.push(submission_latency(served.tcp, size_kib, args.samples).await?);
    }
    Ok(json!({"submission": submissions, "ingest": ingest_throughput(args, &served.api).await?}))
}

async fn submission_latency(tcp: SocketAddr, size_kib: usize, samples: usize) -> anyhow::Result<Value> {
    let mut client = Client::connect(tcp).await?;
    // One warm-up request: first-touch costs are not the steady state.
    let warm_up =
        Request::new(Command::StaticAnalyse, vec![Bytes::from(synthetic_pe(size_kib * 1024, u64::MAX))]);
    client.request(&warm_up).await?;
    let mut times = Vec::with_capacity(samples);
    for seed in 0..samples as u64 {
        let request =
            Request::new(Command::StaticAnalyse, vec![Bytes::from(synthetic_pe(size_kib * 1024, seed))]);
        let started = Instant::now();
        let response = client.request(&request).await?;
        times.push(started.elapsed());
        if !matches!(response, Response::Yes(_)) {
            bail!("a {size_kib} KiB submission failed: {response:?}");
        }
    }
    times.sort();
    Ok(json!({"size_kib": size_kib, "p50_ms": percentile(&times, 0.5), "p99_ms": percentile(&times, 0.99)}))
}

fn percentile(sorted: &[Duration], fraction: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    sorted.get(index).map_or(0.0, |duration| duration.as_secs_f64() * 1000.0)
}

/// Posts the snapshots from concurrent clients (503, the pipeline being busy, is retried) and
/// waits until all of them are stored.
async fn ingest_throughput(args: &Args, api: &ApiClient) -> anyhow::Result<Value> {
    let rows_before = stored_rows(api).await?.1;
    let bodies: Arc<Vec<String>> = Arc::new(
        (0..args.snapshots)
            .map(|index| {
                // A host per snapshot: every connection is new to the tracker, so each is a row.
                let host = format!("bench-{index}");
                let now = SystemTime::now();
                let connections = (0..args.connections)
                    .map(|slot| connection_record(&host, "client", 443, 40_000 + slot, 400, 2500, now))
                    .collect();
                snapshot(&host, now, connections).to_string()
            })
            .collect(),
    );
    let started = Instant::now();
    post_snapshots(api, bodies, args.clients).await?;
    let deadline = Instant::now() + Duration::from_secs(600);
    let rows = loop {
        let (pending, rows) = stored_rows(api).await?;
        if pending == 0 {
            break rows;
        }
        if Instant::now() > deadline {
            bail!("{pending} snapshots still not stored after 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let seconds = started.elapsed().as_secs_f64();
    let rows = rows.saturating_sub(rows_before);
    Ok(json!({"rows": rows, "seconds": seconds, "rows_per_s": rows as f64 / seconds}))
}

/// Snapshots waiting in the journal, and feature rows stored.
pub(super) async fn stored_rows(api: &ApiClient) -> anyhow::Result<(u64, u64)> {
    let answer = api.try_send("GET", "/api/v1/models/status", None).await?;
    if answer.status != 200 {
        bail!("/api/v1/models/status answered {}: {}", answer.status, answer.body);
    }
    let status: Value = serde_json::from_str(&answer.body).context("/api/v1/models/status is not JSON")?;
    let number = |value: &Value| value.as_u64().context("/api/v1/models/status lacks a count");
    Ok((number(&status["storage"]["pending_snapshots"])?, number(&status["warmup"]["rows"])?))
}

fn print_table(args: &Args, report: &Value) {
    println!(
        "Encryption at rest: two `sentinel serve` processes, plain and with a store key, same load \
         ({} samples per size, {} snapshots × {} connections from {} clients)",
        args.samples, args.snapshots, args.connections, args.clients
    );
    let mut table =
        table::new(Style::Markdown, &["measure", "plain", "encrypted", "encrypted / plain"], &[1, 2, 3]);
    let mut row = |name: String, plain: &Value, encrypted: &Value, digits: usize| {
        let (plain, encrypted) = (plain.as_f64().unwrap_or(0.0), encrypted.as_f64().unwrap_or(0.0));
        let ratio = if plain > 0.0 { format!("{:.2}", encrypted / plain) } else { "-".into() };
        table.add_row([name, format!("{plain:.digits$}"), format!("{encrypted:.digits$}"), ratio]);
    };
    let (plain, encrypted) = (&report["plain"], &report["encrypted"]);
    for (index, submission) in plain["submission"].as_array().into_iter().flatten().enumerate() {
        let other = &encrypted["submission"][index];
        let size = &submission["size_kib"];
        row(format!("submission {size} KiB, p50 ms"), &submission["p50_ms"], &other["p50_ms"], 2);
        row(format!("submission {size} KiB, p99 ms"), &submission["p99_ms"], &other["p99_ms"], 2);
    }
    row(
        "network ingest, rows/s".into(),
        &plain["ingest"]["rows_per_s"],
        &encrypted["ingest"]["rows_per_s"],
        0,
    );
    println!("{table}");
}

/// Posts every body to `/api/v1/ingest`, spread over `clients` concurrent clients, each retrying
/// a 503 (the ingest queue full, or the broker away) until it is accepted; fails on any other
/// answer. Shared by `bench store` and `bench scale-out`.
pub(super) async fn post_snapshots(
    api: &ApiClient,
    bodies: Arc<Vec<String>>,
    clients: usize,
) -> anyhow::Result<()> {
    let clients = clients.max(1);
    let mut tasks = Vec::new();
    for client in 0..clients {
        let (bodies, api) = (Arc::clone(&bodies), api.clone());
        tasks.push(tokio::spawn(async move {
            for body in bodies.iter().skip(client).step_by(clients) {
                loop {
                    let answer = api.try_send("POST", "/api/v1/ingest", Some(body.as_bytes())).await?;
                    match answer.status {
                        202 => break,
                        503 => tokio::time::sleep(Duration::from_millis(5)).await,
                        status => bail!("ingest answered {status}: {}", answer.body),
                    }
                }
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}
