//! Authentication of `sentinel serve`'s HTTP API, with the real binary: the route × scope matrix
//! read from the running listener's own OpenAPI document (built from the same values as its
//! router), tokens made, listed and revoked by `sentinel token` in other processes while the
//! server runs, JWTs signed here, the WebSocket's token and Origin, the Host and form checks,
//! the first admin token, and the refusal to run without authentication off loopback.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use sentinel_testkit::http_client::{self, ApiClient};
use sentinel_testkit::serve_process::{ServeCommand, ServeProcess};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const SENTINEL: &str = env!("CARGO_BIN_EXE_sentinel");

/// No collector: this host's traffic is of no use here.
const QUIET: &str = "[network]\ncollect = false\n";

fn serve(data_dir: &Path, config: &str) -> ServeProcess {
    ServeCommand::new(SENTINEL, data_dir).config(config).start()
}

/// `sentinel token ARGS… --data-dir DATA_DIR`: its stdout, or a panic with its stderr.
fn token_command(data_dir: &Path, args: &[&str]) -> String {
    let output = Command::new(SENTINEL)
        .arg("token")
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run sentinel token");
    assert!(output.status.success(), "sentinel token {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

/// A new token named `name` with `scopes` (comma-separated), made by the CLI.
fn create_token(data_dir: &Path, name: &str, scopes: &str) -> String {
    let printed = token_command(data_dir, &["create", "--name", name, "--scope", scopes]);
    let token = printed.trim().to_owned();
    assert!(token.starts_with("snt_") && !token.contains(char::is_whitespace), "{printed:?}");
    token
}

/// The one scope the document says an operation needs; `None` for an open one, `Some("")` for
/// one that takes any valid token (`bearer` with no scope: `/api/v1/whoami`).
fn operation_scope(operation: &Value) -> Option<String> {
    let requirements = operation["security"].as_array()?;
    // `/metrics` lists the empty requirement too (open on loopback): it is open here.
    if requirements.iter().any(|requirement| requirement.as_object().is_some_and(|object| object.is_empty()))
    {
        return None;
    }
    let [requirement] = requirements.as_slice() else { panic!("not one requirement: {operation}") };
    if requirement["bearer"].as_array().unwrap().is_empty() {
        return Some(String::new());
    }
    let [scope] = requirement["bearer"].as_array().unwrap().as_slice() else {
        panic!("not one scope: {operation}")
    };
    Some(scope.as_str().unwrap().to_owned())
}

/// Every operation of the listener's document: (method, concrete path, scope).
async fn operations(http: SocketAddr) -> Vec<(String, String, Option<String>)> {
    let answer = http_client::send(http, "GET", "/api/v1/openapi.json", None).await;
    assert_eq!(answer.status, 200, "the document is open: {}", answer.body);
    let document = answer.json();
    assert_eq!(document["components"]["securitySchemes"]["bearer"]["scheme"], "bearer", "{document:#}");
    let mut operations = Vec::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let concrete: Vec<&str> =
                path.split('/').map(|part| if part.starts_with('{') { "1" } else { part }).collect();
            operations.push((method.to_ascii_uppercase(), concrete.join("/"), operation_scope(operation)));
        }
    }
    operations
}

fn www_authenticate(answer: &http_client::HttpAnswer) -> String {
    answer
        .headers
        .get("www-authenticate")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn every_route_needs_its_scope_and_nothing_else() {
    let data_dir = tempfile::tempdir().unwrap();
    let served = serve(data_dir.path(), QUIET);
    let scopes = [
        "malware:scan",
        "malware:read",
        "network:read",
        "network:analyze",
        "network:ingest",
        "network:train",
        "network:feedback",
        "metrics:read",
        "alerts:read",
        "alerts:write",
        "admin",
    ];
    let tokens: BTreeMap<&str, String> = scopes
        .iter()
        .map(|scope| {
            (*scope, create_token(data_dir.path(), &format!("matrix-{}", scope.replace(':', "-")), scope))
        })
        .collect();
    let operations = operations(served.http).await;
    assert_eq!(operations.len(), 27, "{operations:?}");
    let mut scoped = 0;
    for (method, path, scope) in &operations {
        let anonymous = http_client::send(served.http, method, path, None).await;
        let Some(scope) = scope else {
            assert!(
                ![401, 403].contains(&anonymous.status),
                "{method} {path} is open: {} {}",
                anonymous.status,
                anonymous.body
            );
            continue;
        };
        if scope.is_empty() {
            // Any valid token, whatever its scopes; none is refused.
            assert_eq!(anonymous.status, 401, "{method} {path} without a token: {}", anonymous.body);
            for holder in scopes {
                let allowed =
                    ApiClient::new(served.http, Some(tokens[holder].clone())).send(method, path, None).await;
                assert_eq!(allowed.status, 200, "{method} {path} with {holder}: {}", allowed.body);
            }
            continue;
        }
        scoped += 1;
        assert!(scopes.contains(&scope.as_str()), "{method} {path}: unknown scope {scope}");
        assert_eq!(anonymous.status, 401, "{method} {path} without a token: {}", anonymous.body);
        assert_eq!(www_authenticate(&anonymous), "Bearer realm=\"sentinel\"", "{method} {path}");
        assert!(anonymous.json()["error"].as_str().unwrap().contains("bearer token is required"));

        let other = scopes.iter().find(|other| **other != scope && **other != "admin").unwrap();
        let refused = ApiClient::new(served.http, Some(tokens[other].clone())).send(method, path, None).await;
        assert_eq!(refused.status, 403, "{method} {path} with {other}: {}", refused.body);
        assert!(
            www_authenticate(&refused).contains(&format!("error=\"insufficient_scope\", scope=\"{scope}\""))
        );
        assert!(refused.json()["error"].as_str().unwrap().contains(scope.as_str()), "{}", refused.body);

        for holder in [scope.as_str(), "admin"] {
            let allowed =
                ApiClient::new(served.http, Some(tokens[holder].clone())).send(method, path, None).await;
            assert!(
                ![401, 403].contains(&allowed.status),
                "{method} {path} with {holder}: {} {}",
                allowed.status,
                allowed.body
            );
        }
    }
    assert_eq!(scoped, 22, "{operations:?}");

    // A bad token is told apart from none, and an unknown route is no way around a token.
    let forged =
        ApiClient::new(served.http, Some("snt_forged".to_owned())).send("GET", "/status", None).await;
    assert_eq!(forged.status, 401);
    assert!(www_authenticate(&forged).contains("error=\"invalid_token\""), "{}", www_authenticate(&forged));
    assert_eq!(http_client::send(served.http, "GET", "/api/v1/nowhere", None).await.status, 401);
}

#[tokio::test]
async fn expired_and_revoked_tokens_are_refused_at_once() {
    let data_dir = tempfile::tempdir().unwrap();
    let served = serve(data_dir.path(), QUIET);
    let short = token_command(
        data_dir.path(),
        &["create", "--name", "short", "--scope", "malware:read", "--expires", "1s"],
    );
    let reader = create_token(data_dir.path(), "reader", "malware:read,network:read");
    let client = ApiClient::new(served.http, Some(reader.clone()));
    assert_eq!(client.send("GET", "/status", None).await.status, 200);
    assert_eq!(client.send("GET", "/api/v1/models/status", None).await.status, 200);

    tokio::time::sleep(Duration::from_millis(2100)).await;
    let expired =
        ApiClient::new(served.http, Some(short.trim().to_owned())).send("GET", "/status", None).await;
    assert_eq!(expired.status, 401, "{}", expired.body);
    assert!(expired.body.contains("expired"), "{}", expired.body);

    // Revoked by another process while the server runs: refused from the next request on.
    token_command(data_dir.path(), &["revoke", "reader"]);
    let revoked = client.send("GET", "/status", None).await;
    assert_eq!(revoked.status, 401, "{}", revoked.body);
    assert!(www_authenticate(&revoked).contains("revoked"), "{}", www_authenticate(&revoked));

    let listed: Vec<Value> = token_command(data_dir.path(), &["list", "--json"])
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let reader_row = listed.iter().find(|row| row["name"] == "reader").unwrap();
    assert!(reader_row["revoked_at"].is_i64() && reader_row["last_used"].is_i64(), "{reader_row}");
    assert_eq!(reader_row["scopes"], json!(["malware:read", "network:read"]));
    assert!(listed.iter().any(|row| row["name"] == "admin"), "{listed:?}");
    let table = token_command(data_dir.path(), &["list"]);
    assert!(table.contains("reader") && table.contains("(expired)"), "{table}");
    assert!(!table.contains(&reader) && !table.contains("snt_"), "a token in the listing: {table}");
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

#[tokio::test]
async fn jwts_signed_with_configured_keys_are_checked_for_expiry_audience_and_issuer() {
    let data_dir = tempfile::tempdir().unwrap();
    let secret = "a shared secret of more than thirty-two bytes";
    let secret_file = data_dir.path().join("jwt.secret");
    std::fs::write(&secret_file, format!("{secret}\n")).unwrap();
    let ed25519 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let public_key = data_dir.path().join("idp-ed25519.pem");
    std::fs::write(&public_key, ed25519.public_key_pem()).unwrap();
    let config = format!(
        "{QUIET}[auth.jwt]\nhs256_secret_file = {secret_file:?}\neddsa_public_keys = [{public_key:?}]\n\
         audience = \"sentinel\"\nissuer = \"https://idp.example\"\nscope_claim = \"scp\"\n"
    );
    let served = serve(data_dir.path(), &config);
    let hs256 = EncodingKey::from_secret(secret.as_bytes()).unwrap();
    let eddsa = EncodingKey::from_ed_pem(ed25519.serialize_pem().as_bytes()).unwrap();
    let claims = json!({
        "sub": "console", "aud": "sentinel", "iss": "https://idp.example",
        "exp": unix_now() + 600, "scp": ["network:read", "openid"],
    });
    let with = |changes: Value| {
        let mut changed = claims.clone();
        for (name, value) in changes.as_object().unwrap() {
            match value {
                Value::Null => changed.as_object_mut().unwrap().remove(name),
                value => changed.as_object_mut().unwrap().insert(name.clone(), value.clone()),
            };
        }
        changed
    };
    let sign = |key: &EncodingKey, algorithm: Algorithm, claims: &Value| {
        jsonwebtoken::encode(&Header::new(algorithm), claims, key).unwrap()
    };
    let http = served.http;
    let call = |token: String| async move {
        ApiClient::new(http, Some(token)).send("GET", "/api/v1/models/status", None).await
    };
    for (key, algorithm) in [(&hs256, Algorithm::HS256), (&eddsa, Algorithm::EdDSA)] {
        let accepted = call(sign(key, algorithm, &claims)).await;
        assert_eq!(accepted.status, 200, "{algorithm:?}: {}", accepted.body);
        let cases = [
            (with(json!({"aud": "another-service"})), 401, "aud"),
            (with(json!({"iss": "https://evil.example"})), 401, "iss"),
            (with(json!({"exp": null})), 401, "exp"),
            (with(json!({"exp": unix_now() - 120})), 401, "expired"),
            (with(json!({"scp": "network:ingest"})), 403, "network:read"),
        ];
        for (claims, status, reason) in cases {
            let refused = call(sign(key, algorithm, &claims)).await;
            assert_eq!(refused.status, status, "{algorithm:?} {claims}: {}", refused.body);
            assert!(refused.body.contains(reason), "{algorithm:?} {claims}: {}", refused.body);
        }
    }
    // A token signed with another secret, or an HS256 token signed with the public key.
    let forged = sign(
        &EncodingKey::from_secret(b"another secret of more than thirty-two bytes").unwrap(),
        Algorithm::HS256,
        &claims,
    );
    assert_eq!(call(forged).await.status, 401);
    let confused = sign(
        &EncodingKey::from_secret(ed25519.public_key_pem().as_bytes()).unwrap(),
        Algorithm::HS256,
        &claims,
    );
    assert_eq!(call(confused).await.status, 401);
}

#[tokio::test]
async fn the_websocket_takes_its_token_as_a_subprotocol_and_refuses_foreign_origins() {
    let data_dir = tempfile::tempdir().unwrap();
    let served = serve(data_dir.path(), &format!("{QUIET}[network.api]\nmax_websocket_subscribers = 1\n"));
    let reader = create_token(data_dir.path(), "dashboard", "network:read");
    let url = format!("ws://{}/ws/realtime", served.http);
    let upgrade = |headers: &[(&'static str, String)]| {
        let mut request = url.as_str().into_client_request().unwrap();
        for (name, value) in headers {
            request.headers_mut().insert(*name, value.parse().unwrap());
        }
        tokio_tungstenite::connect_async(request)
    };
    let refused_with = |result: Result<_, tokio_tungstenite::tungstenite::Error>| match result {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(error) => panic!("not an HTTP refusal: {error}"),
        Ok(_) => panic!("the upgrade was accepted"),
    };
    assert_eq!(refused_with(upgrade(&[]).await), 401);
    let foreign = [
        ("sec-websocket-protocol", format!("bearer, {reader}")),
        ("origin", "http://evil.example".to_owned()),
    ];
    assert_eq!(refused_with(upgrade(&foreign).await), 403);

    // A page of the server's own origin, with the token as a subprotocol: the server answers
    // with the protocol `bearer`, never the token.
    let own = [
        ("sec-websocket-protocol", format!("bearer, {reader}")),
        ("origin", format!("http://{}", served.http)),
    ];
    let (socket, response) = upgrade(&own).await.expect("the upgrade");
    assert_eq!(response.headers()["sec-websocket-protocol"], "bearer");
    // One subscriber at a time here: the next is told to come back later.
    let second = [("authorization", format!("Bearer {reader}"))];
    assert_eq!(refused_with(upgrade(&second).await), 503);
    drop(socket);
}

/// One HTTP/1.1 exchange over a raw socket, for headers no HTTP client would send: the status.
fn raw_status(address: SocketAddr, head: &str) -> u16 {
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream.write_all(head.as_bytes()).unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response
        .split(' ')
        .nth(1)
        .and_then(|status| status.parse().ok())
        .unwrap_or_else(|| panic!("{response:?}"))
}

#[tokio::test]
async fn foreign_hosts_and_cross_site_form_bodies_are_refused() {
    let data_dir = tempfile::tempdir().unwrap();
    let served = serve(data_dir.path(), QUIET);
    let admin = served.api();
    for (host, expected) in
        [("evil.example", 421), ("evil.example:9501", 421), ("localhost:1", 200), ("127.0.0.1", 200)]
    {
        let head = format!("GET /healthz HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        assert_eq!(raw_status(served.http, &head), expected, "Host {host}");
    }
    for content_type in ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"]
    {
        let headers =
            [("authorization", admin.authorization().unwrap()), ("content-type", content_type.to_owned())];
        let headers: Vec<(&str, &str)> =
            headers.iter().map(|(name, value)| (*name, value.as_str())).collect();
        let answer =
            http_client::send_with_headers(served.http, "POST", "/api/v1/train", &headers, Some(b"{}"))
                .await
                .unwrap();
        assert_eq!(answer.status, 415, "{content_type}: {}", answer.body);
        assert!(answer.json()["error"].as_str().unwrap().contains("application/json"), "{}", answer.body);
    }
    let (status, body) = admin.post_json("/api/v1/models/rollback", &json!({})).await;
    assert!(![401, 403, 415].contains(&status), "JSON is taken: {status} {body}");
}

#[tokio::test]
async fn the_first_start_writes_the_admin_token_to_a_private_file_and_never_logs_it() {
    let data_dir = tempfile::tempdir().unwrap();
    let log = data_dir.path().join("serve.log");
    let mut served = ServeCommand::new(SENTINEL, data_dir.path()).config(QUIET).log_to(&log).start();
    let token_file = data_dir.path().join("admin.token");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777, 0o600);
    }
    let admin = served.api();
    let token = admin.token.clone().unwrap();
    assert_eq!(admin.send("POST", "/admin/reload", None).await.status, 200);
    let refused = ApiClient::new(served.http, Some(format!("{token}x"))).send("GET", "/status", None).await;
    assert_eq!(refused.status, 401);
    served.signal("-TERM");
    assert!(served.wait_exit(Duration::from_secs(15)).success());

    // A second start keeps the token: the file is written once.
    let again = ServeCommand::new(SENTINEL, data_dir.path())
        .config(QUIET)
        .log_to(data_dir.path().join("again.log"))
        .start();
    assert_eq!(again.admin_token(), token);
    assert_eq!(again.api().send("GET", "/status", None).await.status, 200);
    drop(again);

    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains(&token_file.display().to_string()), "the path is logged:\n{text}");
    let secret_part = token.trim_start_matches("snt_");
    for logged in [text, std::fs::read_to_string(data_dir.path().join("again.log")).unwrap()] {
        assert!(!logged.contains(secret_part), "the token is in the log");
    }
}

#[test]
fn serve_refuses_to_run_without_authentication_off_loopback() {
    let data_dir = tempfile::tempdir().unwrap();
    let config = data_dir.path().join("sentinel.toml");
    // The protocol port's own rule (an allow-list off loopback) is met, so that what refuses is
    // the authentication rule.
    std::fs::write(
        &config,
        format!("{QUIET}[auth]\nenabled = false\n[server]\nallowed_clients = [\"127.0.0.0/8\"]\n"),
    )
    .unwrap();
    let run = |http: &str, tcp: &str| {
        Command::new(SENTINEL)
            .arg("--config")
            .arg(&config)
            .args(["serve", "--http-listen", http, "--tcp-listen", tcp, "--data-dir"])
            .arg(data_dir.path())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .output()
            .unwrap()
    };
    for (http, tcp, listener) in
        [("0.0.0.0:0", "127.0.0.1:0", "HTTP"), ("127.0.0.1:0", "0.0.0.0:0", "protocol")]
    {
        let output = run(http, tcp);
        assert!(!output.status.success(), "{http} {tcp}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("[auth] enabled = false is refused")
                && stderr.contains(&format!("the {listener} listener")),
            "{stderr}"
        );
    }
    assert!(!data_dir.path().join("admin.token").exists());
}

#[tokio::test]
async fn with_authentication_off_on_loopback_no_token_is_asked_for() {
    let data_dir = tempfile::tempdir().unwrap();
    let served = serve(data_dir.path(), &format!("{QUIET}[auth]\nenabled = false\n"));
    let answer = http_client::send(served.http, "GET", "/status", None).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(!data_dir.path().join("admin.token").exists());
    // No token is needed, but a file upload as a form still needs an Authorization header: a
    // cross-site form (which cannot add one) must not reach the analysis.
    let form = b"--b\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nMZ\r\n--b--\r\n";
    let content_type = ("content-type", "multipart/form-data; boundary=b");
    let answer =
        http_client::send_with_headers(served.http, "POST", "/api/v1/files", &[content_type], Some(form))
            .await
            .unwrap();
    assert_eq!(answer.status, 415, "{}", answer.body);
    let headers = [content_type, ("authorization", "Bearer anything")];
    let answer = http_client::send_with_headers(served.http, "POST", "/api/v1/files", &headers, Some(form))
        .await
        .unwrap();
    assert_eq!(answer.status, 422, "the form is taken, and the file is not a PE: {}", answer.body);
}
