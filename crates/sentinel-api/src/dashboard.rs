//! The operator dashboard: a page of plain HTML, CSS and JavaScript modules (the folder
//! `dashboard/` of this crate) compiled into the binary, served at `/` and `/dashboard/{asset}`
//! of the listener, so that it works offline, from the binary alone, with no build step but
//! cargo's.
//!
//! The page holds no data: it asks for a token and calls the API with it like any other client
//! (`Authorization: Bearer`, the WebSocket's `bearer, TOKEN` subprotocols), so its routes are
//! open and every answer they give is the same for everyone. Each answer carries a strict
//! Content-Security-Policy — the page's own scripts, styles and connections only, no inline
//! script or style, no framing — and an `ETag` of its bytes, computed at compile time, with
//! `Cache-Control: no-cache`: a browser revalidates and gets 304 until the binary changes.
//!
//! The routes are not in the OpenAPI document: they serve a page, not the API it calls.

use axum::Router;
use axum::extract::Path;
use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, ETAG, IF_NONE_MATCH, REFERRER_POLICY,
    X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::error::ApiError;

/// The page's path.
pub(crate) const PAGE_PATH: &str = "/";
/// The route of the page's other files.
pub(crate) const ASSET_PATH: &str = "/dashboard/{asset}";

/// What the page may load and where it may connect: itself only. `'self'` covers the
/// WebSocket of the same host and port (`ws:`/`wss:`) in CSP Level 3 browsers.
const CONTENT_SECURITY_POLICY_VALUE: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// One file of the page.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
    etag: &'static str,
}

/// The FNV-1a hash of `bytes`: enough to tell one build's file from another's, in a `const`.
const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut index = 0;
    while index < bytes.len() {
        hash ^= bytes[index] as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
        index += 1;
    }
    hash
}

/// `"` + 16 lower-case hex digits of `hash` + `"`: an entity tag.
const fn entity_tag(hash: u64) -> [u8; 18] {
    let digits = b"0123456789abcdef";
    let mut tag = [b'"'; 18];
    let mut index = 0;
    while index < 16 {
        tag[1 + index] = digits[((hash >> (60 - 4 * index)) & 0xf) as usize];
        index += 1;
    }
    tag
}

/// An [`Asset`] of the folder `dashboard/`, with its entity tag made at compile time.
macro_rules! asset {
    ($name:literal, $content_type:expr) => {{
        const BYTES: &[u8] = include_bytes!(concat!("../dashboard/", $name));
        const TAG: [u8; 18] = entity_tag(fnv1a(BYTES));
        Asset {
            name: $name,
            content_type: $content_type,
            bytes: BYTES,
            etag: match std::str::from_utf8(&TAG) {
                Ok(tag) => tag,
                Err(_) => panic!("an entity tag is ASCII"),
            },
        }
    }};
}

const JAVASCRIPT: &str = "text/javascript; charset=utf-8";

/// Every file of the page; the first is the page itself.
static ASSETS: [Asset; 10] = [
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("dashboard.css", "text/css; charset=utf-8"),
    asset!("app.js", JAVASCRIPT),
    asset!("api.js", JAVASCRIPT),
    asset!("dom.js", JAVASCRIPT),
    asset!("live.js", JAVASCRIPT),
    asset!("charts.js", JAVASCRIPT),
    asset!("models.js", JAVASCRIPT),
    asset!("alerts.js", JAVASCRIPT),
    asset!("malware.js", JAVASCRIPT),
];

/// The routes of the page and its files.
pub(crate) fn router() -> Router {
    Router::new().route(PAGE_PATH, get(page)).route(ASSET_PATH, get(asset))
}

async fn page(headers: HeaderMap) -> Response {
    serve(&ASSETS[0], &headers)
}

async fn asset(Path(name): Path<String>, headers: HeaderMap) -> Response {
    match ASSETS.iter().find(|asset| asset.name == name) {
        Some(asset) => serve(asset, &headers),
        None => ApiError::new(StatusCode::NOT_FOUND, format!("no dashboard file {name:?}")).into_response(),
    }
}

/// `asset`, or 304 when the browser's copy is this one.
fn serve(asset: &Asset, request: &HeaderMap) -> Response {
    let fresh = request
        .get(IF_NONE_MATCH)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|tags| tags.split(',').any(|tag| tag.trim() == asset.etag || tag.trim() == "*"));
    let headers: [(HeaderName, HeaderValue); 8] = [
        (CONTENT_TYPE, HeaderValue::from_static(asset.content_type)),
        (ETAG, HeaderValue::from_static(asset.etag)),
        (CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY_VALUE)),
        (X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
        (X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        (REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
        (HeaderName::from_static("cross-origin-opener-policy"), HeaderValue::from_static("same-origin")),
    ];
    if fresh {
        return (StatusCode::NOT_MODIFIED, headers).into_response();
    }
    (headers, asset.bytes).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entity_tags_are_quoted_hex_of_the_bytes() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(&entity_tag(0x0123_4567_89ab_cdef), b"\"0123456789abcdef\"");
        let tags: std::collections::HashSet<&str> = ASSETS.iter().map(|asset| asset.etag).collect();
        assert_eq!(tags.len(), ASSETS.len(), "each file has its own tag");
    }

    #[test]
    fn every_module_the_page_imports_is_served() {
        let served: Vec<&str> = ASSETS.iter().map(|asset| asset.name).collect();
        for asset in &ASSETS {
            let text = std::str::from_utf8(asset.bytes).unwrap();
            // `from './x.js'` in modules, `src="/dashboard/x"`/`href="/dashboard/x"` in the page.
            for reference in text
                .split(['"', '\''])
                .filter_map(|part| part.strip_prefix("./").or_else(|| part.strip_prefix("/dashboard/")))
            {
                if reference.ends_with(".js") || reference.ends_with(".css") {
                    assert!(served.contains(&reference), "{} refers to {reference}, not served", asset.name);
                }
            }
        }
    }
}
