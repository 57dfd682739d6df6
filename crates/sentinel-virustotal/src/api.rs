//! The HTTP calls to VirusTotal API v3, each made with one client's key:
//! file report, upload (direct, or through an upload URL for large files) and
//! analysis. Every request passes the key's rate limiter, is bounded in time
//! and response size, and is retried with exponential back-off and jitter
//! after transient failures; every documented error becomes a [`VtError`].
//! An attempt that could not connect gives its rate-limit slot back.
//!
//! The key travels only in the `x-apikey` header, marked sensitive. Redirects
//! are not followed, because a redirect to another host would carry the header
//! with it, and an upload URL is used only on VirusTotal's own hosts.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{HeaderValue, RETRY_AFTER};
use reqwest::{RequestBuilder, Response, StatusCode, Url, redirect};

use crate::clock::Clock;
use crate::coordination::QuotaLedger;
use crate::error::{QuotaOrigin, SettingsError, VtError, upstream_message};
use crate::key::{ApiKey, KeyId};
use crate::metrics::Metrics;
use crate::rate_limit::RateLimiter;
use crate::settings::CheckedSettings;
use crate::verdict::{FileHash, Verdict};
use crate::wire::{self, AnalysisState};

/// Files larger than this go through `GET /api/v3/files/upload_url`.
const DIRECT_UPLOAD_LIMIT: usize = 32 * 1024 * 1024;
/// Error bodies are small JSON objects; more is not read.
const MAX_ERROR_BODY: usize = 64 * 1024;

pub(crate) struct Api {
    http: reqwest::Client,
    settings: Arc<CheckedSettings>,
    limiter: RateLimiter,
    metrics: Arc<Metrics>,
    clock: Arc<dyn Clock>,
}

/// One request's outcome before the retry decision.
enum Attempt {
    Done(Result<Bytes, VtError>),
    Transient { reason: String, retry_after: Option<Duration> },
}

impl Api {
    /// The API client; each key's limits are kept in `ledger` when given (shared by
    /// replicas), in process otherwise.
    pub(crate) fn new(
        settings: Arc<CheckedSettings>,
        metrics: Arc<Metrics>,
        clock: Arc<dyn Clock>,
        ledger: Option<Arc<dyn QuotaLedger>>,
    ) -> Result<Api, SettingsError> {
        let http = reqwest::Client::builder()
            .redirect(redirect::Policy::none())
            .connect_timeout(settings.request_timeout)
            .user_agent(concat!("sentinel-virustotal/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|error| SettingsError::new(format!("cannot build the HTTP client: {error}")))?;
        let limiter = RateLimiter::new(
            Arc::clone(&clock),
            settings.default_tier,
            settings.key_limits.clone(),
            settings.max_queue_wait,
            ledger,
        );
        Ok(Api { http, settings, limiter, metrics, clock })
    }

    /// `GET /api/v3/files/{sha256}`.
    pub(crate) async fn file_report(
        &self,
        key: &ApiKey,
        key_id: KeyId,
        sha256: FileHash,
    ) -> Result<Verdict, VtError> {
        let url = self.endpoint(&["files", &sha256.to_string()]);
        let body =
            self.call(key, key_id, self.settings.request_timeout, |http| http.get(url.clone())).await?;
        wire::file_report(&body, sha256, self.now_unix())
    }

    /// Uploads `file` and returns the id of its analysis.
    pub(crate) async fn upload(
        &self,
        key: &ApiKey,
        key_id: KeyId,
        sha256: FileHash,
        file: Bytes,
    ) -> Result<String, VtError> {
        let upload_url = if file.len() > DIRECT_UPLOAD_LIMIT {
            let url = self.endpoint(&["files", "upload_url"]);
            let body =
                self.call(key, key_id, self.settings.request_timeout, |http| http.get(url.clone())).await?;
            self.check_upload_url(&wire::upload_url(&body)?)?
        } else {
            self.endpoint(&["files"])
        };
        self.metrics.upload();
        let body = self
            .call(key, key_id, self.settings.upload_timeout, |http| {
                // The file is named by its hash: the client's file name is not
                // known here and would not be VirusTotal's business anyway.
                let part = reqwest::multipart::Part::stream_with_length(file.clone(), file.len() as u64)
                    .file_name(sha256.to_string());
                http.post(upload_url.clone()).multipart(reqwest::multipart::Form::new().part("file", part))
            })
            .await?;
        wire::upload_analysis_id(&body)
    }

    /// `GET /api/v3/analyses/{id}`.
    pub(crate) async fn analysis(
        &self,
        key: &ApiKey,
        key_id: KeyId,
        analysis_id: &str,
        sha256: FileHash,
    ) -> Result<AnalysisState, VtError> {
        let url = self.endpoint(&["analyses", analysis_id]);
        let body =
            self.call(key, key_id, self.settings.request_timeout, |http| http.get(url.clone())).await?;
        wire::analysis(&body, sha256, self.now_unix())
    }

    pub(crate) fn now_unix(&self) -> i64 {
        i64::try_from(self.clock.now().as_secs()).unwrap_or(i64::MAX)
    }

    /// `{base_url}/api/v3/{segments…}`, each segment percent-encoded.
    fn endpoint(&self, segments: &[&str]) -> Url {
        let mut url = self.settings.base_url.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(["api", "v3"]).extend(segments);
        }
        url
    }

    /// An upload URL from VirusTotal, accepted only on the base URL's host or,
    /// over HTTPS, on a sibling host of the same domain (the default base
    /// `www.virustotal.com` hands out `bigfiles.virustotal.com` URLs): the key
    /// is sent there too.
    fn check_upload_url(&self, text: &str) -> Result<Url, VtError> {
        let refused = || VtError::InvalidResponse("upload URL outside VirusTotal's hosts".to_owned());
        let url = Url::parse(text).map_err(|_| refused())?;
        let base = &self.settings.base_url;
        let same_endpoint =
            url.scheme() == base.scheme() && url.port_or_known_default() == base.port_or_known_default();
        let same_host = url.host_str() == base.host_str();
        let sibling = match (base.domain(), url.domain()) {
            (Some(base_host), Some(host)) if url.scheme() == "https" => base_host
                .split_once('.')
                .is_some_and(|(_, parent)| parent.contains('.') && host.ends_with(&format!(".{parent}"))),
            _ => false,
        };
        if same_endpoint && (same_host || sibling) && url.username().is_empty() && url.password().is_none() {
            Ok(url)
        } else {
            Err(refused())
        }
    }

    /// Sends the request `build` makes, with the key, retrying transient
    /// failures; every attempt first passes the rate limiter.
    async fn call(
        &self,
        key: &ApiKey,
        key_id: KeyId,
        timeout: Duration,
        build: impl Fn(&reqwest::Client) -> RequestBuilder,
    ) -> Result<Bytes, VtError> {
        let mut header = HeaderValue::from_str(key.expose()).map_err(|_| VtError::InvalidKey)?;
        header.set_sensitive(true);
        let attempts = self.settings.max_retries + 1;
        let mut last_reason = String::new();
        // Whether the last attempt failed before any byte reached VirusTotal.
        let mut unreachable = false;
        for attempt in 0..attempts {
            if attempt > 0 {
                self.metrics.retry();
            }
            let slot = self.limiter.acquire(key_id).await?;
            self.metrics.upstream_request();
            let request = build(&self.http).header("x-apikey", header.clone()).timeout(timeout);
            let sent = request.send().await;
            unreachable = sent.as_ref().is_err_and(reqwest::Error::is_connect);
            if unreachable {
                // Nothing was asked: an outage must not spend the key's quota.
                self.limiter.release(key_id, slot).await;
            }
            let outcome = match sent {
                Ok(response) => self.classify(response, key, key_id).await,
                Err(error) => Attempt::Transient { reason: describe(&error), retry_after: None },
            };
            match outcome {
                Attempt::Done(result) => return result,
                Attempt::Transient { reason, retry_after } => {
                    tracing::warn!(attempt = attempt + 1, attempts, %reason, "VirusTotal request failed");
                    last_reason = reason;
                    if attempt + 1 < attempts {
                        self.clock.sleep(self.backoff(attempt, retry_after)).await;
                    }
                }
            }
        }
        if unreachable {
            Err(VtError::Unreachable { attempts, last: last_reason })
        } else {
            Err(VtError::Unavailable { attempts, last: last_reason })
        }
    }

    async fn classify(&self, response: Response, key: &ApiKey, key_id: KeyId) -> Attempt {
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        if status.is_success() {
            return match read_body(response, self.settings.max_response_bytes).await {
                Ok(body) => Attempt::Done(Ok(body)),
                Err(BodyError::TooLarge) => Attempt::Done(Err(VtError::InvalidResponse(format!(
                    "response larger than {} bytes",
                    self.settings.max_response_bytes
                )))),
                Err(BodyError::Read(reason)) => Attempt::Transient { reason, retry_after: None },
            };
        }
        let (code, message) = match read_body(response, MAX_ERROR_BODY).await {
            Ok(body) => match serde_json::from_slice::<wire::ErrorBody>(&body) {
                Ok(error) => (
                    upstream_message(&error.error.code, key.expose()),
                    upstream_message(&error.error.message, key.expose()),
                ),
                Err(_) => (String::new(), String::new()),
            },
            Err(_) => (String::new(), String::new()),
        };
        let error = match status {
            StatusCode::UNAUTHORIZED => VtError::WrongCredentials { message },
            StatusCode::FORBIDDEN => VtError::Forbidden { message },
            StatusCode::NOT_FOUND => VtError::NotFound,
            StatusCode::TOO_MANY_REQUESTS => {
                self.limiter.hold_back(key_id).await;
                VtError::QuotaExceeded { origin: QuotaOrigin::VirusTotal, retry_after }
            }
            StatusCode::REQUEST_TIMEOUT => {
                return Attempt::Transient { reason: format!("{status} {code}"), retry_after };
            }
            status if status.is_server_error() => {
                return Attempt::Transient { reason: format!("{status} {code} {message}"), retry_after };
            }
            status => VtError::Rejected { status: status.as_u16(), code, message },
        };
        Attempt::Done(Err(error))
    }

    /// Exponential back-off with jitter: between half and all of
    /// `base · 2^retry`, capped, and never less than the server's Retry-After
    /// (itself capped, so a hostile header cannot park the request).
    fn backoff(&self, retry: u32, retry_after: Option<Duration>) -> Duration {
        let max = self.settings.retry_max_delay;
        let ceiling = self.settings.retry_base_delay.saturating_mul(2u32.saturating_pow(retry)).min(max);
        let jittered = ceiling.mul_f64(rand::random_range(0.5..=1.0));
        jittered.max(retry_after.unwrap_or_default().min(max))
    }
}

enum BodyError {
    TooLarge,
    Read(String),
}

/// The body, read chunk by chunk so that no more than `limit` bytes are held.
async fn read_body(mut response: Response, limit: usize) -> Result<Bytes, BodyError> {
    if response.content_length().is_some_and(|length| length > limit as u64) {
        return Err(BodyError::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|error| BodyError::Read(describe(&error)))? {
        if body.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(body))
}

/// A transport error with its causes (the URL holds at most a hash, never the key).
fn describe(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;
    use crate::settings::VirusTotalSettings;

    fn api(base_url: &str) -> Api {
        let settings = VirusTotalSettings { base_url: base_url.to_owned(), ..Default::default() };
        Api::new(Arc::new(settings.check().unwrap()), Arc::default(), Arc::new(SystemClock), None).unwrap()
    }

    #[test]
    fn upload_urls_must_stay_on_virustotal_hosts() {
        let public = api("https://www.virustotal.com");
        for accepted in [
            "https://www.virustotal.com/_ah/upload/token/",
            "https://bigfiles.virustotal.com/_ah/upload/token",
        ] {
            assert!(public.check_upload_url(accepted).is_ok(), "{accepted}");
        }
        for refused in [
            "https://evil.example/_ah/upload/",
            "https://virustotal.com.evil.example/",
            "http://bigfiles.virustotal.com/",
            "https://www.virustotal.com:8443/",
            "https://user:pw@www.virustotal.com/",
            "not a url",
        ] {
            assert!(public.check_upload_url(refused).is_err(), "{refused}");
        }
        let local = api("http://127.0.0.1:8080");
        assert!(local.check_upload_url("http://127.0.0.1:8080/upload").is_ok());
        assert!(local.check_upload_url("http://127.0.0.2:8080/upload").is_err());
    }

    #[test]
    fn endpoints_are_under_the_base_path_and_encoded() {
        assert_eq!(
            api("https://proxy.example/vt/").endpoint(&["files", "ab"]).as_str(),
            "https://proxy.example/vt/api/v3/files/ab"
        );
        assert_eq!(
            api("https://www.virustotal.com").endpoint(&["analyses", "a/b=="]).as_str(),
            "https://www.virustotal.com/api/v3/analyses/a%2Fb=="
        );
    }
}
