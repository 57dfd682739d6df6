//! The access log and the audit table of `sentinel serve`, with the real binary: one JSON line
//! for each HTTP request (served, refused for its credential, its scope or a limit, a
//! WebSocket upgrade), each protocol request (answered or refused as `rate_limited`) and each
//! connection refused at accept; no token text in the file; rotation by size keeping
//! `max_files`; and the audit rows of token commands and model actions, listed by
//! `GET /api/v1/audit` for an admin only.

mod protocol_peer;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use protocol_peer::{SENTINEL, closed_silently, connect_from, static_request};
use sentinel_protocol::{Client, Response};
use sentinel_testkit::http_client::{self, ApiClient};
use sentinel_testkit::serve_process::{ServeCommand, ServeProcess};
use sentinel_testkit::synthetic_pe;
use serde_json::Value;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// No collector: this host's traffic is of no use here.
const QUIET: &str = "[network]\ncollect = false\n";

/// `sentinel token ARGS… --data-dir DATA_DIR`, as the OS user `user`: its stdout.
fn token_command(data_dir: &Path, user: &str, args: &[&str]) -> String {
    let output = Command::new(SENTINEL)
        .arg("token")
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .env("RUST_LOG", "warn")
        .env("USER", user)
        .output()
        .expect("run sentinel token");
    assert!(output.status.success(), "sentinel token {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

fn create_token(data_dir: &Path, name: &str, scopes: &str) -> String {
    token_command(data_dir, "operator", &["create", "--name", name, "--scope", scopes]).trim().to_owned()
}

/// Stops the server cleanly (SIGTERM), so that the access log is flushed.
/// How the log names a client at `address`: as `[privacy]` stores addresses (by default a
/// prefix-preserving pseudonym under the data directory's key), asked of `sentinel privacy`.
fn stored_form(data_dir: &Path, address: &str) -> String {
    let output = Command::new(SENTINEL)
        .args(["privacy", "pseudonymise", address, "--data-dir"])
        .arg(data_dir)
        .output()
        .expect("run sentinel privacy");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let printed = String::from_utf8(output.stdout).unwrap();
    let form = printed.split_whitespace().nth(1).expect("ADDRESS FORM").to_owned();
    assert_ne!(form, address, "addresses are pseudonymised by default");
    form
}

fn stop(mut served: ServeProcess) {
    served.signal("-TERM");
    assert!(served.wait_exit(Duration::from_secs(30)).success());
}

/// Every line of `path`, each parsed as JSON (a panic names a line that is not).
fn lines(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    text.lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|error| panic!("not JSON ({error}): {line}")))
        .collect()
}

/// The one line with these `field = value` pairs; panics when there is none or more.
fn the_line<'a>(lines: &'a [Value], wanted: &[(&str, Value)]) -> &'a Value {
    let matching: Vec<&Value> =
        lines.iter().filter(|line| wanted.iter().all(|(field, value)| &line[*field] == value)).collect();
    assert_eq!(matching.len(), 1, "lines with {wanted:?}: {matching:#?}\nall: {lines:#?}");
    matching[0]
}

#[tokio::test]
async fn each_request_leaves_one_line_with_its_principal_route_status_and_reason() {
    let data_dir = tempfile::tempdir().unwrap();
    let config = format!(
        "{QUIET}[http]\nmax_body_bytes = 1024\n[server]\nclient_request_rate = 1\nclient_request_burst = 1\n"
    );
    let served = ServeCommand::new(SENTINEL, data_dir.path()).config(&config).start();
    let admin = served.admin_token();
    let reader = create_token(data_dir.path(), "reader", "network:read");
    let as_reader = ApiClient::new(served.http, Some(reader.clone()));

    // Authorised, with an id in the path; refused without a token; refused for its scope.
    assert_eq!(as_reader.send("GET", "/api/v1/models/status", None).await.status, 200);
    assert_eq!(as_reader.send("GET", "/api/v1/train/17", None).await.status, 404);
    assert_eq!(http_client::send(served.http, "GET", "/status", None).await.status, 401);
    assert_eq!(as_reader.send("POST", "/api/v1/train", Some(b"{}")).await.status, 403);
    let wrong = ApiClient::new(served.http, Some("snt_not-a-token".to_owned()));
    assert_eq!(wrong.send("GET", "/status", None).await.status, 401);
    // Over a limit: a body larger than [http] max_body_bytes.
    let large = vec![b' '; 4096];
    assert_eq!(served.api().send("POST", "/api/v1/analyze", Some(&large)).await.status, 413);
    // A WebSocket upgrade.
    let mut upgrade = format!("ws://{}/ws/realtime", served.http).into_client_request().unwrap();
    upgrade.headers_mut().insert("authorization", format!("Bearer {reader}").parse().unwrap());
    let (socket, response) = tokio_tungstenite::connect_async(upgrade).await.expect("the upgrade");
    assert_eq!(response.status().as_u16(), 101);
    drop(socket);
    // A protocol scan, then one over the client's rate (burst 1).
    let pe = synthetic_pe(8192, 7);
    let mut client = Client::connect(served.tcp).await.unwrap();
    assert!(matches!(client.request(&static_request(&pe)).await.unwrap(), Response::Yes(_)));
    assert!(matches!(client.request(&static_request(&pe)).await.unwrap(), Response::No(_)));
    drop(client);
    stop(served);

    let path = data_dir.path().join("access.log");
    let text = std::fs::read_to_string(&path).unwrap();
    for secret in [admin.as_str(), reader.as_str(), "snt_not-a-token"] {
        assert!(!text.contains(secret), "a token in the access log");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }
    let lines = lines(&path);
    assert_eq!(lines.len(), 9, "{lines:#?}");
    let client = stored_form(data_dir.path(), "127.0.0.1");
    for line in &lines {
        let time = line["time"].as_str().unwrap();
        assert!(humantime::parse_rfc3339(time).is_ok() && time.ends_with('Z'), "{line}");
        assert_eq!(line["client"], client.as_str(), "{line}");
        assert!(line["latency_ms"].as_f64().unwrap() >= 0.0, "{line}");
        assert!(line["bytes_out"].as_u64().is_some() && line["bytes_in"].as_u64().is_some(), "{line}");
    }
    let http = |method: &str, route: &str, status: u16| {
        vec![
            ("kind", "http".into()),
            ("method", method.into()),
            ("route", route.into()),
            ("status", status.into()),
        ]
    };
    let reader_principal: Value = lines
        .iter()
        .find(|line| line["route"] == "/api/v1/models/status")
        .map(|line| line["principal"].clone())
        .unwrap();
    assert!(reader_principal.as_str().unwrap().starts_with("token:reader#"), "{reader_principal}");

    let ok = the_line(&lines, &http("GET", "/api/v1/models/status", 200));
    assert!(ok["reason"].is_null() && ok["bytes_out"].as_u64().unwrap() > 2, "{ok}");
    let missing = the_line(&lines, &http("GET", "/api/v1/train/{job}", 404));
    assert_eq!(missing["principal"], reader_principal);
    assert_eq!(missing["reason"], "not_found");
    let anonymous = the_line(&lines, &[("status", 401.into()), ("reason", "missing_token".into())]);
    assert!(anonymous["principal"].is_null() && anonymous["route"] == "/status", "{anonymous}");
    let invalid = the_line(&lines, &[("status", 401.into()), ("reason", "invalid_token".into())]);
    assert!(invalid["principal"].is_null(), "{invalid}");
    let scope = the_line(&lines, &http("POST", "/api/v1/train", 403));
    assert_eq!(scope["principal"], reader_principal);
    assert_eq!(scope["reason"], "insufficient_scope");
    let large = the_line(&lines, &http("POST", "/api/v1/analyze", 413));
    assert_eq!(large["principal"], "token:admin#1");
    assert_eq!(large["reason"], "payload_too_large");
    assert_eq!(large["bytes_in"], 4096);
    let upgraded = the_line(&lines, &http("GET", "/ws/realtime", 101));
    assert_eq!(upgraded["principal"], reader_principal);
    let scanned = the_line(&lines, &[("kind", "protocol".into()), ("status", "yes".into())]);
    assert_eq!(scanned["command"], "Static_analyse");
    assert!(scanned["principal"].is_null() && scanned["bytes_in"].as_u64().unwrap() > 8192, "{scanned}");
    let limited = the_line(&lines, &[("kind", "protocol".into()), ("status", "no".into())]);
    assert_eq!(limited["reason"], "rate_limited");
}

#[tokio::test]
async fn a_connection_over_the_per_client_cap_leaves_a_connection_line() {
    let data_dir = tempfile::tempdir().unwrap();
    let served = ServeCommand::new(SENTINEL, data_dir.path())
        .config(&format!("{QUIET}[server]\nmax_connections_per_client = 1\n"))
        .start();
    let _held = connect_from(2, served.tcp).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut refused = connect_from(2, served.tcp).await.unwrap();
    assert!(closed_silently(&mut refused, Duration::from_secs(5)).await);
    stop(served);
    let lines = lines(&data_dir.path().join("access.log"));
    let line = the_line(&lines, &[("kind", "connection".into())]);
    assert_eq!(line["reason"], "max_connections_per_client");
    assert_eq!(line["client"], stored_form(data_dir.path(), "127.0.0.2").as_str());
    assert_eq!(line["status"], "refused");
}

#[tokio::test]
async fn the_log_rotates_at_its_size_and_keeps_max_files() {
    let data_dir = tempfile::tempdir().unwrap();
    let config = format!("{QUIET}[access_log]\nmax_size = 2000\nmax_files = 2\n");
    let served = ServeCommand::new(SENTINEL, data_dir.path()).config(&config).start();
    let api = served.api();
    for _ in 0..60 {
        assert_eq!(api.send("GET", "/status", None).await.status, 200);
    }
    stop(served);
    let mut kept = 0;
    for name in ["access.log", "access.log.1", "access.log.2"] {
        let path = data_dir.path().join(name);
        assert!(std::fs::metadata(&path).unwrap().len() <= 2000, "{name} is over max_size");
        let lines = lines(&path);
        assert!(lines.iter().all(|line| line["route"] == "/status"), "{name}: {lines:#?}");
        kept += lines.len();
    }
    assert!(!data_dir.path().join("access.log.3").exists(), "more than max_files rotated files");
    assert!(kept < 60, "the oldest lines were dropped with the oldest file: {kept} kept");
}

#[tokio::test]
async fn administrative_actions_are_audited_and_listed_for_admins_only() {
    let data_dir = tempfile::tempdir().unwrap();
    let served = ServeCommand::new(SENTINEL, data_dir.path()).config(QUIET).start();
    let reader = create_token(data_dir.path(), "reader", "network:read");
    create_token(data_dir.path(), "old", "network:ingest");
    token_command(data_dir.path(), "operator", &["revoke", "old"]);
    let admin = served.api();
    assert_eq!(admin.send("POST", "/api/v1/train", Some(b"{}")).await.status, 202);
    // No version to roll back to: refused, and recorded as failed.
    assert_eq!(admin.send("POST", "/api/v1/models/rollback", None).await.status, 404);
    assert_eq!(admin.send("POST", "/admin/reload", None).await.status, 200);

    let as_reader = ApiClient::new(served.http, Some(reader));
    assert_eq!(as_reader.send("GET", "/api/v1/audit", None).await.status, 403);
    let (status, page) = admin.get_json("/api/v1/audit").await;
    assert_eq!(status, 200, "{page}");
    let events = page["events"].as_array().unwrap();
    let summary: Vec<(&str, &str, &str, &str)> = events
        .iter()
        .map(|event| {
            let field = |name: &str| event[name].as_str().unwrap_or("-");
            (field("action"), field("principal"), field("outcome"), field("target"))
        })
        .collect();
    assert_eq!(summary.len(), 7, "{events:#?}");
    assert_eq!(summary[0], ("model.reload", "token:admin#1", "ok", "malware models"));
    assert_eq!(summary[1], ("model.rollback", "token:admin#1", "failed", "-"));
    assert_eq!((summary[2].0, summary[2].1, summary[2].2), ("model.train", "token:admin#1", "accepted"));
    assert_eq!(summary[3], ("token.revoke", "cli:operator", "ok", "old"));
    assert_eq!(summary[4], ("token.create", "cli:operator", "ok", "old"));
    assert_eq!(summary[5], ("token.create", "cli:operator", "ok", "reader"));
    // The first admin token, made by `serve` itself under the user running it.
    assert_eq!((summary[6].0, summary[6].2, summary[6].3), ("token.create", "ok", "admin"));
    assert!(summary[6].1.starts_with("cli:"), "{:?}", summary[6]);
    assert_eq!(events[0]["client"], stored_form(data_dir.path(), "127.0.0.1").as_str());
    assert!(events[4]["client"].is_null(), "a local command has no client address");
    assert_eq!(events[5]["details"]["scopes"], "network:read");
    assert!(humantime::parse_rfc3339(events[0]["time"].as_str().unwrap()).is_ok());

    // Paging and the action filter.
    let before = events[1]["id"].as_i64().unwrap();
    let (_, older) = admin.get_json(&format!("/api/v1/audit?limit=2&before={before}")).await;
    let actions: Vec<&str> =
        older["events"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["model.train", "token.revoke"]);
    let (_, creations) = admin.get_json("/api/v1/audit?action=token.create").await;
    assert_eq!(creations["events"].as_array().unwrap().len(), 3);
    assert_eq!(admin.send("GET", "/api/v1/audit?limit=0", None).await.status, 400);
    stop(served);
}
