//! The VirusTotal step of commands 3, 4, 5 and 6: what VirusTotal says about
//! the sample, asked with the requesting client's own API key.
//!
//! [`VirusTotalStep`] puts the `sentinel-virustotal` client in front of the
//! results dataset kept in the store ([`StoreDataset`]), so its rules hold
//! across every connection: a hash any client already paid for is answered
//! from the store without a call while fresh, concurrent requests for one
//! unknown hash make one call, and each key is held to its own rate limits.
//! Every report fetched from VirusTotal is also turned into a label of the
//! labelled-samples dataset by the label rule of `docs/virustotal.md`: that is
//! how the training data grows by itself from what clients send. The key lives
//! only in the lookup of its own request (never stored, never logged), and
//! every VirusTotal error becomes a protocol [`Reason`].
//!
//! When replicas share the store (PostgreSQL), they share the VirusTotal economy too
//! ([`StoreCoordination`]): one replica at a time calls for a hash while the others wait for
//! its report, and each key's rate limits and daily quota count once for the fleet.

use std::sync::Arc;
use std::time::Duration;

use std::collections::HashMap;

use bytes::Bytes;
use sentinel_protocol::{Analysis, ErrorDetail, Reason, Request};
use sentinel_store::{FlightClaim, KeyAdmission, KeyLimits, LabelSource, Store, StoreError, VtReportRow};
use sentinel_virustotal::{
    Admission, ApiKey, CacheError, Claim, Coordination, EngineCategory, FileHash, FlightClaims, FlightState,
    KeyHasher, KeyId, Label, Lookup, LookupRequest, MetricsSnapshot, QuotaLedger, ReportCache, SettingsError,
    SharedOutcome, Slot, Source, SystemClock, TierLimits, Verdict, VerdictRule, VirusTotal,
    VirusTotalSettings, VtError,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::analysis::{StepDetail, StepScore, Submission};

/// Where the key-hash secret lives inside the data directory: it keys the ids
/// of clients' API keys (rate limits, `key_tiers`), so it must outlive restarts.
pub const VT_KEY_SECRET_FILE: &str = "virustotal-key-secret";

/// The VirusTotal step: the client, its rate limits and flights, shared by
/// every connection of the server.
#[derive(Debug, Clone)]
pub struct VirusTotalStep {
    client: VirusTotal,
    /// Time an upload and the polling of its analysis may take; `None` when
    /// uploads are off.
    upload_time: Option<Duration>,
}

/// What the VirusTotal step did since the server started, for `GET /status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirusTotalReport {
    /// Lookups answered from the results dataset with a fresh report, without a call.
    pub cache_hits: u64,
    /// HTTP requests sent to VirusTotal (retries and analysis polls included).
    pub calls_made: u64,
    /// Lookups that needed no call of their own: dataset hits, plus requests
    /// answered by a concurrent request's call for the same hash.
    pub calls_saved: u64,
    /// Every counter of the client, errors by kind included.
    pub client: MetricsSnapshot,
}

/// Detection names listed in a [`VirusTotalSummary`]: the most common ones.
const TOP_DETECTION_NAMES: usize = 5;

/// What a VirusTotal report says, in short: the engines' counts, the score and label of
/// docs/virustotal.md, and the detection names most engines agree on.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub(crate) struct VirusTotalSummary {
    /// Engines that gave a verdict (malicious + suspicious + undetected + harmless).
    pub engines: u32,
    pub malicious: u32,
    pub suspicious: u32,
    pub undetected: u32,
    pub harmless: u32,
    /// The score of docs/virustotal.md; `null` under `min_engines` engines.
    pub score: Option<f64>,
    /// The consensus by the label rule of docs/virustotal.md: `malicious`, `benign` or
    /// `unlabelled` (too unclear to call).
    #[schema(value_type = String)]
    pub label: Label,
    /// The detection names most engines gave (malicious or suspicious), most common first.
    pub detection_names: Vec<DetectionName>,
    /// When VirusTotal last analysed the file (Unix seconds).
    pub last_analysis_date: Option<i64>,
    /// When Sentinel obtained the report (Unix seconds).
    pub fetched_at: i64,
    /// Where this answer's report came from: `dataset` (stored, fresh), `stale_dataset`,
    /// `file_report` (asked now), `upload`, `shared_flight` (another request's call); `null`
    /// for a stored report read back.
    #[schema(value_type = Option<String>)]
    pub source: Option<&'static str>,
}

/// A detection name and how many engines gave it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub(crate) struct DetectionName {
    pub name: String,
    pub engines: u32,
}

impl VirusTotalSummary {
    /// The summary of `verdict` under `rule`, fetched from `source` (when known).
    pub fn new(verdict: &Verdict, rule: &VerdictRule, source: Option<Source>) -> VirusTotalSummary {
        let mut names: HashMap<&str, u32> = HashMap::new();
        for engine in &verdict.engines {
            if matches!(engine.category, EngineCategory::Malicious | EngineCategory::Suspicious)
                && let Some(name) = engine.result.as_deref().filter(|name| !name.is_empty())
            {
                *names.entry(name).or_default() += 1;
            }
        }
        let mut detection_names: Vec<DetectionName> = names
            .into_iter()
            .map(|(name, engines)| DetectionName { name: name.to_owned(), engines })
            .collect();
        detection_names.sort_by(|a, b| b.engines.cmp(&a.engines).then_with(|| a.name.cmp(&b.name)));
        detection_names.truncate(TOP_DETECTION_NAMES);
        let stats = &verdict.stats;
        VirusTotalSummary {
            engines: stats.engines_with_verdict(),
            malicious: stats.malicious,
            suspicious: stats.suspicious,
            undetected: stats.undetected,
            harmless: stats.harmless,
            score: verdict.score(rule),
            label: verdict.label(rule),
            detection_names,
            last_analysis_date: verdict.last_analysis_date,
            fetched_at: verdict.fetched_at,
            source: source.map(|source| match source {
                Source::Dataset => "dataset",
                Source::StaleDataset => "stale_dataset",
                Source::FileReport => "file_report",
                Source::Upload => "upload",
                Source::SharedFlight => "shared_flight",
            }),
        }
    }

    /// The summary of a report stored in the results dataset (`Verdict` JSON), under `rule`;
    /// `None` when the stored JSON is in another form (imported from elsewhere).
    pub fn of_stored(row: &VtReportRow, rule: &VerdictRule) -> Option<VirusTotalSummary> {
        let verdict: Verdict = serde_json::from_str(&row.report_json).ok()?;
        Some(VirusTotalSummary::new(&verdict, rule, None))
    }
}

impl VirusTotalStep {
    /// The rule that scores and labels reports.
    pub(crate) fn verdict_rule(&self) -> &VerdictRule {
        self.client.verdict_rule()
    }

    /// The step over `store`'s results dataset. `hasher` turns keys into the
    /// ids rate limits are kept under; keep its secret stable across restarts
    /// (`KeyHasher::load_or_create`).
    pub fn new(
        settings: &VirusTotalSettings,
        hasher: KeyHasher,
        store: Arc<Store>,
    ) -> Result<VirusTotalStep, SettingsError> {
        let dataset = Arc::new(StoreDataset { store: Arc::clone(&store), rule: settings.verdict.clone() });
        let client = if store.is_shared() {
            let shared = Arc::new(StoreCoordination::new(store, settings.shared_flight_lease));
            let coordination = Coordination { claims: shared.clone(), ledger: shared };
            VirusTotal::with_coordination(settings, hasher, dataset, coordination, Arc::new(SystemClock))?
        } else {
            VirusTotal::new(settings, hasher, dataset)?
        };
        // Only the sum of the two durations can overflow.
        let upload_time = settings
            .upload_enabled
            .then(|| settings.upload_timeout.checked_add(settings.analysis_timeout).unwrap_or(Duration::MAX));
        Ok(VirusTotalStep { client, upload_time })
    }

    /// One VirusTotal lookup, as a request's step makes it (module documentation).
    pub async fn lookup(&self, request: LookupRequest) -> Result<Lookup, VtError> {
        self.client.lookup(request).await
    }

    pub fn report(&self) -> VirusTotalReport {
        let client = self.client.metrics();
        VirusTotalReport {
            cache_hits: client.cache_hits,
            calls_made: client.upstream_requests,
            calls_saved: client.cache_hits + client.single_flight_saved,
            client,
        }
    }
}

/// Time the request needs on top of the server's analysis timeout: an upload's
/// and its analysis's, when this request may upload its executable.
pub(crate) fn extra_time(step: Option<&VirusTotalStep>, submission: &Submission) -> Duration {
    let uploads = submission.steps.contains(&Analysis::VirusTotal) && !submission.executable.is_empty();
    match step.and_then(|step| step.upload_time) {
        Some(upload_time) if uploads => upload_time,
        _ => Duration::ZERO,
    }
}

/// The client's API key from field `[2]`, owned so it can outlive the request
/// (which is moved on to the sample recording); `None` when not sent.
pub(crate) fn api_key(request: &Request) -> Result<Option<ApiKey>, ErrorDetail> {
    let malformed = |message: String| ErrorDetail::new(Reason::Malformed).with_message(message);
    let Some(key) = request.api_key().map_err(|error| malformed(error.to_string()))? else {
        return Ok(None);
    };
    ApiKey::new(key.expose()).map(Some).map_err(|error| malformed(error.to_string()))
}

/// Runs the step for the sample `sha256` (lower-case hex, already checked
/// against `executable`). The executable, when sent, is what an upload would
/// send, if the settings allow uploads. The detail is the report's summary.
pub(crate) async fn run(
    step: &VirusTotalStep,
    sha256: &str,
    api_key: Option<ApiKey>,
    executable: Bytes,
) -> Result<(StepScore, StepDetail), ErrorDetail> {
    let sha256 = FileHash::parse(sha256).map_err(|error| detail(&error))?;
    let file = Some(executable).filter(|bytes| !bytes.is_empty());
    let lookup =
        step.client.lookup(LookupRequest { sha256, api_key, file }).await.map_err(|error| detail(&error))?;
    let verdict = &lookup.verdict;
    let engines = verdict.stats.engines_with_verdict();
    let Some(score) = verdict.score(step.client.verdict_rule()) else {
        // Too few engines looked at the file for the ratio to mean anything:
        // no number is better than an invented one.
        return Err(ErrorDetail::new(Reason::Unavailable).with_step(Analysis::VirusTotal).with_message(format!(
            "VirusTotal's report has {engines} engines with a verdict, fewer than the {} needed for a score",
            step.client.verdict_rule().min_engines
        )));
    };
    let summary = VirusTotalSummary::new(verdict, step.client.verdict_rule(), Some(lookup.source));
    let score = StepScore {
        analysis: Analysis::VirusTotal,
        score,
        model_version: format!("virustotal report fetched at {}", verdict.fetched_at),
        support: Some(engines),
    };
    Ok((score, StepDetail::VirusTotal(summary)))
}

/// The protocol's answer to a VirusTotal failure. Messages come from
/// `VtError`, whose upstream text has the key removed.
fn detail(error: &VtError) -> ErrorDetail {
    let reason = match error {
        VtError::InvalidHash | VtError::InvalidKey => Reason::Malformed,
        VtError::MissingKey => Reason::MissingField,
        VtError::WrongCredentials { .. } | VtError::Forbidden { .. } => Reason::WrongCredentials,
        VtError::NotFound => Reason::NotFound,
        VtError::QuotaExceeded { .. } => Reason::QuotaExceeded,
        VtError::FileTooLarge { .. } => Reason::TooLarge,
        VtError::AnalysisTimeout(_) => Reason::Timeout,
        VtError::Rejected { .. }
        | VtError::Unavailable { .. }
        | VtError::Unreachable { .. }
        | VtError::InvalidResponse(_)
        | VtError::Interrupted(_)
        | VtError::SharedState(_) => Reason::Unavailable,
    };
    ErrorDetail::new(reason).with_step(Analysis::VirusTotal).with_message(error.to_string())
}

/// The results dataset as the VirusTotal client sees it: the store's
/// `vt_reports` table, holding each report as the client's `Verdict` JSON.
struct StoreDataset {
    store: Arc<Store>,
    /// The label rule, applied to each report as it is stored.
    rule: VerdictRule,
}

impl ReportCache for StoreDataset {
    fn lookup(&self, sha256: FileHash) -> Result<Option<Verdict>, CacheError> {
        let Some(row) = self.store.vt_report(&sha256.to_string())? else { return Ok(None) };
        Ok(Some(serde_json::from_str(&row.report_json)?))
    }

    /// Stores the report, then labels the sample from it. The client calls this
    /// only for reports it fetched, so each new report labels its sample once; an
    /// analyst's manual label is never replaced (the store's precedence rule).
    fn insert(&self, verdict: &Verdict) -> Result<(), CacheError> {
        self.store.put_vt_report(&VtReportRow {
            sha256: verdict.sha256.to_string(),
            last_analysis_date: verdict.last_analysis_date,
            fetched_at: verdict.fetched_at,
            malicious: verdict.stats.malicious,
            suspicious: verdict.stats.suspicious,
            undetected: verdict.stats.undetected,
            harmless: verdict.stats.harmless,
            report_json: serde_json::to_string(verdict)?,
        })?;
        label_from_report(&self.store, verdict, &self.rule)?;
        Ok(())
    }
}

/// The VirusTotal economy replicas sharing the store agree on: flight claims held under this
/// replica's id, and each key's limits, in the store's `vt_economy` tables.
struct StoreCoordination {
    store: Arc<Store>,
    /// This replica's id: random per process, so a restarted replica never mistakes the claims
    /// of its previous life for its own.
    replica: String,
    lease: Duration,
}

impl StoreCoordination {
    fn new(store: Arc<Store>, lease: Duration) -> StoreCoordination {
        let replica = format!("replica-{}-{:016x}", std::process::id(), rand::random::<u64>());
        StoreCoordination { store, replica, lease }
    }
}

/// Milliseconds since the epoch, as the store keeps times.
fn millis(time: Duration) -> i64 {
    i64::try_from(time.as_millis()).unwrap_or(i64::MAX)
}

fn duration(millis: i64) -> Duration {
    Duration::from_millis(u64::try_from(millis).unwrap_or(0))
}

impl FlightClaims for StoreCoordination {
    fn lease(&self) -> Duration {
        self.lease
    }

    fn claim(&self, sha256: FileHash, now: Duration) -> Result<Claim, CacheError> {
        let claim = self.store.vt_flight_claim(
            &sha256.to_string(),
            &self.replica,
            millis(now),
            millis(self.lease),
        )?;
        Ok(match claim {
            FlightClaim::Claimed => Claim::Claimed,
            FlightClaim::HeldBy { .. } => Claim::HeldElsewhere,
        })
    }

    fn renew(&self, sha256: FileHash, now: Duration) -> Result<bool, CacheError> {
        Ok(self.store.vt_flight_renew(&sha256.to_string(), &self.replica, millis(now), millis(self.lease))?)
    }

    fn release(
        &self,
        sha256: FileHash,
        now: Duration,
        outcome: Option<SharedOutcome>,
    ) -> Result<(), CacheError> {
        let outcome = outcome.map(SharedOutcome::as_str);
        self.store.vt_flight_release(&sha256.to_string(), &self.replica, millis(now), outcome)?;
        Ok(())
    }

    fn state(&self, sha256: FileHash, now: Duration) -> Result<FlightState, CacheError> {
        Ok(match self.store.vt_flight(&sha256.to_string(), millis(now))? {
            sentinel_store::FlightState::Held { .. } => FlightState::Held,
            // An outcome this version does not know is no outcome: the waiter claims for itself.
            sentinel_store::FlightState::Released { outcome } => {
                FlightState::Released(outcome.as_deref().and_then(SharedOutcome::parse))
            }
            sentinel_store::FlightState::Free | sentinel_store::FlightState::Expired => FlightState::Vacant,
        })
    }
}

impl QuotaLedger for StoreCoordination {
    fn admit(
        &self,
        key: KeyId,
        limits: TierLimits,
        now: Duration,
        max_wait: Duration,
    ) -> Result<Admission, CacheError> {
        let limits = KeyLimits { per_minute: limits.requests_per_minute, per_day: limits.requests_per_day };
        let admission = self.store.vt_key_admit(&key.to_string(), limits, millis(now), millis(max_wait))?;
        Ok(match admission {
            KeyAdmission::Granted { at_ms, day, wait_ms } => {
                let slot = Slot { at: duration(at_ms), day: u64::try_from(day).unwrap_or(0) };
                if wait_ms <= 0 { Admission::Now(slot) } else { Admission::After(slot, duration(wait_ms)) }
            }
            KeyAdmission::Refused { retry_after_ms } => Admission::Refused(duration(retry_after_ms)),
        })
    }

    fn release(&self, key: KeyId, slot: Slot) -> Result<(), CacheError> {
        let day = i64::try_from(slot.day).unwrap_or(i64::MAX);
        Ok(self.store.vt_key_release(&key.to_string(), millis(slot.at), day)?)
    }

    fn hold_back(&self, key: KeyId, until: Duration) -> Result<(), CacheError> {
        Ok(self.store.vt_key_hold(&key.to_string(), millis(until))?)
    }
}

/// Labels a report's sample by the label rule of `docs/virustotal.md`: y = 1, y = 0, or no
/// label when the report is not clear enough. An analyst's manual label is never replaced (the
/// store's precedence rule). `true` when a label was written. Used for each report fetched
/// live and each one imported with `sentinel vt-results import`.
pub fn label_from_report(store: &Store, verdict: &Verdict, rule: &VerdictRule) -> Result<bool, StoreError> {
    let y = match verdict.label(rule) {
        Label::Malicious => 1,
        Label::Benign => 0,
        Label::Unlabelled => return Ok(false),
    };
    let stats = &verdict.stats;
    let note = format!(
        "VirusTotal: {} malicious, {} suspicious of {} engines",
        stats.malicious,
        stats.suspicious,
        stats.engines_with_verdict()
    );
    store.set_label(&verdict.sha256.to_string(), y, LabelSource::VirusTotal, Some(&note))
}
