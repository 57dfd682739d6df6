//! `sentinel serve` wired to VirusTotal from the command line
//! (`--vt-base-url`): command 3 goes to the fake VirusTotal with the client's
//! key, the key-hash secret is created private in the data directory, and the
//! key reaches VirusTotal but never the server's logs or disk, even at debug level.

use std::io::Write;
use std::process::{Command, Stdio};

use bytes::Bytes;
use sentinel_protocol::{Client, Request, Response};
use sentinel_server::VT_KEY_SECRET_FILE;
use sentinel_testkit::fake_virustotal::{FakeVt, sha256_hex};
use sentinel_testkit::serve_process::ServeCommand;
use sentinel_virustotal::{ApiKey, KeyHasher};

const KEY: &str = "5ec12e7a5ec12e7a5ec12e7a5ec12e7a5ec12e7a5ec12e7a5ec12e7a5ec12e7a";

#[tokio::test]
async fn serve_asks_the_configured_virustotal_with_the_clients_key_without_keeping_it() {
    let fake = FakeVt::start().await;
    fake.state.add_key(KEY);
    let sha256 = sha256_hex(b"a sample");
    fake.state.add_report(&sha256, 30, 70);
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let log_path = dir.path().join("serve.log");
    let served = ServeCommand::new(env!("CARGO_BIN_EXE_sentinel"), &data_dir)
        .args(["--vt-base-url", &fake.base_url])
        .log_to(&log_path)
        .start();

    let mut client = Client::connect(served.tcp).await.unwrap();
    let fields = vec![Bytes::new(), Bytes::from(sha256.clone()), Bytes::from_static(KEY.as_bytes())];
    let response =
        client.request(&Request::new(sentinel_protocol::Command::VtAnalyse, fields)).await.unwrap();
    let virustotal = served.status().await["virustotal"].clone();
    drop(served);
    let log = std::fs::read_to_string(&log_path).unwrap();

    assert!(matches!(response, Response::Yes(ref scores) if scores.len() == 2), "{response:?}");
    let received = fake.state.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].api_key, KEY, "the client's own key pays for the call");
    assert_eq!(virustotal["calls_made"], 1, "{virustotal}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let secret = std::fs::metadata(data_dir.join(VT_KEY_SECRET_FILE)).unwrap();
        assert_eq!(secret.permissions().mode() & 0o777, 0o600);
    }
    assert!(log.contains("VirusTotal step enabled"), "{log}");
    for file in
        [log_path].into_iter().chain(std::fs::read_dir(&data_dir).unwrap().map(|entry| entry.unwrap().path()))
    {
        if file.is_file() {
            let bytes = std::fs::read(&file).unwrap();
            assert!(
                !bytes.windows(KEY.len()).any(|window| window == KEY.as_bytes()),
                "the key is in {}",
                file.display()
            );
        }
    }

    // The operator's way to name this key in `key_tiers`: its id under the same secret.
    let mut key_id = Command::new(env!("CARGO_BIN_EXE_sentinel"))
        .args(["vt-results", "key-id", "--data-dir"])
        .arg(&data_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    key_id.stdin.take().unwrap().write_all(format!("{KEY}\n").as_bytes()).unwrap();
    let output = key_id.wait_with_output().unwrap();
    assert!(output.status.success());
    let hasher = KeyHasher::load_or_create(&data_dir.join(VT_KEY_SECRET_FILE)).unwrap();
    let expected = hasher.key_id(&ApiKey::new(KEY).unwrap()).to_string();
    assert_eq!(String::from_utf8(output.stdout).unwrap().trim(), expected);
}
