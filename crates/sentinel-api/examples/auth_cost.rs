//! The cost of authentication per HTTP request: `cargo run --release -p sentinel-api --example
//! auth_cost [-- REQUESTS]`.
//!
//! A listener on 127.0.0.1 serves one route that needs a scope, with authentication on (API
//! tokens in a real store in a temporary directory, JWTs with an HS256 secret and an Ed25519
//! key), and the open `/healthz` as the peer in the same run. Over one keep-alive connection,
//! REQUESTS (default 5,000) requests of each kind are sent one at a time after 200 to warm up;
//! the table gives the mean time per request and its excess over the open route. The check
//! alone (no HTTP) is timed too: `Authenticator::authenticate_blocking` (the store lookup; the
//! JWT signature) and `Authenticator::authenticate` (the same, from async code: the API token's
//! lookup goes through `spawn_blocking`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use sentinel_api::sentinel_auth::{
    AuthSettings, Authenticator, JwtSettings, JwtVerifier, Scope, issue_api_token,
};
use sentinel_api::{Access, ApiBuilder, HttpListener, HttpSettings, ServiceRoutes};
use sentinel_store::{Store, StoreSettings};
use utoipa_axum::routes;

/// The guarded route: it answers at once, so what is measured is the stack and the check.
#[utoipa::path(get, path = "/guarded", security(("bearer" = ["network:read"])), responses((status = 200)))]
async fn guarded() -> &'static str {
    "ok"
}

const SECRET: &str = "a shared secret of more than thirty-two bytes";

fn mean(elapsed: Duration, count: usize) -> f64 {
    elapsed.as_nanos() as f64 / count as f64
}

async fn time_requests(client: &reqwest::Client, url: &str, token: Option<&str>, count: usize) -> f64 {
    let send = || {
        let mut request = client.get(url);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    for _ in 0..200 {
        assert!(send().await.unwrap().status().is_success());
    }
    let started = Instant::now();
    for _ in 0..count {
        let response = send().await.unwrap();
        assert!(response.status().is_success(), "{url}: {}", response.status());
        let _ = response.bytes().await.unwrap();
    }
    mean(started.elapsed(), count)
}

fn main() {
    let count: usize =
        std::env::args().nth(1).map_or(5_000, |arg| arg.parse().expect("REQUESTS is a number"));
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path(), StoreSettings::default()).unwrap());
    let (token, _) = issue_api_token(&store, "bench", Scope::NetworkRead.into(), None).unwrap();
    let ed25519 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let secret_file = dir.path().join("secret");
    std::fs::write(&secret_file, SECRET).unwrap();
    let public_key = dir.path().join("ed25519.pem");
    std::fs::write(&public_key, ed25519.public_key_pem()).unwrap();
    let jwt_settings = JwtSettings {
        hs256_secret_file: Some(secret_file),
        eddsa_public_keys: vec![public_key],
        audience: Some("sentinel".to_owned()),
        ..JwtSettings::default()
    };
    let jwt = JwtVerifier::from_settings(&jwt_settings, None).unwrap();
    let authenticator = Arc::new(Authenticator::new(Arc::clone(&store), jwt));
    let exp = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 3600;
    let claims = serde_json::json!({"sub": "bench", "aud": "sentinel", "exp": exp, "scope": "network:read"});
    let hs256 = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
    )
    .unwrap();
    let eddsa = jsonwebtoken::encode(
        &Header::new(Algorithm::EdDSA),
        &claims,
        &EncodingKey::from_ed_pem(ed25519.serialize_pem().as_bytes()).unwrap(),
    )
    .unwrap();
    let credentials =
        [("API token", token.expose()), ("JWT HS256", hs256.as_str()), ("JWT EdDSA", eddsa.as_str())];

    println!("| check | mean per call |");
    println!("|---|---:|");
    for (name, credential) in credentials {
        let started = Instant::now();
        for _ in 0..count {
            authenticator.authenticate_blocking(credential).unwrap();
        }
        println!("| {name}, `authenticate_blocking` | {:.1} µs |", mean(started.elapsed(), count) / 1000.0);
    }

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let started = Instant::now();
        for _ in 0..count {
            authenticator.authenticate(token.expose()).await.unwrap();
        }
        println!("| API token, `authenticate` (async) | {:.1} µs |", mean(started.elapsed(), count) / 1000.0);

        let access = Access::authenticated(Arc::clone(&authenticator), &AuthSettings::default());
        let api = ApiBuilder::new(HttpSettings::default(), access)
            .service(ServiceRoutes::new().routes(routes!(guarded)))
            .build();
        let listener = HttpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await.unwrap();
        let address = listener.local_addr();
        tokio::spawn(async move { listener.serve(&api, std::future::pending()).await });
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let open = time_requests(&client, &format!("http://{address}/healthz"), None, count).await;
        println!();
        println!("| request ({count} sequential, keep-alive) | mean | over the open route |");
        println!("|---|---:|---:|");
        println!("| `GET /healthz` (open) | {:.1} µs | — |", open / 1000.0);
        for (name, credential) in credentials {
            let url = format!("http://{address}/guarded");
            let guarded = time_requests(&client, &url, Some(credential), count).await;
            println!(
                "| `GET /guarded`, {name} | {:.1} µs | +{:.1} µs |",
                guarded / 1000.0,
                (guarded - open) / 1000.0
            );
        }
    });
}
