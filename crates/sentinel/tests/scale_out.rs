//! The scale-out mode with real processes: a front end and two scoring workers (`sentinel
//! serve --broker`, `[server] roles`) sharing one PostgreSQL database (`--store`) and one data
//! directory, and a NATS server of the test's own. Agents' snapshots posted to the front end are stored exactly once although a
//! worker is killed (SIGKILL) while they stream in; a model trained through the front end
//! scores on the surviving worker, whose results reach the front end's `/ws/realtime`; and a
//! NATS outage makes ingest answer 503 until the server is back, and PostgreSQL dropping every
//! connection under load costs nothing accepted either.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use futures_util::StreamExt;
use sentinel_testkit::connection_records::{connection_record, snapshot};
use sentinel_testkit::http_client::ApiClient;
use sentinel_testkit::nats_server::{self, NatsServer};
use sentinel_testkit::postgres::ScratchDatabase;
use sentinel_testkit::serve_process::{QUICK_NETWORK, ServeCommand, ServeProcess};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const SENTINEL: &str = env!("CARGO_BIN_EXE_sentinel");

/// Connections in each posted snapshot.
const CONNECTIONS: usize = 3;

/// `sentinel serve --store DATABASE --broker URL` with `roles`, sharing `data_dir`.
fn replica(database: &ScratchDatabase, data_dir: &Path, broker: &str, roles: &str) -> ServeProcess {
    let config = format!(
        "[server]\nroles = [{roles}]\n\n[broker]\npartitions = 4\nack_wait = \"3s\"\npublish_timeout = \"1s\"\n\n\
         [network]\ncollect = false\n{QUICK_NETWORK}"
    );
    ServeCommand::new(SENTINEL, data_dir)
        .config(&config)
        .args(["--broker", broker, "--store", database.url()])
        .start()
}

/// The first snapshot of a host of its own: its connections are new wherever it is scored, so
/// each is one stored item, whichever worker scores it and however often it is delivered.
fn host_snapshot(index: usize, process: &str) -> Value {
    let host = format!("agent-{index}");
    let at = SystemTime::now();
    let connections = (0..CONNECTIONS)
        .map(|slot| connection_record(&host, process, 443, 40_000 + slot as u16, 400, 2500, at))
        .collect();
    snapshot(&host, at, connections)
}

async fn post(api: &ApiClient, snapshot: &Value) -> u16 {
    api.send("POST", "/api/v1/ingest", Some(snapshot.to_string().as_bytes())).await.status
}

/// (feature rows, broker deliveries) stored in the shared database.
fn stored(database: &ScratchDatabase) -> (i64, i64) {
    let count = |table: &str| database.query_i64(&format!("SELECT count(*) FROM {table}")).unwrap();
    (count("network_features"), count("broker_deliveries"))
}

/// Waits until exactly `snapshots` records and their items are stored, and checks that no more
/// arrive: a record stored twice would show as more rows.
async fn wait_stored(database: &ScratchDatabase, snapshots: usize, within: Duration) {
    let expected = ((snapshots * CONNECTIONS) as i64, snapshots as i64);
    let deadline = Instant::now() + within;
    loop {
        let now = stored(database);
        if now == expected {
            break;
        }
        assert!(now.0 <= expected.0 && now.1 <= expected.1, "more than accepted: {now:?} > {expected:?}");
        assert!(Instant::now() < deadline, "stored {now:?}, expected {expected:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Longer than `ack_wait`: a record left unacknowledged would be delivered again by now.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(stored(database), expected, "stored once, and only once");
}

async fn train(api: &ApiClient) -> i64 {
    let answer = api.send("POST", "/api/v1/train", Some(b"{}")).await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    let id = answer.json()["id"].clone();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let job = api.send("GET", &format!("/api/v1/train/{id}"), None).await.json();
        match job["state"].as_str().unwrap() {
            "running" => {}
            "succeeded" => return job["version"].as_i64().unwrap_or_else(|| panic!("{job:#}")),
            _ => panic!("training failed: {job:#}"),
        }
        assert!(Instant::now() < deadline, "training did not finish: {job:#}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_front_end_and_two_workers_store_every_snapshot_once_through_crashes_and_outages() {
    if !nats_server::available() {
        panic!("nats-server is needed: install Debian's nats-server");
    }
    let dir = tempfile::tempdir().unwrap();
    let mut nats = NatsServer::start(dir.path());
    let data_dir = dir.path().join("data");
    let database = ScratchDatabase::create("scale out");
    let url = nats.url();
    let front = replica(&database, &data_dir, &url, "\"frontend\"");
    let mut first = replica(&database, &data_dir, &url, "\"worker\"");
    let second = replica(&database, &data_dir, &url, "\"worker\"");
    let api = front.api();

    // A stream of agents' snapshots; one worker dies (SIGKILL) in the middle of it.
    let total = 240;
    for index in 0..total {
        if index == total / 2 {
            first.signal("-KILL");
            first.wait_exit(Duration::from_secs(10));
        }
        assert_eq!(post(&api, &host_snapshot(index, "webclient")).await, 202);
    }
    // The survivor takes the dead worker's partitions once their leases expire (15 s), and its
    // unacknowledged records after `ack_wait`.
    wait_stored(&database, total, Duration::from_secs(90)).await;

    // A model trained through the front end scores on the worker, whose results reach the
    // front end's WebSocket.
    let version = train(&api).await;
    let mut request = format!("ws://{}/ws/realtime", api.address).into_client_request().unwrap();
    request.headers_mut().insert("authorization", api.authorization().unwrap().parse().unwrap());
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut posted = total;
    let result: Value = loop {
        // Until the worker follows the new model (it checks every few seconds), it scores
        // without one and publishes nothing.
        assert_eq!(post(&api, &host_snapshot(posted, "dropper")).await, 202);
        posted += 1;
        match tokio::time::timeout(Duration::from_secs(2), socket.next()).await {
            Ok(Some(Ok(message))) => break serde_json::from_str(message.to_text().unwrap()).unwrap(),
            Ok(other) => panic!("the WebSocket ended: {other:?}"),
            Err(_) => assert!(Instant::now() < deadline, "no result reached the front end"),
        }
    };
    assert_eq!(result["model_version"], version, "{result:#}");
    assert_eq!(
        (&result["source"], &result["connection"]["process_name"]),
        (&json!("agent"), &json!("dropper"))
    );
    assert_eq!(result["connection"]["remote"], "10.0.0.9:443", "shown clear to the admin: {result:#}");
    drop(socket);

    // NATS goes away: ingest answers 503, then recovers by itself once the server is back.
    // Like the agent, the test resends a refused snapshot as it was: should the broker have
    // stored it after all (a publish sent on reconnection), the same message id is stored once.
    nats.kill();
    let refused = host_snapshot(posted, "webclient");
    assert_eq!(post(&api, &refused).await, 503, "no broker, no acceptance");
    nats.restart();
    let deadline = Instant::now() + Duration::from_secs(60);
    for index in posted..posted + 20 {
        let snapshot = if index == posted { refused.clone() } else { host_snapshot(index, "webclient") };
        loop {
            match post(&api, &snapshot).await {
                202 => break,
                503 => {
                    assert!(Instant::now() < deadline, "ingest did not recover after the outage");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                other => panic!("ingest answered {other}"),
            }
        }
    }
    posted += 20;
    wait_stored(&database, posted, Duration::from_secs(90)).await;

    // PostgreSQL drops every connection of the replicas (what its restart does to them) while
    // snapshots stream in: writes in flight fail and are not acknowledged, the pools reconnect
    // by themselves, and every accepted snapshot is stored once.
    for index in posted..posted + 40 {
        if index % 10 == 0 {
            database
                .execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                     WHERE datname = current_database() AND pid <> pg_backend_pid()",
                )
                .unwrap();
        }
        assert_eq!(post(&api, &host_snapshot(index, "webclient")).await, 202);
    }
    posted += 40;
    wait_stored(&database, posted, Duration::from_secs(90)).await;

    for mut process in [front, second] {
        process.signal("-TERM");
        assert!(process.wait_exit(Duration::from_secs(20)).success());
    }
}
