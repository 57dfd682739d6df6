//! `sentinel bench server`: load-tests the protocol server from outside, as
//! central servers see it. It starts `sentinel serve` as a child process (the
//! same executable) on free ports with a temporary data directory, then
//! measures, through TCP: static-analysis latency (p50/p99) for PE files from
//! 10 KB to 20 MB, requests per second with 64 concurrent clients, and the
//! server's resident memory with 1,000 idle connections. With `--tls` the
//! latency and throughput runs are repeated over the TLS 1.3 port with client
//! certificates (mutual TLS) in the same run, and the cost of a handshake is
//! measured (`server_tls`). With `--compare`, it instead starts one server per variant (vault
//! compression settings of this build, or another `sentinel` executable as a baseline) and
//! measures their latency side by side (p50, p99 and the slowest request), request by request
//! in turn, so every variant sees the same machine load, and where each server's time went,
//! stage by stage, from its metrics (`server_stages`); with `--link-mbit`, the timed requests
//! leave at a network link's speed (`paced_link`). Timed requests follow a rest that lasts until
//! the servers' background work is done (`server_quiet`).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use sentinel_protocol::{Client, Command, Request, Response};
use sentinel_testkit::synthetic_pe;
use serde_json::json;
use tokio::net::TcpStream;

use super::paced_link::PacedClient;
use super::server_quiet;
use super::server_stages::{self, StageTotals};
use super::server_tls::{self, Connector};
use crate::commands::table::{self, Style};
use crate::config::Config;

#[derive(clap::Args)]
pub struct Args {
    /// File sizes for the latency table, in KiB, separated by commas.
    #[arg(long, value_delimiter = ',', default_value = "10,100,1024,5120,20480")]
    sizes_kib: Vec<usize>,
    /// Concurrent clients for the throughput run.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Duration of the throughput run, in seconds.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Size of the files of the throughput run, in KiB.
    #[arg(long, default_value_t = 100)]
    throughput_kib: usize,
    /// Idle connections for the memory measurement.
    #[arg(long, default_value_t = 1000)]
    idle_connections: usize,
    /// Also measure over the TLS 1.3 port with client certificates: latency and
    /// requests/s side by side with the plain port, and the handshake's cost.
    #[arg(long)]
    tls: bool,
    /// Connections opened one after the other to measure the handshake (with --tls).
    #[arg(long, default_value_t = 200)]
    handshakes: usize,
    /// Instead of the full run, compare the latency of these servers side by side (requests
    /// sent to each in turn): `background` or `inline` (this build with that `[store]
    /// vault_compression`), or the path of another `sentinel` executable (for instance a build
    /// of an earlier revision, with its defaults). Separated by commas.
    #[arg(long, value_delimiter = ',')]
    compare: Vec<String>,
    /// With --compare: send each timed request at this many megabits per second, as a central
    /// server's request arrives over a network link, instead of at loopback speed.
    #[arg(long, requires = "compare", value_parser = clap::value_parser!(u64).range(1..=100_000))]
    link_mbit: Option<u64>,
    /// Print the results as JSON.
    #[arg(long)]
    json: bool,
}

/// One server of a `--compare` run.
struct Variant {
    name: String,
    executable: std::path::PathBuf,
    env: Vec<(&'static str, &'static str)>,
}

impl Variant {
    fn parse(text: &str) -> anyhow::Result<Variant> {
        let this_build = std::env::current_exe().context("cannot find the sentinel executable")?;
        let with_setting = |value: &'static str| Variant {
            name: format!("this build, vault_compression {value}"),
            executable: this_build.clone(),
            env: vec![("SENTINEL_STORE__VAULT_COMPRESSION", value)],
        };
        match text {
            "background" => Ok(with_setting("background")),
            "inline" => Ok(with_setting("inline")),
            path => {
                let executable = std::path::PathBuf::from(path);
                if !executable.is_file() {
                    bail!("--compare {path:?}: neither `background`, `inline` nor an executable file");
                }
                Ok(Variant { name: format!("{path} (its defaults)"), executable, env: Vec::new() })
            }
        }
    }
}

/// Before a size is timed, each server answers requests of that size for this long, then rests
/// for at least as long, and until the work the warm-up left in its background is done
/// (`server_quiet`): first-touch costs (the vault's fan-out directories, the sample journal's
/// segments sized for the new size) are not the steady state, and a burst of requests after a
/// quiet moment is.
const WARM_UP: Duration = Duration::from_secs(1);

/// The warm-up of one size on one connection (see [`WARM_UP`]); `seed` advances past the files
/// it sent. Returns when the rest is over.
async fn warm_up(client: &mut Client, size: usize, seed: &mut u64) -> anyhow::Result<()> {
    let started = Instant::now();
    while started.elapsed() < WARM_UP {
        *seed += 1;
        client.request(&static_request(synthetic_pe(size, u64::MAX - *seed))).await?;
    }
    Ok(())
}

/// Requests per size in the latency run: enough for a p99 on small files,
/// fewer for large ones so the run stays within minutes.
fn latency_requests(size: usize) -> usize {
    (256 * 1024 * 1024 / size.max(1)).clamp(10, 200)
}

pub fn run(args: Args, _config: &Config) -> anyhow::Result<()> {
    if !args.compare.is_empty() {
        return compare(&args);
    }
    let data_dir = tempfile::tempdir().context("cannot create a temporary data directory")?;
    let tls = match args.tls {
        true => Some(server_tls::Certificates::create(data_dir.path())?),
        false => None,
    };
    let connections = args.idle_connections + args.clients + 16;
    let mut server = ServerProcess::start(data_dir.path(), connections, tls.as_ref())?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let result = runtime.block_on(measure(&args, &server, tls.as_ref()));
    server.stop();
    let report = result?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    Ok(())
}

/// `sentinel serve` in a child process.
struct ServerProcess {
    child: Child,
    tcp: SocketAddr,
    /// The TLS port, when started with certificates.
    tcp_tls: Option<SocketAddr>,
    /// The HTTP listener (`/metrics`).
    http: SocketAddr,
}

impl ServerProcess {
    /// Starts the server with every client limit above what the benchmark asks: all its
    /// clients are one address (or one certificate), and it measures the server, not them.
    fn start(
        data_dir: &std::path::Path,
        max_connections: usize,
        tls: Option<&server_tls::Certificates>,
    ) -> anyhow::Result<ServerProcess> {
        let executable = std::env::current_exe().context("cannot find the sentinel executable")?;
        ServerProcess::start_executable(&executable, &[], data_dir, max_connections, tls)
    }

    /// Starts `executable` as the server, with `env` added to its environment.
    fn start_executable(
        executable: &std::path::Path,
        env: &[(&str, &str)],
        data_dir: &std::path::Path,
        max_connections: usize,
        tls: Option<&server_tls::Certificates>,
    ) -> anyhow::Result<ServerProcess> {
        let mut command = std::process::Command::new(executable);
        command.envs(env.iter().copied());
        command
            .args(["serve", "--tcp-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .env("SENTINEL_SERVER__MAX_CONNECTIONS", max_connections.to_string())
            .env("SENTINEL_SERVER__MAX_CONNECTIONS_PER_CLIENT", max_connections.to_string())
            .env("SENTINEL_SERVER__MAX_REQUESTS_PER_CLIENT", max_connections.to_string())
            .env("SENTINEL_SERVER__CLIENT_REQUEST_RATE", "1000000000")
            .env("SENTINEL_SERVER__CLIENT_REQUEST_BURST", "1000000000")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(tls) = tls {
            command.args(tls.serve_args());
        }
        let mut child = command.spawn().context("cannot start `sentinel serve`")?;
        let stdout = child.stdout.take().context("no stdout from the server")?;
        let mut lines = BufReader::new(stdout).lines();
        let (mut tcp, mut tcp_tls) = (None, None);
        // The HTTP address comes last.
        let http = loop {
            let Some(line) = lines.next() else {
                let _ = child.kill();
                bail!("the server exited before printing its addresses");
            };
            let line = line?;
            if let Some(address) = line.strip_prefix("tcp listening on ") {
                tcp = Some(address.parse().context("unreadable server address")?);
            } else if let Some(address) = line.strip_prefix("tcp tls listening on ") {
                tcp_tls = Some(address.parse().context("unreadable server address")?);
            } else if let Some(address) = line.strip_prefix("http listening on ") {
                break address.parse().context("unreadable server address")?;
            }
        };
        // Keep reading, so the server never writes into a pipe nobody reads.
        std::thread::spawn(move || lines.for_each(drop));
        let tcp = tcp.context("the server did not print its protocol address")?;
        Ok(ServerProcess { child, tcp, tcp_tls, http })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM (graceful), then wait for the process.
    fn stop(&mut self) {
        let _ = std::process::Command::new("kill").args(["-TERM", &self.pid().to_string()]).status();
        let _ = self.child.wait();
    }
}

/// Resident memory of `pid`, from /proc (Linux), in KiB.
fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).context("cannot read /proc")?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS in /proc/PID/status")
}

fn static_request(executable: Vec<u8>) -> Request {
    Request::new(Command::StaticAnalyse, vec![Bytes::from(executable)])
}

fn percentile(sorted: &[Duration], fraction: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    sorted.get(index).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

async fn measure(
    args: &Args,
    server: &ServerProcess,
    tls: Option<&server_tls::Certificates>,
) -> anyhow::Result<serde_json::Value> {
    let plain = Connector::Plain(server.tcp);
    let mut report = json!({
        "latency": latency(args, &plain, server.pid(), 0).await?,
        "throughput": throughput(args, &plain).await?,
    });
    if let (Some(certificates), Some(address)) = (tls, server.tcp_tls) {
        let tls = Connector::tls(address, certificates)?;
        report["latency_tls"] = latency(args, &tls, server.pid(), 1 << 20).await?;
        report["throughput_tls"] = throughput(args, &tls).await?;
        report["handshake"] = server_tls::handshakes(args.handshakes, &plain, &tls).await?;
    }
    report["memory"] = idle_memory(args, server).await?;
    Ok(report)
}

/// Sequential requests on one connection for each size; `seed` keeps the files of a second
/// run distinct from the first's (every request must store a new sample).
async fn latency(
    args: &Args,
    connector: &Connector,
    pid: u32,
    mut seed: u64,
) -> anyhow::Result<serde_json::Value> {
    let mut latency = Vec::new();
    for &size_kib in &args.sizes_kib {
        let size = size_kib * 1024;
        let requests = latency_requests(size);
        let mut client = connector.connect().await?;
        warm_up(&mut client, size, &mut seed).await?;
        server_quiet::rest(&[pid], WARM_UP).await;
        let mut times = Vec::with_capacity(requests);
        for _ in 0..requests {
            seed += 1;
            // A new file each time: every request hashes, stores and scores a new sample.
            let request = static_request(synthetic_pe(size, seed));
            let started = Instant::now();
            let response = client.request(&request).await?;
            times.push(started.elapsed());
            if !matches!(response, Response::Yes(_)) {
                bail!("a {size_kib} KiB request failed: {response:?}");
            }
        }
        times.sort();
        let p50 = percentile(&times, 0.5);
        latency.push(json!({
            "size_kib": size_kib, "requests": requests,
            "p50_ms": p50, "p99_ms": percentile(&times, 0.99),
            "mib_per_s": size as f64 / (1024.0 * 1024.0) / (p50 / 1000.0),
        }));
    }
    Ok(serde_json::Value::Array(latency))
}

/// `--compare`: one server per variant, each with its own data directory; for each size, the
/// variants' requests alternate (each a new sample), so load changes on the machine fall on all
/// of them alike.
fn compare(args: &Args) -> anyhow::Result<()> {
    let variants =
        args.compare.iter().map(|text| Variant::parse(text)).collect::<anyhow::Result<Vec<_>>>()?;
    let data_dirs = variants
        .iter()
        .map(|_| tempfile::tempdir().context("cannot create a temporary data directory"))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut servers = Vec::new();
    for (variant, data_dir) in variants.iter().zip(&data_dirs) {
        servers.push(ServerProcess::start_executable(
            &variant.executable,
            &variant.env,
            data_dir.path(),
            64,
            None,
        )?);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let result = runtime.block_on(compare_latency(args, &variants, &servers));
    for server in &mut servers {
        server.stop();
    }
    let report = result?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let link = args.link_mbit.map(|mbit| format!(", requests sent at {mbit} Mbit/s")).unwrap_or_default();
    println!("Malware server over TCP, static analysis, variants measured in turn on the same machine{link}");
    let mut table = table::new(
        Style::Markdown,
        &["size KiB", "server", "requests", "p50 ms", "p99 ms", "max ms", "MiB/s"],
        &[0, 2, 3, 4, 5, 6],
    );
    for row in report.as_array().into_iter().flatten() {
        let number = |key: &str, digits: usize| format!("{:.digits$}", row[key].as_f64().unwrap_or(0.0));
        table.add_row([
            row["size_kib"].to_string(),
            row["server"].as_str().unwrap_or("").to_owned(),
            row["requests"].to_string(),
            number("p50_ms", 2),
            number("p99_ms", 2),
            number("max_ms", 2),
            number("mib_per_s", 1),
        ]);
    }
    println!("{table}");
    server_stages::print(report.as_array().map(Vec::as_slice).unwrap_or_default());
    Ok(())
}

async fn compare_latency(
    args: &Args,
    variants: &[Variant],
    servers: &[ServerProcess],
) -> anyhow::Result<serde_json::Value> {
    let mut rows = Vec::new();
    let mut seed = 1u64 << 50;
    let http = reqwest::Client::new();
    for &size_kib in &args.sizes_kib {
        let size = size_kib * 1024;
        let requests = latency_requests(size);
        let mut clients = Vec::new();
        for server in servers {
            let mut client = Connector::Plain(server.tcp).connect().await?;
            warm_up(&mut client, size, &mut seed).await?;
            let paced = match args.link_mbit {
                Some(mbit) => Some(PacedClient::connect(server.tcp, mbit).await?),
                None => None,
            };
            clients.push((client, paced));
        }
        server_quiet::rest(&servers.iter().map(ServerProcess::pid).collect::<Vec<_>>(), WARM_UP).await;
        let stages_before = stage_totals(&http, servers).await;
        let mut times = vec![Vec::with_capacity(requests); servers.len()];
        for _ in 0..requests {
            for ((client, paced), times) in clients.iter_mut().zip(&mut times) {
                seed += 1;
                let request = static_request(synthetic_pe(size, seed));
                let started = Instant::now();
                let response = match paced {
                    Some(paced) => paced.request(&request).await?,
                    None => client.request(&request).await?,
                };
                times.push(started.elapsed());
                if !matches!(response, Response::Yes(_)) {
                    bail!("a {size_kib} KiB request failed: {response:?}");
                }
            }
        }
        let stages_after = stage_totals(&http, servers).await;
        for (((variant, mut times), before), after) in
            variants.iter().zip(times).zip(stages_before).zip(stages_after)
        {
            times.sort();
            let before = before.unwrap_or_default();
            let p50 = percentile(&times, 0.5);
            rows.push(json!({
                "size_kib": size_kib, "server": variant.name, "requests": requests,
                "link_mbit": args.link_mbit,
                "p50_ms": p50, "p99_ms": percentile(&times, 0.99), "max_ms": percentile(&times, 1.0),
                "mib_per_s": size as f64 / (1024.0 * 1024.0) / (p50 / 1000.0),
                "stages": after.as_ref().map(|after| after.mean_ms_since(&before)),
                "slow_stages": after.as_ref().map(|after| after.slow_since(&before)),
            }));
        }
    }
    Ok(serde_json::Value::Array(rows))
}

/// Each server's stage totals; `None` for a server whose metrics cannot be read.
async fn stage_totals(http: &reqwest::Client, servers: &[ServerProcess]) -> Vec<Option<StageTotals>> {
    let mut totals = Vec::with_capacity(servers.len());
    for server in servers {
        totals.push(StageTotals::scrape(http, server.http).await.ok());
    }
    totals
}

async fn idle_memory(args: &Args, server: &ServerProcess) -> anyhow::Result<serde_json::Value> {
    let idle_rss_kib = rss_kib(server.pid())?;
    let mut idle = Vec::with_capacity(args.idle_connections);
    for _ in 0..args.idle_connections {
        idle.push(TcpStream::connect(server.tcp).await?);
    }
    // One round trip on a new connection: every earlier connection has been accepted by then.
    let mut probe = Client::connect(server.tcp).await?;
    probe.enable_error_detail().await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let loaded_rss_kib = rss_kib(server.pid())?;
    drop(idle);

    Ok(json!({
        "rss_before_kib": idle_rss_kib,
        "idle_connections": args.idle_connections,
        "rss_with_idle_kib": loaded_rss_kib,
        "kib_per_idle_connection":
            (loaded_rss_kib as f64 - idle_rss_kib as f64) / args.idle_connections.max(1) as f64,
    }))
}

async fn throughput(args: &Args, connector: &Connector) -> anyhow::Result<serde_json::Value> {
    let samples: Arc<Vec<Bytes>> = Arc::new(
        (0..args.clients as u64)
            .map(|seed| Bytes::from(synthetic_pe(args.throughput_kib * 1024, 1 << 40 | seed)))
            .collect(),
    );
    let (done, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for index in 0..args.clients {
        let (samples, done, failed) = (Arc::clone(&samples), Arc::clone(&done), Arc::clone(&failed));
        let connector = connector.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = connector.connect().await?;
            let request = Request::new(Command::StaticAnalyse, vec![samples[index].clone()]);
            while Instant::now() < deadline {
                match client.request(&request).await? {
                    Response::Yes(_) | Response::Listed(..) => done.fetch_add(1, Ordering::Relaxed),
                    Response::No(_) => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let done = done.load(Ordering::Relaxed);
    Ok(json!({
        "clients": args.clients, "size_kib": args.throughput_kib, "seconds": elapsed,
        "requests": done, "failed": failed.load(Ordering::Relaxed), "requests_per_s": done as f64 / elapsed,
    }))
}

fn print_table(report: &serde_json::Value) {
    println!("Malware server over TCP (sentinel serve in a separate process), static analysis");
    print_latency(&report["latency"]);
    print_throughput(&report["throughput"]);
    if !report["latency_tls"].is_null() {
        println!("Over the TLS 1.3 port, with client certificates (mutual TLS), same server:");
        print_latency(&report["latency_tls"]);
        print_throughput(&report["throughput_tls"]);
        server_tls::print_handshakes(&report["handshake"]);
    }
    let m = &report["memory"];
    println!(
        "memory: RSS {} KiB, with {} idle connections {} KiB ({:.1} KiB per connection)",
        m["rss_before_kib"],
        m["idle_connections"],
        m["rss_with_idle_kib"],
        m["kib_per_idle_connection"].as_f64().unwrap_or(0.0)
    );
}

fn print_latency(latency: &serde_json::Value) {
    let mut table =
        table::new(Style::Markdown, &["size KiB", "requests", "p50 ms", "p99 ms", "MiB/s"], &[0, 1, 2, 3, 4]);
    for row in latency.as_array().into_iter().flatten() {
        let number = |key: &str, digits: usize| format!("{:.digits$}", row[key].as_f64().unwrap_or(0.0));
        table.add_row([
            row["size_kib"].to_string(),
            row["requests"].to_string(),
            number("p50_ms", 2),
            number("p99_ms", 2),
            number("mib_per_s", 1),
        ]);
    }
    println!("{table}");
}

fn print_throughput(t: &serde_json::Value) {
    println!(
        "throughput: {} clients, {} KiB files: {:.0} requests/s ({} answered, {} failed, {:.1} s)",
        t["clients"],
        t["size_kib"],
        t["requests_per_s"].as_f64().unwrap_or(0.0),
        t["requests"],
        t["failed"],
        t["seconds"].as_f64().unwrap_or(0.0)
    );
}
