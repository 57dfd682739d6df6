//! The YARA rules that matched a sample: one row per (sample, rule set, rule), so that what a
//! rule set said stays on record after the rules change, and a sample scanned again by the same
//! set replaces its rows rather than adding to them. The rules themselves live in
//! `sentinel-yara`; the store keeps only names, tags and metadata.

use rusqlite::{Connection, Row, params};
use serde_json::{Map, Value};

use crate::sample_hash::SampleHash;
use crate::{Store, StoreError, Tables, postgres};

/// Longest rule, namespace or rule-set name, in bytes (YARA identifiers are short).
const MAX_NAME_LEN: usize = 256;
/// Longest tags or metadata, as JSON, in bytes: metadata is descriptive text, not content.
const MAX_JSON_LEN: usize = 16 * 1024;
/// At most this many matches per sample and rule set.
const MAX_MATCHES: usize = 256;

/// A rule that matched a sample.
#[derive(Debug, Clone, PartialEq)]
pub struct YaraMatchRecord {
    /// The rule set's version (`yara-` and 16 hex digits).
    pub ruleset: String,
    pub namespace: String,
    pub rule: String,
    pub tags: Vec<String>,
    pub metadata: Map<String, Value>,
    /// Unix seconds.
    pub matched_at: i64,
}

/// One row checked and serialised for the writer thread.
#[derive(Clone)]
pub(crate) struct ValidRow {
    pub(crate) namespace: String,
    pub(crate) rule: String,
    pub(crate) tags: String,
    pub(crate) metadata: String,
}

/// What one rule set found in one sample, checked and serialised, so that the writer thread can
/// write it in a request's transaction ([`Store::record_request`]).
#[derive(Clone)]
pub(crate) struct ValidMatches {
    pub(crate) hash: SampleHash,
    pub(crate) ruleset: String,
    pub(crate) rows: Vec<ValidRow>,
}

impl ValidMatches {
    pub(crate) fn new(sha256: &str, ruleset: &str, matches: &[YaraMatchRecord]) -> Result<Self, StoreError> {
        let hash = SampleHash::parse(sha256)?;
        let invalid = |reason: String| Err(StoreError::InvalidYaraMatch(reason));
        if ruleset.is_empty() || ruleset.len() > MAX_NAME_LEN {
            return invalid(format!("the rule set's name must have 1 to {MAX_NAME_LEN} bytes"));
        }
        if matches.len() > MAX_MATCHES {
            return invalid(format!("at most {MAX_MATCHES} matches per sample"));
        }
        let mut rows = Vec::with_capacity(matches.len());
        for found in matches {
            if [&found.namespace, &found.rule].iter().any(|name| name.is_empty() || name.len() > MAX_NAME_LEN)
            {
                return invalid(format!("rule and namespace names must have 1 to {MAX_NAME_LEN} bytes"));
            }
            let tags = serde_json::to_string(&found.tags)
                .map_err(|e| StoreError::InvalidYaraMatch(e.to_string()))?;
            let metadata = serde_json::to_string(&found.metadata)
                .map_err(|e| StoreError::InvalidYaraMatch(e.to_string()))?;
            if tags.len() > MAX_JSON_LEN || metadata.len() > MAX_JSON_LEN {
                return invalid(format!("tags and metadata must have at most {MAX_JSON_LEN} bytes of JSON"));
            }
            rows.push(ValidRow {
                namespace: found.namespace.clone(),
                rule: found.rule.clone(),
                tags,
                metadata,
            });
        }
        Ok(ValidMatches { hash, ruleset: ruleset.to_owned(), rows })
    }

    /// Replaces what the same rule set found in the same sample before, inside the caller's
    /// transaction: the set's earlier rows and its new ones swap together.
    pub(crate) fn replace(&self, connection: &Connection, now: i64) -> Result<(), StoreError> {
        connection.execute(
            "DELETE FROM yara_matches WHERE sha256 = ?1 AND ruleset = ?2",
            params![self.hash.as_str(), self.ruleset],
        )?;
        let mut insert = connection.prepare_cached(
            "INSERT INTO yara_matches (sha256, ruleset, namespace, rule, tags, metadata, matched_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?;
        for row in &self.rows {
            insert.execute(params![
                self.hash.as_str(),
                self.ruleset,
                row.namespace,
                row.rule,
                row.tags,
                row.metadata,
                now
            ])?;
        }
        Ok(())
    }
}

impl Store {
    /// The matches recorded for `sha256`, newest rule set first, then by namespace and rule.
    pub fn yara_matches(&self, sha256: &str) -> Result<Vec<YaraMatchRecord>, StoreError> {
        let hash = SampleHash::parse(sha256)?;
        match &self.tables {
            Tables::Sqlite(database) => database.read(|connection| {
                let mut statement = connection.prepare_cached(
                    "SELECT ruleset, namespace, rule, tags, metadata, matched_at FROM yara_matches
                     WHERE sha256 = ?1 ORDER BY matched_at DESC, ruleset, namespace, rule",
                )?;
                let rows = statement.query_map([hash.as_str()], match_from_row)?;
                Ok(rows.collect::<Result<Vec<_>, _>>()?)
            }),
            Tables::Postgres(database) => postgres::yara_matches::of_sample(database, hash),
        }
    }
}

fn match_from_row(row: &Row<'_>) -> rusqlite::Result<YaraMatchRecord> {
    Ok(match_record(
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        &row.get::<_, String>(3)?,
        &row.get::<_, String>(4)?,
        row.get(5)?,
    ))
}

/// A match from its columns, on either backend.
pub(crate) fn match_record(
    ruleset: String,
    namespace: String,
    rule: String,
    tags: &str,
    metadata: &str,
    matched_at: i64,
) -> YaraMatchRecord {
    YaraMatchRecord {
        ruleset,
        namespace,
        rule,
        // The columns are checked to be JSON when written, in the shapes written.
        tags: serde_json::from_str(tags).unwrap_or_default(),
        metadata: serde_json::from_str(metadata).unwrap_or_default(),
        matched_at,
    }
}
