//! Refused connections, counted and logged without letting a flood of them flood the logs:
//! every refusal increments a Prometheus counter by reason; the first few of each interval are
//! logged one by one, the rest are summed up in one line when the interval ends
//! ("N more refused in the last 10 s"). A connection refused before it sent any request also
//! leaves a `connection` line in the access log, within the same budget
//! ([`RefusalLog::refused_connection`]).

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::access_log::{AccessEntry, AccessKind, AccessLog, AccessStatus};
use crate::client::ClientKey;

/// Refusals by `reason`; register it in the process's registry (`…_refused` becomes
/// `…_refused_total`).
pub type RefusalCounter = Family<[(&'static str, &'static str); 1], Counter>;

/// Lines logged one by one per interval by default.
const DEFAULT_LINES: u32 = 5;
/// The default interval.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);

/// Counts and logs the refusals of one listener; clones share the counts and the log budget.
#[derive(Debug, Clone)]
pub struct RefusalLog {
    listener: &'static str,
    counter: RefusalCounter,
    lines_per_interval: u32,
    interval: Duration,
    window: Arc<Mutex<Window>>,
    access_log: AccessLog,
}

/// The current interval: when it began, what was logged and what was held back.
#[derive(Debug, Default)]
struct Window {
    started: Option<Instant>,
    logged: u32,
    suppressed: u64,
    summary_scheduled: bool,
}

impl RefusalLog {
    /// The refusals of `listener` (`"http"`, `"tcp"`…), five lines per 10 s at most, plus the
    /// summaries.
    pub fn new(listener: &'static str) -> RefusalLog {
        RefusalLog::with_rate(listener, DEFAULT_LINES, DEFAULT_INTERVAL)
    }

    pub fn with_rate(listener: &'static str, lines_per_interval: u32, interval: Duration) -> RefusalLog {
        RefusalLog {
            listener,
            counter: RefusalCounter::default(),
            lines_per_interval,
            interval: interval.max(Duration::from_millis(1)),
            window: Arc::default(),
            access_log: AccessLog::off(),
        }
    }

    /// The same log, also writing the connections it logs to `access_log`.
    pub fn with_access_log(mut self, access_log: AccessLog) -> RefusalLog {
        self.access_log = access_log;
        self
    }

    /// The counter to register: `registry.register("http_connections_refused", "…", log.counter())`.
    pub fn counter(&self) -> RefusalCounter {
        self.counter.clone()
    }

    /// How many refusals of `reason` were counted.
    pub fn count(&self, reason: &'static str) -> u64 {
        self.counter.get_or_create(&[("reason", reason)]).get()
    }

    /// How this log names `client` in the process log: a certificate by its subject, an address
    /// as the access log renders addresses (the form `[privacy]` stores them in).
    pub fn describe(&self, client: &ClientKey) -> String {
        match client {
            ClientKey::Certificate(subject) => subject.to_string(),
            ClientKey::Address(address) => self.access_log.render(*address),
        }
    }

    /// Records one refusal: counted always, logged within the budget.
    pub fn refused(&self, reason: &'static str, client: &ClientKey) {
        self.counter.get_or_create(&[("reason", reason)]).inc();
        self.record(reason, client, Instant::now());
    }

    /// Records a connection closed before any request, from `address`: as [`RefusalLog::refused`],
    /// plus, within the same budget, a `connection` line in the access log.
    pub fn refused_connection(&self, reason: &'static str, client: &ClientKey, address: std::net::IpAddr) {
        self.counter.get_or_create(&[("reason", reason)]).inc();
        if self.record(reason, client, Instant::now()) {
            let principal = match client {
                ClientKey::Certificate(subject) => Some(format!("cert:{subject}")),
                ClientKey::Address(_) => None,
            };
            self.access_log.record(AccessEntry {
                kind: AccessKind::Connection,
                principal,
                client: Some(self.access_log.render(address)),
                method: None,
                route: None,
                command: None,
                status: AccessStatus::Outcome("refused".to_owned()),
                reason: Some(reason.to_owned()),
                bytes_in: 0,
                bytes_out: 0,
                latency: std::time::Duration::ZERO,
            });
        }
    }

    /// Logs the refusal if the budget allows; returns whether it did.
    fn record(&self, reason: &'static str, client: &ClientKey, now: Instant) -> bool {
        let mut window = self.lock();
        self.end_window_if_over(&mut window, now);
        let started = *window.started.get_or_insert(now);
        if window.logged < self.lines_per_interval {
            window.logged += 1;
            drop(window);
            let client = self.describe(client);
            tracing::warn!(listener = self.listener, reason, client, "connection refused");
            return true;
        }
        window.suppressed += 1;
        if !window.summary_scheduled {
            // Said when the interval ends, even if no refusal follows; without a runtime (in a
            // synchronous caller) the next refusal after the interval says it.
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                window.summary_scheduled = true;
                let log = self.clone();
                let end = started + self.interval;
                runtime.spawn(async move {
                    tokio::time::sleep_until(end.into()).await;
                    log.summarise(Instant::now());
                });
            }
        }
        false
    }

    /// Writes the summary of an interval that is over.
    fn summarise(&self, now: Instant) {
        let mut window = self.lock();
        self.end_window_if_over(&mut window, now);
    }

    fn end_window_if_over(&self, window: &mut Window, now: Instant) {
        let Some(started) = window.started else { return };
        if now.duration_since(started) < self.interval {
            return;
        }
        if window.suppressed > 0 {
            tracing::warn!(
                listener = self.listener,
                refused = window.suppressed,
                "{} more connections refused in the last {} s",
                window.suppressed,
                self.interval.as_secs_f64()
            );
        }
        *window = Window::default();
    }

    fn lock(&self) -> MutexGuard<'_, Window> {
        self.window.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    /// Log lines written while `run` runs.
    fn logged(run: impl FnOnce()) -> Vec<String> {
        #[derive(Clone, Default)]
        struct Lines(Arc<Mutex<Vec<u8>>>);
        impl Write for Lines {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber =
            tracing_subscriber::fmt().with_ansi(false).with_writer(move || writer.clone()).finish();
        tracing::subscriber::with_default(subscriber, run);
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        text.lines().map(str::to_owned).collect()
    }

    #[test]
    fn a_flood_is_counted_in_full_and_logged_in_a_few_lines_and_one_summary() {
        let log = RefusalLog::with_rate("http", 5, Duration::from_secs(10));
        let client = ClientKey::address([127, 0, 0, 2].into());
        let start = Instant::now();
        let lines = logged(|| {
            for _ in 0..1000 {
                log.counter.get_or_create(&[("reason", "max_connections_per_client")]).inc();
                log.record("max_connections_per_client", &client, start);
            }
            log.summarise(start + Duration::from_secs(9));
            log.summarise(start + Duration::from_secs(10));
        });
        assert_eq!(log.count("max_connections_per_client"), 1000);
        assert_eq!(log.count("max_connections"), 0);
        assert_eq!(lines.len(), 6, "{lines:#?}");
        assert!(
            lines[..5].iter().all(|line| line.contains("connection refused") && line.contains("127.0.0.2"))
        );
        assert!(lines[5].contains("995 more connections refused in the last 10 s"), "{}", lines[5]);
    }

    #[test]
    fn refused_connections_reach_the_access_log_within_the_budget_only() {
        use crate::access_log::AccessLogSettings;

        let dir = tempfile::tempdir().unwrap();
        let settings = AccessLogSettings { path: Some(dir.path().join("access.log")), ..Default::default() };
        let (access_log, writer) = AccessLog::start(&settings, dir.path()).unwrap();
        let log = RefusalLog::with_rate("tcp", 3, Duration::from_secs(60)).with_access_log(access_log);
        let address: std::net::IpAddr = [127, 0, 0, 9].into();
        let client = ClientKey::address(address);
        for _ in 0..10 {
            log.refused_connection("max_connections_per_client", &client, address);
        }
        // A refused request is the request's own line, not a connection's.
        log.refused("client_request_rate", &client);
        writer.finish();
        assert_eq!(log.count("max_connections_per_client"), 10);
        let text = std::fs::read_to_string(dir.path().join("access.log")).unwrap();
        let lines: Vec<serde_json::Value> =
            text.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
        assert_eq!(lines.len(), 3, "{text}");
        for line in &lines {
            assert_eq!(line["kind"], "connection");
            assert_eq!(line["reason"], "max_connections_per_client");
            assert_eq!(line["client"], "127.0.0.9");
            assert!(line["principal"].is_null());
        }
    }

    #[test]
    fn a_new_interval_logs_again_and_a_quiet_one_says_nothing() {
        let log = RefusalLog::with_rate("tcp", 2, Duration::from_secs(10));
        let client = ClientKey::address([127, 0, 0, 3].into());
        let start = Instant::now();
        let lines = logged(|| {
            for _ in 0..3 {
                log.record("max_connections", &client, start);
            }
            // The next refusal, after the interval, first sums up the one before.
            log.record("max_connections", &client, start + Duration::from_secs(11));
            log.summarise(start + Duration::from_secs(30));
        });
        assert_eq!(lines.len(), 4, "{lines:#?}");
        assert!(lines[2].contains("1 more connections refused"), "{}", lines[2]);
        assert!(lines[3].contains("connection refused"), "{}", lines[3]);
    }
}
