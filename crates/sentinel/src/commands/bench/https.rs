//! `sentinel bench https`: what TLS costs the HTTP listener, from outside. It starts two
//! `sentinel serve` processes (the same executable) on free loopback ports, one plain and one
//! with a certificate of a private CA made for the run, and measures both in the same run:
//! `GET /healthz` latency on one kept-alive connection (p50/p99), requests per second with
//! concurrent kept-alive clients, and a new connection per request — TCP connect, the full TLS
//! 1.3 handshake (no session resumption) and one request — which is the handshake's cost.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use sentinel_testkit::certificates::TestCa;
use sentinel_transport::tokio_rustls::TlsConnector;
use sentinel_transport::tokio_rustls::rustls::ClientConfig;
use sentinel_transport::tokio_rustls::rustls::client::Resumption;
use sentinel_transport::tokio_rustls::rustls::pki_types::ServerName;
use sentinel_transport::{TlsClientOptions, client_config};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::Config;

#[derive(clap::Args)]
pub struct Args {
    /// Requests of the latency runs (one connection) and of the new-connection runs.
    #[arg(long, default_value_t = 2000)]
    requests: usize,
    /// Concurrent kept-alive clients of the throughput run.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Duration of each throughput run, seconds.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
}

pub fn run(args: Args, _config: &Config) -> anyhow::Result<()> {
    let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
    let ca = TestCa::new("sentinel bench CA");
    let ca_file = ca.write(&dir.path().join("ca.pem"));
    let files = ca.server("localhost", &dir.path().join("server.pem"), &dir.path().join("server.key"));
    let mut plain = Served::start(&dir.path().join("plain"), &[])?;
    let tls_args = [
        "--tls-cert".to_owned(),
        files.certificate.display().to_string(),
        "--tls-key".to_owned(),
        files.key.display().to_string(),
    ];
    let mut https = Served::start(&dir.path().join("https"), &tls_args)?;
    let mut config = (*client_config(&TlsClientOptions { ca_file, ..TlsClientOptions::default() })?).clone();
    // Every new connection pays the full handshake.
    config.resumption = Resumption::disabled();
    let tls = Arc::new(config);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let result = runtime.block_on(async {
        let mut rows = Vec::new();
        for (name, address, tls) in
            [("http", plain.http, None), ("https", https.http, Some(Arc::clone(&tls)))]
        {
            let target = Target { address, tls };
            let latency = target.latency(args.requests).await?;
            let connections = target.new_connections(args.requests).await?;
            let throughput = target.throughput(args.clients, Duration::from_secs(args.seconds)).await?;
            rows.push(json!({"listener": name, "kept_alive": latency, "new_connection": connections,
                "throughput_requests_per_s": throughput}));
        }
        anyhow::Ok(rows)
    });
    plain.stop();
    https.stop();
    let rows = result?;
    println!("{}", serde_json::to_string_pretty(&json!({"clients": args.clients, "runs": rows}))?);
    Ok(())
}

/// `sentinel serve` in a child process.
struct Served {
    child: Child,
    http: SocketAddr,
}

impl Served {
    fn start(data_dir: &Path, extra: &[String]) -> anyhow::Result<Served> {
        let executable = std::env::current_exe().context("cannot find the sentinel executable")?;
        let mut child = std::process::Command::new(executable)
            .args(["serve", "--tcp-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .context("cannot start `sentinel serve`")?;
        let stdout = child.stdout.take().context("no stdout from the server")?;
        let mut lines = BufReader::new(stdout).lines();
        let http = loop {
            let Some(line) = lines.next() else {
                let _ = child.kill();
                bail!("the server exited before printing its address");
            };
            if let Some(address) = line?.strip_prefix("http listening on ") {
                break address.parse().context("unreadable server address")?;
            }
        };
        std::thread::spawn(move || lines.for_each(drop));
        Ok(Served { child, http })
    }

    fn stop(&mut self) {
        let _ = std::process::Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let _ = self.child.wait();
    }
}

/// One listener, plain or TLS.
#[derive(Clone)]
struct Target {
    address: SocketAddr,
    tls: Option<Arc<ClientConfig>>,
}

/// A connection of either kind.
trait Connection: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Connection for T {}

impl Target {
    async fn connect(&self) -> anyhow::Result<Box<dyn Connection>> {
        let tcp = TcpStream::connect(self.address).await?;
        tcp.set_nodelay(true)?;
        Ok(match &self.tls {
            None => Box::new(tcp),
            Some(config) => {
                let name = ServerName::try_from("localhost")?;
                Box::new(TlsConnector::from(Arc::clone(config)).connect(name, tcp).await?)
            }
        })
    }

    async fn latency(&self, requests: usize) -> anyhow::Result<serde_json::Value> {
        let mut connection = self.connect().await?;
        healthz(&mut connection).await?;
        let mut times = Vec::with_capacity(requests);
        for _ in 0..requests {
            let started = Instant::now();
            healthz(&mut connection).await?;
            times.push(started.elapsed());
        }
        Ok(summary(times))
    }

    async fn new_connections(&self, requests: usize) -> anyhow::Result<serde_json::Value> {
        let mut times = Vec::with_capacity(requests);
        for _ in 0..requests {
            let started = Instant::now();
            let mut connection = self.connect().await?;
            healthz(&mut connection).await?;
            times.push(started.elapsed());
        }
        Ok(summary(times))
    }

    async fn throughput(&self, clients: usize, during: Duration) -> anyhow::Result<f64> {
        let deadline = Instant::now() + during;
        let started = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..clients {
            let target = self.clone();
            tasks.push(tokio::spawn(async move {
                let mut connection = target.connect().await?;
                let mut done = 0u64;
                while Instant::now() < deadline {
                    healthz(&mut connection).await?;
                    done += 1;
                }
                anyhow::Ok(done)
            }));
        }
        let mut done = 0;
        for task in tasks {
            done += task.await??;
        }
        Ok(done as f64 / started.elapsed().as_secs_f64())
    }
}

/// `GET /healthz` on a kept-alive connection; fails unless the answer is 200.
async fn healthz(connection: &mut Box<dyn Connection>) -> anyhow::Result<()> {
    connection.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n").await?;
    let mut received = Vec::new();
    let mut buffer = [0u8; 1024];
    loop {
        let read = connection.read(&mut buffer).await?;
        if read == 0 {
            bail!("the server closed the connection");
        }
        received.extend_from_slice(&buffer[..read]);
        let Some(end) = received.windows(4).position(|window| window == b"\r\n\r\n") else { continue };
        let head = String::from_utf8_lossy(&received[..end]).to_ascii_lowercase();
        if !head.starts_with("http/1.1 200") {
            bail!("unexpected answer: {head}");
        }
        let length: usize = head
            .lines()
            .find_map(|line| line.strip_prefix("content-length:"))
            .and_then(|value| value.trim().parse().ok())
            .context("no content-length")?;
        if received.len() >= end + 4 + length {
            return Ok(());
        }
    }
}

fn summary(mut times: Vec<Duration>) -> serde_json::Value {
    times.sort();
    let at = |fraction: f64| {
        let index = ((times.len() as f64 - 1.0) * fraction).round() as usize;
        times.get(index).map_or(0.0, |time| time.as_secs_f64() * 1000.0)
    };
    let total: f64 = times.iter().map(Duration::as_secs_f64).sum();
    json!({"requests": times.len(), "p50_ms": at(0.5), "p99_ms": at(0.99),
        "per_s": times.len() as f64 / total.max(f64::MIN_POSITIVE)})
}
