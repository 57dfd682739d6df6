//! The malware analysis over HTTP (docs/malware-api.md): `POST /api/v1/files` analyses a file
//! with the same pipeline as the protocol (`analysis`: the same steps, order, limits, list
//! check, recorded verdicts) and answers JSON with what each step found;
//! `GET /api/v1/files/{sha256}` says what the store knows about a hash, without the file.
//!
//! The body is the file itself (`application/octet-stream`) or a `multipart/form-data` form
//! with a `file` part and an optional `report` part (the behaviour report the protocol takes in
//! field `[3]`). It is read as it arrives (the file hashed meanwhile, as the protocol's reader
//! does), within the protocol's limits: each part at most `max_field_size`, all of it at most
//! `max_frame_size`, and every byte above 64 KiB reserved from the `frame_memory_budget` the
//! protocol's frames share (`busy` when it is spent), so uploads over HTTP cannot take more
//! memory than protocol frames can. A request counts against its client's limits like a
//! protocol request. The VirusTotal key comes in the `X-VirusTotal-Key` header and goes, like
//! field `[2]`, only to VirusTotal: never logged, never stored.
//!
//! Failures are the protocol's reasons as JSON — `{"error", "reason", "step"}` — with an HTTP
//! status per reason ([`status_of`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::extract::multipart::{Field, MultipartError};
use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, FromRequest, Multipart, Path, Query, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use sentinel_api::{ApiError, Caller};
use sentinel_behaviour::{FamilyGuess, NgramContribution};
use sentinel_protocol::{Analysis, ErrorDetail, Reason, Reservation, Sha256Hash, UNCOUNTED_FRAME_BYTES};
use sentinel_static::FeatureContribution;
use sentinel_store::{LabelledSample, ListEntry, SampleRecord, VerdictRecord, YaraMatchRecord};
use sentinel_transport::ClientKey;
use sentinel_virustotal::{ApiKey, VerdictRule};
use sentinel_yara::RuleMatch;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::{IntoParams, ToSchema};

use crate::analysis::{COMBINED_RULE, Findings, StepDetail, Submission, VirusTotalSummary};
use crate::http::rfc3339;
use crate::state::Shared;

/// The header that carries the client's VirusTotal API key.
pub(crate) const VIRUSTOTAL_KEY_HEADER: &str = "x-virustotal-key";

/// The name the status counters give requests of `POST /api/v1/files`.
const STATUS_COMMAND: &str = "http_files";

/// Verdicts listed by `GET /api/v1/files/{sha256}` by default, and at most.
const DEFAULT_VERDICTS: usize = 100;
const MAX_VERDICTS: usize = 1000;

/// A failure, as the protocol names it, answered as JSON with the status of its reason.
#[derive(Debug)]
pub(crate) struct AnalysisError(ErrorDetail);

/// The body of a failed analysis.
#[derive(Serialize, ToSchema)]
pub(crate) struct AnalysisErrorBody {
    /// What was wrong, for a person to read.
    error: String,
    /// The protocol's reason name (docs/protocol.md): `too_large`, `not_pe`, `busy`…
    reason: String,
    /// The analysis step that failed (`static`, `dynamic`, `virustotal`), if one did.
    step: Option<String>,
}

impl From<ErrorDetail> for AnalysisError {
    fn from(detail: ErrorDetail) -> AnalysisError {
        AnalysisError(detail)
    }
}

impl IntoResponse for AnalysisError {
    fn into_response(self) -> Response {
        let detail = self.0;
        let status = detail.reason().map_or(StatusCode::INTERNAL_SERVER_ERROR, status_of);
        let error = match detail.message() {
            "" => detail.name().to_owned(),
            message => message.to_owned(),
        };
        let body = AnalysisErrorBody {
            error,
            reason: detail.name().to_owned(),
            step: detail.step().map(str::to_owned),
        };
        (status, Json(body)).into_response()
    }
}

/// The HTTP status of a protocol reason.
fn status_of(reason: Reason) -> StatusCode {
    match reason {
        Reason::Malformed | Reason::UnknownCommand | Reason::HashMismatch | Reason::MissingField => {
            StatusCode::BAD_REQUEST
        }
        Reason::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        Reason::Timeout => StatusCode::GATEWAY_TIMEOUT,
        // The request was understood, but the file cannot be analysed as asked.
        Reason::NotPe | Reason::AnalysisFailed => StatusCode::UNPROCESSABLE_ENTITY,
        Reason::Unavailable | Reason::Busy => StatusCode::SERVICE_UNAVAILABLE,
        Reason::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        Reason::QuotaExceeded | Reason::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        // VirusTotal refused the key the client sent: the client's input, not this API's
        // credentials (401 and 403 are about the bearer token).
        Reason::WrongCredentials => StatusCode::BAD_REQUEST,
        Reason::NotFound => StatusCode::NOT_FOUND,
    }
}

fn malformed(message: impl Into<String>) -> AnalysisError {
    AnalysisError(ErrorDetail::new(Reason::Malformed).with_message(message))
}

/// The query of `POST /api/v1/files`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct AnalysisQuery {
    /// The analyses to run, comma-separated: `static`, `dynamic`, `vt` (or `virustotal`), any
    /// combination; they run in the protocol's order (static, dynamic, VirusTotal) whatever
    /// the order here. Default `static`.
    analyses: Option<String>,
    /// The file's SHA-256 (64 hex digits): checked against the body (`hash_mismatch`); with
    /// `analyses=vt` alone it may come without a body.
    sha256: Option<String>,
}

/// The analyses of `text` in the protocol's order, or why not.
fn parse_analyses(text: Option<&str>) -> Result<Vec<Analysis>, AnalysisError> {
    let Some(text) = text else { return Ok(vec![Analysis::Static]) };
    let mut steps = Vec::new();
    for name in text.split(',').map(str::trim) {
        let step = match name {
            "static" => Analysis::Static,
            "dynamic" => Analysis::Dynamic,
            "vt" | "virustotal" => Analysis::VirusTotal,
            other => {
                let other: String = other.chars().take(40).collect();
                return Err(malformed(format!(
                    "unknown analysis {other:?} in `analyses`: use static, dynamic and vt, comma-separated"
                )));
            }
        };
        if steps.contains(&step) {
            return Err(malformed(format!("analysis {step} is named twice in `analyses`")));
        }
        steps.push(step);
    }
    let order = [Analysis::Static, Analysis::Dynamic, Analysis::VirusTotal];
    steps.sort_by_key(|step| order.iter().position(|known| known == step));
    Ok(steps)
}

/// The bytes of a request body being read: bounded per part and in all, and reserved from the
/// memory budget the protocol's frames share.
struct BodyBudget {
    reservation: Reservation,
    /// Bytes read so far, all parts together.
    read: u64,
    max_part: u64,
    max_total: u64,
}

impl BodyBudget {
    fn new(shared: &Shared) -> BodyBudget {
        BodyBudget {
            reservation: shared.budget.reservation(),
            read: 0,
            max_part: u64::from(shared.settings.max_field_size),
            max_total: shared.settings.max_frame_size,
        }
    }

    /// Checks a length announced before the body (`Content-Length` of a raw body) and reserves
    /// it, before any byte of the body is read.
    fn announce(&mut self, declared: u64) -> Result<(), AnalysisError> {
        self.check(declared, declared, "file")?;
        self.reserve(declared)
    }

    /// Takes `more` bytes of a part that now has `part` bytes (them included).
    fn take(&mut self, part: u64, more: u64, what: &str) -> Result<(), AnalysisError> {
        self.read += more;
        self.check(part, self.read, what)?;
        self.reserve(self.read)
    }

    fn check(&self, part: u64, total: u64, what: &str) -> Result<(), AnalysisError> {
        if part > self.max_part {
            return Err(too_large(format!(
                "the {what} is larger than max_field_size ({} bytes)",
                self.max_part
            )));
        }
        if total > self.max_total {
            return Err(too_large(format!(
                "the body is larger than max_frame_size ({} bytes)",
                self.max_total
            )));
        }
        Ok(())
    }

    /// Makes the reservation at least `bytes` (small bodies need none, as small frames).
    fn reserve(&mut self, bytes: u64) -> Result<(), AnalysisError> {
        if bytes > UNCOUNTED_FRAME_BYTES as u64 && !self.reservation.grow_to(bytes) {
            return Err(AnalysisError(ErrorDetail::new(Reason::Busy).with_message(
                "the server's memory budget for requests being read is spent (frame_memory_budget): retry later",
            )));
        }
        Ok(())
    }
}

fn too_large(message: String) -> AnalysisError {
    AnalysisError(ErrorDetail::new(Reason::TooLarge).with_message(message))
}

/// Why reading the body failed: over the listener's `max_body_bytes`, or cut off.
fn body_failure(error: &(dyn std::error::Error + 'static)) -> AnalysisError {
    let mut source = Some(error);
    while let Some(error) = source {
        if error.is::<http_body_util::LengthLimitError>() {
            return too_large("the body is larger than the listener's max_body_bytes".to_owned());
        }
        source = error.source();
    }
    malformed(format!("the body could not be read: {error}"))
}

/// The file and report of a request.
#[derive(Default)]
struct Upload {
    file: Bytes,
    /// The file's SHA-256, hashed as its bytes were read; `None` without a file.
    file_sha256: Option<Sha256Hash>,
    report: Option<Bytes>,
}

/// The bytes of a part being read and, for the file, its SHA-256 hashed chunk by chunk as they
/// come: the analysis then does not hash a file it has already read once the body is in.
struct PartBytes {
    bytes: BytesMut,
    hasher: Option<Sha256>,
}

impl PartBytes {
    fn new(capacity: usize, hashed: bool) -> PartBytes {
        PartBytes { bytes: BytesMut::with_capacity(capacity), hasher: hashed.then(Sha256::new) }
    }

    fn extend(&mut self, chunk: &[u8]) {
        if let Some(hasher) = &mut self.hasher {
            hasher.update(chunk);
        }
        self.bytes.extend_from_slice(chunk);
    }

    /// The bytes, and their SHA-256 when hashed and not empty.
    fn finish(self) -> (Bytes, Option<Sha256Hash>) {
        let hasher = self.hasher.filter(|_| !self.bytes.is_empty());
        (self.bytes.freeze(), hasher.map(|hasher| Sha256Hash(hasher.finalize().into())))
    }
}

/// Reads an `application/octet-stream` body.
async fn read_raw(
    request: Request,
    declared: Option<u64>,
    budget: &mut BodyBudget,
) -> Result<Upload, AnalysisError> {
    if let Some(declared) = declared {
        budget.announce(declared)?;
    }
    let capacity = declared.unwrap_or(0).min(budget.max_part) as usize;
    let mut file = PartBytes::new(capacity, true);
    let mut stream = request.into_body().into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|error| body_failure(&error))?;
        budget.take((file.bytes.len() + chunk.len()) as u64, chunk.len() as u64, "file")?;
        file.extend(&chunk);
    }
    let (file, file_sha256) = file.finish();
    Ok(Upload { file, file_sha256, report: None })
}

/// Reads a `multipart/form-data` body: its `file` part and its optional `report` part.
async fn read_form(request: Request, budget: &mut BodyBudget) -> Result<Upload, AnalysisError> {
    let mut form = Multipart::from_request(request, &())
        .await
        .map_err(|rejection| malformed(format!("not a multipart form: {}", rejection.body_text())))?;
    let mut upload = Upload::default();
    let mut seen_file = false;
    while let Some(field) = form.next_field().await.map_err(|error| form_failure(&error))? {
        let name = field.name().map(str::to_owned);
        match name.as_deref() {
            Some("file") if !seen_file => {
                seen_file = true;
                (upload.file, upload.file_sha256) = read_part(field, budget, "file", true).await?;
            }
            Some("report") if upload.report.is_none() => {
                let (report, _) = read_part(field, budget, "behaviour report", false).await?;
                upload.report = Some(report).filter(|report| !report.is_empty());
            }
            name => {
                let name: String = name.unwrap_or_default().chars().take(40).collect();
                return Err(malformed(format!(
                    "unexpected form part {name:?}: the form takes one `file` and one optional `report`"
                )));
            }
        }
    }
    Ok(upload)
}

/// Reads a form part, hashing it when `hashed` (see [`PartBytes::finish`]).
async fn read_part(
    mut field: Field<'_>,
    budget: &mut BodyBudget,
    what: &str,
    hashed: bool,
) -> Result<(Bytes, Option<Sha256Hash>), AnalysisError> {
    let mut part = PartBytes::new(0, hashed);
    while let Some(chunk) = field.chunk().await.map_err(|error| form_failure(&error))? {
        budget.take((part.bytes.len() + chunk.len()) as u64, chunk.len() as u64, what)?;
        part.extend(&chunk);
    }
    Ok(part.finish())
}

fn form_failure(error: &MultipartError) -> AnalysisError {
    if error.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return too_large("the body is larger than the listener's max_body_bytes".to_owned());
    }
    malformed(format!("the multipart form could not be read: {}", error.body_text()))
}

/// The client's VirusTotal key from [`VIRUSTOTAL_KEY_HEADER`]; the error never repeats it.
fn virustotal_key(headers: &HeaderMap) -> Result<Option<ApiKey>, AnalysisError> {
    let Some(value) = headers.get(VIRUSTOTAL_KEY_HEADER) else { return Ok(None) };
    let invalid = || malformed("the X-VirusTotal-Key header is not 1 to 256 printable ASCII characters");
    let key = value.to_str().map_err(|_| invalid())?;
    ApiKey::new(key.trim()).map(Some).map_err(|_| invalid())
}

/// One feature's part in the static verdict.
#[derive(Serialize, ToSchema)]
pub(crate) struct StaticAnswer {
    score: f64,
    model_version: String,
    /// The features that moved the score most, largest share first: each with the file's value
    /// and the log-odds it added (positive: towards malware).
    #[schema(value_type = Vec<Object>)]
    features: Vec<FeatureContribution>,
    /// What the YARA rules in service found (docs/yara.md); absent without rules, or when their
    /// scan failed (the model's score then stands alone).
    #[serde(skip_serializing_if = "Option::is_none")]
    yara: Option<YaraAnswer>,
}

/// The YARA rules that matched, and the rule set's version.
#[derive(Serialize, ToSchema)]
pub(crate) struct YaraAnswer {
    /// `yara-` and 16 hex digits.
    ruleset: String,
    /// Each matching rule with its namespace (rule file), tags and metadata.
    #[schema(value_type = Vec<Object>)]
    matches: Vec<RuleMatch>,
}

/// The behaviour model's answer.
#[derive(Serialize, ToSchema)]
pub(crate) struct DynamicAnswer {
    score: f64,
    model_version: String,
    /// The most likely family (`family`, `confidence`…), as the behaviour model gives it;
    /// `null` when the model has no family classifier.
    #[schema(value_type = Option<Object>)]
    family: Option<FamilyGuess>,
    /// The call n-grams that moved the score most, strongest first.
    #[schema(value_type = Vec<Object>)]
    top_ngrams: Vec<NgramContribution>,
    /// Calls scored.
    calls: usize,
}

/// VirusTotal's answer.
#[derive(Serialize, ToSchema)]
pub(crate) struct VirusTotalAnswer {
    score: f64,
    model_version: String,
    report: VirusTotalSummary,
}

/// The list entry that answered.
#[derive(Serialize, ToSchema)]
pub(crate) struct ListHit {
    /// `safe` or `bad`.
    list: String,
    reason: String,
    source: String,
    /// RFC 3339, UTC.
    added_at: String,
    added_by: String,
}

impl From<&ListEntry> for ListHit {
    fn from(entry: &ListEntry) -> ListHit {
        ListHit {
            list: entry.list.as_str().to_owned(),
            reason: entry.reason.clone(),
            source: entry.source.clone(),
            added_at: rfc3339(entry.added_at),
            added_by: entry.added_by.clone(),
        }
    }
}

/// What an analysis found.
#[derive(Serialize, ToSchema)]
pub(crate) struct FileAnalysis {
    /// Lowercase hex.
    sha256: String,
    /// Bytes of the file (0 when only the hash was sent).
    size: u64,
    /// The combined verdict: the probability of malware, in [0, 1] (the one step's score, or
    /// the fusion of several: docs/protocol.md). 0 or 1 for a listed hash.
    y: f64,
    /// `malicious` when `y` ≥ 0.5, else `benign`.
    verdict: String,
    /// The analyses asked for, in the order they ran.
    analyses: Vec<String>,
    #[serde(rename = "static", skip_serializing_if = "Option::is_none")]
    static_analysis: Option<StaticAnswer>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dynamic: Option<DynamicAnswer>,
    #[serde(skip_serializing_if = "Option::is_none")]
    virustotal: Option<VirusTotalAnswer>,
    /// The safelist or badlist entry that answered without any analysis; `null` otherwise.
    list: Option<ListHit>,
    /// The version of each model or rule that gave a score (`static`, `dynamic`, `virustotal`,
    /// `combined`, `list`).
    model_versions: BTreeMap<String, String>,
}

impl From<Findings> for FileAnalysis {
    fn from(findings: Findings) -> FileAnalysis {
        let mut answer = FileAnalysis {
            sha256: findings.sha256,
            size: findings.size,
            y: findings.verdict,
            verdict: if findings.verdict >= 0.5 { "malicious" } else { "benign" }.to_owned(),
            analyses: findings.asked.iter().map(|step| step.name().to_owned()).collect(),
            static_analysis: None,
            dynamic: None,
            virustotal: None,
            list: findings.listed.as_ref().map(ListHit::from),
            model_versions: BTreeMap::new(),
        };
        if let Some(entry) = &findings.listed {
            answer.model_versions.insert("list".to_owned(), entry.list.title().to_owned());
        }
        if findings.steps.len() > 1 {
            answer.model_versions.insert("combined".to_owned(), COMBINED_RULE.to_owned());
        }
        for (step, detail) in findings.steps {
            answer.model_versions.insert(step.analysis.name().to_owned(), step.model_version.clone());
            let (score, model_version) = (step.score, step.model_version);
            match detail {
                StepDetail::Static { contributions, yara } => {
                    let yara =
                        yara.map(|found| YaraAnswer { ruleset: found.ruleset, matches: found.matches });
                    answer.static_analysis =
                        Some(StaticAnswer { score, model_version, features: contributions, yara });
                }
                StepDetail::Dynamic(verdict) => {
                    let verdict = *verdict;
                    answer.dynamic = Some(DynamicAnswer {
                        score,
                        model_version,
                        family: verdict.family,
                        top_ngrams: verdict.top_ngrams,
                        calls: verdict.calls,
                    });
                }
                StepDetail::VirusTotal(report) => {
                    answer.virustotal = Some(VirusTotalAnswer { score, model_version, report });
                }
            }
        }
        answer
    }
}

/// Analyses a file — static (PE headers), dynamic (a behaviour report sent with it, or the
/// sandbox), VirusTotal (with the key of `X-VirusTotal-Key`), any combination — with the
/// protocol's pipeline, limits and reasons; a hash on the safelist or badlist is answered from
/// its list at once. The body is the file (`application/octet-stream`), or a form with a `file`
/// part and an optional `report` part (a CAPE report or a JSON list of API calls).
#[utoipa::path(post, path = "/api/v1/files", tag = "malware analysis",
    security(("bearer" = ["malware:scan"])),
    params(AnalysisQuery, ("X-VirusTotal-Key" = Option<String>, Header, description = "the client's VirusTotal API key (analysis vt); sent to VirusTotal only, never logged or stored")),
    request_body(description = "the file, or a form with `file` and an optional behaviour `report`",
        content(("application/octet-stream"), ("multipart/form-data"))),
    responses(
        (status = 200, description = "the verdict and what each analysis found", body = FileAnalysis),
        (status = 400, description = "bad input: analyses, hash, key, form, a body neither application/octet-stream nor multipart/form-data (reason `malformed`, `missing_field`, `hash_mismatch`, `wrong_credentials`)", body = AnalysisErrorBody),
        (status = 404, description = "VirusTotal does not know the hash and no file was sent (`not_found`)", body = AnalysisErrorBody),
        (status = 413, description = "the file or report is over the limits (`too_large`)", body = AnalysisErrorBody),
        (status = 415, description = "a form body other than multipart/form-data with an Authorization header (docs/security.md)", body = sentinel_api::ErrorBody),
        (status = 422, description = "the file cannot be analysed as asked (`not_pe`, `analysis_failed`)", body = AnalysisErrorBody),
        (status = 429, description = "over this client's limits, or its VirusTotal quota (`rate_limited`, `quota_exceeded`)", body = AnalysisErrorBody),
        (status = 503, description = "an analysis is not available here, or the server is busy (`unavailable`, `busy`)", body = AnalysisErrorBody),
        (status = 504, description = "the analysis took longer than allowed (`timeout`)", body = AnalysisErrorBody),
    ))]
pub(crate) async fn analyse_file(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    caller: Caller,
    query: Result<Query<AnalysisQuery>, QueryRejection>,
    request: Request,
) -> Result<Json<FileAnalysis>, AnalysisError> {
    let outcome = analyse(&shared, peer, &caller, query, request).await;
    let counted = match &outcome {
        Ok(_) => crate::status::OUTCOME_YES,
        Err(AnalysisError(detail)) => detail.reason().map_or("no", Reason::name),
    };
    shared.status.request_done(STATUS_COMMAND, counted);
    outcome.map(|findings| Json(FileAnalysis::from(findings)))
}

async fn analyse(
    shared: &Shared,
    peer: SocketAddr,
    caller: &Caller,
    query: Result<Query<AnalysisQuery>, QueryRejection>,
    request: Request,
) -> Result<Findings, AnalysisError> {
    let Query(query) =
        query.map_err(|rejection| malformed(format!("invalid query: {}", rejection.body_text())))?;
    let steps = parse_analyses(query.analyses.as_deref())?;
    let sha256 = match query.sha256.as_deref() {
        None | Some("") => None,
        Some(text) => Some(
            Sha256Hash::from_hex(text.as_bytes())
                .ok_or_else(|| malformed("sha256 is not 64 hexadecimal characters"))?,
        ),
    };
    let api_key = match steps.contains(&Analysis::VirusTotal) {
        true => virustotal_key(request.headers())?,
        false => None,
    };
    // Like a protocol request, the request counts against its client's limits.
    let client_key = ClientKey::address(peer.ip());
    let _in_flight = shared.client_limits.admit(&client_key).map_err(|refusal| {
        shared.refusals.refused(refusal.reason(), &client_key);
        AnalysisError(ErrorDetail::new(Reason::RateLimited).with_message(refusal.to_string()))
    })?;
    let media_type = request
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .map(|value| value.split(';').next().unwrap_or_default().trim().to_ascii_lowercase());
    let declared = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    let mut budget = BodyBudget::new(shared);
    let upload = match media_type.as_deref() {
        Some("application/octet-stream") => read_raw(request, declared, &mut budget).await?,
        Some("multipart/form-data") => read_form(request, &mut budget).await?,
        // A VirusTotal lookup by hash needs no body.
        None if declared.unwrap_or(0) == 0 => Upload::default(),
        other => {
            return Err(AnalysisError(ErrorDetail::new(Reason::Malformed).with_message(format!(
                "Content-Type {:?}: send the file as application/octet-stream or multipart/form-data",
                other.unwrap_or("none")
            ))));
        }
    };
    let submission = Submission {
        steps,
        executable: upload.file,
        sha256,
        executable_sha256: upload.file_sha256,
        api_key,
        behaviour_report: upload.report,
    };
    // Verdicts name an HTTP client by its principal (a token's name), else by its address in
    // the form `[privacy]` stores addresses.
    let client = match &caller.principal {
        Some(principal) => principal.clone(),
        None => shared.client_addresses.display(peer.ip()),
    };
    let findings = shared.analyser.analyse(submission, &client).await?;
    drop(budget);
    Ok(findings)
}

/// The query of `GET /api/v1/files/{sha256}`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct RecordQuery {
    /// At most this many verdicts, newest first (default 100, at most 1000).
    verdicts: Option<usize>,
}

/// When the store first and last recorded the file.
#[derive(Serialize, ToSchema)]
pub(crate) struct SampleSeen {
    size: u64,
    /// RFC 3339, UTC.
    first_seen: String,
    last_seen: String,
    /// Whether the vault keeps a (defanged) copy; the API never returns it.
    stored: bool,
}

/// A verdict given on the file.
#[derive(Serialize, ToSchema)]
pub(crate) struct RecordedVerdict {
    id: i64,
    /// `static`, `dynamic`, `virustotal`, `combined` or `list`.
    analysis: String,
    model_version: String,
    score: f64,
    /// RFC 3339, UTC.
    created_at: String,
}

/// The file's label in the labelled-samples dataset.
#[derive(Serialize, ToSchema)]
pub(crate) struct LabelRecord {
    /// 0 benign, 1 malicious.
    y: u8,
    /// `virustotal`, `manual` or `import`.
    source: String,
    /// RFC 3339, UTC.
    labelled_at: String,
    note: Option<String>,
}

/// What Sentinel knows about a hash.
#[derive(Serialize, ToSchema)]
pub(crate) struct FileRecord {
    sha256: String,
    /// When the file was first and last sent, its size; `null` for a hash only looked up.
    sample: Option<SampleSeen>,
    /// Verdicts given on it, newest first.
    verdicts: Vec<RecordedVerdict>,
    /// The stored VirusTotal report, summarised; `null` when none is stored.
    virustotal: Option<VirusTotalSummary>,
    label: Option<LabelRecord>,
    /// Its safelist or badlist entry.
    list: Option<ListHit>,
    /// The YARA rules that matched it, newest rule set first (docs/yara.md).
    yara_matches: Vec<YaraMatchRow>,
}

/// A YARA rule that matched the file, as recorded.
#[derive(Serialize, ToSchema)]
pub(crate) struct YaraMatchRow {
    /// The rule set's version.
    ruleset: String,
    namespace: String,
    rule: String,
    tags: Vec<String>,
    #[schema(value_type = Object)]
    metadata: serde_json::Map<String, serde_json::Value>,
    /// RFC 3339, UTC.
    matched_at: String,
}

/// What Sentinel knows about a hash — when the file was first and last seen, the verdicts given
/// on it (by analysis, model version, time), the stored VirusTotal report, its label and list
/// entry — without the file.
#[utoipa::path(get, path = "/api/v1/files/{sha256}", tag = "malware analysis",
    security(("bearer" = ["malware:read"])),
    params(("sha256" = String, Path, description = "the file's SHA-256, 64 hex digits"), RecordQuery),
    responses(
        (status = 200, description = "what is known", body = FileRecord),
        (status = 400, description = "not a SHA-256, or an invalid query", body = sentinel_api::ErrorBody),
        (status = 404, description = "nothing is known about this hash", body = sentinel_api::ErrorBody),
    ))]
pub(crate) async fn file_record(
    State(shared): State<Arc<Shared>>,
    Path(sha256): Path<String>,
    query: Result<Query<RecordQuery>, QueryRejection>,
) -> Result<Json<FileRecord>, ApiError> {
    let Query(query) = query
        .map_err(|rejection| ApiError::bad_request(format!("invalid query: {}", rejection.body_text())))?;
    let limit = query.verdicts.unwrap_or(DEFAULT_VERDICTS);
    if limit > MAX_VERDICTS {
        return Err(ApiError::bad_request(format!("verdicts must be 0 to {MAX_VERDICTS}")));
    }
    let Some(hash) = Sha256Hash::from_hex(sha256.as_bytes()) else {
        return Err(ApiError::bad_request("the path's SHA-256 is not 64 hexadecimal characters"));
    };
    let sha256 = hash.to_hex();
    let store = Arc::clone(&shared.analyser.store);
    let rule = shared
        .analyser
        .virustotal
        .as_ref()
        .map_or_else(VerdictRule::default, |step| step.verdict_rule().clone());
    let key = sha256.clone();
    let known = tokio::task::spawn_blocking(move || {
        Ok::<_, sentinel_store::StoreError>((
            store.sample(&key)?,
            store.latest_verdicts(&key, limit)?,
            store.vt_report(&key)?,
            store.label(&key)?,
            store.list_entry(&key)?,
            store.yara_matches(&key)?,
        ))
    })
    .await
    .map_err(|error| ApiError::internal(error.to_string()))?
    .map_err(|error| {
        tracing::error!(%error, "cannot read what the store knows about a hash");
        ApiError::internal("the store could not be read")
    })?;
    let (sample, verdicts, report, label, listed, yara_matches) = known;
    if sample.is_none() && verdicts.is_empty() && report.is_none() && label.is_none() && listed.is_none() {
        return Err(ApiError::new(StatusCode::NOT_FOUND, format!("nothing is known about {sha256}")));
    }
    Ok(Json(FileRecord {
        sha256,
        sample: sample.map(|sample: SampleRecord| SampleSeen {
            size: sample.size,
            first_seen: rfc3339(sample.first_seen),
            last_seen: rfc3339(sample.last_seen),
            stored: sample.stored_path.is_some(),
        }),
        verdicts: verdicts
            .into_iter()
            .map(|verdict: VerdictRecord| RecordedVerdict {
                id: verdict.id,
                analysis: verdict.analysis,
                model_version: verdict.model_version,
                score: verdict.score,
                created_at: rfc3339(verdict.created_at),
            })
            .collect(),
        virustotal: report.and_then(|row| VirusTotalSummary::of_stored(&row, &rule)),
        label: label.map(|label: LabelledSample| LabelRecord {
            y: label.y,
            source: label.source.as_str().to_owned(),
            labelled_at: rfc3339(label.labelled_at),
            note: label.note,
        }),
        list: listed.as_ref().map(ListHit::from),
        yara_matches: yara_matches
            .into_iter()
            .map(|found: YaraMatchRecord| YaraMatchRow {
                ruleset: found.ruleset,
                namespace: found.namespace,
                rule: found.rule,
                tags: found.tags,
                metadata: found.metadata,
                matched_at: rfc3339(found.matched_at),
            })
            .collect(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn analyses_run_in_the_protocol_order_and_bad_lists_are_refused() {
        assert_eq!(parse_analyses(None).unwrap(), [Analysis::Static]);
        assert_eq!(
            parse_analyses(Some("vt, static,dynamic")).unwrap(),
            [Analysis::Static, Analysis::Dynamic, Analysis::VirusTotal]
        );
        assert_eq!(parse_analyses(Some("virustotal")).unwrap(), [Analysis::VirusTotal]);
        for bad in ["", "static,static", "yara", "static,,vt"] {
            let Err(AnalysisError(detail)) = parse_analyses(Some(bad)) else { panic!("{bad:?} accepted") };
            assert_eq!(detail.reason(), Some(Reason::Malformed), "{bad:?}");
        }
    }

    #[test]
    fn every_reason_has_a_status_and_client_errors_are_4xx() {
        for reason in Reason::ALL {
            let status = status_of(reason);
            let server_side =
                matches!(reason, Reason::Internal | Reason::Unavailable | Reason::Busy | Reason::Timeout);
            assert_eq!(status.is_server_error(), server_side, "{reason}: {status}");
        }
        assert_eq!(status_of(Reason::TooLarge), StatusCode::PAYLOAD_TOO_LARGE);
    }
}
