//! Verdicts the server gave: one row per analysis result, keyed by the sample's hash. A verdict
//! does not require a recorded sample, because a VirusTotal analysis can be asked on a hash alone.
//! A request's sample and verdicts can be recorded in one transaction ([`Store::record_analysis`]),
//! so a crash never keeps half of them.

use deadpool_postgres::Transaction;
use rusqlite::{Connection, Row, params};

use crate::sample_hash::SampleHash;
use crate::samples::SampleRows;
use crate::yara_matches::ValidMatches;
use crate::{SampleRecord, Store, StoreError, Tables, VerifiedSample, YaraMatchRecord, postgres};

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
pub(crate) struct ValidVerdict {
    pub(crate) hash: SampleHash,
    pub(crate) analysis: String,
    pub(crate) model_version: String,
    pub(crate) score: f64,
    pub(crate) client: String,
}

/// What a request writes besides its sample: what the YARA rules found (replacing what the same
/// rule set found before), then its verdicts, whose ids it answers in the order given.
#[derive(Clone)]
struct RequestRows {
    matches: Option<ValidMatches>,
    verdicts: Vec<ValidVerdict>,
}

impl RequestRows {
    /// The verdicts, checked, and no matches.
    fn new(verdicts: &[NewVerdict<'_>]) -> Result<RequestRows, StoreError> {
        let verdicts = verdicts.iter().map(ValidVerdict::new).collect::<Result<Vec<_>, _>>()?;
        Ok(RequestRows { matches: None, verdicts })
    }
}

impl SampleRows for RequestRows {
    type Written = Vec<i64>;

    fn write_sqlite(&self, connection: &Connection, now: i64) -> Result<Vec<i64>, StoreError> {
        if let Some(matches) = &self.matches {
            matches.replace(connection, now)?;
        }
        self.verdicts.iter().map(|verdict| verdict.insert(connection, now)).collect()
    }

    async fn write_postgres<'a>(
        &'a self,
        transaction: &'a Transaction<'a>,
        now: i64,
    ) -> Result<Vec<i64>, StoreError> {
        if let Some(matches) = &self.matches {
            postgres::yara_matches::replace(transaction, matches, now).await?;
        }
        let mut ids = Vec::with_capacity(self.verdicts.len());
        for verdict in &self.verdicts {
            ids.push(postgres::verdicts::insert(transaction, verdict, now).await?);
        }
        Ok(ids)
    }
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
        let rows = RequestRows::new(std::slice::from_ref(verdict))?;
        Ok(self.write_rows(rows)?[0])
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
        let rows = RequestRows::new(verdicts)?;
        match sample {
            Some((sha256_hex, bytes)) => {
                let hash = SampleHash::verify(sha256_hex, bytes)?;
                self.record_sample_with(&hash, bytes, rows).map(|(record, ids)| (Some(record), ids))
            }
            None => self.write_rows(rows).map(|ids| (None, ids)),
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
        let rows = RequestRows::new(verdicts)?;
        self.record_sample_with(&sample.hash, &sample.bytes, rows)
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
        let mut rows = RequestRows::new(verdicts)?;
        rows.matches =
            yara.map(|found| ValidMatches::new(sha256, found.ruleset, found.matches)).transpose()?;
        match sample {
            Some(sample) => self.record_sample_with(&sample.hash, &sample.bytes, rows).map(|(_, ids)| ids),
            None => self.write_rows(rows),
        }
    }

    /// All verdicts on a sample, oldest first.
    pub fn verdicts(&self, sha256_hex: &str) -> Result<Vec<VerdictRecord>, StoreError> {
        let hash = SampleHash::parse(sha256_hex)?;
        match &self.tables {
            Tables::Sqlite(database) => database.read(|connection| {
                let mut statement = connection.prepare_cached(SELECT_BY_SHA256)?;
                let rows = statement.query_map([hash.as_str()], verdict_from_row)?;
                Ok(rows.collect::<Result<Vec<_>, _>>()?)
            }),
            Tables::Postgres(database) => postgres::verdicts::of_sample(database, hash, None),
        }
    }

    /// The newest `limit` verdicts on a sample, newest first: a sample asked about every day
    /// has more verdicts than one answer should carry.
    pub fn latest_verdicts(&self, sha256_hex: &str, limit: usize) -> Result<Vec<VerdictRecord>, StoreError> {
        let hash = SampleHash::parse(sha256_hex)?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        match &self.tables {
            Tables::Sqlite(database) => database.read(|connection| {
                let mut statement = connection.prepare_cached(SELECT_LATEST_BY_SHA256)?;
                let rows = statement.query_map(params![hash.as_str(), limit], verdict_from_row)?;
                Ok(rows.collect::<Result<Vec<_>, _>>()?)
            }),
            Tables::Postgres(database) => postgres::verdicts::of_sample(database, hash, Some(limit)),
        }
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
