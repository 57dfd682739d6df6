//! The safelist and badlist on the real `sentinel serve`: a listed hash is answered at once
//! (y = 1 for the badlist, 0 for the safelist) on the protocol and over HTTP, with the list's
//! reason in the protocol's opt-in list detail and in the HTTP answer, and recorded as a
//! verdict of analysis `list`; the lists are managed by `sentinel lists` on the running
//! server's data directory (seen at the next request, without a restart) and by the API
//! (scope `admin`, recorded in the audit table); CSV export and import round-trip.

use std::path::Path;
use std::process::{Command, Output};

use bytes::Bytes;
use sentinel_protocol::{Client, Request, Response};
use sentinel_static::StaticModel;
use sentinel_testkit::fake_virustotal::sha256_hex;
use sentinel_testkit::http_client::send_with_headers;
use sentinel_testkit::serve_process::{ServeCommand, ServeProcess};
use sentinel_testkit::synthetic_pe::synthetic_pe;
use serde_json::{Value, json};

const SENTINEL: &str = env!("CARGO_BIN_EXE_sentinel");

/// No collector: this host's traffic is of no use here.
const QUIET: &str = "[network]\ncollect = false\n";

/// `sentinel ARGS… --data-dir DATA_DIR`.
fn sentinel(data_dir: &Path, args: &[&str]) -> Output {
    Command::new(SENTINEL)
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

#[track_caller]
fn succeeds(output: Output) -> String {
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

fn static_request(sample: &[u8]) -> Request {
    Request::new(sentinel_protocol::Command::StaticAnalyse, vec![Bytes::copy_from_slice(sample)])
}

async fn post_file(served: &ServeProcess, sample: &[u8]) -> Value {
    let authorization = format!("Bearer {}", served.admin_token());
    let headers = [("content-type", "application/octet-stream"), ("authorization", authorization.as_str())];
    let answer =
        send_with_headers(served.http, "POST", "/api/v1/files", &headers, Some(sample)).await.unwrap();
    assert_eq!(answer.status, 200, "{}", answer.body);
    answer.json()
}

#[tokio::test]
async fn a_listed_hash_is_answered_from_its_list_on_both_paths_whoever_changed_the_list() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let served = ServeCommand::new(SENTINEL, &data_dir).config(QUIET).start();
    let sample = synthetic_pe(4096, 51);
    let sha256 = sha256_hex(&sample);
    let model_score = StaticModel::builtin().analyse(&sample).unwrap().score as f32;

    let mut detailed = Client::connect(served.tcp).await.unwrap();
    assert!(detailed.enable_error_detail().await.unwrap());
    assert!(detailed.enable_list_detail().await.unwrap());
    let mut plain = Client::connect(served.tcp).await.unwrap();
    assert_eq!(
        detailed.request(&static_request(&sample)).await.unwrap(),
        Response::Yes(vec![model_score; 2])
    );

    // The badlist, by the command line on the running server's directory: seen at once.
    let printed = succeeds(sentinel(
        &data_dir,
        &[
            "lists",
            "add",
            "bad",
            "--sha256",
            &sha256.to_uppercase(),
            "--reason",
            "ransomware, ticket 42",
            "--source",
            "soc",
        ],
    ));
    assert!(printed.contains(&format!("{sha256} added to the bad list")), "{printed}");
    match detailed.request(&static_request(&sample)).await.unwrap() {
        Response::Listed(scores, detail) => {
            assert_eq!(scores, [1.0, 1.0], "y, and the list's verdict in the static step's place");
            assert_eq!(
                (detail.list.as_str(), detail.reason.as_str(), detail.source.as_str()),
                ("badlist", "ransomware, ticket 42", "soc")
            );
        }
        other => panic!("expected a listed Yes, got {other:?}"),
    }
    // A client that did not ask sees the plain Yes of §1.1.
    assert_eq!(plain.request(&static_request(&sample)).await.unwrap(), Response::Yes(vec![1.0, 1.0]));
    // Command 4 on a server whose VirusTotal step would need a key: the list answers first,
    // nothing is analysed and the frame has the command's shape.
    let combined = Request::new(
        sentinel_protocol::Command::StaticAnalyseWithVt,
        vec![Bytes::copy_from_slice(&sample), Bytes::new(), Bytes::new()],
    );
    assert_eq!(plain.request(&combined).await.unwrap(), Response::Yes(vec![1.0; 3]));

    let body = post_file(&served, &sample).await;
    assert_eq!((body["y"].as_f64(), body["verdict"].as_str()), (Some(1.0), Some("malicious")), "{body}");
    assert_eq!(body["list"]["list"], "bad");
    assert_eq!(body["list"]["reason"], "ransomware, ticket 42");
    assert!(body["list"]["added_by"].as_str().unwrap().starts_with("cli:"), "{body}");
    assert!(body.get("static").is_none(), "no analysis ran: {body}");
    assert_eq!(body["model_versions"], json!({"list": "badlist"}));

    // The API moves it to the safelist (admin only), and the audit table says who did.
    let api = served.api();
    let scanner =
        succeeds(sentinel(&data_dir, &["token", "create", "--name", "scanner", "--scope", "malware:scan"]));
    let narrow = send_with_headers(
        served.http,
        "POST",
        "/api/v1/lists/safe",
        &[("authorization", &format!("Bearer {}", scanner.trim())), ("content-type", "application/json")],
        Some(json!({"sha256": sha256, "reason": "no"}).to_string().as_bytes()),
    )
    .await
    .unwrap();
    assert_eq!(narrow.status, 403, "{}", narrow.body);
    let (status, added) = api
        .post_json(
            "/api/v1/lists/safe",
            &json!({"sha256": sha256, "reason": "signed vendor installer", "source": "ticket 43"}),
        )
        .await;
    assert_eq!(status, 200, "{added}");
    assert_eq!(added["entry"]["list"], "safe");
    assert_eq!(added["replaced"]["list"], "bad");
    assert!(added["entry"]["added_by"].as_str().unwrap().starts_with("token:admin"), "{added}");
    match detailed.request(&static_request(&sample)).await.unwrap() {
        Response::Listed(scores, detail) => {
            assert_eq!(scores, [0.0, 0.0]);
            assert_eq!(
                (detail.list.as_str(), detail.reason.as_str()),
                ("safelist", "signed vendor installer")
            );
        }
        other => panic!("expected a listed Yes, got {other:?}"),
    }
    let body = post_file(&served, &sample).await;
    assert_eq!((body["y"].as_f64(), body["verdict"].as_str()), (Some(0.0), Some("benign")), "{body}");
    let (status, page) = api.get_json("/api/v1/lists/safe").await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["entries"].as_array().unwrap().len(), 1);
    assert_eq!(page["entries"][0]["sha256"], sha256);
    let (status, page) = api.get_json("/api/v1/lists/bad").await;
    assert_eq!((status, page["entries"].as_array().unwrap().len()), (200, 0), "{page}");

    // Bad input and unknown lists are refused, and nothing changes.
    let (status, body) = api.post_json("/api/v1/lists/safe", &json!({"sha256": sha256, "reason": " "})).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = api.post_json("/api/v1/lists/grey", &json!({"sha256": sha256, "reason": "x"})).await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = api.post_json("/api/v1/lists/bad", &json!({"sha256": "abc", "reason": "x"})).await;
    assert_eq!(status, 400, "{body}");

    // Off the list: the model answers again.
    let removed = api.send("DELETE", &format!("/api/v1/lists/bad/{sha256}"), None).await;
    assert_eq!(removed.status, 404, "not on the badlist: {}", removed.body);
    let removed = api.send("DELETE", &format!("/api/v1/lists/safe/{sha256}"), None).await;
    assert_eq!(removed.status, 200, "{}", removed.body);
    assert_eq!(removed.json()["removed"]["reason"], "signed vendor installer");
    assert_eq!(
        detailed.request(&static_request(&sample)).await.unwrap(),
        Response::Yes(vec![model_score; 2])
    );

    // Every answer is a verdict: the list's are auditable like the models'.
    let (status, record) = api.get_json(&format!("/api/v1/files/{sha256}")).await;
    assert_eq!(status, 200, "{record}");
    let verdicts: Vec<(String, String, f64)> = record["verdicts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|verdict| {
            (
                verdict["analysis"].as_str().unwrap().to_owned(),
                verdict["model_version"].as_str().unwrap().to_owned(),
                verdict["score"].as_f64().unwrap(),
            )
        })
        .collect();
    let lists: Vec<(&str, f64)> = verdicts
        .iter()
        .filter(|(analysis, ..)| analysis == "list")
        .map(|(_, version, score)| (version.as_str(), *score))
        .collect();
    assert_eq!(
        lists,
        [
            ("safelist", 0.0),
            ("safelist", 0.0),
            ("badlist", 1.0),
            ("badlist", 1.0),
            ("badlist", 1.0),
            ("badlist", 1.0)
        ],
        "newest first: {record}"
    );
    assert_eq!(verdicts.iter().filter(|(analysis, ..)| analysis == "static").count(), 2);
    let (status, audit) = api.get_json("/api/v1/audit?action=list.add").await;
    assert_eq!(status, 200, "{audit}");
    let events = audit["events"].as_array().unwrap();
    let principals: Vec<&str> = events.iter().map(|event| event["principal"].as_str().unwrap()).collect();
    assert!(
        principals[0].starts_with("token:admin") && principals.iter().any(|p| p.starts_with("cli:")),
        "{audit}"
    );
    assert_eq!(events[0]["target"], format!("safe:{sha256}"));
    assert_eq!(events[0]["details"]["replaced_list"], "bad");
    let (_, audit) = api.get_json("/api/v1/audit?action=list.remove").await;
    assert_eq!(audit["events"].as_array().unwrap().len(), 1, "{audit}");
}

#[tokio::test]
async fn lists_are_managed_by_the_command_line_and_exchanged_as_csv() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let (first, second) = (sha256_hex(b"first"), sha256_hex(b"second"));
    succeeds(sentinel(
        &data_dir,
        &["lists", "add", "safe", "--sha256", &first, "--reason", "golden image, build 7"],
    ));
    succeeds(sentinel(
        &data_dir,
        &["lists", "add", "safe", "--sha256", &second, "--reason", "vendor tool", "--source", "it"],
    ));
    let refused = sentinel(&data_dir, &["lists", "add", "grey", "--sha256", &first, "--reason", "x"]);
    assert!(!refused.status.success());
    let refused = sentinel(&data_dir, &["lists", "add", "bad", "--sha256", "nothex", "--reason", "x"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("SHA-256"), "{refused:?}");

    let listed = succeeds(sentinel(&data_dir, &["lists", "list", "safe", "--json"]));
    let entries: Vec<Value> = listed.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    assert_eq!(entries.len(), 2, "{listed}");
    let reasons: Vec<&str> = entries.iter().map(|entry| entry["reason"].as_str().unwrap()).collect();
    assert!(reasons.contains(&"golden image, build 7") && reasons.contains(&"vendor tool"), "{listed}");
    let table = succeeds(sentinel(&data_dir, &["lists", "list", "safe"]));
    assert!(table.contains("SHA256") && table.contains(&first), "{table}");

    // Export, empty the list, import it back: the same entries.
    let csv = dir.path().join("safe.csv");
    let printed = succeeds(sentinel(&data_dir, &["lists", "export", "safe", csv.to_str().unwrap()]));
    assert!(printed.starts_with("2 entries written"), "{printed}");
    let text = std::fs::read_to_string(&csv).unwrap();
    assert!(
        text.starts_with("sha256,reason,source\n") && text.contains("\"golden image, build 7\""),
        "{text}"
    );
    succeeds(sentinel(&data_dir, &["lists", "remove", "safe", "--sha256", &first]));
    succeeds(sentinel(&data_dir, &["lists", "remove", "safe", "--sha256", &second]));
    let missing = sentinel(&data_dir, &["lists", "remove", "safe", "--sha256", &second]);
    assert!(!missing.status.success(), "removing what is not listed fails");
    assert_eq!(succeeds(sentinel(&data_dir, &["lists", "list", "safe", "--json"])), "");
    std::fs::write(&csv, format!("{text}not-a-hash,x,y\n")).unwrap();
    let printed = succeeds(sentinel(&data_dir, &["lists", "import", "bad", csv.to_str().unwrap()]));
    assert!(
        printed.contains("2 rows imported") && printed.contains("1 rejected") && printed.contains("line 4"),
        "{printed}"
    );
    let listed = succeeds(sentinel(&data_dir, &["lists", "list", "bad", "--json"]));
    let entries: Vec<Value> = listed.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    let mut imported: Vec<(&str, &str)> = entries
        .iter()
        .map(|entry| (entry["reason"].as_str().unwrap(), entry["source"].as_str().unwrap()))
        .collect();
    imported.sort();
    assert_eq!(imported, [("golden image, build 7", "cli"), ("vendor tool", "it")]);
}
