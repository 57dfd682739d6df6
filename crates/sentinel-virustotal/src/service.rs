//! The VirusTotal step of the malware server: one [`VirusTotal::lookup`] per
//! request, combining the results dataset, single flight, the per-key rate
//! limiter and the API calls.
//!
//! How a lookup uses the client's key:
//! 1. A fresh report in the results dataset ([`ReportCache`]) is answered
//!    without any call and without needing a key: whoever paid for it, it is
//!    shared (SPEC §1.3).
//! 2. Otherwise the request joins the single flight for its hash. The first
//!    request leads: the upstream calls (report, then upload and analysis
//!    polls when allowed) are made with *its* key and count against *its*
//!    key's limits. Requests that arrive meanwhile, whatever their key, wait
//!    and receive the leader's report without spending anything.
//! 3. An outcome that concerns the leader's key rather than the file (wrong
//!    credentials, forbidden, quota) is not handed to followers: each of them
//!    then makes its own attempt with its own key, so one client's bad or
//!    exhausted key never fails another client's request, and one client's key
//!    is never used for another's request.
//! 4. When replicas share the dataset and a [`Coordination`], the request that
//!    leads a flight in its replica first claims the hash for the fleet. If
//!    another replica holds the claim, it waits for that replica's report to
//!    appear in the dataset instead of calling (bounded by the longest a flight
//!    may take), and takes the claim over if it is released without a report
//!    or its lease runs out (the leader died). Of the outcomes that are not a
//!    report, only VirusTotal's "not found" is shared across replicas, and only
//!    with requests that have no file to upload.
//! 5. If VirusTotal cannot be asked (quota, outage, no key) and the dataset has
//!    a stale report, the stale report is answered.
//!
//! The key itself is held only for the duration of the calls it pays for.

use std::sync::Arc;

use bytes::Bytes;

use crate::api::Api;
use crate::clock::{Clock, SystemClock};
use crate::coordination::{Claim, Coordination, FlightClaims, FlightState, SharedOutcome, blocking};
use crate::error::{ErrorKind, SettingsError, VtError};
use crate::key::{ApiKey, KeyHasher, KeyId};
use crate::metrics::{Metrics, MetricsSnapshot};
use crate::settings::{CheckedSettings, VirusTotalSettings};
use crate::single_flight::{self, Flights, Role};
use crate::verdict::{FileHash, Verdict, VerdictRule};
use crate::wire::AnalysisState;

/// An error of the results dataset, as its implementation reports it.
pub type CacheError = Box<dyn std::error::Error + Send + Sync>;

/// The results dataset (SPEC §1.3 item 2) as the client needs it. The server
/// backs it with the store. Methods are called on tokio's blocking threads, so
/// a synchronous database is fine.
pub trait ReportCache: Send + Sync + 'static {
    /// The stored report of `sha256`, fresh or not.
    fn lookup(&self, sha256: FileHash) -> Result<Option<Verdict>, CacheError>;
    /// Stores `verdict`, replacing any older report of the same hash.
    fn insert(&self, verdict: &Verdict) -> Result<(), CacheError>;
}

/// One VirusTotal step of a request.
#[derive(Debug)]
pub struct LookupRequest {
    /// The sample's SHA-256 (already checked against `file` by the server).
    pub sha256: FileHash,
    /// The requesting client's key; without one only stored reports are answered.
    pub api_key: Option<ApiKey>,
    /// The sample, uploaded if VirusTotal does not know it and uploads are enabled.
    pub file: Option<Bytes>,
}

/// Where a lookup's report came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A fresh report from the results dataset: no call was made.
    Dataset,
    /// A report stored before the freshness limit, because VirusTotal could not be asked.
    StaleDataset,
    /// VirusTotal's file report, fetched with this request's key.
    FileReport,
    /// The analysis of this request's upload, made with this request's key.
    Upload,
    /// Fetched by a concurrent request for the same hash, with that request's key.
    SharedFlight,
}

/// A lookup's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Lookup {
    pub verdict: Verdict,
    pub source: Source,
}

/// What a flight publishes to its followers.
type FlightOutcome = Result<(Verdict, Source), VtError>;

/// How often a request follows a flight whose outcome it cannot use before
/// it makes its own call outside single flight.
const MAX_FOLLOWS: usize = 3;

/// The VirusTotal client of the malware server. Cheap to clone; clones share
/// limits, flights and metrics.
#[derive(Clone)]
pub struct VirusTotal {
    inner: Arc<Inner>,
}

struct Inner {
    settings: Arc<CheckedSettings>,
    hasher: KeyHasher,
    cache: Arc<dyn ReportCache>,
    api: Api,
    flights: Arc<Flights<FileHash, FlightOutcome>>,
    /// Claims of flights across replicas; `None` when this process is alone.
    claims: Option<Arc<dyn FlightClaims>>,
    metrics: Arc<Metrics>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for VirusTotal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirusTotal")
            .field("base_url", &self.inner.settings.base_url.as_str())
            .finish_non_exhaustive()
    }
}

impl VirusTotal {
    /// A client with the system clock.
    pub fn new(
        settings: &VirusTotalSettings,
        hasher: KeyHasher,
        cache: Arc<dyn ReportCache>,
    ) -> Result<VirusTotal, SettingsError> {
        VirusTotal::with_clock(settings, hasher, cache, Arc::new(SystemClock))
    }

    /// A client with the given time source (tests run limits in virtual time).
    pub fn with_clock(
        settings: &VirusTotalSettings,
        hasher: KeyHasher,
        cache: Arc<dyn ReportCache>,
        clock: Arc<dyn Clock>,
    ) -> Result<VirusTotal, SettingsError> {
        VirusTotal::build(settings, hasher, cache, None, clock)
    }

    /// A client that is one replica of several sharing `cache`: flights and each
    /// key's limits are coordinated through `coordination` (module documentation,
    /// item 4), so the fleet calls once per hash and spends each key once.
    pub fn with_coordination(
        settings: &VirusTotalSettings,
        hasher: KeyHasher,
        cache: Arc<dyn ReportCache>,
        coordination: Coordination,
        clock: Arc<dyn Clock>,
    ) -> Result<VirusTotal, SettingsError> {
        VirusTotal::build(settings, hasher, cache, Some(coordination), clock)
    }

    fn build(
        settings: &VirusTotalSettings,
        hasher: KeyHasher,
        cache: Arc<dyn ReportCache>,
        coordination: Option<Coordination>,
        clock: Arc<dyn Clock>,
    ) -> Result<VirusTotal, SettingsError> {
        let settings = Arc::new(settings.check()?);
        let metrics = Arc::new(Metrics::default());
        let (claims, ledger) = match coordination {
            Some(Coordination { claims, ledger }) => (Some(claims), Some(ledger)),
            None => (None, None),
        };
        let api = Api::new(Arc::clone(&settings), Arc::clone(&metrics), Arc::clone(&clock), ledger)?;
        let flights = Arc::new(Flights::new());
        Ok(VirusTotal {
            inner: Arc::new(Inner { settings, hasher, cache, api, flights, claims, metrics, clock }),
        })
    }

    /// The report of `request.sha256`: from the dataset when fresh, otherwise
    /// from VirusTotal with the request's key (see the module documentation).
    /// Reports obtained from VirusTotal are stored in the dataset before this
    /// returns. Cancelling the returned future does not cancel an upstream
    /// call other requests may be waiting on.
    pub async fn lookup(&self, request: LookupRequest) -> Result<Lookup, VtError> {
        let result = self.inner.lookup(request).await;
        if let Err(error) = &result {
            self.inner.metrics.error(error.kind());
        }
        result
    }

    /// The rule turning a verdict into `y` and a label, from the settings.
    pub fn verdict_rule(&self) -> &VerdictRule {
        &self.inner.settings.verdict
    }

    /// The id under which `key` is rate-limited and may be given a tier.
    pub fn key_id(&self, key: &ApiKey) -> KeyId {
        self.inner.hasher.key_id(key)
    }

    pub fn metrics(&self) -> MetricsSnapshot {
        self.inner.metrics.snapshot()
    }
}

impl Inner {
    async fn lookup(self: &Arc<Self>, request: LookupRequest) -> Result<Lookup, VtError> {
        let LookupRequest { sha256, api_key, file } = request;
        let stored = self.stored(sha256).await;
        if let Some(verdict) = &stored
            && self.is_fresh(verdict)
        {
            self.metrics.cache_hit();
            return Ok(Lookup { verdict: verdict.clone(), source: Source::Dataset });
        }
        let fetched = match api_key {
            Some(key) => self.fetch(sha256, key, file).await,
            None => Err(VtError::MissingKey),
        };
        match (fetched, stored) {
            (Ok(lookup), _) => Ok(lookup),
            (Err(error), Some(verdict)) if can_answer_stale(&error) => {
                tracing::warn!(%sha256, %error, "VirusTotal not asked; answering a stale stored report");
                self.metrics.error(error.kind());
                self.metrics.stale_answer();
                Ok(Lookup { verdict, source: Source::StaleDataset })
            }
            (Err(error), _) => Err(error),
        }
    }

    /// Single flight around [`Inner::call`].
    async fn fetch(
        self: &Arc<Self>,
        sha256: FileHash,
        key: ApiKey,
        file: Option<Bytes>,
    ) -> Result<Lookup, VtError> {
        let key_id = self.hasher.key_id(&key);
        let can_upload = self.settings.upload_enabled && file.is_some();
        for _ in 0..MAX_FOLLOWS {
            match self.flights.join(sha256) {
                Role::Leader(flight) => {
                    let receiver = flight.subscribe();
                    let inner = Arc::clone(self);
                    // The calls run in their own task so that followers get
                    // the outcome even if the leader's request is cancelled.
                    tokio::spawn(async move {
                        let outcome = inner.lead(sha256, &key, key_id, file).await;
                        flight.complete(outcome);
                    });
                    return match single_flight::outcome(receiver).await {
                        Some(Ok((verdict, source))) => Ok(Lookup { verdict, source }),
                        Some(Err(error)) => Err(error),
                        None => {
                            Err(VtError::Interrupted("the lookup task ended without an outcome".to_owned()))
                        }
                    };
                }
                Role::Follower(receiver) => match single_flight::outcome(receiver).await {
                    Some(Ok((verdict, _))) => {
                        self.metrics.single_flight_saved();
                        return Ok(Lookup { verdict, source: Source::SharedFlight });
                    }
                    // Say nothing about this request's key, or the leader had
                    // no file to upload where this request has one: try again.
                    Some(Err(error))
                        if error.is_about_the_key() || (error == VtError::NotFound && can_upload) => {}
                    Some(Err(error)) => {
                        self.metrics.single_flight_saved();
                        return Err(error);
                    }
                    None => {}
                },
            }
        }
        let (verdict, source) = self.call(sha256, &key, key_id, file).await?;
        Ok(Lookup { verdict, source })
    }

    /// The flight of this replica's requests for `sha256`: across replicas when
    /// they share claims, otherwise the calls themselves.
    async fn lead(
        self: &Arc<Self>,
        sha256: FileHash,
        key: &ApiKey,
        key_id: KeyId,
        file: Option<Bytes>,
    ) -> Result<(Verdict, Source), VtError> {
        let Some(claims) = self.claims.clone() else { return self.call(sha256, key, key_id, file).await };
        let can_upload = self.settings.upload_enabled && file.is_some();
        let deadline = self.clock.now().saturating_add(self.longest_flight());
        loop {
            let now = self.clock.now();
            let claimed = blocking({
                let claims = Arc::clone(&claims);
                move || claims.claim(sha256, now)
            })
            .await;
            match claimed {
                Ok(Claim::Claimed) => return self.call_claimed(&claims, sha256, key, key_id, file).await,
                Ok(Claim::HeldElsewhere) => {}
                Err(error) => {
                    // Without the claims the replica still makes one call per hash
                    // itself: better than failing every lookup while they are down.
                    tracing::warn!(%sha256, %error, "flight claims unavailable; calling without a claim");
                    self.metrics.error(ErrorKind::Cache);
                    return self.call(sha256, key, key_id, file).await;
                }
            }
            if let Some(outcome) = self.follow_elsewhere(&claims, sha256, can_upload, deadline).await {
                return outcome;
            }
        }
    }

    /// Waits for the flight another replica leads: `Some` outcome to answer, or
    /// `None` when the flight ended without one this request can use (this
    /// replica should then claim the hash itself).
    async fn follow_elsewhere(
        &self,
        claims: &Arc<dyn FlightClaims>,
        sha256: FileHash,
        can_upload: bool,
        deadline: std::time::Duration,
    ) -> Option<Result<(Verdict, Source), VtError>> {
        let poll = (claims.lease() / 10).clamp(MIN_CLAIM_POLL, MAX_CLAIM_POLL);
        loop {
            if self.clock.now() >= deadline {
                return Some(Err(VtError::Interrupted(
                    "another replica's lookup of this hash did not end in time".to_owned(),
                )));
            }
            self.clock.sleep(poll).await;
            if let Some(verdict) = self.stored(sha256).await.filter(|verdict| self.is_fresh(verdict)) {
                self.metrics.single_flight_saved();
                return Some(Ok((verdict, Source::SharedFlight)));
            }
            let now = self.clock.now();
            let state = blocking({
                let claims = Arc::clone(claims);
                move || claims.state(sha256, now)
            })
            .await;
            match state {
                Ok(FlightState::Held) => {}
                Ok(FlightState::Released(Some(SharedOutcome::NotFound))) if !can_upload => {
                    self.metrics.single_flight_saved();
                    return Some(Err(VtError::NotFound));
                }
                Ok(FlightState::Released(_) | FlightState::Vacant) => return None,
                Err(error) => {
                    tracing::warn!(%sha256, %error, "flight claims unavailable while waiting on another replica");
                    self.metrics.error(ErrorKind::Cache);
                    return None;
                }
            }
        }
    }

    /// The calls under this replica's claim on `sha256`: the claim is renewed
    /// while they run and released with the outcome other replicas may share.
    async fn call_claimed(
        self: &Arc<Self>,
        claims: &Arc<dyn FlightClaims>,
        sha256: FileHash,
        key: &ApiKey,
        key_id: KeyId,
        file: Option<Bytes>,
    ) -> Result<(Verdict, Source), VtError> {
        // Aborted when dropped: however the calls end (even by a panic), renewing stops.
        let renewal = Renewal(tokio::spawn(renew_claim(Arc::clone(claims), Arc::clone(&self.clock), sha256)));
        let outcome = self.call(sha256, key, key_id, file).await;
        drop(renewal);
        let shared = match &outcome {
            Err(VtError::NotFound) => Some(SharedOutcome::NotFound),
            _ => None,
        };
        let now = self.clock.now();
        let released = blocking({
            let claims = Arc::clone(claims);
            move || claims.release(sha256, now, shared)
        })
        .await;
        if let Err(error) = released {
            // The lease runs out by itself; others wait until then.
            tracing::warn!(%sha256, %error, "releasing a flight claim failed");
            self.metrics.error(ErrorKind::Cache);
        }
        outcome
    }

    /// Longest a flight of these settings can take: every attempt of a report, an
    /// upload (through an upload URL) and the analysis polls, each with its
    /// back-off, plus a queue wait. Replicas waiting on another's flight give up
    /// after this.
    fn longest_flight(&self) -> std::time::Duration {
        let settings = &self.settings;
        let attempts = settings.max_retries + 1;
        let per_request =
            settings.request_timeout.saturating_add(settings.retry_max_delay).saturating_mul(attempts);
        let mut longest = per_request.saturating_mul(3).saturating_add(settings.max_queue_wait);
        if settings.upload_enabled {
            longest = longest
                .saturating_add(settings.upload_timeout.saturating_mul(attempts))
                .saturating_add(settings.analysis_timeout)
                .saturating_add(per_request);
        }
        longest
    }

    /// The upstream calls for one hash with one key, and storing the result.
    async fn call(
        self: &Arc<Self>,
        sha256: FileHash,
        key: &ApiKey,
        key_id: KeyId,
        file: Option<Bytes>,
    ) -> Result<(Verdict, Source), VtError> {
        // A flight that ended between this request's dataset check and its
        // joining may have stored the report: look again before spending quota.
        if let Some(verdict) = self.stored(sha256).await.filter(|verdict| self.is_fresh(verdict)) {
            return Ok((verdict, Source::Dataset));
        }
        let (verdict, source) = match self.api.file_report(key, key_id, sha256).await {
            Ok(verdict) => (verdict, Source::FileReport),
            Err(VtError::NotFound) => match file {
                Some(file) if self.settings.upload_enabled => {
                    (self.upload(sha256, key, key_id, file).await?, Source::Upload)
                }
                _ => return Err(VtError::NotFound),
            },
            Err(error) => return Err(error),
        };
        self.store(&verdict).await;
        Ok((verdict, source))
    }

    async fn upload(
        &self,
        sha256: FileHash,
        key: &ApiKey,
        key_id: KeyId,
        file: Bytes,
    ) -> Result<Verdict, VtError> {
        let size = file.len() as u64;
        if size > self.settings.max_upload_bytes {
            return Err(VtError::FileTooLarge { size, limit: self.settings.max_upload_bytes });
        }
        let analysis_id = self.api.upload(key, key_id, sha256, file).await?;
        tracing::info!(%sha256, key_id = %key_id, "uploaded to VirusTotal; polling its analysis");
        let deadline = self.clock.now().saturating_add(self.settings.analysis_timeout);
        loop {
            self.clock.sleep(self.settings.analysis_poll_interval).await;
            match self.api.analysis(key, key_id, &analysis_id, sha256).await? {
                AnalysisState::Completed(verdict) => return Ok(verdict),
                AnalysisState::Pending if self.clock.now() >= deadline => {
                    return Err(VtError::AnalysisTimeout(self.settings.analysis_timeout));
                }
                AnalysisState::Pending => {}
            }
        }
    }

    fn is_fresh(&self, verdict: &Verdict) -> bool {
        verdict.is_fresh(self.api.now_unix(), self.settings.freshness)
    }

    async fn stored(&self, sha256: FileHash) -> Option<Verdict> {
        let cache = Arc::clone(&self.cache);
        let error = match tokio::task::spawn_blocking(move || cache.lookup(sha256)).await {
            // A row under the wrong hash is a store bug; it is not answered.
            Ok(Ok(stored)) => return stored.filter(|verdict| verdict.sha256 == sha256),
            Ok(Err(error)) => error.to_string(),
            Err(error) => error.to_string(),
        };
        tracing::warn!(%sha256, %error, "results dataset lookup failed; going on without it");
        self.metrics.error(ErrorKind::Cache);
        None
    }

    async fn store(&self, verdict: &Verdict) {
        let cache = Arc::clone(&self.cache);
        let owned = verdict.clone();
        let error = match tokio::task::spawn_blocking(move || cache.insert(&owned)).await {
            Ok(Ok(())) => return,
            Ok(Err(error)) => error.to_string(),
            Err(error) => error.to_string(),
        };
        tracing::warn!(sha256 = %verdict.sha256, %error, "storing a VirusTotal report failed");
        self.metrics.error(ErrorKind::Cache);
    }
}

/// Polls of another replica's flight: often enough to answer soon after its
/// report is stored, seldom enough to cost the database little (one replica
/// polls for all its requests of the hash).
const MIN_CLAIM_POLL: std::time::Duration = std::time::Duration::from_millis(50);
const MAX_CLAIM_POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// The task renewing a claim, stopped when this is dropped.
struct Renewal(tokio::task::JoinHandle<()>);

impl Drop for Renewal {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Renews this replica's claim on `sha256` every third of a lease until aborted.
async fn renew_claim(claims: Arc<dyn FlightClaims>, clock: Arc<dyn Clock>, sha256: FileHash) {
    let every = claims.lease() / 3;
    loop {
        clock.sleep(every).await;
        let now = clock.now();
        let renewed = blocking({
            let claims = Arc::clone(&claims);
            move || claims.renew(sha256, now)
        })
        .await;
        match renewed {
            Ok(true) => {}
            Ok(false) => {
                // Another replica took the expired claim: the calls go on (their
                // report is stored either way) but there is nothing left to renew.
                tracing::warn!(%sha256, "a flight claim was lost while its calls ran");
                return;
            }
            Err(error) => tracing::warn!(%sha256, %error, "renewing a flight claim failed"),
        }
    }
}

/// Whether a failure to ask VirusTotal may be answered with a stale report:
/// yes when VirusTotal could not be asked or did not answer, no when it
/// answered something that contradicts the stored report.
fn can_answer_stale(error: &VtError) -> bool {
    !matches!(error, VtError::NotFound | VtError::InvalidHash)
}
