//! The access log of the HTTP listener: one line per request, written by one middleware
//! ([`log_requests`], outermost in the stack, so it sees every request, routed or not, and the
//! status and body the client gets), once the response's body has been sent — so the line
//! holds the bytes really sent and the whole latency. A WebSocket upgrade's line is the `101`.
//!
//! What the outer layer cannot see on its own is left for it in the response's extensions by
//! the layers inside: the matched route template ([`note_route`], per route) and who called and
//! why a request was refused ([`RequestNote`], by `access::guard`). Errors without a reason of
//! their own (413, 408, 503…) get the status's name (`payload_too_large`).
//!
//! [`Caller`] hands handlers the same principal and rendered client address, for the audit
//! table.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, FromRequestParts, MatchedPath, Request, State};
use axum::http::header::CONTENT_LENGTH;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use http_body::{Frame, SizeHint};
use sentinel_auth::{Principal, PrincipalKind};
use sentinel_transport::{AccessEntry, AccessKind, AccessLog, AccessStatus};

/// The matched route's template, left in the response for [`log_requests`].
#[derive(Debug, Clone)]
struct RouteTemplate(String);

/// Who called and why the request was refused, left in the response by the guard.
#[derive(Debug, Clone, Default)]
pub(crate) struct RequestNote {
    pub principal: Option<String>,
    pub reason: Option<&'static str>,
}

/// The client address as the access log renders it, for [`Caller`].
#[derive(Debug, Clone)]
struct RenderedClient(String);

/// How the access log and the audit table name a principal: `token:NAME#ID` or `jwt:SUBJECT`;
/// never the credential itself.
pub fn principal_label(principal: &Principal) -> String {
    match &principal.kind {
        PrincipalKind::Token { name, id } => format!("token:{name}#{id}"),
        PrincipalKind::Jwt { subject } => format!("jwt:{subject}"),
    }
}

/// Who made a request, for handlers that record administrative actions: the principal's label
/// (`None` on a listener without authentication) and the client's address as the access log
/// renders it (as the privacy setting says).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Caller {
    pub principal: Option<String>,
    pub client: Option<String>,
}

impl Caller {
    /// The principal's label, or `unauthenticated` on a listener that asks for no credential.
    pub fn principal_name(&self) -> &str {
        self.principal.as_deref().unwrap_or("unauthenticated")
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Caller, Self::Rejection> {
        Ok(Caller {
            principal: parts.extensions.get::<Principal>().map(principal_label),
            client: parts.extensions.get::<RenderedClient>().map(|client| client.0.clone()),
        })
    }
}

/// Per route: notes the matched route's template in the response.
pub(crate) async fn note_route(request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().map(|path| path.as_str().to_owned());
    let mut response = next.run(request).await;
    if let Some(route) = route {
        response.extensions_mut().insert(RouteTemplate(route));
    }
    response
}

/// The middleware (see the module documentation).
pub(crate) async fn log_requests(State(log): State<AccessLog>, mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().to_string();
    let client = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|info| log.render(info.0.ip()));
    if let Some(client) = &client {
        request.extensions_mut().insert(RenderedClient(client.clone()));
    }
    // The declared length when there is one; else the body is counted as the handler reads it.
    let declared = content_length(request.headers());
    let read = Arc::new(AtomicU64::new(0));
    if declared.is_none() {
        let counted = Arc::clone(&read);
        request = request.map(|body| Body::new(CountedRequest { inner: body, read: counted }));
    }
    let response = next.run(request).await;
    let status = response.status();
    let note = response.extensions().get::<RequestNote>().cloned().unwrap_or_default();
    let route = response.extensions().get::<RouteTemplate>().map(|route| route.0.clone());
    let reason = note.reason.map(str::to_owned).or_else(|| status_reason(status));
    let entry = AccessEntry {
        kind: AccessKind::Http,
        principal: note.principal,
        client,
        method: Some(method),
        route,
        command: None,
        status: AccessStatus::Code(status.as_u16()),
        reason,
        bytes_in: declared.unwrap_or(0),
        bytes_out: 0,
        latency: started.elapsed(),
    };
    let pending = Pending { log, entry, started, read: declared.is_none().then_some(read) };
    response.map(|body| Body::new(LoggedResponse { inner: body, sent: 0, pending: Some(pending) }))
}

/// `Content-Length`, when the request has a valid one.
fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(CONTENT_LENGTH)?.to_str().ok()?.trim().parse().ok()
}

/// The reason of an error the guard did not name: its status, as a word.
fn status_reason(status: StatusCode) -> Option<String> {
    if !(status.is_client_error() || status.is_server_error()) {
        return None;
    }
    let name = status.canonical_reason().unwrap_or("error");
    Some(name.to_ascii_lowercase().replace([' ', '-'], "_").replace('\'', ""))
}

/// A request body that counts the bytes read from it.
struct CountedRequest {
    inner: Body,
    read: Arc<AtomicU64>,
}

impl http_body::Body for CountedRequest {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(context);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            self.read.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The line of a request, written when its response's body is done.
struct Pending {
    log: AccessLog,
    entry: AccessEntry,
    started: Instant,
    /// The request body's counter, when it had no `Content-Length`.
    read: Option<Arc<AtomicU64>>,
}

/// A response body that writes the request's line once it has been sent (or dropped: a client
/// that left mid-body still gets its line, with what was sent).
struct LoggedResponse {
    inner: Body,
    sent: u64,
    pending: Option<Pending>,
}

impl LoggedResponse {
    fn write_line(&mut self) {
        if let Some(Pending { log, mut entry, started, read }) = self.pending.take() {
            entry.bytes_out = self.sent;
            if let Some(read) = read {
                entry.bytes_in = read.load(Ordering::Relaxed);
            }
            entry.latency = started.elapsed();
            log.record(entry);
        }
    }
}

impl http_body::Body for LoggedResponse {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(context);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.sent += data.len() as u64;
                }
            }
            Poll::Ready(_) => self.write_line(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for LoggedResponse {
    fn drop(&mut self) {
        self.write_line();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_without_a_reason_are_named_by_their_status() {
        assert_eq!(status_reason(StatusCode::PAYLOAD_TOO_LARGE).as_deref(), Some("payload_too_large"));
        assert_eq!(status_reason(StatusCode::SERVICE_UNAVAILABLE).as_deref(), Some("service_unavailable"));
        assert_eq!(status_reason(StatusCode::TOO_MANY_REQUESTS).as_deref(), Some("too_many_requests"));
        assert_eq!(status_reason(StatusCode::OK), None);
        assert_eq!(status_reason(StatusCode::SWITCHING_PROTOCOLS), None);
    }

    #[test]
    fn principals_are_named_never_shown() {
        let token = Principal {
            kind: PrincipalKind::Token { name: "ci".to_owned(), id: 4 },
            scopes: sentinel_auth::Scopes::default(),
        };
        assert_eq!(principal_label(&token), "token:ci#4");
        let jwt = Principal { kind: PrincipalKind::Jwt { subject: "alice".to_owned() }, ..token };
        assert_eq!(principal_label(&jwt), "jwt:alice");
    }
}
