//! Secrets never leak: one whole session of `sentinel serve` and the commands beside it, run
//! with known secret values — VirusTotal keys (one VirusTotal accepts, one it refuses), API
//! tokens (working, narrow, revoked, made up), the JWT secret and the JWTs signed with it or with
//! another, the store key of an encrypted store — then every file under the data directory, the
//! server's debug log, every HTTP answer (bodies and headers, `/metrics` included), every
//! protocol answer and every command's output are searched for each of them. Addresses are
//! searched too, with the default `[privacy]` settings: the protocol client's (it connects from
//! 127.0.0.2) may appear nowhere, and those of the connections an agent posted only in answers to
//! a principal holding `network:pii`.
//!
//! The one place a secret is meant to be is `admin.token`, the first admin token written for its
//! operator (0600): the test checks it holds that token and nothing else holds it.

mod protocol_peer;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use sentinel_protocol::{Client, Request};
use sentinel_testkit::connection_records::{connection_record, snapshot};
use sentinel_testkit::fake_virustotal::{FakeVt, sha256_hex};
use sentinel_testkit::http_client::{ApiClient, HttpAnswer, send_with_headers};
use sentinel_testkit::serve_process::ServeCommand;
use sentinel_testkit::synthetic_pe::synthetic_pe;
use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use protocol_peer::SENTINEL;
const VT_KEY: &str = "a11ce5ec0a11ce5ec0a11ce5ec0a11ce5ec0a11ce5ec0a11ce5ec0a11ce5ec0a";
const VT_REFUSED_KEY: &str = "b0b5ec12b0b5ec12b0b5ec12b0b5ec12b0b5ec12b0b5ec12b0b5ec12b0b5ec12";
const JWT_SECRET: &str = "jwt-secret-3f9a1c7e5b2d4f6a8c0e2b4d6f8a0c2e";
const FORGERY_SECRET: &str = "forgery-secret-77c1e3a5b7d9f1a3c5e7b9d1f3a5c7e9";
const MADE_UP_TOKEN: &str = "snt_MadeUpTokenValueThatWasNeverIssued0123456789abc";
const STORE_KEY: &str = "5709e0ae5709e0ae5709e0ae5709e0ae5709e0ae5709e0ae5709e0ae5709e0ae";
/// The addresses of `connection_record`, the connections the session's agent posts.
const POSTED_ADDRESSES: [&str; 2] = ["10.0.0.5", "10.0.0.9"];
/// Where the protocol client connects from (`protocol_peer::connect_from(2, …)`).
const PROTOCOL_CLIENT: &str = "127.0.0.2";

/// Everything a client or an operator saw, to be searched afterwards: what it was, its bytes,
/// and whether clear addresses may be in it (an answer to a holder of `network:pii`).
#[derive(Default)]
struct Seen(Vec<(String, Vec<u8>, bool)>);

impl Seen {
    fn answer(&mut self, what: String, answer: &HttpAnswer, sees_addresses: bool) {
        let mut text = format!("{} {}\n", answer.status, answer.body);
        for (name, value) in &answer.headers {
            text.push_str(&format!("{name}: {}\n", String::from_utf8_lossy(value.as_bytes())));
        }
        self.0.push((what, text.into_bytes(), sees_addresses));
    }

    fn text(&mut self, what: impl Into<String>, text: impl Into<Vec<u8>>) {
        self.0.push((what.into(), text.into(), false));
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|window| window == needle.as_bytes())
}

/// Every regular file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else if path.is_file() {
                files.push(path);
            }
        }
    }
    files
}

/// `sentinel ARGS…` run to completion: (success, stdout, stderr).
fn run(args: &[&str], data_dir: &Path) -> (bool, String, String) {
    let output = Command::new(SENTINEL)
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .env("RUST_LOG", "debug")
        .env("SENTINEL_JWT_HS256_SECRET", JWT_SECRET)
        .env("SENTINEL_STORE_KEY", STORE_KEY)
        .output()
        .unwrap();
    let text = |bytes: Vec<u8>| String::from_utf8_lossy(&bytes).into_owned();
    (output.status.success(), text(output.stdout), text(output.stderr))
}

fn jwt(secret: &str, scopes: &[&str]) -> String {
    let exp = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 600;
    let claims = json!({"sub": "secrets-test", "exp": exp, "scope": scopes.join(" ")});
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()).unwrap(),
    )
    .unwrap()
}

/// Every operation of the running listener's OpenAPI document, as (method, concrete path).
async fn operations(http: SocketAddr, seen: &mut Seen) -> Vec<(String, String)> {
    let answer = ApiClient::new(http, None).send("GET", "/api/v1/openapi.json", None).await;
    assert_eq!(answer.status, 200);
    seen.answer("GET /api/v1/openapi.json".into(), &answer, false);
    let document = answer.json();
    let mut operations = Vec::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            let concrete: Vec<&str> =
                path.split('/').map(|part| if part.starts_with('{') { "1" } else { part }).collect();
            operations.push((method.to_ascii_uppercase(), concrete.join("/")));
        }
    }
    operations
}

/// A body each route can take (or refuse as malformed, which is part of the session too).
fn body_for(path: &str) -> Option<Vec<u8>> {
    let at = SystemTime::now();
    let body = match path {
        "/api/v1/ingest" => snapshot(
            "secrets-host",
            at,
            vec![connection_record("secrets-host", "curl", 443, 40_001, 100, 200, at)],
        ),
        "/api/v1/analyze" => json!({"connections": [connection_record("h", "curl", 443, 40_002, 1, 2, at)]}),
        _ => json!({}),
    };
    Some(serde_json::to_vec(&body).unwrap())
}

#[tokio::test]
async fn no_secret_reaches_a_log_a_file_an_answer_or_an_output() {
    let fake = FakeVt::start().await;
    fake.state.add_key(VT_KEY);
    let sample = synthetic_pe(4096, 7);
    let sha256 = sha256_hex(&sample);
    fake.state.add_report(&sha256, 20, 70);

    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let log_path = dir.path().join("serve.log");
    let served = ServeCommand::new(SENTINEL, &data_dir)
        .config("[network]\ncollect = false\n[server]\nmax_connections_per_client = 1\n")
        .args(["--vt-base-url", &fake.base_url])
        .env("SENTINEL_JWT_HS256_SECRET", JWT_SECRET)
        .env("SENTINEL_STORE_KEY", STORE_KEY)
        .log_to(&log_path)
        .start();
    let admin = served.admin_token();
    let mut seen = Seen::default();

    // Tokens made, listed and revoked by the command line while the server runs.
    let (ok, narrow, _) = run(&["token", "create", "--name", "reader", "--scope", "network:read"], &data_dir);
    assert!(ok);
    let narrow = narrow.trim().to_owned();
    let (ok, revoked, _) = run(&["token", "create", "--name", "gone", "--scope", "admin"], &data_dir);
    assert!(ok);
    let revoked = revoked.trim().to_owned();
    let (ok, listed, errors) = run(&["token", "list", "--json"], &data_dir);
    assert!(ok, "{errors}");
    seen.text("token list", format!("{listed}{errors}"));
    assert_eq!(listed.lines().count(), 3, "admin, reader and gone: {listed}");
    let (ok, out, errors) = run(&["token", "revoke", "gone"], &data_dir);
    assert!(ok, "{errors}");
    seen.text("token revoke", format!("{out}{errors}"));
    let (ok, out, errors) = run(&["token", "revoke", "never-made"], &data_dir);
    assert!(!ok, "revoking an unknown token fails");
    seen.text("token revoke unknown", format!("{out}{errors}"));

    let signed = jwt(JWT_SECRET, &["admin"]);
    let forged = jwt(FORGERY_SECRET, &["admin"]);
    let credentials: BTreeMap<&str, Option<&str>> = BTreeMap::from([
        ("none", None),
        ("admin", Some(admin.as_str())),
        ("narrow", Some(narrow.as_str())),
        ("revoked", Some(revoked.as_str())),
        ("made-up", Some(MADE_UP_TOKEN)),
        ("jwt", Some(signed.as_str())),
        ("forged jwt", Some(forged.as_str())),
    ]);

    // Every route with every credential, the refusals included.
    let mut statuses = BTreeMap::new();
    for (method, path) in operations(served.http, &mut seen).await {
        for (name, token) in &credentials {
            let client = ApiClient::new(served.http, token.map(str::to_owned));
            let body = (method != "GET").then(|| body_for(&path)).flatten();
            let answer = client.send(&method, &path, body.as_deref()).await;
            *statuses.entry(answer.status).or_insert(0) += 1;
            // Admin tokens and the admin JWT hold `network:pii`.
            let sees_addresses = matches!(*name, "admin" | "jwt");
            seen.answer(format!("{method} {path} as {name}"), &answer, sees_addresses);
        }
    }
    for status in [200, 202, 400, 401, 403] {
        assert!(statuses.contains_key(&status), "no {status} in the session: {statuses:?}");
    }

    // The WebSocket, with a token in its subprotocol, and with a made-up one.
    for token in [admin.as_str(), MADE_UP_TOKEN] {
        let mut request = format!("ws://{}/ws/realtime", served.http).into_client_request().unwrap();
        request.headers_mut().insert("sec-websocket-protocol", format!("bearer, {token}").parse().unwrap());
        match tokio_tungstenite::connect_async(request).await {
            Ok((_, response)) => seen.text("websocket", format!("{response:?}")),
            Err(error) => seen.text("websocket refused", format!("{error:?}")),
        }
    }

    // The protocol: VirusTotal with an accepted key and a refused one (on a file of its own:
    // the first answer is kept and would serve it), and static + VirusTotal.
    let mut client = Client::from_io(protocol_peer::connect_from(2, served.tcp).await.unwrap());
    let unknown_sha256 = sha256_hex(b"a file nobody reported");
    for (command, executable, sha256, key) in [
        (sentinel_protocol::Command::VtAnalyse, Bytes::new(), &sha256, VT_KEY),
        (sentinel_protocol::Command::VtAnalyse, Bytes::new(), &unknown_sha256, VT_REFUSED_KEY),
        (sentinel_protocol::Command::StaticAnalyseWithVt, Bytes::from(sample.clone()), &sha256, VT_KEY),
    ] {
        let fields = vec![executable, Bytes::from(sha256.clone()), Bytes::from_static(key.as_bytes())];
        let response = client.request(&Request::new(command, fields)).await.unwrap();
        seen.text(format!("protocol {command:?}"), format!("{response:?}"));
    }
    // Over HTTP: the accepted key in the header of `POST /api/v1/files`, and the refused one.
    let authorization = format!("Bearer {admin}");
    for (key, expected) in [(VT_KEY, 200), (VT_REFUSED_KEY, 400)] {
        let headers = [
            ("authorization", authorization.as_str()),
            ("content-type", "application/octet-stream"),
            ("x-virustotal-key", key),
        ];
        let path = match expected {
            200 => "/api/v1/files?analyses=static,vt".to_owned(),
            _ => {
                format!("/api/v1/files?analyses=vt&sha256={}", sha256_hex(b"a file nobody else asked about"))
            }
        };
        let body: &[u8] = if expected == 200 { &sample } else { b"" };
        let answer = send_with_headers(served.http, "POST", &path, &headers, Some(body)).await.unwrap();
        assert_eq!(answer.status, expected, "{}", answer.body);
        seen.answer(format!("POST {path}"), &answer, false);
    }
    // A second connection from the same client is over its limit: refused, and logged.
    let mut over_limit = protocol_peer::connect_from(2, served.tcp).await.unwrap();
    assert!(protocol_peer::closed_silently(&mut over_limit, Duration::from_secs(5)).await);
    let keys: Vec<String> = fake.state.received().iter().map(|request| request.api_key.clone()).collect();
    assert!(keys.iter().any(|key| key == VT_REFUSED_KEY), "the refused key reached VirusTotal: {keys:?}");
    seen.text("status", served.status().await.to_string());

    // The operator's key id of a VirusTotal key, read from stdin.
    let mut key_id = Command::new(SENTINEL)
        .args(["vt-results", "key-id", "--data-dir"])
        .arg(&data_dir)
        .env("SENTINEL_STORE_KEY", STORE_KEY)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut key_id.stdin.take().unwrap(), format!("{VT_KEY}\n").as_bytes()).unwrap();
    let output = key_id.wait_with_output().unwrap();
    assert!(output.status.success());
    seen.text("vt-results key-id", [output.stdout, output.stderr].concat());

    served.signal("-TERM");
    let mut served = served;
    assert!(served.wait_exit(Duration::from_secs(30)).success());
    seen.text("the server's log", std::fs::read(&log_path).unwrap());
    for file in files_under(&data_dir) {
        let bytes = std::fs::read(&file).unwrap();
        if file.file_name().is_some_and(|name| name == "admin.token") {
            assert_eq!(String::from_utf8_lossy(&bytes).trim(), admin, "admin.token holds its token");
            continue;
        }
        seen.text(file.display().to_string(), bytes);
    }
    assert!(seen.0.len() > 100, "the session was searched whole: {} places", seen.0.len());

    let secrets = [
        ("the VirusTotal key", VT_KEY),
        ("the refused VirusTotal key", VT_REFUSED_KEY),
        ("the JWT secret", JWT_SECRET),
        ("the forgery secret", FORGERY_SECRET),
        ("the signed JWT", signed.as_str()),
        ("the forged JWT", forged.as_str()),
        ("the admin token", admin.as_str()),
        ("the narrow token", narrow.as_str()),
        ("the revoked token", revoked.as_str()),
        ("the made-up token", MADE_UP_TOKEN),
        ("the store key", STORE_KEY),
    ];
    for (what, bytes, sees_addresses) in &seen.0 {
        for (secret, value) in secrets {
            assert!(!contains(bytes, value), "{secret} is in {what}");
        }
        for address in POSTED_ADDRESSES.iter().filter(|_| !sees_addresses) {
            assert!(!contains(bytes, address), "the posted address {address} is in {what}");
        }
        assert!(!contains(bytes, PROTOCOL_CLIENT), "the protocol client's address is in {what}");
    }
}
