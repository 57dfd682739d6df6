//! The checks on a request's headers that come before any credential, and where the credential
//! is found:
//!
//! - `Host` must name this server (DNS-rebinding defence): an IP literal or `localhost`, any
//!   port, or one of `[http] server_names`. A page of `evil.example` whose name was re-pointed
//!   at 127.0.0.1 sends `Host: evil.example`, and is refused.
//! - A state-changing request must not carry a body an HTML form of another site can send
//!   (`application/x-www-form-urlencoded`, `multipart/form-data`, `text/plain`, or no
//!   `Content-Type` at all): such requests need no CORS preflight, so they are the cross-site
//!   request forgeries a browser lets through.
//! - A WebSocket upgrade's `Origin`, when present (browsers always send it), must be one of
//!   `[auth] allowed_origins`, or, when that list is empty, the server's own origin (its
//!   host and port equal to `Host`).
//! - The bearer credential: `Authorization: Bearer …`, or for a WebSocket upgrade (browsers
//!   cannot set its headers) the `Sec-WebSocket-Protocol` values `bearer, TOKEN`.

use std::net::IpAddr;

use axum::http::header::{
    AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HOST, ORIGIN, SEC_WEBSOCKET_PROTOCOL, TRANSFER_ENCODING,
    UPGRADE,
};
use axum::http::{HeaderMap, Method, Uri};

/// The subprotocol that announces a token in `Sec-WebSocket-Protocol`; the server answers with
/// it (never with the token), as browsers require one of the offered protocols back.
pub const WEBSOCKET_BEARER_PROTOCOL: &str = "bearer";

/// The request's host, from `Host` (HTTP/1.1) or the URI's authority (HTTP/2), with its port.
pub(crate) fn host(headers: &HeaderMap, uri: &Uri) -> Option<String> {
    headers
        .get(HOST)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned)
        .or_else(|| uri.authority().map(|authority| authority.as_str().to_owned()))
}

/// `host[:port]` without the port; an IPv6 literal keeps no brackets.
fn host_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or_default();
    }
    host.rsplit_once(':')
        .map_or(host, |(name, port)| if port.bytes().all(|byte| byte.is_ascii_digit()) { name } else { host })
}

/// Whether `host` (a `Host` header) names this server.
pub(crate) fn host_allowed(host: &str, server_names: &[String]) -> bool {
    let name = host_name(host).trim_end_matches('.');
    name.parse::<IpAddr>().is_ok()
        || name.eq_ignore_ascii_case("localhost")
        || server_names.iter().any(|allowed| allowed.trim_end_matches('.').eq_ignore_ascii_case(name))
}

/// Whether a request with this method may change state (and so must not be a form's).
fn changes_state(method: &Method) -> bool {
    matches!(*method, Method::POST | Method::PUT | Method::PATCH | Method::DELETE)
}

/// The content type of a body a cross-site form could have sent, or `None` when the request is
/// not such a body.
pub(crate) fn form_content(method: &Method, headers: &HeaderMap) -> Option<String> {
    if !changes_state(method) {
        return None;
    }
    match headers.get(CONTENT_TYPE) {
        Some(value) => {
            let text = String::from_utf8_lossy(value.as_bytes()).to_ascii_lowercase();
            let media_type = text.split(';').next().unwrap_or_default().trim().to_owned();
            let form = ["application/x-www-form-urlencoded", "multipart/form-data", "text/plain"];
            form.contains(&media_type.as_str()).then_some(media_type)
        }
        None => {
            let has_body = headers.contains_key(TRANSFER_ENCODING)
                || headers
                    .get(CONTENT_LENGTH)
                    .and_then(|value| value.to_str().ok())
                    .is_some_and(|length| length.trim() != "0");
            has_body.then(|| "none".to_owned())
        }
    }
}

/// Whether the request asks for a WebSocket.
pub(crate) fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
    headers.get(UPGRADE).is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"websocket"))
}

/// Whether the upgrade's `Origin` (if any) may open the WebSocket.
pub(crate) fn origin_allowed(headers: &HeaderMap, host: Option<&str>, allowed_origins: &[String]) -> bool {
    let Some(origin) = headers.get(ORIGIN) else { return true };
    let Ok(origin) = origin.to_str() else { return false };
    let origin = origin.trim_end_matches('/');
    if !allowed_origins.is_empty() {
        return allowed_origins
            .iter()
            .any(|allowed| allowed.trim_end_matches('/').eq_ignore_ascii_case(origin));
    }
    // Same origin: the origin's authority is the Host the browser sent.
    let authority = origin.split_once("://").map_or("", |(_, authority)| authority);
    host.is_some_and(|host| !authority.is_empty() && authority.eq_ignore_ascii_case(host))
}

/// Where the request's credential was found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Credential<'a> {
    Bearer(&'a str),
    /// An `Authorization` header of another scheme, or without a value.
    Malformed,
    Missing,
}

/// The bearer credential of the request (see the module documentation).
pub(crate) fn credential(headers: &HeaderMap) -> Credential<'_> {
    if let Some(value) = headers.get(AUTHORIZATION) {
        let Ok(value) = value.to_str() else { return Credential::Malformed };
        return match value.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() => {
                Credential::Bearer(token.trim())
            }
            _ => Credential::Malformed,
        };
    }
    if is_websocket_upgrade(headers) {
        let offered = headers
            .get_all(SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .map(str::trim);
        let mut after_bearer = offered.skip_while(|protocol| *protocol != WEBSOCKET_BEARER_PROTOCOL).skip(1);
        if let Some(token) = after_bearer.next() {
            return Credential::Bearer(token);
        }
    }
    Credential::Missing
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(axum::http::HeaderName, &str)]) -> HeaderMap {
        pairs.iter().map(|(name, value)| (name.clone(), HeaderValue::from_str(value).unwrap())).collect()
    }

    #[test]
    fn hosts_must_be_ip_literals_localhost_or_configured_names() {
        let names = ["sentinel.example".to_owned()];
        for host in
            ["127.0.0.1:9501", "[::1]:9501", "10.1.2.3", "localhost:80", "LOCALHOST", "sentinel.example:443"]
        {
            assert!(host_allowed(host, &names), "{host}");
        }
        for host in ["evil.example", "evil.example:9501", "sentinel.example.evil", "127.0.0.1.nip.io", ""] {
            assert!(!host_allowed(host, &names), "{host}");
        }
        assert!(!host_allowed("sentinel.example", &[]));
    }

    #[test]
    fn form_bodies_are_recognised_on_state_changing_methods_only() {
        let form = headers(&[(CONTENT_TYPE, "Text/Plain; charset=utf-8")]);
        assert_eq!(form_content(&Method::POST, &form).as_deref(), Some("text/plain"));
        assert_eq!(form_content(&Method::GET, &form), None);
        assert_eq!(form_content(&Method::POST, &headers(&[(CONTENT_TYPE, "application/json")])), None);
        assert_eq!(form_content(&Method::POST, &headers(&[(CONTENT_LENGTH, "0")])), None);
        assert_eq!(form_content(&Method::POST, &HeaderMap::new()), None);
        assert_eq!(
            form_content(&Method::DELETE, &headers(&[(CONTENT_LENGTH, "12")])).as_deref(),
            Some("none")
        );
    }

    #[test]
    fn origins_are_the_server_s_own_or_listed() {
        let upgrade = |origin: &str| headers(&[(ORIGIN, origin)]);
        assert!(origin_allowed(&HeaderMap::new(), Some("127.0.0.1:9501"), &[]));
        assert!(origin_allowed(&upgrade("http://127.0.0.1:9501"), Some("127.0.0.1:9501"), &[]));
        assert!(!origin_allowed(&upgrade("http://evil.example"), Some("127.0.0.1:9501"), &[]));
        assert!(!origin_allowed(&upgrade("null"), Some("127.0.0.1:9501"), &[]));
        let listed = ["https://console.example".to_owned()];
        assert!(origin_allowed(&upgrade("https://console.example"), Some("127.0.0.1:9501"), &listed));
        assert!(!origin_allowed(&upgrade("http://127.0.0.1:9501"), Some("127.0.0.1:9501"), &listed));
    }

    #[test]
    fn the_credential_comes_from_authorization_or_the_websocket_subprotocols() {
        assert_eq!(credential(&headers(&[(AUTHORIZATION, "Bearer snt_x")])), Credential::Bearer("snt_x"));
        assert_eq!(credential(&headers(&[(AUTHORIZATION, "Basic eDp5")])), Credential::Malformed);
        assert_eq!(credential(&HeaderMap::new()), Credential::Missing);
        let websocket = headers(&[(UPGRADE, "websocket"), (SEC_WEBSOCKET_PROTOCOL, "bearer, snt_y")]);
        assert_eq!(credential(&websocket), Credential::Bearer("snt_y"));
        let no_upgrade = headers(&[(SEC_WEBSOCKET_PROTOCOL, "bearer, snt_y")]);
        assert_eq!(credential(&no_upgrade), Credential::Missing);
    }
}
