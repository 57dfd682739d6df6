//! YARA rules with the real binary: a rule matching a string in a PE built here raises the
//! static verdict and is recorded with the sample; rules reload under load (SIGHUP and
//! `POST /admin/reload`) without failing a request, and a broken rule is reported while the rules
//! in service stay; a broken rule at start stops `serve`; `sentinel scan --json` lists matches.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use sentinel_protocol::{Client, Request, Response, Sha256Hash};
use sentinel_store::{Store, StoreSettings};
use sentinel_testkit::http_client::send_with_headers;
use sentinel_testkit::serve_process::{ServeCommand, ServeProcess};
use sentinel_testkit::synthetic_pe;
use serde_json::Value;

const SENTINEL: &str = env!("CARGO_BIN_EXE_sentinel");

const MARKER: &[u8] = b"SENTINEL-YARA-MARKER";
const MARKER_RULE: &str = r#"
rule sentinel_marker : test dropper {
  meta:
    description = "the test marker"
    score = 95
  strings:
    $marker = "SENTINEL-YARA-MARKER"
  condition:
    uint16(0) == 0x5A4D and $marker
}
"#;
const SECOND_MARKER: &[u8] = b"SECOND-YARA-MARKER";
const SECOND_RULE: &str = r#"
rule second_marker {
  meta:
    severity = "critical"
  strings:
    $second = "SECOND-YARA-MARKER"
  condition:
    $second
}
"#;
const BROKEN_RULE: &str = "rule broken {\n  condition:\n    $undefined\n}\n";

/// A PE of 64 KiB with `marker` written into its overlay (the last bytes), `seed` varying the rest.
fn pe_with(marker: &[u8], seed: u64) -> Vec<u8> {
    let mut pe = synthetic_pe(64 * 1024, seed);
    let at = pe.len() - 256;
    pe[at..at + marker.len()].copy_from_slice(marker);
    pe
}

fn static_request(executable: &[u8]) -> Request {
    Request::new(sentinel_protocol::Command::StaticAnalyse, vec![Bytes::copy_from_slice(executable)])
}

/// The static score the server gives `executable`.
async fn static_score(client: &mut Client, executable: &[u8]) -> f32 {
    match client.request(&static_request(executable)).await.unwrap() {
        Response::Yes(scores) => scores[1],
        other => panic!("expected Yes, got {other:?}"),
    }
}

fn rules_directory(files: &[(&str, &str)]) -> tempfile::TempDir {
    let directory = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(directory.path().join(name), text).unwrap();
    }
    directory
}

async fn ready_rules_version(served: &ServeProcess) -> String {
    let (status, body) = served.api().get_json("/readyz").await;
    assert_eq!(status, 200, "{body}");
    body["yara_rules"].as_str().unwrap_or_else(|| panic!("no yara_rules in {body}")).to_owned()
}

#[tokio::test]
async fn a_rule_matching_a_string_in_a_pe_raises_the_static_verdict_and_is_recorded() {
    let data_dir = tempfile::tempdir().unwrap();
    let rules = rules_directory(&[("markers.yar", MARKER_RULE)]);
    let mut served =
        ServeCommand::new(SENTINEL, data_dir.path()).args(["--yara-rules"]).args([rules.path()]).start();
    let mut client = Client::connect(served.tcp).await.unwrap();

    let plain = synthetic_pe(64 * 1024, 7);
    let marked = pe_with(MARKER, 7);
    let model_score = static_score(&mut client, &plain).await;
    assert!(
        model_score < 0.95,
        "the model alone already scores the plain PE {model_score}: nothing to raise"
    );
    let raised = static_score(&mut client, &marked).await;
    assert!((raised - 0.95).abs() < 1e-6, "score = 95 raises the verdict to 0.95, got {raised}");
    let version = ready_rules_version(&served).await;
    assert!(version.starts_with("yara-"), "{version}");

    // The HTTP API shows the matches with the static answer, and with what is known of the hash.
    let token = format!("Bearer {}", served.admin_token());
    let headers = [("content-type", "application/octet-stream"), ("authorization", token.as_str())];
    let other = pe_with(MARKER, 8);
    let answer =
        send_with_headers(served.http, "POST", "/api/v1/files?analyses=static", &headers, Some(&other))
            .await
            .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.body);
    let analysis = answer.json();
    assert_eq!(analysis["static"]["score"], 0.95, "{analysis}");
    assert_eq!(analysis["static"]["yara"]["ruleset"], version.as_str());
    assert_eq!(analysis["static"]["yara"]["matches"][0]["rule"], "sentinel_marker");
    assert_eq!(analysis["static"]["yara"]["matches"][0]["metadata"]["score"], 95);
    let path = format!("/api/v1/files/{}", Sha256Hash::of(&other).to_hex());
    let (status, known) = served.api().get_json(&path).await;
    assert_eq!(status, 200, "{known}");
    assert_eq!(known["yara_matches"][0]["rule"], "sentinel_marker", "{known}");
    assert_eq!(known["yara_matches"][0]["tags"], serde_json::json!(["test", "dropper"]));

    served.signal("-TERM");
    assert!(served.wait_exit(Duration::from_secs(10)).success());
    let store = Store::open(data_dir.path(), StoreSettings::default()).unwrap();
    let marked_sha = Sha256Hash::of(&marked).to_hex();
    let matches = store.yara_matches(&marked_sha).unwrap();
    assert_eq!(matches.len(), 1, "{matches:?}");
    let found = &matches[0];
    assert_eq!(
        (found.rule.as_str(), found.namespace.as_str(), found.ruleset.as_str()),
        ("sentinel_marker", "markers", version.as_str())
    );
    assert_eq!(found.tags, ["test", "dropper"]);
    assert_eq!(found.metadata["description"], "the test marker");
    let verdicts = store.verdicts(&marked_sha).unwrap();
    assert_eq!(verdicts.len(), 1);
    assert!(verdicts[0].model_version.ends_with(&format!("+{version}")), "{:?}", verdicts[0]);
    assert!((verdicts[0].score - 0.95).abs() < 1e-9);
    // The plain PE was scanned too, and nothing matched.
    assert!(store.yara_matches(&Sha256Hash::of(&plain).to_hex()).unwrap().is_empty());
}

#[tokio::test]
async fn rules_reload_under_load_and_a_broken_rule_leaves_the_rules_in_service() {
    let data_dir = tempfile::tempdir().unwrap();
    let rules = rules_directory(&[("markers.yar", MARKER_RULE)]);
    // The load below comes from one address as fast as the server answers: the per-client rate
    // limit, which is not what this test is about, must not refuse it.
    let served = ServeCommand::new(SENTINEL, data_dir.path())
        .args(["--yara-rules"])
        .args([rules.path()])
        .env("SENTINEL_SERVER__CLIENT_REQUEST_RATE", "1000000")
        .env("SENTINEL_SERVER__CLIENT_REQUEST_BURST", "1000000")
        .start();
    let first_version = ready_rules_version(&served).await;

    // Four clients keep asking while the rules change under them.
    let stop = Arc::new(AtomicBool::new(false));
    let (answered, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut load = Vec::new();
    for worker in 0..4u64 {
        let (stop, answered, failed, address) =
            (Arc::clone(&stop), Arc::clone(&answered), Arc::clone(&failed), served.tcp);
        load.push(tokio::spawn(async move {
            let mut client = Client::connect(address).await.unwrap();
            let mut seed = worker * 1_000_000;
            while !stop.load(Ordering::Relaxed) {
                seed += 1;
                match client.request(&static_request(&pe_with(MARKER, seed))).await {
                    Ok(Response::Yes(scores)) if scores[1] >= 0.95 => {
                        answered.fetch_add(1, Ordering::Relaxed)
                    }
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }

    let mut probe = Client::connect(served.tcp).await.unwrap();
    let second = pe_with(SECOND_MARKER, 99);
    assert!(static_score(&mut probe, &second).await < 1.0, "no rule knows the second marker yet");

    // SIGHUP: a new file of rules.
    std::fs::write(rules.path().join("second.yar"), SECOND_RULE).unwrap();
    served.signal("-HUP");
    let deadline = Instant::now() + Duration::from_secs(30);
    let second_version = loop {
        let version = ready_rules_version(&served).await;
        if version != first_version {
            break version;
        }
        assert!(Instant::now() < deadline, "SIGHUP did not reload the rules");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(static_score(&mut probe, &second).await, 1.0, "severity critical raises the verdict to 1");

    // A broken rule: the reload fails, says where, and the rules in service stay.
    std::fs::write(rules.path().join("broken.yar"), BROKEN_RULE).unwrap();
    let answer = served.api().send("POST", "/admin/reload", None).await;
    assert_eq!(answer.status, 500, "{}", answer.body);
    let error = answer.json()["error"].as_str().unwrap_or_default().to_owned();
    assert!(error.contains("broken.yar") && error.contains("$undefined"), "{error}");
    assert_eq!(ready_rules_version(&served).await, second_version);
    assert_eq!(static_score(&mut probe, &second).await, 1.0);

    // Fixed: an admin reload takes it.
    std::fs::write(rules.path().join("broken.yar"), "rule fixed { condition: false }").unwrap();
    let answer = served.api().send("POST", "/admin/reload", None).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let third_version = answer.json()["yara_rules"].as_str().unwrap().to_owned();
    assert_ne!(third_version, second_version);
    assert_eq!(ready_rules_version(&served).await, third_version);

    stop.store(true, Ordering::Relaxed);
    for worker in load {
        worker.await.unwrap();
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0, "a request failed or missed its rule during the reloads");
    assert!(answered.load(Ordering::Relaxed) >= 4, "the load did not run");
}

#[test]
fn a_rule_that_does_not_compile_stops_serve_before_it_listens() {
    let data_dir = tempfile::tempdir().unwrap();
    let rules = rules_directory(&[("markers.yar", MARKER_RULE), ("broken.yar", BROKEN_RULE)]);
    let output = Command::new(SENTINEL)
        .args(["serve", "--tcp-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir.path())
        .arg("--yara-rules")
        .arg(rules.path())
        .env("SENTINEL_NETWORK__COLLECT", "false")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!stdout.contains("listening"), "it listened: {stdout}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("broken.yar") && stderr.contains("$undefined"), "{stderr}");
}

fn scan_json(rules: &Path, file: &Path) -> Value {
    let output = Command::new(SENTINEL)
        .args(["scan", "--json", "--yara-rules"])
        .arg(rules)
        .arg(file)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn scan_json_lists_the_matches_and_raises_the_score() {
    let rules = rules_directory(&[("markers.yar", MARKER_RULE)]);
    let files = tempfile::tempdir().unwrap();
    let (marked, plain) = (files.path().join("marked.exe"), files.path().join("plain.exe"));
    std::fs::write(&marked, pe_with(MARKER, 3)).unwrap();
    std::fs::write(&plain, synthetic_pe(64 * 1024, 3)).unwrap();

    let verdict = scan_json(rules.path(), &marked);
    assert_eq!(verdict["yara_matches"][0]["rule"], "sentinel_marker");
    assert_eq!(verdict["yara_matches"][0]["tags"], serde_json::json!(["test", "dropper"]));
    assert_eq!(verdict["yara_matches"][0]["metadata"]["score"], 95);
    assert_eq!(verdict["score"], 0.95);
    assert_eq!(verdict["malicious"], true);

    let verdict = scan_json(rules.path(), &plain);
    assert_eq!(verdict["yara_matches"], serde_json::json!([]));
    assert!(verdict["score"].as_f64().unwrap() < 0.95, "{verdict}");
}
