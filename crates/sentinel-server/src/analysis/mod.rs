//! What the server does with one analysis request: check its fields, record
//! the sample, answer a hash on the safelist or badlist from its list, else run
//! the requested analysis steps in order, record the verdicts, then answer — in
//! that order, so nothing acknowledged is lost if the server dies right after
//! answering.
//!
//! The sample is hashed once. Its vault file is written (durably) before the
//! steps run; its row is committed with the verdicts, in one transaction, when
//! every step is local (static analysis: a millisecond), or before the steps
//! when one waits on a remote service (the sandbox, VirusTotal: seconds to
//! minutes, during which a crash or a timeout must not lose the row). A request
//! whose step fails still records its sample before the `No`.
//!
//! One pipeline serves every front end: a protocol request and an HTTP upload
//! both become a [`Submission`], and [`Analyser::analyse`] returns the
//! [`Findings`] each front end answers from (the protocol's f32 scores, the
//! HTTP API's JSON with each step's explanation).
//!
//! Each step lives in its own module and returns a [`StepScore`] and its
//! [`StepDetail`], or the [`ErrorDetail`] of its failure (naming the step), so
//! new steps plug into [`Analyser::analyse`]'s loop. Every step of a request is
//! checked to be available before any runs. Several steps' scores are combined
//! by the rule of [`fusion`].

mod dynamic;
mod fusion;
mod static_analysis;
mod virustotal;
mod yara_scan;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sentinel_behaviour::BehaviourVerdict;
use sentinel_protocol::{Analysis, ErrorDetail, ListDetail, Reason, Request, Response, Sha256Hash};
use sentinel_sandbox::CapeClient;
use sentinel_static::FeatureContribution;
use sentinel_store::{ListEntry, NewVerdict, NewYaraMatches, Store, StoreError, VerifiedSample};
use sentinel_virustotal::ApiKey;
use sentinel_yara::YaraRules;

use crate::models::ModelsInService;
use crate::outcomes::{AnalysisOutcome, Outcomes};
use crate::stage_times::{Stage, StageTimes};
use crate::workers::{AnalysisWorkers, WorkerError};

pub use fusion::FusionSettings;
pub(crate) use virustotal::VirusTotalSummary;
pub use virustotal::{VT_KEY_SECRET_FILE, VirusTotalReport, VirusTotalStep, label_from_report};

/// The model version recorded with combined verdicts: the fusion rule's.
pub(crate) const COMBINED_RULE: &str = fusion::RULE_VERSION;

/// The analysis name of verdicts answered from the safelist or badlist.
pub(crate) const LIST_ANALYSIS: &str = "list";

/// What a client asks to have analysed, whichever way it came: a protocol
/// request ([`Submission::from_request`]) or an HTTP upload. Not `Debug`: it holds
/// the sample's bytes.
pub(crate) struct Submission {
    /// The steps to run, in the order they run: the protocol's, static, dynamic, virustotal.
    pub steps: Vec<Analysis>,
    /// The executable; empty when only its hash is sent (VirusTotal alone).
    pub executable: Bytes,
    /// The SHA-256 sent with it: checked against the executable, or taken alone without one.
    pub sha256: Option<Sha256Hash>,
    /// The executable's SHA-256 when the front end hashed it as it arrived (the protocol's
    /// reader, the HTTP body's): the store takes it instead of hashing the bytes again.
    pub executable_sha256: Option<Sha256Hash>,
    /// The client's VirusTotal key, for this request only (its `Debug` is redacted).
    pub api_key: Option<ApiKey>,
    /// A behaviour report the client already has (CAPE JSON or a JSON list of API names):
    /// the dynamic step scores it instead of running the sandbox.
    pub behaviour_report: Option<Bytes>,
}

impl Submission {
    /// The submission a protocol request makes: its command's steps, fields `[0]` to `[3]`.
    pub fn from_request(request: &Request) -> Result<Submission, ErrorDetail> {
        let steps = request.command().analyses().to_vec();
        // A malformed key is the client's error whatever the server offers.
        let api_key = match steps.contains(&Analysis::VirusTotal) {
            true => virustotal::api_key(request)?,
            false => None,
        };
        let sha256 = request
            .sha256()
            .map_err(|error| ErrorDetail::new(error.reason()).with_message(error.to_string()))?;
        Ok(Submission {
            steps,
            executable: request.executable().cloned().unwrap_or_default(),
            sha256,
            executable_sha256: request.executable_sha256(),
            api_key,
            behaviour_report: dynamic::sent_report(request).cloned(),
        })
    }
}

/// What one step found beyond its score, for the HTTP API's answer.
#[derive(Debug, Clone)]
pub(crate) enum StepDetail {
    /// The features that moved the static model's score most, largest first, and what the YARA
    /// rules found (`None` without rules, or when their scan failed).
    Static { contributions: Vec<FeatureContribution>, yara: Option<yara_scan::YaraFindings> },
    /// The behaviour model's verdict: family, the n-grams that drove it, the calls scored.
    Dynamic(Box<BehaviourVerdict>),
    /// What VirusTotal's report says.
    VirusTotal(VirusTotalSummary),
}

/// Everything one request found.
#[derive(Debug, Clone)]
pub(crate) struct Findings {
    /// Lowercase hex.
    pub sha256: String,
    /// Bytes of the executable (0 when only the hash was sent).
    pub size: u64,
    /// The steps asked for, in order.
    pub asked: Vec<Analysis>,
    /// The combined verdict `y`.
    pub verdict: f64,
    /// Each step run, in order, with its score and what it found. Empty for a listed hash.
    pub steps: Vec<(StepScore, StepDetail)>,
    /// The list entry that answered, when the hash is on the safelist or badlist.
    pub listed: Option<ListEntry>,
}

impl Findings {
    /// The scores of the protocol's `Yes`: `y`, then one per step asked for, in order. A
    /// listed hash ran no step: each step's place holds the list's verdict, so that the
    /// frame has the shape the client expects for its command.
    pub fn protocol_scores(&self) -> Vec<f32> {
        let scores: Vec<f64> = match self.listed {
            Some(_) => vec![self.verdict; self.asked.len()],
            None => self.steps.iter().map(|(step, _)| step.score).collect(),
        };
        std::iter::once(self.verdict).chain(scores).map(|score| score as f32).collect()
    }
}

/// The result of one analysis step.
#[derive(Debug, Clone)]
pub(crate) struct StepScore {
    pub analysis: Analysis,
    /// Probability of malware, in [0, 1].
    pub score: f64,
    /// The model (or source) version that produced the score, stored with the verdict.
    pub model_version: String,
    /// How many independent opinions the score rests on (VirusTotal: engines
    /// with a verdict); `None` for one model. The fusion rule weighs by it.
    pub support: Option<u32>,
}

/// Runs analysis requests against the shared models and store.
#[derive(Debug)]
pub(crate) struct Analyser {
    pub models: Arc<ModelsInService>,
    pub store: Arc<Store>,
    pub workers: AnalysisWorkers,
    /// Time allowed for everything a request asks for.
    pub timeout: Duration,
    /// The CAPE sandbox of the dynamic step; `None` when `[sandbox]` has no `base_url`.
    pub sandbox: Option<CapeClient>,
    /// The VirusTotal step; `None` when `[virustotal] enabled = false`.
    pub virustotal: Option<VirusTotalStep>,
    /// Step weights of the combined verdict.
    pub fusion: FusionSettings,
    /// The YARA rules run with every static analysis; `None` without `[server] yara_rules`.
    pub yara: Option<Arc<YaraRules>>,
    /// Where each request's outcome is told.
    pub outcomes: Outcomes,
    /// How long each stage of the requests takes.
    pub stage_times: StageTimes,
}

impl Analyser {
    /// The protocol's response to an analysis request from `client` (its address, or its
    /// certificate's subject), which the verdicts record. Failures carry their detail; the
    /// connection decides whether its client sees it.
    pub async fn respond(&self, request: Request, client: &str) -> Response {
        let submission = match Submission::from_request(&request) {
            Ok(submission) => submission,
            Err(detail) => return Response::failure(detail),
        };
        drop(request);
        match self.analyse(submission, client).await {
            Ok(findings) => match &findings.listed {
                Some(entry) => {
                    let detail = ListDetail::new(entry.list.title(), &entry.reason, &entry.source);
                    Response::Listed(findings.protocol_scores(), detail)
                }
                None => Response::Yes(findings.protocol_scores()),
            },
            Err(detail) => Response::failure(detail),
        }
    }

    /// Analyses `submission` for `client` within the request's time budget: the pipeline of
    /// every front end.
    pub async fn analyse(&self, submission: Submission, client: &str) -> Result<Findings, ErrorDetail> {
        // A sandbox run and a VirusTotal upload have their own, longer
        // timeouts: the request gets them on top.
        let timeout = self
            .timeout
            .saturating_add(dynamic::extra_time(self.sandbox.as_ref(), &submission))
            .saturating_add(virustotal::extra_time(self.virustotal.as_ref(), &submission));
        let findings = match tokio::time::timeout(timeout, self.run(submission, client)).await {
            Ok(findings) => findings,
            Err(_) => Err(ErrorDetail::new(Reason::Timeout)
                .with_message(format!("the analysis took longer than {timeout:?}"))),
        };
        self.outcomes.send(match &findings {
            Ok(findings) => AnalysisOutcome::Verdict {
                sha256: findings.sha256.clone(),
                client: client.to_owned(),
                verdict: findings.verdict,
                analyses: findings.asked.iter().map(|step| step.name()).collect(),
                listed: findings.listed.as_ref().map(|entry| entry.list.title()),
            },
            Err(detail) => AnalysisOutcome::failed(client, detail),
        });
        findings
    }

    async fn run(&self, submission: Submission, client: &str) -> Result<Findings, ErrorDetail> {
        let Submission { steps, executable, sha256, executable_sha256, mut api_key, mut behaviour_report } =
            submission;
        // A combined request must not spend a static analysis on a request a
        // later step cannot serve: say which step is missing before any runs.
        let report_sent = behaviour_report.is_some();
        if let Some(&step) = steps.iter().find(|&&step| !self.available(step, report_sent)) {
            if step == Analysis::Dynamic {
                return Err(dynamic::unavailable());
            }
            return Err(ErrorDetail::new(Reason::Unavailable)
                .with_step(step)
                .with_message(format!("{step} analysis is not available on this server")));
        }
        // Only VirusTotal can work from the hash alone.
        if executable.is_empty() && steps.iter().any(|step| *step != Analysis::VirusTotal) {
            return Err(missing("executable"));
        }
        let size = executable.len() as u64;
        let local_only = steps.iter().all(|step| *step == Analysis::Static);
        // Every step uses the models in service when the request started.
        let models = self.models.current();
        // A static analysis needs neither the sample's hash nor its durable copy: it runs while
        // they are made, on the other worker, and waits for the list below like any step.
        let early_static = async {
            match steps.contains(&Analysis::Static) {
                true => {
                    let yara = self.yara.clone();
                    let analysis =
                        static_analysis::run(&self.workers, Arc::clone(&models), yara, executable.clone());
                    Some(self.timed(Stage::Static, analysis).await)
                }
                false => None,
            }
        };
        // A hash known already (hashed as the request arrived) is looked up in the lists while
        // the sample is written, rather than after.
        let early_listing = async {
            match executable_sha256 {
                Some(digest) => Some(self.list_entry(&digest.to_hex()).await),
                None => None,
            }
        };
        let recording = self.record_sample(sha256, executable_sha256, executable.clone(), local_only);
        let (recorded, mut early_static, early_listing) =
            tokio::join!(recording, early_static, early_listing);
        let (sha256, unrecorded) = recorded?;
        let listed = match early_listing {
            Some(listed) => listed?,
            None => self.list_entry(&sha256).await?,
        };

        // A listed hash is answered from its list, without any analysis.
        if let Some(entry) = listed {
            let verdict = entry.list.score();
            let recorded = vec![(LIST_ANALYSIS, entry.list.title().to_owned(), verdict)];
            self.record_verdicts(sha256.clone(), unrecorded, recorded, None, client).await?;
            return Ok(Findings {
                sha256,
                size,
                asked: steps,
                verdict,
                steps: Vec::new(),
                listed: Some(entry),
            });
        }

        let steps_run = async {
            let mut found = Vec::with_capacity(steps.len());
            for &step in &steps {
                let outcome = match step {
                    Analysis::Static => match early_static.take() {
                        Some(analysed) => analysed?,
                        None => {
                            let yara = self.yara.clone();
                            let analysis = static_analysis::run(
                                &self.workers,
                                Arc::clone(&models),
                                yara,
                                executable.clone(),
                            );
                            self.timed(Stage::Static, analysis).await?
                        }
                    },
                    Analysis::Dynamic => {
                        let report = behaviour_report.take();
                        let sandbox = self.sandbox.as_ref();
                        let analysis = dynamic::run(
                            &self.workers,
                            Arc::clone(&models),
                            sandbox,
                            report,
                            &executable,
                            &sha256,
                        );
                        self.timed(Stage::Dynamic, analysis).await?
                    }
                    Analysis::VirusTotal => match &self.virustotal {
                        Some(virustotal) => {
                            let lookup =
                                virustotal::run(virustotal, &sha256, api_key.take(), executable.clone());
                            self.timed(Stage::VirusTotal, lookup).await?
                        }
                        None => return Err(ErrorDetail::new(Reason::Unavailable).with_step(step)),
                    },
                };
                found.push(outcome);
            }
            Ok(found)
        };
        let found = match steps_run.await {
            Ok(found) => found,
            Err(detail) => {
                // The sample was received: its row is kept even though no verdict is.
                if let Some(sample) = unrecorded {
                    self.record_verdicts(sha256.clone(), Some(sample), Vec::new(), None, client).await?;
                }
                return Err(detail);
            }
        };
        let scores: Vec<StepScore> = found.iter().map(|(score, _)| score.clone()).collect();
        let verdict = fusion::combine(&self.fusion, &scores);
        let mut recorded: Vec<(&'static str, String, f64)> =
            scores.into_iter().map(|step| (step.analysis.name(), step.model_version, step.score)).collect();
        // With one step the verdict is that step's score: nothing more to keep.
        if found.len() > 1 {
            recorded.push(("combined", COMBINED_RULE.to_owned(), verdict));
        }
        let yara = found.iter().find_map(|(_, detail)| match detail {
            StepDetail::Static { yara, .. } => yara.clone(),
            _ => None,
        });
        self.record_verdicts(sha256.clone(), unrecorded, recorded, yara, client).await?;
        Ok(Findings { sha256, size, asked: steps, verdict, steps: found, listed: None })
    }

    /// The safelist or badlist entry of `sha256`, read from the store for every request, so a
    /// change made by another process (`sentinel lists`) applies to the next request.
    async fn list_entry(&self, sha256: &str) -> Result<Option<ListEntry>, ErrorDetail> {
        let store = Arc::clone(&self.store);
        let sha256 = sha256.to_owned();
        let entry =
            self.timed(Stage::List, tokio::task::spawn_blocking(move || store.list_entry(&sha256))).await;
        entry.map_err(|_| worker_failure(WorkerError::Panicked))?.map_err(store_failure)
    }

    /// Whether this server can run `step` for a request (that sent a behaviour report or
    /// not): its service is configured (or, for dynamic analysis, the request brings its report).
    fn available(&self, step: Analysis, report_sent: bool) -> bool {
        match step {
            Analysis::Static => true,
            Analysis::Dynamic => report_sent || self.sandbox.is_some(),
            Analysis::VirusTotal => self.virustotal.is_some(),
        }
    }

    /// Checks the executable against its SHA-256 (hashing it once, unless `digest` is its hash
    /// already, hashed as it arrived) and writes its vault file;
    /// returns the hash. With `defer_row`, the sample's row is left for [`Analyser::record_verdicts`]
    /// to commit with the verdicts, and the sample is returned for it; otherwise it is committed
    /// now.
    async fn record_sample(
        &self,
        claimed: Option<Sha256Hash>,
        digest: Option<Sha256Hash>,
        executable: Bytes,
        defer_row: bool,
    ) -> Result<(String, Option<VerifiedSample>), ErrorDetail> {
        let store = Arc::clone(&self.store);
        let stage_times = self.stage_times.clone();
        let recorded = self
            .workers
            .run(move || {
                let claimed = claimed.map(|hash| hash.to_hex());
                if executable.is_empty() {
                    let sha256 = claimed.ok_or_else(|| missing("executable or sha256"))?;
                    return Ok((sha256, None));
                }
                let hashing = Instant::now();
                let sample = match digest {
                    Some(digest) => VerifiedSample::hashed(executable, digest.0, claimed.as_deref()),
                    None => VerifiedSample::new(executable, claimed.as_deref()),
                };
                stage_times.since(Stage::Hash, hashing);
                let sample = sample.map_err(|error| match error {
                    StoreError::HashMismatch { claimed, actual } => ErrorDetail::new(Reason::HashMismatch)
                        .with_message(format!(
                            "the executable's SHA-256 is {actual}, not the {claimed} sent with it"
                        )),
                    other => store_failure(other),
                })?;
                let sha256 = sample.sha256().to_owned();
                let writing = Instant::now();
                let written = match defer_row {
                    true => store.keep_sample_file(&sample).map(|()| Some(sample)),
                    false => store.record_verified(&sample, &[]).map(|_| None),
                };
                stage_times.since(Stage::SampleWrite, writing);
                Ok((sha256, written.map_err(store_failure)?))
            })
            .await;
        recorded.map_err(worker_failure)?
    }

    /// Records a request's verdicts — each step's score and, for several steps, the combined
    /// verdict; or the list's answer — as (analysis, model version, score), with the sample's
    /// row when `sample` is given and what the YARA rules found, all together or not at all.
    async fn record_verdicts(
        &self,
        sha256: String,
        sample: Option<VerifiedSample>,
        verdicts: Vec<(&'static str, String, f64)>,
        yara: Option<yara_scan::YaraFindings>,
        client: &str,
    ) -> Result<(), ErrorDetail> {
        let store = Arc::clone(&self.store);
        let client = client.to_owned();
        let recording = tokio::task::spawn_blocking(move || {
            let verdicts: Vec<NewVerdict<'_>> = verdicts
                .iter()
                .map(|(analysis, model_version, score)| NewVerdict {
                    sha256: &sha256,
                    analysis,
                    model_version,
                    score: *score,
                    client: &client,
                })
                .collect();
            // A set finds the same in the same bytes: with nothing found there is nothing to
            // replace.
            let found = yara.filter(|findings| !findings.matches.is_empty());
            let records = found.as_ref().map(yara_scan::YaraFindings::records);
            let matches = found
                .as_ref()
                .zip(records.as_deref())
                .map(|(findings, matches)| NewYaraMatches { ruleset: &findings.ruleset, matches });
            // One transaction, so one fsync, for all of a request's record.
            store
                .record_request(&sha256, sample.as_ref(), &verdicts, matches)
                .map(drop)
                .map_err(store_failure)
        });
        let recorded = self.timed(Stage::Record, recording).await;
        recorded.map_err(|_| worker_failure(WorkerError::Panicked))?
    }

    /// Awaits `work`, observing its time as `stage`'s (whatever its outcome).
    async fn timed<T>(&self, stage: Stage, work: impl Future<Output = T>) -> T {
        let started = Instant::now();
        let outcome = work.await;
        self.stage_times.since(stage, started);
        outcome
    }
}

fn missing(field: &str) -> ErrorDetail {
    ErrorDetail::new(Reason::MissingField).with_message(format!("the {field} field is missing or empty"))
}

fn store_failure(error: sentinel_store::StoreError) -> ErrorDetail {
    tracing::error!(%error, "cannot record to the store");
    ErrorDetail::new(Reason::Internal).with_message("the sample or verdict could not be stored")
}

pub(crate) fn worker_failure(error: WorkerError) -> ErrorDetail {
    match error {
        WorkerError::Busy(_) => ErrorDetail::new(Reason::Busy).with_message(error.to_string()),
        WorkerError::Panicked => {
            tracing::error!("an analysis job panicked");
            ErrorDetail::new(Reason::Internal).with_message(error.to_string())
        }
    }
}
