//! Encryption at rest with the real binary: `sentinel serve` on an encrypted store (a sample
//! submitted over the protocol, a snapshot posted to the network API), what is on disk
//! afterwards, restarts with the right, a wrong and no key, and `sentinel store keygen`,
//! `encrypt` and `rekey` (docs/security.md, "Encryption at rest").

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use sentinel_protocol::{Client, Request, Response, Sha256Hash};
use sentinel_store::{NetworkRowCounts, NetworkStore, Store, StoreKey, StoreSettings, WriterSettings};
use sentinel_testkit::connection_records::{connection_record, snapshot};
use sentinel_testkit::serve_process::{ServeCommand, ServeProcess};
use sentinel_testkit::synthetic_pe;

const SENTINEL: &str = env!("CARGO_BIN_EXE_sentinel");

/// No collector (only the posted snapshot is stored) and quick flushes.
const NETWORK: &str = "[network]\ncollect = false\n[network.storage]\nflush_interval = \"50ms\"\n";

/// A PE with 16 KiB of incompressible bytes appended: zstd keeps those as they are, so a plain
/// vault file shows them and an encrypted one must not.
fn sample() -> (Vec<u8>, Vec<u8>) {
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let overlay: Vec<u8> = (0..16 * 1024)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect();
    let mut pe = synthetic_pe(32 * 1024, 7);
    pe.extend_from_slice(&overlay);
    (pe, overlay)
}

fn keygen(path: &Path) -> StoreKey {
    let output = Command::new(SENTINEL).args(["store", "keygen", "--out"]).arg(path).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(output.stdout.is_empty(), "the key is not printed unless asked");
    StoreKey::read_file(path).unwrap()
}

fn config(key_file: Option<&Path>) -> String {
    match key_file {
        Some(key_file) => format!("[store]\nkey_file = {:?}\n{NETWORK}", key_file.display().to_string()),
        None => NETWORK.to_owned(),
    }
}

/// Starts the server, submits the sample over the protocol and posts a snapshot of three
/// connections, waits until both are stored, and stops the server gracefully.
async fn serve_and_store(data_dir: &Path, config: &str, pe: &[u8]) {
    let mut served = ServeCommand::new(SENTINEL, data_dir).config(config).start();
    let mut client = Client::connect(served.tcp).await.unwrap();
    let request = Request::new(sentinel_protocol::Command::StaticAnalyse, vec![Bytes::copy_from_slice(pe)]);
    let response = client.request(&request).await.unwrap();
    assert!(matches!(response, Response::Yes(_)), "{response:?}");

    let api = served.api();
    let now = SystemTime::now();
    let connections =
        (0..3).map(|slot| connection_record("host-a", "browser", 443, 41_000 + slot, 400, 2500, now));
    let body = snapshot("host-a", now, connections.collect()).to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = api.send("POST", "/api/v1/ingest", Some(body.as_bytes())).await;
        if answer.status == 202 {
            break;
        }
        assert_eq!(answer.status, 503, "{}", answer.body);
        assert!(Instant::now() < deadline, "the pipeline stayed busy");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    loop {
        let (_, status) = api.get_json("/api/v1/models/status").await;
        if status["storage"]["pending_snapshots"] == 0 && status["warmup"]["rows"].as_u64() >= Some(3) {
            break;
        }
        assert!(Instant::now() < deadline, "the snapshot was not stored: {status:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop(&mut served);
}

fn stop(served: &mut ServeProcess) {
    served.signal("-TERM");
    assert!(served.wait_exit(Duration::from_secs(15)).success());
}

fn writer_settings() -> WriterSettings {
    WriterSettings {
        batch: 100,
        flush_interval: Duration::from_millis(50),
        queue: 100,
        retention: Duration::from_secs(30 * 86_400),
    }
}

/// What the store holds, read in this process with `key`: the sample's verdicts and bytes, and
/// the network tables' row counts.
#[derive(Debug, PartialEq)]
struct Contents {
    verdicts: usize,
    sample: Option<Vec<u8>>,
    network: NetworkRowCounts,
}

fn contents(data_dir: &Path, key: Option<&StoreKey>, pe: &[u8]) -> Contents {
    let sha256 = Sha256Hash::of(pe).to_hex();
    let store = Store::open_with_key(data_dir, StoreSettings::default(), key.cloned()).unwrap();
    let network = NetworkStore::open_with_key(data_dir, writer_settings(), key).unwrap();
    let contents = Contents {
        verdicts: store.verdicts(&sha256).unwrap().len(),
        sample: store.read_sample(&sha256).unwrap(),
        network: network.row_counts().unwrap(),
    };
    network.close();
    contents
}

/// Every file under `dir` with its bytes.
fn files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut found = BTreeMap::new();
    for entry in walkdir::WalkDir::new(dir) {
        let entry = entry.unwrap();
        if entry.file_type().is_file() {
            found.insert(entry.path().to_owned(), std::fs::read(entry.path()).unwrap());
        }
    }
    found
}

/// The vault's sample files, without the sample journal's segments (see `journal_files`).
fn vault_files(data_dir: &Path) -> Vec<Vec<u8>> {
    let journal = data_dir.join("samples/journal");
    files(&data_dir.join("samples"))
        .into_iter()
        .filter(|(path, _)| !path.starts_with(&journal))
        .map(|(_, bytes)| bytes)
        .collect()
}

/// The sample journal's files: its segments hold the vault files of samples not yet settled.
fn journal_files(data_dir: &Path) -> Vec<Vec<u8>> {
    files(&data_dir.join("samples/journal")).into_values().collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|window| window == needle)
}

fn assert_encrypted(data_dir: &Path, overlay: &[u8]) {
    for name in ["sentinel.db", "network.db"] {
        let path = data_dir.join(name);
        let bytes = std::fs::read(&path).unwrap();
        assert!(bytes.len() > 4096, "{name}: {} bytes", bytes.len());
        assert!(!bytes.starts_with(b"SQLite format 3\0"), "{name} has a plain SQLite header");
        // Plain SQLite (no key) cannot read it.
        let connection = rusqlite::Connection::open(&path).unwrap();
        let read = connection.query_row("SELECT count(*) FROM sqlite_master", [], |row| row.get::<_, i64>(0));
        assert!(read.is_err(), "{name} was read without the key: {read:?}");
    }
    let vault = vault_files(data_dir);
    assert_eq!(vault.len(), 1);
    assert!(!contains(&vault[0], &overlay[..64]), "the vault file shows the sample's bytes");
    let journal = journal_files(data_dir);
    assert!(!journal.is_empty(), "the server journals samples");
    assert!(
        journal.iter().all(|file| !contains(file, &overlay[..64])),
        "a journal segment shows the sample's bytes"
    );
}

/// Runs `sentinel ARGS` to its end (at most 60 s) with `envs`; its exit status and stderr.
fn run(args: &[&str], data_dir: &Path, config: Option<&Path>, envs: &[(&str, &str)]) -> (bool, String) {
    let mut command = Command::new(SENTINEL);
    if let Some(config) = config {
        command.arg("--config").arg(config);
    }
    command.args(args).arg("--data-dir").arg(data_dir).env_remove("SENTINEL_STORE_KEY");
    command.envs(envs.iter().copied()).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
    let mut child = command.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("sentinel {args:?} did not end");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().unwrap();
    (output.status.success(), String::from_utf8_lossy(&output.stderr).into_owned())
}

const SERVE: &[&str] = &["serve", "--tcp-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"];

#[tokio::test]
async fn an_encrypted_store_hides_its_contents_keeps_every_row_and_refuses_other_keys() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let key_file = dir.path().join("store.key");
    let key = keygen(&key_file);
    let (pe, overlay) = sample();
    serve_and_store(&data_dir, &config(Some(&key_file)), &pe).await;

    assert_encrypted(&data_dir, &overlay);
    let stored = contents(&data_dir, Some(&key), &pe);
    assert_eq!(stored.sample.as_deref(), Some(&pe[..]));
    assert!(stored.verdicts >= 1 && stored.network.connections == 3, "{stored:?}");

    // A restart with the key (from the environment this time) keeps every row.
    let mut served = ServeCommand::new(SENTINEL, &data_dir)
        .config(NETWORK)
        .env("SENTINEL_STORE_KEY", key.to_hex().as_str())
        .start();
    stop(&mut served);
    assert_eq!(contents(&data_dir, Some(&key), &pe), stored);

    // A wrong key, no key, or both at once: refused with a message and a failure status, and
    // not one byte under the data directory changes.
    let before = files(&data_dir);
    let other_key = StoreKey::generate().unwrap();
    let (key_hex, other_hex) = (key.to_hex(), other_key.to_hex());
    let no_key_config = dir.path().join("no-key.toml");
    std::fs::write(&no_key_config, NETWORK).unwrap();
    let keyed_config = dir.path().join("keyed.toml");
    std::fs::write(&keyed_config, config(Some(&key_file))).unwrap();
    // (command, configuration file, SENTINEL_STORE_KEY, what the error must say)
    let attempts = [
        (
            SERVE,
            &no_key_config,
            Some(other_hex.as_str()),
            "cannot be decrypted with the configured store key",
        ),
        (SERVE, &no_key_config, None, "no store key is configured"),
        (&["token", "list"][..], &no_key_config, None, "no store key is configured"),
        (SERVE, &keyed_config, Some(key_hex.as_str()), "set only one"),
    ];
    for (args, config, key_variable, message) in attempts {
        let envs: Vec<_> = key_variable.map(|value| ("SENTINEL_STORE_KEY", value)).into_iter().collect();
        let (succeeded, stderr) = run(args, &data_dir, Some(config), &envs);
        assert!(!succeeded, "{args:?} succeeded");
        assert!(stderr.contains(message), "{args:?}: {stderr}");
        assert!(!stderr.contains(key_hex.as_str()) && !stderr.contains(other_hex.as_str()));
        assert!(files(&data_dir) == before, "{args:?} changed the data directory");
    }

    // A key file others may read is refused.
    let shared_key = dir.path().join("shared.key");
    std::fs::copy(&key_file, &shared_key).unwrap();
    std::fs::set_permissions(&shared_key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let shared_config = dir.path().join("shared.toml");
    std::fs::write(&shared_config, config(Some(&shared_key))).unwrap();
    let (succeeded, stderr) = run(SERVE, &data_dir, Some(&shared_config), &[]);
    assert!(!succeeded && stderr.contains("must be private to its owner"), "{stderr}");
    assert!(files(&data_dir) == before);
}

#[tokio::test]
async fn a_plain_store_is_encrypted_then_rekeyed_keeping_every_row() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let (pe, overlay) = sample();
    // Compressed before the answer: zstd keeps the overlay as it is, so the plain file shows it
    // and proves the check of the encrypted files below can see plaintext (a masked file, the
    // default, would hide it already).
    let inline = format!("[store]\nvault_compression = \"inline\"\n{NETWORK}");
    serve_and_store(&data_dir, &inline, &pe).await;
    let plain = contents(&data_dir, None, &pe);
    assert_eq!(plain.sample.as_deref(), Some(&pe[..]));
    assert!(contains(&vault_files(&data_dir)[0], &overlay[..64]), "a plain vault file shows the overlay");

    // A plain store started with a key is refused, untouched.
    let first_file = dir.path().join("first.key");
    let first = keygen(&first_file);
    let first_config = dir.path().join("first.toml");
    std::fs::write(&first_config, config(Some(&first_file))).unwrap();
    let before = files(&data_dir);
    let (succeeded, stderr) = run(SERVE, &data_dir, Some(&first_config), &[]);
    assert!(!succeeded && stderr.contains("is not encrypted"), "{stderr}");
    assert!(stderr.contains("sentinel store encrypt"), "{stderr}");
    assert!(files(&data_dir) == before);

    // Not while a server has the store open.
    let mut served = ServeCommand::new(SENTINEL, &data_dir).config(NETWORK).start();
    let key_arg = first_file.to_str().unwrap();
    let (succeeded, stderr) = run(&["store", "encrypt", "--key-file", key_arg], &data_dir, None, &[]);
    assert!(!succeeded && stderr.contains("in use by another process"), "{stderr}");
    stop(&mut served);

    let (succeeded, stderr) = run(&["store", "encrypt", "--key-file", key_arg], &data_dir, None, &[]);
    assert!(succeeded, "{stderr}");
    assert_encrypted(&data_dir, &overlay);
    assert_eq!(contents(&data_dir, Some(&first), &pe), plain);

    let second_file = dir.path().join("second.key");
    let second = keygen(&second_file);
    let second_arg = second_file.to_str().unwrap();
    let (succeeded, stderr) =
        run(&["store", "rekey", "--new-key-file", second_arg], &data_dir, Some(&first_config), &[]);
    assert!(succeeded, "{stderr}");
    assert_encrypted(&data_dir, &overlay);
    assert_eq!(contents(&data_dir, Some(&second), &pe), plain);

    // The new key serves; the old one is refused.
    let mut served = ServeCommand::new(SENTINEL, &data_dir).config(&config(Some(&second_file))).start();
    stop(&mut served);
    let (succeeded, stderr) = run(SERVE, &data_dir, Some(&first_config), &[]);
    assert!(!succeeded && stderr.contains("cannot be decrypted with the configured store key"), "{stderr}");
    assert_eq!(contents(&data_dir, Some(&second), &pe), plain);
}
