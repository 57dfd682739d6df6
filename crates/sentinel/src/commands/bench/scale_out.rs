//! `sentinel bench scale-out`: what the scale-out mode (docs/scale-out.md) buys and costs,
//! measured in one run with real processes, and what a fleet would need by that measure.
//!
//! - network ingest until stored: the same snapshots (a new host each, so every connection is a
//!   stored row) posted by concurrent clients to (a) one embedded `sentinel serve` (SQLite, no
//!   broker), (b) a front end and one worker (`[server] roles`, `--broker`, `--store`) on a
//!   scratch PostgreSQL database and a NATS server of the run's own, (c) the same with two
//!   workers; timed from the first post until every row is stored;
//! - VirusTotal cache hits: a report fetched once from a fake VirusTotal, then asked for again
//!   and again over the protocol, on the SQLite store against the PostgreSQL store;
//! - an estimate for `--fleet-hosts` hosts with `--fleet-connections` connections each, one
//!   record per connection per second, worked out from the measured rates.
//!
//! The collectors are off (`[network] collect = false`) so only the posted rows are written.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use bytes::Bytes;
use sentinel_protocol::{Client, Command, Request, Response};
use sentinel_testkit::connection_records::{connection_record, snapshot};
use sentinel_testkit::fake_virustotal::{FakeVt, sha256_hex};
use sentinel_testkit::http_client::ApiClient;
use sentinel_testkit::nats_server::{self, NatsServer};
use sentinel_testkit::postgres::ScratchDatabase;
use sentinel_testkit::serve_process::{ServeCommand, ServeProcess};
use serde_json::{Value, json};

use crate::commands::table::{self, Style};
use crate::config::Config;

/// A VirusTotal key the fake accepts; never a real one.
const VT_KEY: &str = "be4c4be4c4be4c4be4c4be4c4be4c4be4c4be4c4be4c4be4c4be4c4be4c4be4c";

#[derive(clap::Args)]
pub struct Args {
    /// Agents (distinct hosts), one snapshot each.
    #[arg(long, default_value_t = 400)]
    agents: usize,
    /// Connections per snapshot.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u16).range(1..=10_000))]
    connections: u16,
    /// Concurrent clients posting snapshots.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// VirusTotal requests for the cached report, one after the other, per store.
    #[arg(long, default_value_t = 500)]
    vt_requests: usize,
    /// Seconds the workers are given to share the partitions before the load starts.
    #[arg(long, default_value_t = 12)]
    settle_seconds: u64,
    /// Hosts of the fleet estimate.
    #[arg(long, default_value_t = 10_000)]
    fleet_hosts: u64,
    /// Connections per host of the fleet estimate (one record each per second).
    #[arg(long, default_value_t = 50)]
    fleet_connections: u64,
    /// Print the results as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args, _config: &Config) -> anyhow::Result<()> {
    if !nats_server::available() {
        bail!("nats-server is needed for the broker runs (Debian's nats-server package)");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let report = runtime.block_on(measure(&args))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&args, &report);
    }
    Ok(())
}

async fn measure(args: &Args) -> anyhow::Result<Value> {
    let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
    let bodies = snapshots(args);
    let bytes_per_snapshot =
        bodies.iter().map(String::len).sum::<usize>() as f64 / bodies.len().max(1) as f64;

    let embedded = {
        let served = ServeCommand::new(executable()?, dir.path().join("embedded"))
            .config("[network]\ncollect = false\n")
            .envs_unlimited()
            .start();
        let api = served.api();
        let measured = ingest(args, &bodies, &api, || super::store::stored_rows(&api)).await;
        stop(vec![served]);
        measured?
    };
    let one_worker = broker_ingest(args, &bodies, &dir.path().join("broker-1"), 1).await?;
    let two_workers = broker_ingest(args, &bodies, &dir.path().join("broker-2"), 2).await?;

    let vt_sqlite = vt_latency(args, &dir.path().join("vt-sqlite"), None).await?;
    let database = ScratchDatabase::create("bench vt");
    let vt_postgres = vt_latency(args, &dir.path().join("vt-postgres"), Some(&database)).await?;
    drop(database);

    let fleet = fleet_estimate(args, bytes_per_snapshot, &one_worker, &two_workers);
    Ok(json!({
        "agents": args.agents, "connections_per_snapshot": args.connections, "clients": args.clients,
        "bytes_per_snapshot": bytes_per_snapshot,
        "ingest": {"embedded": embedded, "broker_1_worker": one_worker, "broker_2_workers": two_workers},
        "vt_cache_hit": {"requests": args.vt_requests, "sqlite": vt_sqlite, "postgres": vt_postgres},
        "fleet": fleet,
    }))
}

fn executable() -> anyhow::Result<std::path::PathBuf> {
    std::env::current_exe().context("cannot find the sentinel executable")
}

/// Client limits far above the benchmark's load: every client comes from 127.0.0.1.
trait Unlimited {
    fn envs_unlimited(self) -> Self;
}

impl Unlimited for ServeCommand {
    fn envs_unlimited(self) -> Self {
        self.env("SENTINEL_SERVER__CLIENT_REQUEST_RATE", "1000000000")
            .env("SENTINEL_SERVER__CLIENT_REQUEST_BURST", "1000000000")
    }
}

fn stop(processes: Vec<ServeProcess>) {
    for mut process in processes {
        process.signal("-TERM");
        process.wait_exit(Duration::from_secs(20));
    }
}

/// One snapshot per agent, each of a host of its own: every connection is new to the tracker
/// wherever it is scored, so each is one stored row.
fn snapshots(args: &Args) -> Vec<String> {
    (0..args.agents)
        .map(|index| {
            let host = format!("bench-{index}");
            let now = SystemTime::now();
            let connections = (0..args.connections)
                .map(|slot| {
                    connection_record(&host, "client", 443, 40_000u16.wrapping_add(slot), 400, 2500, now)
                })
                .collect();
            snapshot(&host, now, connections).to_string()
        })
        .collect()
}

/// A front end and `workers` workers on a new PostgreSQL database and a new NATS server.
async fn broker_ingest(args: &Args, bodies: &[String], dir: &Path, workers: usize) -> anyhow::Result<Value> {
    let nats = NatsServer::start(dir);
    let database = ScratchDatabase::create("bench scale out");
    let data_dir = dir.join("data");
    let executable = executable()?;
    let replica = |roles: &str| {
        ServeCommand::new(&executable, &data_dir)
            .config(&format!(
                "[server]\nroles = [\"{roles}\"]\n\n[broker]\npartitions = 4\n\n[network]\ncollect = false\n"
            ))
            .args(["--broker", &nats.url(), "--store", database.url()])
            .envs_unlimited()
            .start()
    };
    let mut processes = vec![replica("frontend")];
    for _ in 0..workers {
        processes.push(replica("worker"));
    }
    // Workers take partitions as they start and give up extras once they see each other
    // (leases renewed every 5 s): the load starts when they share them.
    tokio::time::sleep(Duration::from_secs(args.settle_seconds)).await;
    let api = processes[0].api();
    let measured = ingest(args, bodies, &api, || postgres_rows(&database)).await;
    stop(processes);
    drop(database);
    drop(nats);
    measured.map(|mut value| {
        value["workers"] = json!(workers);
        value
    })
}

async fn postgres_rows(database: &ScratchDatabase) -> anyhow::Result<(u64, u64)> {
    let rows = database
        .query_i64("SELECT count(*) FROM network_features")
        .map_err(|error| anyhow::anyhow!("cannot count network_features: {error}"))?;
    // Nothing is pending on the shared store's side: the broker holds what is not yet stored.
    Ok((u64::MAX, rows as u64))
}

/// Posts the snapshots from concurrent clients (503, busy, is retried) and waits until every
/// connection is stored: `rows` gives (pending snapshots, rows), pending `u64::MAX` when only
/// the row count tells.
async fn ingest<F, Fut>(args: &Args, bodies: &[String], api: &ApiClient, rows: F) -> anyhow::Result<Value>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<(u64, u64)>>,
{
    let rows_before = rows().await?.1;
    let expected = bodies.len() as u64 * u64::from(args.connections);
    let bodies: std::sync::Arc<Vec<String>> = std::sync::Arc::new(bodies.to_vec());
    let started = Instant::now();
    super::store::post_snapshots(api, std::sync::Arc::clone(&bodies), args.clients).await?;
    let posted = started.elapsed().as_secs_f64();
    let deadline = Instant::now() + Duration::from_secs(900);
    let stored = loop {
        let (pending, now) = rows().await?;
        let stored = now.saturating_sub(rows_before);
        if pending == 0 || (pending == u64::MAX && stored >= expected) {
            break stored;
        }
        if Instant::now() > deadline {
            bail!("{stored} of {expected} rows stored after 15 minutes");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let seconds = started.elapsed().as_secs_f64();
    if stored != expected {
        bail!("{stored} rows stored, {expected} posted");
    }
    Ok(json!({
        "rows": stored, "seconds": seconds, "posting_seconds": posted,
        "records_per_s": stored as f64 / seconds, "snapshots_per_s": bodies.len() as f64 / seconds,
    }))
}

/// One `sentinel serve` (SQLite, or PostgreSQL with `database`) asking a fake VirusTotal: the
/// first request fetches the report, the next `vt_requests` are answered from the dataset.
async fn vt_latency(
    args: &Args,
    data_dir: &Path,
    database: Option<&ScratchDatabase>,
) -> anyhow::Result<Value> {
    let vt = FakeVt::start().await;
    vt.state.add_key(VT_KEY);
    let sha256 = sha256_hex(b"a sample asked about again and again");
    vt.state.add_report(&sha256, 41, 70);
    let mut command = ServeCommand::new(executable()?, data_dir)
        .config("[network]\nenabled = false\n")
        .args(["--vt-base-url", &vt.base_url])
        .envs_unlimited();
    if let Some(database) = database {
        command = command.args(["--store", database.url()]);
    }
    let served = command.start();
    let measured = async {
        let mut client = Client::connect(served.tcp).await?;
        let request = Request::new(
            Command::VtAnalyse,
            vec![Bytes::new(), Bytes::from(sha256.clone()), Bytes::from_static(VT_KEY.as_bytes())],
        );
        let mut times = Vec::with_capacity(args.vt_requests);
        for attempt in 0..=args.vt_requests {
            let started = Instant::now();
            let response = client.request(&request).await?;
            if attempt > 0 {
                times.push(started.elapsed());
            }
            if !matches!(response, Response::Yes(_)) {
                bail!("a VirusTotal request failed: {response:?}");
            }
        }
        let calls = vt.state.count("GET", "/api/v3/files/");
        if calls != 1 {
            bail!("{calls} calls to VirusTotal: the report was not answered from the dataset");
        }
        times.sort();
        anyhow::Ok(json!({"p50_ms": percentile(&times, 0.5), "p99_ms": percentile(&times, 0.99)}))
    }
    .await;
    stop(vec![served]);
    measured
}

fn percentile(sorted: &[Duration], fraction: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    sorted.get(index).map_or(0.0, |duration| duration.as_secs_f64() * 1000.0)
}

/// What `fleet_hosts` hosts with `fleet_connections` connections each need, one record per
/// connection per second and one snapshot per host per second, at the measured rates: workers
/// at the two-worker run's rate per worker (the one-worker rate when that is higher), broker
/// messages and bytes per second, and database rows per second (a feature row per record and a
/// delivery row per snapshot).
fn fleet_estimate(args: &Args, bytes_per_snapshot: f64, one: &Value, two: &Value) -> Value {
    let rate = |value: &Value| value["records_per_s"].as_f64().unwrap_or(0.0);
    let per_worker = rate(one).max(rate(two) / 2.0);
    let records = (args.fleet_hosts * args.fleet_connections) as f64;
    let bytes_per_record = bytes_per_snapshot / f64::from(args.connections);
    let snapshot_bytes = bytes_per_record * args.fleet_connections as f64;
    json!({
        "hosts": args.fleet_hosts, "connections_per_host": args.fleet_connections,
        "records_per_s": records, "records_per_s_per_worker": per_worker,
        "workers": if per_worker > 0.0 { (records / per_worker).ceil() } else { f64::INFINITY },
        "broker_messages_per_s": args.fleet_hosts, "broker_bytes_per_s": snapshot_bytes * args.fleet_hosts as f64,
        "database_rows_per_s": records + args.fleet_hosts as f64,
    })
}

fn print_report(args: &Args, report: &Value) {
    println!(
        "Scale-out: {} agents' snapshots × {} connections from {} clients, until stored; {} VirusTotal \
         cache hits per store",
        args.agents, args.connections, args.clients, args.vt_requests
    );
    let ingest = &report["ingest"];
    let embedded = ingest["embedded"]["records_per_s"].as_f64().unwrap_or(0.0);
    let mut table = table::new(
        Style::Markdown,
        &["ingest until stored", "seconds", "records/s", "snapshots/s", "/ embedded"],
        &[1, 2, 3, 4],
    );
    for (name, key) in [
        ("embedded (SQLite, no broker)", "embedded"),
        ("front end + 1 worker (PostgreSQL, NATS)", "broker_1_worker"),
        ("front end + 2 workers (PostgreSQL, NATS)", "broker_2_workers"),
    ] {
        let run = &ingest[key];
        let records = run["records_per_s"].as_f64().unwrap_or(0.0);
        table.add_row([
            name.to_owned(),
            format!("{:.2}", run["seconds"].as_f64().unwrap_or(0.0)),
            format!("{records:.0}"),
            format!("{:.1}", run["snapshots_per_s"].as_f64().unwrap_or(0.0)),
            if embedded > 0.0 { format!("{:.2}", records / embedded) } else { "-".into() },
        ]);
    }
    println!("{table}\n");

    let vt = &report["vt_cache_hit"];
    let mut table = table::new(
        Style::Markdown,
        &["VirusTotal cache hit", "SQLite", "PostgreSQL", "PostgreSQL / SQLite"],
        &[1, 2, 3],
    );
    for (name, key) in [("p50 ms", "p50_ms"), ("p99 ms", "p99_ms")] {
        let (sqlite, postgres) =
            (vt["sqlite"][key].as_f64().unwrap_or(0.0), vt["postgres"][key].as_f64().unwrap_or(0.0));
        let ratio = if sqlite > 0.0 { format!("{:.2}", postgres / sqlite) } else { "-".into() };
        table.add_row([name.to_owned(), format!("{sqlite:.3}"), format!("{postgres:.3}"), ratio]);
    }
    println!("{table}\n");

    let fleet = &report["fleet"];
    let number = |key: &str| fleet[key].as_f64().unwrap_or(0.0);
    println!(
        "Fleet estimate: {} hosts × {} connections, one record per connection per second = {:.0} records/s \
         ({} snapshots/s, one per host).",
        args.fleet_hosts,
        args.fleet_connections,
        number("records_per_s"),
        args.fleet_hosts
    );
    println!(
        "  workers: {:.0} records/s ÷ {:.0} records/s per worker (measured) = {:.0} workers",
        number("records_per_s"),
        number("records_per_s_per_worker"),
        number("workers")
    );
    println!(
        "  broker: {} messages/s, {:.0} bytes/record × {} records/host × {} hosts = {:.1} MB/s",
        args.fleet_hosts,
        report["bytes_per_snapshot"].as_f64().unwrap_or(0.0) / f64::from(args.connections),
        args.fleet_connections,
        args.fleet_hosts,
        number("broker_bytes_per_s") / 1e6
    );
    println!(
        "  database: {:.0} feature rows/s + {} delivery rows/s = {:.0} rows/s",
        number("records_per_s"),
        args.fleet_hosts,
        number("database_rows_per_s")
    );
}
