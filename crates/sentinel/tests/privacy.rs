//! Anonymised addresses (`[privacy]`) with the real binary: what reaches the files of the data
//! directory in each mode (the network tables, the ingest journal, `verdicts.client`), what the
//! API and the WebSocket show with and without the `network:pii` scope, a journal replayed
//! after a crash, and `sentinel privacy` turning addresses into pseudonyms and back.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures_util::StreamExt;
use sentinel_protocol::{Client, Request, Response, Sha256Hash};
use sentinel_store::{Store, StoreSettings};
use sentinel_testkit::connection_records::{connection_record, rfc3339, web_client_history};
use sentinel_testkit::http_client::ApiClient;
use sentinel_testkit::serve_process::{QUICK_NETWORK, ServeCommand, ServeProcess};
use sentinel_testkit::synthetic_pe;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const SENTINEL: &str = env!("CARGO_BIN_EXE_sentinel");

/// The agent's addresses the tests look for: documentation ranges, which nothing else writes.
const LOCAL_V4: &str = "192.0.2.44";
const REMOTE_V4: &str = "198.51.100.77";
const LOCAL_V6: &str = "2001:db8:5e:17::2";
const REMOTE_V6: &str = "2001:db8:5e:17::a1";

/// No collector, small models, fast flushes.
fn base() -> String {
    format!("[network]\ncollect = false\n{QUICK_NETWORK}")
}

fn config(ip_storage: &str) -> String {
    format!("{}\n[privacy]\nip_storage = \"{ip_storage}\"\n", base())
}

/// A connection of `host` with the given addresses.
fn connection(
    host: &str,
    process: &str,
    local: &str,
    remote: &str,
    local_port: u16,
    at: SystemTime,
) -> Value {
    let mut record = connection_record(host, process, 443, local_port, 900_000_000, 10, at);
    let family = if local.contains(':') { "v6" } else { "v4" };
    record["local_ip"] = json!(local);
    record["remote_ip"] = json!(remote);
    record["family"] = json!(family);
    record
}

/// A snapshot of host `host` with one IPv4 and one IPv6 connection between the known addresses.
fn known_snapshot(host: &str, process: &str) -> Value {
    let now = SystemTime::now();
    json!({
        "schema_version": 1, "host": host, "timestamp": rfc3339(now),
        "connections": [
            connection(host, process, LOCAL_V4, REMOTE_V4, 51_000, now),
            connection(host, process, LOCAL_V6, REMOTE_V6, 51_001, now),
        ],
    })
}

async fn get_json(http: &ApiClient, path: &str) -> Value {
    let answer = http.send("GET", path, None).await;
    assert_eq!(answer.status, 200, "GET {path}: {}", answer.body);
    answer.json()
}

/// Waits until nothing is left in the journal and at least `rows` feature rows are stored.
async fn wait_stored(http: &ApiClient, rows: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = get_json(http, "/api/v1/models/status").await;
        if status["storage"]["pending_snapshots"] == 0 && status["warmup"]["rows"].as_u64().unwrap() >= rows {
            return;
        }
        assert!(Instant::now() < deadline, "not stored: {status:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Forty seconds of an ordinary web client's history, then a model trained on it.
async fn train(http: &ApiClient) {
    for snapshot in web_client_history("history", SystemTime::now() - Duration::from_secs(45), 40) {
        http.ingest(&snapshot).await;
    }
    wait_stored(http, 300).await;
    let answer = http.send("POST", "/api/v1/train", Some(b"{}")).await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    let job = answer.json();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let job = get_json(http, &format!("/api/v1/train/{}", job["id"])).await;
        match job["state"].as_str().unwrap() {
            "running" => {}
            "succeeded" => return,
            _ => panic!("training failed: {job:#}"),
        }
        assert!(Instant::now() < deadline, "training did not finish: {job:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `sentinel ARGS…` with the data directory's configuration: its stdout, or its stderr as the
/// error.
fn sentinel(data_dir: &Path, args: &[&str]) -> Result<String, String> {
    let mut command = Command::new(SENTINEL);
    let config = data_dir.join("sentinel.toml");
    if config.exists() {
        command.arg("--config").arg(config);
    }
    let output = command
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .env("RUST_LOG", "warn")
        .env_remove("SENTINEL_PRIVACY_KEY")
        .output()
        .expect("run sentinel");
    match output.status.success() {
        true => Ok(String::from_utf8(output.stdout).unwrap()),
        false => Err(String::from_utf8(output.stderr).unwrap()),
    }
}

/// `sentinel privacy pseudonymise ADDRESS` of the data directory: the stored form.
fn pseudonym_of(data_dir: &Path, address: &str) -> String {
    let printed = sentinel(data_dir, &["privacy", "pseudonymise", address]).unwrap();
    let (clear, pseudonym) = printed.trim().split_once(' ').unwrap();
    assert_eq!(clear, address.parse::<IpAddr>().unwrap().to_string());
    pseudonym.to_owned()
}

fn create_token(data_dir: &Path, name: &str, scopes: &str) -> String {
    sentinel(data_dir, &["token", "create", "--name", name, "--scope", scopes]).unwrap().trim().to_owned()
}

/// Every file under `dir` whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .map(Result::unwrap)
        .filter(|entry| entry.file_type().is_file())
        .filter(|entry| {
            // A file removed meanwhile (a SQLite -shm or -journal) holds nothing.
            std::fs::read(entry.path())
                .is_ok_and(|bytes| bytes.windows(needle.len()).any(|window| window == needle))
        })
        .map(|entry| entry.path().to_owned())
        .collect()
}

/// The known addresses as text and as bytes (the octets a binary record would hold).
fn known_address_forms() -> Vec<(String, Vec<u8>)> {
    let mut forms = Vec::new();
    for text in [LOCAL_V4, REMOTE_V4, LOCAL_V6, REMOTE_V6] {
        let address: IpAddr = text.parse().unwrap();
        forms.push((format!("{text} as text"), text.as_bytes().to_vec()));
        let octets = match address {
            IpAddr::V4(v4) => v4.octets().to_vec(),
            IpAddr::V6(v6) => v6.octets().to_vec(),
        };
        forms.push((format!("{text} as bytes"), octets));
    }
    forms
}

fn assert_no_clear_address(dir: &Path, when: &str) {
    for (form, needle) in known_address_forms() {
        let found = files_containing(dir, &needle);
        assert!(found.is_empty(), "{when}: {form} found in {found:?}");
    }
}

/// Asks for a static verdict over the protocol port, as a central server does; the sample's
/// SHA-256.
async fn protocol_scan(served: &ServeProcess, seed: u64) -> String {
    let pe = synthetic_pe(8192, seed);
    let mut client = Client::connect(served.tcp).await.unwrap();
    let request = Request::new(sentinel_protocol::Command::StaticAnalyse, vec![Bytes::copy_from_slice(&pe)]);
    assert!(matches!(client.request(&request).await.unwrap(), Response::Yes(_)));
    Sha256Hash::of(&pe).to_hex()
}

/// The `client` of the sample's one verdict.
fn verdict_client(data_dir: &Path, sha256: &str) -> String {
    let store = Store::open(data_dir, StoreSettings::default()).unwrap();
    let verdicts = store.verdicts(sha256).unwrap();
    assert_eq!(verdicts.len(), 1, "{verdicts:?}");
    verdicts[0].client.clone()
}

#[tokio::test]
async fn each_mode_stores_the_addresses_of_tables_journal_and_verdicts_in_its_form() {
    for mode in ["prefix-preserving", "hmac", "clear"] {
        let data_dir = tempfile::tempdir().unwrap();
        let dir = data_dir.path();
        let mut served = ServeCommand::new(SENTINEL, dir).config(&config(mode)).start();
        let http = served.api();
        http.ingest(&known_snapshot("privacy-host", "curl")).await;
        let sha256 = protocol_scan(&served, 1).await;
        wait_stored(&http, 2).await;

        let stored_remote = pseudonym_of(dir, REMOTE_V4);
        let stored_v6 = pseudonym_of(dir, REMOTE_V6);
        let client = verdict_client(dir, &sha256);
        match mode {
            "clear" => {
                assert_eq!((stored_remote.as_str(), client.as_str()), (REMOTE_V4, "127.0.0.1"));
                let found = files_containing(dir, REMOTE_V4.as_bytes());
                assert!(found.iter().any(|path| path.to_string_lossy().contains("network.db")), "{found:?}");
                assert!(!dir.join("privacy.key").exists(), "clear mode needs no key");
            }
            _ => {
                // Running: the tables, and the journal's entry in the WAL (deleted once stored,
                // its bytes still there until a checkpoint).
                assert_no_clear_address(dir, &format!("{mode}, running"));
                assert_eq!(client, pseudonym_of(dir, "127.0.0.1"), "{mode}");
                assert_ne!(client, "127.0.0.1");
                let found = files_containing(dir, stored_remote.as_bytes());
                assert!(!found.is_empty(), "{mode}: the pseudonym {stored_remote} is stored");
                assert!(!files_containing(dir, stored_v6.as_bytes()).is_empty(), "{mode}: {stored_v6}");
                if mode == "hmac" {
                    assert!(
                        stored_remote.starts_with("h:") && client.starts_with("h:"),
                        "{stored_remote} {client}"
                    );
                } else {
                    let pseudonym: IpAddr =
                        stored_remote.parse().expect("a prefix-preserving pseudonym is an address");
                    assert!(pseudonym.is_ipv4());
                    assert!(stored_v6.parse::<IpAddr>().unwrap().is_ipv6());
                }
            }
        }
        served.signal("-TERM");
        assert!(served.wait_exit(Duration::from_secs(15)).success());
        if mode != "clear" {
            assert_no_clear_address(dir, &format!("{mode}, stopped"));
        }
    }
}

#[tokio::test]
async fn callers_without_network_pii_see_pseudonyms_on_the_api_and_the_stream() {
    let data_dir = tempfile::tempdir().unwrap();
    let dir = data_dir.path();
    let served = ServeCommand::new(SENTINEL, dir).config(&base()).start();
    let admin = served.api();
    train(&admin).await;
    let reader = ApiClient::new(served.http, Some(create_token(dir, "reader", "network:read")));
    let trusted = ApiClient::new(served.http, Some(create_token(dir, "trusted", "network:read,network:pii")));

    let mut sockets = Vec::new();
    for client in [&reader, &trusted] {
        let mut request =
            format!("ws://{}/ws/realtime?process=dropper", served.http).into_client_request().unwrap();
        request.headers_mut().insert("authorization", client.authorization().unwrap().parse().unwrap());
        sockets.push(tokio_tungstenite::connect_async(request).await.unwrap().0);
    }
    admin.ingest(&known_snapshot("history", "dropper")).await;

    let pseudonymous_remote = format!("{}:443", pseudonym_of(dir, REMOTE_V4));
    let pseudonymous_v6 = format!("[{}]:443", pseudonym_of(dir, REMOTE_V6));
    let clear_remote = format!("{REMOTE_V4}:443");
    let clear_v6 = format!("[{REMOTE_V6}]:443");
    let expected = [
        (&pseudonymous_remote, &pseudonymous_v6, format!("{}:51000", pseudonym_of(dir, LOCAL_V4))),
        (&clear_remote, &clear_v6, format!("{LOCAL_V4}:51000")),
    ];
    for (socket, (remote, remote_v6, local)) in sockets.iter_mut().zip(&expected) {
        let mut ends = Vec::new();
        for _ in 0..2 {
            let message = tokio::time::timeout(Duration::from_secs(10), socket.next())
                .await
                .expect("a result within 10 s")
                .unwrap()
                .unwrap();
            let result: Value = serde_json::from_str(message.to_text().unwrap()).unwrap();
            let end = |name: &str| result["connection"][name].as_str().unwrap().to_owned();
            ends.push((end("remote"), end("local")));
        }
        ends.sort();
        assert!(ends.contains(&((*remote).clone(), local.clone())), "{ends:?}");
        assert!(ends.iter().any(|(shown, _)| shown == *remote_v6), "{ends:?}");
    }

    // The recent results: the same rule; a filter by address matches by the clear address or
    // by its pseudonym, whoever asks.
    for (client, shown) in [(&reader, &pseudonymous_remote), (&trusted, &clear_remote)] {
        for query in [REMOTE_V4.to_owned(), pseudonym_of(dir, REMOTE_V4)] {
            let body = get_json(client, &format!("/api/v1/predictions/recent?remote={query}")).await;
            let results = body["results"].as_array().unwrap();
            assert_eq!(results.len(), 1, "remote={query}: {body:#}");
            assert_eq!(results[0]["connection"]["remote"], **shown, "{body:#}");
        }
        let body = get_json(client, "/api/v1/predictions/recent?process=dropper").await;
        let text = body.to_string();
        assert_eq!(text.contains(REMOTE_V4), client.token == trusted.token, "{text}");
        assert_eq!(text.contains(LOCAL_V4), client.token == trusted.token, "{text}");
    }
    // Admin implies network:pii.
    let body = get_json(&admin, &format!("/api/v1/predictions/recent?remote={REMOTE_V4}")).await;
    assert_eq!(body["results"][0]["connection"]["remote"], clear_remote, "{body:#}");

    // An analysis answers verdicts only: no address to hide.
    let batch = json!({"records": [connection("h", "curl", LOCAL_V4, REMOTE_V4, 41_000, SystemTime::now())]});
    let answer = admin.send("POST", "/api/v1/analyze", Some(batch.to_string().as_bytes())).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(!answer.body.contains(REMOTE_V4) && !answer.body.contains(LOCAL_V4), "{}", answer.body);
}

#[tokio::test]
async fn a_snapshot_replayed_after_a_crash_gets_the_features_of_its_clear_addresses() {
    let data_dir = tempfile::tempdir().unwrap();
    let dir = data_dir.path();
    // Results wait ten minutes in the writer's queue: at the crash, only the journal holds them.
    let slow = "[network]\ncollect = false\n[network.storage]\nflush_interval = \"10m\"\n";
    let mut served = ServeCommand::new(SENTINEL, dir).config(slow).start();
    let now = SystemTime::now();
    let snapshot = json!({
        "schema_version": 1, "host": "crashed", "timestamp": rfc3339(now),
        "connections": [
            connection("crashed", "to-loopback", LOCAL_V4, "127.0.0.1", 52_000, now),
            connection("crashed", "to-remote", LOCAL_V4, REMOTE_V4, 52_001, now),
        ],
    });
    served.api().ingest(&snapshot).await;
    served.signal("-KILL");
    served.wait_exit(Duration::from_secs(15));
    assert_no_clear_address(dir, "journalled, killed");

    let mut served = ServeCommand::new(SENTINEL, dir)
        .config("[network]\ncollect = false\n[network.storage]\nflush_interval = \"50ms\"\n")
        .start();
    wait_stored(&served.api(), 2).await;
    served.signal("-TERM");
    assert!(served.wait_exit(Duration::from_secs(15)).success());
    let store = sentinel_store::NetworkStore::open(
        dir,
        sentinel_store::WriterSettings {
            batch: 100,
            flush_interval: Duration::from_millis(50),
            queue: 100,
            retention: Duration::from_secs(30 * 86_400),
        },
    )
    .unwrap();
    let loopback_flag = |process: &str| {
        let rows = store.history(usize::MAX, &|| false).unwrap();
        let row = rows.iter().find(|row| row.process_name.as_deref() == Some(process)).expect("replayed");
        row.features["remote_is_loopback"].as_f64().unwrap()
    };
    assert_eq!(loopback_flag("to-loopback"), 1.0, "the replayed features are those of the clear address");
    assert_eq!(loopback_flag("to-remote"), 0.0);
    store.close();
    assert_no_clear_address(dir, "replayed");
}

#[test]
fn the_privacy_command_pseudonymises_and_reveals_with_the_data_directory_s_key() {
    let data_dir = tempfile::tempdir().unwrap();
    let dir = data_dir.path();
    let error = sentinel(dir, &["privacy", "reveal", "10.1.2.3"]).unwrap_err();
    assert!(error.contains("no privacy key") && error.contains("privacy.key"), "{error}");

    // The key `serve` creates on first start.
    let mut served = ServeCommand::new(SENTINEL, dir).config(&config("prefix-preserving")).start();
    served.signal("-TERM");
    assert!(served.wait_exit(Duration::from_secs(15)).success());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("privacy.key")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    let printed =
        sentinel(dir, &["privacy", "pseudonymise", REMOTE_V4, "198.51.100.78", "198.51.101.1", REMOTE_V6])
            .unwrap();
    let pseudonyms: Vec<&str> = printed.lines().map(|line| line.split_once(' ').unwrap().1).collect();
    assert_eq!(pseudonyms.len(), 4, "{printed}");
    let octets = |text: &str| match text.parse::<IpAddr>().unwrap() {
        IpAddr::V4(v4) => v4.octets(),
        IpAddr::V6(_) => panic!("IPv4 stays IPv4: {text}"),
    };
    // A /24 stays a /24; the next /24 shares the /23 only.
    assert_eq!(octets(pseudonyms[0])[..3], octets(pseudonyms[1])[..3], "{printed}");
    assert_eq!(octets(pseudonyms[0])[..2], octets(pseudonyms[2])[..2], "{printed}");
    assert_ne!(octets(pseudonyms[0])[2], octets(pseudonyms[2])[2], "{printed}");

    let mut args = vec!["privacy", "reveal"];
    args.extend(&pseudonyms);
    let revealed = sentinel(dir, &args).unwrap();
    let addresses: Vec<&str> = revealed.lines().map(|line| line.split_once(' ').unwrap().1).collect();
    assert_eq!(addresses, [REMOTE_V4, "198.51.100.78", "198.51.101.1", REMOTE_V6]);

    // In hmac mode a pseudonym cannot be revealed, only matched.
    std::fs::write(dir.join("sentinel.toml"), config("hmac")).unwrap();
    let hashed = pseudonym_of(dir, REMOTE_V4);
    assert!(hashed.starts_with("h:") && hashed.len() == 34, "{hashed}");
    let error = sentinel(dir, &["privacy", "reveal", pseudonyms[0]]).unwrap_err();
    assert!(error.contains("cannot be reversed"), "{error}");
    assert!(sentinel(dir, &["privacy", "pseudonymise", "not-an-address"]).is_err());
}
