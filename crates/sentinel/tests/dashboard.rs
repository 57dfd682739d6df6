//! The operator dashboard of the real `sentinel serve`, driven by Debian's Chromium through
//! playwright-core (`tests/dashboard/drive.mjs`): a person signs in with the admin token, sees
//! a live anomaly arrive on the Live page over the WebSocket, labels it "Anomaly", uploads a PE
//! on the Malware page and reads its verdict and YARA match, and acknowledges the anomaly's alert
//! on the Alerts page. This test feeds the server and checks on the server's side what the page
//! did: the label is stored under the id the page showed, the verdict the page read is the one
//! recorded, the alert is acknowledged by the admin token with the note typed.
//!
//! It needs Node.js, Chromium and `npm ci --prefix crates/sentinel/tests/dashboard`; without
//! them it says so and skips, unless `SENTINEL_REQUIRE_PEERS=1` (CI), where it fails.
//! `SENTINEL_DASHBOARD_SCREENSHOTS=DIR` keeps a screenshot of each page in DIR (those of
//! docs/dashboard/ were made so).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

use sentinel_testkit::connection_records::{connection_record as record, snapshot, web_client_history};
use sentinel_testkit::prerequisite::Prerequisite;
use sentinel_testkit::serve_process::{QUICK_NETWORK, ServeCommand, TestProcess};
use sentinel_testkit::synthetic_pe;
use serde_json::json;
use sha2::{Digest, Sha256};

const SENTINEL: &str = env!("CARGO_BIN_EXE_sentinel");

/// No collector (the host's own traffic stays out of the baseline) and a quick model.
fn config() -> String {
    format!("[network]\ncollect = false\n{QUICK_NETWORK}")
}

const MARKER_RULE: &str = r#"
rule sentinel_marker : dropper {
  meta:
    score = 95
  strings:
    $marker = "SENTINEL-DASHBOARD-MARKER"
  condition:
    uint16(0) == 0x5A4D and $marker
}
"#;

/// The folder of the driver script and its npm project.
fn driver_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/dashboard")
}

/// The browser: `CHROMIUM`, else Debian's.
fn chromium() -> PathBuf {
    std::env::var_os("CHROMIUM").map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from)
}

/// What is missing to drive a browser, if anything.
fn missing_peer() -> Option<String> {
    let node = Command::new("node").arg("--version").output();
    if !node.is_ok_and(|output| output.status.success()) {
        return Some("Node.js (`node`) is not installed".to_owned());
    }
    if !chromium().is_file() {
        return Some(format!(
            "Chromium is not at {} (install Debian's `chromium`, or set CHROMIUM)",
            chromium().display()
        ));
    }
    if !driver_dir().join("node_modules/playwright-core/package.json").is_file() {
        return Some(
            "playwright-core is not installed (npm ci --prefix crates/sentinel/tests/dashboard)".to_owned(),
        );
    }
    None
}

/// A token of scope `network:read` only, made by `sentinel token create`.
fn viewer_token(data_dir: &Path) -> String {
    let output = Command::new(SENTINEL)
        .args(["token", "create", "--name", "viewer", "--scope", "network:read", "--data-dir"])
        .arg(data_dir)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run sentinel token");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

/// The lines the driver prints, read on a thread of their own.
fn lines_of(stdout: std::process::ChildStdout) -> mpsc::Receiver<String> {
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if sender.send(line).is_err() {
                return;
            }
        }
    });
    receiver
}

/// The driver's next line, which must start with `word`; returns the rest.
async fn expect(lines: &mpsc::Receiver<String>, word: &str) -> String {
    let line = match lines.recv_timeout(Duration::from_secs(90)) {
        Ok(line) => line,
        Err(error) => {
            panic!("the driver said nothing where `{word}` was expected ({error}): see its stderr above")
        }
    };
    let rest = line
        .strip_prefix(word)
        .unwrap_or_else(|| panic!("expected `{word} …` from the driver, got `{line}`"));
    rest.trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_signs_in_labels_a_live_anomaly_and_reads_a_files_verdict() {
    if let Some(why) = missing_peer() {
        Prerequisite::Peers.missing(format!("the dashboard test needs a browser: {why}"));
        return;
    }
    let data_dir = tempfile::tempdir().unwrap();
    let rules = tempfile::tempdir().unwrap();
    std::fs::write(rules.path().join("markers.yar"), MARKER_RULE).unwrap();
    let served = ServeCommand::new(SENTINEL, data_dir.path())
        .config(&config())
        .args(["--yara-rules"])
        .args([rules.path()])
        .start();
    let admin = served.api();

    // Two minutes of an ordinary web client, then a model trained on it.
    admin.train_network_model("history").await;

    // The file the operator uploads: a PE carrying the marker the YARA rule looks for.
    let mut executable = synthetic_pe(64 * 1024, 7);
    let at = executable.len() - 256;
    executable[at..at + 25].copy_from_slice(b"SENTINEL-DASHBOARD-MARKER");
    let upload = data_dir.path().join("dropper.exe");
    std::fs::write(&upload, &executable).unwrap();

    let screenshots = match std::env::var_os("SENTINEL_DASHBOARD_SCREENSHOTS") {
        Some(directory) => PathBuf::from(directory),
        None => data_dir.path().join("screenshots"),
    };
    std::fs::create_dir_all(&screenshots).unwrap();
    let mut driver = TestProcess::spawn(
        Command::new("node")
            .arg(driver_dir().join("drive.mjs"))
            .current_dir(driver_dir())
            .env("SENTINEL_URL", format!("http://{}/", served.http))
            .env("SENTINEL_TOKEN", served.admin_token())
            .env("SENTINEL_VIEWER_TOKEN", viewer_token(data_dir.path()))
            .env("SENTINEL_UPLOAD", &upload)
            .env("SENTINEL_SCREENSHOTS", &screenshots)
            .env("CHROMIUM", chromium())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped()),
    );
    let lines = lines_of(driver.stdout().expect("the driver's stdout"));
    let mut to_driver = driver.stdin().expect("the driver's stdin");

    // Once the page streams, an agent's snapshot brings a bulk upload from an unseen process.
    let lines = tokio::task::spawn_blocking(move || {
        let line = lines.recv_timeout(Duration::from_secs(90));
        (lines, line)
    })
    .await
    .unwrap();
    let (lines, first) = lines;
    assert_eq!(first.as_deref(), Ok("live-open"), "the page did not open its stream");
    // Ordinary traffic of another host while the page is open, for its charts.
    let office = served.api();
    let traffic = tokio::spawn(async move {
        for snapshot in web_client_history("office", SystemTime::now(), 120) {
            office.ingest(&snapshot).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    let now = SystemTime::now();
    admin
        .ingest(&snapshot(
            "history",
            now,
            vec![record("history", "dropper", 4444, 51_000, 900_000_000, 10, now)],
        ))
        .await;
    writeln!(to_driver, "anomaly-posted").unwrap();

    let labelled: i64 = expect(&lines, "labelled").await.parse().expect("an id");
    let (status, recent) = admin.get_json("/api/v1/predictions/recent?process=dropper").await;
    assert_eq!(status, 200, "{recent}");
    let anomaly = &recent["results"][0];
    assert_eq!((&anomaly["id"], &anomaly["is_anomaly"]), (&json!(labelled), &json!(true)), "{recent:#}");
    // The label is stored, by the admin token, with the note typed on the page.
    let status = admin.get_json("/api/v1/models/status").await.1;
    assert_eq!(status["feedback"]["labelled"], 1, "{:#}", status["feedback"]);
    let (code, audit) = admin.get_json("/api/v1/audit?action=model.feedback").await;
    assert_eq!(code, 200, "{audit}");
    let event = &audit["events"][0];
    assert!(event["principal"].as_str().unwrap().starts_with("token:admin"), "{audit:#}");
    assert_eq!(event["outcome"], "ok", "{audit:#}");

    // The verdict the page read is the one recorded for the file.
    let verdict = expect(&lines, "verdict").await;
    let sha256 = hex::encode(Sha256::digest(&executable));
    let (status, known) = admin.get_json(&format!("/api/v1/files/{sha256}")).await;
    assert_eq!(status, 200, "{known}");
    let combined = known["verdicts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|verdict| verdict["analysis"] == "combined" || verdict["analysis"] == "static")
        .unwrap_or_else(|| panic!("no verdict recorded: {known:#}"))["score"]
        .as_f64()
        .unwrap();
    assert!(combined >= 0.95, "the YARA rule's score raises the verdict: {known:#}");
    assert!(verdict.starts_with("malicious (y = "), "the page shows {verdict:?}");
    let yara = expect(&lines, "yara").await;
    assert!(
        yara.contains("sentinel_marker") && yara.contains("dropper"),
        "the page shows the YARA match {yara:?}"
    );
    // The anomaly's alert, acknowledged on the Alerts page, by the admin token, with the note.
    let acknowledged: i64 = expect(&lines, "acknowledged").await.parse().expect("an id");
    let (status, alert) = admin.get_json(&format!("/api/v1/alerts/{acknowledged}")).await;
    assert_eq!(status, 200, "{alert}");
    assert_eq!(alert["rule"], "anomaly", "{alert:#}");
    assert_eq!(alert["details"]["remote_port"], 4444, "{alert:#}");
    assert!(alert["key"].as_str().unwrap().starts_with("history/"), "{alert:#}");
    assert!(alert["acknowledged_at"].is_string(), "{alert:#}");
    assert!(alert["acknowledged_by"].as_str().unwrap().starts_with("token:admin"), "{alert:#}");
    assert_eq!(alert["acknowledgement_note"], "dropper host isolated", "{alert:#}");
    expect(&lines, "viewer-checked").await;
    expect(&lines, "done").await;
    traffic.abort();
    let status = driver.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "the driver failed: {status}");
    for page in ["sign-in", "live", "malware", "models", "alerts", "charts"] {
        let png = std::fs::read(screenshots.join(format!("{page}.png"))).unwrap();
        assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "{page}.png is no screenshot");
    }
}
