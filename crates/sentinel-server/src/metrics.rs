//! Prometheus metrics at `GET /metrics` on the HTTP listener, in the text exposition format
//! (version 0.0.4): `request_duration_seconds`, a histogram of every HTTP request by route;
//! `memory_usage_bytes`, the process's resident memory; the malware server's connection, request
//! and reload counters; the VirusTotal step's calls, cache hits, calls saved and errors; and what
//! other parts of the service append (the network service's
//! `predictions_total`, `anomalies_detected`, `model_accuracy`).
//!
//! The exposition is written by hand: it is a few lines of text per series, and the `prometheus`
//! crate would add a registry with its own locking and a second copy of every counter the
//! service already keeps.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::server::Shared;

/// Appends Prometheus text exposition lines for another part of the service.
pub(crate) type MetricsWriter = Box<dyn Fn(&mut String) + Send + Sync>;

/// Upper bounds of the latency buckets, seconds: fine below 10 ms, where the API's targets are,
/// coarse up to the malware analyses' seconds.
const BUCKETS: [f64; 14] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Label of requests that matched no route, so unknown paths cannot create series without bound.
const UNMATCHED_ROUTE: &str = "unmatched";

#[derive(Default)]
struct Histogram {
    /// Requests per bucket (not cumulative; summed when written).
    buckets: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

/// The state of `/metrics` and of the middleware that times requests.
pub(crate) struct Metrics {
    shared: Arc<Shared>,
    extra: Vec<MetricsWriter>,
    requests: Mutex<BTreeMap<String, Histogram>>,
}

impl Metrics {
    pub fn new(shared: Arc<Shared>, extra: Vec<MetricsWriter>) -> Metrics {
        Metrics { shared, extra, requests: Mutex::new(BTreeMap::new()) }
    }

    fn observe(&self, route: &str, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let mut requests = self.requests.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        // Looked up by `&str` first: routes are few, so a request allocates nothing once its
        // route has been seen.
        if !requests.contains_key(route) {
            requests.insert(route.to_owned(), Histogram::default());
        }
        let Some(histogram) = requests.get_mut(route) else { return };
        if let Some(bucket) = BUCKETS.iter().position(|&bound| seconds <= bound) {
            histogram.buckets[bucket] += 1;
        }
        histogram.sum += seconds;
        histogram.count += 1;
    }

    fn render(&self) -> String {
        let mut out = String::new();
        self.render_requests(&mut out);
        if let Some(bytes) = resident_memory_bytes() {
            family(
                &mut out,
                "memory_usage_bytes",
                "gauge",
                "Resident memory of the process (/proc/self/statm).",
            );
            let _ = writeln!(out, "memory_usage_bytes {bytes}");
        }
        self.render_malware_server(&mut out);
        for write in &self.extra {
            write(&mut out);
        }
        out
    }

    fn render_requests(&self, out: &mut String) {
        family(out, "request_duration_seconds", "histogram", "Time to answer an HTTP request, by route.");
        let requests = self.requests.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        for (route, histogram) in requests.iter() {
            let route = escape(route);
            let mut cumulative = 0;
            for (bound, count) in BUCKETS.iter().zip(histogram.buckets) {
                cumulative += count;
                let _ = writeln!(
                    out,
                    "request_duration_seconds_bucket{{route=\"{route}\",le=\"{bound}\"}} {cumulative}"
                );
            }
            let _ = writeln!(
                out,
                "request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {}\n\
                 request_duration_seconds_sum{{route=\"{route}\"}} {}\n\
                 request_duration_seconds_count{{route=\"{route}\"}} {}",
                histogram.count, histogram.sum, histogram.count
            );
        }
    }

    fn render_malware_server(&self, out: &mut String) {
        let report = self.shared.report();
        family(out, "malware_connections_open", "gauge", "Protocol connections open now.");
        let _ = writeln!(out, "malware_connections_open {}", report.connections.open);
        family(
            out,
            "malware_connections_total",
            "counter",
            "Protocol connections, accepted or refused at max_connections.",
        );
        let _ =
            writeln!(out, "malware_connections_total{{result=\"accepted\"}} {}", report.connections.accepted);
        let _ =
            writeln!(out, "malware_connections_total{{result=\"refused\"}} {}", report.connections.refused);
        family(out, "malware_requests_total", "counter", "Protocol requests by command and outcome.");
        for (command, outcomes) in &report.requests {
            for (outcome, count) in outcomes {
                let _ = writeln!(
                    out,
                    "malware_requests_total{{command=\"{}\",outcome=\"{}\"}} {count}",
                    escape(command),
                    escape(outcome)
                );
            }
        }
        family(out, "malware_model_reloads_total", "counter", "Model reloads by result.");
        let _ =
            writeln!(out, "malware_model_reloads_total{{result=\"succeeded\"}} {}", report.reloads.succeeded);
        let _ = writeln!(out, "malware_model_reloads_total{{result=\"failed\"}} {}", report.reloads.failed);
        if let Some(virustotal) = &report.virustotal {
            let counters = [
                ("virustotal_calls_total", "HTTP requests sent to VirusTotal.", virustotal.calls_made),
                (
                    "virustotal_cache_hits_total",
                    "Lookups answered from the results dataset.",
                    virustotal.cache_hits,
                ),
                (
                    "virustotal_calls_saved_total",
                    "Lookups that needed no call of their own.",
                    virustotal.calls_saved,
                ),
            ];
            for (name, help, value) in counters {
                family(out, name, "counter", help);
                let _ = writeln!(out, "{name} {value}");
            }
            family(out, "virustotal_errors_total", "counter", "Failed VirusTotal lookups by kind.");
            for (kind, count) in &virustotal.client.errors {
                let _ = writeln!(out, "virustotal_errors_total{{kind=\"{}\"}} {count}", kind.as_str());
            }
        }
    }
}

/// The `# HELP` and `# TYPE` lines of a metric family.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// A label value as the exposition format requires: backslash, quote and newline escaped.
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Resident set size: the second field of `/proc/self/statm`, in pages. `None` where there is
/// no procfs, and the series is then left out rather than reported as 0.
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

/// `GET /metrics`.
pub(crate) async fn serve(State(metrics): State<Arc<Metrics>>) -> Response {
    ([(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], metrics.render()).into_response()
}

/// Middleware timing every request under the route it matched (`/api/v1/train/{job}`, not the
/// path requested, so job ids do not each make a series).
pub(crate) async fn time_request(
    State(metrics): State<Arc<Metrics>>,
    request: Request,
    next: Next,
) -> Response {
    let route = request.extensions().get::<MatchedPath>().map(|path| path.as_str().to_owned());
    let started = Instant::now();
    let response = next.run(request).await;
    metrics.observe(route.as_deref().unwrap_or(UNMATCHED_ROUTE), started.elapsed());
    response
}
