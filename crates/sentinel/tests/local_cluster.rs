//! The cluster of docs/scale-out.md, started by its script (`deploy/local-cluster/cluster`) as a
//! reader would: three replicas on one PostgreSQL database, one NATS JetStream and one data
//! directory, behind HAProxy. Requests through HAProxy's two ports are answered, and `stop`
//! stops every process the script started.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use bytes::Bytes;
use sentinel_protocol::{Client, Request, Response};
use sentinel_testkit::http_client::ApiClient;
use sentinel_testkit::postgres::{POSTGRES_URL_ENV, ScratchDatabase};
use sentinel_testkit::synthetic_pe;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/local-cluster/cluster");

fn cluster(action: &str, dir: &Path, database: &str) -> Output {
    let admin = std::env::var(POSTGRES_URL_ENV)
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    Command::new("bash")
        .arg(SCRIPT)
        .arg(action)
        .env("SENTINEL_BIN", env!("CARGO_BIN_EXE_sentinel"))
        .env("CLUSTER_DIR", dir)
        .env("PGURL", admin)
        .env("CLUSTER_DATABASE", database)
        .output()
        .expect("run deploy/local-cluster/cluster")
}

/// Stops the cluster even when an assertion failed, so no process outlives the test.
struct Running<'a> {
    dir: &'a Path,
    database: &'a str,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        cluster("stop", self.dir, self.database);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_cluster_serves_through_haproxy_and_stops() {
    let scratch = ScratchDatabase::create("local cluster");
    let database = scratch.url().rsplit('/').next().unwrap().to_owned();
    let dir = tempfile::tempdir().unwrap();
    let started = cluster("start", dir.path(), &database);
    let running = Running { dir: dir.path(), database: &database };
    assert!(
        started.status.success(),
        "{}{}",
        String::from_utf8_lossy(&started.stdout),
        String::from_utf8_lossy(&started.stderr)
    );

    // HTTP through HAProxy: every replica is checked healthy, then requests are spread.
    let token = std::fs::read_to_string(dir.path().join("data/admin.token")).unwrap().trim().to_owned();
    let api = ApiClient::new("127.0.0.1:9601".parse().unwrap(), Some(token));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = api.send("GET", "/status", None).await;
        if answer.status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "no answer through HAProxy: {} {}", answer.status, answer.body);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // The malware protocol through HAProxy.
    for seed in 0..3 {
        let mut client = Client::connect("127.0.0.1:9600").await.unwrap();
        let sample = Bytes::from(synthetic_pe(64 * 1024, seed));
        let answer = client
            .request(&Request::new(sentinel_protocol::Command::StaticAnalyse, vec![sample]))
            .await
            .unwrap();
        assert!(matches!(answer, Response::Yes(_) | Response::No(Some(_))), "{answer:?}");
    }
    assert_eq!(
        scratch.query_i64("SELECT count(*) FROM verdicts").unwrap(),
        3,
        "verdicts in the shared database"
    );

    let status = cluster("status", dir.path(), &database);
    let status = String::from_utf8_lossy(&status.stdout).into_owned();
    for process in ["haproxy", "nats", "replica-a", "replica-b", "replica-c"] {
        assert!(status.contains(&format!("{process}: running")), "{status}");
    }
    drop(running);
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect("127.0.0.1:9601").is_ok()
        || std::net::TcpStream::connect("127.0.0.1:9611").is_ok()
    {
        assert!(Instant::now() < deadline, "the cluster still listens after stop");
        std::thread::sleep(Duration::from_millis(200));
    }
}
