//! Three `sentinel serve` replicas on one PostgreSQL database (`--store`) and one data directory,
//! as docs/scale-out.md runs them behind a load balancer: what one replica learned or paid for,
//! every replica uses — VirusTotal's reports and calls, tokens, models — and a replica killed and
//! started again rejoins.

use std::time::{Duration, Instant};

use bytes::Bytes;
use sentinel_protocol::{Client, Command, Request, Response};
use sentinel_testkit::fake_virustotal::{FakeVt, sha256_hex};
use sentinel_testkit::http_client::ApiClient;
use sentinel_testkit::postgres::ScratchDatabase;
use sentinel_testkit::serve_process::{ServeCommand, ServeProcess};

const BINARY: &str = env!("CARGO_BIN_EXE_sentinel");
const KEY: &str = "5ec12e7a5ec12e7a5ec12e7a5ec12e7a5ec12e7a5ec12e7a5ec12e7a5ec12e7a";

/// Only the malware server (the network service is the broker's story, tests/scale_out.rs),
/// and room for the test's 50 clients, who all come from 127.0.0.1.
const CONFIG: &str = "
[server]
max_requests_per_client = 64

[network]
enabled = false
";

fn replica(database: &ScratchDatabase, data_dir: &std::path::Path, vt: &FakeVt) -> ServeProcess {
    ServeCommand::new(BINARY, data_dir)
        .config(CONFIG)
        .args(["--store", database.url(), "--vt-base-url", &vt.base_url])
        .start()
}

async fn virustotal(server: std::net::SocketAddr, sha256: &str) -> Response {
    let mut client = Client::connect(server).await.unwrap();
    let fields = vec![Bytes::new(), Bytes::from(sha256.to_owned()), Bytes::from_static(KEY.as_bytes())];
    client.request(&Request::new(Command::VtAnalyse, fields)).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_share_one_virustotal_economy_tokens_and_models() {
    let database = ScratchDatabase::create("replicas");
    let vt = FakeVt::start().await;
    vt.state.add_key(KEY);
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("shared");
    let replicas: Vec<ServeProcess> = (0..3).map(|_| replica(&database, &data_dir, &vt)).collect();

    // 50 clients spread over the three replicas ask at once about a hash nobody has a report
    // for, while VirusTotal takes its time to answer: one call is made for all of them.
    let unknown = sha256_hex(b"a sample nobody has asked about");
    vt.state.add_report(&unknown, 41, 70);
    vt.state.set_report_delay(Duration::from_millis(1500));
    let asked: Vec<_> = (0..50)
        .map(|client| {
            let server = replicas[client % 3].tcp;
            let unknown = unknown.clone();
            tokio::spawn(async move { virustotal(server, &unknown).await })
        })
        .collect();
    for answer in asked {
        let answer = answer.await.unwrap();
        assert!(matches!(answer, Response::Yes(ref scores) if scores.len() == 2), "{answer:?}");
    }
    assert_eq!(vt.state.count("GET", "/api/v3/files/"), 1, "one call for 50 clients on 3 replicas");

    // Answered from the shared dataset by every replica, without a call.
    vt.state.set_report_delay(Duration::ZERO);
    for replica in &replicas {
        let answer = virustotal(replica.tcp, &unknown).await;
        assert!(matches!(answer, Response::Yes(_)), "{answer:?}");
    }
    assert_eq!(vt.state.count("GET", "/api/v3/files/"), 1);

    // A token made against the shared store (the CLI, through the data directory's settings and
    // --store) is accepted by every replica; the first admin token was made once.
    let token = std::process::Command::new(BINARY)
        .args([
            "token",
            "create",
            "--name",
            "reader",
            "--scope",
            "malware:read",
            "--store",
            database.url(),
            "--data-dir",
        ])
        .arg(&data_dir)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(token.status.success(), "{}", String::from_utf8_lossy(&token.stderr));
    let token = String::from_utf8(token.stdout).unwrap().trim().to_owned();
    for replica in &replicas {
        let answer = ApiClient::new(replica.http, Some(token.clone())).send("GET", "/status", None).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
    }
    assert_eq!(database.query_i64("SELECT count(*) FROM api_tokens WHERE name = 'admin'").unwrap(), 1);

    // A static model imported and activated through the shared registry reaches every replica
    // (they poll the active versions) without a restart or a failed request.
    let model = dir.path().join("static.json");
    std::fs::copy(concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/static.json"), &model).unwrap();
    let imported = std::process::Command::new(BINARY)
        .args(["models", "import", "static"])
        .arg(&model)
        .args(["--activate", "--store", database.url(), "--data-dir"])
        .arg(&data_dir)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(imported.status.success(), "{}", String::from_utf8_lossy(&imported.stderr));
    let active = database.query_i64("SELECT version_id FROM active_models WHERE kind = 'static'").unwrap();
    for replica in &replicas {
        wait_for_static_source(replica, &format!("registry version {active}")).await;
    }
    drop(replicas);
}

async fn wait_for_static_source(replica: &ServeProcess, expected: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = replica.status().await;
        let source = status["models"]["static_source"].as_str().unwrap_or_default().to_owned();
        if source == expected {
            return;
        }
        assert!(Instant::now() < deadline, "the replica still serves {source}, not {expected}: {status}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_killed_and_started_again_rejoins_with_what_the_others_stored() {
    let database = ScratchDatabase::create("rejoin");
    let vt = FakeVt::start().await;
    vt.state.add_key(KEY);
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("shared");
    let first = replica(&database, &data_dir, &vt);
    let mut second = replica(&database, &data_dir, &vt);

    second.signal("-KILL");
    second.wait_exit(Duration::from_secs(10));
    // While it is down, the other replica pays for a report.
    let sha256 = sha256_hex(b"asked while a replica was down");
    vt.state.add_report(&sha256, 3, 70);
    assert!(matches!(virustotal(first.tcp, &sha256).await, Response::Yes(_)));

    let second = replica(&database, &data_dir, &vt);
    assert!(matches!(virustotal(second.tcp, &sha256).await, Response::Yes(_)));
    assert_eq!(vt.state.count("GET", "/api/v3/files/"), 1, "the restarted replica used the stored report");
    let answer = second.api().send("GET", "/status", None).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
}
