//! The process's one Prometheus registry, served at `GET /metrics` in the text exposition format
//! (version 0.0.4), and the two series this crate owns: `request_duration_seconds{route}`, a
//! histogram of every HTTP request by the route it matched, and `memory_usage_bytes`, the
//! process's resident memory. Services register their own metrics in the same registry
//! ([`crate::ApiBuilder::metrics`]) before the listener starts.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::error::ApiError;

/// Upper bounds of the latency buckets, seconds: fine below 10 ms, where the API's targets are,
/// coarse up to the malware analyses' seconds.
const BUCKETS: [f64; 14] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Label of requests that matched no route, so unknown paths cannot create series without bound.
const UNMATCHED_ROUTE: &str = "unmatched";

/// The label set of `request_duration_seconds`.
type RouteLabel = [(&'static str, String); 1];

fn new_histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

/// Request durations by matched route.
pub(crate) type RequestDurations = Family<RouteLabel, Histogram, fn() -> Histogram>;

/// Registers the series this crate owns; returns the request histogram the middleware fills.
pub(crate) fn register_own(registry: &mut Registry) -> RequestDurations {
    let durations: RequestDurations = Family::new_with_constructor(new_histogram);
    registry.register(
        "request_duration_seconds",
        "Time to answer an HTTP request, by route.",
        durations.clone(),
    );
    registry.register_collector(Box::new(ResidentMemory));
    durations
}

/// `memory_usage_bytes`, read from the kernel at each scrape.
#[derive(Debug)]
struct ResidentMemory;

impl Collector for ResidentMemory {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // Left out rather than reported as 0 where there is no procfs.
        let Some(bytes) = resident_memory_bytes() else { return Ok(()) };
        let gauge = ConstGauge::new(i64::try_from(bytes).unwrap_or(i64::MAX));
        let metric = encoder.encode_descriptor(
            "memory_usage_bytes",
            "Resident memory of the process (/proc/self/statm).",
            None,
            gauge.metric_type(),
        )?;
        gauge.encode(metric)
    }
}

/// Resident set size: the second field of `/proc/self/statm`, in pages.
#[cfg(unix)]
fn resident_memory_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions; it returns -1 for an unknown name.
    let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page_size).ok()?)
}

#[cfg(not(unix))]
fn resident_memory_bytes() -> Option<u64> {
    None
}

/// The registry, read-only once the listener serves.
pub(crate) type SharedRegistry = Arc<Registry>;

/// The Prometheus text exposition of every registered metric.
#[utoipa::path(get, path = "/metrics", tag = "metrics", security((), ("bearer" = ["metrics:read"])), responses(
    (status = 200, description = "Prometheus text exposition format 0.0.4", body = String,
     content_type = "text/plain; version=0.0.4"),
))]
pub(crate) async fn serve(State(registry): State<SharedRegistry>) -> Response {
    let mut text = String::new();
    match prometheus_client::encoding::prometheus_text::encode(&mut text, &registry) {
        Ok(()) => ([(CONTENT_TYPE, prometheus_client::encoding::prometheus_text::CONTENT_TYPE)], text)
            .into_response(),
        Err(_) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "the metrics could not be written")
            .into_response(),
    }
}

/// Middleware timing every request under the route it matched (`/api/v1/train/{job}`, not the
/// path requested, so job ids do not each make a series).
pub(crate) async fn time_request(
    State(durations): State<RequestDurations>,
    request: Request,
    next: Next,
) -> Response {
    let route = request.extensions().get::<MatchedPath>().map(|path| path.as_str().to_owned());
    let started = Instant::now();
    let response = next.run(request).await;
    let route = route.unwrap_or_else(|| UNMATCHED_ROUTE.to_owned());
    durations.get_or_create(&[("route", route)]).observe(started.elapsed().as_secs_f64());
    response
}
