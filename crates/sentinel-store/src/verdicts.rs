//! Verdicts the server gave: one row per analysis result, keyed by the sample's hash. A verdict
//! does not require a recorded sample, because a VirusTotal analysis can be asked on a hash alone.
//! A request's sample and verdicts can be recorded in one transaction ([`Store::record_analysis`]),
//! so a crash never keeps half of them.

use rusqlite::{Connection, Row, params};

use crate::sample_hash::SampleHash;
use crate::yara_matches::ValidMatches;
use crate::{SampleRecord, Store, StoreError, VerifiedSample, YaraMatchRecord};

/// The analyses a verdict can come from; `list` is an answer from the safelist or badlist.
const ANALYSES: [&str; 5] = ["static", "dynamic", "virustotal", "combined", "list"];

/// Longest accepted `model_version` or `client`, in bytes: they are labels, and the limit
/// keeps a hostile client from filling the database through them.
const MAX_LABEL_LEN: usize = 256;

/// A verdict to record.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NewVerdict<'a> {
    /// SHA-256 of the sample, 64 hexadecimal characters in either case.
    pub sha256: &'a str,
    /// `"static"`, `"dynamic"`, `"virustotal"`, `"combined"` or `"list"`.
    pub analysis: &'a str,
    /// Version of the model (or source) that gave the score; 1 to 256 bytes.
    pub model_version: &'a str,
    /// Maliciousness score y, in [0, 1].
    pub score: f64,
    /// Who asked (the central server), at most 256 bytes.
    pub client: &'a str,
}

/// What one YARA rule set found in a request's sample, for [`Store::record_request`].
#[derive(Debug, Clone, Copy)]
pub struct NewYaraMatches<'a> {
    /// The rule set's version.
    pub ruleset: &'a str,
    /// The rules that matched (their `ruleset` and `matched_at` fields are ignored).
    pub matches: &'a [YaraMatchRecord],
}

/// A recorded verdict.
#[derive(Debug, Clone, PartialEq)]
pub struct VerdictRecord {
    /// Unique, increasing in recording order.
    pub id: i64,
    /// Lowercase hexadecimal SHA-256.
    pub sha256: String,
    pub analysis: String,
    pub model_version: String,
    pub score: f64,
    /// Unix seconds when the verdict was recorded.
    pub created_at: i64,
    pub client: String,
}

const INSERT: &str = "INSERT INTO verdicts (sha256, analysis, model_version, score, created_at, client)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6)";

const SELECT_BY_SHA256: &str = "SELECT id, sha256, analysis, model_version, score, created_at, client
    FROM verdicts WHERE sha256 = ?1 ORDER BY id";

const SELECT_LATEST_BY_SHA256: &str = "SELECT id, sha256, analysis, model_version, score, created_at, client
    FROM verdicts WHERE sha256 = ?1 ORDER BY id DESC LIMIT ?2";

/// A verdict checked and copied, so the writer thread can insert it after the caller's
/// borrowed [`NewVerdict`] is out of reach.
#[derive(Debug, Clone)]
struct ValidVerdict {
    hash: SampleHash,
    analysis: String,
    model_version: String,
    score: f64,
    client: String,
}

impl ValidVerdict {
    fn new(verdict: &NewVerdict<'_>) -> Result<ValidVerdict, StoreError> {
        let hash = SampleHash::parse(verdict.sha256)?;
        validate(verdict)?;
        Ok(ValidVerdict {
            hash,
            analysis: verdict.analysis.to_owned(),
            model_version: verdict.model_version.to_owned(),
            score: verdict.score,
            client: verdict.client.to_owned(),
        })
    }

    fn insert(&self, connection: &Connection, now: i64) -> Result<i64, StoreError> {
        let mut statement = connection.prepare_cached(INSERT)?;
        Ok(statement.insert(params![
            self.hash.as_str(),
            self.analysis,
            self.model_version,
            self.score,
            now,
            self.client
        ])?)
    }
}

impl Store {
    /// Records a verdict and returns its id. Durable when this returns.
    pub fn record_verdict(&self, verdict: &NewVerdict<'_>) -> Result<i64, StoreError> {
        let verdict = ValidVerdict::new(verdict)?;
        let now = self.now();
        self.sqlite()?.write(move |connection| verdict.insert(connection, now))
    }

    /// Records a request at once: its sample (hash and bytes, as [`Store::record_sample`] takes
    /// them), if any, and its verdicts, in one transaction. Returns the sample's record and the
    /// verdicts' ids in the order given. Either everything is durable when this returns, or
    /// nothing was recorded.
    pub fn record_analysis(
        &self,
        sample: Option<(&str, &[u8])>,
        verdicts: &[NewVerdict<'_>],
    ) -> Result<(Option<SampleRecord>, Vec<i64>), StoreError> {
        let verdicts = verdicts.iter().map(ValidVerdict::new).collect::<Result<Vec<_>, _>>()?;
        let now = self.now();
        let insert_verdicts = move |connection: &Connection| {
            verdicts.iter().map(|verdict| verdict.insert(connection, now)).collect::<Result<Vec<_>, _>>()
        };
        match sample {
            Some((sha256_hex, bytes)) => {
                let hash = SampleHash::verify(sha256_hex, bytes)?;
                self.record_sample_with(&hash, bytes, insert_verdicts)
                    .map(|(record, ids)| (Some(record), ids))
            }
            None => self.sqlite()?.write(insert_verdicts).map(|ids| (None, ids)),
        }
    }

    /// Records a sample hashed once already, and its verdicts (none is fine), in one
    /// transaction, as [`Store::record_analysis`] does; its vault file is written first unless
    /// [`Store::keep_sample_file`] wrote it. Either everything is durable when this returns, or
    /// nothing was recorded.
    pub fn record_verified(
        &self,
        sample: &VerifiedSample,
        verdicts: &[NewVerdict<'_>],
    ) -> Result<(SampleRecord, Vec<i64>), StoreError> {
        let verdicts = verdicts.iter().map(ValidVerdict::new).collect::<Result<Vec<_>, _>>()?;
        let now = self.now();
        self.record_sample_with(&sample.hash, &sample.bytes, move |connection: &Connection| {
            verdicts.iter().map(|verdict| verdict.insert(connection, now)).collect::<Result<Vec<_>, _>>()
        })
    }

    /// Records what a server request found, in one transaction: the sample's row when `sample`
    /// is given (as [`Store::record_verified`] does), the verdicts, and what the YARA rules found
    /// in sample `sha256` (replacing what the same rule set found before). Returns the verdicts'
    /// ids in the order given. Either everything is durable when this returns, or nothing was
    /// recorded: a crash never keeps a verdict raised by a rule without the rule's match.
    pub fn record_request(
        &self,
        sha256: &str,
        sample: Option<&VerifiedSample>,
        verdicts: &[NewVerdict<'_>],
        yara: Option<NewYaraMatches<'_>>,
    ) -> Result<Vec<i64>, StoreError> {
        let verdicts = verdicts.iter().map(ValidVerdict::new).collect::<Result<Vec<_>, _>>()?;
        let matches =
            yara.map(|found| ValidMatches::new(sha256, found.ruleset, found.matches)).transpose()?;
        let now = self.now();
        let write = move |connection: &Connection| {
            if let Some(matches) = &matches {
                matches.replace(connection, now)?;
            }
            verdicts.iter().map(|verdict| verdict.insert(connection, now)).collect::<Result<Vec<_>, _>>()
        };
        match sample {
            Some(sample) => self.record_sample_with(&sample.hash, &sample.bytes, write).map(|(_, ids)| ids),
            None => self.sqlite()?.write(write),
        }
    }

    /// All verdicts on a sample, oldest first.
    pub fn verdicts(&self, sha256_hex: &str) -> Result<Vec<VerdictRecord>, StoreError> {
        let hash = SampleHash::parse(sha256_hex)?;
        self.sqlite()?.read(|connection| {
            let mut statement = connection.prepare_cached(SELECT_BY_SHA256)?;
            let rows = statement.query_map([hash.as_str()], verdict_from_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    /// The newest `limit` verdicts on a sample, newest first: a sample asked about every day
    /// has more verdicts than one answer should carry.
    pub fn latest_verdicts(&self, sha256_hex: &str, limit: usize) -> Result<Vec<VerdictRecord>, StoreError> {
        let hash = SampleHash::parse(sha256_hex)?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.sqlite()?.read(|connection| {
            let mut statement = connection.prepare_cached(SELECT_LATEST_BY_SHA256)?;
            let rows = statement.query_map(params![hash.as_str(), limit], verdict_from_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }
}

fn validate(verdict: &NewVerdict<'_>) -> Result<(), StoreError> {
    let invalid = |reason: String| Err(StoreError::InvalidVerdict(reason));
    if !ANALYSES.contains(&verdict.analysis) {
        let preview: String = verdict.analysis.chars().take(40).collect();
        return invalid(format!("analysis {preview:?} is not one of {ANALYSES:?}"));
    }
    if !(0.0..=1.0).contains(&verdict.score) {
        return invalid(format!("score {} is not in [0, 1]", verdict.score));
    }
    if verdict.model_version.is_empty() || verdict.model_version.len() > MAX_LABEL_LEN {
        return invalid(format!(
            "model_version is {} bytes, not 1 to {MAX_LABEL_LEN}",
            verdict.model_version.len()
        ));
    }
    if verdict.client.len() > MAX_LABEL_LEN {
        return invalid(format!("client is {} bytes, more than {MAX_LABEL_LEN}", verdict.client.len()));
    }
    Ok(())
}

fn verdict_from_row(row: &Row<'_>) -> rusqlite::Result<VerdictRecord> {
    Ok(VerdictRecord {
        id: row.get(0)?,
        sha256: row.get(1)?,
        analysis: row.get(2)?,
        model_version: row.get(3)?,
        score: row.get(4)?,
        created_at: row.get(5)?,
        client: row.get(6)?,
    })
}
