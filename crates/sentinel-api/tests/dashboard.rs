//! The dashboard's page and files on a real listener that asks for tokens: open to anyone
//! (the page holds no data), each with its content type, the security headers and an entity
//! tag the browser revalidates with; an unknown file is a JSON 404. And `/api/v1/whoami`, which
//! the page signs in with: any valid token, whatever its scopes, learns its own name and scopes.

use std::net::SocketAddr;
use std::sync::Arc;

use reqwest::StatusCode;
use reqwest::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, ETAG, IF_NONE_MATCH, X_CONTENT_TYPE_OPTIONS,
    X_FRAME_OPTIONS,
};
use sentinel_api::sentinel_auth::{AuthSettings, Authenticator, Scope, Scopes, issue_api_token};
use sentinel_api::{Access, ApiBuilder, HttpListener, HttpSettings};
use sentinel_store::{Store, StoreSettings};
use serde_json::{Value, json};

/// A listener that authenticates with the tokens of a new store; returns its address, the
/// store's directory (kept while it runs) and a token holding only `network:read`.
async fn start() -> (SocketAddr, tempfile::TempDir, String) {
    let directory = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(directory.path(), StoreSettings::default()).unwrap());
    let (secret, _) = issue_api_token(&store, "reader", Scopes::from(Scope::NetworkRead), None).unwrap();
    let authenticator = Arc::new(Authenticator::new(store, None));
    let access = Access::authenticated(authenticator, &AuthSettings::default());
    let api = ApiBuilder::new(HttpSettings::default(), access).build();
    let listener = HttpListener::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let address = listener.local_addr();
    tokio::spawn(async move { listener.serve(&api, std::future::pending()).await.unwrap() });
    (address, directory, secret.expose().to_owned())
}

fn header(response: &reqwest::Response, name: reqwest::header::HeaderName) -> &str {
    response.headers().get(&name).and_then(|value| value.to_str().ok()).unwrap_or_default()
}

#[tokio::test]
async fn the_page_and_its_files_are_open_typed_and_guarded_by_headers() {
    let (address, _store, _) = start().await;
    let client = reqwest::Client::new();
    for (path, content_type, marker) in [
        ("/", "text/html; charset=utf-8", "<title>Sentinel</title>"),
        ("/dashboard/dashboard.css", "text/css; charset=utf-8", ":root"),
        ("/dashboard/app.js", "text/javascript; charset=utf-8", "import"),
        ("/dashboard/live.js", "text/javascript; charset=utf-8", "/ws/realtime"),
    ] {
        // No Authorization header: the page is served to anyone.
        let response = client.get(format!("http://{address}{path}")).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        assert_eq!(header(&response, CONTENT_TYPE), content_type, "{path}");
        assert_eq!(header(&response, X_CONTENT_TYPE_OPTIONS), "nosniff", "{path}");
        assert_eq!(header(&response, X_FRAME_OPTIONS), "DENY", "{path}");
        assert_eq!(header(&response, CACHE_CONTROL), "no-cache", "{path}");
        let policy = header(&response, CONTENT_SECURITY_POLICY).to_owned();
        for directive in
            ["default-src 'none'", "script-src 'self'", "connect-src 'self'", "frame-ancestors 'none'"]
        {
            assert!(policy.contains(directive), "{path}: {policy}");
        }
        assert!(!policy.contains("unsafe-inline") && !policy.contains("unsafe-eval"), "{policy}");
        let etag = header(&response, ETAG).to_owned();
        assert!(etag.len() == 18 && etag.starts_with('"') && etag.ends_with('"'), "{path}: {etag}");
        assert!(response.text().await.unwrap().contains(marker), "{path}");

        // The browser's copy is current: 304 without a body, the same headers.
        let again =
            client.get(format!("http://{address}{path}")).header(IF_NONE_MATCH, &etag).send().await.unwrap();
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED, "{path}");
        assert_eq!(header(&again, ETAG), etag);
        assert!(header(&again, CONTENT_SECURITY_POLICY).contains("default-src 'none'"));
        assert!(again.bytes().await.unwrap().is_empty());
        let stale = client
            .get(format!("http://{address}{path}"))
            .header(IF_NONE_MATCH, "\"0\"")
            .send()
            .await
            .unwrap();
        assert_eq!(stale.status(), StatusCode::OK, "{path}");
    }
    // The page has no inline script or style for the policy to refuse.
    let page = client.get(format!("http://{address}/")).send().await.unwrap().text().await.unwrap();
    assert!(!page.contains("<script>") && !page.contains("style="), "{page}");

    let unknown = client.get(format!("http://{address}/dashboard/secrets.js")).send().await.unwrap();
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    assert_eq!(header(&unknown, CONTENT_TYPE), "application/json");
    let body: Value = unknown.json().await.unwrap();
    assert_eq!(body, json!({"error": "no dashboard file \"secrets.js\""}));
    // Only GET: the page's routes change nothing (a POST without a token is refused first).
    let post = client.post(format!("http://{address}/")).send().await.unwrap();
    assert_eq!(post.status(), StatusCode::UNAUTHORIZED);
    // Not part of the API's document.
    let document: Value = client
        .get(format!("http://{address}/api/v1/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let paths = document["paths"].as_object().unwrap();
    assert!(paths.contains_key("/api/v1/whoami") && !paths.contains_key("/"), "{paths:?}");
}

#[tokio::test]
async fn whoami_answers_any_valid_token_with_its_scopes() {
    let (address, _store, token) = start().await;
    let client = reqwest::Client::new();
    let url = format!("http://{address}/api/v1/whoami");
    let answer = client.get(&url).bearer_auth(&token).send().await.unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    let identity: Value = answer.json().await.unwrap();
    assert!(identity["principal"].as_str().unwrap().starts_with("token:reader#"), "{identity}");
    assert_eq!(identity["scopes"], json!(["network:read"]));

    let anonymous = client.get(&url).send().await.unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    assert!(header(&anonymous, reqwest::header::WWW_AUTHENTICATE).starts_with("Bearer"));
    let forged = client.get(&url).bearer_auth("snt_forged").send().await.unwrap();
    assert_eq!(forged.status(), StatusCode::UNAUTHORIZED);
    let body: Value = forged.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("unknown API token"), "{body}");
}
